"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): the table and the balancer.

Rules of this module:
- `maglev_table(names, weights, size)` is pure and deterministic across processes and
  machines: the same arguments give the same table everywhere (BLAKE2b of each name, never
  Python's salted `hash()`). The packet modes load it into the kernel as an nftables map, and
  the user-space `maglev` balancer uses it too, so both agree on where a flow goes.
- The table depends on the set of (name, weight) pairs, not on their order: endpoints take
  their turns in name order. Entries are indexes into `names` as given.
- Each endpoint walks its own permutation of the slots, (offset + j * skip) mod size with
  offset and skip from the hash of its name; endpoints take turns claiming their next free
  slot until the table is full. `size` must be prime so every permutation visits every slot.
- Weights: turns are handed out in proportion to weight (earliest virtual finish time, each
  endpoint's k-th turn due at k / weight), so slot shares follow the weights within a slot or
  two. Weight 0 gets no slot. With equal weights this is the paper's round robin.
- The `maglev` balancer: slot = key hash mod size. When the slot's endpoint is ineligible, the
  key probes the following slots (which belong to endpoints spread in proportion to weight),
  then walks the endpoints in order; only the ineligible endpoint's keys move.
  `pick(None, ...)` falls back to weighted random. Weights are read at build time.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from hashlib import blake2b

from bascule.balance.base import (
    Accept,
    check_int,
    key_hash,
    tiers,
    walk,
)
from bascule.balance.endpoint import Endpoint
from bascule.balance.weighted_random import WeightedRandom

DEFAULT_TABLE_SIZE = 65537
# Slots probed after an ineligible one before the ordered walk takes over.
MAGLEV_PROBES = 64

# Deterministic Miller-Rabin witnesses: exact for every n below 3.3e24.
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    """Whether n is prime (exact, deterministic Miller-Rabin, for any n a table could have)."""
    if n < 2:
        return False
    for p in _WITNESSES:
        if n % p == 0:
            return n == p
    d = n - 1
    r = 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _permutation(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of a name's permutation; two independent hashes as the paper asks."""
    digest = blake2b(name.encode(), digest_size=16, person=b"bascule-maglev").digest()
    offset = int.from_bytes(digest[:8], "little") % size
    skip = int.from_bytes(digest[8:], "little") % (size - 1) + 1
    return offset, skip


def maglev_table(
    names: Sequence[str], weights: Sequence[int], size: int = DEFAULT_TABLE_SIZE
) -> list[int]:
    """The Maglev lookup table: `size` entries, each an index into `names`.

    Raises ValueError when size is not prime, lengths differ, a weight is negative, no weight
    is positive, or there are more weighted names than slots.
    """
    if len(names) != len(weights):
        raise ValueError(f"{len(names)} names but {len(weights)} weights")
    if isinstance(size, bool) or not isinstance(size, int) or not is_prime(size):
        raise ValueError(f"maglev table size must be a prime number, got {size!r}")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ValueError(f"maglev weights must be integers >= 0, got {weight!r}")
    members = sorted((name, i) for i, name in enumerate(names) if weights[i] > 0)
    if not members:
        raise ValueError("maglev table needs at least one name with a positive weight")
    if len(members) > size:
        raise ValueError(f"maglev table of {size} slots cannot hold {len(members)} endpoints")

    cursors: list[int] = []
    skips: list[int] = []
    for name, _ in members:
        offset, skip = _permutation(name, size)
        cursors.append(offset)
        skips.append(skip)
    member_weights = [weights[i] for _, i in members]
    # (due time, rank): equal weights give the paper's round robin in name order.
    turns = [(1.0 / w, rank) for rank, w in enumerate(member_weights)]
    heapq.heapify(turns)
    taken = [0] * len(members)

    entry = [-1] * size
    for _ in range(size):
        _, rank = turns[0]
        skip = skips[rank]
        c = cursors[rank]
        while entry[c] >= 0:
            c += skip
            if c >= size:
                c -= size
        entry[c] = rank
        c += skip
        if c >= size:
            c -= size
        cursors[rank] = c
        taken[rank] += 1
        heapq.heapreplace(turns, ((taken[rank] + 1) / member_weights[rank], rank))
    index_of_rank = [i for _, i in members]
    return [index_of_rank[rank] for rank in entry]


class Maglev:
    """Consistent hashing through a Maglev lookup table of `table_size` slots (prime)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        table_size: int = DEFAULT_TABLE_SIZE,
        seed: int | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.table_size = check_int("table_size", table_size, 2)
        if not is_prime(self.table_size):
            raise ValueError(f"option 'table_size' must be a prime number, got {table_size}")
        self._tiers = tiers(self.endpoints)
        for tier in self._tiers:
            if len(tier) > self.table_size:
                raise ValueError(
                    f"option 'table_size' ({table_size}) must be at least the number of "
                    f"endpoints ({len(tier)}); about 100 times as many slots spreads keys well"
                )
        self._tables = [
            maglev_table([e.name for e in t], [e.weight for e in t], self.table_size)
            for t in self._tiers
        ]
        self._fallback = WeightedRandom(self.endpoints, seed=seed)

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        if key is None:
            return self._fallback.pick(None, accept)
        size = self.table_size
        slot = key_hash(key) % size
        for tier, table in zip(self._tiers, self._tables, strict=True):
            owner = table[slot]
            endpoint = tier[owner]
            if endpoint.available and (accept is None or accept(endpoint)):
                return endpoint
            for step in range(1, min(size, MAGLEV_PROBES)):
                endpoint = tier[table[(slot + step) % size]]
                if endpoint.available and (accept is None or accept(endpoint)):
                    return endpoint
            found = walk(tier, owner + 1, accept)
            if found is not None:
                return found
        return None
