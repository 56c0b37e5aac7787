"""The PROXY protocol, v1 (text) and v2 (binary), read and written without a socket.

The facts come from HAProxy's proxy-protocol.txt; the code is bascule's own.

Rules of this module:
- No I/O, no asyncio: `ProxyHeaderReader.feed` takes the bytes of a read and answers None
  (need more), a `ProxyPreamble(header, rest)` (done: `rest` is what followed the header and
  belongs to the session), or raises `ProxyProtocolError` (the connection must be closed and
  nothing forwarded). The version is told from the first bytes; a session that does not open
  with a PROXY header is refused as soon as one byte disagrees with both signatures.
- Everything is bounded: a v1 line by 107 bytes (the spec's maximum, CRLF included), a v2
  header by `max_v2_length` bytes (4 KiB unless said otherwise). Every length read from the
  wire is checked against the bytes present before they are read.
- Strict: v1 has single spaces, decimal ports without leading zeros, addresses of the family
  it names and a CRLF; v2 has version 2, a known command, family and transport, an address
  block that fits, TLVs that fill the header exactly, known TLVs well formed, and a CRC32C
  that matches when one is present. Unknown TLV types are kept, in order, byte for byte.
- `ProxyHeader` is a frozen value: what a parser returns and what a builder takes. LOCAL (and
  v1's UNKNOWN, its equivalent) carries no addresses: the receiver uses the connection's own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple


class ProxyProtocolError(Exception):
    """The peer sent no PROXY header, or a malformed one: close the connection."""


class Command(IntEnum):
    LOCAL = 0x0
    PROXY = 0x1


class Family(IntEnum):
    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(IntEnum):
    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


class TlvType(IntEnum):
    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    SSL_VERSION = 0x21
    SSL_CN = 0x22
    SSL_CIPHER = 0x23
    SSL_SIG_ALG = 0x24
    SSL_KEY_ALG = 0x25
    NETNS = 0x30


# Bits of the SSL TLV's `client` field.
CLIENT_SSL: Final = 0x01
CLIENT_CERT_CONN: Final = 0x02
CLIENT_CERT_SESS: Final = 0x04

V1_MAX: Final = 107
V1_PREFIX: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED: Final = 16  # signature, version/command, family/transport, length
V2_DEFAULT_MAX: Final = 4096
UNIQUE_ID_MAX: Final = 128
UNIX_PATH: Final = 108

# Address block length per family (source and destination addresses, then ports).
_ADDRESS_LEN: Final[dict[Family, int]] = {
    Family.UNSPEC: 0,
    Family.INET: 12,
    Family.INET6: 36,
    Family.UNIX: 2 * UNIX_PATH,
}
_V1_FAMILY: Final[dict[bytes, Family]] = {b"TCP4": Family.INET, b"TCP6": Family.INET6}
_V1_PROTO: Final[dict[Family, str]] = {Family.INET: "TCP4", Family.INET6: "TCP6"}
_SSL_STRING_TYPES: Final = frozenset(
    {
        TlvType.SSL_VERSION,
        TlvType.SSL_CN,
        TlvType.SSL_CIPHER,
        TlvType.SSL_SIG_ALG,
        TlvType.SSL_KEY_ALG,
    }
)


# --- CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven -------------------


def _crc_table() -> tuple[int, ...]:
    table: list[int] = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C of `data`, continuing from `crc` (0 to start)."""
    c = crc ^ 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tlv:
    """One v2 TLV, as on the wire: its type and its value bytes."""

    type: int
    value: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 0xFF:
            raise ProxyProtocolError(f"TLV type {self.type} is not a byte")
        if len(self.value) > 0xFFFF:
            raise ProxyProtocolError(f"TLV 0x{self.type:02x} value longer than 65535 bytes")


