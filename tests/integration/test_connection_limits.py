"""limits.max_connections and max_connections_per_client, through real sockets: idle keep-alive
connections are reclaimed oldest first, and with every connection busy a new client waits in
the backlog (its connect completes) and is served once a place frees up, never reset."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import (
    Backend,
    BackendHandler,
    Client,
    Seen,
    free_port,
    proxy_config,
    raw,
    running,
)

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def held_backend() -> tuple[Backend, threading.Event]:
    """A backend that answers only once the returned event is set."""
    release = threading.Event()

    def handler(h: BackendHandler, seen: Seen) -> None:
        release.wait(20)
        h.reply(200, b"done")

    return Backend(handler), release


@contextmanager
def held_proxy(
    tmp_path: Path, limits: dict[str, int], access_log: str | None = None
) -> Iterator[tuple[int, Backend, threading.Event]]:
    """bascule with these listener limits in front of a held backend."""
    backend, release = held_backend()
    port = free_port()
    config = proxy_config(port, [backend.address], listener={"limits": limits},
                          access_log=access_log)
    try:
        with running(config, tmp_path, port):
            yield port, backend, release
    finally:
        release.set()
        backend.stop()


def make_busy(port: int, backend: Backend, n: int) -> list[Client]:
    """n clients whose requests the held backend has received (and holds)."""
    return make_busy_again(backend, [Client(port, timeout=10) for _ in range(n)])


def make_busy_again(backend: Backend, clients: list[Client]) -> list[Client]:
    """These clients, once the held backend has received (and holds) a request from each."""
    before = len(backend.requests)
    n = len(clients)
    for c in clients:
        c.send(GET)
    deadline = time.monotonic() + 5
    while len(backend.requests) < before + n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(backend.requests) == before + n
    return clients


def served(c: Client) -> bool:
    c.send(GET)
    return c.response()[0] == 200


def test_idle_connections_beyond_the_limit_are_reclaimed_oldest_first(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = proxy_config(port, [backend.address], listener={"limits": {"max_connections": 50}})
    with running(config, tmp_path, port):
        clients = [Client(port) for _ in range(50)]
        try:
            for c in clients:  # each goes idle after one exchange, in this order
                assert served(c)
            newcomer = Client(port)
            clients.append(newcomer)
            assert served(newcomer)
            assert clients[0].closed_by_peer(), "the oldest idle connection is reclaimed"
            # clients[1] is used again, so clients[2] is now the oldest idle one
            assert served(clients[1])
            second = Client(port)
            clients.append(second)
            assert served(second)
            assert clients[2].closed_by_peer()
            for c in (clients[1], clients[3], clients[49], newcomer):
                assert served(c), "only the oldest idle connections are closed"
        finally:
            for c in clients:
                c.close()


def test_with_every_connection_busy_a_new_client_waits_and_is_served(tmp_path: Path) -> None:
    with held_proxy(tmp_path, {"max_connections": 5}) as (port, backend, release):
        busy = make_busy(port, backend, 5)
        # The connect completes (the kernel's backlog), but bascule does not accept it yet.
        waiting = Client(port, timeout=10)
        busy.append(waiting)
        waiting.send(GET)
        waiting.sock.settimeout(0.5)
        try:
            data = waiting.sock.recv(65536)
        except TimeoutError:
            data = None
        assert data is None, f"a client beyond the limit got {data!r} instead of waiting"
        assert len(backend.requests) == 5
        release.set()
        for c in busy:  # the waiting client last: it is let in when one of the others is done
            c.sock.settimeout(10)
            status, _, body, _ = c.response()
            assert (status, body) == (200, b"done")
            c.close()


def test_a_connection_closing_lets_the_waiting_client_in(tmp_path: Path) -> None:
    with held_proxy(tmp_path, {"max_connections": 2}) as (port, backend, release):
        busy = make_busy(port, backend, 2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as waiting:
            waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            busy[0].close()  # a busy client leaves: its place goes to the waiting one
            release.set()
            reply = waiting.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200 "), reply
        busy[1].close()


def test_per_client_limit_reclaims_that_clients_idle_connection_then_refuses(
    tmp_path: Path,
) -> None:
    limits = {"max_connections": 50, "max_connections_per_client": 3}
    log = tmp_path / "access.log"
    idle: list[Client] = []
    with held_proxy(tmp_path, limits, str(log)) as (port, backend, release):
        release.set()
        # The start-up probe's close is handled before this exchange ends: it no longer
        # counts against the client's limit.
        assert raw(port, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        idle += [Client(port) for _ in range(3)]
        for c in idle:
            assert served(c)
        fourth = Client(port)  # the client's oldest idle connection makes room
        idle.append(fourth)
        assert served(fourth)
        assert idle[0].closed_by_peer()
        release.clear()
        busy = make_busy_again(backend, [idle[1], idle[2], fourth])
        with Client(port) as refused:  # nothing of its own is idle: 429, then closed
            refused.send(GET)
            status, headers, body, _ = refused.response()
            assert status == 429 and headers["connection"] == "close"
            assert b"too many connections" in body
            assert refused.closed_by_peer()
        release.set()
        for c in busy:
            assert c.response()[0] == 200
    for c in idle:
        c.close()
    assert '"status":429' in log.read_text()


def test_the_limit_holds_when_uvloops_server_hands_over_to_the_accept_loop(
    tmp_path: Path, backend: Backend
) -> None:
    # Far below the limit uvloop's server accepts; 1024 below it bascule's own accept loop
    # takes over (listen/listener.py): this limit starts in the first mode and ends in the other.
    limit = 1600
    port = free_port()
    config = proxy_config(port, [backend.address],
                          listener={"limits": {"max_connections": limit}})
    clients: list[Client] = []
    with running(config, tmp_path, port):
        # The start-up probe's close is handled before this exchange ends.
        assert raw(port, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        try:
            for _ in range(limit):
                c = Client(port)
                clients.append(c)
                assert served(c)
            newcomer = Client(port)
            clients.append(newcomer)
            assert served(newcomer)
            assert clients[0].closed_by_peer(), "the oldest idle connection is reclaimed"
            assert served(clients[1]) and served(clients[-2])
        finally:
            for c in clients:
                c.close()
