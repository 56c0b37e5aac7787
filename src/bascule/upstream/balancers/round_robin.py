"""Round robin and smooth weighted round robin (nginx's `weight=` semantics, seed 004)."""

from __future__ import annotations

from collections.abc import Sequence

from bascule.upstream.balancers.base import Accept, eligible, split_backups
from bascule.upstream.endpoint import Endpoint


class RoundRobin:
    """Each eligible endpoint in turn, ignoring weights."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self._tiers = [t for t in split_backups(self.endpoints) if t]
        self._next = [0] * len(self._tiers)

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        for tier_index, tier in enumerate(self._tiers):
            n = len(tier)
            start = self._next[tier_index]
            for i in range(n):
                endpoint = tier[(start + i) % n]
                if eligible(endpoint, accept):
                    self._next[tier_index] = (start + i + 1) % n
                    return endpoint
        return None


class SmoothWeighted:
    """nginx's smooth weighted round robin.

    Every pick adds each eligible endpoint's weight to its current score, takes the highest,
    and subtracts the total from the winner. With weights 5,1,1 the order is a,a,b,a,c,a,a:
    the heavy endpoint's turns are spread out instead of bunched.
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self._tiers = [t for t in split_backups(self.endpoints) if t]
        self._current = {id(e): 0 for e in self.endpoints}

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        current = self._current
        for tier in self._tiers:
            best: Endpoint | None = None
            total = 0
            for endpoint in tier:
                if endpoint.weight <= 0 or not eligible(endpoint, accept):
                    continue
                score = current[id(endpoint)] + endpoint.weight
                current[id(endpoint)] = score
                total += endpoint.weight
                if best is None or score > current[id(best)]:
                    best = endpoint
            if best is not None:
                current[id(best)] -= total
                return best
        return None
