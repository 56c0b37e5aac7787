"""The ClientHello reader: hand-built hellos, ClientHellos captured from real clients (Python's
ssl, openssl s_client) split at every offset, every refusal, and a bounded fuzz.

The captures use a plain socket server on 127.0.0.1 that reads the client's first flight and
closes: no TLS server is involved, only the bytes a real client sends first.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bascule.codec.tls_hello import (
    ClientHello,
    ClientHelloReader,
    TlsHelloError,
    is_grease,
    parse_client_hello,
)

GREASE = 0x3A3A


def u8(n: int) -> bytes:
    return n.to_bytes(1, "big")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def vec8(b: bytes) -> bytes:
    return u8(len(b)) + b


def vec16(b: bytes) -> bytes:
    return u16(len(b)) + b


def ext(kind: int, data: bytes) -> bytes:
    return u16(kind) + vec16(data)


def sni_ext(*names: bytes, kind: int = 0) -> bytes:
    return ext(0, vec16(b"".join(u8(kind) + vec16(n) for n in names)))


def alpn_ext(*protos: bytes) -> bytes:
    return ext(16, vec16(b"".join(vec8(p) for p in protos)))


def versions_ext(*versions: int) -> bytes:
    return ext(43, vec8(b"".join(u16(v) for v in versions)))


def groups_ext(*groups: int) -> bytes:
    return ext(10, vec16(b"".join(u16(g) for g in groups)))


def hello_body(
    extensions: bytes | None = b"",
    *,
    version: int = 0x0303,
    session: bytes = b"\x11" * 32,
    suites: bytes = u16(0x1301) + u16(0x1302),
    compression: bytes = b"\x00",
) -> bytes:
    body = u16(version) + b"\x5a" * 32 + vec8(session) + vec16(suites) + vec8(compression)
    return body if extensions is None else body + vec16(extensions)


def handshake(body: bytes, kind: int = 1) -> bytes:
    return u8(kind) + len(body).to_bytes(3, "big") + body


def records(message: bytes, size: int = 1 << 14, kind: int = 0x16, version: int = 0x0301) -> bytes:
    out = b""
    for i in range(0, len(message), size):
        piece = message[i : i + size]
        out += u8(kind) + u16(version) + vec16(piece)
    return out


def read(data: bytes, step: int | None = None, **kw: int) -> ClientHello | None:
    r = ClientHelloReader(**kw)  # type: ignore[arg-type]
    if step is None:
        return r.feed(data)
    got = None
    for i in range(0, max(len(data), 1), step):
        got = r.feed(data[i : i + step])
        if got is not None:
            break
    return got


def verdict(data: bytes, step: int | None = None) -> object:
    """The reader's answer to `data` fed in `step`-byte reads, "error" for a refusal."""
    r = ClientHelloReader()
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    try:
        for piece in pieces:
            got = r.feed(piece)
            if got is not None:
                return got
    except TlsHelloError:
        return "error"
    return None


FULL = hello_body(
    ext(GREASE, b"")
    + sni_ext(b"API.Example.com")
    + groups_ext(GREASE, 0x001D, 0x0017)
    + alpn_ext(b"h2", b"http/1.1")
    + versions_ext(GREASE, 0x0304, 0x0303)
    + ext(0x0D, vec16(u16(0x0403)))
    + ext(0x1A1A, b"\x00"),
    suites=u16(GREASE) + u16(0x1301) + u16(0xC02F),
)


def test_hand_built_hello() -> None:
    wire = records(handshake(FULL))
    got = read(wire + b"\x14\x03\x03\x00\x01\x01")  # a ChangeCipherSpec after it is not read
    assert got == ClientHello(
        sni="api.example.com",
        alpn=("h2", "http/1.1"),
        versions=(0x0304, 0x0303),
        legacy_version=0x0303,
        cipher_suites=(0x1301, 0xC02F),
        extensions=(0, 10, 16, 43, 13),
        supported_groups=(0x1D, 0x17),
        session_id=b"\x11" * 32,
        size=len(wire),
    )


def test_a_minimal_hello_written_out_in_hex() -> None:
    wire = bytes.fromhex(
        "16 0301 002f"  # handshake record, 47 bytes
        "01 00002b"  # ClientHello, 43 bytes
        "0303" + "00" * 32 + "00"  # version, random, empty session id
        "0002 002f"  # one suite
        "01 00"  # null compression
        "0000"  # an empty extensions block
    )
    got = read(wire)
    assert got is not None
    assert (got.sni, got.alpn, got.versions, got.cipher_suites, got.extensions) == (
        None,
        (),
        (0x0303,),
        (0x002F,),
        (),
    )


