"""Layer 4 listeners: a `tcp` or `udp` listener in one worker, serving its one cluster.

Rules of this module:
- The engines live in l4/ (TcpProxy, UdpProxy); this module only ties a listener spec and its
  socket (bound by the supervisor: SOCK_STREAM for tcp, SOCK_DGRAM for udp) to one of them.
- The listener's `timeouts.idle` is the sessions' (tcp) or flows' (udp) idle timeout; the
  connect timeout is the cluster's `timeouts.connect`, as for http listeners.
- Stopping stops accepting (tcp) or reading (udp); a drain then waits for the TCP sessions,
  and `abort` ends what is left. UDP flows end with the listener.
"""

from __future__ import annotations

import asyncio
import socket

from bascule.config.schema import ListenerConfig
from bascule.l4.tcp import TcpProxy
from bascule.l4.udp import UdpProxy
from bascule.upstream.cluster import Cluster
from bascule.upstream.connect import Connector


class L4Listener:
    """The live side of a `tcp` or `udp` listener spec in one worker."""

    __slots__ = ("_server", "_transport", "loop", "proxy", "sock", "spec", "udp")

    def __init__(
        self,
        spec: ListenerConfig,
        sock: socket.socket,
        clusters: dict[str, Cluster],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        assert spec.cluster is not None  # the schema requires it for tcp and udp
        self.spec = spec
        self.sock = sock
        self.loop = loop
        cluster = clusters[spec.cluster]
        idle = float(spec.timeouts.idle)
        self.proxy: TcpProxy | None = None
        self.udp: UdpProxy | None = None
        if spec.protocol == "udp":
            self.udp = UdpProxy(cluster, loop, idle_timeout=idle)
        else:
            self.proxy = TcpProxy(
                cluster, Connector(loop), loop, mode=spec.relay, idle_timeout=idle
            )
        self._server: asyncio.AbstractServer | None = None
        self._transport: asyncio.BaseTransport | None = None

    async def start(self) -> None:
        self.sock.setblocking(False)
        if self.udp is not None:
            udp = self.udp
            self._transport, _ = await self.loop.create_datagram_endpoint(
                lambda: udp, sock=self.sock
            )
        elif self.proxy is not None:
            self._server = await self.proxy.serve(self.sock)

    def stop(self) -> None:
        """Stop taking new sessions; the TCP sessions already relaying go on."""
        if self.proxy is not None:
            if self._server is not None:
                self._server.close()
            else:
                self.proxy.stop_serving(self.sock)
                self.sock.close()  # as Listener.stop does; the server's close does it too
        if self._transport is not None:
            self._transport.close()  # closes the flows too (UdpProxy.connection_lost)
            self._transport = None

    def active(self) -> int:
        return len(self.proxy.sessions) if self.proxy is not None else 0

    def abort(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.udp is not None:
            self.udp.close()
