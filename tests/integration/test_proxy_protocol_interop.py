"""The PROXY protocol codec against a real haproxy, both ways.

haproxy → bascule's reader: a `mode tcp` haproxy spoofs the client's source
(`tcp-request connection set-src`) and sends `send-proxy`, `send-proxy-v2` (with TLVs: unique
id, CRC32C, and, behind a TLS bind, authority and SSL) to a tiny asyncio server that reads the
header with `ProxyHeaderReader`. bascule's builder → haproxy: a header from `build_v1` /
`build_v2` opens a connection to haproxy `bind ... accept-proxy` in `mode http` with
`option forwardfor`, in front of an echo backend: the X-Forwarded-For it adds is the address
the header carried.

haproxy missing: skipped, unless BASCULE_REQUIRE_PEERS is set (CI), where it fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bascule.codec.proxy_protocol import (
    CLIENT_SSL,
    Family,
    ProxyHeaderReader,
    ProxyPreamble,
    Tlv,
    TlvType,
    build_v1,
    build_v2,
    local,
    proxied,
)
from helpers import Backend, env_flag, free_port, raw, wait_port

SPOOFED = ("198.18.0.7", 4242)


@pytest.fixture
def haproxy() -> str:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if path is None:
        if env_flag("BASCULE_REQUIRE_PEERS"):
            pytest.fail("haproxy is not installed and BASCULE_REQUIRE_PEERS is set")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return path


@contextmanager
def running_haproxy(binary: str, config: str, tmp: Path, port: int) -> Iterator[None]:
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(config)
    check = subprocess.run(
        [binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=20, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    log = (tmp / "haproxy.log").open("w")
    proc = subprocess.Popen([binary, "-f", str(cfg), "-db"], stdout=log, stderr=log)
    try:
        wait_port(port)
        yield
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


DEFAULTS = """\
global
    maxconn 100
defaults
    timeout connect 5s
    timeout client 10s
    timeout server 10s
"""


# --- haproxy sends, bascule's reader reads ---------------------------------------------------


class PreambleServer:
    """A tiny asyncio server: reads each session's PROXY header, answers b"ok", records both."""

    def __init__(self) -> None:
        self.seen: list[ProxyPreamble] = []
        self.errors: list[BaseException] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        preamble = ProxyHeaderReader()
        try:
            got = None
            while got is None:
                data = await reader.read(4096)
                if not data:
                    return
                got = preamble.feed(data)
            rest = got.rest
            while not rest.endswith(b"\n"):
                data = await reader.read(4096)
                if not data:
                    break
                rest += data
            self.seen.append(ProxyPreamble(got.header, rest))
            writer.write(b"ok\n")
            await writer.drain()
        except OSError:
            pass  # haproxy resets the session of wait_port's probe: not the reader's business
        except Exception as e:  # recorded, so that the test shows it rather than a timeout
            self.errors.append(e)
        finally:
            writer.close()


def _tcp_frontend(
    fe: int, server_port: int, server_options: str, bind_options: str, source: str
) -> str:
    return (
        DEFAULTS
        + f"""\
    mode tcp
    unique-id-format uid-%ci-%cp
frontend fe
    bind 127.0.0.1:{fe} {bind_options}
    tcp-request connection set-src {source}
    tcp-request connection set-src-port int({SPOOFED[1]})
    default_backend be
backend be
    server s1 127.0.0.1:{server_port} {server_options}
"""
    )


