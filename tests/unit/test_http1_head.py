"""The request head codec, table-driven, on both twins: every refusal of the README's error
table with its status, and the exact outputs of accepted heads (no sockets)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType

import pytest
from http1_twins import HEAD_ATTRS, LIMITS, TWINS, as_dict, chead, request

from bascule.codec.http1 import CHUNKED, LENGTH, NO_BODY
from bascule.codec.http1.head import MAX_EMPTY_LINES, Limits
from bascule.config.schema import ListenerLimits


def req(extra: bytes = b"", method: bytes = b"GET", target: bytes = b"/",
        version: bytes = b"HTTP/1.1", host: bytes = b"Host: app.test\r\n") -> bytes:
    return b"%s %s %s\r\n%s%s\r\n" % (method, target, version, host, extra)


REFUSED = [
    # request smuggling shapes (README: 400)
    ("cl+te", req(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"POST"), 400),
    ("te+cl", req(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"POST"), 400),
    ("cl-dup-same", req(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"POST"), 400),
    ("cl-dup-diff", req(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"POST"), 400),
    ("cl-list", req(b"Content-Length: 1, 2\r\n", b"POST"), 400),
    ("cl-abc", req(b"Content-Length: abc\r\n", b"POST"), 400),
    ("cl-negative", req(b"Content-Length: -1\r\n", b"POST"), 400),
    ("cl-space", req(b"Content-Length: 1 2\r\n", b"POST"), 400),
    ("cl-plus", req(b"Content-Length: +3\r\n", b"POST"), 400),
    ("cl-empty", req(b"Content-Length:\r\n", b"POST"), 400),
    ("cl-hex", req(b"Content-Length: 0x10\r\n", b"POST"), 400),
    ("cl-huge", req(b"Content-Length: 1234567890123456789\r\n", b"POST"), 400),
    ("te-chunked-not-last", req(b"Transfer-Encoding: chunked, identity\r\n", b"POST"), 400),
    ("te-gzip-alone", req(b"Transfer-Encoding: gzip\r\n", b"POST"), 400),
    ("te-chunked-twice", req(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                             b"POST"), 400),
    ("te-chunked-chunked", req(b"Transfer-Encoding: chunked, chunked\r\n", b"POST"), 400),
    ("te-empty", req(b"Transfer-Encoding:\r\n", b"POST"), 400),
    ("te-trailing-comma", req(b"Transfer-Encoding: chunked,\r\n", b"POST"), 400),
    ("te-then-empty", req(b"Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n", b"POST"),
     400),
    ("te-in-1.0", req(b"Transfer-Encoding: chunked\r\n", b"POST", version=b"HTTP/1.0"), 400),
    ("obs-fold-space", req(b"X-A: 1\r\n folded\r\n"), 400),
    ("obs-fold-tab", req(b"X-A: 1\r\n\tfolded\r\n"), 400),
    ("obs-fold-first", b"GET / HTTP/1.1\r\n Host: app.test\r\n\r\n", 400),
    ("space-in-name", req(b"Bad Name: x\r\n"), 400),
    ("space-before-colon", req(b"X :y\r\n"), 400),
    ("tab-before-colon", req(b"X\t:y\r\n"), 400),
    ("ctl-in-name", req(b"X\x01Y: z\r\n"), 400),
    ("obs-text-in-name", req(b"X\xffY: z\r\n"), 400),
    ("no-colon", req(b"NoColon\r\n"), 400),
    ("empty-name", req(b": value\r\n"), 400),
    ("nul-in-value", req(b"X-A: a\x00b\r\n"), 400),
    ("del-in-value", req(b"X-A: a\x7fb\r\n"), 400),
    ("vt-in-value", req(b"X-A: a\x0bb\r\n"), 400),
    ("bare-cr-in-value", req(b"X-A: a\rb\r\n"), 400),
    ("bare-lf-ends-field", b"GET / HTTP/1.1\r\nHost: app.test\nX-A: 1\r\n\r\n", 400),
    ("bare-lf-head", b"GET / HTTP/1.1\nHost: app.test\n\n\r\n\r\n", 400),
    ("cr-cr-lf", req(b"X-A: a\r\r\n"), 400),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts-same", req(b"Host: app.test\r\n"), 400),
    ("two-hosts-diff", req(b"Host: other.test\r\n"), 400),
    ("two-hosts-1.0", req(b"Host: other.test\r\n", version=b"HTTP/1.0"), 400),
    # the request line
    ("no-target", b"GET\r\n\r\n", 400),
    ("http-0.9", b"GET /\r\n\r\n", 400),
    ("extra-in-request-line", b"GET / HTTP/1.1 extra\r\nHost: app.test\r\n\r\n", 400),
    ("two-spaces", b"GET  / HTTP/1.1\r\nHost: app.test\r\n\r\n", 400),
    ("trailing-space", b"GET / HTTP/1.1 \r\nHost: app.test\r\n\r\n", 400),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\nHost: app.test\r\n\r\n", 400),
    ("leading-space", b" GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", 400),
    ("bad-version", req(version=b"HTTP/9.9"), 400),
    ("version-1.2", req(version=b"HTTP/1.2"), 400),
    ("version-2.0", req(version=b"HTTP/2.0"), 400),
    ("version-lower", req(version=b"http/1.1"), 400),
    ("version-long", req(version=b"HTTP/1.10"), 400),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("bad-method", req(method=b"G@T"), 400),
    ("relative-target", req(target=b"nopath"), 400),
    ("asterisk-not-options", req(target=b"*"), 400),
    ("obs-text-in-target", req(target=b"/caf\xe9"), 400),
    ("ctl-in-target", req(target=b"/a\x01b"), 400),
    ("del-in-target", req(target=b"/a\x7f"), 400),
    ("absolute-without-host", req(target=b"http:///path"), 400),
    ("absolute-userinfo-only", req(target=b"http://user@/path"), 400),
    ("absolute-bad-userinfo", req(target=b"http://<user@h.test/path"), 400),
    ("absolute-bad-host", req(target=b"http://h{x}.test/"), 400),
    ("absolute-fragment-in-host", req(target=b"http://h.test#x/"), 400),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n", 400),
    ("empty-lines", b"\r\n" * (MAX_EMPTY_LINES + 1) + req(), 400),
    # 501
    ("te-gzip-chunked", req(b"Transfer-Encoding: gzip, chunked\r\n", b"POST"), 501),
    ("te-deflate-chunked", req(b"Transfer-Encoding: deflate,chunked\r\n", b"POST"), 501),
    ("connect", b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n", 501),
    ("unknown-method", req(method=b"FOO"), 501),
    ("lower-case-method", req(method=b"get"), 501),
    # limits: 413, 414, 431
    ("cl-above-body-limit", req(b"Content-Length: 1001\r\n", b"POST"), 413),
    ("long-target", req(target=b"/" + b"a" * 1024), 414),
    ("huge-field", req(b"X-Big: %s\r\n" % (b"b" * 4096)), 431),
    ("too-many-fields", req(b"".join(b"X-H%d: v\r\n" % i for i in range(20))), 431),
]


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize(("data", "status"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_heads_earn_their_status(codec: ModuleType, data: bytes, status: int) -> None:
    got = request(codec, data)
    assert isinstance(got, tuple), got
    assert got[0] == status, got


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize(("data", "status"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refusal_holds_whatever_follows_the_head(codec: ModuleType, data: bytes,
                                                 status: int) -> None:
    # what comes after the blank line is body or the next request: it cannot change a verdict
    assert request(codec, data + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0] == status


@pytest.mark.parametrize("codec", TWINS)
def test_limits_pass_at_their_boundary(codec: ModuleType) -> None:
    assert request(codec, req(target=b"/" + b"a" * 1023)).target == b"/" + b"a" * 1023
    # Host's line counts: 20 fields in all
    many = req(b"".join(b"X-H%d: v\r\n" % i for i in range(19)))
    assert len(request(codec, many).fields) == 20
    # the field section (request line and blank line aside) may be exactly max_header_size
    section = b"Host: app.test\r\nX-Big: "
    exact = b"GET / HTTP/1.1\r\n" + section + b"b" * (4096 - len(section)) + b"\r\n\r\n"
    assert request(codec, exact).end == len(exact)
    assert request(codec, req(b"Content-Length: 1000\r\n", b"POST")).content_length == 1000
    unlimited = Limits(max_request_body=0)
    big = req(b"Content-Length: 999999999\r\n", b"POST")
    assert request(codec, big, unlimited).framing == LENGTH


BASE = {
    "method_raw": b"GET", "method": "GET", "target": b"/", "path": "/", "query": "",
    "version": "1.1", "host": "app.test", "host_raw": b"app.test", "framing": NO_BODY,
    "content_length": -1, "keep_alive": True, "expect_continue": False, "upgrade": b"",
    "conn_tokens": frozenset(), "absolute": False, "start": 0,
}
HOST = (b"host", b"Host", b"app.test")

ACCEPTED = [
    ("plain", req(), {"fields": [HOST]}),
    ("path-query", req(target=b"/a/b?x=1&y=%20"),
     {"target": b"/a/b?x=1&y=%20", "path": "/a/b", "query": "x=1&y=%20",  "fields": [HOST]}),
    ("names-as-sent-values-stripped", req(b"X-Mixed-Case: \t a  b \t\r\nEmpty:\r\n"),
     {"fields": [HOST, (b"x-mixed-case", b"X-Mixed-Case", b"a  b"), (b"empty", b"Empty", b"")]}),
    ("obs-text-value", req(b"X-A: caf\xe9\r\n"),
     {"fields": [HOST, (b"x-a", b"X-A", b"caf\xe9")]}),
    ("length", req(b"Content-Length: 12\r\n", b"POST"),
     {"method_raw": b"POST", "method": "POST", "framing": LENGTH, "content_length": 12,
      "fields": [HOST, (b"content-length", b"Content-Length", b"12")]}),
    ("length-zero", req(b"Content-Length: 0\r\n", b"POST"),
     {"method_raw": b"POST", "method": "POST", "content_length": 0,
      "fields": [HOST, (b"content-length", b"Content-Length", b"0")]}),
    ("chunked", req(b"Transfer-Encoding: Chunked\r\n", b"PUT"),
     {"method_raw": b"PUT", "method": "PUT", "framing": CHUNKED,
      "fields": [HOST, (b"transfer-encoding", b"Transfer-Encoding", b"Chunked")]}),
    ("close", req(b"Connection: close\r\n"),
     {"keep_alive": False, "conn_tokens": frozenset({b"close"}),
      "fields": [HOST, (b"connection", b"Connection", b"close")]}),
    ("1.0-default-close", req(version=b"HTTP/1.0"),
     {"version": "1.0", "keep_alive": False, "fields": [HOST]}),
    ("1.0-keep-alive", req(b"Connection: Keep-Alive\r\n", version=b"HTTP/1.0"),
     {"version": "1.0", "conn_tokens": frozenset({b"keep-alive"}),
      "fields": [HOST, (b"connection", b"Connection", b"Keep-Alive")]}),
    ("1.0-no-host", b"GET / HTTP/1.0\r\n\r\n",
     {"version": "1.0", "keep_alive": False, "host": "", "host_raw": b"", "fields": []}),
    # Connection may not make framing or Host hop-by-hop (smuggling), other names it may
    ("connection-names", req(b"Connection: X-A, content-length,HOST , transfer-encoding\r\n"),
     {"conn_tokens": frozenset({b"x-a"}),
      "fields": [HOST, (b"connection", b"Connection",
                        b"X-A, content-length,HOST , transfer-encoding")]}),
    # Upgrade is reported, and the body is framed as any other (issue 13's smuggling hole)
    ("upgrade-with-body",
     req(b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n", b"POST"),
     {"method_raw": b"POST", "method": "POST", "upgrade": b"websocket", "framing": LENGTH,
      "content_length": 5, "conn_tokens": frozenset({b"upgrade"}),
      "fields": [HOST, (b"connection", b"Connection", b"Upgrade"),
                 (b"upgrade", b"Upgrade", b"websocket"),
                 (b"content-length", b"Content-Length", b"5")]}),
    ("expect", req(b"Expect: 100-Continue\r\n", b"POST"),
     {"method_raw": b"POST", "method": "POST", "expect_continue": True,
      "fields": [HOST, (b"expect", b"Expect", b"100-Continue")]}),
    ("host-port-case", req(host=b"Host: App.Test:8080\r\n"),
     {"host": "app.test", "host_raw": b"App.Test:8080", "fields": [(b"host", b"Host",
                                                                     b"App.Test:8080")]}),
    ("host-v6", req(host=b"Host: [::1]:8080\r\n"),
     {"host": "[::1]", "host_raw": b"[::1]:8080",
      "fields": [(b"host", b"Host", b"[::1]:8080")]}),
    ("options-asterisk", req(method=b"OPTIONS", target=b"*"),
     {"method_raw": b"OPTIONS", "method": "OPTIONS", "target": b"*", "path": "*",
      "fields": [HOST]}),
    # absolute-form: the authority replaces Host, no userinfo upstream
    ("absolute", req(target=b"HTTP://user:pw@Other.Test:81/p?q=1", host=b"Host: app.test\r\n"),
     {"target": b"/p?q=1", "path": "/p", "query": "q=1", "host": "other.test",
      "host_raw": b"Other.Test:81", "absolute": True,
      "fields": [(b"host", b"Host", b"Other.Test:81")]}),
    ("absolute-no-path", req(target=b"https://b.test?x"),
     {"target": b"/?x", "path": "/", "query": "x", "host": "b.test", "host_raw": b"b.test",
      "absolute": True, "fields": [(b"host", b"Host", b"b.test")]}),
    ("empty-lines-before", b"\r\n\r\n" + req(), {"start": 4, "fields": [HOST]}),
    ("other-method", req(method=b"PROPFIND"),
     {"method_raw": b"PROPFIND", "method": "PROPFIND", "fields": [HOST]}),
]


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize(("data", "want"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_heads_give_exact_outputs(codec: ModuleType, data: bytes,
                                           want: dict[str, object]) -> None:
    body = b"hello" * 3
    got = as_dict(request(codec, data + body), HEAD_ATTRS)
    start = want.get("start", 0)
    assert isinstance(start, int)
    fields_start = data.index(b"\r\n", start) + 2  # just after the request line
    assert got == {**BASE, **want, "fields_start": fields_start, "end": len(data)}


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize("data", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_every_prefix_of_a_good_head_needs_more(codec: ModuleType, data: bytes) -> None:
    for k in range(len(data)):
        assert request(codec, data[:k]) is None, data[:k]


PARTIAL = [
    # a buffer that can only grow into a refusal is refused before the head ends
    ("garbage", b"\x16\x03\x01\x02\x00\x01", 400),
    ("bare-lf-line", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-field", b"GET / HTTP/1.1\r\nHost: a\n\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: a\rb", 400),
    ("ctl", b"GET / HTTP/1.1\r\nHost: a\x00", 400),
    ("bad-version", b"GET / HTTP/2", 400),
    ("method-too-long", b"A" * 33, 501),
    ("empty-method", b" / HTTP/1.1", 400),
    ("target-too-long", b"GET /" + b"a" * 1024, 414),
    ("target-byte", b"GET /\xff", 400),
    ("field-section-too-large", req()[:-2] + b"X-Big: " + b"b" * 4096, 431),
    ("too-many-lines", b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * 21, 431),
    ("bad-request-line", b"GET / HTTP/1.1 x\r\nHost: a\r\n", 400),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\nHost", 501),
]


@pytest.mark.parametrize("codec", TWINS)
@pytest.mark.parametrize(("data", "status"), [c[1:] for c in PARTIAL], ids=[c[0] for c in PARTIAL])
def test_partial_heads_are_refused_early(codec: ModuleType, data: bytes, status: int) -> None:
    assert b"\r\n\r\n" not in data
    got = request(codec, data)
    assert isinstance(got, tuple), got
    assert got[0] == status, got


@pytest.mark.parametrize("codec", TWINS)
def test_a_partial_head_is_bounded_by_the_limits(codec: ModuleType) -> None:
    # However a head is fed, a caller never holds more than the limits (plus a line's frame)
    # before the codec refuses it.
    bound = LIMITS.max_uri + LIMITS.max_header_size + 64
    for start in (b"GET /", b"GET / HTTP/1.1\r\nX: ", b"GET / HTTP/1.1\r\n", b"", b"GET / H"):
        buf = start
        filler = b"a" if not start.endswith(b"\r\n") else b"X: v\r\n"
        verdict = None
        while verdict is None and len(buf) <= bound:
            buf += filler
            verdict = request(codec, buf)
        assert isinstance(verdict, tuple), (start, len(buf))
        assert verdict[0] in (400, 414, 431, 501)


@pytest.mark.parametrize("no_extensions", ["1", ""])
def test_the_package_picks_a_twin_and_says_which(no_extensions: str) -> None:
    env = {**os.environ, "BASCULE_NO_EXTENSIONS": no_extensions}
    code = ("import bascule.codec.http1 as h; print(h.IMPLEMENTATION, "
            "h.parse_request_head.__module__, h.parse_response_head.__module__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    if no_extensions or chead is None:
        assert out == ["pure", "bascule.codec.http1.head", "bascule.codec.http1.head"]
    else:
        assert out == ["compiled", "bascule.codec.http1._chead", "bascule.codec.http1._chead"]


@pytest.mark.parametrize("codec", TWINS)
def test_a_listeners_limits_from_the_config_serve_as_they_are(codec: ModuleType) -> None:
    limits = ListenerLimits.model_validate(
        {"max_uri": "1k", "max_header_size": "4k", "max_headers": 20, "max_request_body": 1000})
    assert request(codec, req(target=b"/" + b"a" * 1024), limits)[0] == 414
    assert request(codec, req(b"Content-Length: 1001\r\n", b"POST"), limits)[0] == 413
    assert request(codec, req(b"X-Big: %s\r\n" % (b"b" * 4096)), limits)[0] == 431
    assert request(codec, req(target=b"/" + b"a" * 1023), limits).path == "/" + "a" * 1023
