"""Robustness and leaks, through the real proxy (issue 13): half-closing clients, pipelines that
bascule itself paused, the retry count in the access log, `Date` on bascule's own answers, and
what error bodies and sticky cookies may tell a client."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import (
    Backend,
    BackendHandler,
    Client,
    Seen,
    echo,
    free_port,
    proxy_config,
    running,
)


def log_entries(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, object]]:
    """The access log's entries, once there are at least `count` (bounded wait)."""
    deadline = time.monotonic() + timeout
    entries: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        if path.exists():
            entries = [json.loads(line) for line in path.read_text().splitlines() if line]
            if len(entries) >= count:
                break
        time.sleep(0.05)
    return entries


# ------------------------------------------------------------------ half-closing clients


@pytest.mark.parametrize("count", [1, 3])
def test_half_closed_client_gets_its_responses_then_the_close(tmp_path: Path, count: int) -> None:
    def slow(h: BackendHandler, seen: Seen) -> None:
        time.sleep(0.2)  # the client's FIN arrives while the exchange is in progress
        echo(h, seen)

    backend = Backend(slow)
    port = free_port()
    try:
        with running(proxy_config(port, [backend.address]), tmp_path, port), Client(
                port, timeout=10) as c:
            c.send(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count)))
            c.sock.shutdown(socket.SHUT_WR)
            for i in range(count):
                status, _, body, _ = c.response()
                assert status == 200 and json.loads(body)["path"] == f"/r{i}"
            # closed at once, not after the 60 s idle timeout
            assert c.closed_by_peer(timeout=3.0)
    finally:
        backend.stop()


# ------------------------------------------------------------------ the head timeout


def test_pipeline_paused_by_bascule_is_not_cut_by_the_head_timeout(tmp_path: Path) -> None:
    body = b"x" * 32768

    def big(h: BackendHandler, seen: Seen) -> None:
        h.reply(200, body)

    backend = Backend(big)
    port = free_port()
    count = 400
    # ~1 KiB heads: 400 of them span several reads, so one read ends inside a head, which
    # then waits in the kernel while bascule pauses reading behind the pipeline.
    one = b"GET /p HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (b"p" * 997)
    config = proxy_config(port, [backend.address],
                          listener={"timeouts": {"request_header": "1s"}})
    try:
        with running(config, tmp_path, port), Client(port, timeout=20) as c:
            # A small receive buffer: 13 MiB of responses cannot all wait in the kernel.
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sender = threading.Thread(target=c.send, args=(one * count,), daemon=True)
            sender.start()
            time.sleep(2.5)  # not reading, for more than the head timeout
            statuses = [c.response()[0] for _ in range(count)]
            sender.join(10)
            assert statuses == [200] * count
    finally:
        backend.stop()


def test_head_timeout_behind_an_exchange_is_logged(tmp_path: Path) -> None:
    def slow(h: BackendHandler, seen: Seen) -> None:
        time.sleep(1.0)
        echo(h, seen)

    backend = Backend(slow)
    port = free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [backend.address], access_log=str(log),
                          listener={"timeouts": {"request_header": "300ms"}})
    try:
        with running(config, tmp_path, port), Client(port, timeout=10) as c:
            # a whole request, then the start of a head that never ends
            c.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHo")
            assert c.response()[0] == 200
            assert c.response()[0] == 408
            entries = log_entries(log, 2)
        assert [(e["status"], e["error"]) for e in entries] == [
            (200, ""), (408, "request header timeout")]
    finally:
        backend.stop()


# ------------------------------------------------------------------ retries in the log


@pytest.mark.parametrize("dead", [2, 3])
def test_retries_count_only_retries_made(tmp_path: Path, dead: int) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    endpoints = [f"127.0.0.1:{free_port()}" for _ in range(dead)]  # nothing listens: refused
    config = proxy_config(port, endpoints, access_log=str(log),
                          cluster={"retries": {"attempts": 5}})
    with running(config, tmp_path, port):
        r = httpx.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}, timeout=5)
        assert r.status_code == 502
        entries = log_entries(log, 1)
    # every endpoint tried once: the first try and dead - 1 retries, no phantom one
    assert [e["retries"] for e in entries] == [dead - 1]
