"""One downstream HTTP/1.1 connection: parse requests, run exchanges in order, enforce limits.

Rules of this module:
- One exchange runs at a time; pipelined requests wait in order (RFC 9112 §9.3.2) and reading
  pauses while one waits, so a pipelining client cannot make us buffer without bound.
- Reading pauses for several independent reasons (pipelining, a full upstream buffer, a body
  buffered while connecting); it resumes only when none is left.
- Every timeout is a deadline checked by one timer per session: setting a later deadline costs
  nothing, the timer re-arms itself to the earliest one when it fires.
- A bad request earns its status (400, 408, 413, 414, 431, 501), an access-log line and a
  graceful close; it never touches another connection.
- Requests are parsed by bascule's own codec (`codec.http1.parse_request_head`, one call per
  read): bytes are buffered only while a head is incomplete, and an idle session holds none.
  The codec applies RFC 9112's rules and the head limits; this module adds the listener's
  rules (fragments, path normalisation, underscores, max_request_body for chunked bodies).
- A body is always read as a body, by one reader for every request: Content-Length by
  counting, chunked by ChunkedDecoder (trailers dropped). A request asking for an upgrade is
  served as plain HTTP (RFC 9110 §7.8), so its body can never run as the client's next
  request (issue 13: request smuggling).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from bascule.codec.chunked import ChunkedDecoder
from bascule.codec.headers import drop_underscored, forwarded_element, route_host
from bascule.codec.http1 import (
    CHUNKED,
    ProtocolError,
    RequestHead,
    error_body,
    parse_request_head,
    simple_response,
)
from bascule.codec.path import FRAGMENT, normalize_path
from bascule.l7.context import ListenerContext
from bascule.l7.exchange import Exchange
from bascule.l7.http_date import HTTP_DATE
from bascule.l7.request import Request
from bascule.observe.access_log import ExchangeRecord

INF: Final = float("inf")

# reasons to pause reading from the client
PIPELINE: Final = 1
UPSTREAM: Final = 2
BUFFER: Final = 4
FAIR: Final = 8  # this read's budget is spent: other connections go first (see _feed_fairly)
# A chunked body costs one parser callback per chunk, so a client sending 1-byte chunks could
# hold the loop for a whole 256 KiB read (~40,000 callbacks). Such a read is parsed a slice at
# a time, and after _CHUNK_BUDGET chunks the rest waits for the next loop turn. Slices start
# small (a chunk takes at least 6 bytes, so one slice holds at most ~10 of them) and grow
# while they hold few chunks, so a body of large chunks is still parsed in large pieces.
_SLICE: Final = 64
_SLICE_MAX: Final = 16384  # one slice of 6-byte chunks: ~2,700 callbacks, ~2 ms
_CHUNK_BUDGET: Final = 8
LINGER_SECONDS: Final = 2.0


class HttpSession(asyncio.Protocol):
    __slots__ = (
        "_body_left",
        "_body_reader",
        "_broken",
        "_buf",
        "_chunks",
        "_closing",
        "_eof",
        "_failed",
        "_identity",
        "_identity_host",
        "_idle",
        "_linger",
        "_parsing",
        "_paused",
        "_paused_at",
        "_rate_bytes",
        "_rate_from",
        "_rate_request",
        "_refused",
        "_rest",
        "_rest_at",
        "_slicing",
        "_timer",
        "_timer_at",
        "_url",
        "body_deadline",
        "ctx",
        "exchange",
        "header_deadline",
        "idle_deadline",
        "last_read",
        "loop",
        "peer",
        "peer_port",
        "pending",
        "transport",
        "trusted_peer",
        "write_paused_since",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = ""
        self.peer_port = 0
        self.exchange: Exchange | None = None
        # a list, not a deque: pipelined requests are few (reading pauses behind one), and an
        # empty deque costs 760 bytes on every idle keep-alive connection
        self.pending: list[Request] = []
        self._parsing: Request | None = None
        self._url = b""  # the target of a refused head, for its log line
        self._buf = b""  # an incomplete head; empty between requests
        self._failed = False  # a protocol error: nothing more is parsed
        self._paused = 0
        self._paused_at = 0.0  # when reading last paused, to hold the head deadline meanwhile
        self._eof = False  # the client half-closed: nothing more to read after what is parsed
        self._closing = False
        self._linger: asyncio.TimerHandle | None = None
        self._body_reader: ChunkedDecoder | None = None  # chunked; else `_body_left` bytes
        self._body_left = 0
        self._broken: ProtocolError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = INF
        self.header_deadline = 0.0
        self.idle_deadline = 0.0
        self.body_deadline = 0.0
        self.last_read = 0.0
        self.write_paused_since = 0.0
        self.trusted_peer = False
        self._identity = b""
        self._identity_host: bytes | None = None
        self._idle = False  # between exchanges with nothing buffered: the listener may reclaim it
        self._refused = False  # over its client's connection limit: answered 429
        self._chunks = 0  # body chunks parsed in this loop turn (see _feed_fairly)
        self._slicing = False
        self._rest = b""  # a read whose part from `_rest_at` is left for the next loop turn
        self._rest_at = 0
        # limits.min_body_rate: the request whose body is timed, its window's start and bytes
        self._rate_request: Request | None = None
        self._rate_from = 0.0
        self._rate_bytes = 0

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ctx = self.ctx
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer, self.peer_port = peer[0], peer[1]
            self.trusted_peer = bool(ctx.trusted) and ctx.trusted.contains(self.peer)
        if ctx.draining:  # accepted just before the listener stopped
            self._closing = True
            self.transport.abort()
            return
        self.header_deadline = self.loop.time() + ctx.timeouts.request_header
        self.arm(self.header_deadline)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._failed:
            return
        if self._idle:
            self._idle = False
            self.ctx.registry.busy(self)
        elif self._refused:
            self._answer_refused()
            return
        if not self._slicing and len(data) > _SLICE and self._body_reader is not None:
            self._feed_fairly(data)
            return
        self.last_read = self.loop.time()
        while data and not self._closing and not self._failed:
            data = self._feed_body(data) if self._parsing is not None else self._feed_head(data)
        if not self._slicing and not self._closing:
            self._after_read()

    def _feed_head(self, data: bytes) -> bytes:
        """Parse a head from what is buffered and `data`; returns the bytes after it (b""
        while it is incomplete, or after a refusal)."""
        if self.idle_deadline:
            self.idle_deadline = 0.0
        if not self.header_deadline:
            self.header_deadline = self.loop.time() + self.ctx.timeouts.request_header
            self.arm(self.header_deadline)
        buf = self._buf + data if self._buf else data
        self._buf = b""
        try:
            head = parse_request_head(buf, self.ctx.limits)
            if head is None:
                # the codec refuses a partial head beyond the limits: the buffer is bounded
                self._buf = buf
                return b""
            request = self._request_of(head)
        except ProtocolError as err:
            self._url = _target_of(buf)
            self._failed = True
            self._protocol_error(err)
            return b""
        self._on_head(request)
        return buf[head.end :]

    def _on_head(self, request: Request) -> None:
        self.header_deadline = 0.0
        self._parsing = request
        if request.framing:
            self.body_deadline = self.loop.time() + self.ctx.timeouts.request_body
            self.arm(self.body_deadline)
            if request.framing == CHUNKED:
                self._body_reader = ChunkedDecoder(self.ctx.limits.max_header_size)
            else:
                self._body_left = request.content_length
        else:
            request.complete = True  # nothing follows the head: it can be sent (and retried) whole
        if self.exchange is None and not self.pending:
            self._start(request)
        else:
            self.pending.append(request)
            self.pause_reading(PIPELINE)
        if not request.framing and self._parsing is request:
            self._parsing = None

    def _after_read(self) -> None:
        """Once per read: send the body chunks it yielded in one write, time a new body."""
        exchange = self.exchange
        if exchange is not None and exchange.body_out:
            exchange.flush_request_body()
        request = self._parsing
        if request is not None and request is not self._rate_request and request.framing:
            rate = self.ctx.limits.min_body_rate
            if rate:
                self._rate_request = request
                self._rate_from = now = self.loop.time()
                self._rate_bytes = request.body_received
                self.arm(now + self.ctx.limits.body_rate_window)

    def _feed_fairly(self, data: bytes, pos: int = 0) -> None:
        """Parse a long read of a chunked body in slices, up to _CHUNK_BUDGET chunks per loop
        turn; the rest waits (reading paused) until other ready connections have run."""
        self._slicing = True
        self._chunks = 0
        dense = 0  # chunks parsed in slices that held several: the ones that cost
        end = len(data)
        size = _SLICE
        try:
            while pos < end and not self._closing:
                before = self._chunks
                self.data_received(data[pos : pos + size])
                pos += size
                parsed = self._chunks - before
                if parsed < 2:
                    # few chunks in this slice: large ones, cheap to parse; take more at once
                    size = min(size * 4, _SLICE_MAX)
                    continue
                dense += parsed
                if dense >= _CHUNK_BUDGET:
                    if pos < end:
                        self._rest = data
                        self._rest_at = pos
                        self.pause_reading(FAIR)
                        self.loop.call_soon(self._feed_rest)
                    break
        finally:
            self._slicing = False
        if not self._closing and not self._rest:  # the whole read is parsed: one write
            self._after_read()

    def _feed_rest(self) -> None:
        rest, self._rest = self._rest, b""
        if self._closing:
            return
        self._feed_fairly(rest, self._rest_at)
        if not self._rest:
            self.resume_reading(FAIR)

    def _answer_refused(self) -> None:
        reason = "too many connections from this client"
        self.log_local("-", self._url.decode("latin-1") or "-", 429, reason)
        self.send_error(429, reason)

    def refuse(self) -> None:
        """The listener accepted this connection beyond its client's limit: answer its first
        request with 429, then close."""
        self._refused = True

    def reclaim(self) -> None:
        """The listener needs this idle session's place: close it (nothing is in flight)."""
        self._idle = False
        self._close_now()

    def eof_received(self) -> bool | None:
        # A client may half-close after its last request and still read the answers: keep
        # the socket open for them, and close once the last one is written (exchange_done).
        if self.exchange is not None and self._parsing is None:
            self._eof = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._rest = b""
        self.ctx.registry.closed(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.client_lost()
        self.pending.clear()

    def pause_writing(self) -> None:
        self.write_paused_since = now = self.loop.time()
        self.arm(now + self.ctx.timeouts.idle)  # a client that stops reading is cut then
        if self.exchange is not None:
            self.exchange.client_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused_since = 0.0
        if self.exchange is not None:
            self.exchange.client_resume_writing()

    # ------------------------------------------------------------ bodies

    def _feed_body(self, data: bytes) -> bytes:
        """Read the body of `_parsing` from `data`; returns the bytes after it (b"" while it
        goes on, or after a refusal)."""
        request = self._parsing
        assert request is not None
        reader = self._body_reader
        try:
            if reader is not None:
                pieces, done, rest = reader.feed(data)
                for piece in pieces:
                    self._on_body(request, piece)
            else:
                take = min(self._body_left, len(data))
                self._body_left -= take
                done = not self._body_left
                rest = data[take:] if take < len(data) else b""
                self._on_body(request, data[:take] if rest else data)
        except ProtocolError as err:
            self._body_reader = None
            self._failed = True
            self._protocol_error(err)
            return b""
        if not done:
            return b""
        self._body_reader = None
        self._parsing = None
        self.body_deadline = 0.0
        request.complete = True
        exchange = self.exchange
        if exchange is not None and exchange.request is request:
            exchange.on_request_complete()
        return rest

    def _on_body(self, request: Request, body: bytes) -> None:
        self._chunks += 1
        request.body_received += len(body)
        limit = self.ctx.limits.max_request_body
        if limit and request.body_received > limit:
            raise ProtocolError("request body too large", 413)
        exchange = self.exchange
        if exchange is not None and exchange.request is request:
            exchange.on_request_body(body)
        else:
            request.body.append(body)
            request.body_buffered += len(body)

    # ------------------------------------------------------------ request rules

    def _request_of(self, head: RequestHead) -> Request:
        """The request the exchange serves: the codec's head under the listener's rules (no
        fragment, the path normalised, underscored fields handled). Raises ProtocolError."""
        request = Request(head, time.monotonic())
        target = request.target
        if FRAGMENT in target:
            # RFC 9112 §3.2: no fragment; servers differ on where the path ends if one is sent
            raise ProtocolError("fragment (#) in the request target")
        if request.host_raw:
            # the host's syntax (RFC 3986), stricter than the codec's, is what routes match
            request.host = route_host(request.host_raw)
        ctx = self.ctx
        if ctx.underscores != "allow":
            request.headers = drop_underscored(request.headers, ctx.underscores)
        path = request.path
        if path != "*":
            normal = normalize_path(
                path, ctx.normalize_path, ctx.merge_slashes, ctx.escaped_slashes
            )
            if normal != path:
                # what the route matches is what goes upstream and into the access log
                request.path = normal
                _, mark, query = target.partition(b"?")
                request.target = normal.encode("latin-1") + mark + query
        return request

    def identity(self, host: bytes) -> bytes:
        """The client-identity fields bascule adds for an untrusted client, per session.

        They depend only on the peer (fixed for the session) and the Host (nearly always the
        same on one connection), so they are built once and reused.
        """
        if host == self._identity_host:
            return self._identity
        ctx = self.ctx
        fwd = ctx.forwarded
        peer = self.peer.encode()
        fields: list[bytes] = []
        if fwd.x_forwarded_for:
            fields.append(b"X-Forwarded-For: %s\r\n" % peer)
        if fwd.x_forwarded_proto:
            fields.append(b"X-Forwarded-Proto: http\r\n")
        if fwd.x_forwarded_host and host:
            fields.append(b"X-Forwarded-Host: %s\r\n" % host)
        if fwd.forwarded:
            element = forwarded_element(
                self.peer, ctx.server_name, "http", host.decode("latin-1") if host else None
            )
            fields.append(b"Forwarded: %s\r\n" % element)
        if fwd.via:
            fields.append(ctx.via_line)
        self._identity_host = host
        self._identity = b"".join(fields)
        return self._identity

    # ------------------------------------------------------------ exchanges

    def _start(self, request: Request) -> None:
        exchange = Exchange(self, request)
        self.exchange = exchange
        exchange.start()

    def exchange_done(self, exchange: Exchange, close: bool) -> None:
        """The exchange answered and read its whole request: go on with the next, or close."""
        if self.exchange is exchange:
            self.exchange = None
        if self._closing:
            return
        if close or not exchange.request.keep_alive or self.ctx.draining:
            if self._parsing is None and not self.pending and not self._paused:
                # Everything the client sent has been read and answered: a plain close
                # cannot reset the response, so no lingering is needed.
                self._close_now()
            else:
                self.close_gracefully()
            return
        self.resume_reading(UPSTREAM | BUFFER)
        if self.pending:
            # requests parsed before the one that broke are answered first, in order
            request = self.pending.pop(0)
            if not self.pending and self._broken is None:
                self.resume_reading(PIPELINE)
            self._start(request)
            return
        if self._broken is not None:
            err, self._broken = self._broken, None
            self.log_local("-", self._url.decode("latin-1"), err.status, err.reason)
            self.send_error(err.status, err.reason)
            return
        if self._eof:
            # A half-closed client sends nothing more: a head it started will never end.
            self._close_now()
            return
        self.resume_reading(PIPELINE)
        if self._parsing is None and not self.header_deadline:
            self.idle_deadline = self.loop.time() + self.ctx.timeouts.idle
            self.arm(self.idle_deadline)
            self._idle = True
            self.ctx.registry.idle(self)

    # ------------------------------------------------------------ errors and closing

    def _protocol_error(self, err: ProtocolError) -> None:
        exchange = self.exchange
        parsing = self._parsing
        self.pause_reading(PIPELINE)
        if exchange is not None:
            if parsing is not None and exchange.request is parsing:
                # the broken part is the body of the request being served
                exchange.client_failed(err.status, err.reason)
            else:
                self._broken = err  # answered once the request in progress is done
            return
        method = parsing.method if parsing is not None else "-"
        uri = (
            parsing.target.decode("latin-1") if parsing is not None else self._url.decode("latin-1")
        )
        self.log_local(method, uri, err.status, err.reason)
        self.send_error(err.status, err.reason)

    def send_error(self, status: int, reason: str) -> None:
        body = error_body(status, reason)
        self.write(simple_response(status, body, close=True, date=HTTP_DATE.value()))
        self.close_gracefully()

    def log_local(self, method: str, uri: str, status: int, error: str) -> None:
        log = self.ctx.access_log
        if log.enabled:
            r = ExchangeRecord(self.ctx.name, self.peer, method, uri, status)
            r.error = error
            log.log(r)

    def write(self, data: bytes) -> None:
        if not self._closing:
            self.transport.write(data)

    def close_gracefully(self) -> None:
        """Stop reading requests, flush what is written, then close.

        Closing a socket with unread input makes the kernel send a reset that can destroy the
        response in flight (RFC 9112 §9.6), so bascule shuts its side, drains the client's
        for a short while, then closes.
        """
        if self._closing:
            return
        self._closing = True
        transport = self.transport
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                transport.abort()
                return
            self._linger = self.loop.call_later(LINGER_SECONDS, self._close_now)
        else:
            self._close_now()

    def _close_now(self) -> None:
        """Close once what is written has gone out, and not wait for that for ever.

        `close()` waits for the write buffer to drain: a client that never reads would hold
        the socket open. After the idle timeout it is cut.
        """
        self._closing = True
        transport = self.transport
        transport.close()
        if transport.get_write_buffer_size():
            if self._linger is not None:
                self._linger.cancel()
            self._linger = self.loop.call_later(self.ctx.timeouts.idle, transport.abort)

    def abort(self) -> None:
        self._closing = True
        self.transport.abort()

    # ------------------------------------------------------------ flow control

    def pause_reading(self, reason: int) -> None:
        if not self._paused and not self._closing:
            self.transport.pause_reading()
            self._paused_at = self.loop.time()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._closing:
                self.transport.resume_reading()
                if self.header_deadline:
                    # The rest of the head may have waited in the kernel while bascule did
                    # not read: that time is bascule's, not the client's.
                    self.header_deadline += self.loop.time() - self._paused_at
                    self.arm(self.header_deadline)

    # ------------------------------------------------------------ deadlines

    def arm(self, when: float) -> None:
        if when < self._timer_at and not self._closing:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._on_timer)

    def _check_body_rate(self, now: float) -> float:
        """limits.min_body_rate: -1 when the body was cut, else when to look again."""
        request = self._rate_request
        if request is None or request is not self._parsing:
            self._rate_request = None  # that body is complete (or the session moved on)
            return INF
        limits = self.ctx.limits
        window = limits.body_rate_window
        if self._paused:
            # bascule itself is not reading (a full upstream, say): not the client's fault
            self._rate_from = now
            self._rate_bytes = request.body_received
            return now + window
        end = self._rate_from + window
        if end > now:
            return end
        if request.body_received - self._rate_bytes < limits.min_body_rate * (
            now - self._rate_from
        ):
            self._rate_request = None
            reason = "request body too slow"
            exchange = self.exchange
            if exchange is not None and exchange.request is request:
                exchange.client_failed(408, reason)
            else:
                self.log_local(request.method, request.target.decode("latin-1"), 408, reason)
                self.abort()
            return -1
        self._rate_from = now
        self._rate_bytes = request.body_received
        return now + window

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = INF
        if self._closing:
            return
        now = self.loop.time()
        nxt = INF
        d = self.header_deadline
        if d and not self._paused:  # held while paused; resume_reading moves and re-arms it
            if d <= now:
                self.header_deadline = 0.0
                if self.exchange is None:
                    uri = _target_of(self._buf).decode("latin-1")
                    self.log_local("-", uri, 408, "request header timeout")
                    self.send_error(408, "request header timeout")
                    return
                # answered once the exchange in progress is done; its own deadlines go on
                self._url = _target_of(self._buf)  # for that answer's log line
                self._broken = ProtocolError("request header timeout", 408)
                self.pause_reading(PIPELINE)
            else:
                nxt = d
        d = self.idle_deadline
        if d:
            if d <= now:
                self._close_now()
                return
            nxt = min(nxt, d)
        if self.body_deadline and self._parsing is not None:
            if self._paused:
                d = now + self.ctx.timeouts.request_body
            else:
                d = self.last_read + self.ctx.timeouts.request_body
            if d <= now:
                self.body_deadline = 0.0
                if self.exchange is not None and self.exchange.request is self._parsing:
                    self.exchange.client_failed(408, "request body timeout")
                else:
                    parsing = self._parsing
                    self.log_local(
                        parsing.method,
                        parsing.target.decode("latin-1"),
                        408,
                        "request body timeout",
                    )
                    self.abort()
                return
            nxt = min(nxt, d)
        if self._rate_request is not None:
            d = self._check_body_rate(now)
            if d < 0:
                return
            nxt = min(nxt, d)
        if self.write_paused_since:
            d = self.write_paused_since + self.ctx.timeouts.idle
            if d <= now:
                self.abort()
                return
            nxt = min(nxt, d)
        exchange = self.exchange
        if exchange is not None:
            d = exchange.check_deadlines(now)
            if d < 0:
                return
            nxt = min(nxt, d)
        if nxt < INF:
            self.arm(nxt)


def _target_of(buf: bytes) -> bytes:
    """The target of a refused head as far as it arrived, for the log line ("" if none)."""
    line = buf.lstrip(b"\r\n")[:8192]
    line = line[: line.find(b"\r\n")] if b"\r\n" in line else line
    parts = line.split(b" ", 2)
    return parts[1] if len(parts) > 1 else b""
