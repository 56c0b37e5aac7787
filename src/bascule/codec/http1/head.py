"""HTTP/1 heads, sans I/O: one call per read finds a head in a buffer, checks it, returns it.

This is the reference codec; `_chead.pyx` is its compiled twin and must give the same verdict,
status, reason and outputs for every buffer (tests/unit/test_http1_diff.py holds them to it).

Rules of this module:
- One call per read: `parse_request_head(buf, limits)` returns a `RequestHead`, or None while
  the head is incomplete, or raises `ProtocolError` with the status the client earns. A partial
  head is checked as far as it goes, so a buffer that can only grow into a refusal is refused
  now: a caller never has to hold more than the limits allow.
- Checks run in a fixed order, which the twin keeps: the request line (syntax, 414, version,
  501 methods), the field section's size and count (431), its bytes (bare CR or LF, control
  characters), each field line (obs-fold, colon, name), then the framing rules (RFC 9112 §6.3).
- Never laxer than llhttp or h11: a head accepted here is accepted by both (the differential
  test checks it), so no peer behind or before bascule can frame it differently. The one
  exception: up to 8 empty lines before a request line are skipped (RFC 9112 §2.2), which
  llhttp does too and h11 does not.
- Bytes stay bytes; only what routes match (method, path, query, host) is decoded, as latin-1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol

from bascule.codec.http1.rules import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ProtocolError,
    parse_content_length,
    parse_transfer_encoding,
    response_has_body,
)

Field = tuple[bytes, bytes, bytes]  # (lower-cased name, name as sent, value without OWS)

# RFC 9110 §5.6.2 tchar; a field name or a method is one or more of them.
TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# A request target is visible ASCII only: llhttp refuses obs-text there, h11 refuses controls.
VCHAR: Final = bytes(range(0x21, 0x7F))
# An authority, userinfo included (RFC 3986 §3.2: unreserved, pct-encoded, sub-delims, ":",
# "@", and the brackets of an IP literal); llhttp refuses the rest there.
AUTHORITY_CHARS: Final = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:@[]"
)
# A reason phrase: HTAB, SP, VCHAR, obs-text (RFC 9112 §4).
REASON_CHARS: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
# Field values may hold HTAB, SP, VCHAR and obs-text; CR and LF are counted apart (bare ones).
_FIELD_CTL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# The methods llhttp parses, less CONNECT (a reverse proxy has no tunnel to give): any other
# token is a method bascule does not implement (RFC 9110 §9.1: 501).
_METHOD_NAMES: Final = (
    "GET HEAD POST PUT DELETE OPTIONS TRACE PATCH COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE QUERY"
)
METHODS: Final = {m.encode(): m for m in _METHOD_NAMES.split()}
MAX_METHOD: Final = 32  # longer than any method above: a partial line that long is refused
# llhttp refuses 1.2, 3.0 and 9.9 and parses 0.9 and 2.0, which no HTTP/1 proxy can serve:
# every version but these two is a malformed request (400), as llhttp answers most of them.
VERSIONS: Final = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
MAX_EMPTY_LINES: Final = 8  # CRLFs tolerated before a request line (RFC 9112 §2.2)
MAX_RESPONSE_HEAD: Final = 64 * 1024
MAX_RESPONSE_FIELDS: Final = 200

# A client may not make framing or Host hop-by-hop: dropping them upstream would let the body
# be read as a second request (smuggling).
NOT_HOP_BY_HOP: Final = frozenset({b"content-length", b"host", b"transfer-encoding"})


class HeadLimits(Protocol):
    """What the request codec needs of a listener's limits (config's ListenerLimits fits)."""

    @property
    def max_uri(self) -> int: ...
    @property
    def max_header_size(self) -> int: ...
    @property
    def max_headers(self) -> int: ...
    @property
    def max_request_body(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Concrete head limits, with the config's defaults (0 body limit: none)."""

    max_uri: int = 8192
    max_header_size: int = 65536
    max_headers: int = 100
    max_request_body: int = 0


