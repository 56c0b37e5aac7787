"""Idle keep-alive connections to one endpoint, ready for the next request.

Rules of this module (aiohttp's connector and httpcore's pool, seed 003 §5):
- One request in flight per HTTP/1.1 connection: a connection is either lent to one exchange
  or idle here, never both.
- The most recently used connection is reused first (LIFO): it is the one least likely to have
  been closed by the backend's own idle timeout. The oldest are closed past `idle_timeout`.
- A connection that the backend closed, or that saw anything unexpected, is never returned:
  its owner calls `discard`, and `acquire` skips any that are no longer usable.
- A pool holds connections of one `PoolKey`: everything that makes two connections
  interchangeable (httpcore/aiohttp: "to prevent reusing wrong connections"). A connection
  from a client's own address (`source=CLIENT`, transparent proxying) is never interchangeable
  with another client's: such pools keep nothing idle.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol

CLIENT: Final = "client"  # PoolKey.source: connect from the client's own address


@dataclass(frozen=True, slots=True)
class PoolKey:
    host: str
    port: int
    source: str = ""  # "" = bascule's own address, CLIENT = the client's (transparent)
    tls: bool = False
    sni: str = ""
    alpn: tuple[str, ...] = ()


class Pooled(Protocol):
    idle_since: float

    def usable(self) -> bool: ...

    def close(self) -> None: ...


class Pool:
    __slots__ = (
        "_timer",
        "created",
        "idle",
        "idle_timeout",
        "key",
        "loop",
        "max_idle",
        "open",
        "reused",
    )

    def __init__(self, key: PoolKey, max_idle: int, idle_timeout: float) -> None:
        self.key = key
        self.idle: deque[Pooled] = deque()
        self.max_idle = 0 if key.source == CLIENT else max_idle
        self.idle_timeout = idle_timeout
        self.loop: asyncio.AbstractEventLoop | None = None  # the running one unless set
        self._timer: asyncio.TimerHandle | None = None
        self.created = 0  # connections opened to this endpoint (for stats and tests)
        self.open = 0  # connections open or opening now, idle or lent (cluster max_connections)
        self.reused = 0

    def acquire(self) -> Pooled | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                self.reused += 1
                return conn
        return None

    def release(self, conn: Pooled, now: float) -> None:
        if len(self.idle) >= self.max_idle or not conn.usable():
            conn.close()
            return
        conn.idle_since = now
        self.idle.append(conn)
        if self._timer is None and self.idle_timeout > 0:
            self.loop = self.loop or asyncio.get_running_loop()
            self._timer = self.loop.call_later(self.idle_timeout, self._sweep)

    def discard(self, conn: Pooled) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def _sweep(self) -> None:
        self._timer = None
        assert self.loop is not None
        cutoff = self.loop.time() - self.idle_timeout
        idle = self.idle
        while idle and idle[0].idle_since <= cutoff:
            idle.popleft().close()
        if idle:
            wait = idle[0].idle_since - cutoff
            self._timer = self.loop.call_later(max(wait, 0.05), self._sweep)

    def close_oldest_idle(self) -> bool:
        """Close one idle connection to make room for another elsewhere; False if none."""
        while self.idle:
            conn = self.idle.popleft()
            if conn.usable():
                conn.close()
                return True
        return False

    def close_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.idle:
            self.idle.pop().close()
