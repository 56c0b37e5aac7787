"""The HTTP/1.1 reverse-proxy path through real sockets: bascule as a process, real backends."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx

from helpers import Backend, free_port, proxy_config, raw, running, status_of


def test_get_is_proxied_with_client_identity(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port):
        r = httpx.get(f"http://127.0.0.1:{port}/hello?x=1", headers={"User-Agent": "t"})
    assert r.status_code == 200
    seen = backend.requests[-1]
    assert seen.path == "/hello?x=1"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == f"127.0.0.1:{port}"
    forwarded = f'for=127.0.0.1;by=bascule;proto=http;host="127.0.0.1:{port}"'
    assert seen.header("Forwarded") == forwarded
    assert seen.header("Via") == "1.1 bascule"
    assert r.headers["via"] == "1.1 bascule"
    assert json.loads(r.content)["backend"] == "b1"


def test_keep_alive_reuses_backend_connections(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port), httpx.Client() as c:
        for _ in range(30):
            assert c.get(f"http://127.0.0.1:{port}/").status_code == 200
    assert len(backend.requests) == 30
    assert backend.accepts == 1


def test_pipelined_requests_are_answered_in_order(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port):
        reqs = b"".join(
            b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)
        ) + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        out = raw(port, reqs)
    paths = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"]
             for part in out.split(b"HTTP/1.1 200 OK")[1:]]
    assert paths == ["/p0", "/p1", "/p2", "/p3", "/p4", "/last"]


def test_connection_close_is_honoured(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port):
        out = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200
    assert b"\r\nConnection: close\r\n" in out


def test_http10_client(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port):
        out = raw(port, b"GET /ten HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding" not in out
    assert b'"path": "/ten"' in out


def test_http10_keep_alive(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with (
        running(proxy_config(port, [backend.address]), tmp_path, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as s,
    ):
        for _ in range(2):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            assert b"Connection: keep-alive" in head


def test_hop_by_hop_headers_are_removed_both_ways(tmp_path: Path) -> None:
    def handler(h, seen):  # type: ignore[no-untyped-def]
        h.reply(200, b"ok", {"Connection": "X-Secret", "X-Secret": "1", "Keep-Alive": "timeout=5",
                             "Proxy-Authenticate": "Basic", "Upgrade": "h2c", "X-Kept": "yes"})

    b = Backend(handler)
    port = free_port()
    try:
        with running(proxy_config(port, [b.address]), tmp_path, port):
            out = raw(port, (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: X-Foo, close\r\nX-Foo: 1\r\n"
                b"Keep-Alive: 300\r\nTE: trailers\r\nUpgrade: websocket\r\n"
                b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9v\r\n"
                b"X-End: 1\r\n\r\n"))
    finally:
        b.stop()
    names = b.requests[0].names()
    for gone in ("x-foo", "keep-alive", "te", "upgrade", "proxy-connection",
                 "proxy-authorization"):
        assert gone not in names
    assert "x-end" in names
    head = out.split(b"\r\n\r\n")[0].lower()
    assert b"x-secret" not in head and b"keep-alive" not in head
    assert b"proxy-authenticate" not in head and b"upgrade" not in head
    assert b"x-kept: yes" in head


def test_untrusted_forwarding_headers_are_replaced(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port):
        httpx.get(f"http://127.0.0.1:{port}/", headers={
            "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6",
            "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil", "X-Real-IP": "6.6.6.6"})
    seen = backend.requests[-1]
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == f"127.0.0.1:{port}"
    assert "6.6.6.6" not in (seen.header("Forwarded") or "")
    assert seen.header("X-Real-IP") is None


def test_trusted_forwarding_headers_are_appended(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [backend.address], access_log=str(log),
                          listener={"trusted_proxies": ["127.0.0.0/8"]})
    with running(config, tmp_path, port):
        httpx.get(f"http://127.0.0.1:{port}/", headers={
            "X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7",
            "X-Forwarded-Proto": "https"})
    seen = backend.requests[-1]
    assert seen.header("X-Forwarded-For") == "203.0.113.7, 127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("Forwarded", ).startswith("for=203.0.113.7, for=127.0.0.1")
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["client"] == "203.0.113.7"
    assert entry["peer"] == "127.0.0.1"
