"""One HTTP/1.1 connection to an endpoint: it reads responses and hands them to its exchange.

Rules of this module:
- A connection is lent to at most one exchange at a time (seed 003 §5); between exchanges it
  idles in its endpoint's pool. Bytes that arrive while it idles make it unusable: it closes.
- The response parser does not know the request's method, so for HEAD the connection ends
  the message at its head itself (DESIGN.md, pitfalls); 1xx interim responses are passed on
  and the final response parsed after them.
- Every callback checks that an exchange still owns the connection: an exchange may finish,
  or give the connection up, in the middle of one `feed_data` call.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpResponseParser

from bascule.upstream.connect import Connection

if TYPE_CHECKING:
    from bascule.balance.endpoint import Endpoint
    from bascule.l7.exchange import Exchange
    from bascule.upstream.pool import Pool


class _RelayRaw(Exception):
    """Raised from a parser callback to stop the parser at the end of a response head (the
    parser is then replaced): a long body is relayed raw, a HEAD response ends there."""


class UpstreamConnection(Connection):
    __slots__ = (
        "_done",
        "_head_ended",
        "_raw_body",
        "body_length",
        "endpoint",
        "exchange",
        "head_buf",
        "head_only",
        "idle_since",
        "in_head",
        "keep_alive",
        "last_read",
        "loop",
        "parser",
        "pool",
        "raw_left",
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
        self.parser = HttpResponseParser(self)
        self.keep_alive = True
        self.idle_since = 0.0
        self.last_read = 0.0
        self.head_only = False
        self.status = 0
        # The response head as received: forwarded nearly verbatim, so headers need no
        # per-field callbacks (the parser is given no on_header at all).
        self.in_head = True
        self.head_buf = b""
        self._done = False  # the current exchange's response is finished
        # A Content-Length body that runs past the read holding its head is relayed without
        # the parser: no per-read callback, no copy of each read (see on_headers_complete).
        self.body_length = 0  # set by the exchange for Content-Length framed responses
        self.raw_left = 0
        self._raw_body: bytes | None = None
        self._head_ended = False  # a HEAD response's head is in: stop the parser there

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

    def lend(self, exchange: Exchange, head_only: bool) -> None:
        """Give this connection to one exchange for one request/response."""
        self.exchange = exchange
        self.head_only = head_only
        self._done = False
        self.status = 0
        self.in_head = True
        self.head_buf = b""
        self.body_length = 0
        self.raw_left = 0
        self.last_read = self.loop.time()

    def detach(self) -> None:
        self.exchange = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or self._done:
            # Nothing was asked: a backend talking out of turn cannot be trusted with the next.
            self.keep_alive = False
            self.close()
            self.pool.discard(self)
            return
        self.last_read = self.loop.time()
        if self.raw_left:
            self._relay_body(data)
            return
        if self.in_head:
            self.head_buf += data
        try:
            self.parser.feed_data(data)
        except HttpParserError as e:
            if self._head_ended:
                self._head_ended = False
                self.parser = HttpResponseParser(self)
                self._done = True
                exchange.on_response_complete(self)
                return
            if self._raw_body is not None:
                # not an error: on_headers_complete stopped the parser to relay the body raw
                body, self._raw_body = self._raw_body, None
                self.parser = HttpResponseParser(self)
                self._relay_body(body)
                return
            self.keep_alive = False
            self.close()
            if self.exchange is not None:
                self.exchange.upstream_failed(self, f"bad response from endpoint: {e}")
            return
        if self.exchange is not None:
            self.exchange.flush()

    def _relay_body(self, data: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
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
        self._done = True
        if data:
            exchange.on_response_body(data)
        exchange.on_response_complete(self)

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
        if not self._done:
            # The exchange knows whether this close ends a close-delimited body or breaks one.
            self._done = True
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_resume_writing()

    # -- httptools callbacks

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or self._done:
            self.keep_alive = False  # a response nobody asked for: never reuse this connection
            return
        parser = self.parser
        self.status = status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        # llhttp accepted the head, so it ends at the first blank line of the buffer (it
        # refuses bare LF and obs-fold), and the buffer starts with this message.
        buf = self.head_buf
        end = buf.find(b"\r\n\r\n") + 2
        head = buf[:end]
        if status < 200:
            self.head_buf = buf[end + 2 :]  # an interim response: the final one follows
        else:
            self.in_head = False
            self.head_buf = b""
        exchange.on_response_head(self, status, head)
        if status < 200 or self.exchange is not exchange or self._done:
            return
        if self.head_only:
            # The parser would wait for the body a HEAD response never has. Stop it here (it
            # must not run on into the next exchange's callbacks) and end the response once
            # it has returned; bytes after the head mean the backend is out of step.
            if len(buf) > end + 2:
                self.keep_alive = False
            self._head_ended = True
            raise _RelayRaw
        elif self.body_length > len(buf) - end - 2:
            # The body runs past this read: stop the parser (it is replaced) and relay the
            # rest by counting bytes.
            self.raw_left = self.body_length
            self._raw_body = buf[end + 2 :]
            raise _RelayRaw

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None and not self._done:
            exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or self._done or self.status < 200:
            return
        self._done = True
        exchange.on_response_complete(self)
