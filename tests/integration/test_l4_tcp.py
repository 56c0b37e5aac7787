"""The TCP full proxy (l4/tcp.py) over real sockets on loopback, in both relay modes.

Each test runs one event loop (uvloop, as workers do; asyncio too where it matters) holding
real backends (asyncio servers), the proxy on a real listening socket and real clients.
Every wait is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from bascule.config.schema import ClusterConfig
from bascule.l4.tcp import DONE, IDLE, REFUSED, RESET, Mode, TcpProxy, reset_socket
from bascule.upstream.cluster import Cluster
from bascule.upstream.connect import Connector

MODES: list[Mode] = ["splice", "buffered"]
_opened: list[asyncio.Server | asyncio.BaseTransport] = []  # closed by `run`, whatever happens
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(main: Callable[[], Coroutine[Any, Any, None]], loop_kind: str = "uvloop") -> None:
    """Run one test's `main` on a fresh loop, bounded; what it left running is cancelled and
    given a bounded time to finish, so a failing test fails instead of hanging."""
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        # uvloop's close() never returns while a transport is open (a failed assertion's
        # traceback keeps the clients alive): close what the test opened first.
        while _opened:
            _opened.pop().close()
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left, timeout=2))
        loop.close()


async def backend(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    _opened.append(server)
    return server, server.sockets[0].getsockname()[1]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def named(name: bytes) -> Handler:
    """A backend that greets with its name first (servers that speak first), then echoes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name + b"\n")
        await echo(reader, writer)

    return handler


def refused_port() -> int:
    """A loopback port with nothing listening: connects to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A TcpProxy on a real listening socket, for one test."""

    def __init__(self, ports: list[int], mode: Mode, **options: Any) -> None:
        spec: dict[str, Any] = {
            "name": "c",
            "endpoints": [{"address": f"127.0.0.1:{p}"} for p in ports],
        }
        spec.update(options.pop("cluster", {}))
        self.cluster = Cluster(ClusterConfig.model_validate(spec))
        loop = asyncio.get_running_loop()
        self.cluster.loop = loop
        self.proxy = TcpProxy(self.cluster, Connector(loop), loop, mode=mode, **options)
        self.listening = socket.socket()
        self.listening.bind(("127.0.0.1", 0))
        self.listening.listen(512)
        self.port = self.listening.getsockname()[1]
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Proxy:
        self.server = await self.proxy.serve(self.listening)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
        else:
            self.proxy.stop_serving(self.listening)
        self.proxy.close()
        self.listening.close()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        _opened.append(writer.transport)
        return reader, writer

    async def settled(self) -> None:
        """Wait (bounded) until every session has ended and given back its endpoint."""
        for _ in range(200):
            cluster = self.cluster
            if (
                not self.proxy.sessions
                and all(p.open == 0 for p in cluster.pools.values())
                and all(e.active == 0 for e in cluster.endpoints)
            ):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"sessions still open: {self.proxy.stats()}")


async def read_all(reader: asyncio.StreamReader, within: float = 10) -> bytes:
    return await asyncio.wait_for(reader.read(), within)


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
@pytest.mark.parametrize("mode", MODES)
def test_echo_through_the_proxy(mode: Mode, loop_kind: str) -> None:
    async def main() -> None:
        server, port = await backend(echo)
        async with Proxy([port], mode) as p:
            reader, writer = await p.connect()
            for n in range(3):
                writer.write(b"ping %d\n" % n)
                assert await asyncio.wait_for(reader.readline(), 5) == b"ping %d\n" % n
            writer.write_eof()
            assert await read_all(reader) == b""
            writer.close()
            await p.settled()
            endpoint = p.cluster.endpoints[0]
            # This case failed once under load (compiled build) and has not been reproduced
            # since: say what the proxy saw, so the next failure names its cause.
            seen = f"{p.proxy.stats()}, requests {endpoint.requests}, failures {endpoint.failures}"
            assert endpoint.requests == 1 and endpoint.failures == 0, seen
            assert p.proxy.counts[DONE] == 1, seen
        server.close()

    run(main, loop_kind)


