"""HTTP/1.1 framing rules a proxy applies to a head's field values (RFC 9112 §6).

Rules of this module:
- No I/O: field values in, a verdict out. Both head codecs (the pure one and the compiled one)
  call these for the rare shapes, so a refusal reads the same whichever codec runs.
- A refusal is a `ProtocolError` carrying the status it implies (h11's `error_status_hint`).
"""

from __future__ import annotations

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
UNTIL_CLOSE: Final = 3  # responses only: the body ends when the endpoint closes

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
    codings = [c.strip().lower() for v in values for c in v.split(b",")]
    if b"" in codings:
        # llhttp refuses an empty field and `chunked,`: no empty element is read either way
        raise ProtocolError("empty element in Transfer-Encoding")
    if codings[-1] != b"chunked":
        raise ProtocolError("Transfer-Encoding does not end in chunked")
    if codings.count(b"chunked") > 1:
        raise ProtocolError("chunked applied more than once")
    if len(codings) > 1:
        unknown = codings[0].decode("latin-1")
        raise ProtocolError(f"transfer coding {unknown!r} not implemented", 501)


def response_has_body(request_method: str, status: int) -> bool:
    """RFC 9112 §6.3 rule 1: HEAD, 1xx, 204 and 304 responses end at their head."""
    return not (request_method == "HEAD" or status < 200 or status in (204, 304))
