"""Reading a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3, RFC 7301) without a socket.

A `tls` listener routes a session by what the client asks for (SNI, ALPN) and then relays its
bytes untouched: nothing here decrypts, and nothing is consumed.

Rules of this module:
- No I/O, no asyncio: `ClientHelloReader.feed` takes a copy of each read and answers None
  (need more) or the `ClientHello`, or raises `TlsHelloError` (close the session). The caller
  keeps its own bytes and relays them all, whatever the reader saw.
- Records may split anywhere (across reads) and the ClientHello may span several handshake
  records; any record that is not a handshake one before the ClientHello ends is a refusal,
  as is a zero-length handshake record, a record over 2^14 bytes, or a first handshake message
  that is not a ClientHello.
- Everything is bounded: the ClientHello by `max_size` bytes (16 KiB unless said otherwise),
  refused as soon as its declared length exceeds it. Every length read from the wire is
  checked against the bytes that contain it, and every vector must fill its parent exactly.
- GREASE values (RFC 8701) are dropped from what is reported. The SNI host_name is lower-cased
  and must be a DNS name (LDH labels, underscores tolerated, no IP literal, no trailing dot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

RECORD_HANDSHAKE: Final = 0x16
HANDSHAKE_CLIENT_HELLO: Final = 0x01
RECORD_HEADER: Final = 5
RECORD_MAX: Final = 1 << 14
DEFAULT_MAX_SIZE: Final = 16 * 1024

EXT_SERVER_NAME: Final = 0x0000
EXT_SUPPORTED_GROUPS: Final = 0x000A
EXT_ALPN: Final = 0x0010
EXT_SUPPORTED_VERSIONS: Final = 0x002B

_LABEL: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


class TlsHelloError(Exception):
    """The session does not open with a well-formed TLS ClientHello: close it."""


def is_grease(value: int) -> bool:
    """RFC 8701's reserved values: 0x0A0A, 0x1A1A, ... 0xFAFA."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a ClientHello asks for, GREASE left out.

    `versions` are the offered versions, best first as sent (supported_versions, or the legacy
    version alone when that extension is absent); `size` is the bytes of the records up to and
    including the one that completes the ClientHello, record headers included.
    """

    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    legacy_version: int
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    supported_groups: tuple[int, ...]
    session_id: bytes
    size: int


class _Cursor:
    """Reads big-endian fields from data[pos:end]; never past `end`."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise TlsHelloError(f"{what} runs past its enclosing length")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, len_size: int, what: str) -> _Cursor:
        """The sub-cursor of a vector prefixed by a `len_size`-byte length."""
        n = self.uint(len_size, f"{what} length")
        if n > self.end - self.pos:
            raise TlsHelloError(f"{what} runs past its enclosing length")
        sub = _Cursor(self.data, self.pos, self.pos + n)
        self.pos += n
        return sub

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise TlsHelloError(f"{self.end - self.pos} stray bytes after {what}")


def _u16_list(c: _Cursor, what: str) -> tuple[int, ...]:
    if c.left() % 2:
        raise TlsHelloError(f"{what} has an odd length")
    values: list[int] = []
    while c.left():
        v = c.uint(2, what)
        if not is_grease(v):
            values.append(v)
    return tuple(values)


def _host_name(raw: bytes) -> str:
    name = raw.lower()
    if not 0 < len(name) <= 253:
        raise TlsHelloError("SNI host_name is empty or longer than 253 bytes")
    labels = name.split(b".")
    for label in labels:
        if not 0 < len(label) <= 63:
            raise TlsHelloError("SNI host_name has an empty or over-long label")
        if label[0] == 0x2D or label[-1] == 0x2D:
            raise TlsHelloError("SNI host_name label starts or ends with '-'")
        for ch in label:
            if ch not in _LABEL:
                raise TlsHelloError(f"SNI host_name holds byte 0x{ch:02x}")
    if labels[-1].isdigit():
        # RFC 6066: no IP literal; a DNS name's last label is never all digits either.
        raise TlsHelloError("SNI host_name is an IP address")
    return name.decode("ascii")


def _server_name(c: _Cursor) -> str | None:
    names = c.vector(2, "server_name_list")
    c.done("server_name_list")
    if not names.left():
        raise TlsHelloError("empty server_name_list")
    host: str | None = None
    while names.left():
        kind = names.uint(1, "server name type")
        value = names.vector(2, "server name")
        if kind == 0:
            if host is not None:
                raise TlsHelloError("two host_names in server_name")
            host = _host_name(value.take(value.left(), "host_name"))
    return host


def _alpn(c: _Cursor) -> tuple[str, ...]:
    protocols = c.vector(2, "ALPN protocol list")
    c.done("ALPN extension")
    if not protocols.left():
        raise TlsHelloError("empty ALPN protocol list")
    out: list[str] = []
    while protocols.left():
        name = protocols.vector(1, "ALPN protocol")
        if not name.left():
            raise TlsHelloError("empty ALPN protocol name")
        # latin-1 maps every byte: a protocol id is opaque bytes, compared as given.
        out.append(name.take(name.left(), "ALPN protocol").decode("latin-1"))
    return tuple(out)


def _supported_versions(c: _Cursor) -> tuple[int, ...]:
    versions = c.vector(1, "supported_versions")
    c.done("supported_versions extension")
    if not versions.left():
        raise TlsHelloError("empty supported_versions")
    return _u16_list(versions, "supported_versions")


