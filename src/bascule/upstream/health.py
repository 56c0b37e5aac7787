"""Active health checks: probe endpoints on an interval, report when one goes down or comes back.

Rules of this module:
- Independent of HTTP clusters: an `ActiveChecker` checks `CheckTarget`s (a key, an address and
  the check's parameters) and calls `on_change(key, healthy)` when a target's verdict flips.
  HTTP clusters, L4 clusters and packet-mode services all use it; `cluster_targets` makes the
  targets of the config's clusters, keyed `cluster/address` (the endpoint's `address`).
- A target starts healthy (as HAProxy assumes on boot): it goes down after `fall` failed
  probes in a row and comes back after `rise` good ones, so a dead endpoint is out within
  about `fall * interval` and a recovered one back within `rise * interval`.
- Probes: `tcp` passes when a connection opens; `http` sends one request (`method`, `path`,
  `Host`, `Connection: close`) and passes when the status is in one of the `expect_status`
  ranges and, if `expect_body` is set, the body (read up to 64 KiB, raw) contains it. Every
  probe ends within `timeout`; a probe that times out fails.
- Probes are spread: each waits `interval * (1 ± jitter)` (uniformly drawn) after the previous
  one started, and the first one starts within `jitter * interval` of `run()` being called, so
  many targets do not probe in lockstep.
- The checker runs in the supervisor's event loop; the last result of every target (ok, wall
  clock time, detail) is kept in `states` for the admin API. `set_targets` swaps the target
  set while it runs (discovery): kept targets keep their verdict.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bascule.config.schema import ClusterConfig, EndpointConfig, HealthCheckConfig
from bascule.config.units import format_address

MAX_RESPONSE = 64 * 1024  # bytes of an HTTP check's response that are read and searched


@dataclass(frozen=True, slots=True)
class CheckTarget:
    """One thing to check: where, how, how often, and how many results flip it."""

    key: str
    host: str
    port: int
    kind: Literal["tcp", "http"] = "tcp"
    interval: float = 5.0
    jitter: float = 0.1
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    method: str = "GET"
    path: str = "/"
    host_header: str | None = None  # default: host:port
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)
    expect_body: bytes | None = None


@dataclass(slots=True)
class CheckState:
    """A target's verdict and its last probe, as the admin API shows them."""

    healthy: bool = True
    successes: int = 0  # good probes in a row
    failures: int = 0  # failed probes in a row
    last_ok: bool | None = None  # None until the first probe ends
    last_time: float = 0.0  # wall-clock time (Unix seconds) the last probe ended
    last_detail: str = ""
    checks: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "ok": self.last_ok,
            "time": self.last_time or None,
            "detail": self.last_detail,
            "checks": self.checks,
        }


OnChange = Callable[[str, bool], None]


