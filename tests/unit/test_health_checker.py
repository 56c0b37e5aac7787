"""The active checker on real sockets: verdict timing (fall/rise x interval), TCP, HTTP."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bascule.config.loader import parse_config
from bascule.upstream.health import (
    ActiveChecker,
    CheckTarget,
    cluster_targets,
    probe,
    status_ranges,
)


def aio(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper() -> None:
        asyncio.run(fn())

    return wrapper


async def until(condition: Callable[[], bool], limit: float = 3.0) -> None:
    """Poll `condition` every 10 ms (the checker calls back from its own tasks)."""
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 - a plain poll
        await asyncio.sleep(0.01)


class Server:
    """A tiny HTTP server whose answer (or absence) the test controls."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"ok"
        self.server: asyncio.Server | None = None
        self.port = 0
        self.seen: list[bytes] = []

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.seen.append(head)
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                % (self.status, len(self.body), self.body)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()  # also when the test's loop ends and cancels this handler


def target(port: int, **kw: object) -> CheckTarget:
    base: dict[str, object] = dict(
        key="c/x",
        host="127.0.0.1",
        port=port,
        interval=0.1,
        jitter=0.0,
        timeout=0.5,
        rise=2,
        fall=3,
    )
    base.update(kw)
    return CheckTarget(**base)  # type: ignore[arg-type]


@aio
async def test_tcp_and_http_probes() -> None:
    server = Server()
    await server.start()
    try:
        assert await probe(target(server.port)) == (True, "connected")
        assert await probe(target(server.port, kind="http")) == (True, "status 200")
        server.status = 503
        assert await probe(target(server.port, kind="http")) == (False, "status 503")
        assert (
            await probe(target(server.port, kind="http", expect_status=status_ranges(["500-599"])))
        )[0]
        server.status = 200
        server.body = b"I am fine"
        assert (await probe(target(server.port, kind="http", expect_body=b"fine")))[0]
        ok, detail = await probe(target(server.port, kind="http", expect_body=b"great"))
        assert not ok and "body" in detail
        await probe(
            target(
                server.port, kind="http", method="HEAD", path="/hc?x=1", host_header="app.example"
            )
        )
        assert server.seen[-1].startswith(b"HEAD /hc?x=1 HTTP/1.1\r\nHost: app.example\r\n")
    finally:
        await server.stop()
    ok, detail = await probe(target(server.port))
    assert not ok and "refused" in detail.lower()


@aio
async def test_probe_times_out() -> None:
    # A server that accepts and never answers: the HTTP probe must fail at its timeout.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(5)
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t0 = time.monotonic()
    ok, detail = await probe(target(port, kind="http", timeout=0.2))
    assert not ok and "timed out" in detail
    assert time.monotonic() - t0 < 1.0
    server.close()


@aio
async def test_down_within_fall_times_interval_and_back_within_rise() -> None:
    server = Server()
    await server.start()
    port = server.port
    changes: list[tuple[str, bool, float]] = []
    t = target(port, kind="http", interval=0.1, fall=3, rise=2)
    checker = ActiveChecker([t], lambda k, ok: changes.append((k, ok, time.monotonic())))
    task = asyncio.create_task(checker.run())
    try:
        await asyncio.sleep(0.35)
        assert changes == [] and checker.states["c/x"].checks >= 3
        server.status = 500
        failed_at = time.monotonic()
        await until(lambda: bool(changes))
        down = changes[0][2] - failed_at
        # Three failed probes, 0.1 s apart: the third one lands 0.2-0.3 s after the flip.
        assert changes[0][:2] == ("c/x", False)
        assert 0.15 < down <= 3 * 0.1 + 0.2, down  # + slack for a busy machine
        server.status = 200
        fixed_at = time.monotonic()
        await until(lambda: len(changes) >= 2)
        up = changes[1][2] - fixed_at
        assert changes[1][:2] == ("c/x", True)
        assert 0.05 < up <= 2 * 0.1 + 0.2, up
        state = checker.states["c/x"].as_json()
        assert state["healthy"] and state["ok"] and state["detail"] == "status 200"
    finally:
        checker.stop()
        await task
        await server.stop()


@aio
async def test_dead_port_goes_down_and_jitter_spreads_probes() -> None:
    server = Server()
    await server.start()
    port = server.port
    await server.stop()  # nothing listens there any more
    changes: list[bool] = []
    targets = [target(port, key=f"c/{i}", interval=0.1, jitter=0.5, fall=2) for i in range(5)]
    checker = ActiveChecker(targets, lambda k, ok: changes.append(ok), rng=random.Random(7))
    task = asyncio.create_task(checker.run())
    await asyncio.sleep(0.6)
    checker.stop()
    await task
    assert changes == [False] * 5
    assert all(not s.healthy and s.last_ok is False for s in checker.states.values())


def test_cluster_targets_from_config() -> None:
    config = parse_config(
        """
clusters:
  - name: web
    health_check: {kind: http, path: /hc, port: 8081, expect_status: ["200", "301-302"]}
    endpoints:
      - {address: 10.0.0.1:80}
      - {address: "[::1]:80", check_address: 127.0.0.1:9999}
  - name: plain
    endpoints: [{address: 10.0.0.2:80}]
""",
        "x.yaml",
    )
    targets = cluster_targets(config.clusters)
    assert [(t.key, t.host, t.port) for t in targets] == [
        ("web/10.0.0.1:80", "10.0.0.1", 8081),
        ("web/[::1]:80", "127.0.0.1", 9999),
    ]
    assert targets[0].expect_status == ((200, 200), (301, 302)) and targets[0].path == "/hc"


@aio
async def test_set_targets_while_running() -> None:
    server = Server()
    await server.start()
    dead = Server()
    await dead.start()
    dead_port = dead.port
    await dead.stop()
    changes: list[tuple[str, bool]] = []
    checker = ActiveChecker([target(server.port, key="c/a")], lambda k, ok: changes.append((k, ok)))
    task = asyncio.create_task(checker.run())
    try:
        await asyncio.sleep(0.15)
        kept = checker.states["c/a"]
        checker.set_targets([target(server.port, key="c/a"), target(dead_port, key="c/b", fall=1)])
        await until(lambda: bool(changes))
        assert changes == [("c/b", False)] and checker.states["c/a"] is kept
        checker.set_targets([target(dead_port, key="c/b", fall=1)])
        assert list(checker.states) == ["c/b"]
    finally:
        checker.stop()
        await task
        await server.stop()
