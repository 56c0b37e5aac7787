"""Load-aware balancers: least connections, least request (P2C) and peak EWMA (P2C).

Rules of this module:
- Load is `endpoint.active` (connections or requests in flight), which the data plane keeps
  up to date; latency is the peak EWMA that `endpoint.observe` keeps. Nothing here mutates
  endpoints, except that `PeakEwma` sets `ewma_decay` on its own endpoints when built.
- Load is always compared relative to effective weight: an endpoint of weight 2 is "as busy"
  as one of weight 1 when it has twice the requests in flight.
- `least_connections` scans every endpoint (O(n), as nginx's `least_conn`); the two P2C
  balancers look at `choice_count` random endpoints only (O(1) in n), which is what lets them
  scale and, more important, keeps many independent workers from stampeding onto the one
  endpoint that happens to look least loaded to all of them at once.
- P2C candidates are drawn in proportion to weight, then the least loaded (relative to weight)
  wins, ties going to the first drawn: with no load at all, the spread follows the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import exp
from time import monotonic

from bascule.balance.base import (
    Accept,
    WeightedSampler,
    check_int,
    check_seconds,
    check_seed,
    make_rng,
    tiers,
)
from bascule.balance.endpoint import DEFAULT_EWMA_DECAY_S, Endpoint

# Finagle's trick for endpoints with no latency sample yet: cost 0 while idle, so a new endpoint
# is tried at once, and a huge cost while it has a request in flight, so it gets one probe at a
# time until it has answered.
UNPROBED_PENALTY = 1e9

# Keeps `active + 1` meaningful when the latency estimate has decayed to (or was) zero.
LATENCY_EPSILON_S = 1e-6


# Stands in for a weight set to 0 after the build, so the division cannot fail and the endpoint
# looks too busy to choose.
_TINY_WEIGHT = 1e-9


def _weight(endpoint: Endpoint) -> float:
    weight = endpoint.effective_weight if endpoint.slow_start else endpoint.weight
    return weight if weight > 0 else _TINY_WEIGHT


class LeastConnections:
    """The eligible endpoint with the fewest active connections per unit of weight.

    Ties (the common case at low load, when everything is at 0) are broken by smooth weighted
    round robin among the tied endpoints, as nginx does: the spread follows the weights whether
    traffic is light or heavy, and equal endpoints take turns.
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self._tiers = tiers(self.endpoints)
        self._current = [[0.0] * len(t) for t in self._tiers]

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        for tier, current in zip(self._tiers, self._current, strict=True):
            best = -1
            best_cost = 0.0
            tied: list[int] | None = None
            for i, endpoint in enumerate(tier):
                if not endpoint.available or (accept is not None and not accept(endpoint)):
                    continue
                weight: float = endpoint.weight
                if endpoint.slow_start or weight <= 0:  # the common case skips a call
                    weight = _weight(endpoint)
                cost = endpoint.active / weight
                if best < 0 or cost < best_cost:
                    best = i
                    best_cost = cost
                    tied = None
                elif cost == best_cost:
                    if tied is None:
                        tied = [best]
                    tied.append(i)
            if best < 0:
                continue
            if tied is None:
                return tier[best]
            # Smooth weighted round robin over the tied endpoints only.
            total = 0.0
            best = -1
            best_score = 0.0
            for i in tied:
                weight = _weight(tier[i])
                score = current[i] + weight
                current[i] = score
                total += weight
                if best < 0 or score > best_score:
                    best = i
                    best_score = score
            current[best] -= total
            return tier[best]
        return None


class LeastRequest:
    """Envoy's least request: draw `choice_count` endpoints, keep the least loaded.

    With the default of two choices this is "the power of two choices": nearly the balance of
    a full least-loaded scan at the cost of two random draws.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        choice_count: int = 2,
        seed: int | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.choice_count = check_int("choice_count", choice_count, 2)
        rng = make_rng(check_seed(seed))
        self._samplers = [WeightedSampler(t, rng) for t in tiers(self.endpoints)]

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        for sampler in self._samplers:
            best = sampler.draw(accept)
            if best is None:
                continue
            if len(sampler.endpoints) == 1:
                return best
            best_cost = best.active / _weight(best)
            for _ in range(self.choice_count - 1):
                other = sampler.draw(accept)
                if other is None:  # only if `accept` changed its mind; keep what we have
                    break
                cost = other.active / _weight(other)
                if cost < best_cost:
                    best = other
                    best_cost = cost
            return best
        return None


class PeakEwma:
    """Finagle's and Linkerd's peak EWMA: P2C on latency estimate * (requests in flight + 1).

    The estimate comes from `Endpoint.observe` (peak-sensitive EWMA, time constant `decay`
    seconds). At pick time it is decayed towards zero by the time since the last sample, as
    Finagle does, so an endpoint that was slow and then left alone is eventually tried again;
    unlike Finagle, the decayed value is not stored, so reading never changes an endpoint.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        decay: float = DEFAULT_EWMA_DECAY_S,
        seed: int | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.decay = check_seconds("decay", decay)
        for endpoint in self.endpoints:
            endpoint.ewma_decay = self.decay
            endpoint.track_latency = True
        rng = make_rng(check_seed(seed))
        self._samplers = [WeightedSampler(t, rng) for t in tiers(self.endpoints)]

    @staticmethod
    def cost(endpoint: Endpoint, now: float) -> float:
        """The endpoint's load as P2C compares it; lower is better."""
        stamp = endpoint.ewma_stamp
        active = endpoint.active
        if stamp == 0.0:
            return 0.0 if active == 0 else UNPROBED_PENALTY + active
        latency = endpoint.ewma
        if now > stamp:
            latency *= exp((stamp - now) / endpoint.ewma_decay)
        return (latency + LATENCY_EPSILON_S) * (active + 1) / _weight(endpoint)

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        for sampler in self._samplers:
            first = sampler.draw(accept)
            if first is None:
                continue
            if len(sampler.endpoints) == 1:
                return first
            second = sampler.draw(accept)
            if second is None or second is first:
                return first
            now = monotonic()
            return second if self.cost(second, now) < self.cost(first, now) else first
        return None
