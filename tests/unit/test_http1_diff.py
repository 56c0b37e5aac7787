"""Differential test of the HTTP/1 head codec: generated and mutated heads, the smuggling
corpus and the error table get the same verdict, status, reason and outputs from the compiled
and the pure twin, and bascule never accepts a head that llhttp (httptools) or h11 refuses.
Where bascule accepts, llhttp must also end the message where bascule's framing ends it.

Deliberate differences, all stricter, except one: h11 refuses empty lines before a request
line, which RFC 9112 §2.2 says a server SHOULD ignore (llhttp and bascule do, up to 8), so
h11 is shown the head after them.

`BASCULE_DIFF_CASES` sets the number of cases per test (default 600: a few thousand in all);
a long run: `BASCULE_DIFF_CASES=25000 pytest tests/unit/test_http1_diff.py` (100,000 cases).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import h11
import httptools
import pytest
from http1_twins import HEAD_ATTRS, RESPONSE_ATTRS, as_dict, chead, request, response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http1_head import ACCEPTED, PARTIAL, REFUSED
from test_http1_response import BROKEN, FRAMING

from bascule.codec.http1 import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, RequestHead, ResponseHead
from bascule.codec.http1 import head as pure

CASES = int(os.environ.get("BASCULE_DIFF_CASES", "600"))
DIFF = settings(max_examples=CASES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
compiled: ModuleType = chead  # type: ignore[assignment]
needs_compiled = pytest.mark.skipif(chead is None, reason="the Cython twin is not built")

# ------------------------------------------------------------------ generated heads

SMUGGLING = [
    b"Transfer-Encoding : chunked", b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding:\tchunked", b"Transfer-Encoding: chunked\r\n : x",
    b"Transfer-Encoding: \x0bchunked", b" Transfer-Encoding: chunked",
    b"Transfer-Encoding: chunked\x00", b"Transfer_Encoding: chunked",
    b"Transfer-Encoding: chunked, identity", b"Transfer-Encoding: identity",
    b"Transfer-Encoding: chunked,", b"Transfer-Encoding: chunked\r\nTransfer-Encoding:",
    b"Transfer-Encoding: , chunked", b"Transfer-Encoding: \"chunked\"",
    b"Content-Length: 0\r\nContent-Length: 5",
    b"Content-Length: 5\x00", b"Content-Length: 05", b"Content-Length: 5 ",
    b"Content-Length:5", b"Content-Length: 1_0", b"Content-Length: \xb9",
    b"Connection: Upgrade\r\nUpgrade: h2c", b"Connection: content-length",
    b"Connection: close, keep-alive", b"Expect: 100-continue", b"Host: a\r\nHost: b",
    b"Host: a b", b"Host:", b"X: y\nTransfer-Encoding: chunked", b"X: y\rTransfer-Encoding: x",
]
METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"PATCH", b"CONNECT",
           b"PRI", b"FOO", b"get", b"G\xc9T", b"", b"GET "]
TARGETS = [b"/", b"/a/b?c=d", b"*", b"http://h.test/p", b"HTTPS://u@h.test:8/?q", b"http://",
           b"h.test:443", b"http://<u@h.test/", b"http://h|x/", b"http://h.test#f",
           b"/a b", b"/\xff", b"/%00", b"/a#f", b"//x", b"", b"/" + b"a" * 1030]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1",
            b"HTTP/1.10", b""]
NAMES = [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade",
         b"Expect", b"X-A", b"Keep-Alive", b"TE", b"x y", b"", b"X\x00", b"X-\xff", b"Cookie"]
VALUES = [b"h.test", b"", b"0", b"12", b"1, 2", b"-1", b"chunked", b"gzip, chunked", b"close",
          b"keep-alive", b"Upgrade, X-A", b"100-continue", b"websocket", b"a\x00b", b"\xe9t\xe9",
          b"a\tb", b" padded ", b"x" * 300]
SEPARATORS = [b": ", b":", b" : ", b":\t", b"\t:"]
EOLS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b"\n\r"]

fold = st.sampled_from([b" folded\r\n", b"\tfolded\r\n"])
smuggled = st.sampled_from(SMUGGLING).map(lambda f: f + b"\r\n")
GOOD_METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"PATCH"]
GOOD_TARGETS = [b"/", b"/a/b?c=d", b"/x", b"http://h.test/p", b"/%41"]
GOOD_NAMES = [b"X-A", b"Accept", b"Content-Length", b"Transfer-Encoding", b"Connection",
              b"Upgrade", b"Expect", b"Cookie", b"te"]
GOOD_VALUES = [b"0", b"12", b"chunked", b"close", b"keep-alive", b"Upgrade, X-A", b"text/html",
               b"100-continue", b"websocket", b"\xe9t\xe9", b"a\tb", b""]


def _fields(draw: st.DrawFn, bad: int) -> bytes:
    """Up to six field lines, `bad` percent of them (and of their parts) of any shape."""
    fields = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 99)) < bad:
            fields.append(draw(smuggled | fold | st.binary(max_size=10)))
            continue
        parts = ((GOOD_NAMES, NAMES), ([b": "], SEPARATORS), (GOOD_VALUES, VALUES),
                 ([b"\r\n"], EOLS))
        for good, every in parts:
            fields.append(draw(st.sampled_from(every if draw(st.integers(0, 99)) < bad else good)))
    return b"".join(fields)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """Mostly well-formed heads with a few bad parts: `bad` percent of the parts are drawn
    from every shape, good and broken, the rest from the well-formed ones."""
    bad = draw(st.sampled_from([0, 2, 10, 50]))

    def pick(good: list[bytes], every: list[bytes]) -> bytes:
        return draw(st.sampled_from(every if draw(st.integers(0, 99)) < bad else good))

    lead = pick([b""] * 6 + [b"\r\n"], [b"\r\n" * 9, b"\n", b"\r"])
    line = (pick(GOOD_METHODS, METHODS) + pick([b" "], [b"  ", b"\t"])
            + pick(GOOD_TARGETS, TARGETS) + b" " + pick([b"HTTP/1.1", b"HTTP/1.0"], VERSIONS)
            + pick([b"\r\n"], EOLS))
    host = pick([b"Host: h.test\r\n"], [b"", b"Host: a\r\nHost: b\r\n", b"Host:\r\n"])
    return lead + line + host + _fields(draw, bad) + b"\r\n"


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A corpus head with a few bytes inserted, deleted, replaced or lines repeated."""
    buf = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(buf)))
        kind = draw(st.integers(0, 4))
        if kind == 0:
            buf[i:i] = draw(st.sampled_from([b"\r", b"\n", b" ", b"\t", b":", b",", b"\x00",
                                             b"\xff", b"\r\n", b"chunked", b"0"]))
        elif kind == 1 and i < len(buf):
            del buf[i]
        elif kind == 2 and i < len(buf):
            buf[i] = draw(st.integers(0, 255))
        elif kind == 3:
            start = buf.rfind(b"\r\n", 0, i) + 2
            stop = buf.find(b"\r\n", i)
            if stop > start:
                buf[stop:stop] = b"\r\n" + buf[start:stop]
        elif i < len(buf):
            buf[i] = buf[i] ^ 0x20  # case flip of a letter, or a byte nearby
    return bytes(buf)


