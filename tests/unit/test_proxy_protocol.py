"""The PROXY protocol codec: byte-exact v1/v2 vectors written from the spec, every refusal,
round trips and a bounded fuzz in which every split of the input gives the same verdict."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bascule.codec.proxy_protocol import (
    CLIENT_CERT_CONN,
    CLIENT_SSL,
    V2_SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyPreamble,
    ProxyProtocolError,
    SslInfo,
    Tlv,
    TlvType,
    Transport,
    build_v1,
    build_v2,
    crc32c,
    local,
    proxied,
)

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")


def read(data: bytes, step: int | None = None, **kw: int) -> ProxyPreamble | None:
    """Feed `data` whole or in `step`-byte reads; the result once the header is read."""
    r = ProxyHeaderReader(**kw)  # type: ignore[arg-type]
    if step is None:
        return r.feed(data)
    for i in range(0, max(len(data), 1), step):
        got = r.feed(data[i : i + step])
        if got is not None:
            return ProxyPreamble(got.header, got.rest + data[i + step :])
    return None


def verdict(data: bytes, step: int | None = None) -> object:
    try:
        return read(data, step)
    except ProxyProtocolError:
        return "error"


# --- CRC32C --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"123456789", 0xE3069283),  # the check value of CRC-32C
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"", 0),
    ],
)
def test_crc32c_known_values(data: bytes, crc: int) -> None:
    assert crc32c(data) == crc
    assert crc32c(data[5:], crc32c(data[:5])) == crc


# --- v1 ----------------------------------------------------------------------------------------


V1_VECTORS = [
    (
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        proxied(("192.0.2.1", 56324), ("198.51.100.2", 443), version=1),
    ),
    (
        b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n",
        proxied(("2001:db8::1", 0), ("::1", 65535), version=1),
    ),
    (b"PROXY UNKNOWN\r\n", local(version=1)),
]


@pytest.mark.parametrize(("wire", "header"), V1_VECTORS)
def test_v1_vectors_parse_and_build(wire: bytes, header: ProxyHeader) -> None:
    assert read(wire + b"GET /") == (header, b"GET /")
    assert build_v1(header) == wire


def test_v1_unknown_ignores_the_rest_of_its_line() -> None:
    got = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nxyz")
    assert got == (local(version=1), b"xyz")


def test_v1_longest_line_is_accepted_and_one_more_byte_is_not() -> None:
    longest = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert len(longest) == 104
    assert read(longest) is not None
    unknown = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(unknown) == 107
    assert read(unknown) == (local(version=1), b"")
    assert verdict(b"PROXY UNKNOWN " + b"x" * (108 - 16) + b"\r\n") == "error"
    # without a CRLF, 107 bytes are enough to give up
    with pytest.raises(ProxyProtocolError, match="without CRLF"):
        read(b"PROXY UNKNOWN " + b"x" * 93)


def test_v1_reader_refuses_ipv6_zone_even_from_ipaddress() -> None:
    with pytest.raises(ProxyProtocolError, match="zone"):
        read(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n")


V1_REFUSED = [
    b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",  # double space
    b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",  # trailing space
    b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",  # leading zero
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 \xd9\xa1 2\r\n",  # a non-ASCII digit
    b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",  # leading zero in an octet
    b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 ::1 198.51.100.2 1 2\r\n",  # family mismatch
    b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",  # a field missing
    b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",  # LF without CR
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\r\n",
    b"PROXY TCP4 example.com 198.51.100.2 1 2\r\n",
    b"PROXY\r\n",
    b"PROXY \r\n",
    b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no header at all
]


@pytest.mark.parametrize("wire", V1_REFUSED)
def test_v1_refusals(wire: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        read(wire)
    assert verdict(wire, 1) == "error"


def test_no_header_is_refused_at_the_first_wrong_byte() -> None:
    r = ProxyHeaderReader()
    assert r.feed(b"PRO") is None
    with pytest.raises(ProxyProtocolError, match="does not open"):
        r.feed(b"Z")
    with pytest.raises(ProxyProtocolError):
        ProxyHeaderReader().feed(b"\r\n\r\n\x00\r\nQUIX")


# --- v2 ----------------------------------------------------------------------------------------

V2_INET = SIG + bytes.fromhex("21 11 000c  c0000201 c6336402 dc04 01bb")
V2_INET_DGRAM = SIG + bytes.fromhex("21 12 000c  c0000201 c6336402 0035 0035")
V2_INET6 = SIG + bytes.fromhex(
    "21 21 002420010db8000000000000000000000001000000000000000000000000000000011f90 0050"
)
V2_UNIX = (
    SIG
    + bytes.fromhex("21 31 00d8")
    + b"/run/a.sock".ljust(108, b"\x00")
    + b"/run/b.sock".ljust(108, b"\x00")
)
V2_LOCAL = SIG + bytes.fromhex("20 00 0000")
V2_UNSPEC = SIG + bytes.fromhex("21 00 0000")
V2_TLVS = SIG + bytes.fromhex(
    "21 11 0036  c0000201 c6336402 dc04 01bb"
    "01 0002 6832"  # ALPN h2
    "02 000b 6578616d706c652e636f6d"  # AUTHORITY example.com
    "04 0003 000000"  # NOOP
    "05 0003 616263"  # UNIQUE_ID abc
    "e0 0002 ffee"  # a custom type, kept
    "30 0003 6e7331"  # NETNS ns1
)

INET = (("192.0.2.1", 56324), ("198.51.100.2", 443))

V2_VECTORS = [
    (V2_INET, proxied(*INET)),
    (V2_INET_DGRAM, proxied(("192.0.2.1", 53), ("198.51.100.2", 53), transport=Transport.DGRAM)),
    (V2_INET6, proxied(("2001:db8::1", 8080), ("::1", 80))),
    (
        V2_UNIX,
        ProxyHeader(
            family=Family.UNIX,
            transport=Transport.STREAM,
            source=("/run/a.sock", 0),
            destination=("/run/b.sock", 0),
        ),
    ),
    (V2_LOCAL, local()),
    (V2_UNSPEC, ProxyHeader(command=Command.PROXY)),
    (
        V2_TLVS,
        proxied(
            *INET,
            tlvs=(
                Tlv(TlvType.ALPN, b"h2"),
                Tlv(TlvType.AUTHORITY, b"example.com"),
                Tlv(TlvType.NOOP, b"\x00\x00\x00"),
                Tlv(TlvType.UNIQUE_ID, b"abc"),
                Tlv(0xE0, b"\xff\xee"),
                Tlv(TlvType.NETNS, b"ns1"),
            ),
        ),
    ),
]


@pytest.mark.parametrize(("wire", "header"), V2_VECTORS)
def test_v2_vectors_parse_and_build(wire: bytes, header: ProxyHeader) -> None:
    assert read(wire + b"\x16\x03\x01") == (header, b"\x16\x03\x01")
    assert build_v2(header) == wire
    r = ProxyHeaderReader()
    r.feed(wire)
    assert r.consumed == len(wire)


def test_v2_tlv_accessors() -> None:
    got = read(V2_TLVS)
    assert got is not None
    h = got.header
    assert (h.alpn, h.authority, h.unique_id, h.netns, h.ssl) == (
        b"h2",
        "example.com",
        b"abc",
        "ns1",
        None,
    )
    assert h.tlv(0xE0) == b"\xff\xee"


def test_v2_ssl_tlv_by_hand() -> None:
    ssl_value = bytes.fromhex(
        "07 00000000"  # client: SSL, cert on connection and session; verified
        "21 0007 544c5376312e33"  # VERSION TLSv1.3
        "22 0004 616c6963"  # CN alic
        "23 0016 544c535f4145535f3132385f47434d5f534841323536"  # CIPHER
        "24 000a 524f3441454e4a532d31"  # SIG_ALG (any text); no KEY_ALG
    )
    wire = SIG + bytes([0x21, 0x11]) + (12 + 3 + len(ssl_value)).to_bytes(2, "big")
    wire += V2_INET[16:] + b"\x20" + len(ssl_value).to_bytes(2, "big") + ssl_value
    got = read(wire)
    assert got is not None
    ssl = got.header.ssl
    assert ssl == SslInfo(
        client=0x07,
        verify=0,
        version="TLSv1.3",
        cn="alic",
        cipher="TLS_AES_128_GCM_SHA256",
        sig_alg="RO4AENJS-1",
    )
    assert build_v2(got.header) == wire
    assert ssl.tlv().value == ssl_value


def test_v2_crc32c_emitted_and_verified() -> None:
    h = proxied(*INET, tlvs=(Tlv(TlvType.AUTHORITY, b"example.com"),))
    wire = build_v2(h, crc32c=True)
    # by hand: the header with its CRC32C TLV's value zeroed, checksummed, big-endian
    zeroed = SIG + bytes.fromhex("21 11 0021") + V2_INET[16:]
    zeroed += bytes.fromhex("02 000b") + b"example.com" + bytes.fromhex("03 0004 00000000")
    assert wire == zeroed[:-4] + crc32c(zeroed).to_bytes(4, "big")
    got = read(wire)
    assert got is not None
    assert got.header.tlvs == (*h.tlvs, Tlv(TlvType.CRC32C, wire[-4:]))
    # a header that already holds a CRC32C TLV gets it recomputed in place
    assert build_v2(got.header) == wire
    stale = replace(got.header, tlvs=(Tlv(TlvType.CRC32C, b"\x00\x00\x00\x01"), *h.tlvs))
    assert read(build_v2(stale)) is not None
    for i in range(16, len(wire)):
        flipped = wire[:i] + bytes([wire[i] ^ 0x01]) + wire[i + 1 :]
        assert verdict(flipped) == "error", i  # a checksum that does not match, or worse


def test_v2_crc32c_mismatch_message() -> None:
    wire = build_v2(proxied(*INET), crc32c=True)
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        read(wire[:-1] + bytes([wire[-1] ^ 0xFF]))


def test_v2_local_discards_its_address_block_and_keeps_tlvs() -> None:
    wire = SIG + bytes.fromhex("20 11 0011") + V2_INET[16:] + bytes.fromhex("05 0002 6964")
    assert read(wire) == (local(tlvs=(Tlv(TlvType.UNIQUE_ID, b"id"),)), b"")
    short = SIG + bytes.fromhex("20 11 0002 abcd")
    assert read(short) == (local(), b"")


def _v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return SIG + bytes([ver_cmd, fam]) + len(body).to_bytes(2, "big") + body


def _with_tlv(kind: int, value: bytes, n: int | None = None) -> bytes:
    n = len(value) if n is None else n
    return _v2(0x21, 0x11, V2_INET[16:] + bytes([kind]) + n.to_bytes(2, "big") + value)


V2_REFUSED = [
    (_v2(0x11, 0x11, V2_INET[16:]), "version"),
    (_v2(0x31, 0x11, V2_INET[16:]), "version"),
    (_v2(0x22, 0x11, V2_INET[16:]), "not defined"),  # command 2
    (_v2(0x21, 0x41, V2_INET[16:]), "not defined"),  # family 4
    (_v2(0x21, 0x13, V2_INET[16:]), "not defined"),  # transport 3
    (_v2(0x21, 0x11, V2_INET[16:-1]), "address block"),
    (_v2(0x21, 0x21, V2_INET[16:]), "address block"),
    (_v2(0x21, 0x31, b"\x00" * 215), "address block"),
    (_with_tlv(0x01, b"ab", 3), "longer than the header"),
    (_v2(0x21, 0x11, V2_INET[16:] + b"\x01\x00"), "truncated TLV"),
    (_with_tlv(0x05, b"x" * 129), "UNIQUE_ID"),
    (_with_tlv(0x03, b"\x00\x00\x00"), "CRC32C TLV is not 4"),
    (_with_tlv(0x02, b"\xff\xfe"), "utf-8"),
    (_with_tlv(0x30, "nś".encode()), "ascii"),
    (_with_tlv(0x20, b"\x01\x00\x00\x00"), "5-byte"),
    (_with_tlv(0x20, b"\x01\x00\x00\x00\x00\x21\x00\x09TLS"), "longer than the header"),
    (_with_tlv(0x20, b"\x01\x00\x00\x00\x00\x21\x00\x01\xff"), "ascii"),
    (_with_tlv(0x20, b"\x01\x00\x00\x00\x00\x22\x00\x01a\x22\x00\x01b"), "twice"),
]


@pytest.mark.parametrize(("wire", "message"), V2_REFUSED)
def test_v2_refusals(wire: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        read(wire)
    assert verdict(wire, 1) == "error"


def test_v2_two_crc32c_tlvs_refused() -> None:
    body = V2_INET[16:] + bytes.fromhex("03 0004 00000000 03 0004 00000000")
    with pytest.raises(ProxyProtocolError, match="more than one"):
        read(_v2(0x21, 0x11, body))


def test_v2_length_cap_refuses_before_the_bytes_arrive() -> None:
    head = SIG + bytes.fromhex("21 11 0ff1")  # 16 + 4081 bytes announced
    with pytest.raises(ProxyProtocolError, match="over 4096"):
        ProxyHeaderReader().feed(head)
    assert ProxyHeaderReader(max_v2_length=8192).feed(head) is None
    ok = SIG + bytes.fromhex("21 11 0ff0") + V2_INET[16:] + b"\x04\x0f\xe1" + bytes(4065)
    assert len(ok) == 4096
    assert read(ok) is not None


def test_v2_bad_version_refused_before_its_length_arrives() -> None:
    r = ProxyHeaderReader()
    with pytest.raises(ProxyProtocolError, match="version"):
        r.feed(SIG + b"\x11\x11")


def test_accepted_versions() -> None:
    with pytest.raises(ProxyProtocolError, match="v1 is not accepted"):
        ProxyHeaderReader(versions=(2,)).feed(b"PROXY ")
    with pytest.raises(ProxyProtocolError, match="v2 is not accepted"):
        ProxyHeaderReader(versions=(1,)).feed(V2_INET)
    assert ProxyHeaderReader(versions=(2,)).feed(V2_INET) is not None


def test_reader_is_single_use() -> None:
    r = ProxyHeaderReader()
    assert r.feed(V2_LOCAL) is not None
    with pytest.raises(RuntimeError):
        r.feed(b"x")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ProxyHeader(version=3),
        lambda: ProxyHeader(command=Command.LOCAL, family=Family.INET),
        lambda: ProxyHeader(family=Family.UNSPEC, source=("192.0.2.1", 1)),
        lambda: ProxyHeader(family=Family.INET, source=("192.0.2.1", 1)),
        lambda: proxied(("192.0.2.1", 1), ("::1", 2)),
        lambda: proxied(("192.0.2.1", 70000), ("192.0.2.2", 2)),
        lambda: proxied(("example.com", 1), ("192.0.2.2", 2)),
        lambda: proxied(*INET, version=1, tlvs=(Tlv(1, b"h2"),)),
        lambda: proxied(*INET, version=1, transport=Transport.DGRAM),
        lambda: ProxyHeader(version=1, command=Command.PROXY),
        lambda: ProxyHeader(version=1, family=Family.UNIX, source=("/a", 0), destination=("/b", 0)),
        lambda: ProxyHeader(family=Family.UNIX, source=("/a", 1), destination=("/b", 0)),
        lambda: ProxyHeader(family=Family.UNIX, source=("/" * 109, 0), destination=("/b", 0)),
        lambda: proxied(*INET, tlvs=(Tlv(TlvType.CRC32C, bytes(4)), Tlv(TlvType.CRC32C, bytes(4)))),
        lambda: Tlv(256, b""),
        lambda: Tlv(1, bytes(65536)),
        lambda: proxied(*INET, tlvs=(Tlv(TlvType.UNIQUE_ID, bytes(129)),)),
    ],
)
def test_builder_refuses_what_the_wire_cannot_say(make: object) -> None:
    with pytest.raises(ProxyProtocolError):
        make()  # type: ignore[operator]


def test_v1_builder_refuses_v2_only_headers() -> None:
    with pytest.raises(ProxyProtocolError):
        build_v1(proxied(*INET, tlvs=(Tlv(1, b"h2"),)))
    with pytest.raises(ProxyProtocolError):
        build_v1(ProxyHeader(command=Command.PROXY))
    assert build_v1(local()) == b"PROXY UNKNOWN\r\n"


# --- round trips and fuzz --------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
_texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
ssl_infos = st.builds(
    SslInfo,
    client=st.sampled_from([0, CLIENT_SSL, CLIENT_SSL | CLIENT_CERT_CONN, 7]),
    verify=st.integers(0, 0xFFFFFFFF),
    version=st.none() | _texts,
    cn=st.none() | st.text(max_size=20),
    cipher=st.none() | _texts,
    sig_alg=st.none() | _texts,
    key_alg=st.none() | _texts,
    others=st.lists(st.builds(Tlv, st.integers(0x26, 0xFF), st.binary(max_size=8)), max_size=2).map(
        tuple
    ),
)
tlvs = st.lists(
    st.one_of(
        st.builds(Tlv, st.just(TlvType.ALPN), st.binary(max_size=16)),
        st.builds(Tlv, st.just(TlvType.AUTHORITY), st.text(max_size=30).map(str.encode)),
        st.builds(Tlv, st.just(TlvType.NOOP), st.binary(max_size=8)),
        st.builds(Tlv, st.just(TlvType.UNIQUE_ID), st.binary(max_size=128)),
        st.builds(Tlv, st.just(TlvType.NETNS), _texts.map(str.encode)),
        ssl_infos.map(SslInfo.tlv),
        st.builds(
            Tlv, st.sampled_from([0x06, 0x31, 0xE0, 0xEE, 0xF0, 0xFF]), st.binary(max_size=8)
        ),
    ),
    max_size=6,
).map(tuple)
unix_paths = st.text(st.characters(min_codepoint=1, max_codepoint=0x7E), max_size=100).filter(
    lambda p: not p.endswith("\x00")
)


@st.composite
def v2_headers(draw: st.DrawFn) -> ProxyHeader:
    kind = draw(st.sampled_from(["inet", "inet6", "unix", "unspec", "local"]))
    extra = draw(tlvs)
    transport = draw(st.sampled_from(list(Transport)))
    if kind == "local":
        return local(tlvs=extra)
    if kind == "unspec":
        return ProxyHeader(transport=transport, tlvs=extra)
    if kind == "unix":
        return ProxyHeader(
            family=Family.UNIX,
            transport=transport,
            source=(draw(unix_paths), 0),
            destination=(draw(unix_paths), 0),
            tlvs=extra,
        )
    ip = ipv4 if kind == "inet" else ipv6
    return proxied(
        (draw(ip), draw(ports)), (draw(ip), draw(ports)), transport=transport, tlvs=extra
    )


@st.composite
def v1_headers(draw: st.DrawFn) -> ProxyHeader:
    ip = draw(st.sampled_from([ipv4, ipv6, None]))
    if ip is None:
        return local(version=1)
    return proxied((draw(ip), draw(ports)), (draw(ip), draw(ports)), version=1)


@settings(max_examples=300, deadline=None)
@given(v2_headers(), st.binary(max_size=20), st.integers(1, 40))
def test_v2_round_trip(header: ProxyHeader, rest: bytes, step: int) -> None:
    wire = build_v2(header)
    assert read(wire + rest) == (header, rest)
    assert read(wire + rest, step) == (header, rest)


@settings(max_examples=200, deadline=None)
@given(v2_headers())
def test_v2_round_trip_with_crc32c(header: ProxyHeader) -> None:
    wire = build_v2(header, crc32c=True)
    got = read(wire)
    assert got is not None
    crc = got.header.tlv(TlvType.CRC32C)
    assert crc is not None
    assert got.header == replace(header, tlvs=(*header.tlvs, Tlv(TlvType.CRC32C, crc)))
    assert build_v2(got.header) == wire


@settings(max_examples=200, deadline=None)
@given(v1_headers(), st.binary(max_size=20), st.integers(1, 40))
def test_v1_round_trip(header: ProxyHeader, rest: bytes, step: int) -> None:
    wire = build_v1(header)
    assert len(wire) <= 107
    assert read(wire + rest) == (header, rest)
    assert read(wire + rest, step) == (header, rest)
    # the same header said in v2 reads back the same but for its version
    assert read(build_v2(header)) == (replace(header, version=2), b"")


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for at, value in edits:
        if buf:
            buf[at % len(buf)] = value
    return bytes(buf)


seeds = st.sampled_from(
    [w for w, _ in V1_VECTORS + V2_VECTORS] + [build_v2(proxied(*INET), crc32c=True)]
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda s, b: s + b, st.sampled_from([SIG, b"PROXY "]), st.binary(max_size=200)),
        st.builds(
            _mutate,
            seeds,
            st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4),
        ),
        st.builds(lambda s, n: s[:n], seeds, st.integers(0, 300)),
    ),
    st.integers(1, 17),
)
def test_fuzz_only_our_error_and_every_split_agrees(data: bytes, step: int) -> None:
    whole = verdict(data)  # any other exception fails the test
    assert verdict(data, step) == whole
    assert verdict(data, 1) == whole
    if isinstance(whole, ProxyPreamble):
        # the header never reaches into what follows it
        assert verdict(data + b"\x00\xff" * 8) == (whole.header, whole.rest + b"\x00\xff" * 8)
        assert data.endswith(whole.rest)
        v2 = data.startswith(V2_SIGNATURE)
        consumed = len(data) - len(whole.rest)
        assert consumed <= (4096 if v2 else 107)
        if whole.header.source is not None and whole.header.family != Family.UNIX:
            ipaddress.ip_address(whole.header.source[0])
