"""The TCP full proxy: one session per client connection, its bytes relayed to an endpoint.

Rules of this module:
- The flow is listener → cluster → balancer → endpoint, in `TcpSession._dispatch`: an endpoint
  is picked (skipping those tried), connected through the Connector, and a connect failure
  tries the next endpoint, at most `retries.attempts` times: nothing has been sent yet, so a
  retry is always safe. No endpoint, a cluster limit, or the last failure closes the client.
- Two relays do the same job: `splice` moves bytes socket → pipe → socket in the kernel
  (`os.splice`), so they never enter Python; `buffered` relays through asyncio protocols. Both
  keep memory bounded: the splice relay stops reading a side while its pipe holds bytes the
  other side cannot take; the buffered relay pauses reading a side while the other's write
  buffer is above its high-water mark.
- Half-close is propagated: a FIN read on one side becomes `shutdown(SHUT_WR)` on the other,
  once everything read before it has been written. The session ends when both directions
  have ended, or on a reset, or when idle.
- A reset (RST, or a write that fails) on one side becomes an abortive close on the other
  (SO_LINGER 0: the kernel sends RST), so a peer never mistakes a broken stream for a whole one.
- Accounting: `endpoint.active` counts the session from pick to end; `endpoint.observe` is
  called once per endpoint tried (the connect's latency, and whether it failed); the pool's
  `open` slot (cluster max_connections) is held by the upstream connection (Connector rules).
- Idle: one timer per session, set at the last activity + `idle_timeout`, re-armed when it
  fires early; activity (a read, or a full buffer or pipe drained) is one clock read, not a
  timer operation. A peer that stops reading altogether is idle.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Final, Literal, cast

from bascule.upstream.cluster import SOURCE_IP
from bascule.upstream.connect import Connection

if TYPE_CHECKING:
    from bascule.balance.endpoint import Endpoint
    from bascule.upstream.cluster import Cluster
    from bascule.upstream.connect import Connects
    from bascule.upstream.pool import Pool

Mode = Literal["splice", "buffered"]

SPLICE_AVAILABLE: Final = hasattr(os, "splice")
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST
_F_SETPIPE_SZ: Final = 1031  # Linux fcntl numbers (fcntl.F_SETPIPE_SZ needs Python 3.10 + glibc)
_F_GETPIPE_SZ: Final = 1032
_RESET_ERRNOS: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT})
_ACCEPT_BATCH: Final = 64  # connections accepted per readiness event of a listening socket

# Why a session ended (`TcpSession.ended`, and the proxy's counters).
DONE: Final = "done"  # both directions ended with a FIN
RESET: Final = "reset"  # a side reset: the other was reset too
IDLE: Final = "idle"  # nothing moved for idle_timeout
REFUSED: Final = "refused"  # no endpoint took it (none available, limits, connects failed)
CLOSED: Final = "closed"  # the proxy closed it (shutdown)


def reset_socket(sock: socket.socket) -> None:
    """Close `sock` abortively: the peer gets RST, not FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


