"""The balancer interface: pick an endpoint from a key and the endpoints' state.

Rules of this module:
- A balancer is built from an immutable tuple of endpoints. When the set changes, the cluster
  builds a new balancer and swaps one attribute; balancers never add or remove endpoints.
- `pick(key, accept)` returns an endpoint that is `available` and that `accept` (if given)
  agrees to, or None. `accept` lets callers exclude endpoints already tried (retries) without
  the balancer knowing why. A balancer never returns an endpoint that fails either test, and
  returns None only when no endpoint passes both.
- Backup endpoints are picked only when no primary endpoint is eligible.
- An endpoint whose weight is 0 (or less) when the balancer is built is never picked, by any
  balancer: weight 0 is how an operator says "no new traffic" without touching health.
- Weights are read when the balancer is built (a weight change is a set change: rebuild);
  `effective_weight`, which only differs from `weight` during slow start, is read on each pick
  by the balancers that honour it.
- Nothing here knows about HTTP or sockets: the key is bytes (a hash input) or None.
- Key hashes are deterministic across processes (no Python `hash()`, which is salted per
  process): every worker must send the same key to the same endpoint.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Protocol
from zlib import crc32

from bascule.balance.endpoint import Endpoint

Accept = Callable[[Endpoint], bool]

_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15  # 2**64 / phi, odd: Fibonacci hashing's multiplier

# Rejection sampling gives up after this many draws and falls back to an exact O(n) choice;
# with half the endpoints down, that fallback runs on 1 pick in 256.
SAMPLE_TRIES = 8


class Balancer(Protocol):
    """What every balancer offers to a cluster."""

    endpoints: tuple[Endpoint, ...]

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        """Choose an eligible endpoint for this key, or None when none is eligible."""
        ...


def eligible(endpoint: Endpoint, accept: Accept | None) -> bool:
    """The one eligibility rule every balancer applies (besides build-time weight > 0)."""
    return endpoint.available and (accept is None or accept(endpoint))


def split_backups(
    endpoints: Sequence[Endpoint],
) -> tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]]:
    """Primaries first, backups second: backups serve only when no primary can."""
    primaries = tuple(e for e in endpoints if not e.backup)
    backups = tuple(e for e in endpoints if e.backup)
    return primaries, backups


def tiers(endpoints: Sequence[Endpoint]) -> list[tuple[Endpoint, ...]]:
    """The non-empty tiers (primaries, then backups) of endpoints with a positive weight."""
    return [t for t in split_backups([e for e in endpoints if e.weight > 0]) if t]


def key_hash(key: bytes) -> int:
    """A 32-bit hash of a key, the same in every process.

    CRC-32 runs in C and spreads distinct inputs well, but it is linear; multiplying by the
    golden ratio and keeping the high half mixes every input bit into every output bit.
    """
    return ((crc32(key) * _GOLDEN64) & _MASK64) >> 32


def rehash(h: int, attempt: int) -> int:
    """The attempt-th alternative 32-bit hash for the same key: a deterministic probe sequence."""
    return (((h + attempt * 0x9E3779B9) * _GOLDEN64) & _MASK64) >> 32


def walk(tier: Sequence[Endpoint], start: int, accept: Accept | None) -> Endpoint | None:
    """The first eligible endpoint at or after `start`, wrapping: the deterministic last resort."""
    n = len(tier)
    for i in range(n):
        endpoint = tier[(start + i) % n]
        if endpoint.available and (accept is None or accept(endpoint)):
            return endpoint
    return None


class WeightedSampler:
    """Draws eligible endpoints of one tier in proportion to their effective weight.

    The common case costs O(log n): a draw proportional to the build-time weight (bisect on
    cumulative weights, or a plain index when weights are equal), then rejection if the endpoint
    is not eligible or, during slow start, with probability 1 - effective/build weight. Accepted
    draws follow exactly the target distribution; after SAMPLE_TRIES rejections an exact O(n)
    choice over the eligible endpoints takes over, so a mostly-down tier is still served.
    """

    __slots__ = ("_cumulative", "_random", "_total", "_uniform", "endpoints", "weights")

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random) -> None:
        self.endpoints = tuple(endpoints)
        self.weights = tuple(e.weight for e in self.endpoints)
        self._uniform = len(set(self.weights)) <= 1
        self._cumulative = list(accumulate(self.weights))
        self._total = self._cumulative[-1] if self._cumulative else 0
        self._random = rng.random

    def draw(self, accept: Accept | None) -> Endpoint | None:
        """One eligible endpoint, at random in proportion to effective weight, or None."""
        endpoints = self.endpoints
        if not endpoints:
            return None
        random_ = self._random
        n = len(endpoints)
        for _ in range(SAMPLE_TRIES):
            if self._uniform:
                i = int(random_() * n)
            else:
                i = bisect_right(self._cumulative, random_() * self._total)
            if i >= n:  # random() * total rounding up to total itself
                i = n - 1
            endpoint = endpoints[i]
            if not endpoint.available or (accept is not None and not accept(endpoint)):
                continue
            if (
                endpoint.slow_start > 0.0
                and random_() * self.weights[i] >= endpoint.effective_weight
            ):
                continue
            return endpoint
        return self._exact(accept)

    def _exact(self, accept: Accept | None) -> Endpoint | None:
        candidates = [e for e in self.endpoints if eligible(e, accept)]
        if not candidates:
            return None
        weights = [e.effective_weight for e in candidates]
        x = self._random() * sum(weights)
        for endpoint, weight in zip(candidates, weights, strict=True):
            x -= weight
            if x < 0.0:
                return endpoint
        return candidates[-1]


def make_rng(seed: int | None) -> random.Random:
    """The balancer's own generator: seeded in tests, from the OS otherwise."""
    return random.Random(seed)


def check_int(name: str, value: object, minimum: int) -> int:
    """An integer option, refusing bools and values below `minimum` with a clear message."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"option {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"option {name!r} must be at least {minimum}, got {value}")
    return value


def check_seed(value: object) -> int | None:
    """The `seed` option: None (OS entropy) or an integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"option 'seed' must be an integer, got {value!r}")
    return value


def check_seconds(name: str, value: object) -> float:
    """A positive duration in seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"option {name!r} must be a number of seconds, got {value!r}")
    if not value > 0:  # also refuses NaN
        raise ValueError(f"option {name!r} must be positive, got {value!r}")
    return float(value)
