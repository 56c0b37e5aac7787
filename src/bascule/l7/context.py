"""What every session of one listener shares: routes, clusters, limits, the access log.

Rules of this module:
- Built once per config snapshot per worker; sessions read it and never change it, except
  the `draining` flag.
- Sessions tell their listener when they close, go idle (between exchanges, nothing
  buffered) and get busy again, through `registry`: the listener (listen/) counts them,
  reclaims idle ones at its limits and resumes accepting when one closes. l7 only knows the
  `Registry` interface, so it never imports listen/.
- The Connector is a port: the worker's opens real sockets, a test's (bascule.testing) hands
  over scripted transports.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from bascule.codec.headers import TrustedNetworks
from bascule.config.schema import ListenerConfig
from bascule.l7.router import Router
from bascule.observe.access_log import AccessLog
from bascule.upstream.cluster import Cluster
from bascule.upstream.connect import Connector, Connects

if TYPE_CHECKING:
    from bascule.l7.session import HttpSession


class Registry(Protocol):
    """The listener's side of a session's life (see listen/listener.py)."""

    def closed(self, session: HttpSession) -> None: ...

    def idle(self, session: HttpSession) -> None: ...

    def busy(self, session: HttpSession) -> None: ...


class Untracked:
    """A registry that counts nothing: for sessions driven without a listener (bench/)."""

    def closed(self, session: HttpSession) -> None:
        pass

    def idle(self, session: HttpSession) -> None:
        pass

    def busy(self, session: HttpSession) -> None:
        pass


class ListenerContext:
    __slots__ = (
        "access_log",
        "clusters",
        "connector",
        "draining",
        "escaped_slashes",
        "forwarded",
        "limits",
        "loop",
        "merge_slashes",
        "name",
        "normalize_path",
        "registry",
        "router",
        "server_name",
        "spec",
        "timeouts",
        "trusted",
        "underscores",
        "via",
        "via_line",
    )

    def __init__(
        self,
        spec: ListenerConfig,
        clusters: dict[str, Cluster],
        access_log: AccessLog,
        loop: asyncio.AbstractEventLoop,
        connector: Connects | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        # read per request: plain attributes, not pydantic lookups
        self.normalize_path = spec.normalize_path
        self.merge_slashes = spec.merge_slashes
        self.escaped_slashes = spec.path_with_escaped_slashes
        self.underscores = spec.headers_with_underscores
        self.router = Router(spec.routes)
        self.clusters = clusters
        self.limits = spec.limits
        self.timeouts = spec.timeouts
        self.forwarded = spec.forwarded
        self.trusted = TrustedNetworks(spec.trusted_proxies)
        self.access_log = access_log
        self.loop = loop
        self.connector: Connects = connector if connector is not None else Connector(loop)
        self.server_name = spec.server_name
        self.via = f"1.1 {spec.server_name}".encode()
        self.via_line = b"Via: %s\r\n" % self.via
        self.registry: Registry = registry if registry is not None else Untracked()
        self.draining = False
