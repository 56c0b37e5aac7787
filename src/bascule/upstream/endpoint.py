"""The live endpoint: one real server of a cluster, as the data plane sees it.

Rules of this module:
- An Endpoint is created from a spec (address, weight, flags) and lives as long as its cluster
  snapshot; balancers hold immutable tuples of them and never copy their state.
- Counters are plain ints mutated on the event loop's thread only; nothing here locks.
"""

from __future__ import annotations

from typing import Any


class Endpoint:
    """One real server: its address, its weight and the state balancers need to choose it."""

    __slots__ = (
        "active",
        "address",
        "backup",
        "extra",
        "failures",
        "healthy",
        "host",
        "max_connections",
        "name",
        "port",
        "requests",
        "weight",
    )

    def __init__(
        self,
        host: str,
        port: int,
        weight: int = 1,
        *,
        backup: bool = False,
        max_connections: int = 0,
        name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.name = name or self.address
        self.weight = weight
        self.backup = backup
        # 0 means unlimited, as in HAProxy's `maxconn 0`.
        self.max_connections = max_connections
        self.healthy = True
        self.active = 0  # connections (L4) or requests in flight (L7) on this endpoint now
        self.requests = 0
        self.failures = 0
        # Room for balancers that need per-endpoint scratch state (EWMA, slow start...).
        self.extra: dict[str, Any] = {}

    @property
    def available(self) -> bool:
        """Healthy and under its connection limit: a balancer may pick it."""
        return self.healthy and (self.max_connections == 0 or self.active < self.max_connections)

    def __repr__(self) -> str:
        return f"Endpoint({self.address}, weight={self.weight}, healthy={self.healthy})"