REQUEST_CORPUS = [c[1] for c in REFUSED] + [c[1] for c in ACCEPTED] + [c[1] for c in PARTIAL]
RESPONSE_CORPUS = [c[2] for c in FRAMING] + [c[1] for c in BROKEN]
requests = request_heads() | mutated(REQUEST_CORPUS) | st.binary(max_size=64)


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    bad = draw(st.sampled_from([0, 2, 10, 50]))

    def pick(good: list[bytes], every: list[bytes]) -> bytes:
        return draw(st.sampled_from(every if draw(st.integers(0, 99)) < bad else good))

    line = (pick([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2", b"http/1.1", b""]) + b" "
            + pick([b"200", b"204", b"304", b"100", b"101", b"404", b"503"],
                   [b"600", b"099", b"20", b"2000", b"2x0"])
            + pick([b" OK", b"", b" ", b" Not \xe9 Found"], [b" a\x01b", b"\tOK"])
            + pick([b"\r\n"], EOLS))
    return line + _fields(draw, bad) + b"\r\n"


responses = response_heads() | mutated(RESPONSE_CORPUS) | st.binary(max_size=64)

# ------------------------------------------------------------------ oracles


class _Seen:
    """Callbacks of an httptools parser: what it read of the head, where the message ended.
    (llhttp forgets a message's flags once it is complete: ask at the head's end.)"""

    def __init__(self) -> None:
        self.parser: Any = None
        self.headers_complete = False
        self.messages = 0
        self.keep_alive = False
        self.method = b""
        self.version = ""

    def on_headers_complete(self) -> None:
        self.headers_complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self.version = self.parser.get_http_version()
        if isinstance(self.parser, httptools.HttpRequestParser):
            self.method = self.parser.get_method()

    def on_message_complete(self) -> None:
        self.messages += 1


def llhttp_request(buf: bytes, head: RequestHead) -> str:
    """'' when llhttp accepts the head and frames its message as bascule does, else why not."""
    seen = _Seen()
    parser = seen.parser = httptools.HttpRequestParser(seen)
    if head.framing == LENGTH:
        body = b"x" * head.content_length
    elif head.framing == CHUNKED:
        body = b"3\r\nabc\r\n0\r\n\r\n"
    else:
        body = b""
    try:
        parser.feed_data(buf[: head.end] + body)
    except httptools.HttpParserUpgrade:
        return "" if seen.headers_complete else "llhttp upgraded before the head ended"
    except httptools.HttpParserError as e:
        return f"llhttp refused: {e}"
    if not seen.headers_complete:
        return "llhttp wants more head"
    if seen.messages != 1:
        return f"llhttp framed the body differently ({seen.messages} messages)"
    if seen.method != head.method_raw:
        return "llhttp read another method"
    if seen.version != head.version:
        return "llhttp read another version"
    if head.keep_alive and not seen.keep_alive:
        return "keep-alive where llhttp would close"
    return ""


def h11_request(buf: bytes, head: RequestHead) -> str:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(buf[head.start : head.end])
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        return f"h11 refused: {e}"
    if not isinstance(event, h11.Request):
        return f"h11 saw {event!r}"
    if event.method != head.method_raw:
        return "h11 read another method"
    return ""


def llhttp_response(buf: bytes, head: ResponseHead) -> str:
    seen = _Seen()
    parser = seen.parser = httptools.HttpResponseParser(seen)
    try:
        parser.feed_data(buf[: head.end])
    except httptools.HttpParserUpgrade:
        return ""
    except httptools.HttpParserError as e:
        # a 101 pauses llhttp at its head: the bytes after it are another protocol's
        if not (head.status == 101 and "Upgrade" in str(e) and seen.headers_complete):
            return f"llhttp refused: {e}"
    if not seen.headers_complete:
        return "llhttp wants more head"
    if parser.get_status_code() != head.status:
        return "llhttp read another status"
    return ""


def h11_response(buf: bytes, head: ResponseHead) -> str:
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", "h.test")]
    if head.status == 101:  # h11 refuses a switch nobody proposed: propose one
        headers += [("Connection", "upgrade"), ("Upgrade", "x")]
    conn.send(h11.Request(method="GET", target="/", headers=headers))
    conn.send(h11.EndOfMessage())
    conn.receive_data(buf[: head.end])
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        return f"h11 refused: {e}"
    if not isinstance(event, h11.Response | h11.InformationalResponse):
        return f"h11 saw {event!r}"
    return ""


# ------------------------------------------------------------------ the properties


def check_request(buf: bytes, cut: int) -> None:
    got = request(pure, buf)
    if chead is not None:
        twin = request(compiled, buf)
        assert as_dict(twin, HEAD_ATTRS) == as_dict(got, HEAD_ATTRS), buf
        # a partial buffer too: the same early verdicts
        part = buf[: cut % (len(buf) + 1)]
        assert as_dict(request(compiled, part), HEAD_ATTRS) == as_dict(request(pure, part),
                                                                       HEAD_ATTRS), part
    if isinstance(got, RequestHead):
        assert got.framing in (NO_BODY, LENGTH, CHUNKED)
        assert llhttp_request(buf, got) == "", buf
        assert h11_request(buf, got) == "", buf
    elif isinstance(got, tuple):
        assert got[0] in (400, 413, 414, 431, 501), got


def check_response(buf: bytes, method: str) -> None:
    got = response(pure, buf, method)
    if chead is not None:
        twin = response(compiled, buf, method)
        assert as_dict(twin, RESPONSE_ATTRS) == as_dict(got, RESPONSE_ATTRS), buf
    if isinstance(got, ResponseHead):
        assert got.framing in (NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE)
        assert llhttp_response(buf, got) == "", buf
        assert h11_response(buf, got) == "", buf
    elif isinstance(got, tuple):
        assert got[0] == 502, got


@DIFF
@given(requests, st.integers(0, 1 << 16))
def test_requests_agree_with_the_twin_and_the_oracles(buf: bytes, cut: int) -> None:
    check_request(buf, cut)


@DIFF
@given(responses, st.sampled_from(["GET", "HEAD", "POST"]))
def test_responses_agree_with_the_twin_and_the_oracles(buf: bytes, method: str) -> None:
    check_response(buf, method)


@pytest.mark.parametrize("buf", REQUEST_CORPUS)
def test_the_request_corpus_itself(buf: bytes) -> None:
    for cut in range(0, len(buf) + 1, 7):
        check_request(buf, cut)


@pytest.mark.parametrize("buf", RESPONSE_CORPUS)
def test_the_response_corpus_itself(buf: bytes) -> None:
    for method in ("GET", "HEAD"):
        check_response(buf, method)


def test_the_generators_reach_both_verdicts() -> None:
    # a differential test whose cases are all refused (or all accepted) proves little
    verdicts: dict[str, int] = {}

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(request_heads())
    def count(buf: bytes) -> None:
        got: Any = request(pure, buf)
        kind = "accepted" if isinstance(got, RequestHead) else "refused"
        verdicts[kind] = verdicts.get(kind, 0) + 1

    count()
    assert verdicts.get("accepted", 0) >= 10, verdicts
    assert verdicts.get("refused", 0) >= 10, verdicts


@needs_compiled
def test_the_compiled_twin_is_compiled() -> None:
    assert compiled.__file__ is not None and not compiled.__file__.endswith(".py")
