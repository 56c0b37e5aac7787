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
"""

from __future__ import annotations

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
RESOURCE_PAUSE: Final = 0.1  # seconds without accepting after EMFILE/ENFILE/ENOBUFS/ENOMEM
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

SessionFactory = Callable[[ListenerContext], HttpSession]
# One session class per listener protocol; only `http` exists so far.
SESSION_FACTORIES: Final[dict[str, SessionFactory]] = {"http": HttpSession}


class Listener:
    """The live side of a listener spec in one worker (the registry of its sessions)."""

    __slots__ = (
        "_accepting",
        "_resume_timer",
        "_stopped",
        "ctx",
        "factory",
        "loop",
        "refused",
        "sock",
        "spec",
        "table",
    )

    def __init__(self, spec: ListenerConfig, sock: socket.socket, ctx: ListenerContext) -> None:
        self.spec = spec
        self.sock = sock
        self.ctx = ctx
        self.loop = ctx.loop
        self.factory = SESSION_FACTORIES[spec.protocol]
        limits = spec.limits
        self.table: ConnectionTable[HttpSession] = ConnectionTable(
            limits.max_connections, limits.max_connections_per_client
        )
        self.refused = 0  # connections answered 429 for their client's limit
        self._accepting = False
        self._stopped = False
        self._resume_timer: asyncio.TimerHandle | None = None
        ctx.registry = self

    # ------------------------------------------------------------ accepting

    def start(self) -> None:
        self.sock.setblocking(False)
        self._resume()

    def _resume(self) -> None:
        if not self._accepting and not self._stopped:
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
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _OUT_OF_RESOURCES:
                    self._pause_for_resources(e)
                    return
                continue  # ECONNABORTED and friends: that client is gone, not the listener
            self._open(conn, addr[0])

    def _open(self, conn: socket.socket, peer: str) -> None:
        table = self.table
        refused = table.peer_full(peer) and not self._reclaim(peer)
        session = self.factory(self.ctx)
        if refused:
            self.refused += 1
            session.refuse()
        table.add(session, peer, refused)
        task = self.loop.create_task(self.loop.connect_accepted_socket(lambda: session, conn))
        task.add_done_callback(lambda t: self._opened(t, session, conn))

    def _opened(
        self, task: asyncio.Task[object], session: HttpSession, conn: socket.socket
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
        if not self._accepting and self._resume_timer is None and not self.table.full():
            self._resume()

    def stop(self) -> None:
        """Stop accepting for good and close the listening socket (draining)."""
        self._pause()
        self._stopped = True
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