def test_no_extensions_at_all_is_tls_1_0_style() -> None:
    got = read(records(handshake(hello_body(None, version=0x0301))))
    assert got is not None
    assert (got.sni, got.versions) == (None, (0x0301,))


def test_message_split_across_records_and_reads() -> None:
    message = handshake(FULL)
    whole = read(records(message))
    for size in (1, 2, 3, 4, 5, 7, 50):
        wire = records(message, size)
        split = read(wire)
        assert split is not None and whole is not None
        assert split == ClientHello(**{**_fields(whole), "size": len(wire)})
        assert read(wire, 3) == split


def _fields(h: ClientHello) -> dict[str, object]:
    return {name: getattr(h, name) for name in ClientHello.__dataclass_fields__}


def test_grease() -> None:
    assert [v for v in range(0x10000) if is_grease(v)] == [0x0A0A + 0x1010 * i for i in range(16)]


def test_reader_returns_the_same_hello_once_done() -> None:
    r = ClientHelloReader()
    wire = records(handshake(FULL))
    first = r.feed(wire)
    assert first is not None
    assert r.feed(b"anything") is first


@pytest.mark.parametrize(
    ("name", "want"),
    [
        (b"a.b", "a.b"),
        (b"X-1.Example_dev.COM", "x-1.example_dev.com"),
        (b"localhost", "localhost"),
        (b"a" * 63 + b".com", "a" * 63 + ".com"),
    ],
)
def test_sni_host_name_is_lower_cased(name: bytes, want: str) -> None:
    got = read(records(handshake(hello_body(sni_ext(name)))))
    assert got is not None and got.sni == want


def test_sni_of_another_type_is_ignored() -> None:
    got = read(records(handshake(hello_body(sni_ext(b"\x01\x02", kind=7)))))
    assert got is not None and got.sni is None


def _bad(extensions: bytes) -> bytes:
    return records(handshake(hello_body(extensions)))


REFUSED = [
    (b"\x17\x03\x03\x00\x05hello", "not a TLS handshake"),  # application data
    (b"\x15\x03\x03\x00\x02\x02\x28", "not a TLS handshake"),  # an alert
    (b"\x80\x2e\x01\x03\x01", "not a TLS handshake"),  # SSLv2-compatible hello
    (b"GET / HTTP/1.1\r\n\r\n", "not a TLS handshake"),
    (b"\x16\x02\x00\x00\x05hello", "not TLS"),
    (b"\x16\x03\x01\x00\x00", "of 0 bytes"),
    (b"\x16\x03\x01\x40\x01", "of 16385 bytes"),
    (records(handshake(FULL, kind=2)), "not ClientHello"),
    (records(handshake(b"\x03\x03")), "random runs past"),
    (records(handshake(hello_body(b"", version=0x0202))), "not TLS"),
    (records(handshake(hello_body(b"", session=b"\x00" * 33))), "longer than 32"),
    (records(handshake(hello_body(b"", suites=b""))), "no cipher suites"),
    (records(handshake(hello_body(b"", suites=b"\x13"))), "odd length"),
    (records(handshake(hello_body(b"", compression=b""))), "no compression"),
    (records(handshake(hello_body(b"") + b"\x00")), "stray bytes"),
    (records(handshake(hello_body(None) + b"\x00")), "extensions length runs past"),
    (records(handshake(hello_body(None) + b"\x00\x05\x00\x00")), "runs past"),
    (_bad(sni_ext(b"a.b") + sni_ext(b"c.d")), "given twice"),
    (_bad(sni_ext(b"a.b", b"c.d")), "two host_names"),
    (_bad(ext(0, b"")), "server_name_list length runs past"),
    (_bad(ext(0, vec16(b""))), "empty server_name_list"),
    (_bad(ext(0, vec16(b"") + b"\x00")), "stray bytes"),
    (_bad(sni_ext(b"")), "empty or longer"),
    (_bad(sni_ext(b"a" * 254)), "empty or longer"),
    (_bad(sni_ext(b"a" * 64 + b".com")), "label"),
    (_bad(sni_ext(b"example.com.")), "label"),
    (_bad(sni_ext(b"a..b")), "label"),
    (_bad(sni_ext(b"-a.b")), "'-'"),
    (_bad(sni_ext(b"a b.c")), "0x20"),
    (_bad(sni_ext(b"a\x00.c")), "0x00"),
    (_bad(sni_ext("é.fr".encode())), "0xc3"),
    (_bad(sni_ext(b"192.0.2.1")), "IP address"),
    (_bad(sni_ext(b"[::1]")), "0x5b"),
    (_bad(alpn_ext()), "empty ALPN protocol list"),
    (_bad(alpn_ext(b"")), "empty ALPN protocol name"),
    (_bad(ext(16, vec16(b"\x05h2"))), "ALPN protocol runs past"),
    (_bad(ext(43, vec8(b""))), "empty supported_versions"),
    (_bad(ext(43, vec8(b"\x03"))), "odd length"),
    (_bad(ext(10, vec16(b"\x00"))), "odd length"),
    (_bad(ext(10, b"\x00")), "runs past"),
]


