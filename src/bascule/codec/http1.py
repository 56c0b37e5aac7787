"""HTTP/1.1 message rules that do not need a socket: framing checks, heads, chunks, errors.

Rules of this module:
- No I/O, no asyncio: bytes and header lists in, verdicts and bytes out. httptools (llhttp)
  does the tokenising; this module adds what a proxy must refuse on top of it (RFC 9112 §6.3)
  and serialises what a proxy sends.
- A refusal is a `ProtocolError` carrying the status it implies (h11's `error_status_hint`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final


class ProtocolError(Exception):
    """The peer broke HTTP; `status` is the response it earns (400 unless said otherwise)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# Framing of a message body, decided from its head.
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def parse_content_length(values: list[bytes]) -> int:
    """One Content-Length, all digits. Repeats, lists and signs are smuggling shapes: 400."""
    if len(values) != 1:
        raise ProtocolError("more than one Content-Length")
    value = values[0].strip()
    if not value or not value.isdigit() or len(value) > 18:
        raise ProtocolError(f"invalid Content-Length {value[:40]!r}")
    return int(value)


def parse_transfer_encoding(values: list[bytes]) -> None:
    """A request's Transfer-Encoding must be exactly `chunked` once, last (RFC 9112 §6.1).

    Codings other than chunked are refused with 501: bascule does not decode them, and passing
    them on would let the backend frame the body differently from us.
    """
    codings = [c.strip().lower() for v in values for c in v.split(b",") if c.strip()]
    if not codings or codings[-1] != b"chunked":
        raise ProtocolError("Transfer-Encoding does not end in chunked")
    if codings.count(b"chunked") > 1:
        raise ProtocolError("chunked applied more than once")
    if len(codings) > 1:
        unknown = codings[0].decode("latin-1")
        raise ProtocolError(f"transfer coding {unknown!r} not implemented", 501)


def response_has_body(request_method: str, status: int) -> bool:
    """RFC 9112 §6.3 rule 1: HEAD, 1xx, 204 and 304 responses end at their head."""
    return not (request_method == "HEAD" or status < 200 or status in (204, 304))


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


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
