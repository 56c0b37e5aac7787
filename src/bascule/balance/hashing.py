"""Key hashing balancers: `hash` / `source_ip` (map-based) and `ring_hash` (consistent, ketama).

Rules of this module:
- The caller extracts the key (source IP, header, cookie, URI, query parameter); here it is
  only bytes, hashed with `key_hash`, which is the same in every process and on every machine.
- The same key goes to the same endpoint as long as that endpoint is eligible. When it is not
  (down, draining, full, refused by `accept`), the key walks on along a fixed sequence, so it
  lands on the same second choice every time, and only the keys of the ineligible endpoint
  move; they come back when it does.
- `pick(None, ...)` (no key could be extracted) falls back to weighted random: any choice is as
  good as another for a keyless request, and random needs no state shared between workers.
- Weights are read at build time (slow start does not apply: a ramping weight would move keys
  around on every step).
- `hash` is HAProxy's map-based hashing: key hash modulo total weight, O(log n) per pick and no
  table. It is not consistent: adding or removing an endpoint remaps most keys. `ring_hash` and
  `maglev` are the consistent ones.
- `ring_hash`: each endpoint gets `weight * ring_size` points on the ring (`ring_size` is points
  per unit of weight, default 1024), so an endpoint's points depend on its own name and weight
  only, and adding or removing an endpoint moves only the keys of that endpoint. Points are
  32-bit slices of BLAKE2b digests of "name-block", so the ring does not depend on endpoint
  order. When the ring would pass MAX_RING_POINTS, points per unit drop to the largest power of
  two that fits (at least one): an endpoint's points are a prefix of a fixed sequence, so a
  set change that crosses a power of two moves the keys of the dropped points, and no others.
  A key goes to the first point at or after its hash, clockwise.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from hashlib import blake2b
from itertools import accumulate
from struct import unpack

from bascule.balance.base import (
    Accept,
    check_int,
    key_hash,
    rehash,
    tiers,
    walk,
)
from bascule.balance.endpoint import Endpoint
from bascule.balance.weighted_random import WeightedRandom

# How many alternative hashes a key tries before the ordered walk; each is a fresh, weighted
# draw, so the keys of an ineligible endpoint spread over the others in proportion to weight.
HASH_PROBES = 8

DEFAULT_RING_SIZE = 1024  # points per unit of weight
# Bounds the build (about a second in CPython at this size) and the ring's memory.
MAX_RING_POINTS = 1 << 18
# Ring steps before the ordered walk takes over: covers every realistic outage, while a ring
# where nearly everything is down does not cost a walk over its whole length.
RING_WALK_LIMIT = 1024


class Hash:
    """HAProxy's map-based hash: key hash modulo the total weight picks the endpoint."""

    def __init__(self, endpoints: Sequence[Endpoint], *, seed: int | None = None) -> None:
        self.endpoints = tuple(endpoints)
        self._tiers = tiers(self.endpoints)
        self._cumulative = [list(accumulate(e.weight for e in t)) for t in self._tiers]
        self._fallback = WeightedRandom(self.endpoints, seed=seed)

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        if key is None:
            return self._fallback.pick(None, accept)
        h = key_hash(key)
        for tier, cumulative in zip(self._tiers, self._cumulative, strict=True):
            total = cumulative[-1]
            first = bisect_right(cumulative, h % total)
            endpoint = tier[first]
            if endpoint.available and (accept is None or accept(endpoint)):
                return endpoint
            for attempt in range(1, HASH_PROBES):
                endpoint = tier[bisect_right(cumulative, rehash(h, attempt) % total)]
                if endpoint.available and (accept is None or accept(endpoint)):
                    return endpoint
            found = walk(tier, first + 1, accept)
            if found is not None:
                return found
        return None


def _hash_identities(tier: Sequence[Endpoint]) -> list[str]:
    """Names to place on the ring; a repeated name gets a suffix so it still gets its own points."""
    seen: dict[str, int] = {}
    identities = []
    for endpoint in tier:
        count = seen.get(endpoint.name, 0)
        seen[endpoint.name] = count + 1
        identities.append(endpoint.name if count == 0 else f"{endpoint.name}#{count}")
    return identities


class _Ring:
    """One tier's ring: sorted 32-bit points and, for each, the index of its endpoint."""

    __slots__ = ("owners", "points", "tier")

    def __init__(self, tier: tuple[Endpoint, ...], ring_size: int) -> None:
        self.tier = tier
        total_weight = sum(e.weight for e in tier)
        per_unit = ring_size
        if total_weight * per_unit > MAX_RING_POINTS:
            per_unit = 1 << max(0, (MAX_RING_POINTS // total_weight).bit_length() - 1)
        identities = _hash_identities(tier)
        # Entries are packed as point << 32 | rank, rank being the place of the endpoint's name
        # in sorted order: one sort of plain ints, and colliding points resolve by name, the
        # same in every process whatever the endpoint order.
        by_name = sorted(range(len(tier)), key=identities.__getitem__)
        entries: list[int] = []
        for rank, index in enumerate(by_name):
            identity = identities[index]
            count = tier[index].weight * per_unit
            # One 16-byte digest yields four 32-bit points, as in libketama.
            for block in range((count + 3) // 4):
                digest = blake2b(f"{identity}-{block}".encode(), digest_size=16).digest()
                entries.extend(p << 32 | rank for p in unpack("<4I", digest)[: count - 4 * block])
        entries.sort()
        self.points = [e >> 32 for e in entries]
        self.owners = [by_name[e & 0xFFFFFFFF] for e in entries]

    def find(self, h: int, accept: Accept | None) -> Endpoint | None:
        points = self.points
        n = len(points)
        position = bisect_left(points, h)
        if position == n:
            position = 0
        tier = self.tier
        owner = self.owners[position]
        endpoint = tier[owner]
        if endpoint.available and (accept is None or accept(endpoint)):
            return endpoint
        # Clockwise to the next point of an endpoint not yet refused.
        refused = {owner}
        for step in range(1, min(n, RING_WALK_LIMIT)):
            candidate = self.owners[(position + step) % n]
            if candidate in refused:
                continue
            endpoint = tier[candidate]
            if endpoint.available and (accept is None or accept(endpoint)):
                return endpoint
            refused.add(candidate)
            if len(refused) == len(tier):
                return None
        return walk(tier, owner + 1, accept)


class RingHash:
    """Consistent hashing on a ketama-style ring (see the module rules for its size)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        ring_size: int = DEFAULT_RING_SIZE,
        seed: int | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.ring_size = check_int("ring_size", ring_size, 1)
        if self.ring_size > MAX_RING_POINTS:
            raise ValueError(
                f"option 'ring_size' must be at most {MAX_RING_POINTS}, got {ring_size}"
            )
        self._rings = [_Ring(t, self.ring_size) for t in tiers(self.endpoints)]
        self._fallback = WeightedRandom(self.endpoints, seed=seed)

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        if key is None:
            return self._fallback.pick(None, accept)
        h = key_hash(key)
        for ring in self._rings:
            endpoint = ring.find(h, accept)
            if endpoint is not None:
                return endpoint
        return None
