"""A playbook for the L7 data plane: client bytes in → connect → upstream bytes out →
response in → client bytes out, with the clock in the test's hands.

Rules of this module:
- Built from a config dict as a user would write it (validated by the real schema); the first
  listener is the one played. Sessions, exchanges, clusters, pools and the router are real.
- Nothing happens by itself: connects wait for `accept()`/`refuse()`, timers for `advance()`.
"""

from __future__ import annotations

from typing import Any

from bascule.config.schema import Config
from bascule.l7.context import ListenerContext
from bascule.l7.h1.client import UpstreamConnection
from bascule.l7.session import HttpSession
from bascule.observe.access_log import AccessLog
from bascule.testing.fakes import FakeLoop, FakeTransport, ScriptedConnector
from bascule.upstream.cluster import Cluster


class Downstream:
    """The client's side of one session."""

    def __init__(self, session: HttpSession, transport: FakeTransport) -> None:
        self.session = session
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.session.data_received(data)

    def take(self) -> bytes:
        return self.transport.take()

    def half_close(self) -> bool | None:
        return self.session.eof_received()

    def lost(self) -> None:
        self.session.connection_lost(None)

    @property
    def closed(self) -> bool:
        return self.transport.closed


class Upstream:
    """The endpoint's side of one upstream connection."""

    def __init__(self, conn: UpstreamConnection, transport: FakeTransport) -> None:
        self.conn = conn
        self.transport = transport

    def take(self) -> bytes:
        return self.transport.take()

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def close(self) -> None:
        self.conn.connection_lost(None)

    @property
    def closed(self) -> bool:
        return self.transport.closed


class Playbook:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = Config.model_validate(config)
        self.loop = FakeLoop()
        self.connector = ScriptedConnector()
        self.clusters = {spec.name: Cluster(spec) for spec in self.config.clusters}
        for cluster in self.clusters.values():
            cluster.loop = self.loop.as_loop()
            for pool in cluster.pools.values():
                pool.loop = self.loop.as_loop()
        self.ctx = ListenerContext(
            self.config.listeners[0],
            self.clusters,
            AccessLog(None),
            self.loop.as_loop(),
            self.connector,
        )

    def client(self, peer: tuple[str, int] = ("198.51.100.7", 40000)) -> Downstream:
        session = HttpSession(self.ctx)
        transport = FakeTransport(peer)
        session.connection_made(transport)  # type: ignore[arg-type]
        return Downstream(session, transport)

    def accept(self) -> Upstream:
        """Complete the oldest connect the data plane asked for."""
        conn, transport = self.connector.accept()
        assert isinstance(conn, UpstreamConnection)
        return Upstream(conn, transport)

    def refuse(self, status: int = 502, reason: str = "connection refused") -> None:
        self.connector.refuse(status, reason)

    @property
    def connects(self) -> int:
        """Connects asked for and not decided yet."""
        return len(self.connector.waiting)

    def advance(self, seconds: float) -> None:
        self.loop.advance(seconds)
