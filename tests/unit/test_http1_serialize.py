"""Head serialisation, byte for byte: the upstream request head and the relayed response
head, from heads the codec parsed."""

from __future__ import annotations

from bascule.codec.headers import FORWARDING, HOP_BY_HOP
from bascule.codec.http1 import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Limits,
    framing_field,
    request_head,
    response_head,
)
from bascule.codec.http1.head import parse_request_head, parse_response_head

IDENTITY = b"X-Forwarded-For: 127.0.0.1\r\nVia: 1.1 bascule\r\n"
DROP_UNTRUSTED = HOP_BY_HOP | (FORWARDING - {b"via"})


def test_upstream_request_head_keeps_fields_as_sent_and_drops_hop_by_hop() -> None:
    head = parse_request_head(
        b"POST /p?q HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nX-Forwarded-For: 6.6.6.6\r\nCase-Kept: V  a\r\nKeep-Alive: 5\r\n"
        b"Content-Length: 3\r\n\r\nabc",
        Limits(),
    )
    assert head is not None
    drop = DROP_UNTRUSTED | head.conn_tokens
    out = request_head(head.method_raw, head.target, head.fields, drop, identity=IDENTITY,
                       extra=b"X-Edit: 1\r\n")
    assert out == (
        b"POST /p?q HTTP/1.1\r\nHost: app.test\r\nCase-Kept: V  a\r\nContent-Length: 3\r\n"
        b"X-Forwarded-For: 127.0.0.1\r\nVia: 1.1 bascule\r\nX-Edit: 1\r\n\r\n"
    )


def test_upstream_request_head_writes_one_framing_and_a_host_when_missing() -> None:
    head = parse_request_head(
        b"PUT /u HTTP/1.0\r\nContent-Length: 7\r\nX-A: b\r\n\r\n", Limits())
    assert head is not None and head.host_raw == b""
    out = request_head(head.method_raw, head.target, head.fields, HOP_BY_HOP,
                       host=b"10.0.0.1:80", framing=LENGTH, content_length=7)
    assert out == b"PUT /u HTTP/1.1\r\nHost: 10.0.0.1:80\r\nX-A: b\r\nContent-Length: 7\r\n\r\n"
    chunked = parse_request_head(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Limits())
    assert chunked is not None
    fields = chunked.fields
    # re-chunked upstream
    assert request_head(b"POST", b"/", fields, HOP_BY_HOP, framing=CHUNKED) == (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    # or wholly received first: sent with its length
    assert request_head(b"POST", b"/", fields, HOP_BY_HOP, framing=LENGTH, content_length=12) == (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
    # a body-less request says nothing of framing
    assert request_head(b"GET", b"/", fields, frozenset(), framing=NO_BODY) == (
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_relayed_response_head_reframes_and_drops_what_connection_names() -> None:
    data = (b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: X-Trace\r\nX-Trace: 1\r\n"
            b"Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=b\r\n"
            b"Proxy-Authenticate: Basic\r\n\r\n")
    head = parse_response_head(data, "GET")
    assert head is not None
    out = response_head(head.status, head.reason, head.fields, HOP_BY_HOP | head.conn_tokens,
                        framing=CHUNKED, extra=b"Via: 1.1 bascule\r\n")
    assert out == (b"HTTP/1.1 200 OK\r\nServer: up\r\nSet-Cookie: a=b\r\n"
                   b"Transfer-Encoding: chunked\r\nVia: 1.1 bascule\r\n\r\n")


def test_relayed_response_head_framings() -> None:
    data = b"HTTP/1.0 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n"
    head = parse_response_head(data, "GET")
    assert head is not None
    fields = head.fields
    # a body-less response keeps the length it announced (HEAD, 304)
    assert response_head(304, head.reason, fields, frozenset(), framing=NO_BODY,
                         content_length=head.content_length) == (
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n")
    assert response_head(200, b"OK", fields, frozenset(), framing=LENGTH, content_length=10,
                         connection=b"keep-alive") == (
        b"HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: 10\r\nConnection: keep-alive\r\n\r\n")
    # close-delimited for an HTTP/1.0 client: no framing line, and a close
    assert response_head(200, b"", fields, frozenset({b"etag"}), framing=UNTIL_CLOSE,
                         connection=b"close") == b"HTTP/1.1 200 \r\nConnection: close\r\n\r\n"


def test_framing_field() -> None:
    assert framing_field(CHUNKED, -1) == b"Transfer-Encoding: chunked\r\n"
    assert framing_field(LENGTH, 0) == b"Content-Length: 0\r\n"
    assert framing_field(NO_BODY, -1) == b""
    assert framing_field(NO_BODY, 4) == b"Content-Length: 4\r\n"
    assert framing_field(UNTIL_CLOSE, 4) == b""
