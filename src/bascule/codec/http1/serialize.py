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

from bascule.codec.http1.rules import CHUNKED, LENGTH, NO_BODY

Field = tuple[bytes, bytes, bytes]

LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CRLF: Final = b"\r\n"
# bascule re-frames every body it relays: the fields' own framing never passes.
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})


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
    """A relayed response head: the endpoint's fields less `drop` (codec.headers.HOP_BY_HOP,
    what Connection named, removals) and less its framing, then bascule's framing line,
    `Connection: <connection>` if given, and `extra` (Via, header edits, cookies) as pre-built
    lines. (codec.headers imports this package: the caller brings HOP_BY_HOP.)

    NO_BODY keeps a `content_length` of 0 or more (a HEAD response says what GET would send);
    UNTIL_CLOSE writes no framing line.
    """
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    drop = drop | _FRAMING
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
    date: bytes = b"",
) -> bytes:
    """A whole response bascule writes itself: errors, redirects, direct responses.

    `date` is the IMF-fixdate for the `Date` field (RFC 9110 §6.6.1), given by the caller:
    reading a clock is not this module's job.
    """
    lines = [b"%s %d %s\r\n" % (version, status, reason_phrase(status))]
    if date:
        lines.append(b"Date: %s\r\n" % date)
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
