"""The UDP proxy: a flow per client address, each with its own socket to one endpoint.

Rules of this module:
- A flow is one client (address, port) bound to one endpoint, chosen when the flow is created
  (balancing is per flow; a keyed balancer hashes the client's address) and kept while it lives.
- Each flow has its own datagram socket connected to its endpoint: the kernel drops datagrams
  from anyone else, and the socket tells the flows apart. Replies leave from the listener's
  socket, so the client hears back from the address it sent to.
- The flow table is bounded: at `max_flows` the least recently used flow is closed (evicted,
  counted). A flow idle for `idle_timeout` (no datagram either way) is closed by one timer for
  the whole table, set to the oldest flow's deadline. The table is kept in use order, so the
  oldest is always first.
- Nothing here awaits: a flow's socket is made, connected and read (`add_reader`) at once, so no
  datagram waits for a flow to be set up.
- An ICMP error on a flow's socket (the endpoint's port is closed) ends the flow as the
  endpoint's failure; the client's next datagram starts a new flow, maybe to another endpoint.
- A datagram that cannot go anywhere (no endpoint, a full socket) is dropped and counted, never
  queued.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, cast

from bascule.upstream.cluster import SOURCE_IP

if TYPE_CHECKING:
    from bascule.balance.endpoint import Endpoint
    from bascule.upstream.cluster import Cluster

Address = tuple[Any, ...]  # (host, port) or (host, port, flowinfo, scope_id)

_MAX_DATAGRAM: Final = 65535
_READ_BATCH: Final = 64  # replies read per readiness event of a flow's socket


class Flow:
    """One client's datagrams to one endpoint, and the endpoint's replies back."""

    __slots__ = (
        "client",
        "endpoint",
        "failed",
        "fd",
        "last",
        "proxy",
        "replied",
        "sock",
        "t_first_reply",
        "t_start",
    )

    def __init__(self, proxy: UdpProxy, client: Address, endpoint: Endpoint) -> None:
        self.proxy = proxy
        self.client = client
        self.endpoint = endpoint
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((endpoint.host, endpoint.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.last = proxy.loop.time()
        self.t_start = time.monotonic()
        self.t_first_reply = 0.0
        self.replied = False
        self.failed = False
        proxy.loop.add_reader(self.fd, self._readable)

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.proxy.counts["dropped"] += 1
        except OSError:
            # An ICMP error from an earlier datagram is reported here too.
            self.proxy.end(self, failed=True)

    def _readable(self) -> None:
        proxy = self.proxy
        transport = proxy.transport
        sock = self.sock
        for _ in range(_READ_BATCH):
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                proxy.end(self, failed=True)  # ECONNREFUSED: the endpoint's port is closed
                return
            if not self.replied:
                self.replied = True
                self.t_first_reply = time.monotonic()
            if transport is not None:
                transport.sendto(data, self.client)
        proxy.touch(self)

    def close(self) -> None:
        self.proxy.loop.remove_reader(self.fd)
        self.sock.close()


class UdpProxy(asyncio.DatagramProtocol):
    """The UDP proxy of one listener: `loop.create_datagram_endpoint(lambda: proxy, sock=...)`.

    `expect_reply`: a flow that ends without one reply counts as its endpoint's failure (for
    request/response protocols; one-way ones such as syslog never reply).
    """

    def __init__(
        self,
        cluster: Cluster,
        loop: asyncio.AbstractEventLoop,
        *,
        idle_timeout: float = 30.0,
        max_flows: int = 10000,
        expect_reply: bool = False,
    ) -> None:
        self.cluster = cluster
        self.loop = loop
        self.idle_timeout = float(idle_timeout)
        self.max_flows = max_flows
        self.expect_reply = expect_reply
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: OrderedDict[Address, Flow] = OrderedDict()  # least recently used first
        self._timer: asyncio.TimerHandle | None = None
        self.counts: dict[str, int] = {
            "created": 0,
            "evicted": 0,
            "expired": 0,
            "failed": 0,
            "dropped": 0,
        }

    # ------------------------------------------------------------ the listener's socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self._new_flow(addr)
            if flow is None:
                self.counts["dropped"] += 1
                return
        else:
            self.touch(flow)
        flow.send(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error about a reply sent to a client that left: nothing to do but count it.
        self.counts["dropped"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    # ------------------------------------------------------------ flows

    def _pick(self, addr: Address) -> Endpoint | None:
        cluster = self.cluster
        if not cluster.extended:
            return cluster.pick(None, None)
        key = str(addr[0]).encode() if cluster.hash_kind == SOURCE_IP else None
        endpoint = cluster.pick(key, None)
        if endpoint is not None:
            cluster.active += 1
        return endpoint

    def _new_flow(self, addr: Address) -> Flow | None:
        endpoint = self._pick(addr)
        if endpoint is None:
            return None
        flows = self.flows
        while len(flows) >= self.max_flows:
            _, oldest = flows.popitem(last=False)
            self.counts["evicted"] += 1
            self._release(oldest, failed=False)
        try:
            flow = Flow(self, addr, endpoint)
        except OSError:
            endpoint.observe(0.0, False)
            if self.cluster.extended:
                self.cluster.released(endpoint, False)
            return None
        endpoint.active += 1
        flows[addr] = flow
        self.counts["created"] += 1
        if self._timer is None and self.idle_timeout > 0:
            self._timer = self.loop.call_at(flow.last + self.idle_timeout, self._sweep)
        return flow

    def touch(self, flow: Flow) -> None:
        """The flow saw a datagram: it is the most recently used now."""
        flow.last = self.loop.time()
        try:
            self.flows.move_to_end(flow.client)
        except KeyError:
            pass  # ended while its replies were being read

    def end(self, flow: Flow, failed: bool) -> None:
        if self.flows.get(flow.client) is flow:
            del self.flows[flow.client]
            if failed:
                self.counts["failed"] += 1
            self._release(flow, failed)

    def _release(self, flow: Flow, failed: bool) -> None:
        flow.close()
        endpoint = flow.endpoint
        ok = not failed and (flow.replied or not self.expect_reply)
        endpoint.active -= 1
        latency = (flow.t_first_reply or time.monotonic()) - flow.t_start
        endpoint.observe(latency, ok)
        if self.cluster.extended:
            self.cluster.released(endpoint, ok)

    def _sweep(self) -> None:
        self._timer = None
        cutoff = self.loop.time() - self.idle_timeout
        flows = self.flows
        while flows:
            oldest = next(iter(flows.values()))
            if oldest.last > cutoff:
                self._timer = self.loop.call_at(oldest.last + self.idle_timeout, self._sweep)
                return
            del flows[oldest.client]
            self.counts["expired"] += 1
            self._release(oldest, failed=False)

    def close(self) -> None:
        """End every flow (the listener is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.flows:
            _, flow = self.flows.popitem(last=False)
            self._release(flow, failed=False)

    def stats(self) -> dict[str, int]:
        return {**self.counts, "flows": len(self.flows)}
