"""Checks across a whole config: names unique, routes naming real clusters, one socket per address.

Rules of this module:
- Each check sees only parts that are valid on their own, as (index, part) pairs: `Config`'s
  validator passes every part, the loader passes the parts that validated when others did not,
  so a problem elsewhere never hides these and a part that failed is never blamed again here.
  Cluster names come as plain strings, so that a cluster with a bad endpoint still exists by
  name and no route naming it is reported; when some cluster's name is itself wrong
  (`all_names` false), references are not checked at all: that cluster may be the one meant.
- Every problem is a `PathError` with the whole key path from the root; all are returned (the
  loader sorts them by line), none raised.
- Addresses conflict as `bascule run` would find them when binding: the same IP and port, or
  a wildcard (`0.0.0.0`, `::`) and an IP of its family on the same port (Linux refuses that
  bind even with SO_REUSEADDR). Port 0 (any free port) never conflicts. Listeners claim their
  addresses first, then the admin API, then demo backends: the later claim is the one reported.
  A `tcp` service's VIP and port conflict with any of them on that very IP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from bascule.config.units import format_address

if TYPE_CHECKING:
    from bascule.config.schema import (
        AdminConfig,
        DemoBackendConfig,
        ListenerConfig,
        PathError,
    )
    from bascule.config.services import ServiceConfig

T = TypeVar("T")
Indexed = Sequence[tuple[int, T]]
KeyPath = tuple[str | int, ...]


def config_problems(
    *,
    listeners: Indexed[ListenerConfig],
    cluster_names: Indexed[str],
    all_names: bool = True,
    admin: AdminConfig | None,
    demo_backends: Indexed[DemoBackendConfig],
    services: Indexed[ServiceConfig],
) -> list[PathError]:
    """Every cross-config problem in these parts."""
    problems = _unique(cluster_names, "clusters", "cluster")
    problems += _unique([(i, li.name) for i, li in listeners], "listeners", "listener")
    if all_names:
        problems += _references(listeners, {name for _, name in cluster_names})
    claims: list[tuple[KeyPath, str, tuple[str, int]]] = [
        (("listeners", i, "address"), f"listener {li.name}", li.address) for i, li in listeners
    ]
    if admin is not None:
        claims.append((("admin", "address"), "the admin API", admin.address))
    claims += [
        (("demo_backends", i, "address"), f"demo backend {d.name}", d.address)
        for i, d in demo_backends
    ]
    problems += _sockets(claims, services)
    return problems


def _error(path: KeyPath, message: str) -> PathError:
    from bascule.config.schema import PathError

    return PathError(path, message)


def _unique(names: Indexed[str], key: str, what: str) -> list[PathError]:
    """A name used twice, at each later use."""
    seen: set[str] = set()
    problems = []
    for i, name in names:
        if name in seen:
            problems.append(_error((key, i, "name"), f"duplicate {what} name {name!r}"))
        seen.add(name)
    return problems


def _references(listeners: Indexed[ListenerConfig], known: set[str]) -> list[PathError]:
    problems = []
    for li, listener in listeners:
        if listener.cluster is not None and listener.cluster not in known:
            problems.append(
                _error(("listeners", li, "cluster"), f"no cluster named {listener.cluster!r}")
            )
        for ri, route in enumerate(listener.routes):
            targets: list[tuple[KeyPath, str]] = []
            if route.cluster is not None:
                targets.append((("cluster",), route.cluster))
            for si, weighted in enumerate(route.split or []):
                targets.append((("split", si, "cluster"), weighted.cluster))
            for key, target in targets:
                if target not in known:
                    path = ("listeners", li, "routes", ri, *key)
                    problems.append(_error(path, f"no cluster named {target!r}"))
    return problems


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None  # a host name: compared as written


def _clash(a: tuple[str, int], b: tuple[str, int]) -> str | None:
    """None when both can be bound at once; else "" (the same) or why they overlap."""
    if a[1] != b[1] or a[1] == 0:
        return None
    ip_a, ip_b = _ip(a[0]), _ip(b[0])
    if ip_a is None or ip_b is None:
        return "" if a[0].lower() == b[0].lower() else None
    if ip_a == ip_b:
        return ""
    if ip_a.version != ip_b.version:
        return None  # IPv6 sockets are bound IPV6_V6ONLY: `::` leaves IPv4 alone
    for ip, address in ((ip_a, a), (ip_b, b)):
        if ip.is_unspecified:
            family = f"IPv{ip.version}"
            return f" ({format_address(address)} listens on every {family} address)"
    return None


def _sockets(
    claims: list[tuple[KeyPath, str, tuple[str, int]]], services: Indexed[ServiceConfig]
) -> list[PathError]:
    problems = []
    for n, (path, _, address) in enumerate(claims):
        for _, owner, earlier in claims[:n]:
            why = _clash(address, earlier)
            if why is not None:
                text = f"{format_address(address)} is already {owner}'s address{why}"
                problems.append(_error(path, text))
                break
        else:
            ip = _ip(address[0])
            for _, service in services:
                if (
                    service.protocol == "tcp"
                    and ip == _ip(service.vip)
                    and (address[1] == service.port)
                ):
                    problems.append(
                        _error(
                            path,
                            f"{format_address(address)} is service {service.name}'s VIP and "
                            "port: the kernel takes its packets before any socket sees them",
                        )
                    )
                    break
    return problems