class RequestHead:
    """A request head as parsed: what routing needs, framing, and the raw block's offsets."""

    __slots__ = (
        "absolute",
        "conn_tokens",
        "content_length",
        "end",
        "expect_continue",
        "fields",
        "fields_start",
        "framing",
        "host",
        "host_raw",
        "keep_alive",
        "method",
        "method_raw",
        "path",
        "query",
        "start",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method_raw: bytes,
        method: str,
        target: bytes,
        path: str,
        query: str,
        version: str,
        fields: list[Field],
        host: str,
        host_raw: bytes,
        framing: int,
        content_length: int,
        keep_alive: bool,
        expect_continue: bool,
        upgrade: bytes,
        conn_tokens: frozenset[bytes],
        absolute: bool,
        start: int,
        fields_start: int,
        end: int,
    ) -> None:
        self.method_raw = method_raw
        self.method = method
        self.target = target  # origin-form, `*`, or the path of an absolute-form target
        self.path = path
        self.query = query
        self.version = version  # "1.1" or "1.0"
        self.fields = fields  # with an absolute-form target, Host is its authority (last)
        self.host = host  # lower-cased, without port: what routes match
        self.host_raw = host_raw  # as the client sent it (Host or the absolute-form authority)
        self.framing = framing  # NO_BODY, LENGTH or CHUNKED
        self.content_length = content_length  # -1 without a Content-Length field
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.upgrade = upgrade  # the Upgrade field's value: reported, never acted on
        self.conn_tokens = conn_tokens  # what Connection names, less framing and Host
        self.absolute = absolute  # the target was absolute-form: fields differ from the bytes
        self.start = start  # offset of the request line (after tolerated empty lines)
        self.fields_start = fields_start  # offset of the first field line
        self.end = end  # offset just after the blank line: the body (or next request) starts

    def __repr__(self) -> str:
        return f"RequestHead({self.method} {self.target!r} HTTP/{self.version}, end={self.end})"


