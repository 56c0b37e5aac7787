"""The balancer interface: pick an endpoint from a key and the endpoints' state.

Rules of this module:
- A balancer is built from an immutable tuple of endpoints. When the set changes, the cluster
  builds a new balancer and swaps one attribute; balancers never add or remove endpoints.
- `pick(key, accept)` returns an endpoint that is `available` and that `accept` (if given)
  agrees to, or None. `accept` lets callers exclude endpoints already tried (retries) without
  the balancer knowing why. A balancer never returns an endpoint that fails either test.
- Backup endpoints are picked only when no primary endpoint is eligible.
- Nothing here knows about HTTP or sockets: the key is bytes (a hash input) or None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from bascule.upstream.endpoint import Endpoint

Accept = Callable[[Endpoint], bool]


class Balancer(Protocol):
    """What every balancer offers to a cluster."""

    endpoints: tuple[Endpoint, ...]

    def pick(self, key: bytes | None = None, accept: Accept | None = None) -> Endpoint | None:
        """Choose an eligible endpoint for this key, or None when none is eligible."""
        ...


def eligible(endpoint: Endpoint, accept: Accept | None) -> bool:
    """The one eligibility rule every balancer applies."""
    return endpoint.available and (accept is None or accept(endpoint))


def split_backups(endpoints: Sequence[Endpoint]) -> tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]]:
    """Primaries first, backups second: backups serve only when no primary can."""
    primaries = tuple(e for e in endpoints if not e.backup)
    backups = tuple(e for e in endpoints if e.backup)
    return primaries, backups