async def _exchange(fe: int, ctx: ssl.SSLContext | None = None) -> tuple[bytes, object]:
    """One client session through haproxy: send a line, read the answer."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", fe, ssl=ctx, server_hostname="api.example.com" if ctx else None
        ),
        10,
    )
    tls = writer.get_extra_info("ssl_object")
    writer.write(b"hello\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(100), 10)
    writer.close()
    return answer, tls


def _through_haproxy(
    binary: str,
    tmp: Path,
    server_options: str,
    bind_options: str = "",
    ctx: ssl.SSLContext | None = None,
    source: str = f"ipv4({SPOOFED[0]})",
) -> tuple[PreambleServer, int, object]:
    server = PreambleServer()
    fe = free_port()

    async def main() -> object:
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        config = _tcp_frontend(fe, port, server_options, bind_options, source)
        try:
            # wait_port inside running_haproxy blocks the loop briefly; nothing is served yet
            with running_haproxy(binary, config, tmp, fe):
                answer, tls = await _exchange(fe, ctx)
                assert answer == b"ok\n", (tmp / "haproxy.log").read_text()
                return tls
        finally:
            srv.close()
            await srv.wait_closed()

    tls = asyncio.run(main())
    assert not server.errors, server.errors
    # wait_port's probe may have opened a session of its own, with nothing after the header
    server.seen = [p for p in server.seen if p.rest]
    assert len(server.seen) == 1
    return server, fe, tls


def test_haproxy_send_proxy_v1(haproxy: str, tmp_path: Path) -> None:
    server, fe, _ = _through_haproxy(haproxy, tmp_path, "send-proxy")
    header, rest = server.seen[0]
    assert header == proxied(SPOOFED, ("127.0.0.1", fe), version=1)
    assert rest == b"hello\n"


def test_haproxy_send_proxy_v2(haproxy: str, tmp_path: Path) -> None:
    server, fe, _ = _through_haproxy(haproxy, tmp_path, "send-proxy-v2")
    header, rest = server.seen[0]
    assert header == proxied(SPOOFED, ("127.0.0.1", fe), tlvs=header.tlvs)
    assert {t.type for t in header.tlvs} <= {TlvType.NOOP}  # nothing asked for, nothing sent
    assert rest == b"hello\n"


@pytest.mark.parametrize("option", ["send-proxy", "send-proxy-v2"])
def test_haproxy_mixed_families_map_the_ipv4_end(haproxy: str, tmp_path: Path, option: str) -> None:
    # An IPv6 source and an IPv4 destination: haproxy says TCP6 / INET6 and maps the IPv4 end.
    server, fe, _ = _through_haproxy(haproxy, tmp_path, option, source="ipv6(2001:db8::7)")
    header, _ = server.seen[0]
    assert header.family == Family.INET6
    assert header.source == ("2001:db8::7", SPOOFED[1])
    assert header.destination is not None
    dst = ipaddress.IPv6Address(header.destination[0])
    assert (dst.ipv4_mapped, header.destination[1]) == (ipaddress.IPv4Address("127.0.0.1"), fe)


def test_haproxy_send_proxy_v2_with_unique_id_and_crc32c(haproxy: str, tmp_path: Path) -> None:
    server, fe, _ = _through_haproxy(
        haproxy, tmp_path, "send-proxy-v2 proxy-v2-options authority,crc32c,unique-id"
    )
    header, rest = server.seen[0]
    assert (header.source, header.destination) == (SPOOFED, ("127.0.0.1", fe))
    assert header.unique_id == f"uid-{SPOOFED[0]}-{SPOOFED[1]}".encode()
    # the reader verified it; its presence shows haproxy sent one
    assert header.tlv(TlvType.CRC32C) is not None
    assert header.authority is None  # no TLS, no SNI: haproxy has no authority to send
    assert rest == b"hello\n"


def _certificate(tmp: Path) -> Path:
    openssl = shutil.which("openssl")
    if openssl is None:
        if env_flag("BASCULE_REQUIRE_PEERS"):
            pytest.fail("openssl is not installed and BASCULE_REQUIRE_PEERS is set")
        pytest.skip("openssl is not installed: no certificate for haproxy's TLS bind")
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=api.example.com"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    pem = tmp / "haproxy.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    return pem


def test_haproxy_send_proxy_v2_behind_tls_sends_authority_and_ssl(
    haproxy: str, tmp_path: Path
) -> None:
    pem = _certificate(tmp_path)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    server, _, tls = _through_haproxy(
        haproxy,
        tmp_path,
        "send-proxy-v2 proxy-v2-options ssl,ssl-cipher,cert-sig,cert-key,authority,crc32c",
        bind_options=f"ssl crt {pem}",
        ctx=ctx,
    )
    assert isinstance(tls, ssl.SSLObject)
    header, rest = server.seen[0]
    assert header.source == SPOOFED
    assert header.authority == "api.example.com"  # the SNI the client sent
    info = header.ssl
    assert info is not None
    assert info.client & CLIENT_SSL
    assert info.version == tls.version()
    cipher = tls.cipher()
    assert cipher is not None and info.cipher == cipher[0]
    assert rest == b"hello\n"


# --- bascule's builder sends, haproxy reads ----------------------------------------------------


def _http_frontend(fe: int, backend_port: int) -> str:
    return (
        DEFAULTS
        + f"""\
    mode http