@dataclass(frozen=True, slots=True)
class SslInfo:
    """The SSL TLV (0x20): how the client reached the sender, and its sub-TLVs."""

    client: int = CLIENT_SSL
    verify: int = 0  # 0: the client presented a certificate that verified (or none asked)
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    others: tuple[Tlv, ...] = ()  # sub-TLVs of other types, kept

    def tlv(self) -> Tlv:
        subs = [
            Tlv(kind, text.encode())
            for kind, text in (
                (TlvType.SSL_VERSION, self.version),
                (TlvType.SSL_CN, self.cn),
                (TlvType.SSL_CIPHER, self.cipher),
                (TlvType.SSL_SIG_ALG, self.sig_alg),
                (TlvType.SSL_KEY_ALG, self.key_alg),
            )
            if text is not None
        ]
        body = bytes([self.client & 0xFF]) + (self.verify & 0xFFFFFFFF).to_bytes(4, "big")
        return Tlv(TlvType.SSL, body + _encode_tlvs((*subs, *self.others)))

    @staticmethod
    def decode(value: bytes) -> SslInfo:
        if len(value) < 5:
            raise ProxyProtocolError("SSL TLV shorter than its 5-byte client/verify fields")
        texts: dict[int, str] = {}
        others: list[Tlv] = []
        for sub in _decode_tlvs(value, 5, len(value)):
            if sub.type in _SSL_STRING_TYPES:
                if sub.type in texts:
                    raise ProxyProtocolError(f"SSL sub-TLV 0x{sub.type:02x} given twice")
                texts[sub.type] = _text(sub, "ascii" if sub.type != TlvType.SSL_CN else "utf-8")
            else:
                others.append(sub)
        return SslInfo(
            client=value[0],
            verify=int.from_bytes(value[1:5], "big"),
            version=texts.get(TlvType.SSL_VERSION),
            cn=texts.get(TlvType.SSL_CN),
            cipher=texts.get(TlvType.SSL_CIPHER),
            sig_alg=texts.get(TlvType.SSL_SIG_ALG),
            key_alg=texts.get(TlvType.SSL_KEY_ALG),
            others=tuple(others),
        )


Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A PROXY header, v1 or v2. Addresses are (host, port); an AF_UNIX one is (path, 0).

    Parsed addresses are in their compressed text form (`str(ipaddress.ip_address(...))`).
    """

    version: int = 2
    command: Command = Command.PROXY
    family: Family = Family.UNSPEC
    transport: Transport = Transport.UNSPEC
    source: Address | None = None
    destination: Address | None = None
    tlvs: tuple[Tlv, ...] = ()

    def __post_init__(self) -> None:
        _check_header(self)

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type `kind`, or None."""
        for t in self.tlvs:
            if t.type == kind:
                return t.value
        return None

    @property
    def alpn(self) -> bytes | None:
        return self.tlv(TlvType.ALPN)

    @property
    def authority(self) -> str | None:
        return self._text(TlvType.AUTHORITY, "utf-8")

    @property
    def unique_id(self) -> bytes | None:
        return self.tlv(TlvType.UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        return self._text(TlvType.NETNS, "ascii")

    def _text(self, kind: int, encoding: str) -> str | None:
        value = self.tlv(kind)
        # Values were checked on the way in (parse or construction): decoding cannot fail.
        return None if value is None else value.decode(encoding)

    @property
    def ssl(self) -> SslInfo | None:
        value = self.tlv(TlvType.SSL)
        return None if value is None else SslInfo.decode(value)


def local(version: int = 2, tlvs: tuple[Tlv, ...] = ()) -> ProxyHeader:
    """A LOCAL header (v1: UNKNOWN): the sender's own connection, a health check say."""
    return ProxyHeader(version=version, command=Command.LOCAL, tlvs=tlvs)


def proxied(
    source: Address,
    destination: Address,
    *,
    version: int = 2,
    transport: Transport = Transport.STREAM,
    tlvs: tuple[Tlv, ...] = (),
) -> ProxyHeader:
    """A PROXY header for an IP connection, its family told from the source address."""
    try:
        ip = ipaddress.ip_address(source[0])
    except ValueError:
        raise ProxyProtocolError(f"source {source[0]!r} is not an IP address") from None
    return ProxyHeader(
        version=version,
        command=Command.PROXY,
        family=Family.INET if ip.version == 4 else Family.INET6,
        transport=transport,
        source=source,
        destination=destination,
        tlvs=tlvs,
    )


class ProxyPreamble(NamedTuple):
    """A finished read: the header, and the bytes that followed it (the session's first)."""

    header: ProxyHeader
    rest: bytes


# --- checks shared by the builders and the parsers ------------------------------------------


def _check_ip(host: str, family: Family) -> None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyProtocolError(f"{host!r} is not an IP address") from None
    if (ip.version == 4) != (family == Family.INET):
        raise ProxyProtocolError(f"{host!r} is not an address of family {family.name}")


def _check_address(addr: Address, family: Family) -> None:
    host, port = addr
    if family == Family.UNIX:
        if port != 0:
            raise ProxyProtocolError("an AF_UNIX address has no port (0)")
        if len(host.encode("utf-8", "surrogateescape")) > UNIX_PATH:
            raise ProxyProtocolError(f"AF_UNIX path longer than {UNIX_PATH} bytes")
        return
    if not 0 <= port <= 0xFFFF:
        raise ProxyProtocolError(f"port {port} out of range")
    _check_ip(host, family)


def _check_header(h: ProxyHeader) -> None:
    if h.version not in (1, 2):
        raise ProxyProtocolError(f"PROXY protocol version {h.version} does not exist")
    if h.command == Command.LOCAL and (h.family, h.transport) != (
        Family.UNSPEC,
        Transport.UNSPEC,
    ):
        raise ProxyProtocolError("a LOCAL header carries no family, transport or address")
    if h.family == Family.UNSPEC:
        if h.source is not None or h.destination is not None:
            raise ProxyProtocolError("family UNSPEC carries no address")
    else:
        if h.source is None or h.destination is None:
            raise ProxyProtocolError(f"family {h.family.name} needs a source and a destination")
        _check_address(h.source, h.family)
        _check_address(h.destination, h.family)
    if h.version == 1:
        if h.tlvs:
            raise ProxyProtocolError("v1 carries no TLVs")
        if h.family != Family.UNSPEC and h.family not in _V1_PROTO:
            raise ProxyProtocolError(f"v1 cannot carry family {h.family.name}")
        if h.command == Command.PROXY and h.family == Family.UNSPEC:
            raise ProxyProtocolError("v1 says UNKNOWN with a LOCAL header")
        if h.family != Family.UNSPEC and h.transport != Transport.STREAM:
            raise ProxyProtocolError("v1 carries TCP (STREAM) only")
    for t in h.tlvs:
        _check_tlv(t)
    if sum(1 for t in h.tlvs if t.type == TlvType.CRC32C) > 1:
        raise ProxyProtocolError("more than one CRC32C TLV")


def _text(t: Tlv, encoding: str) -> str:
    try:
        return t.value.decode(encoding)
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"TLV 0x{t.type:02x} is not {encoding} text") from None


