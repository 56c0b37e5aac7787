"""tcp and udp listeners end to end: real sockets through `python -m bascule`."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port, running


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # the client's FIN, passed on, ends our side too


@contextmanager
def tcp_echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def udp_echo(tag: bytes) -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(tag + data, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def l4(name: str, port: int, protocol: str, cluster: str) -> dict[str, Any]:
    return {
        "name": name, "address": f"127.0.0.1:{port}", "protocol": protocol, "cluster": cluster
    }


def l4_config(listeners: list[dict[str, Any]], endpoints: list[str]) -> dict[str, Any]:
    return {
        "workers": 1,
        "access_log": {"path": None},
        "listeners": listeners,
        "clusters": [{"name": "c", "endpoints": [{"address": a} for a in endpoints]}],
    }


def _half_close_round_trip(port: int) -> bytes:
    payload = b"x" * 300_000
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close: the reply must still arrive in full
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize("relay", ["splice", "buffered"])
def test_tcp_listener_relays_echo_with_half_close(tmp_path: Path, relay: str) -> None:
    port = free_port()
    with tcp_echo() as backend:
        listener = {**l4("t", port, "tcp", "c"), "relay": relay}
        with running(l4_config([listener], [f"127.0.0.1:{backend}"]), tmp_path, port):
            assert _half_close_round_trip(port) == b"x" * 300_000


def test_tcp_listener_fails_over_from_dead_endpoint(tmp_path: Path) -> None:
    port = free_port()
    dead = free_port()  # nothing listens there: connect is refused
    with tcp_echo() as backend:
        listener = l4("t", port, "tcp", "c")
        config = l4_config([listener], [f"127.0.0.1:{dead}", f"127.0.0.1:{backend}"])
        with running(config, tmp_path, port):
            for _ in range(4):  # round robin hits the dead endpoint first at least once
                assert _half_close_round_trip(port) == b"x" * 300_000


def test_udp_listener_round_trip_two_clients(tmp_path: Path) -> None:
    tcp_port, udp_port = free_port(), free_port()
    with tcp_echo() as tcp_backend, udp_echo(b"A:") as udp_backend:
        config = l4_config(
            [
                # the tcp listener tells when bascule is up (wait_port is TCP)
                l4("t", tcp_port, "tcp", "c"),
                l4("u", udp_port, "udp", "u"),
            ],
            [f"127.0.0.1:{tcp_backend}"],
        )
        config["clusters"].append(
            {"name": "u", "endpoints": [{"address": f"127.0.0.1:{udp_backend}"}]}
        )
        with running(config, tmp_path, tcp_port):
            clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
            try:
                for n, c in enumerate(clients):
                    c.settimeout(3)
                    c.sendto(b"hello %d" % n, ("127.0.0.1", udp_port))
                for n, c in enumerate(clients):
                    data, addr = c.recvfrom(65535)
                    assert data == b"A:hello %d" % n
                    assert addr == ("127.0.0.1", udp_port)  # replies leave from the listener
            finally:
                for c in clients:
                    c.close()
