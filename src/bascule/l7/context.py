"""What every session of one listener shares: routes, clusters, limits, the access log.

Rules of this module:
- Built once per config snapshot per worker; sessions read it and never change it, except
  the live set of sessions (for draining) and the `draining` flag.
- The Connector is a port: the worker's opens real sockets, a test's (bascule.testing) hands
  over scripted transports.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bascule.codec.headers import TrustedNetworks
from bascule.config.schema import ListenerConfig
from bascule.l7.router import Router
from bascule.observe.access_log import AccessLog
from bascule.upstream.cluster import Cluster
from bascule.upstream.connect import Connector, Connects

if TYPE_CHECKING:
    from bascule.l7.session import HttpSession


class ListenerContext:
    __slots__ = (
        "access_log",
        "clusters",
        "connector",
        "draining",
        "forwarded",
        "limits",
        "loop",
        "name",
        "router",
        "server_name",
        "sessions",
        "spec",
        "timeouts",
        "trusted",
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
    ) -> None:
        self.spec = spec
        self.name = spec.name
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
        self.sessions: set[HttpSession] = set()
        self.draining = False
