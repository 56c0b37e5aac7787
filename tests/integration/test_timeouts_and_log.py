"""Timeouts on both sides, pool limits, and the access log's two formats."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx

from helpers import (
    Backend,
    BackendHandler,
    Seen,
    free_port,
    proxy_config,
    read_response,
    running,
    status_of,
)


def test_idle_keep_alive_client_is_closed_after_the_idle_timeout(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = proxy_config(port, [backend.address], listener={"timeouts": {"idle": "400ms"}})
    with running(config, tmp_path, port), socket.create_connection(
        ("127.0.0.1", port), timeout=5
    ) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert s.recv(1) == b""  # the proxy closes the idle connection
        waited = time.monotonic() - t0
    assert 0.3 < waited < 3.0


def test_upstream_going_idle_mid_body_cuts_the_client(tmp_path: Path) -> None:
    def stalls(h: BackendHandler, seen: Seen) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"x" * 100)
        h.wfile.flush()
        time.sleep(3)

    b = Backend(stalls)
    port = free_port()
    config = proxy_config(port, [b.address], cluster={"timeouts": {"idle": "500ms"}})
    try:
        with running(config, tmp_path, port), socket.create_connection(
            ("127.0.0.1", port), timeout=5
        ) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            waited = time.monotonic() - t0
    finally:
        b.stop()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"x" * 100  # truncated, never completed with wrong bytes
    assert 0.4 < waited < 2.5


def test_total_timeout_is_504(tmp_path: Path) -> None:
    def slow_head(h: BackendHandler, seen: Seen) -> None:
        time.sleep(2)
        h.reply(200, b"late")

    b = Backend(slow_head)
    port = free_port()
    config = proxy_config(port, [b.address], cluster={"timeouts": {"total": "400ms"}})
    try:
        with running(config, tmp_path, port):
            t0 = time.monotonic()
            r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            waited = time.monotonic() - t0
    finally:
        b.stop()
    assert r.status_code == 504
    assert waited < 1.5


def test_connect_timeout_is_504(tmp_path: Path) -> None:
    # A listening socket whose backlog is full never completes new handshakes.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        address = f"127.0.0.1:{full.getsockname()[1]}"
        fillers = []
        for _ in range(8):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(full.getsockname())
            except BlockingIOError:
                pass
            fillers.append(f)
        port = free_port()
        config = proxy_config(port, [address], cluster={
            "timeouts": {"connect": "300ms"}, "retries": {"attempts": 0}})
        try:
            with running(config, tmp_path, port):
                t0 = time.monotonic()
                r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                waited = time.monotonic() - t0
        finally:
            for f in fillers:
                f.close()
    assert r.status_code == 504
    assert waited < 2.0


def test_pool_keeps_at_most_max_idle_connections(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = proxy_config(port, [backend.address], cluster={"pool": {"max_idle": 2}})
    with running(config, tmp_path, port):
        clients = [httpx.Client() for _ in range(5)]
        try:
            # five requests in flight at once need five backend connections...
            import threading
            threads = [threading.Thread(target=c.get, args=(f"http://127.0.0.1:{port}/",))
                       for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            opened = backend.accepts
            # ...then one at a time, only the two kept idle are reused
            for c in clients:
                assert c.get(f"http://127.0.0.1:{port}/").status_code == 200
        finally:
            for c in clients:
                c.close()
    assert opened >= 2
    assert backend.accepts == opened  # sequential requests reuse idle connections


def test_json_access_log_fields(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    with running(proxy_config(port, [backend.address], access_log=str(log)), tmp_path, port):
        r = httpx.get(f"http://127.0.0.1:{port}/a?b=1", headers={"User-Agent": "probe/1"})
        time.sleep(0.2)
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["status"] == 200
    assert entry["bytes"] == len(r.content)
    assert entry["method"] == "GET" and entry["uri"] == "/a?b=1"
    assert entry["endpoint"] == backend.address and entry["cluster"] == "c"
    assert entry["client"] == "127.0.0.1" and entry["user_agent"] == "probe/1"
    assert 0 <= entry["upstream_header_ms"] <= entry["upstream_ms"] <= entry["total_ms"]
    assert entry["retries"] == 0 and entry["error"] == ""


def test_combined_access_log(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [backend.address])
    config["access_log"] = {"path": str(log), "format": "combined"}
    with running(config, tmp_path, port):
        r = httpx.get(f"http://127.0.0.1:{port}/x", headers={"User-Agent": "probe/1",
                                                            "Referer": "http://r/"})
        time.sleep(0.2)
    line = log.read_text().splitlines()[-1]
    assert line.startswith("127.0.0.1 - - [")
    assert f'"GET /x HTTP/1.1" 200 {len(r.content)} "http://r/" "probe/1"' in line
    assert f"endpoint={backend.address}" in line


def test_client_address_from_trusted_proxy_chain(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [backend.address], access_log=str(log),
                          listener={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]})
    with running(config, tmp_path, port):
        out = httpx.get(f"http://127.0.0.1:{port}/",
                        headers={"X-Forwarded-For": "198.51.100.9, 10.1.2.3"})
        time.sleep(0.2)
    assert status_of(b"HTTP/1.1 %d" % out.status_code) == 200
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["client"] == "198.51.100.9"


def test_endpoint_that_stops_reading_the_body_is_cut_with_504(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held: list[socket.socket] = []

    def reads_head_only() -> None:
        conn, _ = listener.accept()
        held.append(conn)
        conn.recv(4096)  # the head, then nothing more: the body backs up

    threading.Thread(target=reads_head_only, daemon=True).start()
    port = free_port()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    config = proxy_config(port, [address], cluster={"timeouts": {"idle": "500ms"}})
    size = 64 << 20
    try:
        with running(config, tmp_path, port), socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as s:
            s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)

            def send_body() -> None:
                try:
                    s.sendall(b"x" * size)
                except OSError:
                    pass  # the proxy stops reading and closes: expected

            sender = threading.Thread(target=send_body, daemon=True)
            sender.start()
            head, _ = read_response(s, head_only=True)
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert head.startswith(b"HTTP/1.1 504")


def test_a_client_that_never_reads_is_cut_after_the_idle_timeout(tmp_path: Path) -> None:
    block = b"y" * (1 << 20)

    def big(h: BackendHandler, seen: Seen) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(block) * 64))
        h.end_headers()
        try:
            for _ in range(64):
                h.wfile.write(block)
        except OSError:
            pass

    b = Backend(big)
    port = free_port()
    config = proxy_config(port, [b.address], listener={"timeouts": {"idle": "500ms"}})
    try:
        with running(config, tmp_path, port), socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
            time.sleep(3.0)  # never read: the proxy must give up on this client
            received = 0
            try:
                while chunk := s.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
    finally:
        b.stop()
    assert received < len(block) * 64
