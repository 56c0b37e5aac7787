"""Header rules of an intermediary: hop-by-hop fields and client identity.

Rules of this module:
- Pure functions and small classes, no I/O.
- Names are compared lower-cased (bytes); values are passed through byte for byte.
- Client-supplied forwarding headers are trusted only from `TrustedNetworks`; from anyone else
  they are dropped and replaced (RFC 7239 §8.1, seed 003 §3).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

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
