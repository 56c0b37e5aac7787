"""Sans-I/O rules: HTTP/1.1 framing checks and the intermediary's header rules."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bascule.codec.headers import (
    HOP_BY_HOP,
    TrustedNetworks,
    client_from_xff,
    connection_tokens,
    forwarded_element,
    forwarded_node,
    forwarded_value,
    split_list,
)
from bascule.codec.http1 import (
    ProtocolError,
    parse_content_length,
    parse_transfer_encoding,
    response_has_body,
    simple_response,
)

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)


@given(st.lists(token, min_size=1, max_size=6), st.sampled_from([",", ", ", " ,  "]))
def test_connection_tokens_are_case_and_space_insensitive(names: list[str], sep: str) -> None:
    value = sep.join(n.upper() for n in names).encode()
    assert connection_tokens([value]) == {n.encode() for n in names}


def test_hop_by_hop_set_covers_rfc9110() -> None:
    for name in (b"connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade",
                 b"proxy-connection", b"proxy-authorization", b"proxy-authenticate"):
        assert name in HOP_BY_HOP
    assert b"content-length" not in HOP_BY_HOP and b"host" not in HOP_BY_HOP


@given(st.integers(min_value=0, max_value=10**17))
def test_content_length_accepts_any_single_number(n: int) -> None:
    assert parse_content_length([str(n).encode()]) == n


@given(st.text(min_size=1, max_size=10).filter(lambda s: not s.strip().isdigit()))
def test_content_length_refuses_anything_else(text: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_content_length([text.encode()])
    assert e.value.status == 400


@given(st.lists(st.integers(min_value=0, max_value=100), min_size=2, max_size=4))
def test_repeated_content_length_is_refused_even_when_equal(values: list[int]) -> None:
    with pytest.raises(ProtocolError):
        parse_content_length([str(v).encode() for v in values])


@pytest.mark.parametrize(("value", "status"), [
    (b"chunked", None), (b"CHUNKED", None), (b"gzip, chunked", 501), (b"deflate,chunked", 501),
    (b"chunked, gzip", 400), (b"gzip", 400), (b"chunked, chunked", 400), (b"", 400),
])
def test_transfer_encoding_rules(value: bytes, status: int | None) -> None:
    if status is None:
        parse_transfer_encoding([value])
        return
    with pytest.raises(ProtocolError) as e:
        parse_transfer_encoding([value])
    assert e.value.status == status


@given(st.lists(token, min_size=1, max_size=4))
def test_transfer_encoding_ending_in_chunked_is_never_a_400(codings: list[str]) -> None:
    codings = [c for c in codings if c != "chunked"] + ["chunked"]
    try:
        parse_transfer_encoding([", ".join(codings).encode()])
    except ProtocolError as e:
        assert e.status == 501  # understood framing, unknown coding


@pytest.mark.parametrize(("method", "status", "body"), [
    ("HEAD", 200, False), ("GET", 100, False), ("GET", 204, False), ("GET", 304, False),
    ("GET", 200, True), ("POST", 404, True),
])
def test_response_has_body(method: str, status: int, body: bool) -> None:
    assert response_has_body(method, status) is body


def test_simple_response_framing() -> None:
    r = simple_response(404, b"nope\n", close=True)
    assert r.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Length: 5\r\n" in r and b"Connection: close\r\n" in r
    assert r.endswith(b"\r\n\r\nnope\n")
    assert simple_response(200, b"x", head_only=True).endswith(b"\r\n\r\n")


@given(st.ip_addresses())
def test_forwarded_node_quotes_ipv6_only(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    node = forwarded_node(str(ip))
    if ip.version == 6:
        assert node == f'"[{ip}]"'
    else:
        assert node == str(ip)


@given(st.text(max_size=30))
def test_forwarded_value_is_a_token_or_a_valid_quoted_string(value: str) -> None:
    out = forwarded_value(value)
    if out.startswith('"'):
        inner = out[1:-1]
        assert out.endswith('"')
        # every quote and backslash inside is escaped
        i = 0
        while i < len(inner):
            if inner[i] == "\\":
                i += 2
                continue
            assert inner[i] != '"'
            i += 1
    else:
        assert out == value and value


def test_forwarded_element() -> None:
    assert forwarded_element("192.0.2.60", "bascule", "http", "example.com") == (
        b"for=192.0.2.60;by=bascule;proto=http;host=example.com")
    assert forwarded_element("2001:db8::1", "lb", "https", "a:8080") == (
        b'for="[2001:db8::1]";by=lb;proto=https;host="a:8080"')


ips = st.ip_addresses(v=4).map(str)


@given(st.lists(ips, max_size=6), ips)
def test_untrusted_peer_is_the_client_whatever_the_header(xff: list[str], peer: str) -> None:
    assert client_from_xff(peer, xff, TrustedNetworks([])) == peer


@given(st.lists(ips, min_size=1, max_size=6), st.integers(min_value=0, max_value=3))
def test_client_is_first_untrusted_from_the_right(chain: list[str], proxies: int) -> None:
    trusted = TrustedNetworks(["10.0.0.0/8"])
    hops = [f"10.0.0.{i + 1}" for i in range(proxies)]
    chain = [ip for ip in chain if not ip.startswith("10.")] or ["192.0.2.1"]
    xff = chain + hops
    assert client_from_xff("10.9.9.9", xff, trusted) == chain[-1]


def test_trusted_networks_handle_v4_mapped_and_garbage() -> None:
    t = TrustedNetworks(["127.0.0.0/8", "::1/128"])
    assert t.contains("127.0.0.5") and t.contains("::ffff:127.0.0.1") and t.contains("::1")
    assert not t.contains("192.0.2.1") and not t.contains("not-an-ip")


def test_split_list_joins_field_lines() -> None:
    assert split_list([b"a, b", b"c,,d "]) == ["a", "b", "c", "d"]