@pytest.mark.parametrize("mode", MODES)
def test_8_mib_both_ways_with_half_close(mode: Mode) -> None:
    """The client sends 8 MiB and shuts down its write side; the backend, which sends its own
    8 MiB meanwhile, answers after that FIN with the digest of what it got, then closes."""
    size = 8 * 1024 * 1024
    up = os.urandom(size)
    down = os.urandom(size)

    async def bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send() -> None:
            for i in range(0, size, 256 * 1024):
                writer.write(down[i : i + 256 * 1024])
                await writer.drain()

        sending = asyncio.create_task(send())
        digest = hashlib.sha256()
        while data := await reader.read(65536):
            digest.update(data)
        await sending
        writer.write(digest.digest())  # only after the client's FIN reached us
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await backend(bulk)
        async with Proxy([port], mode) as p:
            reader, writer = await p.connect()

            async def send() -> None:
                for i in range(0, size, 256 * 1024):
                    writer.write(up[i : i + 256 * 1024])
                    await writer.drain()
                writer.write_eof()

            sending = asyncio.create_task(send())
            got = await read_all(reader, 30)
            await sending
            writer.close()
            assert len(got) == size + 32
            assert hashlib.sha256(got[:size]).digest() == hashlib.sha256(down).digest()
            assert got[size:] == hashlib.sha256(up).digest()
            await p.settled()
            assert p.proxy.counts[DONE] == 1
        server.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_server_side_fin_keeps_the_client_direction_open(mode: Mode) -> None:
    """The backend sends, shuts down its write side and keeps reading: the client sees EOF,
    then still sends, and the backend receives it all."""

    async def main() -> None:
        heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def talker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"bye from server")
            writer.write_eof()
            heard.set_result(await reader.read())
            writer.close()

        server, port = await backend(talker)
        async with Proxy([port], mode) as p:
            reader, writer = await p.connect()
            assert await read_all(reader) == b"bye from server"
            await asyncio.sleep(0.05)
            writer.write(b"still here, " * 1000)
            writer.write(b"done")
            writer.write_eof()
            assert await asyncio.wait_for(heard, 5) == b"still here, " * 1000 + b"done"
            writer.close()
            await p.settled()
            assert p.proxy.counts[DONE] == 1
        server.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_endpoint_reset_reaches_the_client_as_reset(mode: Mode) -> None:
    async def resetter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"partial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async def main() -> None:
        server, port = await backend(resetter)
        async with Proxy([port], mode) as p:
            reader, writer = await p.connect()
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.readexactly(7), 5) == b"partial"
            with pytest.raises(ConnectionResetError):
                await read_all(reader)  # a clean EOF here would hide the broken stream
            writer.close()
            await p.settled()
            assert p.proxy.counts[RESET] == 1
            assert p.cluster.endpoints[0].failures == 1
        server.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_client_reset_reaches_the_endpoint_as_reset(mode: Mode) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()
        outcome: asyncio.Future[str] = loop.create_future()

        async def watcher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.read(100))
            try:
                rest = await reader.read()
                outcome.set_result(f"eof {rest!r}")
            except ConnectionResetError:
                outcome.set_result("reset")
            writer.close()

        server, port = await backend(watcher)
        async with Proxy([port], mode) as p:
            client = socket.create_connection(("127.0.0.1", p.port))
            client.sendall(b"hello")
            assert await asyncio.wait_for(got, 5) == b"hello"
            reset_socket(client)
            assert await asyncio.wait_for(outcome, 5) == "reset"
            await p.settled()
            assert p.proxy.counts[RESET] == 1
            assert p.cluster.endpoints[0].failures == 0  # not the endpoint's fault
        server.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_refused_endpoint_is_retried_on_the_next(mode: Mode) -> None:
    async def main() -> None:
        server, port = await backend(named(b"good"))
        dead = refused_port()
        async with Proxy([dead, port], mode) as p:
            for _ in range(4):
                reader, writer = await p.connect()
                assert await asyncio.wait_for(reader.readline(), 5) == b"good\n"
                writer.close()
            await p.settled()
            bad, good = p.cluster.endpoints
            assert bad.failures >= 1 and bad.failures == bad.requests
            assert good.requests == 4 and good.failures == 0
            assert p.proxy.counts["connect_failures"] == bad.failures
            assert p.proxy.counts[REFUSED] == 0
        server.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_connect_attempts_are_bounded(mode: Mode) -> None:
    """With retries.attempts 1 and three refusing endpoints, two are tried, then the client
    is closed without a byte."""

    async def main() -> None:
        dead = [refused_port() for _ in range(3)]
        async with Proxy(dead, mode, cluster={"retries": {"attempts": 1}}) as p:
            reader, writer = await p.connect()
            assert await read_all(reader) == b""
            writer.close()
            await p.settled()
            assert p.proxy.counts["connect_failures"] == 2
            assert p.proxy.counts[REFUSED] == 1
            assert sum(e.failures for e in p.cluster.endpoints) == 2

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_connect_timeout_tries_the_next_endpoint(mode: Mode) -> None:
    """An endpoint whose accept queue is full drops SYNs: its connect times out, and the next
    endpoint serves the client."""

    async def main() -> None:
        stuck = socket.socket()
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        fillers = []
        for _ in range(3):  # never accepted: the queue is full after these
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(stuck.getsockname())
            fillers.append(filler)
        server, port = await backend(named(b"good"))
        try:
            async with Proxy([stuck.getsockname()[1], port], mode, connect_timeout=0.3) as p:
                loop = asyncio.get_running_loop()
                start = loop.time()
                reader, writer = await p.connect()
                assert await asyncio.wait_for(reader.readline(), 5) == b"good\n"
                assert 0.25 < loop.time() - start < 3
                writer.close()
                await p.settled()
                assert p.proxy.counts["connect_failures"] == 1
                assert p.cluster.endpoints[0].failures == 1
        finally:
            for sock in [*fillers, stuck]:
                sock.close()
        server.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_idle_timeout_closes_a_quiet_session_only(mode: Mode) -> None:
    async def main() -> None:
        server, port = await backend(echo)
        async with Proxy([port], mode, idle_timeout=0.3) as p:
            busy_reader, busy_writer = await p.connect()
            quiet_reader, quiet_writer = await p.connect()
            quiet_writer.write(b"once\n")
            assert await asyncio.wait_for(quiet_reader.readline(), 5) == b"once\n"
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(8):  # 0.8 s of traffic, a line every 0.1 s: never idle
                busy_writer.write(b"%d\n" % n)
                assert await asyncio.wait_for(busy_reader.readline(), 5) == b"%d\n" % n
                await asyncio.sleep(0.1)
            assert await read_all(quiet_reader, 5) == b""
            assert 0.25 < loop.time() - start < 2.0
            busy_writer.write(b"alive\n")
            assert await asyncio.wait_for(busy_reader.readline(), 5) == b"alive\n"
            assert p.proxy.counts[IDLE] == 1
            busy_writer.close()
            quiet_writer.close()
        server.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_200_concurrent_connections(mode: Mode) -> None:
    async def main() -> None:
        server, port = await backend(echo)
        async with Proxy([port], mode) as p:

            async def one(n: int) -> bytes:
                reader, writer = await p.connect()
                payload = os.urandom(16 * 1024) + b"%d" % n
                writer.write(payload)
                writer.write_eof()
                got = await read_all(reader, 30)
                writer.close()
                return got if got == payload else b"mismatch"

            results = await asyncio.gather(*(one(n) for n in range(200)))
            assert results.count(b"mismatch") == 0
            await p.settled()
            assert p.proxy.counts[DONE] == 200
            assert p.cluster.endpoints[0].requests == 200
        server.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_balancing_across_two_endpoints(mode: Mode) -> None:
    async def main() -> None:
        one, port1 = await backend(named(b"one"))
        two, port2 = await backend(named(b"two"))
        async with Proxy([port1, port2], mode) as p:
            seen: list[bytes] = []
            for _ in range(20):
                reader, writer = await p.connect()
                seen.append(await asyncio.wait_for(reader.readline(), 5))
                writer.close()
            assert seen.count(b"one\n") == 10 and seen.count(b"two\n") == 10
            await p.settled()
        one.close()
        two.close()

    run(main)


