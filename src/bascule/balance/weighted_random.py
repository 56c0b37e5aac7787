"""Weighted random: each pick independent, in proportion to effective weight.

Rules of this module:
- No shared state between picks, so workers need no coordination and the spread over many
  picks matches the weights whatever the traffic pattern.
- O(log n) per pick while most endpoints are eligible (see `WeightedSampler`).
"""

from __future__ import annotations

from collections.abc import Sequence

from bascule.balance.base import (
    Accept,
    WeightedSampler,
    check_seed,
    make_rng,
    tiers,
)
from bascule.balance.endpoint import Endpoint


class WeightedRandom:
    """A random eligible endpoint, in proportion to its effective weight."""

    def __init__(self, endpoints: Sequence[Endpoint], *, seed: int | None = None) -> None:
        self.endpoints = tuple(endpoints)
        rng = make_rng(check_seed(seed))
        self._samplers = [WeightedSampler(t, rng) for t in tiers(self.endpoints)]

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        for sampler in self._samplers:
            endpoint = sampler.draw(accept)
            if endpoint is not None:
                return endpoint
        return None
