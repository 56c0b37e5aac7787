"""Balancers by name: the `balancer:` key of a cluster chooses one of these."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bascule.upstream.balancers.base import Accept, Balancer, eligible
from bascule.upstream.balancers.round_robin import RoundRobin, SmoothWeighted
from bascule.upstream.endpoint import Endpoint

BalancerFactory = Callable[[Sequence[Endpoint]], Balancer]

# `round_robin` honours weights the way nginx does (smooth weighted round robin), so that the
# simplest config behaves as nginx users expect; `plain_round_robin` ignores them.
BALANCERS: dict[str, BalancerFactory] = {
    "round_robin": SmoothWeighted,
    "weighted": SmoothWeighted,
    "plain_round_robin": RoundRobin,
}


def make_balancer(name: str, endpoints: Sequence[Endpoint]) -> Balancer:
    """Build the named balancer over these endpoints."""
    return BALANCERS[name](endpoints)


__all__ = ["BALANCERS", "Accept", "Balancer", "Endpoint", "eligible", "make_balancer"]