def _check_tlv(t: Tlv) -> None:
    kind = t.type
    if kind == TlvType.AUTHORITY:
        _text(t, "utf-8")
    elif kind == TlvType.NETNS:
        _text(t, "ascii")
    elif kind == TlvType.UNIQUE_ID:
        if len(t.value) > UNIQUE_ID_MAX:
            raise ProxyProtocolError(f"UNIQUE_ID TLV longer than {UNIQUE_ID_MAX} bytes")
    elif kind == TlvType.CRC32C:
        if len(t.value) != 4:
            raise ProxyProtocolError("CRC32C TLV is not 4 bytes")
    elif kind == TlvType.SSL:
        SslInfo.decode(t.value)


def _encode_tlvs(tlvs: tuple[Tlv, ...]) -> bytes:
    return b"".join(bytes([t.type]) + len(t.value).to_bytes(2, "big") + t.value for t in tlvs)


def _decode_tlvs(data: bytes, start: int, end: int) -> list[Tlv]:
    """The TLVs in data[start:end], which they must fill exactly."""
    tlvs: list[Tlv] = []
    i = start
    while i < end:
        if end - i < 3:
            raise ProxyProtocolError("truncated TLV header")
        n = int.from_bytes(data[i + 1 : i + 3], "big")
        if end - i - 3 < n:
            raise ProxyProtocolError(f"TLV 0x{data[i]:02x} longer than the header")
        tlvs.append(Tlv(data[i], data[i + 3 : i + 3 + n]))
        i += 3 + n
    return tlvs


# --- builders --------------------------------------------------------------------------------


