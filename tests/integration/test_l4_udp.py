"""The UDP proxy (l4/udp.py) over real datagram sockets on loopback.

Clients are connected UDP sockets: the kernel hands such a socket only datagrams from the
address it is connected to, so every answer received also shows that replies leave from the
listener's address. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
import uvloop

from bascule.config.schema import ClusterConfig
from bascule.l4.udp import UdpProxy
from bascule.upstream.cluster import Cluster


class Answering(asyncio.DatagramProtocol):
    """A backend that answers each datagram with its name and the datagram; or, when silent,
    only records what it received."""

    def __init__(self, name: bytes, silent: bool = False) -> None:
        self.name = name
        self.silent = silent
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append(data)
        if not self.silent and self.transport is not None:
            self.transport.sendto(self.name + b":" + data, addr)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()


class Setup:
    """Backends, the proxy on a real listening socket, and client sockets, for one test."""

    def __init__(self) -> None:
        self.closing: list[Any] = []

    async def backend(self, name: bytes, silent: bool = False) -> tuple[Answering, int]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Answering(name, silent), local_addr=("127.0.0.1", 0)
        )
        self.closing.append(transport)
        return protocol, transport.get_extra_info("sockname")[1]

    async def proxy(self, ports: list[int], **options: Any) -> tuple[UdpProxy, int]:
        loop = asyncio.get_running_loop()
        spec = {"name": "u", "endpoints": [{"address": f"127.0.0.1:{p}"} for p in ports]}
        cluster = Cluster(ClusterConfig.model_validate(spec))
        cluster.loop = loop
        listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listening.bind(("127.0.0.1", 0))
        proxy = UdpProxy(cluster, loop, **options)
        transport, _ = await loop.create_datagram_endpoint(lambda: proxy, sock=listening)
        self.closing.append(transport)
        return proxy, listening.getsockname()[1]

    def client(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        self.closing.append(sock)
        return sock

    def close(self) -> None:
        while self.closing:
            self.closing.pop().close()


async def ask(sock: socket.socket, data: bytes, within: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    return await asyncio.wait_for(loop.sock_recv(sock, 65535), within)


async def quiet(sock: socket.socket, within: float) -> bool:
    """True if nothing arrives on `sock` for `within` seconds."""
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65535), within)
    except TimeoutError:
        return True
    return False


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_fifty_clients_each_get_their_own_flow_and_answers() -> None:
    async def main() -> None:
        s = Setup()
        try:
            one, port1 = await s.backend(b"one")
            two, port2 = await s.backend(b"two")
            proxy, port = await s.proxy([port1, port2])
            clients = [s.client(port) for _ in range(50)]
            names: list[bytes] = []
            for i, sock in enumerate(clients):
                answers = [await ask(sock, b"q%d-%d" % (i, j)) for j in range(3)]
                name = answers[0].split(b":")[0]
                # one flow, one endpoint: every answer from the same backend, each the right one
                assert answers == [name + b":q%d-%d" % (i, j) for j in range(3)]
                names.append(name)
            assert names.count(b"one") == 25 and names.count(b"two") == 25
            assert len(proxy.flows) == 50 and proxy.counts["created"] == 50
            assert len(one.received) == len(two.received) == 75
            assert sum(e.active for e in proxy.cluster.endpoints) == 50
        finally:
            s.close()

    run(main)


def test_idle_flows_expire() -> None:
    async def main() -> None:
        s = Setup()
        try:
            _, backend_port = await s.backend(b"b")
            proxy, port = await s.proxy([backend_port], idle_timeout=0.3)
            clients = [s.client(port) for _ in range(5)]
            for sock in clients:
                assert await ask(sock, b"hi") == b"b:hi"
            busy = clients[0]
            for _ in range(6):  # 0.6 s of traffic, every 0.1 s: this flow stays
                await asyncio.sleep(0.1)
                assert await ask(busy, b"again") == b"b:again"
            assert list(proxy.flows) == [busy.getsockname()]
            assert proxy.counts["expired"] == 4
            await eventually(lambda: not proxy.flows)
            endpoint = proxy.cluster.endpoints[0]
            assert endpoint.active == 0 and endpoint.requests == 5
            assert proxy.counts["created"] == 5
        finally:
            s.close()

    run(main)


def test_flow_table_is_bounded_oldest_evicted() -> None:
    async def main() -> None:
        s = Setup()
        try:
            _, backend_port = await s.backend(b"b")
            proxy, port = await s.proxy([backend_port], max_flows=10)
            clients = [s.client(port) for _ in range(30)]
            for i, sock in enumerate(clients):
                assert await ask(sock, b"%d" % i) == b"b:%d" % i
                assert len(proxy.flows) <= 10
            assert proxy.counts["evicted"] == 20
            assert list(proxy.flows) == [c.getsockname() for c in clients[20:]]
            # An evicted client is served again, on a new flow.
            assert await ask(clients[0], b"back") == b"b:back"
            assert proxy.counts["created"] == 31 and proxy.counts["evicted"] == 21
            assert proxy.cluster.endpoints[0].active == 10
        finally:
            s.close()

    run(main)


@pytest.mark.parametrize("expect_reply", [False, True])
def test_a_backend_that_does_not_answer(expect_reply: bool) -> None:
    async def main() -> None:
        s = Setup()
        try:
            silent, backend_port = await s.backend(b"s", silent=True)
            proxy, port = await s.proxy([backend_port], idle_timeout=0.3, expect_reply=expect_reply)
            sock = s.client(port)
            await asyncio.get_running_loop().sock_sendall(sock, b"anyone?")
            assert await quiet(sock, 0.5)
            assert silent.received == [b"anyone?"]
            await eventually(lambda: not proxy.flows)
            endpoint = proxy.cluster.endpoints[0]
            assert proxy.counts["expired"] == 1 and endpoint.active == 0
            assert endpoint.failures == (1 if expect_reply else 0)
        finally:
            s.close()

    run(main)


def test_closed_endpoint_port_ends_the_flow_as_a_failure() -> None:
    """ICMP port unreachable reaches the flow's connected socket: the flow ends, counted as
    the endpoint's failure, and the client's next datagram opens a new flow."""

    async def main() -> None:
        s = Setup()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as free:
                free.bind(("127.0.0.1", 0))
                dead = free.getsockname()[1]
            proxy, port = await s.proxy([dead])
            sock = s.client(port)
            await asyncio.get_running_loop().sock_sendall(sock, b"hello?")
            assert await quiet(sock, 0.3)
            await eventually(lambda: proxy.counts["failed"] == 1)
            assert not proxy.flows
            endpoint = proxy.cluster.endpoints[0]
            assert endpoint.failures == 1 and endpoint.active == 0
            await asyncio.get_running_loop().sock_sendall(sock, b"again?")
            await eventually(lambda: proxy.counts["created"] == 2)
        finally:
            s.close()

    run(main)