def _supported_groups(c: _Cursor) -> tuple[int, ...]:
    groups = c.vector(2, "supported_groups")
    c.done("supported_groups extension")
    return _u16_list(groups, "supported_groups")


def parse_client_hello(body: bytes, size: int) -> ClientHello:
    """A ClientHello from its handshake body (after the 4-byte handshake header)."""
    c = _Cursor(body, 0, len(body))
    legacy_version = c.uint(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise TlsHelloError(f"ClientHello version 0x{legacy_version:04x} is not TLS")
    c.take(32, "random")
    session = c.vector(1, "legacy_session_id")
    if session.left() > 32:
        raise TlsHelloError("legacy_session_id longer than 32 bytes")
    session_id = session.take(session.left(), "legacy_session_id")
    suites = c.vector(2, "cipher_suites")
    if not suites.left():
        raise TlsHelloError("no cipher suites")
    cipher_suites = _u16_list(suites, "cipher_suites")
    compression = c.vector(1, "legacy_compression_methods")
    if not compression.left():
        raise TlsHelloError("no compression methods")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = (legacy_version,)
    groups: tuple[int, ...] = ()
    seen: list[int] = []
    if c.left():  # extensions are optional before TLS 1.3
        exts = c.vector(2, "extensions")
        c.done("extensions")
        while exts.left():
            kind = exts.uint(2, "extension type")
            data = exts.vector(2, f"extension 0x{kind:04x}")
            if kind in seen:
                raise TlsHelloError(f"extension 0x{kind:04x} given twice")
            seen.append(kind)
            if kind == EXT_SERVER_NAME:
                sni = _server_name(data)
            elif kind == EXT_ALPN:
                alpn = _alpn(data)
            elif kind == EXT_SUPPORTED_VERSIONS:
                versions = _supported_versions(data)
            elif kind == EXT_SUPPORTED_GROUPS:
                groups = _supported_groups(data)
    return ClientHello(
        sni=sni,
        alpn=alpn,
        versions=versions,
        legacy_version=legacy_version,
        cipher_suites=cipher_suites,
        extensions=tuple(k for k in seen if not is_grease(k)),
        supported_groups=groups,
        session_id=session_id,
        size=size,
    )


class ClientHelloReader:
    """Finds the ClientHello in the first records of a session, fed one read at a time."""

    __slots__ = ("_buf", "_hello", "_max", "_message", "_pos")

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        # Both grow in place: a client sending one byte per segment costs linear time.
        self._buf = bytearray()  # bytes seen and not yet taken apart into records
        self._message = bytearray()  # handshake bytes gathered from whole records
        self._pos = 0  # bytes of whole records already taken apart
        self._max = max_size
        self._hello: ClientHello | None = None

    def feed(self, data: bytes) -> ClientHello | None:
        """None while the ClientHello is incomplete; the ClientHello once it is."""
        if self._hello is not None:
            return self._hello
        buf = self._buf
        buf += data
        start = 0
        while True:
            if len(buf) - start < RECORD_HEADER:
                self._check_partial(buf, start)
                break
            kind, major = buf[start], buf[start + 1]
            if kind != RECORD_HANDSHAKE:
                raise TlsHelloError(f"record type 0x{kind:02x} is not a TLS handshake")
            if major != 3:
                raise TlsHelloError(f"record version 0x{major:02x}.. is not TLS")
            n = int.from_bytes(buf[start + 3 : start + 5], "big")
            if n == 0 or n > RECORD_MAX:
                raise TlsHelloError(f"handshake record of {n} bytes")
            if len(buf) - start - RECORD_HEADER < n:
                self._check_partial(buf, start)
                break
            self._message += buf[start + RECORD_HEADER : start + RECORD_HEADER + n]
            start += RECORD_HEADER + n
            self._pos += RECORD_HEADER + n
            hello = self._try_message()
            if hello is not None:
                self._hello = hello
                self._buf = bytearray()
                self._message = bytearray()
                return hello
        del buf[:start]
        return None

    def _check_partial(self, buf: bytearray, start: int) -> None:
        """Refuse the partial record at buf[start:] as soon as its known bytes are wrong.

        What is held stays bounded without more: the message is capped by `_try_message`
        and at most one partial record (2^14 bytes) waits beside it.
        """
        left = len(buf) - start
        if left and buf[start] != RECORD_HANDSHAKE:
            raise TlsHelloError(f"record type 0x{buf[start]:02x} is not a TLS handshake")
        if left > 1 and buf[start + 1] != 3:
            raise TlsHelloError(f"record version 0x{buf[start + 1]:02x}.. is not TLS")
        if left > RECORD_HEADER:
            # A record still arriving may already show a wrong message type or length.
            body = start + RECORD_HEADER
            self._check_message_head(bytes(self._message[:4]) + bytes(buf[body : body + 4]))

    def _check_message_head(self, msg: bytes | bytearray) -> None:
        if msg[0] != HANDSHAKE_CLIENT_HELLO:
            raise TlsHelloError(f"first handshake message is type {msg[0]}, not ClientHello")
        if len(msg) >= 4:
            length = int.from_bytes(msg[1:4], "big")
            if length > self._max:
                raise TlsHelloError(f"ClientHello of {length} bytes is over {self._max}")

    def _try_message(self) -> ClientHello | None:
        msg = self._message
        self._check_message_head(msg)
        if len(msg) < 4:
            return None
        length = int.from_bytes(msg[1:4], "big")
        if len(msg) < 4 + length:
            return None
        return parse_client_hello(bytes(msg[4 : 4 + length]), self._pos)
