"""Decoding a chunked message body (RFC 9112 §7.1) without a socket.

Rules of this module:
- No I/O, no asyncio: bytes in, decoded payload pieces out. One `feed` call handles a whole
  read, however many chunks it holds, so a caller forwards one batch per read, not one write
  per chunk.
- Never laxer than llhttp in strict mode: chunk sizes are hex digits only (no sign, no
  whitespace, at most 16 digits), every line ends in CRLF, chunk data is followed by CRLF,
  extensions hold no control characters. A violation is a `ProtocolError` (400).
- Everything is bounded: a size line by `MAX_LINE`, the trailer section by `max_trailers`
  bytes (431). Trailer fields are read and dropped: they are never forwarded.
"""

from __future__ import annotations

from typing import Final

from bascule.codec.http1 import ProtocolError

MAX_LINE: Final = 1024  # a chunk-size line with its extensions
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")

# decoder states
_SIZE: Final = 0  # reading a chunk-size line
_DATA: Final = 1  # reading chunk data
_DATA_END: Final = 2  # reading the CRLF after chunk data
_TRAILER: Final = 3  # reading trailer fields up to the empty line
_DONE: Final = 4


_TOKEN: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_token(data: bytes) -> bool:
    for c in data:
        if c not in _TOKEN:
            return False
    return True


def _is_ext_value(data: bytes) -> bool:
    if len(data) >= 2 and data[0] == 0x22 and data[-1] == 0x22:  # a quoted string
        for c in data[1:-1]:
            if (c < 0x20 and c != 0x09) or c == 0x7F:
                return False
        return True
    return bool(data) and _is_token(data)


def _size_of(line: bytes) -> int:
    """The size of a chunk-size line (without CRLF): hex digits, then optional extensions."""
    digits, semi, ext = line.partition(b";")
    if not digits or len(digits) > 16:
        raise ProtocolError("bad chunk size")
    for c in digits:
        if c not in _HEX:
            raise ProtocolError("bad chunk size")
    if semi:
        # chunk-ext = *( ";" name [ "=" value ] ), name a token, value a token or a quoted
        # string (RFC 9112 §7.1.1); llhttp refuses an empty one, so do we.
        for item in ext.split(b";"):
            name, eq, value = item.partition(b"=")
            if not name or not _is_token(name) or (eq and not _is_ext_value(value)):
                raise ProtocolError("bad chunk extension")
    return int(digits, 16)


class ChunkedDecoder:
    """Push bytes in with `feed`; get the payload they carried, and whether the body ended.

    After the last chunk and its trailers, `feed` returns what followed the body (the next
    request's bytes) in `rest`; a decoder is used for one body only.
    """

    __slots__ = ("_buf", "_left", "_state", "_trailer_bytes", "max_trailers", "received")

    def __init__(self, max_trailers: int = 8192) -> None:
        self._state = _SIZE
        self._buf = b""  # an unfinished line
        self._left = 0  # bytes left in the current chunk
        self._trailer_bytes = 0
        self.max_trailers = max_trailers
        self.received = 0  # payload bytes decoded so far

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> tuple[list[bytes], bool, bytes]:
        """(payload pieces, body ended, bytes after the body). Raises ProtocolError."""
        pieces: list[bytes] = []
        if self._state == _DONE:
            return pieces, True, data
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        n = len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - pos)
                pieces.append(data[pos : pos + take] if take < n or pos else data)
                pos += take
                self._left -= take
                self.received += take
                if not self._left:
                    self._state = _DATA_END
                continue
            if state == _DATA_END:
                if n - pos < 2:
                    if data[pos:] != b"\r"[: n - pos]:
                        raise ProtocolError("chunk data not followed by CRLF")
                    self._buf = data[pos:]
                    return pieces, False, b""
                if data[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                self._state = _SIZE
                continue
            end = data.find(b"\r\n", pos)
            if end < 0:
                line = data[pos:]
                limit = MAX_LINE if state == _SIZE else self.max_trailers - self._trailer_bytes
                if len(line) > limit:
                    if state == _SIZE:
                        raise ProtocolError("chunk-size line too long")
                    raise ProtocolError("trailer section too large", 431)
                if b"\n" in line or b"\r" in line[:-1]:
                    raise ProtocolError("bare CR or LF in a chunked body")
                self._buf = line
                return pieces, False, b""
            line = data[pos:end]
            pos = end + 2
            if b"\n" in line or b"\r" in line:
                raise ProtocolError("bare CR or LF in a chunked body")
            if state == _SIZE:
                if len(line) > MAX_LINE:
                    raise ProtocolError("chunk-size line too long")
                size = _size_of(line)
                if size:
                    self._left = size
                    self._state = _DATA
                else:
                    self._state = _TRAILER
                continue
            # _TRAILER: fields are counted against the limit and dropped; an empty line ends
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > self.max_trailers:
                raise ProtocolError("trailer section too large", 431)
            if not line:
                self._state = _DONE
                return pieces, True, data[pos:]
            name, colon, _ = line.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name:
                raise ProtocolError("malformed trailer field")
        return pieces, False, b""