class ActiveChecker:
    """Probes every target until `stop`, each on its own interval; targets may change."""

    def __init__(
        self,
        targets: Sequence[CheckTarget],
        on_change: OnChange,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.targets = {t.key: t for t in targets}
        self.on_change = on_change
        self.states = {key: CheckState() for key in self.targets}
        self._random = (rng or random.Random()).random
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop: asyncio.Event | None = None

    async def run(self) -> None:
        """Check every target until `stop()` is called (or this task is cancelled)."""
        self._stop = asyncio.Event()
        for target in self.targets.values():
            self._start(target)
        try:
            await self._stop.wait()
        finally:
            for task in self._tasks.values():
                task.cancel()
            self._tasks.clear()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def set_targets(self, targets: Sequence[CheckTarget]) -> None:
        """Replace the targets (discovery): new keys start healthy, gone keys are forgotten,
        kept keys keep their state (their parameters are taken from the new target)."""
        fresh = {t.key: t for t in targets}
        for key in list(self.targets):
            if key not in fresh or fresh[key] != self.targets[key]:
                task = self._tasks.pop(key, None)
                if task is not None:
                    task.cancel()
                if key not in fresh:
                    del self.states[key]
        old = self.targets
        self.targets = fresh
        for key, target in fresh.items():
            self.states.setdefault(key, CheckState())
            if self._stop is not None and (key not in old or old[key] != target):
                self._start(target)

    def _start(self, target: CheckTarget) -> None:
        self._tasks[target.key] = asyncio.get_running_loop().create_task(self._loop(target))

    async def _loop(self, target: CheckTarget) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(target.interval * target.jitter * self._random())
        while True:
            started = loop.time()
            ok, detail = await probe(target)
            self.record(target, ok, detail)
            spread = 1.0 + target.jitter * (2.0 * self._random() - 1.0)
            await asyncio.sleep(max(0.0, started + target.interval * spread - loop.time()))

    def record(self, target: CheckTarget, ok: bool, detail: str) -> None:
        """Count one probe's result; call on_change when the verdict flips."""
        state = self.states[target.key]
        state.checks += 1
        state.last_ok = ok
        state.last_time = time.time()
        state.last_detail = detail
        if ok:
            state.successes += 1
            state.failures = 0
            flip = not state.healthy and state.successes >= target.rise
        else:
            state.failures += 1
            state.successes = 0
            flip = state.healthy and state.failures >= target.fall
        if flip:
            state.healthy = ok
            self.on_change(target.key, ok)


async def probe(target: CheckTarget) -> tuple[bool, str]:
    """One check of one target: (passed, what happened)."""
    try:
        async with asyncio.timeout(target.timeout):
            if target.kind == "tcp":
                _, writer = await asyncio.open_connection(target.host, target.port)
                writer.close()
                return True, "connected"
            return await _probe_http(target)
    except TimeoutError:
        return False, f"timed out after {target.timeout:g}s"
    except OSError as e:
        # asyncio words a refused connect as "Connect call failed (...)": say what errno says.
        return False, (os.strerror(e.errno) if e.errno else str(e)) or type(e).__name__


async def _probe_http(target: CheckTarget) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        host = target.host_header or format_address((target.host, target.port))
        writer.write(
            f"{target.method} {target.path} HTTP/1.1\r\nHost: {host}\r\n"
            "User-Agent: bascule-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode(
                "latin-1"
            )
        )
        data = b""
        need_body = target.expect_body is not None
        while len(data) < MAX_RESPONSE:
            chunk = await reader.read(MAX_RESPONSE - len(data))
            if not chunk:
                break
            data += chunk
            if not need_body and b"\r\n" in data:
                break  # the status line is all a status-only check needs
    finally:
        writer.close()
    line = data.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, "not an HTTP response" if data else "closed without a response"
    status = int(parts[1])
    if not any(low <= status <= high for low, high in target.expect_status):
        return False, f"status {status}"
    if target.expect_body is not None:
        body = data.partition(b"\r\n\r\n")[2]
        if target.expect_body not in body:
            return False, f"status {status}, body does not contain the expected text"
    return True, f"status {status}"


def status_ranges(texts: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """`["200-399", "404"]` as ((200, 399), (404, 404))."""
    ranges = []
    for text in texts:
        low, _, high = text.partition("-")
        ranges.append((int(low), int(high or low)))
    return tuple(ranges)


def check_target(key: str, host: str, port: int, spec: HealthCheckConfig) -> CheckTarget:
    """A target from a cluster's `health_check` block."""
    return CheckTarget(
        key=key,
        host=host,
        port=spec.port or port,
        kind=spec.kind,
        interval=spec.interval,
        jitter=spec.jitter,
        timeout=spec.timeout,
        rise=spec.rise,
        fall=spec.fall,
        method=spec.method,
        path=spec.path,
        host_header=spec.host,
        expect_status=status_ranges(spec.expect_status),
        expect_body=spec.expect_body.encode() if spec.expect_body is not None else None,
    )


def cluster_targets(
    clusters: Sequence[ClusterConfig],
    endpoints: Mapping[str, Sequence[EndpointConfig]] | None = None,
) -> list[CheckTarget]:
    """Every endpoint of every cluster that has a `health_check`, keyed `cluster/address`;
    `endpoints` replaces the configured endpoints of the clusters it names (discovery)."""
    targets = []
    for cluster in clusters:
        spec = cluster.health_check
        if spec is None:
            continue
        listed = (endpoints or {}).get(cluster.name, cluster.endpoints)
        for endpoint in listed:
            host, port = endpoint.address
            key = f"{cluster.name}/{format_address((host, port))}"
            if endpoint.check_address is not None:
                host, port = endpoint.check_address
                targets.append(
                    check_target(key, host, port, spec.model_copy(update={"port": None}))
                )
            else:
                targets.append(check_target(key, host, port, spec))
    return targets