frontend fe
    bind 127.0.0.1:{fe} accept-proxy
    option forwardfor
    option http-server-close
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port}
"""
    )


def _send(fe: int, preamble: bytes) -> bytes:
    request = b"GET /seen HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    return raw(fe, preamble + request, timeout=10)


def _forwarded_for(response: bytes) -> list[str]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response[:200]
    headers = json.loads(body)["headers"]
    return [value for name, value in headers if name.lower() == "x-forwarded-for"]


AUTHORITY = Tlv(TlvType.AUTHORITY, b"example.com")
TO_HAPROXY = [
    pytest.param(lambda fe: build_v1(proxied(("198.18.0.9", 5555), ("127.0.0.1", fe), version=1)),
                 "198.18.0.9", id="v1-tcp4"),
    pytest.param(lambda fe: build_v1(proxied(("2001:db8::9", 5555), ("::1", fe), version=1)),
                 "2001:db8::9", id="v1-tcp6"),
    pytest.param(lambda fe: build_v2(proxied(("198.18.0.10", 1), ("127.0.0.1", fe))),
                 "198.18.0.10", id="v2-inet"),
    pytest.param(lambda fe: build_v2(proxied(("198.18.0.11", 1), ("127.0.0.1", fe),
                                             tlvs=(AUTHORITY,)), crc32c=True),
                 "198.18.0.11", id="v2-inet-crc32c"),
    pytest.param(lambda fe: build_v2(proxied(("2001:db8::12", 65535), ("::1", fe),
                                             tlvs=(Tlv(TlvType.UNIQUE_ID, b"u1"),)), crc32c=True),
                 "2001:db8::12", id="v2-inet6-crc32c"),
]  # fmt: skip


@pytest.fixture
def echo_backend() -> Iterator[Backend]:
    b = Backend(name="echo")
    yield b
    b.stop()


@pytest.mark.parametrize(("make", "address"), TO_HAPROXY)
def test_builder_to_haproxy_accept_proxy(
    haproxy: str, tmp_path: Path, echo_backend: Backend, make: Callable[[int], bytes], address: str
) -> None:
    fe = free_port()
    with running_haproxy(haproxy, _http_frontend(fe, echo_backend.port), tmp_path, fe):
        assert _forwarded_for(_send(fe, make(fe))) == [address]


def test_builder_local_and_a_bad_checksum_to_haproxy(
    haproxy: str, tmp_path: Path, echo_backend: Backend
) -> None:
    fe = free_port()
    with running_haproxy(haproxy, _http_frontend(fe, echo_backend.port), tmp_path, fe):
        # LOCAL (v1: UNKNOWN): haproxy uses the connection's own address
        assert _forwarded_for(_send(fe, build_v2(local()))) == ["127.0.0.1"]
        assert _forwarded_for(_send(fe, build_v1(local()))) == ["127.0.0.1"]
        # a checksum that does not match: haproxy drops the connection, nothing reaches the backend
        served = len(echo_backend.requests)
        good = build_v2(proxied(("198.18.0.13", 1), ("127.0.0.1", fe)), crc32c=True)
        assert _forwarded_for(_send(fe, good)) == ["198.18.0.13"]
        bad = good[:-1] + bytes([good[-1] ^ 0x55])
        try:
            answer = _send(fe, bad)
        except ConnectionResetError:
            answer = b""  # haproxy drops such a connection with a reset
        assert answer == b""
        assert len(echo_backend.requests) == served + 1
