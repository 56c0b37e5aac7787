"""The channel between the supervisor and its worker processes: JSON lines over pipes.

Rules of this module:
- Supervisor → worker: the worker's standard input. Its first line is the config snapshot
  (worker.py); every later line is one message object:
  `{"health": {"cluster/address": true, ...}}` (active check verdicts; a new worker gets every
  verdict that differs from "healthy" right after its config) and
  `{"endpoints": {"cluster": [endpoint spec, ...]}}` (a new endpoint set from discovery).
- Worker → supervisor: a pipe whose write end the worker gets as `-report=FD`; the worker
  writes `{"stats": {cluster: Cluster.stats()}}` every `REPORT_INTERVAL` seconds. The
  supervisor keeps the last report of each worker and sums them for the admin API.
- Messages are applied whole or not at all; a line that is not a JSON object, or names a
  cluster or endpoint the receiver does not have, is ignored (a reload may race with it).
- Lines are bounded (`MAX_LINE`): a runaway peer cannot make the other buffer without end.
- Nothing here blocks: the worker reads its stdin with `add_reader`, and both ends write
  through asyncio transports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bascule.config.schema import EndpointConfig
from bascule.upstream.cluster import Cluster

MAX_LINE = 16 * 1024 * 1024
REPORT_INTERVAL = 1.0


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class LineReader:
    """Sans-I/O: bytes in, whole JSON objects out."""

    __slots__ = ("_buffer",)

    def __init__(self, initial: bytes = b"") -> None:
        self._buffer = initial

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buffer = self._buffer + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > MAX_LINE:
            rest = b""  # a line this long is garbage: drop it rather than grow forever
        self._buffer = rest
        messages = []
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                messages.append(message)
        return messages


def apply(message: Mapping[str, Any], clusters: Mapping[str, Cluster]) -> None:
    """Act on one supervisor message in a worker (or in the supervisor with `workers: 1`)."""
    health = message.get("health")
    if isinstance(health, dict):
        apply_health(health, clusters)
    endpoints = message.get("endpoints")
    if isinstance(endpoints, dict):
        for name, specs in endpoints.items():
            cluster = clusters.get(name)
            if cluster is None or not isinstance(specs, list):
                continue
            try:
                parsed = [EndpointConfig.model_validate(s) for s in specs]
            except ValueError:
                continue
            cluster.set_endpoints(parsed)


def apply_health(verdicts: Mapping[str, object], clusters: Mapping[str, Cluster]) -> None:
    """`{"cluster/address": healthy}`: set each named endpoint's active-check verdict."""
    for key, ok in verdicts.items():
        name, _, address = key.partition("/")
        cluster = clusters.get(name)
        if cluster is not None and isinstance(ok, bool):
            cluster.set_check(address, ok)


def stats_report(clusters: Mapping[str, Cluster]) -> bytes:
    """A worker's report line: every cluster's counters."""
    return encode({"stats": {name: c.stats() for name, c in clusters.items()}})
