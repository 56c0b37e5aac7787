"""HTTP/1.1 bytes bascule writes: heads it forwards, and whole responses it makes itself.

Rules of this module:
- Pure functions: parsed fields and decisions in, wire bytes out; no I/O.
- Fields keep their names as sent and their values byte for byte; only the lines a hop must
  not pass on are left out, and framing is written once, by the caller's decision.
- Every head ends in one blank line; nothing here writes a body's framing twice: when a
  framing is given, the fields' own Content-Length and Transfer-Encoding are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

from bascule.codec.headers import HOP_BY_HOP
from bascule.codec.http1.rules import CHUNKED, LENGTH, NO_BODY

Field = tuple[bytes, bytes, bytes]

LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CRLF: Final = b"\r\n"
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
# A relayed response is re-framed by bascule: hop-by-hop fields and its length go.
RESPONSE_DROP: Final = HOP_BY_HOP | _FRAMING


def framing_field(framing: int, content_length: int) -> bytes:
    """The one framing line for a body: chunked, a length, or none."""
    if framing == CHUNKED:
        return b"Transfer-Encoding: chunked\r\n"
    if framing == LENGTH or (framing == NO_BODY and content_length >= 0):
        return b"Content-Length: %d\r\n" % content_length
    return b""


def request_head(
    method: bytes,
    target: bytes,
    fields: Iterable[Field],
    drop: frozenset[bytes],
    *,
    host: bytes = b"",
    identity: bytes = b"",
    framing: int | None = None,
    content_length: int = -1,
    extra: bytes = b"",
) -> bytes:
    """The head bascule sends upstream, always HTTP/1.1.

    `drop`: lower-case names left out (hop-by-hop, what Connection named, untrusted identity);
    `host`: a Host to write first, for a request that came without one; `identity`: the client
    identity lines (X-Forwarded-*, Forwarded, Via), pre-built per session; `framing`: None
    passes the fields' own Content-Length, else the framing to write instead (NO_BODY with
    `content_length` -1 writes none); `extra`: further pre-built lines (header edits).
    """
    if framing is not None:
        drop = drop | _FRAMING
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    if host:
        lines.append(b"Host: %s\r\n" % host)
    lines += [b"%s: %s\r\n" % (name, value) for lname, name, value in fields if lname not in drop]
    lines.append(identity)
    if framing is not None:
        lines.append(framing_field(framing, content_length))
    lines.append(extra)
    lines.append(_CRLF)
    return b"".join(lines)


def response_head(
    status: int,
    reason: bytes,
    fields: Iterable[Field],
    drop: frozenset[bytes],
    *,
    framing: int,
    content_length: int = -1,
    connection: bytes = b"",
    extra: bytes = b"",
) -> bytes:
    """A relayed response head: the endpoint's fields less hop-by-hop ones and its framing,
    then bascule's framing line, `Connection: <connection>` if given, and `extra` (Via, header
    edits, cookies) as pre-built lines. `drop` adds names (what Connection named, removals).

    NO_BODY keeps a `content_length` of 0 or more (a HEAD response says what GET would send);
    UNTIL_CLOSE writes no framing line.
    """
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    drop = RESPONSE_DROP | drop if drop else RESPONSE_DROP
    lines += [b"%s: %s\r\n" % (name, value) for lname, name, value in fields if lname not in drop]
    lines.append(framing_field(framing, content_length))
    if connection:
        lines.append(b"Connection: %s\r\n" % connection)
    lines.append(extra)
    lines.append(_CRLF)
    return b"".join(lines)


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def simple_response(
    status: int,
    body: bytes = b"",
    *,
    close: bool = False,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A whole response bascule writes itself: errors, redirects, direct responses."""
    lines = [b"%s %d %s\r\n" % (version, status, reason_phrase(status))]
    lines.append(b"Server: bascule\r\n")
    if body or status not in (204, 304):
        lines.append(b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body)))
    for name, value in extra or ():
        lines.append(b"%s: %s\r\n" % (name, value))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(body)
    return b"".join(lines)


def error_body(status: int, detail: str = "") -> bytes:
    text = f"{status} {reason_phrase(status).decode()}"
    if detail:
        text += f": {detail}"
    return text.encode("utf-8", "replace") + b"\n"
