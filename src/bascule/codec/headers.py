"""Header rules of an intermediary: hop-by-hop fields and client identity.

Rules of this module:
- Pure functions and small classes, no I/O.
- Names are compared lower-cased (bytes); values are passed through byte for byte.
- Client-supplied forwarding headers are trusted only from `TrustedNetworks`; from anyone else
  they are dropped and replaced (RFC 7239 §8.1, seed 003 §3).
- A field name is also compared as a CGI/WSGI backend reads it (`_` and `-` are one variable
  there): an underscore spelling of an identity field never reaches a backend.
- A Host that is not RFC 3986 `host [":" port]` is refused (400) before any route sees it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

from bascule.codec.http1 import ProtocolError

# RFC 9110 §7.6.1 plus the de-facto ones; Transfer-Encoding is re-framed by bascule itself.
# Proxy-Authorization/-Authenticate are between a client and the proxy it talks to: us.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

FORWARDING: Final = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
        b"x-real-ip",
    }
)

# Fields a backend may read as the client's address, scheme or host. From an untrusted peer
# they are all dropped (bascule writes its own); Via records the path, not the client.
IDENTITY: Final = (FORWARDING - {b"via"}) | frozenset(
    {
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded-prefix",
        b"x-forwarded-scheme",
        b"x-forwarded-ssl",
        b"x-client-ip",
        b"true-client-ip",
        b"x-cluster-client-ip",
    }
)


def _underscore_spellings(name: bytes) -> frozenset[bytes]:
    """`x-real-ip` → `x_real_ip`, `x-real_ip`, `x_real-ip`: each `-` read as `_` or not."""
    spellings = [b""]
    for char in name:
        if char == 0x2D:
            spellings = [s + tail for s in spellings for tail in (b"-", b"_")]
        else:
            spellings = [s + bytes((char,)) for s in spellings]
    return frozenset(spellings) - {name}


# Every underscore spelling of an identity field, which CGI/WSGI backends read as the field
# itself (HTTP_X_FORWARDED_FOR): dropped from every peer, as no proxy writes them. A set of
# names, so the drop costs nothing beyond the lookup each forwarded field has anyway.
UNDERSCORE_IDENTITY: Final = frozenset().union(*map(_underscore_spellings, IDENTITY))

# `in` with an int needle: with a bytes needle it takes the buffer API, about 4 times slower.
UNDERSCORE: Final = ord("_")
Field = tuple[bytes, bytes, bytes]  # (lower-cased name, name as sent, value)


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The field names a Connection header marks hop-by-hop (and `close`/`keep-alive`)."""
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


class TrustedNetworks:
    """The CIDRs whose forwarding headers bascule believes; lookups are cached per address."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self.contains = lru_cache(maxsize=4096)(self._contains)

    def _contains(self, address: str) -> bool:
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)


def split_list(values: Iterable[bytes]) -> list[str]:
    """A comma-separated header list across all its field lines, as stripped strings."""
    return [
        item.strip().decode("latin-1") for v in values for item in v.split(b",") if item.strip()
    ]


def client_from_xff(peer: str, xff: list[str], trusted: TrustedNetworks) -> str:
    """The client address: walk X-Forwarded-For right to left past trusted proxies.

    The peer itself must be trusted for any of the header to count (nginx's
    `real_ip_recursive on`). The first untrusted address from the right is the client.
    """
    if not trusted.contains(peer):
        return peer
    client = peer
    for hop in reversed(xff):
        hop = _strip_port(hop)
        client = hop
        if not trusted.contains(hop):
            break
    return client


def _strip_port(hop: str) -> str:
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def forwarded_node(address: str, port: int | None = None) -> str:
    """An RFC 7239 node: IPv6 bracketed and quoted; anything with ':' or '[' quoted."""
    if ":" in address:
        node = f"[{address}]"
        if port is not None:
            node += f":{port}"
        return f'"{node}"'
    if port is not None:
        return f'"{address}:{port}"'
    return address


def forwarded_value(value: str) -> str:
    """A token, or a quoted-string when it holds characters a token may not."""
    if value and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@lru_cache(maxsize=4096)
def forwarded_element(for_: str, by: str, proto: str, host: str | None) -> bytes:
    """`for=...;by=...;proto=...;host=...`; cached, as clients and hosts repeat."""
    parts = [f"for={forwarded_node(for_)}", f"by={forwarded_value(by)}", f"proto={proto}"]
    if host:
        parts.append(f"host={forwarded_value(host)}")
    return ";".join(parts).encode("latin-1", "replace")


def cookie_values(fields: Iterable[bytes], name: bytes) -> list[bytes]:
    """The values of cookie `name` across `Cookie` fields (RFC 6265 §5.4), quotes removed."""
    values = []
    for field in fields:
        for pair in field.split(b";"):
            key, eq, value = pair.strip().partition(b"=")
            if eq and key == name:
                values.append(value.strip().strip(b'"'))
    return values


def drop_underscored(fields: list[Field], policy: str) -> list[Field]:
    """The fields to keep under `headers_with_underscores: drop` or `reject`.

    `drop` removes every field whose name holds `_` (nginx's `underscores_in_headers off`);
    `reject` refuses a request that has one. (`allow` keeps them; the underscore spellings of
    identity fields are dropped on the way upstream whatever the policy.)
    """
    for lname, _, _ in fields:
        if UNDERSCORE in lname:
            break
    else:
        return fields
    if policy == "reject":
        raise ProtocolError("header field name with an underscore")
    return [f for f in fields if UNDERSCORE not in f[0]]


# RFC 3986 reg-name: unreserved and sub-delims (pct-encoded is refused, see `route_host`).
_REG_NAME: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="


@lru_cache(maxsize=1024)
def route_host(value: bytes) -> str:
    """The host routes match for a Host value or an absolute-form authority.

    RFC 3986 `host [":" port]`: a reg-name, an IPv4 address or an IPv6 literal in brackets,
    then digits up to 65535; lower-cased, without the port and a final dot (`example.com.`
    is `example.com` to DNS and to most servers). Anything else is a 400: spaces, `@`, `/`,
    `\\`, controls, a port without a host. Percent-encoding is refused too: no client sends
    it (IDNs travel as punycode), and it would let one host hide behind another spelling.
    Cached: a connection, and most clients, repeat one Host.
    """
    if value[:1] == b"[":
        end = value.find(b"]")
        literal = value[1:end]
        if end < 0 or not literal or literal.translate(None, b"0123456789abcdefABCDEF:."):
            raise ProtocolError("invalid IPv6 literal in Host")
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            raise ProtocolError("invalid IPv6 literal in Host") from None
        host, port = value[: end + 1], value[end + 1 :]
        if port and port[:1] != b":":
            raise ProtocolError("invalid Host: text after the IPv6 literal")
    else:
        colon = value.find(b":")
        host, port = (value, b"") if colon < 0 else (value[:colon], value[colon:])
        if host.translate(None, _REG_NAME):
            raise ProtocolError("invalid character in Host")
        if port and not host:
            raise ProtocolError("Host with a port and no host")
    digits = port[1:]
    if digits and (not digits.isdigit() or len(digits) > 5 or int(digits) > 65535):
        raise ProtocolError("invalid port in Host")
    name = host.decode("ascii").lower()
    if name[-1:] == "." and len(name) > 1:
        name = name[:-1]
    return name
