"""A live cluster: endpoints, their balancer and their connection pools, from a spec.

Rules of this module:
- Built from a frozen `ClusterConfig`; a new config builds a new Cluster (snapshot swap).
- Knows nothing about HTTP: the L7 and L4 data planes both pick endpoints through it. What a
  keyed balancer hashes is described here (`hash_kind`, `hash_name`); the data plane extracts it.
- `extended` is the one flag the data plane reads per exchange to know whether anything beyond
  a plain pick is configured (a key, stickiness, limits, a queue, outlier detection); a plain
  cluster costs one attribute read more than it did without these features.
- Limits (circuit breaking) count per worker: `active` exchanges in flight, `waiting` requests
  queued. Refusals and queue timeouts are counted for the admin API.
- Endpoint set changes (discovery) keep the Endpoint objects of addresses that stay, with their
  state, counters and pools; a removed endpoint's pool stops keeping idle connections, and its
  exchanges in flight finish normally. The balancer is rebuilt and swapped in one assignment.
- A sticky cookie is opaque: a truncated HMAC of the cluster's name and the endpoint's address
  under `sticky.secret`, mapped back by a dict. It tells the client nothing about the
  topology, and without the secret it cannot be made for another endpoint. The supervisor
  gives every sticky cluster a secret (runtime/sticky.py); a Cluster built without one uses a
  random key of its own rather than anything guessable.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

from bascule.balance import KEYED, Balancer, make_balancer
from bascule.balance.base import Accept
from bascule.balance.endpoint import Endpoint
from bascule.config.schema import ClusterConfig, EndpointConfig
from bascule.upstream.outlier import OutlierDetector
from bascule.upstream.pool import CLIENT, Pool, PoolKey

# What a keyed balancer hashes (`hash_kind`).
SOURCE_IP = 1
URI = 2
HEADER = 3
COOKIE = 4
QUERY = 5


class Waiter(Protocol):
    def wake(self) -> bool:
        """Try again now; False when the waiter is gone (answered, timed out, client left)."""
        ...


class Cluster:
    __slots__ = (
        "_sticky_endpoints",
        "_sticky_values",
        "active",
        "balancer",
        "by_address",
        "endpoints",
        "extended",
        "hash_kind",
        "hash_name",
        "keyed",
        "loop",
        "max_connections",
        "max_pending",
        "max_requests",
        "name",
        "outlier",
        "pools",
        "queue_timeouts",
        "queued",
        "rejected",
        "spec",
        "sticky",
        "sticky_key",
        "waiting",
    )

    def __init__(self, spec: ClusterConfig) -> None:
        self.spec = spec
        self.name = spec.name
        self.loop: asyncio.AbstractEventLoop | None = None  # the running one unless set
        self.endpoints: tuple[Endpoint, ...] = tuple(make_endpoint(e) for e in spec.endpoints)
        self.by_address = {e.address: e for e in self.endpoints}
        self.balancer: Balancer = make_balancer(
            spec.balancer, self.endpoints, **spec.balancer_options
        )
        self.pools: dict[Endpoint, Pool] = {e: self._new_pool(e) for e in self.endpoints}
        self.keyed = spec.balancer in KEYED
        self.hash_kind = 0
        self.hash_name = b""
        key = spec.hash_key
        if self.keyed:
            if key is None or key.source_ip:
                self.hash_kind = SOURCE_IP
            elif key.uri:
                self.hash_kind = URI
            elif key.header is not None:
                self.hash_kind, self.hash_name = HEADER, key.header.lower().encode("latin-1")
            elif key.cookie is not None:
                self.hash_kind, self.hash_name = COOKIE, key.cookie.encode("latin-1")
            elif key.query is not None:
                self.hash_kind, self.hash_name = QUERY, key.query.encode("latin-1")
        self.sticky = spec.sticky
        secret = spec.sticky.secret if spec.sticky is not None else None
        self.sticky_key = secret.encode() if secret else secrets.token_bytes(32)
        self._sign_endpoints()
        limits = spec.limits
        self.max_requests = limits.max_requests
        self.max_connections = limits.max_connections
        self.max_pending = limits.max_pending
        self.active = 0
        self.waiting: deque[Waiter] = deque()
        self.rejected = 0  # 503s from the limits (circuit breaking), for the admin API
        self.queued = 0  # requests that waited in the queue
        self.queue_timeouts = 0
        self.outlier: OutlierDetector | None = None
        if spec.outlier_detection is not None:
            self.outlier = OutlierDetector(spec.outlier_detection, self.endpoints)
        self.extended = bool(
            self.keyed
            or self.sticky is not None
            or self.max_requests
            or self.max_connections
            or self.max_pending
            or self.outlier is not None
        )

    def _new_pool(self, endpoint: Endpoint) -> Pool:
        # A transparent connection leaves from one client's address: it must never carry
        # another client's request (the key's source says so, and such pools keep nothing).
        source = CLIENT if self.spec.source_address == "client" else ""
        key = PoolKey(endpoint.host, endpoint.port, source)
        return Pool(key, self.spec.pool.max_idle, self.spec.pool.idle_timeout)

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        return self.balancer.pick(key, accept)

    # ------------------------------------------------------------ limits and the queue

    def released(self, endpoint: Endpoint, ok: bool) -> None:
        """An exchange let go of `endpoint` (extended clusters only): verdict, slot, queue."""
        outlier = self.outlier
        if outlier is not None:
            outlier.record(endpoint, ok)
        self.active -= 1
        if self.waiting:
            # Soon, not now: the releasing exchange has yet to return its connection to the
            # pool, and the waiter should reuse it rather than open another.
            (self.loop or asyncio.get_running_loop()).call_soon(self.wake_one)

    def wake_one(self) -> None:
        """Give a freed slot to the oldest waiter still there."""
        waiting = self.waiting
        while waiting:
            if waiting.popleft().wake():
                return

    def room_for_connection(self, endpoint: Endpoint) -> bool:
        """Under `limits.max_connections`, or made so by closing an idle connection elsewhere.

        Needed only when `endpoint` has no idle connection to lend: a request that reuses one
        opens nothing.
        """
        pools = self.pools
        if sum(p.open for p in pools.values()) < self.max_connections:
            return True
        return any(p.close_oldest_idle() for e, p in pools.items() if e is not endpoint)

    def saturated(self) -> bool:
        """Some endpoint would take traffic but for its connection limit: worth queueing for."""
        for e in self.endpoints:
            if (
                e.healthy
                and not e.drain
                and not e.disabled
                and e.weight > 0
                and e.max_connections
                and e.active >= e.max_connections
            ):
                return True
        return False

    # ------------------------------------------------------------ sticky cookie

    def sticky_value(self, endpoint: Endpoint) -> bytes:
        """The cookie value naming `endpoint`: an HMAC of the cluster and its address, no more."""
        value = self._sticky_values.get(endpoint)
        if value is None:
            message = b"%s\n%s" % (self.name.encode(), endpoint.address.encode())
            value = hmac.new(self.sticky_key, message, hashlib.sha256).hexdigest()[:24].encode()
            self._sticky_values[endpoint] = value
            self._sticky_endpoints[value] = endpoint
        return value

    def sticky_endpoint(self, value: bytes) -> Endpoint | None:
        """The endpoint a cookie value names, if it is one we made and the endpoint is here.

        Every valid value is one of the few `sticky_value` made, so it is a dict lookup; a
        value that is not there (forged, or for an endpoint that left) names nothing.
        """
        return self._sticky_endpoints.get(value)

    def _sign_endpoints(self) -> None:
        self._sticky_values: dict[Endpoint, bytes] = {}
        self._sticky_endpoints: dict[bytes, Endpoint] = {}
        if self.sticky is not None:
            for endpoint in self.endpoints:
                self.sticky_value(endpoint)

    # ------------------------------------------------------------ control plane input

    def set_check(self, address: str, ok: bool) -> bool:
        """An active check's verdict for one endpoint; False if no such endpoint."""
        endpoint = self.by_address.get(address)
        if endpoint is None:
            return False
        endpoint.set_check(ok)
        return True

    def set_endpoints(self, specs: Iterable[EndpointConfig]) -> None:
        """A new endpoint set (discovery): keep what stays, add the new, retire the gone."""
        specs = list(specs)
        fresh = {make_endpoint(s).address: s for s in specs}
        if not fresh:
            return  # an empty answer is more likely a resolver hiccup than a real scale-to-zero
        endpoints: list[Endpoint] = []
        for address, spec in fresh.items():
            endpoint = self.by_address.get(address)
            if endpoint is None or endpoint.weight != spec.weight:
                old = endpoint
                endpoint = make_endpoint(spec)
                if old is not None:
                    # The checks' verdict carries over; an ejection does not (the detector
                    # forgets the old object and its restore timer, below).
                    endpoint.check_ok = endpoint.healthy = old.check_ok
            endpoints.append(endpoint)
        kept = set(endpoints)
        for old in self.endpoints:
            if old not in kept:
                pool = self.pools.get(old)
                if pool is not None:
                    pool.max_idle = 0
                    pool.close_all()
                if self.outlier is not None:
                    self.outlier.forget(old)
        for endpoint in endpoints:
            if endpoint not in self.pools:
                self.pools[endpoint] = self._new_pool(endpoint)
        # Pools of retired endpoints stay until their exchanges are done, then go.
        for old in [e for e in self.pools if e not in kept and e.active == 0]:
            del self.pools[old]
        self.endpoints = tuple(endpoints)
        self.by_address = {e.address: e for e in self.endpoints}
        self._sign_endpoints()
        if self.outlier is not None and self.spec.outlier_detection is not None:
            self.outlier.resize(len(endpoints), self.spec.outlier_detection.max_ejection_percent)
        self.balancer = make_balancer(
            self.spec.balancer, self.endpoints, **self.spec.balancer_options
        )

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Counters for the admin API: per endpoint, and the cluster's own."""
        return {
            "endpoints": {
                e.address: {
                    "active": e.active,
                    "requests": e.requests,
                    "failures": e.failures,
                    "ejections": e.ejections,
                    "ejected": e.ejected,
                    "weight": e.weight,
                    "state": e.state,
                }
                for e in self.endpoints
            },
            "active": self.active,
            "waiting": len(self.waiting),
            "queued": self.queued,
            "rejected": self.rejected,
            "queue_timeouts": self.queue_timeouts,
        }

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close_all()
        if self.outlier is not None:
            self.outlier.close()


def make_endpoint(spec: EndpointConfig) -> Endpoint:
    endpoint = Endpoint(
        spec.address[0],
        spec.address[1],
        spec.weight,
        backup=spec.backup,
        max_connections=spec.max_connections,
        slow_start=spec.slow_start,
    )
    endpoint.drain = spec.drain
    endpoint.disabled = spec.disable
    return endpoint
