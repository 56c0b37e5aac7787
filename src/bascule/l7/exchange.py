"""One exchange: a request routed to a cluster, sent to an endpoint, its response relayed.

Rules of this module:
- The flow is listener → route → cluster → balancer → endpoint, in `start` and `_dispatch`.
- Bodies stream both ways with backpressure: a full upstream buffer pauses client reads, a
  full client buffer pauses upstream reads. Memory per exchange is a few read buffers.
- A retry happens only for idempotent methods (RFC 9110 §9.2.2), before any response byte
  reached the client, when the request body is empty or wholly held, to an endpoint not yet
  tried, at most `retries.attempts` times (seed 003 §5).
- A backend connection returns to its pool only when exactly the framed request body was
  sent (`_request_fully_sent`) and the whole response was read: a connection left mid-request
  would run the rest of that body, or eat the start of the next client's request.
- Framing is decided here, per hop: the client's Content-Length passes through, a chunked
  body is re-chunked (or sent with a Content-Length when it is already complete), and a
  response is sent with its Content-Length, chunked, or close-delimited for HTTP/1.0 clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

from bascule.balance.endpoint import Endpoint
from bascule.codec.headers import (
    HOP_BY_HOP,
    IDENTITY,
    UNDERSCORE_IDENTITY,
    client_from_xff,
    cookie_values,
    forwarded_element,
    split_list,
)
from bascule.codec.http1 import (
    CHUNKED,
    CONTINUE_100,
    IDEMPOTENT_METHODS,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Field,
    ResponseHead,
    error_body,
    simple_response,
)
from bascule.codec.path import resolve_path
from bascule.l7.h1.client import UpstreamConnection
from bascule.l7.http_date import HTTP_DATE
from bascule.l7.retry import may_retry
from bascule.l7.router import DIRECT, REDIRECT, Route
from bascule.observe.access_log import ExchangeRecord
from bascule.upstream.admission import Refuse, admit
from bascule.upstream.cluster import COOKIE, HEADER, QUERY, SOURCE_IP, URI

if TYPE_CHECKING:
    from bascule.balance.base import Accept
    from bascule.l7.request import Request
    from bascule.l7.session import HttpSession
    from bascule.upstream.cluster import Cluster

INF: Final = float("inf")
_BUFFER_HIGH: Final = 64 * 1024
_UPSTREAM: Final = 2  # session pause reasons (see session.py)
_BUFFER: Final = 4
_CRLF: Final = b"\r\n"
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})
# From a client outside trusted_proxies, every forwarding and identity field is replaced (Via
# is kept: it records the path, not the client). From any peer, the underscore spellings of
# identity fields are dropped: a CGI/WSGI backend would read `X_Forwarded_For` as the real one.
_DROP_UNTRUSTED: Final = HOP_BY_HOP | IDENTITY | UNDERSCORE_IDENTITY
_DROP_TRUSTED: Final = HOP_BY_HOP | UNDERSCORE_IDENTITY
# What a client learns of a gateway failure. The reason itself names endpoints, errno text
# or clusters: that is for the operator (the access log's `error`), not for whoever asks.
_GATEWAY_PHRASES: Final = {
    502: "no valid answer from the upstream server",
    503: "no upstream server is available, try again later",
    504: "the upstream server did not answer in time",
}
# Response fields bascule re-frames or drops whatever the response: hop-by-hop ones (RFC 9110
# §7.6.1) and Content-Length, which is written once with the framing bascule chooses.
_RESPONSE_DROP: Final = HOP_BY_HOP | {b"content-length"}


def _drop_fields(block: bytes, fields: list[Field], names: frozenset[bytes]) -> bytes:
    """The field lines of `block` (one per entry of `fields`, CRLF-ended) whose lower-cased
    names are not in `names`; the block itself when it keeps them all."""
    for lname, _, _ in fields:
        if lname in names:
            break
    else:
        return block
    lines = block.split(b"\r\n")
    return b"".join(
        [
            line + b"\r\n"
            for line, (lname, _, _) in zip(lines, fields, strict=False)
            if lname not in names
        ]
    )


class Exchange:
    __slots__ = (
        "_head",
        "_task",
        "body_declared",
        "body_out",
        "body_sent",
        "bytes_sent",
        "client_chunked",
        "close_after",
        "cluster",
        "conn",
        "ctx",
        "deadline_response",
        "deadline_total",
        "endpoint",
        "error",
        "finished",
        "loop",
        "out",
        "queued",
        "replay",
        "request",
        "request_sent",
        "response_done",
        "response_started",
        "retries",
        "route",
        "session",
        "status",
        "sticky",
        "t_dispatch",
        "t_header",
        "t_upstream",
        "tried",
        "until_close",
        "upstream_read_paused",
        "upstream_stalled_since",
        "waiting_body",
    )

    def __init__(self, session: HttpSession, request: Request) -> None:
        self.session = session
        self.ctx = session.ctx
        self.loop = session.loop
        self.request = request
        self.route: Route | None = None
        self.cluster: Cluster | None = None
        self.endpoint: Endpoint | None = None
        self.conn: UpstreamConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._head = b""
        self.tried: list[Endpoint] = []
        self.retries = 0
        self.replay: list[bytes] | None = None
        self.out: list[bytes] = []
        self.body_out: list[bytes] = []  # chunk data of the current read, sent as one chunk
        self.status = 0
        self.bytes_sent = 0
        self.body_sent = 0  # request body bytes written upstream on the current connection
        self.body_declared = 0  # what the upstream head framed: a length, or -1 for chunked
        self.client_chunked = False
        self.until_close = False
        self.close_after = False
        self.request_sent = False
        self.response_started = False
        self.response_done = False
        self.finished = False
        self.waiting_body = False
        self.upstream_read_paused = False
        self.upstream_stalled_since = 0.0  # the endpoint stopped reading the request body
        self.deadline_response = 0.0
        self.deadline_total = 0.0
        self.t_dispatch = 0.0
        self.t_upstream = 0.0
        self.t_header = 0.0
        self.error = ""
        self.queued: asyncio.TimerHandle | None = None  # waiting in the cluster's queue
        self.sticky: bytes | None = None  # sticky clusters: the valid cookie value the client sent

    # ------------------------------------------------------------ routing

    def start(self) -> None:
        request = self.request
        ctx = self.ctx
        route = ctx.router.match(
            request.method, request.host, request.path, request.query, request.header_values
        )
        if route is None:
            self.respond_local(404, error_body(404, "no route"), "no route")
            return
        self.route = route
        if route.kind == DIRECT:
            d = route.direct
            assert d is not None
            self.respond_local(d.status, d.body, "", content_type=d.content_type)
            return
        if route.kind == REDIRECT:
            assert route.redirect is not None
            location = route.redirect_location("http", request.host, request.path, request.query)
            self.respond_local(
                route.redirect.status, b"", "", extra=[(b"Location", location.encode("latin-1"))]
            )
            return
        self.cluster = ctx.clusters[route.pick_cluster()]
        total = self.cluster.spec.timeouts.total
        if total:
            self.deadline_total = self.loop.time() + total
            self.session.arm(self.deadline_total)
        if route.buffer_request and not request.complete:
            limit = route.max_request_body or ctx.limits.max_buffered_body
            if request.framing == LENGTH and request.content_length > limit:
                self.client_failed(413, "request body too large to buffer")
                return
            if request.expect_continue and request.version == "1.1":
                request.expect_continue = False
                self.session.write(CONTINUE_100)
            self.waiting_body = True
            return
        self._dispatch()

    def _accept(self, endpoint: Endpoint) -> bool:
        return endpoint not in self.tried

    def _dispatch(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        if cluster.extended:
            # Keys, stickiness, limits: off the plain path, which stays one flag read longer.
            endpoint = self._pick_extended(cluster)
            if endpoint is None:
                return
        else:
            endpoint = cluster.pick(None, self._accept if self.tried else None)
            if endpoint is None:
                if self.tried:
                    self.respond_error(502, self.error or "no endpoint left to retry")
                else:
                    self.respond_error(503, f"no healthy endpoint in cluster {cluster.name}")
                return
        self.endpoint = endpoint
        endpoint.active += 1
        self.t_dispatch = time.monotonic()
        if self.tried:
            # Counted once an endpoint is there to retry on: a retry that found none left
            # did not happen.
            self.retries += 1
        self.tried.append(endpoint)
        pool = cluster.pools[endpoint]
        conn = pool.acquire()
        if conn is not None:
            assert isinstance(conn, UpstreamConnection)
            self._attach(conn)
            return
        self._connect(cluster, endpoint)

    def _pick_extended(self, cluster: Cluster) -> Endpoint | None:
        """Pick with a key, a sticky cookie and the cluster's limits; None when answered
        (503/502) or queued. A picked endpoint counts against the cluster's limits."""
        accept = self._accept if self.tried else None

        def pick() -> Endpoint | None:
            endpoint = self._sticky_pick(cluster, accept) if cluster.sticky is not None else None
            if endpoint is None:
                key = self._hash_key(cluster) if cluster.keyed else None
                endpoint = cluster.pick(key, accept)
            return endpoint

        verdict = admit(cluster, pick, bool(self.tried))
        if isinstance(verdict, Endpoint):
            return verdict
        if isinstance(verdict, Refuse):
            self.respond_error(
                verdict.status, verdict.reason or self.error or "no endpoint left to retry"
            )
        else:
            self._enqueue(cluster)
        return None

    def _hash_key(self, cluster: Cluster) -> bytes | None:
        """The bytes a keyed balancer hashes for this request; None (any endpoint) if absent."""
        kind = cluster.hash_kind
        request = self.request
        if kind == SOURCE_IP:
            return self.session.peer.encode()
        if kind == URI:
            return request.target
        if kind == HEADER:
            values = request.header_values(cluster.hash_name)
            return b",".join(values) if values else None
        if kind == COOKIE:
            return cookie_value(request, cluster.hash_name)
        if kind == QUERY:
            name = cluster.hash_name.decode("latin-1")
            for part in request.query.split("&"):
                k, _, v = part.partition("=")
                if k == name:
                    return v.encode("latin-1")
        return None

    def _sticky_pick(self, cluster: Cluster, accept: Accept | None) -> Endpoint | None:
        """The endpoint the client's sticky cookie names, if it may take this request."""
        assert cluster.sticky is not None
        value = cookie_value(self.request, cluster.sticky.cookie.encode())
        self.sticky = b""  # answer with a cookie unless the one sent already names the endpoint
        if value is None:
            return None
        endpoint = cluster.sticky_endpoint(value)
        if endpoint is None:
            return None
        self.sticky = value
        if endpoint.available and (accept is None or accept(endpoint)):
            return endpoint
        return None

    def _sticky_header(self, parts: list[bytes]) -> None:
        """Add Set-Cookie when the endpoint that answered is not the one the cookie named."""
        cluster = self.cluster
        endpoint = self.tried[-1] if self.tried else None
        if cluster is None or cluster.sticky is None or endpoint is None:
            return
        value = cluster.sticky_value(endpoint)
        if self.sticky == value:
            return
        spec = cluster.sticky
        cookie = b"%s=%s; Path=%s; HttpOnly" % (
            spec.cookie.encode(),
            value,
            spec.path.encode("latin-1"),
        )
        if spec.max_age is not None:
            cookie += b"; Max-Age=%d" % int(spec.max_age)
        parts.append(b"Set-Cookie: %s\r\n" % cookie)

    def _enqueue(self, cluster: Cluster) -> None:
        """Wait for a free slot, up to `queue_timeout` (admission said there is room)."""
        cluster.waiting.append(self)
        cluster.queued += 1
        self.queued = self.loop.call_later(cluster.spec.limits.queue_timeout, self._queue_expired)

    def wake(self) -> bool:
        """A slot freed up in the cluster (the Waiter protocol): try again, unless gone."""
        timer = self.queued
        if timer is None or self.finished:
            return False
        timer.cancel()
        self.queued = None
        self._dispatch()
        return True

    def _queue_expired(self) -> None:
        self.queued = None
        cluster = self.cluster
        if cluster is None or self.finished:
            return
        try:
            cluster.waiting.remove(self)
        except ValueError:
            pass
        cluster.queue_timeouts += 1
        self.respond_error(503, f"no endpoint of cluster {cluster.name} freed up in time")

    def _connect(self, cluster: Cluster, endpoint: Endpoint) -> None:
        pool = cluster.pools[endpoint]
        loop = self.loop

        def done(conn: UpstreamConnection | None, status: int, reason: str) -> None:
            if conn is None:
                if self.endpoint is endpoint and not self.finished:
                    self.upstream_error(status, reason, True)
            elif self.finished or self.endpoint is not endpoint:
                pool.release(conn, loop.time())  # a fresh connection is still good for the next
            else:
                self._attach(conn)

        self._task = self.ctx.connector.open(
            pool,
            endpoint,
            lambda: UpstreamConnection(pool, endpoint, loop),
            done,
            timeout=cluster.spec.timeouts.connect,
            client=self.session.peer,
        )

    # ------------------------------------------------------------ request to upstream

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        request = self.request
        conn.lend(self, request.method)
        self.t_upstream = time.monotonic()
        if self.session.write_paused_since:
            # the client stopped reading during an earlier exchange: read the endpoint only
            # as fast as the client drains, from the first byte
            self.client_pause_writing()
        transport = conn.transport
        assert transport is not None
        if request.complete:
            body = self.replay if self.replay is not None else list(request.body)
            request.body.clear()
            request.body_buffered = 0
            if request.method in IDEMPOTENT_METHODS:
                self.replay = body
            length = sum(map(len, body))
            if not self._head or not request.host_raw:  # a synthesized Host names the endpoint
                self._head = self._request_head(length, False)
            self.body_declared = request.content_length if request.framing == LENGTH else length
            self.body_sent = length
            if body:
                transport.writelines([self._head, *body])
            else:
                transport.write(self._head)
            self._request_finished()
        else:
            self._head = self._request_head(0, request.framing == CHUNKED)
            out = [self._head]
            if request.framing == CHUNKED:
                self.body_declared = -1
                for chunk in request.body:
                    out += (b"%x\r\n" % len(chunk), chunk, _CRLF)
            else:
                self.body_declared = request.content_length
                out.extend(request.body)
            self.body_sent = request.body_buffered
            request.body.clear()
            request.body_buffered = 0
            transport.writelines(out)
            self.session.resume_reading(_BUFFER)

    def _request_finished(self) -> None:
        self.request_sent = True
        timeout = self.cluster.spec.timeouts.response_header if self.cluster else 0.0
        if timeout and not self.response_started:
            self.deadline_response = self.loop.time() + timeout
            self.session.arm(self.deadline_response)

    def on_request_body(self, data: bytes) -> None:
        if self.response_done or self.finished:
            return  # answered already: the rest of the body is read and dropped
        request = self.request
        conn = self.conn
        if conn is not None and conn.transport is not None:
            self.body_sent += len(data)
            if request.framing == CHUNKED:
                # One read can hold thousands of tiny chunks: the session sends them once
                # it has parsed the read (flush_request_body), as one chunk.
                self.body_out.append(data)
            else:
                conn.transport.write(data)
            return
        request.body.append(data)
        request.body_buffered += len(data)
        if self.waiting_body:
            route = self.route
            assert route is not None
            limit = route.max_request_body or self.ctx.limits.max_buffered_body
            if request.body_buffered > limit:
                self.client_failed(413, "request body too large to buffer")
        elif request.body_buffered > _BUFFER_HIGH:
            self.session.pause_reading(_BUFFER)

    def flush_request_body(self) -> None:
        """Send the chunk data collected from one read as one chunk, in one write."""
        out = self.body_out
        self.body_out = []
        conn = self.conn
        if conn is None or conn.transport is None or self.response_done or self.finished:
            return  # the endpoint's connection is gone or the answer is in: dropped, as above
        data = out[0] if len(out) == 1 else b"".join(out)
        conn.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def on_request_complete(self) -> None:
        if self.body_out:
            self.flush_request_body()
        if self.response_done:
            self._finish()
            return
        if self.finished:
            return
        if self.waiting_body:
            self.waiting_body = False
            self._dispatch()
            return
        conn = self.conn
        if conn is not None and conn.transport is not None:
            if self.request.framing == CHUNKED:
                conn.transport.write(LAST_CHUNK)
            self._request_finished()

    def _request_head(self, body_length: int, chunked: bool) -> bytes:
        """The head bascule sends upstream: hop-by-hop fields out, client identity in."""
        request = self.request
        session = self.session
        route = self.route
        assert route is not None
        target = request.target
        if route.rewrite_prefix is not None:
            path = route.rewrite(request.path)
            ctx = self.ctx
            if ctx.normalize_path:
                # `/api..` under a prefix `/api` rewritten to `/v1/` would be `/v1/..`
                path = resolve_path(path, ctx.merge_slashes)
            target = (path + ("?" + request.query if request.query else "")).encode("latin-1")
        edits = route.request_edits
        if session.trusted_peer:
            lines, identity = self._trusted_fields(edits.remove)
        else:
            # The common case: an untrusted client, whose forwarding fields are all dropped,
            # and an identity block that is the same for every request of the session.
            drop = _DROP_UNTRUSTED
            if request.conn_tokens or edits.remove:
                drop = drop | request.conn_tokens | edits.remove
            complete = request.complete
            lines = [
                b"%s: %s\r\n" % (name, value)
                for lname, name, value in request.headers
                if lname not in drop and not (complete and lname == b"expect")
            ]
            identity = session.identity(request.host_raw)
        lines.insert(0, b"%s %s HTTP/1.1\r\n" % (request.method_raw, target))
        if not request.host_raw and self.endpoint is not None:
            # An HTTP/1.0 request may come without Host; bascule speaks HTTP/1.1 upstream,
            # which requires one: name the endpoint, as nginx names its upstream.
            lines.insert(1, b"Host: %s\r\n" % self.endpoint.address.encode())
        lines.append(identity)
        if request.framing == CHUNKED:
            if chunked:
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                lines.append(b"Content-Length: %d\r\n" % body_length)
        if edits.set or edits.add:
            lines += [b"%s: %s\r\n" % pair for pair in edits.set]
            lines += [b"%s: %s\r\n" % pair for pair in edits.add]
        lines.append(_CRLF)
        return b"".join(lines)

    def _trusted_fields(self, removed: frozenset[bytes]) -> tuple[list[bytes], bytes]:
        """Fields from a trusted proxy: its forwarding fields are kept and appended to."""
        request = self.request
        session = self.session
        ctx = self.ctx
        fwd = ctx.forwarded
        drop = _DROP_TRUSTED
        if request.conn_tokens or removed:
            drop = drop | request.conn_tokens | removed
        lines: list[bytes] = []
        prior_xff: list[bytes] = []
        prior_fwd: list[bytes] = []
        proto = b"http"
        xhost = b""
        for lname, name, value in request.headers:
            if lname in drop or (lname == b"expect" and request.complete):
                continue
            if lname == b"x-forwarded-for":
                prior_xff.append(value)
            elif lname == b"forwarded":
                prior_fwd.append(value)
            elif lname == b"x-forwarded-proto":
                proto = value
            elif lname == b"x-forwarded-host":
                xhost = value
            else:
                lines.append(b"%s: %s\r\n" % (name, value))
        identity: list[bytes] = []
        peer = session.peer.encode()
        if fwd.x_forwarded_for:
            if prior_xff:
                identity.append(b"X-Forwarded-For: %s, %s\r\n" % (b", ".join(prior_xff), peer))
            else:
                identity.append(b"X-Forwarded-For: %s\r\n" % peer)
        if fwd.x_forwarded_proto:
            identity.append(b"X-Forwarded-Proto: %s\r\n" % proto)
        host = request.host_raw
        if fwd.x_forwarded_host and (xhost or host):
            identity.append(b"X-Forwarded-Host: %s\r\n" % (xhost or host))
        if fwd.forwarded:
            element = forwarded_element(
                session.peer, ctx.server_name, "http", host.decode("latin-1") if host else None
            )
            if prior_fwd:
                element = b", ".join(prior_fwd) + b", " + element
            identity.append(b"Forwarded: %s\r\n" % element)
        if fwd.via:
            identity.append(ctx.via_line)
        return lines, b"".join(identity)

    # ------------------------------------------------------------ response from upstream

    def on_response_head(self, conn: UpstreamConnection, head: ResponseHead, buf: bytes) -> None:
        """Relay a response head: its fields nearly verbatim, framing and hop-by-hop redone.

        `head` is the codec's verdict on the head at the start of `buf`: the field lines are
        relayed as received, less the ones bascule drops, with framing written once here.
        """
        if conn is not self.conn or self.finished:
            return
        request = self.request
        status = head.status
        start = head.fields_start
        reason = buf[8 : start - 2]  # b" 200 OK": the status line after its version
        block = buf[start : head.end - 2]  # the field lines, each ending in CRLF
        if status < 200:
            if status == 101:
                self.upstream_failed(conn, "endpoint switched protocols unasked")
            elif request.version == "1.1" and not self.response_started:
                block = _drop_fields(block, head.fields, _RESPONSE_DROP)
                self.out.append(b"HTTP/1.1%s\r\n%s\r\n" % (reason, block))
            return
        route = self.route
        assert route is not None
        edits = route.response_edits
        drop = _RESPONSE_DROP
        tokens = head.conn_tokens
        if tokens:
            drop = drop | (tokens - _PLAIN_CONNECTION)
        if edits.remove:
            drop = drop | edits.remove
        block = _drop_fields(block, head.fields, drop)
        now = self.loop.time()
        self.t_header = time.monotonic()
        self.deadline_response = 0.0
        self.status = status
        parts = [b"HTTP/1.1", reason, b"\r\n", block]
        framing = head.framing
        if framing in (NO_BODY, LENGTH):
            if head.content_length >= 0:
                parts.append(b"Content-Length: %d\r\n" % head.content_length)
        else:
            # chunked or close-delimited upstream: re-chunk for 1.1, close-delimit for 1.0
            self.until_close = framing == UNTIL_CLOSE
            if request.version == "1.1":
                self.client_chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_after = True
        client_11 = request.version == "1.1"
        if not request.keep_alive or self.ctx.draining:
            self.close_after = True
        if self.close_after:
            parts.append(b"Connection: close\r\n")
        elif not client_11:
            parts.append(b"Connection: keep-alive\r\n")
        if self.ctx.forwarded.via:
            parts.append(self.ctx.via_line)
        if edits.set or edits.add:
            parts += [b"%s: %s\r\n" % pair for pair in edits.set]
            parts += [b"%s: %s\r\n" % pair for pair in edits.add]
        if self.sticky is not None:
            self._sticky_header(parts)
        parts.append(_CRLF)
        self.response_started = True
        self.out.append(b"".join(parts))
        idle = self.cluster.spec.timeouts.idle if self.cluster else 0.0
        if idle:
            self.session.arm(now + idle)

    def on_response_body(self, data: bytes) -> None:
        if self.finished:
            return
        self.bytes_sent += len(data)
        if self.client_chunked:
            self.out += (b"%x\r\n" % len(data), data, _CRLF)
        else:
            self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            if len(out) == 1:
                self.session.write(out[0])
            elif len(out) == 2 and len(out[1]) < 4096:
                # a head and a small body: one write(2) is cheaper than a writev(2)
                self.session.write(out[0] + out[1])
            elif not self.session._closing:
                self.session.transport.writelines(out)

    def on_response_complete(self, conn: UpstreamConnection) -> None:
        if conn is not self.conn or self.finished:
            return
        if self.client_chunked:
            self.out.append(LAST_CHUNK)
        self.flush()
        self.response_done = True
        self._release_upstream(conn.keep_alive and self._request_fully_sent(), self.status < 500)
        if self.request.complete:
            self._finish()
        else:
            # The answer came before the whole request: drop the rest of the body, then go on.
            self.session.resume_reading(_UPSTREAM | _BUFFER)

    def _request_fully_sent(self) -> bool:
        """Exactly the framed request body went upstream: a length-framed body to its last
        byte, a chunked one to its last chunk (which is what sets `request_sent`)."""
        if not self.request_sent:
            return False
        declared = self.body_declared
        return declared < 0 or self.body_sent == declared

    def _release_upstream(self, reusable: bool, ok: bool = False) -> None:
        """Give the connection back (to its pool, or closed) and the endpoint its verdict."""
        conn = self.conn
        endpoint = self.endpoint
        cluster = self.cluster
        if endpoint is not None:
            endpoint.active -= 1
            endpoint.observe(time.monotonic() - self.t_dispatch, ok)
            self.endpoint = None
            if cluster is not None and cluster.extended:
                cluster.released(endpoint, ok)
        elif self.queued is not None:  # the client left, or the exchange failed, while queued
            self.queued.cancel()
            self.queued = None
            if cluster is not None:
                try:
                    cluster.waiting.remove(self)  # its place in max_pending is free again
                except ValueError:
                    pass
        self.upstream_stalled_since = 0.0
        if conn is None:
            return
        self.conn = None
        conn.detach()
        if self.upstream_read_paused and conn.transport is not None and not conn.closed:
            conn.transport.resume_reading()
            self.upstream_read_paused = False
        # A pool may be gone: discovery retired the endpoint while this exchange used it.
        pool = cluster.pools.get(endpoint) if endpoint is not None and cluster is not None else None
        if reusable and not conn.closed and pool is not None:
            pool.release(conn, self.loop.time())
        else:
            conn.close()

    # ------------------------------------------------------------ failures

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        """The endpoint closed the connection before its response was complete."""
        if conn is not self.conn or self.finished:
            return
        if self.response_started and self.until_close:
            conn.keep_alive = False  # the close was the end of the body
            self.on_response_complete(conn)
            return
        if self.response_started:
            self.error = "endpoint closed the connection mid-response"
            self._abort()
            return
        self.upstream_error(502, "endpoint closed the connection before responding", True)

    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None:
        """The endpoint sent something that is not HTTP: 502, no retry."""
        if conn is not self.conn or self.finished:
            return
        if self.response_started:
            self.error = reason
            self._abort()
            return
        self.upstream_error(502, reason, False)

    def upstream_error(self, status: int, reason: str, retryable: bool) -> None:
        self.error = reason
        self._release_upstream(False)
        self.out.clear()
        if retryable and self._can_retry():
            self._dispatch()
            return
        self.respond_error(status, reason)

    def _can_retry(self) -> bool:
        cluster = self.cluster
        request = self.request
        return cluster is not None and may_retry(
            self.retries,
            cluster.spec.retries.attempts,
            method=request.method,
            response_started=self.response_started,
            request_complete=request.complete,
            body_replayable=request.framing == NO_BODY or self.replay is not None,
        )

    def check_deadlines(self, now: float) -> float:
        """Act on an expired upstream deadline (returns -1), else the next one (or INF)."""
        nxt = INF
        d = self.deadline_response
        if d:
            if d <= now:
                self._timeout("endpoint did not answer in time")
                return -1
            nxt = d
        d = self.deadline_total
        if d:
            if d <= now:
                self._timeout("exchange exceeded its total timeout")
                return -1
            nxt = min(nxt, d)
        conn = self.conn
        if self.upstream_stalled_since and conn is not None and self.cluster is not None:
            idle = self.cluster.spec.timeouts.idle
            if idle:
                d = self.upstream_stalled_since + idle
                if d <= now:
                    self._timeout("endpoint stopped reading the request body")
                    return -1
                nxt = min(nxt, d)
        if conn is not None and self.response_started and self.cluster is not None:
            idle = self.cluster.spec.timeouts.idle
            if idle:
                d = (now if self.upstream_read_paused else conn.last_read) + idle
                if d <= now:
                    self._timeout("endpoint went idle mid-response")
                    return -1
                nxt = min(nxt, d)
        return nxt

    def _timeout(self, reason: str) -> None:
        self.error = reason
        if self.response_started:
            self._abort()
            return
        self._release_upstream(False)
        self.respond_error(504, reason)

    def client_failed(self, status: int, reason: str) -> None:
        """The client broke the request mid-way (bad chunk, body too large, too slow)."""
        self.error = reason
        self._release_upstream(False, ok=True)  # not the endpoint's fault
        if self.response_started:
            self._abort()
            return
        self.out.clear()
        self.close_after = True
        self.request.complete = True  # nothing more will be read from this client
        self.respond_error(status, reason)

    def client_lost(self) -> None:
        if self.finished:
            return
        if not self.response_done:
            self.error = self.error or "client closed the connection"
            if not self.response_started:
                self.status = 499  # nginx's code for "client went away"
        self._release_upstream(False, ok=True)
        self.finished = True
        self._log()

    def _abort(self) -> None:
        self._release_upstream(False)
        self.flush()
        self.finished = True
        self._log()
        self.session.abort()

    # ------------------------------------------------------------ local responses

    def respond_error(self, status: int, reason: str) -> None:
        """An error answer: `reason` goes to the access log; a gateway error's body is generic."""
        extra = [(b"Retry-After", b"1")] if status == 503 else None
        detail = _GATEWAY_PHRASES.get(status, reason)
        self.respond_local(status, error_body(status, detail), reason, extra=extra)

    def respond_local(
        self,
        status: int,
        body: bytes,
        reason: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        """An answer bascule writes itself, framed for this request (HEAD, Connection)."""
        request = self.request
        if reason:
            self.error = reason
        close = self.close_after or not request.keep_alive or self.ctx.draining
        head_only = request.method == "HEAD"
        response = simple_response(
            status,
            body,
            close=close,
            extra=extra,
            head_only=head_only,
            content_type=content_type,
            date=HTTP_DATE.value(),
        )
        self.respond_raw(response, status, close, 0 if head_only else len(body))

    def respond_raw(self, data: bytes, status: int, close: bool, body_length: int) -> None:
        self.status = status
        self.close_after = close or self.close_after
        self.response_started = True
        self.response_done = True
        self.bytes_sent = body_length
        self.session.write(data)
        if self.request.complete:
            self._finish()
        else:
            self.session.resume_reading(_UPSTREAM | _BUFFER)

    # ------------------------------------------------------------ the end

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._log()
        self.session.exchange_done(self, self.close_after)

    def _log(self) -> None:
        log = self.ctx.access_log
        if not log.enabled:
            return
        request = self.request
        session = self.session
        now = time.monotonic()
        t_up = self.t_upstream
        trusted = self.ctx.trusted
        client = session.peer
        if trusted:
            client = client_from_xff(
                session.peer, split_list(request.header_values(b"x-forwarded-for")), trusted
            )
        r = ExchangeRecord(
            self.ctx.name,
            session.peer,
            request.method,
            request.target.decode("latin-1"),
            self.status,
        )
        r.client = client
        r.version = request.version
        r.bytes_sent = self.bytes_sent
        if self.cluster is not None:
            r.cluster = self.cluster.name
        if self.tried:
            r.endpoint = self.tried[-1].address
        if self.route is not None:
            r.route = self.route.name
        if t_up:
            if self.t_header:
                r.upstream_header_ms = (self.t_header - t_up) * 1000
            r.upstream_ms = (now - t_up) * 1000
        r.total_ms = (now - request.start) * 1000
        r.retries = self.retries
        r.host = request.host
        r.user_agent = request.header(b"user-agent")
        if log.fmt == "combined":
            r.referer = request.header(b"referer")
        r.error = self.error
        log.log(r)

    # ------------------------------------------------------------ flow control

    def upstream_pause_writing(self) -> None:
        self.session.pause_reading(_UPSTREAM)
        self.upstream_stalled_since = now = self.loop.time()
        idle = self.cluster.spec.timeouts.idle if self.cluster is not None else 0.0
        if idle:
            self.session.arm(now + idle)

    def upstream_resume_writing(self) -> None:
        self.upstream_stalled_since = 0.0
        self.session.resume_reading(_UPSTREAM)

    def client_pause_writing(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not self.upstream_read_paused:
            self.upstream_read_paused = True
            conn.transport.pause_reading()

    def client_resume_writing(self) -> None:
        conn = self.conn
        if self.upstream_read_paused:
            self.upstream_read_paused = False
            if conn is not None and conn.transport is not None and not conn.closed:
                conn.last_read = self.loop.time()
                conn.transport.resume_reading()


def cookie_value(request: Request, name: bytes) -> bytes | None:
    """The value of the request's cookie `name` (RFC 6265 `Cookie` fields), or None."""
    values = cookie_values(request.header_values(b"cookie"), name)
    return values[0] if values else None