def build_v1(header: ProxyHeader) -> bytes:
    """The v1 line for `header` (LOCAL becomes UNKNOWN)."""
    if header.tlvs:
        raise ProxyProtocolError("v1 carries no TLVs")
    if header.command == Command.LOCAL:
        return b"PROXY UNKNOWN\r\n"
    proto = _V1_PROTO.get(header.family)
    if proto is None or header.source is None or header.destination is None:
        raise ProxyProtocolError(f"v1 cannot carry family {header.family.name}")
    if header.transport != Transport.STREAM:
        raise ProxyProtocolError("v1 carries TCP (STREAM) only")
    src = str(ipaddress.ip_address(header.source[0]))
    dst = str(ipaddress.ip_address(header.destination[0]))
    line = f"PROXY {proto} {src} {dst} {header.source[1]} {header.destination[1]}\r\n"
    return line.encode("ascii")


def _pack_address(family: Family, addr: Address) -> tuple[bytes, bytes]:
    """(address bytes, port bytes) of one side."""
    host, port = addr
    if family == Family.UNIX:
        path = host.encode("utf-8", "surrogateescape")
        return path.ljust(UNIX_PATH, b"\x00"), b""
    return ipaddress.ip_address(host).packed, port.to_bytes(2, "big")


def build_v2(header: ProxyHeader, crc32c: bool = False) -> bytes:
    """The v2 bytes for `header` (a v1 header is written as v2).

    A CRC32C TLV already in `header.tlvs` gets its value computed; with `crc32c=True` and none
    there, one is added after the others.
    """
    tlvs = header.tlvs
    has_crc = any(t.type == TlvType.CRC32C for t in tlvs)
    zero = Tlv(TlvType.CRC32C, b"\x00\x00\x00\x00")
    tlvs = tuple(zero if t.type == TlvType.CRC32C else t for t in tlvs)
    if crc32c and not has_crc:
        tlvs = (*tlvs, zero)
    block = b""
    if header.command == Command.PROXY and header.family != Family.UNSPEC:
        assert header.source is not None and header.destination is not None
        src, sport = _pack_address(header.family, header.source)
        dst, dport = _pack_address(header.family, header.destination)
        block = src + dst + sport + dport
    body = block + _encode_tlvs(tlvs)
    if len(body) > 0xFFFF:
        raise ProxyProtocolError("v2 header longer than 65535 bytes after its fixed part")
    out = (
        V2_SIGNATURE
        + bytes([0x20 | header.command, (header.family << 4) | header.transport])
        + len(body).to_bytes(2, "big")
        + body
    )
    if not (crc32c or has_crc):
        return out
    # The spec's checksum is over the whole header with the CRC32C value zeroed: `out` now.
    return _fill_crc(out, crc32c_value(out))


def crc32c_value(data: bytes) -> bytes:
    """The CRC32C of `data` as the TLV carries it: 4 bytes, network order."""
    return crc32c(data).to_bytes(4, "big")


def _crc_offsets(data: bytes, start: int) -> list[int]:
    """Offsets of the values of the CRC32C TLVs of a v2 header whose TLVs start at `start`."""
    offsets: list[int] = []
    i = start
    while i + 3 <= len(data):
        n = int.from_bytes(data[i + 1 : i + 3], "big")
        if data[i] == TlvType.CRC32C:
            offsets.append(i + 3)
        i += 3 + n
    return offsets


def _fill_crc(out: bytes, checksum: bytes) -> bytes:
    family = Family(out[13] >> 4)
    start = V2_FIXED + (_ADDRESS_LEN[family] if out[12] & 0xF == Command.PROXY else 0)
    buf = bytearray(out)
    for at in _crc_offsets(out, start):
        buf[at : at + 4] = checksum
    return bytes(buf)


# --- parsers ---------------------------------------------------------------------------------


def _parse_port(raw: bytes) -> int:
    if not raw.isdigit() or not raw.isascii() or len(raw) > 5 or (raw[0] == 0x30 and len(raw) > 1):
        raise ProxyProtocolError(f"v1 port {raw!r} is not a decimal port")
    port = int(raw)
    if port > 0xFFFF:
        raise ProxyProtocolError(f"v1 port {raw!r} out of range")
    return port