def _reset_transport(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()  # type: ignore[attr-defined]


class TcpProxy:
    """The TCP full proxy of one listener: its cluster, relay mode, timeouts and sessions.

    `handle(sock)` starts a session for an accepted socket (either mode); `protocol()` is a
    protocol factory for `loop.create_server` (buffered mode); `serve(listening)` runs an
    accept loop on a listening socket in the proxy's mode.
    """

    __slots__ = (
        "cluster",
        "connect_timeout",
        "connector",
        "counts",
        "high_water",
        "idle_timeout",
        "loop",
        "mode",
        "pipe_size",
        "sessions",
    )

    def __init__(
        self,
        cluster: Cluster,
        connector: Connects,
        loop: asyncio.AbstractEventLoop,
        *,
        mode: Mode = "splice",
        idle_timeout: float = 60.0,
        connect_timeout: float | None = None,
        high_water: int = 64 * 1024,
        pipe_size: int = 256 * 1024,
    ) -> None:
        self.cluster = cluster
        self.connector = connector
        self.loop = loop
        # splice needs Linux; elsewhere the buffered relay does the same job.
        self.mode: Mode = mode if SPLICE_AVAILABLE else "buffered"
        self.idle_timeout = float(idle_timeout)
        self.connect_timeout = float(
            cluster.spec.timeouts.connect if connect_timeout is None else connect_timeout
        )
        self.high_water = high_water
        self.pipe_size = pipe_size
        self.sessions: set[TcpSession] = set()
        self.counts: dict[str, int] = {
            "accepted": 0,
            "connect_failures": 0,
            DONE: 0,
            RESET: 0,
            IDLE: 0,
            REFUSED: 0,
            CLOSED: 0,
        }

    def handle(self, sock: socket.socket) -> TcpSession:
        """Start a session for a freshly accepted client socket (the session owns it)."""
        sock.setblocking(False)
        try:
            peer = sock.getpeername()[0]
        except OSError:
            peer = ""
        session = TcpSession(self, peer)
        if self.mode == "splice":
            # As asyncio's and uvloop's transports do: a relay must not hold back small
            # writes (Nagle with the peer's delayed ACK stalls request/response traffic).
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            session.client_sock = sock
            session.start()
        else:
            self.loop.create_task(self._adopt(session, sock))
        return session

    async def _adopt(self, session: TcpSession, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: _Side(session, False), sock)
        except OSError:
            sock.close()

    def protocol(self) -> asyncio.Protocol:
        """A buffered-mode client protocol: `loop.create_server(proxy.protocol, sock=...)`."""
        return _Side(TcpSession(self, ""), False)

    async def serve(self, listening: socket.socket) -> asyncio.AbstractServer | None:
        """Accept on `listening` in the proxy's mode; returns the server, or None for splice
        (then `stop_serving(listening)` stops it)."""
        if self.mode == "buffered":
            return await self.loop.create_server(self.protocol, sock=listening)
        listening.setblocking(False)
        self.loop.add_reader(listening.fileno(), self._accept_ready, listening)
        return None

    def stop_serving(self, listening: socket.socket) -> None:
        self.loop.remove_reader(listening.fileno())

    def _accept_ready(self, listening: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE, ECONNABORTED: the next readiness event tries again
            self.handle(sock)

    def close(self) -> None:
        """End every session now (a hard stop; a drain waits for `sessions` to empty)."""
        for session in list(self.sessions):
            session.close(CLOSED)

    def stats(self) -> dict[str, int]:
        return {**self.counts, "active": len(self.sessions)}


class TcpSession:
    """One client connection: its endpoint choice, its upstream connection and its relay."""

    __slots__ = (
        "_timer",
        "attempts",
        "client_sock",
        "downstream",
        "ended",
        "endpoint",
        "last",
        "latency",
        "peer",
        "pool",
        "proxy",
        "reason",
        "relay",
        "t_connect",
        "tried",
        "upstream",
        "upstream_ok",
    )

    def __init__(self, proxy: TcpProxy, peer: str) -> None:
        self.proxy = proxy
        self.peer = peer  # the client's address (hash key, transparent source)
        self.client_sock: socket.socket | None = None  # splice mode
        self.downstream: _Side | None = None  # buffered mode
        self.upstream: _Side | _Handover | None = None
        self.relay: SpliceRelay | None = None
        self.endpoint: Endpoint | None = None
        self.pool: Pool | None = None
        self.tried: list[Endpoint] = []
        self.attempts = 0
        self.t_connect = 0.0
        self.latency = 0.0
        self.last = 0.0
        self.upstream_ok = True
        self.ended = ""  # why it ended (DONE, RESET, IDLE, REFUSED, CLOSED); "" while it runs
        self.reason = ""
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ endpoint and connect

    def start(self) -> None:
        proxy = self.proxy
        proxy.sessions.add(self)
        proxy.counts["accepted"] += 1
        self._dispatch()

    def _accept(self, endpoint: Endpoint) -> bool:
        return endpoint not in self.tried

    def _pick(self, cluster: Cluster) -> Endpoint | None:
        accept = self._accept if self.tried else None
        if not cluster.extended:
            return cluster.pick(None, accept)
        if cluster.max_requests and cluster.active >= cluster.max_requests:
            cluster.rejected += 1
            self.reason = f"cluster {cluster.name} is at max_requests"
            return None
        key = self.peer.encode() if cluster.hash_kind == SOURCE_IP and self.peer else None
        endpoint = cluster.pick(key, accept)
        if endpoint is None:
            return None
        if cluster.max_connections and not cluster.room_for_connection(endpoint):
            cluster.rejected += 1
            self.reason = f"cluster {cluster.name} is at max_connections"
            return None
        cluster.active += 1
        return endpoint

    def _dispatch(self) -> None:
        proxy = self.proxy
        cluster = proxy.cluster
        endpoint = self._pick(cluster)
        if endpoint is None:
            if not self.reason:
                self.reason = (
                    "no endpoint left to try"
                    if self.tried
                    else f"no healthy endpoint in cluster {cluster.name}"
                )
            self.close(REFUSED)
            return
        self.endpoint = endpoint
        endpoint.active += 1
        self.tried.append(endpoint)
        self.t_connect = time.monotonic()
        pool = self.pool = cluster.pools[endpoint]
        if proxy.mode == "splice":
            proxy.connector.open(
                pool, endpoint, lambda: _Handover(pool), self._connected_splice,
                timeout=proxy.connect_timeout, client=self.peer,
            )  # fmt: skip
        else:
            proxy.connector.open(
                pool, endpoint, lambda: _Side(self, True, pool), self._connected_buffered,
                timeout=proxy.connect_timeout, client=self.peer,
            )  # fmt: skip

    def _connect_failed(self, endpoint: Endpoint | None, reason: str) -> None:
        """A connect did not give a connection: the endpoint's verdict, then the next one."""
        if endpoint is not self.endpoint or self.ended:
            return
        self.proxy.counts["connect_failures"] += 1
        self.upstream_ok = False
        self._release()
        self.reason = reason
        if self.attempts < self.proxy.cluster.spec.retries.attempts:
            self.attempts += 1
            self.upstream_ok = True
            self._dispatch()
            return
        self.close(REFUSED)

    def _connected_splice(self, conn: _Handover | None, status: int, reason: str) -> None:
        if conn is None:
            self._connect_failed(self.endpoint, reason)
            return
        if self.ended:
            conn.take().close()
            conn.give_back()
            return
        self.upstream = conn
        self.latency = time.monotonic() - self.t_connect
        client = self.client_sock
        assert client is not None
        self.relay = SpliceRelay(self, client, conn.take())
        self._touch()

    def _connected_buffered(self, conn: _Side | None, status: int, reason: str) -> None:
        if conn is None:
            self._connect_failed(self.endpoint, reason)
            return
        downstream = self.downstream
        if self.ended or downstream is None or downstream.closed:
            conn.shut(False)
            return
        self.upstream = conn
        self.latency = time.monotonic() - self.t_connect
        conn.peer, downstream.peer = downstream, conn
        self._touch()
        for side in (downstream, conn):
            side.forward_early()
        if downstream.eof and conn.eof:
            self.close(DONE)
            return
        downstream.resume()
        conn.resume()

    def _release(self) -> None:
        """The endpoint's verdict and its slot back (once per endpoint tried)."""
        endpoint = self.endpoint
        if endpoint is None:
            return
        self.endpoint = None
        ok = self.upstream_ok
        endpoint.active -= 1
        endpoint.observe(self.latency or time.monotonic() - self.t_connect, ok)
        cluster = self.proxy.cluster
        if cluster.extended:
            cluster.released(endpoint, ok)

    # ------------------------------------------------------------ idle and the end

    def _touch(self) -> None:
        idle = self.proxy.idle_timeout
        if idle > 0:
            loop = self.proxy.loop
            self.last = loop.time()
            self._timer = loop.call_at(self.last + idle, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self.ended:
            return
        loop = self.proxy.loop
        deadline = self.last + self.proxy.idle_timeout
        if loop.time() >= deadline:
            self.reason = "idle timeout"
            self.close(IDLE)
        else:
            self._timer = loop.call_at(deadline, self._idle_check)

    def close(self, why: str, reset_client: bool = False, reset_upstream: bool = False) -> None:
        """End the session: both sides closed (reset where asked), the endpoint released."""
        if self.ended:
            return
        self.ended = why
        proxy = self.proxy
        proxy.sessions.discard(self)
        proxy.counts[why] += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        relay = self.relay
        if relay is not None:
            relay.close(reset_client, reset_upstream)
        else:
            client = self.client_sock
            if client is not None:
                client.close()
        self.client_sock = None
        upstream = self.upstream
        if isinstance(upstream, _Handover):
            upstream.give_back()
        elif upstream is not None:
            upstream.shut(reset_upstream)
        downstream = self.downstream
        if downstream is not None:
            downstream.shut(reset_client)
        self._release()


class _Handover(Connection):
    """Splice mode's upstream connection: connected by the Connector, then its socket is taken
    out of the transport (a duplicate descriptor) and the transport closed, unread."""

    __slots__ = ("pool", "taken", "transport")

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.taken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]  # not one byte read here

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.taken:
            self.closed = True  # lost before the handover: the Connector counts it as failed

    def take(self) -> socket.socket:
        transport = self.transport
        assert transport is not None
        fd = transport.get_extra_info("socket").fileno()
        sock = socket.socket(fileno=os.dup(fd))
        sock.setblocking(False)
        self.taken = True
        # Closing one of two descriptors of a socket sends nothing: the duplicate lives on.
        transport.close()
        return sock

    def give_back(self) -> None:
        """The session is over: the pool's slot is free."""
        if self.counted and not self.closed:
            self.closed = True
            self.pool.open -= 1


class _Side(Connection):
    """One end of the buffered relay: what it reads is written to its `peer`."""

    __slots__ = ("early", "eof", "peer", "pool", "session", "transport", "upstream")

    def __init__(self, session: TcpSession, upstream: bool, pool: Pool | None = None) -> None:
        super().__init__()
        self.session = session
        self.upstream = upstream
        self.pool = pool
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False  # the FIN from this side was read
        # What arrived before the other side was connected: uvloop may read once although
        # connection_made paused reading. One read at most: reading is paused again.
        self.early = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        t.set_write_buffer_limits(high=self.session.proxy.high_water)
        # Each side waits, unread, until the other is there to take its bytes (a server may
        # speak first).
        t.pause_reading()
        if not self.upstream:
            session = self.session
            session.downstream = self
            if not session.peer:
                peer = transport.get_extra_info("peername")
                session.peer = peer[0] if peer else ""
            session.start()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            self.early += data
            transport = self.transport
            if transport is not None:
                transport.pause_reading()
            return
        if peer.transport is None or peer.closed:
            return
        self.session.last = self.session.proxy.loop.time()
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        session = self.session
        if peer is None:
            return True  # passed on when the other side is connected (forward_early)
        if peer.transport is None or peer.closed:
            session.close(DONE)
            return False
        peer.transport.write_eof()  # after what is buffered: the FIN follows the bytes
        if peer.eof:
            session.close(DONE)
            return False
        return True  # keep the transport: the other direction goes on

    def forward_early(self) -> None:
        """The other side is connected: what this side sent meanwhile goes to it now."""
        peer = self.peer
        assert peer is not None and peer.transport is not None
        if self.early:
            peer.transport.write(self.early)
            self.early = b""
        if self.eof:
            peer.transport.write_eof()

    def pause_writing(self) -> None:
        # This side cannot take more: stop reading the side that feeds it.
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.eof:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        # Its buffer drained below the low-water mark: progress, though nothing was read.
        self.session.last = self.session.proxy.loop.time()
        peer = self.peer
        if peer is not None and not peer.eof:
            peer.resume()

    def resume(self) -> None:
        transport = self.transport
        if transport is not None and not self.closed and not self.eof:
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.counted and self.pool is not None:
            self.pool.open -= 1
        session = self.session
        if session.ended:
            return
        if self.upstream:
            session.upstream_ok = exc is None
        if exc is not None:
            # A reset, or a write into a reset connection: the other side is reset too.
            session.reason = f"{'endpoint' if self.upstream else 'client'}: {exc}"
            session.close(RESET, reset_client=self.upstream, reset_upstream=not self.upstream)
        else:
            session.close(DONE)

    def shut(self, reset: bool) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if reset:
            _reset_transport(transport)
        else:
            transport.close()  # what is buffered is written first


class _Direction:
    """One direction of a splice relay: src socket → pipe → dst socket."""

    __slots__ = (
        "dst",
        "dst_fd",
        "ended",
        "eof",
        "pending",
        "pipe_r",
        "pipe_w",
        "src_fd",
        "writing",
    )

    def __init__(self, src: socket.socket, dst: socket.socket, pipe_size: int) -> None:
        self.src_fd = src.fileno()
        self.dst = dst
        self.dst_fd = dst.fileno()
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, pipe_size)
        except OSError:
            pass  # over the user's pipe quota: the default size still works, in smaller steps
        self.pending = 0  # bytes in the pipe, read from src, not yet written to dst
        self.eof = False  # src sent its FIN
        self.ended = False  # ... and it was passed on: dst was shut down for writing
        self.writing = False  # dst was full: waiting for it to be writable, src not read


class SpliceRelay:
    """Bytes between two sockets through a pipe per direction, never copied into Python.

    A direction reads its source only while its pipe is empty: a read fills the pipe, a write
    empties it into the destination, and what the destination cannot take yet waits in the
    pipe (the kernel's memory, bounded by its size) while the source is left unread.
    """

    __slots__ = ("_flags", "chunk", "closed", "loop", "session", "to_client", "to_up")

    def __init__(self, session: TcpSession, client: socket.socket, upstream: socket.socket) -> None:
        self.session = session
        self.loop = session.proxy.loop
        self.closed = False
        self._flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        size = session.proxy.pipe_size
        self.to_up = _Direction(client, upstream, size)
        self.to_client = _Direction(upstream, client, size)
        try:
            self.chunk = fcntl.fcntl(self.to_up.pipe_w, _F_GETPIPE_SZ)
        except OSError:
            self.chunk = 64 * 1024
        for d in (self.to_up, self.to_client):
            self.loop.add_reader(d.src_fd, self._readable, d)

    def _readable(self, d: _Direction) -> None:
        try:
            n = os.splice(d.src_fd, d.pipe_w, self.chunk, flags=self._flags)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._failed(d.src_fd, e)
            return
        if n == 0:
            d.eof = True
            self.loop.remove_reader(d.src_fd)
            self._end_direction(d)
            return
        self.session.last = self.loop.time()
        d.pending += n
        self._flush(d)

    def _flush(self, d: _Direction) -> None:
        """Write what the pipe holds; when dst is full, stop reading src until it drains."""
        while d.pending:
            try:
                n = os.splice(d.pipe_r, d.dst_fd, d.pending, flags=self._flags)
            except (BlockingIOError, InterruptedError):
                if not d.writing:
                    d.writing = True
                    self.loop.remove_reader(d.src_fd)
                    self.loop.add_writer(d.dst_fd, self._flush, d)
                return
            except OSError as e:
                self._failed(d.dst_fd, e)
                return
            d.pending -= n
        if d.writing:
            # The destination took the rest: progress, though src was not read meanwhile.
            self.session.last = self.loop.time()
            d.writing = False
            self.loop.remove_writer(d.dst_fd)
            self.loop.add_reader(d.src_fd, self._readable, d)

    def _end_direction(self, d: _Direction) -> None:
        """src sent FIN and the pipe is empty (a direction reads only then): pass it on."""
        d.ended = True
        try:
            d.dst.shutdown(socket.SHUT_WR)
        except OSError as e:
            self._failed(d.dst_fd, e)
            return
        if self.to_up.ended and self.to_client.ended:
            self.session.close(DONE)

    def _failed(self, fd: int, e: OSError) -> None:
        """A read or write failed on `fd`: that side is reset (or gone), so reset the other."""
        session = self.session
        from_client = fd == self.to_up.src_fd
        side = "client" if from_client else "endpoint"
        if e.errno in _RESET_ERRNOS:
            session.reason = f"{side} reset the connection"
        else:
            session.reason = f"{side}: {e}"
        if not from_client:
            session.upstream_ok = False
        session.close(RESET, reset_client=not from_client, reset_upstream=from_client)

    def close(self, reset_client: bool, reset_upstream: bool) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        for d in (self.to_up, self.to_client):
            loop.remove_reader(d.src_fd)
            loop.remove_writer(d.dst_fd)
            os.close(d.pipe_r)
            os.close(d.pipe_w)
        for sock, reset in ((self.to_client.dst, reset_client), (self.to_up.dst, reset_upstream)):
            if reset:
                reset_socket(sock)
            else:
                sock.close()
