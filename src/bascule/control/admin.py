"""The admin API: the state of every cluster's endpoints as JSON, served by the supervisor.

Rules of this module:
- `GET /clusters` answers a JSON object: for each cluster, its counters and, for each endpoint,
  its state, active connections, requests, failures, ejections, and its last active check
  (ok, Unix time, detail). `GET /` lists the paths. Anything else is 404 (405 for a method
  other than GET/HEAD). Every answer closes the connection: this is for people and scripts,
  not for load.
- The view is built on each request by a callable the supervisor gives (`Snapshot`), so this
  module knows nothing about workers; `cluster_view` does the summing of per-worker reports.
- It listens where `admin.address` says; keep that on loopback or a management network: the
  API is read-only, but it shows the whole backend topology.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bascule.config.schema import ClusterConfig

Snapshot = Callable[[], dict[str, Any]]

_COUNTERS = ("active", "requests", "failures", "ejections")
_CLUSTER_COUNTERS = ("active", "waiting", "queued", "rejected", "queue_timeouts")
_MAX_HEAD = 8192


class AdminServer:
    def __init__(self, host: str, port: int, snapshot: Snapshot) -> None:
        self.host = host
        self.port = port
        self.snapshot = snapshot
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + (b"" if head.startswith(b"HEAD ") else body)
        )
        try:
            await writer.drain()
        except OSError:
            pass
        writer.close()

    def _answer(self, head: bytes) -> tuple[int, bytes]:
        parts = head[: min(len(head), _MAX_HEAD)].split(b"\r\n", 1)[0].split(b" ")
        method = parts[0] if parts else b""
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if method not in (b"GET", b"HEAD"):
            return 405, b'{"error": "only GET"}\n'
        if path == b"/clusters":
            return 200, json.dumps(self.snapshot(), indent=1).encode() + b"\n"
        if path == b"/":
            return 200, b'{"paths": ["/clusters"]}\n'
        return 404, b'{"error": "not found"}\n'


def cluster_view(
    clusters: Sequence[ClusterConfig],
    reports: Sequence[Mapping[str, Any]],
    checks: Mapping[str, Any],
) -> dict[str, Any]:
    """The `/clusters` document: workers' counters summed, with the last check of each endpoint.

    `reports` holds one `{cluster: Cluster.stats()}` per worker; `checks` maps
    `cluster/address` to a `CheckState.as_json()`.
    """
    view: dict[str, Any] = {}
    for spec in clusters:
        per_worker = [r[spec.name] for r in reports if spec.name in r]
        addresses: list[str] = []
        for report in per_worker:
            for address in report.get("endpoints", {}):
                if address not in addresses:
                    addresses.append(address)
        endpoints: dict[str, Any] = {}
        for address in addresses:
            rows = [r["endpoints"][address] for r in per_worker if address in r["endpoints"]]
            entry: dict[str, Any] = {k: sum(int(row.get(k, 0)) for row in rows) for k in _COUNTERS}
            states = {row.get("state", "healthy") for row in rows}
            check = checks.get(f"{spec.name}/{address}")
            state = "healthy"
            for word in ("disabled", "unhealthy", "ejected", "draining"):
                if word in states:
                    state = word
                    break
            if check is not None and not check.get("healthy", True) and state != "disabled":
                state = "unhealthy"  # the supervisor's verdict, even before workers heard it
            entry = {"state": state, "weight": rows[0].get("weight", 1) if rows else 1, **entry}
            entry["ejected_in_workers"] = sum(1 for row in rows if row.get("ejected"))
            entry["check"] = check
            endpoints[address] = entry
        cluster: dict[str, Any] = {
            k: sum(int(r.get(k, 0)) for r in per_worker) for k in _CLUSTER_COUNTERS
        }
        cluster["balancer"] = spec.balancer
        cluster["endpoints"] = endpoints
        view[spec.name] = cluster
    return view