class ResponseHead:
    """A response head as parsed: status, fields, framing for this request, offsets."""

    __slots__ = (
        "conn_tokens",
        "content_length",
        "end",
        "fields",
        "fields_start",
        "framing",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        fields: list[Field],
        framing: int,
        content_length: int,
        keep_alive: bool,
        conn_tokens: frozenset[bytes],
        fields_start: int,
        end: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.fields = fields
        self.framing = framing  # NO_BODY, LENGTH, CHUNKED or UNTIL_CLOSE
        self.content_length = content_length  # -1 without a Content-Length field
        self.keep_alive = keep_alive
        self.conn_tokens = conn_tokens
        self.fields_start = fields_start
        self.end = end

    def __repr__(self) -> str:
        return f"ResponseHead({self.status} HTTP/{self.version}, end={self.end})"


# ------------------------------------------------------------------ requests


def parse_request_head(buf: bytes, limits: HeadLimits) -> RequestHead | None:
    """The request head at the start of `buf`; None while it is incomplete."""
    start = _skip_empty_lines(buf)
    pos = buf.find(b"\r\n\r\n", start)
    if pos < 0:
        _check_partial_request(buf, start, limits)
        return None
    line_end = buf.find(b"\r\n", start)
    method_raw, method, target, version = request_line(buf[start:line_end], limits)
    fields_start = line_end + 2
    section = buf[fields_start:pos] if pos > line_end else b""
    check_section(section, limits.max_header_size, limits.max_headers, 431, 400, False)
    return _request(
        method_raw, method, target, version, split_fields(section, 400),
        limits, start, fields_start, pos + 4,
    )  # fmt: skip


def _skip_empty_lines(buf: bytes) -> int:
    i = 0
    while buf.startswith(b"\r\n", i):
        i += 2
        if i > 2 * MAX_EMPTY_LINES:
            raise ProtocolError("too many empty lines before the request line")
    return i


def request_line(line: bytes, limits: HeadLimits) -> tuple[bytes, str, bytes, str]:
    """`method SP request-target SP HTTP-version`, one space each (RFC 9112 §3)."""
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        raise ProtocolError("malformed request line")
    method_raw, target, version_raw = parts
    if method_raw.translate(None, TCHAR):
        raise ProtocolError("invalid method")
    if len(target) > limits.max_uri:
        raise ProtocolError("request target too long", 414)
    if target.translate(None, VCHAR):
        raise ProtocolError("invalid request target")
    version = VERSIONS.get(version_raw)
    if version is None:
        raise ProtocolError("unsupported HTTP version")
    if method_raw == b"CONNECT":
        raise ProtocolError("CONNECT is not supported by a reverse proxy", 501)
    method = METHODS.get(method_raw)
    if method is None:
        raise ProtocolError("method not implemented", 501)
    return method_raw, method, target, version


def _check_partial_request(buf: bytes, start: int, limits: HeadLimits) -> None:
    """Refuse now an unfinished head that cannot grow into an acceptable one."""
    line_end = buf.find(b"\r\n", start)
    if line_end < 0:
        _check_partial_line(buf[start:], limits)
        return
    request_line(buf[start:line_end], limits)
    section = buf[line_end + 2 :]
    check_section(section, limits.max_header_size, limits.max_headers, 431, 400, True)


def _check_partial_line(line: bytes, limits: HeadLimits) -> None:
    if line.endswith(b"\r"):
        line = line[:-1]  # the start of the CRLF to come
    if b"\r" in line or b"\n" in line:
        raise ProtocolError("bare CR or LF in the head")
    sp = line.find(b" ")
    method = line if sp < 0 else line[:sp]
    if method.translate(None, TCHAR):
        raise ProtocolError("invalid method")
    if sp < 0:
        if len(method) > MAX_METHOD:
            raise ProtocolError("method not implemented", 501)
        return
    if not method:
        raise ProtocolError("malformed request line")
    sp2 = line.find(b" ", sp + 1)
    target = line[sp + 1 :] if sp2 < 0 else line[sp + 1 : sp2]
    if len(target) > limits.max_uri:
        raise ProtocolError("request target too long", 414)
    if target.translate(None, VCHAR):
        raise ProtocolError("invalid request target")
    if sp2 >= 0:
        version = line[sp2 + 1 :]
        if not (b"HTTP/1.1".startswith(version) or b"HTTP/1.0".startswith(version)):
            raise ProtocolError("unsupported HTTP version")


def check_section(
    section: bytes, max_size: int, max_fields: int, status: int, bad: int, partial: bool
) -> None:
    """Size and count (`status` above the limits) and bytes (`bad`) of a field section: all
    of it, or as much as has arrived (`partial`)."""
    crlf = section.count(b"\r\n")
    if partial:
        # up to three bytes of the terminating CRLFCRLF may be there already
        if len(section) - 3 > max_size:
            raise ProtocolError("header fields too large", status)
        if crlf > max_fields:
            raise ProtocolError("too many header fields", status)
    else:
        if len(section) > max_size:
            raise ProtocolError("header fields too large", status)
        if section and crlf + 1 > max_fields:
            raise ProtocolError("too many header fields", status)
    cr = section.count(b"\r")
    if partial and section.endswith(b"\r"):
        cr -= 1
    if cr != crlf or section.count(b"\n") != crlf:
        raise ProtocolError("bare CR or LF in the head", bad)
    if _FIELD_CTL.search(section) is not None:
        raise ProtocolError("control character in a header field", bad)


def split_fields(section: bytes, status: int) -> list[Field]:
    """Field lines into (lname, name, value); check_section has vetted the bytes."""
    fields: list[Field] = []
    if not section:
        return fields
    for line in section.split(b"\r\n"):
        first = line[:1]
        if first == b" " or first == b"\t":
            raise ProtocolError("obs-fold (a field line starting with whitespace)", status)
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError("field line without a colon", status)
        if not name or name.translate(None, TCHAR):
            raise ProtocolError("invalid field name", status)
        fields.append((name.lower(), name, value.strip(b" \t")))
    return fields


GATHERED: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
)


class Gathered:
    """The fields the framing rules read, gathered in one pass over the field list."""

    __slots__ = ("codings", "connection", "expect_continue", "hosts", "lengths", "upgrade")

    def __init__(self) -> None:
        self.hosts: list[bytes] = []
        self.lengths: list[bytes] = []
        self.codings: list[bytes] = []
        self.connection: list[bytes] = []
        self.upgrade = b""
        self.expect_continue = False

    def add(self, lname: bytes, value: bytes) -> None:
        if lname == b"host":
            self.hosts.append(value)
        elif lname == b"content-length":
            self.lengths.append(value)
        elif lname == b"transfer-encoding":
            self.codings.append(value)
        elif lname == b"connection":
            self.connection.append(value)
        elif lname == b"upgrade":
            self.upgrade = value if not self.upgrade else self.upgrade + b", " + value
        elif lname == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True


