"""Round robin and smooth weighted round robin (nginx's `weight=` semantics, seed 004).

Rules of this module:
- `RoundRobin` ignores weights (beyond weight 0 meaning "never").
- `SmoothWeighted` is nginx's algorithm. Run from zero scores over a fixed set, it is periodic:
  after sum(weights) picks every score is back at zero, each endpoint having had exactly its
  weight in turns. So the period is computed once, at build, and a pick is one step along it:
  O(1) instead of nginx's O(n). While every endpoint is eligible the order is exactly nginx's.
- An ineligible endpoint (down, draining, full, refused by `accept`) loses its turn to the next
  entry of the period; the others keep shares in proportion to their weights. If a whole
  tier's worth of entries in a row is ineligible, that pick falls back to nginx's O(n) scan,
  which only considers eligible endpoints; so does a tier whose period would be too long to
  precompute (n * sum of weights over CYCLE_BUILD_LIMIT).
- Slow start: a ramping endpoint takes a share effective_weight / weight of its turns (a
  deterministic credit, as Bresenham draws a line), and the O(n) scan uses its effective weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd

from bascule.balance.base import Accept, tiers
from bascule.balance.endpoint import Endpoint

# Work (endpoints * period length) allowed to precompute one tier's period at build time:
# about 50 ms of CPython. 100 endpoints with weights up to ~50 fit.
CYCLE_BUILD_LIMIT = 1 << 18


class RoundRobin:
    """Each eligible endpoint in turn, ignoring weights."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self._tiers = tiers(self.endpoints)
        self._next = [0] * len(self._tiers)

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        for tier_index, tier in enumerate(self._tiers):
            n = len(tier)
            start = self._next[tier_index]
            for i in range(n):
                endpoint = tier[(start + i) % n]
                if endpoint.available and (accept is None or accept(endpoint)):
                    self._next[tier_index] = (start + i + 1) % n
                    return endpoint
        return None


def smooth_weighted_period(weights: Sequence[int]) -> list[int] | None:
    """One period of nginx's order for these (positive) weights, as indexes; None if too long."""
    divisor = 0
    for weight in weights:
        divisor = gcd(divisor, weight)
    reduced = [w // divisor for w in weights]
    total = sum(reduced)
    if total * len(reduced) > CYCLE_BUILD_LIMIT:
        return None
    return smooth_weighted_sequence(reduced, total)


def smooth_weighted_sequence(weights: Sequence[int], count: int) -> list[int]:
    """The first `count` picks of nginx's smooth weighted round robin, as indexes.

    Each pick adds every weight to its score, takes the highest score and takes the total
    back from it. Scaling all weights by one factor gives the same order, so callers may
    reduce them first.
    """
    total = sum(weights)
    current = [0] * len(weights)
    order = []
    for _ in range(count):
        best = 0
        for i, weight in enumerate(weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= total
        order.append(best)
    return order


class SmoothWeighted:
    """nginx's smooth weighted round robin.

    Every pick adds each eligible endpoint's weight to its current score, takes the highest,
    and subtracts the total from the winner. With weights 5,1,1 the order is a,a,b,a,c,a,a:
    the heavy endpoint's turns are spread out instead of bunched. With equal weights it is
    plain round robin.
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self._tiers = tiers(self.endpoints)
        self._periods = [smooth_weighted_period([e.weight for e in t]) for t in self._tiers]
        self._positions = [0] * len(self._tiers)
        # Per-tier lists parallel to the tier: index arithmetic beats a dict on id().
        self._credit = [[0.0] * len(t) for t in self._tiers]
        self._current = [[0.0] * len(t) for t in self._tiers]

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        for t, tier in enumerate(self._tiers):
            period = self._periods[t]
            if period is not None:
                found = self._step(t, tier, period, accept)
                if found is not None:
                    return found
            found = self._scan(tier, self._current[t], accept)
            if found is not None:
                return found
        return None

    def _step(
        self, t: int, tier: tuple[Endpoint, ...], period: list[int], accept: Accept | None
    ) -> Endpoint | None:
        """The next eligible entry of the period, looking at most len(tier) entries ahead."""
        length = len(period)
        position = self._positions[t]
        for _ in range(len(tier)):
            i = period[position]
            position += 1
            if position == length:
                position = 0
            endpoint = tier[i]
            if not endpoint.available or (accept is not None and not accept(endpoint)):
                continue
            if endpoint.slow_start > 0.0 and endpoint.weight > 0:
                share = endpoint.effective_weight / endpoint.weight
                if share < 1.0:
                    credit = self._credit[t]
                    credit[i] += share
                    if credit[i] < 1.0:
                        continue
                    credit[i] -= 1.0
            self._positions[t] = position
            return endpoint
        self._positions[t] = position
        return None

    @staticmethod
    def _scan(
        tier: tuple[Endpoint, ...], current: list[float], accept: Accept | None
    ) -> Endpoint | None:
        """nginx's own O(n) pick over the eligible endpoints, with effective weights."""
        best = -1
        best_score = 0.0
        total = 0.0
        for i, endpoint in enumerate(tier):
            if not endpoint.available or (accept is not None and not accept(endpoint)):
                continue
            weight = endpoint.effective_weight if endpoint.slow_start else endpoint.weight
            score = current[i] + weight
            current[i] = score
            total += weight
            if best < 0 or score > best_score:
                best = i
                best_score = score
        if best < 0:
            return None
        current[best] -= total
        return tier[best]
