"""The response head codec on both twins: framing for the request's method and the status,
keep-alive, and 502 for an endpoint that breaks HTTP (no sockets)."""

from __future__ import annotations

from types import ModuleType

import pytest
from http1_twins import RESPONSE_ATTRS, TWINS, as_dict, response

from bascule.codec.http1 import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE


def resp(status: bytes = b"200 OK", extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"%s %s\r\n%s\r\n" % (version, status, extra)


FRAMING = [
    # (id, method, head, framing, content_length, keep_alive)
    ("length", "GET", resp(extra=b"Content-Length: 3\r\n"), LENGTH, 3, True),
    ("length-zero", "GET", resp(extra=b"Content-Length: 0\r\n"), LENGTH, 0, True),
    ("chunked", "GET", resp(extra=b"Transfer-Encoding: chunked\r\n"), CHUNKED, -1, True),
    ("until-close", "GET", resp(), UNTIL_CLOSE, -1, False),
    ("head-keeps-length", "HEAD", resp(extra=b"Content-Length: 99\r\n"), NO_BODY, 99, True),
    ("head-chunked", "HEAD", resp(extra=b"Transfer-Encoding: chunked\r\n"), NO_BODY, -1, True),
    ("head-nothing", "HEAD", resp(), NO_BODY, -1, True),
    ("204", "GET", resp(b"204 No Content"), NO_BODY, -1, True),
    ("304-with-length", "GET", resp(b"304 Not Modified", b"Content-Length: 10\r\n"), NO_BODY,
     10, True),
    ("100", "POST", resp(b"100 Continue"), NO_BODY, -1, True),
    ("101", "GET", resp(b"101 Switching Protocols", b"Upgrade: x\r\n"), NO_BODY, -1, True),
    ("close", "GET", resp(extra=b"Content-Length: 1\r\nConnection: close\r\n"), LENGTH, 1, False),
    ("1.0-default-close", "GET", resp(extra=b"Content-Length: 1\r\n", version=b"HTTP/1.0"),
     LENGTH, 1, False),
    ("1.0-keep-alive", "GET",
     resp(extra=b"Content-Length: 1\r\nConnection: keep-alive\r\n", version=b"HTTP/1.0"),
     LENGTH, 1, True),
    ("no-reason", "GET", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n", LENGTH, 2, True),
    ("empty-reason", "GET", b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n", LENGTH, 2, True),
]


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize(("method", "data", "framing", "length", "keep_alive"),
                         [c[1:] for c in FRAMING], ids=[c[0] for c in FRAMING])
def test_response_framing(codec: ModuleType, method: str, data: bytes, framing: int,
                          length: int, keep_alive: bool) -> None:
    got = response(codec, data + b"body", method)
    assert (got.framing, got.content_length, got.keep_alive) == (framing, length, keep_alive)
    assert got.end == len(data)
    for k in range(len(data)):
        assert response(codec, data[:k], method) is None, data[:k]


@pytest.mark.parametrize("codec", TWINS)
def test_response_exact_outputs(codec: ModuleType) -> None:
    data = (b"HTTP/1.1 404 Not Found\r\nServer: x\r\nConnection: X-Trace, close\r\n"
            b"X-Trace:  a b \r\nContent-Length: 5\r\n\r\n")
    assert as_dict(response(codec, data + b"12345"), RESPONSE_ATTRS) == {
        "status": 404, "reason": b"Not Found", "version": "1.1",
        "fields": [(b"server", b"Server", b"x"),
                   (b"connection", b"Connection", b"X-Trace, close"),
                   (b"x-trace", b"X-Trace", b"a b"),
                   (b"content-length", b"Content-Length", b"5")],
        "framing": LENGTH, "content_length": 5, "keep_alive": False,
        "conn_tokens": frozenset({b"x-trace", b"close"}), "fields_start": 24, "end": len(data),
    }


@pytest.mark.parametrize("codec", TWINS)
def test_interim_response_then_final(codec: ModuleType) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    final = resp(extra=b"Content-Length: 2\r\n")
    buf = interim + final + b"ok"
    first = response(codec, buf, "POST")
    assert (first.status, first.framing, first.end) == (100, NO_BODY, len(interim))
    second = response(codec, buf[first.end :], "POST")
    assert (second.status, second.framing, second.content_length) == (200, LENGTH, 2)
    assert second.end == len(final)


BROKEN = [
    ("cl-dup", resp(extra=b"Content-Length: 3\r\nContent-Length: 3\r\n")),
    ("cl-bad", resp(extra=b"Content-Length: 3x\r\n")),
    ("cl+te", resp(extra=b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n")),
    ("te-gzip", resp(extra=b"Transfer-Encoding: gzip\r\n")),
    ("te-gzip-chunked", resp(extra=b"Transfer-Encoding: gzip, chunked\r\n")),
    ("te-then-empty", resp(extra=b"Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n")),
    ("te-in-1.0", resp(extra=b"Transfer-Encoding: chunked\r\n", version=b"HTTP/1.0")),
    ("obs-fold", resp(extra=b"X-A: 1\r\n 2\r\n")),
    ("space-before-colon", resp(extra=b"X-A : 1\r\n")),
    ("nul", resp(extra=b"X-A: \x00\r\n")),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n\r\n\r\n"),
    ("not-http", b"THIS IS NOT HTTP\r\n\x00\x01\x02\r\n\r\n"),
    ("version-2", resp(version=b"HTTP/2.0")),
    ("status-short", b"HTTP/1.1 20 OK\r\n\r\n"),
    ("status-long", b"HTTP/1.1 2000 OK\r\n\r\n"),
    ("status-zero", b"HTTP/1.1 099 Odd\r\n\r\n"),
    ("status-600", b"HTTP/1.1 600 Odd\r\n\r\n"),
    ("status-letters", b"HTTP/1.1 2x0 OK\r\n\r\n"),
    ("no-space", b"HTTP/1.1200 OK\r\n\r\n"),
    ("ctl-in-reason", b"HTTP/1.1 200 O\x01K\r\n\r\n"),
]


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize("data", [c[1] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_responses_are_502(codec: ModuleType, data: bytes) -> None:
    got = response(codec, data)
    assert isinstance(got, tuple), got
    assert got[0] == 502, got


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize("data", [
    b"THIS IS NOT", b"HTTP/1.1 2x", b"HTTP/1.1 200 OK\r\nX: \x00", b"HTTP/1.1 200 OK\nX",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 201, b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000,
], ids=["garbage", "status", "ctl", "bare-lf", "too-many-fields", "too-large"])
def test_partial_broken_responses_are_502_early(codec: ModuleType, data: bytes) -> None:
    assert b"\r\n\r\n" not in data
    got = response(codec, data)
    assert isinstance(got, tuple) and got[0] == 502, got