def _parse_v1_host(raw: bytes, family: Family) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"v1 address {raw!r} is not ASCII") from None
    # ipaddress takes IPv6 zone ids ("fe80::1%eth0"); an address on the wire has none.
    if "%" in text:
        raise ProxyProtocolError(f"v1 address {raw!r} has a zone")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 address {raw!r} is not an IP address") from None
    if (ip.version == 4) != (family == Family.INET):
        raise ProxyProtocolError(f"v1 address {raw!r} does not match its protocol")
    return str(ip)


def parse_v1(line: bytes) -> ProxyHeader:
    """A v1 header from its line, CRLF included."""
    if len(line) > V1_MAX:
        raise ProxyProtocolError(f"v1 header longer than {V1_MAX} bytes")
    if not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n"):
        raise ProxyProtocolError("v1 header must be 'PROXY ...' ending in CRLF")
    body = line[len(V1_PREFIX) : -2]
    if b"\r" in body or b"\n" in body:
        raise ProxyProtocolError("v1 header holds a stray CR or LF")
    if body == b"UNKNOWN" or body.startswith(b"UNKNOWN "):
        # The spec: the rest of an UNKNOWN line is ignored, the connection's own ends used.
        return ProxyHeader(version=1, command=Command.LOCAL)
    parts = body.split(b" ")
    if len(parts) != 5:
        raise ProxyProtocolError("v1 header needs a protocol, two addresses, two ports")
    family = _V1_FAMILY.get(parts[0])
    if family is None:
        raise ProxyProtocolError(f"v1 protocol {parts[0][:8]!r} is not TCP4, TCP6 or UNKNOWN")
    return ProxyHeader(
        version=1,
        command=Command.PROXY,
        family=family,
        transport=Transport.STREAM,
        source=(_parse_v1_host(parts[1], family), _parse_port(parts[3])),
        destination=(_parse_v1_host(parts[2], family), _parse_port(parts[4])),
    )


def _unpack_address(family: Family, block: bytes) -> tuple[Address, Address]:
    if family == Family.INET:
        a, b = block[0:4], block[4:8]
        ports = block[8:12]
    elif family == Family.INET6:
        a, b = block[0:16], block[16:32]
        ports = block[32:36]
    else:
        src = block[:UNIX_PATH].rstrip(b"\x00").decode("utf-8", "surrogateescape")
        dst = block[UNIX_PATH:].rstrip(b"\x00").decode("utf-8", "surrogateescape")
        return (src, 0), (dst, 0)
    sport = int.from_bytes(ports[0:2], "big")
    dport = int.from_bytes(ports[2:4], "big")
    return (
        (str(ipaddress.ip_address(a)), sport),
        (str(ipaddress.ip_address(b)), dport),
    )


def _fixed_fields(data: bytes) -> tuple[Command, Family, Transport]:
    """Version, command, family and transport of a v2 header (its first 14 bytes at least)."""
    if data[12] >> 4 != 2:
        raise ProxyProtocolError(f"v2 version nibble {data[12] >> 4} is not 2")
    try:
        return Command(data[12] & 0xF), Family(data[13] >> 4), Transport(data[13] & 0xF)
    except ValueError:
        raise ProxyProtocolError(
            f"v2 command/family bytes 0x{data[12]:02x} 0x{data[13]:02x} are not defined"
        ) from None


