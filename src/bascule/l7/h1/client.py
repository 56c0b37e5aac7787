"""One HTTP/1.1 connection to an endpoint: it reads responses and hands them to its exchange.

Rules of this module:
- A connection is lent to at most one exchange at a time (seed 003 §5); between exchanges it
  idles in its endpoint's pool. Bytes that arrive while it idles make it unusable: it closes.
- Heads are parsed by bascule's codec (`parse_response_head`), one call per read while the
  head is incomplete; the codec bounds the buffer (64 KiB, 200 fields) and frames the response
  for the request's method, so HEAD, 1xx, 204 and 304 end at their head.
- Interim (1xx) heads are passed on and the final head parsed after them. A Content-Length
  body is counted, each read relayed as it came (no copy); a chunked body is decoded
  (trailers dropped) for the exchange to re-frame; a close-delimited body ends on FIN.
- Bytes past the framed response mean the endpoint is out of step: never pooled again.
- Every step checks that an exchange still owns the connection: an exchange may finish, or
  give the connection up, inside any callback.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from bascule.codec.chunked import ChunkedDecoder
from bascule.codec.http1 import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    ProtocolError,
    parse_response_head,
)
from bascule.upstream.connect import Connection

if TYPE_CHECKING:
    from bascule.balance.endpoint import Endpoint
    from bascule.l7.exchange import Exchange
    from bascule.upstream.pool import Pool

# what the connection is reading
_HEAD: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_CLOSE: Final = 3
_DONE: Final = 4


class UpstreamConnection(Connection):
    __slots__ = (
        "chunks",
        "endpoint",
        "exchange",
        "head_buf",
        "idle_since",
        "keep_alive",
        "last_read",
        "loop",
        "method",
        "pool",
        "raw_left",
        "reading",
        "status",
        "transport",
    )

    def __init__(self, pool: Pool, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.pool = pool
        self.endpoint = endpoint
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.keep_alive = True
        self.idle_since = 0.0
        self.last_read = 0.0
        self.method = "GET"
        self.status = 0
        self.reading = _DONE
        self.head_buf = b""  # an unfinished head (bounded by the codec's limits)
        self.raw_left = 0  # bytes left of a Content-Length body
        self.chunks: ChunkedDecoder | None = None

    # -- pool interface

    def usable(self) -> bool:
        return not self.closed and self.keep_alive and self.exchange is None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.counted:
                self.pool.open -= 1
            if self.transport is not None:
                self.transport.close()

    def lend(self, exchange: Exchange, method: str) -> None:
        """Give this connection to one exchange for one request/response."""
        self.exchange = exchange
        self.method = method
        self.reading = _HEAD
        self.status = 0
        self.head_buf = b""
        self.raw_left = 0
        self.chunks = None
        self.last_read = self.loop.time()

    def detach(self) -> None:
        self.exchange = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        reading = self.reading
        if exchange is None or reading == _DONE:
            # Nothing was asked: a backend talking out of turn cannot be trusted with the next.
            self.keep_alive = False
            self.close()
            self.pool.discard(self)
            return
        self.last_read = self.loop.time()
        if reading == _LENGTH:
            self._relay_length(exchange, data)
        elif reading == _UNTIL_CLOSE:
            exchange.on_response_body(data)
            exchange.flush()
        elif reading == _CHUNKED:
            self._relay_chunked(exchange, data)
        else:
            self._read_head(exchange, self.head_buf + data if self.head_buf else data)

    def _read_head(self, exchange: Exchange, buf: bytes) -> None:
        while True:
            try:
                head = parse_response_head(buf, self.method)
            except ProtocolError as e:
                self._fail(f"bad response from endpoint: {e.reason}")
                return
            if head is None:
                self.head_buf = buf
                exchange.flush()  # an interim response relayed before this partial head
                return
            self.head_buf = b""
            self.status = status = head.status
            rest = buf[head.end :]
            exchange.on_response_head(self, head, buf)
            if self.exchange is not exchange or self.reading == _DONE:
                return
            if status >= 200:
                break
            buf = rest  # an interim response: the final one follows
        self.keep_alive = head.keep_alive
        framing = head.framing
        if framing == LENGTH:
            self.reading = _LENGTH
            self.raw_left = head.content_length
            self._relay_length(exchange, rest)
        elif framing == CHUNKED:
            self.reading = _CHUNKED
            self.chunks = ChunkedDecoder()
            self._relay_chunked(exchange, rest)
        elif framing == NO_BODY:
            if rest:
                self.keep_alive = False  # bytes after the head: this backend is out of step
            self._complete(exchange)
        else:
            self.reading = _UNTIL_CLOSE
            self.keep_alive = False
            if rest:
                exchange.on_response_body(rest)
            exchange.flush()

    def _relay_length(self, exchange: Exchange, data: bytes) -> None:
        left = self.raw_left
        n = len(data)
        if n < left:
            self.raw_left = left - n
            if n:
                exchange.on_response_body(data)
            exchange.flush()
            return
        if n > left:
            data = data[:left]
            self.keep_alive = False  # bytes past the body: this backend is out of step
        self.raw_left = 0
        if data:
            exchange.on_response_body(data)
        self._complete(exchange)

    def _relay_chunked(self, exchange: Exchange, data: bytes) -> None:
        chunks = self.chunks
        assert chunks is not None
        try:
            pieces, ended, rest = chunks.feed(data)
        except ProtocolError as e:
            self._fail(f"bad chunked body from endpoint: {e.reason}")
            return
        for piece in pieces:
            exchange.on_response_body(piece)
            if self.exchange is not exchange:
                return
        if not ended:
            exchange.flush()
            return
        if rest:
            self.keep_alive = False  # bytes past the body: this backend is out of step
        self._complete(exchange)

    def _complete(self, exchange: Exchange) -> None:
        self.reading = _DONE
        self.chunks = None
        exchange.on_response_complete(self)

    def _fail(self, reason: str) -> None:
        self.reading = _DONE
        self.keep_alive = False
        self.close()
        if self.exchange is not None:
            self.exchange.upstream_failed(self, reason)

    def eof_received(self) -> bool | None:
        self.keep_alive = False
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if self.counted:
                self.pool.open -= 1
        self.keep_alive = False
        exchange = self.exchange
        if exchange is None:
            self.pool.discard(self)
            return
        if self.reading != _DONE:
            # The exchange knows whether this close ends a close-delimited body or breaks one.
            self.reading = _DONE
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_resume_writing()