def gather(fields: list[Field]) -> Gathered:
    g = Gathered()
    for lname, _, value in fields:
        if lname in GATHERED:
            g.add(lname, value)
    return g


def _request(
    method_raw: bytes,
    method: str,
    target: bytes,
    version: str,
    fields: list[Field],
    limits: HeadLimits,
    start: int,
    fields_start: int,
    end: int,
) -> RequestHead:
    """RFC 9112's framing rules, in the order the proxy has always applied them."""
    g = gather(fields)
    if len(g.hosts) > 1:
        raise ProtocolError("more than one Host header")
    if not g.hosts and version == "1.1":
        raise ProtocolError("HTTP/1.1 request without Host")
    framing = NO_BODY
    content_length = -1
    if g.codings:
        if g.lengths:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        if version != "1.1":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        parse_transfer_encoding(g.codings)
        framing = CHUNKED
    elif g.lengths:
        content_length = parse_content_length(g.lengths)
        if content_length:
            framing = LENGTH
            limit = limits.max_request_body
            if limit and content_length > limit:
                raise ProtocolError("request body too large", 413)
    return finish_request(
        method_raw, method, target, version, fields, g, framing, content_length,
        start, fields_start, end,
    )  # fmt: skip


def finish_request(
    method_raw: bytes,
    method: str,
    target: bytes,
    version: str,
    fields: list[Field],
    g: Gathered,
    framing: int,
    content_length: int,
    start: int,
    fields_start: int,
    end: int,
) -> RequestHead:
    """The last rules, shared by both twins: the target's form, keep-alive, what routes see."""
    tokens = tokens_of(g.connection)
    hosts = g.hosts
    absolute = False
    if target[:1] != b"/":
        if target == b"*" and method == "OPTIONS":
            pass
        elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            target, fields, authority = absolute_form(target, fields)
            hosts = [authority]
            absolute = True
        else:
            raise ProtocolError("invalid request target")
    path, _, query = target.partition(b"?")
    host_raw = hosts[0] if hosts else b""
    return RequestHead(
        method_raw, method, target, path.decode("latin-1"), query.decode("latin-1"), version,
        fields, route_host(host_raw), host_raw, framing, content_length,
        keep_alive_of(version, tokens), g.expect_continue, g.upgrade, hop_tokens(tokens),
        absolute, start, fields_start, end,
    )  # fmt: skip


def keep_alive_of(version: str, tokens: frozenset[bytes]) -> bool:
    """HTTP/1.1 persists unless told `close`; HTTP/1.0 only when told `keep-alive`."""
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


def absolute_form(target: bytes, fields: list[Field]) -> tuple[bytes, list[Field], bytes]:
    """An absolute-form target (RFC 9112 §3.2.2): (its path and query, the fields with Host
    replaced by its authority, the authority). Userinfo never goes upstream."""
    rest = target[target.find(b"://") + 3 :]
    cut = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    if rest[:cut].translate(None, AUTHORITY_CHARS):
        raise ProtocolError("invalid authority in the target")
    authority = rest[:cut].rpartition(b"@")[2]
    if not authority:
        raise ProtocolError("absolute-form target without a host")
    target = rest[cut:]
    if target[:1] != b"/":
        target = b"/" + target
    fields = [f for f in fields if f[0] != b"host"]
    fields.append((b"host", b"Host", authority))
    return target, fields, authority


def route_host(host_raw: bytes) -> str:
    """What routes match: the host lower-cased, without its port ([v6] keeps its brackets)."""
    if not host_raw:
        return ""
    host = host_raw.decode("latin-1").lower()
    return host[: host.find("]") + 1] if host[:1] == "[" else host.partition(":")[0]


def tokens_of(values: list[bytes]) -> frozenset[bytes]:
    """Connection's tokens, lower-cased (values hold no CR, LF or other CTL here)."""
    if not values:
        return _NO_TOKENS
    tokens = [t.strip(b" \t").lower() for v in values for t in v.split(b",")]
    return frozenset(t for t in tokens if t)


def hop_tokens(tokens: frozenset[bytes]) -> frozenset[bytes]:
    """The field names Connection makes hop-by-hop: never framing or Host."""
    return tokens - NOT_HOP_BY_HOP if tokens else tokens


_NO_TOKENS: Final[frozenset[bytes]] = frozenset()


# ------------------------------------------------------------------ responses