def parse_v2(data: bytes) -> ProxyHeader:
    """A v2 header from exactly its bytes (fixed part, addresses, TLVs)."""
    if len(data) < V2_FIXED or not data.startswith(V2_SIGNATURE):
        raise ProxyProtocolError("v2 header without its signature")
    command, family, transport = _fixed_fields(data)
    length = int.from_bytes(data[14:16], "big")
    if len(data) != V2_FIXED + length:
        raise ProxyProtocolError("v2 length does not match the header's bytes")
    need = _ADDRESS_LEN[family]
    if length < need:
        if command == Command.PROXY:
            raise ProxyProtocolError(f"v2 {family.name} address block needs {need} bytes")
        # LOCAL: the spec says the block is discarded, whatever it holds.
        return ProxyHeader(version=2, command=Command.LOCAL)
    source = destination = None
    if command == Command.PROXY and family != Family.UNSPEC:
        source, destination = _unpack_address(family, data[V2_FIXED : V2_FIXED + need])
    tlvs = _decode_tlvs(data, V2_FIXED + need, len(data))
    crcs = [t for t in tlvs if t.type == TlvType.CRC32C]
    if len(crcs) > 1:
        raise ProxyProtocolError("more than one CRC32C TLV")
    for t in tlvs:
        _check_tlv(t)
    if crcs:
        zeroed = bytearray(data)
        for at in _crc_offsets(data, V2_FIXED + need):
            zeroed[at : at + 4] = b"\x00\x00\x00\x00"
        if crc32c_value(bytes(zeroed)) != crcs[0].value:
            raise ProxyProtocolError("CRC32C of the v2 header does not match")
    if command == Command.LOCAL:
        return ProxyHeader(version=2, command=command, tlvs=tuple(tlvs))
    return ProxyHeader(
        version=2,
        command=command,
        family=family,
        transport=transport,
        source=source,
        destination=destination,
        tlvs=tuple(tlvs),
    )


# --- the reader --------------------------------------------------------------------------------

_WAITING: Final = 0
_V1: Final = 1
_V2: Final = 2
_DONE: Final = 3


class ProxyHeaderReader:
    """Reads the PROXY header at the start of a session, fed one read at a time."""

    __slots__ = ("_buf", "_max_v2", "_state", "_versions", "consumed")

    def __init__(
        self, *, max_v2_length: int = V2_DEFAULT_MAX, versions: tuple[int, ...] = (1, 2)
    ) -> None:
        if max_v2_length < V2_FIXED:
            raise ValueError(f"max_v2_length must be at least {V2_FIXED}")
        self._buf = b""
        self._max_v2 = max_v2_length
        self._versions = versions
        self._state = _WAITING
        self.consumed = 0  # the header's length in bytes, once read

    def feed(self, data: bytes) -> ProxyPreamble | None:
        """None while the header is incomplete; the header and what followed it once read."""
        if self._state == _DONE:
            raise RuntimeError("the PROXY header was already read")
        buf = self._buf + data
        if self._state == _WAITING:
            self._state = self._detect(buf)
        if self._state == _V1:
            result = self._v1(buf)
        elif self._state == _V2:
            result = self._v2(buf)
        else:
            result = None
        if result is None:
            self._buf = buf
            return None
        self._state = _DONE
        self._buf = b""
        self.consumed = len(buf) - len(result.rest)
        return result

    def _detect(self, buf: bytes) -> int:
        n = min(len(buf), len(V2_SIGNATURE))
        if buf[:n] == V2_SIGNATURE[:n]:
            state = _V2 if n == len(V2_SIGNATURE) else _WAITING
        elif buf[: len(V1_PREFIX)] == V1_PREFIX[: min(len(buf), len(V1_PREFIX))]:
            state = _V1 if len(buf) >= len(V1_PREFIX) else _WAITING
        else:
            raise ProxyProtocolError("the session does not open with a PROXY header")
        if state != _WAITING and state not in self._versions:
            raise ProxyProtocolError(f"PROXY protocol v{state} is not accepted here")
        return state

    def _v1(self, buf: bytes) -> ProxyPreamble | None:
        end = buf.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buf) >= V1_MAX:
                raise ProxyProtocolError(f"v1 header without CRLF in {V1_MAX} bytes")
            if b"\n" in buf:
                raise ProxyProtocolError("v1 header ends in LF without CR")
            return None
        return ProxyPreamble(parse_v1(buf[: end + 2]), buf[end + 2 :])

    def _v2(self, buf: bytes) -> ProxyPreamble | None:
        if len(buf) >= 14:
            # Refuse a bad version or family now, not after waiting for its whole length.
            _fixed_fields(buf)
        if len(buf) < V2_FIXED:
            return None
        total = V2_FIXED + int.from_bytes(buf[14:16], "big")
        if total > self._max_v2:
            raise ProxyProtocolError(f"v2 header of {total} bytes is over {self._max_v2}")
        if len(buf) < total:
            return None
        return ProxyPreamble(parse_v2(buf[:total]), buf[total:])
