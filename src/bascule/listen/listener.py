"""A listener in one worker: its socket's accept loop, its connection limits, its sessions.

Rules of this module:
- bascule accepts itself (`add_reader` on the listening socket, `accept()`, then
  `connect_accepted_socket`), so it can stop: at `limits.max_connections` it first closes the
  oldest idle keep-alive session, and when none is idle it stops polling the socket. New
  clients then wait in the kernel's backlog (their connect has completed) and are accepted,
  in order, as soon as a session closes: never accepted and reset.
- `limits.max_connections_per_client` works the same way per peer address, except that an
  accepted connection cannot be put back: one beyond its client's limit is answered 429 and
  closed (see HttpSession.refuse).
- Out of file descriptors (EMFILE/ENFILE) or memory, accepting pauses for a short while, and
  the connection stays in the backlog.
- Accepting is bounded per loop turn, so a burst of connections does not delay the sessions
  already served.
- Far from the limit, accepting costs what uvloop's own server costs: a uvloop server on a
  duplicate of the listening socket accepts (in C, ~20 µs per connection cheaper than the
  accept loop here). It stops once the sessions come within FAST_MARGIN of
  `max_connections`, and the accept loop takes over; they come back FAST_MARGIN +
  FAST_HYSTERESIS below it. uvloop accepts the whole backlog when the socket polls readable,
  so FAST_MARGIN is the backlog, and such a burst cannot pass the limit. With
  `max_connections_per_client` (which needs the peer before the session exists) the accept
  loop always serves.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import socket
import sys
from collections.abc import Callable
from typing import Final

from bascule.config.schema import ListenerConfig
from bascule.l7.context import ListenerContext
from bascule.l7.session import HttpSession
from bascule.listen.table import ConnectionTable

ACCEPT_BATCH: Final = 64  # connections accepted per loop turn at most
BACKLOG: Final = 1024  # as runtime/supervisor.py listens with
FAST_MARGIN: Final = BACKLOG
FAST_HYSTERESIS: Final = 512  # so that a session count near the margin does not flap modes
_NO_PEER: Final = "-"  # sessions the uvloop server accepted: no per-client limit applies
RESOURCE_PAUSE: Final = 0.1  # seconds without accepting after EMFILE/ENFILE/ENOBUFS/ENOMEM
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

SessionFactory = Callable[[ListenerContext], HttpSession]
# One session class per listener protocol; only `http` exists so far.
SESSION_FACTORIES: Final[dict[str, SessionFactory]] = {"http": HttpSession}


class Listener:
    """The live side of a listener spec in one worker (the registry of its sessions)."""

    __slots__ = (
        "_accepting",
        "_fast",
        "_fast_starting",
        "_resume_timer",
        "_stopped",
        "ctx",
        "factory",
        "family",
        "loop",
        "refused",
        "sock",
        "spec",
        "table",
    )

    def __init__(self, spec: ListenerConfig, sock: socket.socket, ctx: ListenerContext) -> None:
        self.spec = spec
        self.sock = sock
        self.family = int(sock.family)
        self.ctx = ctx
        self.loop = ctx.loop
        self.factory = SESSION_FACTORIES[spec.protocol]
        limits = spec.limits
        self.table: ConnectionTable[HttpSession] = ConnectionTable(
            limits.max_connections, limits.max_connections_per_client
        )
        self.refused = 0  # connections answered 429 for their client's limit
        self._accepting = False  # the accept loop polls the socket
        self._fast: asyncio.AbstractServer | None = None  # the uvloop server, far from limits
        self._fast_starting = False
        self._stopped = False
        self._resume_timer: asyncio.TimerHandle | None = None
        ctx.registry = self

    # ------------------------------------------------------------ accepting

    def start(self) -> None:
        self.sock.setblocking(False)
        if self._far_from_limits():
            self._start_fast()
        else:
            self._resume()

    # ---------------- far from the limits: uvloop's server accepts

    def _far_from_limits(self) -> bool:
        table = self.table
        return (
            not table.max_per_peer
            and len(table) < table.max_total - FAST_MARGIN - FAST_HYSTERESIS
            and not self._stopped
        )

    def _start_fast(self) -> None:
        self._pause()
        self._fast_starting = True
        self.loop.create_task(self._serve_fast())

    async def _serve_fast(self) -> None:
        dup = self.sock.dup()  # closing the uvloop server closes this, not the listener
        try:
            server = await self.loop.create_server(self._fast_session, sock=dup, backlog=BACKLOG)
        except OSError:
            dup.close()
            self._fast_starting = False
            self._resume()
            return
        self._fast_starting = False
        self._fast = server
        if self._stopped or not self._far_from_limits():
            self._leave_fast()

    def _fast_session(self) -> HttpSession:
        session = self.factory(self.ctx)
        table = self.table
        table.add(session, _NO_PEER)
        if len(table) == table.max_total - FAST_MARGIN:
            # Not from here: closing the server now would close the socket it just accepted.
            self.loop.call_soon(self._leave_fast)
        return session

    def _leave_fast(self) -> None:
        server, self._fast = self._fast, None
        if server is not None:
            server.close()
            self._resume()

    # ---------------- near the limits: the accept loop

    def _resume(self) -> None:
        if not (self._accepting or self._stopped or self._fast or self._fast_starting):
            self._accepting = True
            self.loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def _pause(self) -> None:
        if self._accepting:
            self._accepting = False
            self.loop.remove_reader(self.sock.fileno())

    def _on_acceptable(self) -> None:
        table = self.table
        for i in range(ACCEPT_BATCH):
            # Only the first time round is a client known to wait (the socket polled
            # readable); later, with no room, leave it to the next poll.
            if table.full() and (i or not self._reclaim(None)):
                if not i:
                    self._pause()  # resumed by `closed` or `idle`
                return
            try:
                # `socket.accept()` and the socket it returns convert family and type to
                # enums on every access (~1.5 µs each, four times per connection): the C
                # socket type gives plain ints and is all uvloop needs.
                fd, addr = self.sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _OUT_OF_RESOURCES:
                    self._pause_for_resources(e)
                    return
                continue  # ECONNABORTED and friends: that client is gone, not the listener
            self._open(_socket.socket(self.family, socket.SOCK_STREAM, 0, fd), addr[0])

    def _open(self, conn: _socket.socket, peer: str) -> None:
        table = self.table
        refused = table.peer_full(peer) and not self._reclaim(peer)
        session = self.factory(self.ctx)
        if refused:
            self.refused += 1
            session.refuse()
        table.add(session, peer, refused)
        task = self.loop.create_task(
            self.loop.connect_accepted_socket(lambda: session, conn)  # type: ignore[arg-type]
        )
        task.add_done_callback(lambda t: self._opened(t, session, conn))

    def _opened(
        self, task: asyncio.Task[object], session: HttpSession, conn: _socket.socket
    ) -> None:
        if task.cancelled() or task.exception() is not None:
            # The socket could not become a transport: its session never started.
            conn.close()
            self.table.discard(session)
            self._resume_if_room()

    def _reclaim(self, peer: str | None) -> bool:
        """Close the oldest idle session (of `peer`, if given) to make room; False if none."""
        session = self.table.oldest_idle(peer)
        if session is None:
            return False
        self.table.discard(session)
        session.reclaim()
        return True

    def _pause_for_resources(self, e: OSError) -> None:
        self._pause()
        print(
            f"bascule: listener {self.spec.name}: accept paused for {RESOURCE_PAUSE}s: "
            f"{e.strerror or e}",
            file=sys.stderr,
        )
        self._resume_timer = self.loop.call_later(RESOURCE_PAUSE, self._after_resource_pause)

    def _after_resource_pause(self) -> None:
        self._resume_timer = None
        self._resume()

    def _resume_if_room(self) -> None:
        if self._fast is not None or self._fast_starting:
            return
        if self._far_from_limits():
            self._start_fast()
        elif not self._accepting and self._resume_timer is None and not self.table.full():
            self._resume()

    def stop(self) -> None:
        """Stop accepting for good and close the listening socket (draining)."""
        self._stopped = True
        self._leave_fast()
        self._pause()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self.sock.close()

    # ------------------------------------------------------------ the registry (l7 calls it)

    def closed(self, session: HttpSession) -> None:
        self.table.discard(session)
        self._resume_if_room()

    def idle(self, session: HttpSession) -> None:
        self.table.set_idle(session)
        if not self._accepting and self._resume_timer is None:
            self._resume()  # at the limit, this session's place can now go to a waiting client

    def busy(self, session: HttpSession) -> None:
        self.table.set_busy(session)

    def sessions(self) -> list[HttpSession]:
        return self.table.sessions()
