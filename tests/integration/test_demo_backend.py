"""The demo backend over real sockets: keep-alive, echoed headers, HEAD, bodies, bad input."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvloop

from bascule.demo_backend import start_demo_backend, stop_demo_backend


@pytest.fixture(params=["asyncio", "uvloop"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A demo backend named `b1` on 127.0.0.1, any free port, on its own loop in a thread.

    Under both loops: the supervisor may run either.
    """
    loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        start_demo_backend("127.0.0.1", 0, "b1"), loop
    ).result(timeout=5)
    port = server.sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port
    finally:
        asyncio.run_coroutine_threadsafe(stop_demo_backend(server), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def test_keep_alive_and_echo(backend: tuple[str, int]) -> None:
    host, port = backend
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as client:
        for n in (1, 2, 3):
            response = client.get(
                f"/hello?n={n}",
                headers={
                    "X-Forwarded-For": "203.0.113.7",
                    "Forwarded": "for=203.0.113.7;proto=http",
                    "Via": "1.1 bascule",
                },
            )
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
            assert response.headers["x-backend"] == "b1"
            assert response.headers["connection"] == "keep-alive"
            # The same connection served all three: the backend counts requests per connection.
            assert response.text == (
                f"Hello from demo backend b1 ({host}:{port}).\n"
                "method: GET\n"
                f"path: /hello?n={n}\n"
                "x-forwarded-for: 203.0.113.7\n"
                "forwarded: for=203.0.113.7;proto=http\n"
                "via: 1.1 bascule\n"
                f"request on this connection: {n}\n"
            )


def test_absent_headers_shown_as_dash(backend: tuple[str, int]) -> None:
    host, port = backend
    text = httpx.get(f"http://{host}:{port}/", timeout=5).text
    assert "x-forwarded-for: -\nforwarded: -\nvia: -\n" in text


def test_head_has_no_body(backend: tuple[str, int]) -> None:
    host, port = backend
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as client:
        get = client.get("/x")
        head = client.head("/x")
        assert head.status_code == 200 and head.content == b""
        # The length of the body a GET would have had (this one says "HEAD", one letter more).
        would_be = get.content.replace(b"method: GET", b"method: HEAD").replace(
            b"connection: 1", b"connection: 2"
        )
        assert int(head.headers["content-length"]) == len(would_be)
        # The connection is still usable after a HEAD: nothing was left unread on it.
        assert client.get("/x").text.endswith("request on this connection: 3\n")


def test_request_bodies_are_read_and_discarded(backend: tuple[str, int]) -> None:
    host, port = backend
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as client:
        sized = client.post("/upload", content=b"x" * 300_000)
        assert sized.status_code == 200 and "method: POST\n" in sized.text

        def chunks() -> Iterator[bytes]:
            yield from (b"y" * 10_000 for _ in range(20))

        chunked = client.put("/upload", content=chunks())  # Transfer-Encoding: chunked
        assert chunked.status_code == 200 and "method: PUT\n" in chunked.text
        assert chunked.text.endswith("request on this connection: 2\n")


def _raw(port: int, data: bytes) -> bytes:
    """Send bytes, half-close, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_pipelined_requests_answered_in_order(backend: tuple[str, int]) -> None:
    _, port = backend
    out = _raw(
        port,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert out.index(b"path: /a\n") < out.index(b"path: /c\n")
    assert b"path: /b" not in out  # HEAD: no body
    assert b"/never" not in out  # nothing after the request that closed the connection
    assert b"Connection: close\r\n" in out


def test_expect_100_continue(backend: tuple[str, int]) -> None:
    _, port = backend
    out = _raw(
        port,
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\nabc",
    )
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


def test_http10_closes_by_default(backend: tuple[str, int]) -> None:
    _, port = backend
    out = _raw(port, b"GET / HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in out


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400 Bad Request"),
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414 URI Too Long"),
        (
            b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n",
            b"431 Request Header Fields Too Large",
        ),
    ],
)
def test_bad_requests_get_an_error_and_a_close(
    backend: tuple[str, int], request_bytes: bytes, status: bytes
) -> None:
    _, port = backend
    out = _raw(port, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert b"Connection: close\r\n" in out
    # The server is unharmed.
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200


def test_stop_closes_idle_keep_alive_connections() -> None:
    async def main() -> None:
        server = await start_demo_backend("127.0.0.1", 0, "b1")
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Connection: keep-alive\r\n" in head
        # The connection is now idle and kept alive; stopping must not wait for the client.
        await asyncio.wait_for(stop_demo_backend(server), timeout=2)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        assert await asyncio.wait_for(reader.read(), timeout=2) == b""  # closed by the server
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())
