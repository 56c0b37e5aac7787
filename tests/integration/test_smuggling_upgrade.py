"""Request smuggling through `Connection: Upgrade` (issue 13, item 1).

llhttp stops at the head of a request that asks for an upgrade and skips its body. bascule
serves such a request as plain HTTP (RFC 9110 §7.8 lets a server ignore Upgrade), so the body
must be read as the body it is — relayed intact upstream — never parsed as the client's next
request, and never leave a backend connection out of step for the next client.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import Backend, Client, free_port, proxy_config, running

HIDDEN = b"GET /admin HTTP/1.1\r\nHost: app.test\r\n\r\n"


def _routes() -> list[dict[str, object]]:
    return [
        {
            "name": "deny-admin",
            "match": {"path_prefix": "/admin"},
            "direct_response": {"status": 403, "body": "forbidden\n"},
        },
        {"match": {"path_prefix": "/"}, "cluster": "c"},
    ]


@pytest.mark.parametrize("upgrade", [b"websocket", b"h2c", b"anything"])
@pytest.mark.parametrize("method", [b"POST", b"GET"])
def test_upgrade_request_body_is_relayed_not_parsed_as_a_request(
    tmp_path: Path, backend: Backend, method: bytes, upgrade: bytes
) -> None:
    port = free_port()
    config = proxy_config(port, [backend.address], routes=_routes())
    with running(config, tmp_path, port), Client(port) as c:
        c.send(
            b"%s /x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (method, upgrade, len(HIDDEN), HIDDEN)
        )
        status, _, _, _ = c.response()
        assert status == 200
        # exactly one response: the body was not a second request
        assert not c.buf
        c.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.sock.recv(1)
        c.sock.settimeout(5)
        c.send(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert c.response()[0] == 200
    assert [r.path for r in backend.requests] == ["/x", "/next"]
    first = backend.requests[0]
    assert first.body == HIDDEN
    assert first.header("Upgrade") is None
    assert "upgrade" not in (first.header("Connection") or "").lower()


def test_chunked_upgrade_request_body_is_relayed(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    body = b"%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(HIDDEN), HIDDEN)
    config = proxy_config(port, [backend.address], routes=_routes())
    with running(config, tmp_path, port), Client(port) as c:
        c.send(
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body
        )
        assert c.response()[0] == 200
        c.send(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert c.response()[0] == 200
    assert [r.path for r in backend.requests] == ["/x", "/next"]
    assert backend.requests[0].body == HIDDEN
    assert backend.requests[0].header("X-Trailer") is None


def test_upgrade_body_split_over_many_reads(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"ab", b"c" * 300, b"d")) + b"0\r\n\r\n"
    data = (
        b"POST /x HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body
    )
    config = proxy_config(port, [backend.address], routes=_routes())
    with running(config, tmp_path, port), Client(port) as c:
        for i in range(0, len(data), 5):
            c.send(data[i : i + 5])
            time.sleep(0.001)
        assert c.response()[0] == 200
    assert backend.requests[0].body == b"ab" + b"c" * 300 + b"d"


def test_bad_chunk_in_upgrade_body_is_400(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = proxy_config(port, [backend.address], routes=_routes())
    with running(config, tmp_path, port), Client(port) as c:
        c.send(
            b"POST /x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\nGET /admin HTTP/1.1\r\n\r\n"
        )
        status, headers, _, _ = c.response()
        assert status == 400
        assert headers.get("connection") == "close"
    assert all(r.path != "/admin" for r in backend.requests)


class _HeadOnlyBackend:
    """A keep-alive backend that answers each request as soon as its head arrives, then reads
    and drops its Content-Length body (as nginx does), recording every byte per connection:
    the shape that showed another client's request losing its first bytes on a reused
    connection when bascule sent a Content-Length without the body."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepts = 0
        self.received: list[bytes] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepts += 1
            index = len(self.received)
            self.received.append(b"")
            threading.Thread(target=self._conn, args=(conn, index), daemon=True).start()

    def _conn(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(5)
        buf = b""
        skip = 0
        with conn:
            while not self._stop:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.received[index] += data
                buf += data
                while True:
                    if skip:  # the body of the request answered already: read and drop it
                        n = min(skip, len(buf))
                        skip -= n
                        buf = buf[n:]
                        if skip:
                            break
                    if b"\r\n\r\n" not in buf:
                        break
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    lines = head.split(b"\r\n")
                    for field in lines[1:]:
                        name, _, value = field.partition(b":")
                        if name.strip().lower() == b"content-length":
                            skip = int(value)
                    answer = b"seen: " + lines[0]
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
                    )

    def stop(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def head_only() -> Iterator[_HeadOnlyBackend]:
    b = _HeadOnlyBackend()
    yield b
    b.stop()


def test_connection_is_pooled_only_after_the_whole_request_body_was_sent(
    tmp_path: Path, head_only: _HeadOnlyBackend
) -> None:
    """The pool invariant: a backend connection goes back to the pool only when exactly the
    framed request body was sent and the whole response was read. Another client's request
    must arrive whole on whatever connection it gets."""
    port = free_port()
    with running(proxy_config(port, [head_only.address], routes=_routes()), tmp_path, port):
        with Client(port) as c:
            c.send(
                b"POST /x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(HIDDEN), HIDDEN)
            )
            _, _, body, _ = c.response()
            assert body == b"seen: POST /x HTTP/1.1"
        # a second client: its request must reach the backend as it was sent
        with Client(port) as c:
            c.send(b"GET /victim HTTP/1.1\r\nHost: app.test\r\n\r\n")
            _, _, body, _ = c.response()
            assert body == b"seen: GET /victim HTTP/1.1"
        # a streamed body the backend answered before it arrived: that connection is spent
        with Client(port) as c:
            c.send(b"POST /early HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n12345")
            _, _, body, _ = c.response()
            assert body == b"seen: POST /early HTTP/1.1"
            c.send(b"67890")
            time.sleep(0.2)
        with Client(port) as c:
            c.send(b"GET /victim2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            _, _, body, _ = c.response()
            assert body == b"seen: GET /victim2 HTTP/1.1"
    every = b"".join(head_only.received)
    assert b"GET /admin" not in every.replace(HIDDEN, b"")  # the hidden request only as a body
    assert every.count(HIDDEN) == 1
