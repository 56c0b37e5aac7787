"""The stand-ins at the edges: a recording transport, a loop on a moved clock, a scripted
Connector.

Rules of this module:
- `FakeTransport` keeps every byte written, in order, and the calls that matter to a proxy
  (pause/resume reading, write_eof, close, abort).
- `FakeLoop` keeps time still until the test calls `advance`; timers then run in deadline
  order, each at its own time (a timer set by a timer runs in the same advance if it is due).
- `ScriptedConnector` records every connect; the test then `accept`s it (a FakeTransport is
  connected) or `refuse`s it with a status. It counts the pool as the real Connector does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, cast

from bascule.balance.endpoint import Endpoint
from bascule.upstream.connect import C, Done
from bascule.upstream.pool import Pool


class FakeTransport:
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000), record: bool = True) -> None:
        self.peer = peer
        self.record = record  # False: only count (a bench's millions of writes)
        self.written = 0
        self.data = bytearray()
        self.reading = True
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self.buffered = 0  # what get_write_buffer_size reports

    def take(self) -> bytes:
        """Everything written since the last take."""
        out = bytes(self.data)
        self.data.clear()
        return out

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        if self.closed:
            raise AssertionError("write on a closed transport")
        self.written += len(data)
        if self.record:
            self.data += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeHandle:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The part of an event loop the L7 data plane uses, on a clock the test moves."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, FakeHandle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        handle = FakeHandle(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._seq), handle))
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> FakeHandle:
        return self.call_at(self.now, callback, *args)

    def advance(self, seconds: float = 0.0) -> None:
        """Move the clock, running every timer that falls due on the way, in order."""
        end = self.now + seconds
        timers = self._timers
        while timers and timers[0][0] <= end:
            when, _, handle = heapq.heappop(timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            handle.callback(*handle.args)
        self.now = end

    def pending(self) -> int:
        return sum(1 for _, _, h in self._timers if not h.cancelled)

    def as_loop(self) -> asyncio.AbstractEventLoop:
        return cast(asyncio.AbstractEventLoop, self)


class Connect:
    """One connect the data plane asked for, until the test decides its outcome."""

    def __init__(
        self,
        pool: Pool,
        endpoint: Endpoint,
        factory: Callable[[], Any],
        done: Callable[[Any, int, str], None],
        client: str,
    ) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.factory = factory
        self.done = done
        self.client = client


class ScriptedConnector:
    def __init__(self) -> None:
        self.waiting: list[Connect] = []
        self.opened = 0

    def open(
        self,
        pool: Pool,
        endpoint: Endpoint,
        factory: Callable[[], C],
        done: Done[C],
        *,
        timeout: float,
        client: str = "",
    ) -> None:
        pool.open += 1
        self.opened += 1
        self.waiting.append(Connect(pool, endpoint, factory, done, client))

    def accept(self) -> tuple[Any, FakeTransport]:
        """Connect the oldest waiting request: (the protocol object, its transport)."""
        c = self.waiting.pop(0)
        conn = c.factory()
        transport = FakeTransport((c.endpoint.host, c.endpoint.port))
        conn.connection_made(transport)
        c.pool.created += 1
        conn.counted = True
        c.done(conn, 0, "")
        return conn, transport

    def refuse(self, status: int = 502, reason: str = "connection refused") -> Endpoint:
        """Fail the oldest waiting connect; returns the endpoint it was for."""
        c = self.waiting.pop(0)
        c.pool.open -= 1
        c.done(None, status, reason)
        return c.endpoint