@pytest.mark.parametrize(("wire", "message"), REFUSED)
def test_refusals(wire: bytes, message: str) -> None:
    with pytest.raises(TlsHelloError, match=message):
        read(wire)
    assert verdict(wire, 1) == "error"


def test_a_non_handshake_record_between_hello_fragments_is_refused() -> None:
    wire = records(handshake(FULL), 40)
    cut = 45  # after the first record
    with pytest.raises(TlsHelloError, match="not a TLS handshake"):
        read(wire[:cut] + b"\x14\x03\x03\x00\x01\x01" + wire[cut:])


def test_size_cap_refuses_on_the_declared_length() -> None:
    big = hello_body(ext(0xFFFE, bytes(16 * 1024)))
    head = records(handshake(big), 1000)[:20]  # far less than the hello itself
    with pytest.raises(TlsHelloError, match="over 16384"):
        read(head)
    got = read(records(handshake(big), 1000), max_size=32 * 1024)
    assert got is not None and got.extensions == (0xFFFE,)


def test_parse_client_hello_directly() -> None:
    assert parse_client_hello(FULL, 0).sni == "api.example.com"


# --- real clients ------------------------------------------------------------------------------


def capture_first_flight(client: object) -> bytes:
    """The first bytes a client sends to a plain TCP server on 127.0.0.1 (then closed)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(0.5)
            data = b""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    if data:
                        break  # the client waits for a ServerHello: its flight is over
                    continue
                if not chunk:
                    break
                data += chunk
            got.append(data)

    t = threading.Thread(target=serve)
    t.start()
    try:
        client(port)  # type: ignore[operator]
    finally:
        t.join(10)
        srv.close()
    assert got and got[0], "the client sent nothing"
    return got[0]


def _python_client(port: int) -> None:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            ctx.wrap_socket(s, server_hostname="Api.Example.COM")
        except (ssl.SSLError, OSError):
            pass  # the capture server closes without answering


def _python_client_no_sni(port: int) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            ctx.wrap_socket(s)
        except (ssl.SSLError, OSError):
            pass


def _openssl_client(port: int) -> None:
    subprocess.run(
        ["openssl", "s_client", "-servername", "x", "-alpn", "h2",
         "-connect", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=10, check=False,
    )  # fmt: skip


def _every_split_agrees(wire: bytes, want: ClientHello) -> None:
    for cut in range(1, len(wire)):
        r = ClientHelloReader()
        first = r.feed(wire[:cut])
        assert (first or r.feed(wire[cut:])) == want, cut
    assert read(wire, 1) == want


def test_python_ssl_client_hello() -> None:
    wire = capture_first_flight(_python_client)
    got = read(wire)
    assert got is not None
    assert got.sni == "api.example.com"
    assert got.alpn == ("h2", "http/1.1")
    assert 0x0304 in got.versions or ssl.OPENSSL_VERSION_INFO < (1, 1, 1)
    assert got.size == len(wire)
    _every_split_agrees(wire, got)


def test_python_ssl_client_hello_without_sni() -> None:
    wire = capture_first_flight(_python_client_no_sni)
    got = read(wire)
    assert got is not None
    assert (got.sni, got.alpn) == (None, ())
    _every_split_agrees(wire, got)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_hello() -> None:
    wire = capture_first_flight(_openssl_client)
    got = read(wire)
    assert got is not None
    assert (got.sni, got.alpn) == ("x", ("h2",))
    _every_split_agrees(wire, got)


# --- fuzz --------------------------------------------------------------------------------------


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for at, value in edits:
        buf[at % len(buf)] = value
    return bytes(buf)


SEEDS = [records(handshake(FULL)), records(handshake(FULL), 7), records(handshake(hello_body()))]


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(lambda b: b"\x16\x03\x01" + b, st.binary(max_size=200)),
        st.builds(
            _mutate,
            st.sampled_from(SEEDS),
            st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
        ),
        st.builds(lambda s, n: s[:n], st.sampled_from(SEEDS), st.integers(0, 400)),
    ),
    st.integers(1, 23),
)
def test_fuzz_only_our_error_and_every_split_agrees(data: bytes, step: int) -> None:
    whole = verdict(data)
    assert verdict(data, step) == whole
    assert verdict(data, 1) == whole
    if isinstance(whole, ClientHello):
        # what follows the ClientHello's last record is never read
        assert verdict(data[: whole.size] + b"\xff" * 9) == whole
        assert whole.size <= len(data)