@pytest.mark.parametrize("mode", MODES)
def test_endpoint_max_connections_is_respected(mode: Mode) -> None:
    """An endpoint at its max_connections is skipped; when all are, clients are refused."""

    async def main() -> None:
        server, port = await backend(named(b"x"))
        cluster = {"endpoints": [{"address": f"127.0.0.1:{port}", "max_connections": 2}]}
        async with Proxy([], mode, cluster=cluster) as p:
            held = []
            for _ in range(2):
                reader, writer = await p.connect()
                assert await asyncio.wait_for(reader.readline(), 5) == b"x\n"
                held.append(writer)
            reader, writer = await p.connect()
            assert await read_all(reader) == b""
            assert p.proxy.counts[REFUSED] == 1
            writer.close()
            for w in held:
                w.close()
            await p.settled()
            reader, writer = await p.connect()  # room again
            assert await asyncio.wait_for(reader.readline(), 5) == b"x\n"
            writer.close()
        server.close()

    run(main)


def test_buffered_memory_stays_bounded_with_a_slow_reader() -> None:
    """A backend sends as fast as it can, the client reads 16 KiB every 20 ms: the proxy's
    buffers stay near the high-water mark, and the backend is held back."""
    total = 64 * 1024 * 1024
    chunk = b"z" * (256 * 1024)

    async def main() -> None:
        sent = 0

        async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            try:
                while sent < total:
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        server, port = await backend(firehose)
        async with Proxy([port], "buffered", high_water=64 * 1024) as p:
            reader, writer = await p.connect()
            received = 0
            most = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.5
            while loop.time() < end:
                received += len(await asyncio.wait_for(reader.read(16 * 1024), 5))
                await asyncio.sleep(0.02)
                for session in p.proxy.sessions:
                    buffered = 0
                    for side in (session.downstream, session.upstream):
                        transport = getattr(side, "transport", None)
                        if transport is not None:
                            buffered += transport.get_write_buffer_size()
                    most = max(most, buffered)
            assert received > 0
            assert most <= 1024 * 1024, f"the proxy buffered {most} bytes"
            assert sent < total / 2, f"the backend was not held back: sent {sent}"
            writer.close()
        server.close()

    run(main)
