"""A live cluster: endpoints, their balancer and their connection pools, from a spec.

Rules of this module:
- Built from a frozen `ClusterConfig`; a new config builds a new Cluster (snapshot swap).
- Knows nothing about HTTP: the L7 and L4 data planes both pick endpoints through it.
"""

from __future__ import annotations

from bascule.config.schema import ClusterConfig
from bascule.upstream.balancers import Balancer, make_balancer
from bascule.upstream.balancers.base import Accept
from bascule.upstream.endpoint import Endpoint
from bascule.upstream.pool import Pool


class Cluster:
    __slots__ = ("balancer", "endpoints", "name", "pools", "spec")

    def __init__(self, spec: ClusterConfig) -> None:
        self.spec = spec
        self.name = spec.name
        self.endpoints = tuple(
            Endpoint(
                e.address[0],
                e.address[1],
                e.weight,
                backup=e.backup,
                max_connections=e.max_connections,
            )
            for e in spec.endpoints
        )
        self.balancer: Balancer = make_balancer(spec.balancer, self.endpoints)
        self.pools: dict[Endpoint, Pool] = {
            e: Pool(spec.pool.max_idle, spec.pool.idle_timeout) for e in self.endpoints
        }

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        return self.balancer.pick(key, accept)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close_all()
