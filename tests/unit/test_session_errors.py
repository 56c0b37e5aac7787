"""Every refusal of the README's error table that a client's bytes earn, piped through a real
HttpSession (bascule.testing's Playbook, no sockets): the exact status, the reason in the body,
`Connection: close` framing, the connection closed, and nothing sent upstream."""

from __future__ import annotations

from typing import Any

import pytest

from bascule.testing.playbook import Playbook

H = b"Host: app.test\r\n"

# (request bytes, status, the body's detail); limits: max_uri 64, 4 fields, 256 bytes, 10 body
ROWS: list[tuple[bytes, int, str]] = [
    (b"GET / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     400, "both Content-Length and Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "?"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\n", 400, "?"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400, "?"),
    (b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n", 400,
     "Transfer-Encoding in an HTTP/1.0 request"),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400, "?"),
    (b"GET / HTTP/1.1\r\n" + H + b"X Y: a\r\n\r\n", 400, "?"),
    (b"GET / HTTP/1.1\r\n" + H + b"X : a\r\n\r\n", 400, "?"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nz\r\n", 400, "?"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "HTTP/1.1 request without Host"),
    (b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400, "more than one Host header"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "?"),
    (b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400, "?"),
    (b"GET /a%zz HTTP/1.1\r\n" + H + b"\r\n", 400, "?"),
    (b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400, "fragment (#) in the request target"),
    (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400, "?"),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n", 400, "?"),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\x01\r\n\r\n", 400, "?"),
    (b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400, "?"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 11\r\n\r\n", 413, "request body too large"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nb\r\n01234567890\r\n",
     413, "request body too large"),
    (b"GET /" + b"a" * 64 + b" HTTP/1.1\r\n" + H + b"\r\n", 414, "?"),
    (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 300 + b"\r\n\r\n", 431, "?"),
    (b"GET / HTTP/1.1\r\n" + H + b"A: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n", 431, "?"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501, "?"),
    (b"CONNECT app.test:443 HTTP/1.1\r\n" + H + b"\r\n", 501,
     "CONNECT is not supported by a reverse proxy"),
    (b"FOO / HTTP/1.1\r\n" + H + b"\r\n", 501, "method not implemented"),
]


def playbook() -> Playbook:
    return Playbook({
        "listeners": [{"name": "web", "address": "127.0.0.1:1",
                       "limits": {"max_uri": 64, "max_headers": 4, "max_header_size": 256,
                                  "max_request_body": 10},
                       "routes": [{"match": {"path_prefix": "/"}, "cluster": "c"}]}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:2"}]}],
    })  # fmt: skip


@pytest.mark.parametrize(("request_bytes", "status", "detail"), ROWS)
@pytest.mark.parametrize("split", [False, True], ids=["one-read", "byte-by-byte"])
def test_error_table_row(request_bytes: bytes, status: int, detail: str, split: bool) -> None:
    pb = playbook()
    down: Any = pb.client()
    if split:
        for i in range(len(request_bytes)):
            if down.closed:
                break
            down.send(request_bytes[i : i + 1])
    else:
        down.send(request_bytes)
    out = bytes(down.transport.data)
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 %d " % status)
    fields = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines[1:])}
    assert fields[b"connection"] == b"close"
    assert int(fields[b"content-length"]) == len(body)
    if detail != "?":
        assert body == b"%d %s: %s\n" % (status, lines[0].split(b" ", 2)[2], detail.encode())
    in_body = not request_bytes.endswith(b"\r\n\r\n")  # the exchange answers a broken body
    assert pb.connects == 0 or in_body
    assert down.transport.eof_written or down.closed
