"""Balancers by name: the `balancer:` key of a cluster chooses one of these.

Rules of this module:
- `BALANCERS` maps each config name to a factory called as `factory(endpoints, **options)`.
  Options are keyword-only parameters of the factory; `make_balancer` refuses unknown names
  and unknown or bad options with a ValueError whose message the config layer can show as is.
- `round_robin` and `weighted` are the same thing, nginx's smooth weighted round robin, so the
  simplest config behaves as nginx users expect (with equal weights it is plain round robin);
  `plain_round_robin` ignores weights. `source_ip` and `hash` are the same map-based hash: the
  caller decides what the key is.
- Options (all optional): `seed` for every balancer that draws random numbers (tests, bench);
  `choice_count` (least_request), `decay` (peak_ewma), `ring_size` (ring_hash), `table_size`
  (maglev).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from bascule.balance.base import Accept, Balancer, eligible
from bascule.balance.endpoint import Endpoint
from bascule.balance.hashing import Hash, RingHash
from bascule.balance.least import LeastConnections, LeastRequest, PeakEwma
from bascule.balance.maglev import Maglev, is_prime, maglev_table
from bascule.balance.round_robin import RoundRobin, SmoothWeighted
from bascule.balance.weighted_random import WeightedRandom

BalancerFactory = Callable[..., Balancer]

BALANCERS: dict[str, BalancerFactory] = {
    "round_robin": SmoothWeighted,
    "weighted": SmoothWeighted,
    "plain_round_robin": RoundRobin,
    "random": WeightedRandom,
    "least_connections": LeastConnections,
    "least_request": LeastRequest,
    "peak_ewma": PeakEwma,
    "source_ip": Hash,
    "hash": Hash,
    "ring_hash": RingHash,
    "maglev": Maglev,
}

# Balancers whose choice depends on the key; the others ignore it.
KEYED = frozenset({"source_ip", "hash", "ring_hash", "maglev"})


def balancer_options(name: str) -> frozenset[str]:
    """The option names the named balancer accepts."""
    factory = BALANCERS[name]
    parameters = inspect.signature(factory).parameters.values()
    return frozenset(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def make_balancer(name: str, endpoints: Sequence[Endpoint], **options: Any) -> Balancer:
    """Build the named balancer over these endpoints; ValueError for a bad name or option."""
    factory = BALANCERS.get(name)
    if factory is None:
        raise ValueError(f"unknown balancer {name!r}; known: {', '.join(sorted(BALANCERS))}")
    allowed = balancer_options(name)
    unknown = sorted(set(options) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise ValueError(
            f"balancer {name!r} has no option {', '.join(map(repr, unknown))}; accepted: {accepted}"
        )
    return factory(endpoints, **options)


__all__ = [
    "BALANCERS",
    "KEYED",
    "Accept",
    "Balancer",
    "Endpoint",
    "Hash",
    "LeastConnections",
    "LeastRequest",
    "Maglev",
    "PeakEwma",
    "RingHash",
    "RoundRobin",
    "SmoothWeighted",
    "WeightedRandom",
    "balancer_options",
    "eligible",
    "is_prime",
    "maglev_table",
    "make_balancer",
]