def parse_response_head(
    buf: bytes,
    request_method: str,
    max_size: int = MAX_RESPONSE_HEAD,
    max_fields: int = MAX_RESPONSE_FIELDS,
) -> ResponseHead | None:
    """The response head at the start of `buf`, framed for a request of `request_method`.

    None while incomplete; an endpoint that breaks HTTP raises ProtocolError with status 502.
    An interim (1xx) head is returned like any other: the final one follows at `end`.
    """
    pos = buf.find(b"\r\n\r\n")
    if pos < 0:
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            _check_partial_status_line(buf, max_size)
        else:
            status_line(buf[:line_end])
            check_section(buf[line_end + 2 :], max_size, max_fields, 502, 502, True)
        return None
    line_end = buf.find(b"\r\n")
    status, reason, version = status_line(buf[:line_end])
    fields_start = line_end + 2
    section = buf[fields_start:pos] if pos > line_end else b""
    check_section(section, max_size, max_fields, 502, 502, False)
    fields = split_fields(section, 502)
    return _response(status, reason, version, fields, request_method, fields_start, pos + 4)


def status_line(line: bytes) -> tuple[int, bytes, str]:
    """`HTTP-version SP 3DIGIT SP [reason]`; the space before an empty reason may be missing."""
    version = VERSIONS.get(line[:8])
    if version is None or line[8:9] != b" ":
        raise ProtocolError("malformed status line", 502)
    code = line[9:12]
    if len(code) != 3 or not code.isdigit() or code[:1] == b"0":
        raise ProtocolError("malformed status line", 502)
    if len(line) > 12 and line[12:13] != b" ":
        raise ProtocolError("malformed status line", 502)
    reason = line[13:]
    if reason.translate(None, REASON_CHARS):
        raise ProtocolError("malformed status line", 502)
    status = int(code)
    if status > 599:
        raise ProtocolError("status code out of range", 502)
    return status, reason, version


def _check_partial_status_line(line: bytes, max_size: int) -> None:
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\r" in line or b"\n" in line:
        raise ProtocolError("bare CR or LF in the head", 502)
    n = len(line)
    if n <= 8:
        if not (b"HTTP/1.1".startswith(line) or b"HTTP/1.0".startswith(line)):
            raise ProtocolError("malformed status line", 502)
        return
    if n > max_size:
        raise ProtocolError("header fields too large", 502)
    # the status line so far, completed with a plausible end, must be one
    status_line(line if n > 12 else line + b"200"[n - 9 :])


def _response(
    status: int,
    reason: bytes,
    version: str,
    fields: list[Field],
    request_method: str,
    fields_start: int,
    end: int,
) -> ResponseHead:
    g = gather(fields)
    return finish_response(status, reason, version, fields, g, request_method, fields_start, end)


def finish_response(
    status: int,
    reason: bytes,
    version: str,
    fields: list[Field],
    g: Gathered,
    request_method: str,
    fields_start: int,
    end: int,
) -> ResponseHead:
    """A response's framing rules (RFC 9112 §6.3)."""
    framing, content_length = response_framing(g, version, request_method, status)
    tokens = tokens_of(g.connection)
    keep_alive = framing != UNTIL_CLOSE and keep_alive_of(version, tokens)
    return ResponseHead(
        status, reason, version, fields, framing, content_length, keep_alive,
        hop_tokens(tokens), fields_start, end,
    )  # fmt: skip


def response_framing(
    g: Gathered, version: str, request_method: str, status: int
) -> tuple[int, int]:
    """(framing, content_length or -1) of a response, shared by both twins."""
    content_length = -1
    chunked = False
    try:
        if g.codings:
            if g.lengths:
                raise ProtocolError("both Content-Length and Transfer-Encoding")
            if version != "1.1":
                raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response")
            # bascule re-frames bodies: a coding it does not decode would reach the client
            # under the wrong framing, so anything but chunked alone is the endpoint's fault
            parse_transfer_encoding(g.codings)
            chunked = True
        elif g.lengths:
            content_length = parse_content_length(g.lengths)
    except ProtocolError as e:
        raise ProtocolError(e.reason, 502) from None
    if not response_has_body(request_method, status):
        return NO_BODY, content_length
    if chunked:
        return CHUNKED, content_length
    if content_length >= 0:
        return LENGTH, content_length
    return UNTIL_CLOSE, content_length
