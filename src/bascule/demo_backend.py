"""A tiny HTTP/1.1 server for the demo: it shows the user what the proxy did to their request.

Every request gets a 200 whose text body names the backend and echoes the method, the path and
the X-Forwarded-For, Forwarded and Via headers it received, and which request this was on its
connection (so keep-alive through the proxy is visible too).

Rules of this module:
- Correct HTTP/1.1, small: keep-alive as the client asks (`should_keep_alive`), Content-Length
  framing on every response, pipelined requests answered in order, request bodies (sized or
  chunked) read and thrown away, HEAD answered with the headers of a GET and no body, and
  `Expect: 100-continue` honoured so clients do not stall before sending a body.
- Bad input closes the connection after a 400 (or 414/431 for a URL or head too large);
  nothing a client sends can make the server buffer more than those limits.
- Backpressure: while the client does not read our responses, we stop reading its requests.
- The idle keep-alive timeout is longer than bascule's pool idle timeout (30 s by default), so
  the proxy, not the backend, closes idle pooled connections: a backend closing one first could
  race with the proxy sending a request on it.
"""

from __future__ import annotations

import asyncio
import typing
import weakref
from email.utils import formatdate

import httptools

MAX_URL = 8192
MAX_HEAD = 65536
IDLE_TIMEOUT = 75.0
ECHOED_HEADERS = (b"x-forwarded-for", b"forwarded", b"via")


# Open connections per server, so `stop_demo_backend` can close idle keep-alive ones: before
# Python 3.13 a server cannot close its clients, and from 3.12 `wait_closed` waits for them.
_CONNECTIONS: weakref.WeakKeyDictionary[asyncio.AbstractServer, set[_DemoProtocol]] = (
    weakref.WeakKeyDictionary()
)


async def start_demo_backend(host: str, port: int, name: str) -> asyncio.Server:
    """Listen on host:port (port 0: any free port; see `server.sockets`) as backend `name`."""
    loop = asyncio.get_running_loop()
    connections: set[_DemoProtocol] = set()
    server = await loop.create_server(
        lambda: _DemoProtocol(name, connections), host, port, reuse_address=True
    )
    _CONNECTIONS[server] = connections
    return server


async def stop_demo_backend(server: asyncio.AbstractServer) -> None:
    """Stop listening and close every connection, idle or not; returns when all are closed."""
    server.close()
    for protocol in list(_CONNECTIONS.get(server, ())):
        protocol.abort()
    await server.wait_closed()


class _TooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over its limit."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _DemoProtocol(asyncio.Protocol):
    def __init__(self, name: str, connections: set[_DemoProtocol]) -> None:
        self.name = name
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.where = "?"
        self.requests = 0  # answered on this connection
        self.closing = False
        self.idle: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0

    # ------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not checked with isinstance: uvloop's does not subclass asyncio's.
        self.transport = typing.cast(asyncio.Transport, transport)
        self.connections.add(self)
        sockname = self.transport.get_extra_info("sockname")
        if sockname:
            host, port = sockname[0], sockname[1]
            self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self._arm_idle()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # We answered the request as a plain one; whatever protocol the client wanted to
            # switch to, it is not spoken here, so the connection ends.
            self._close()
        except httptools.HttpParserError as e:
            cause = e.__context__
            status = cause.status if isinstance(cause, _TooLarge) else 400
            self._reply_error(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.closing = True
        if self.idle is not None:
            self.idle.cancel()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_URL:
            raise _TooLarge(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            raise _TooLarge(431)
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        # An HTTP/1.0 client cannot understand a 1xx; it sends its body without waiting.
        expect = self._header(b"expect")
        wants_continue = expect is not None and expect.lower() == b"100-continue"
        if wants_continue and self.transport and self.parser.get_http_version() == "1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        pass  # read and discarded: the demo only reports on the head

    def on_message_complete(self) -> None:
        if self.closing or self.transport is None:
            return  # a pipelined request after one that closed the connection
        self.requests += 1
        method = self.parser.get_method().decode("ascii", "replace")
        keep_alive = self.parser.should_keep_alive()
        lines = [
            f"Hello from demo backend {self.name} ({self.where}).",
            f"method: {method}",
            f"path: {self.url.decode('latin-1')}",
        ]
        for name in ECHOED_HEADERS:
            value = self._header(name)
            lines.append(f"{name.decode()}: {'-' if value is None else value.decode('latin-1')}")
        lines.append(f"request on this connection: {self.requests}")
        body = ("\n".join(lines) + "\n").encode("utf-8")
        self._respond(200, "OK", body, keep_alive=keep_alive, head=method == "HEAD")

    # ------------------------------------------------------------ helpers

    def _header(self, name: bytes) -> bytes | None:
        """All values of a header joined as one (RFC 9110 §5.3), or None when absent."""
        values = [v for n, v in self.headers if n == name]
        return b", ".join(values) if values else None

    def _respond(
        self, status: int, reason: str, body: bytes, *, keep_alive: bool, head: bool = False
    ) -> None:
        assert self.transport is not None
        head_lines = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\n"
            "Server: bascule-demo-backend\r\n"
            f"X-Backend: {self.name}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
            "\r\n"
        )
        data = head_lines.encode("latin-1")
        self.transport.write(data if head else data + body)
        if not keep_alive:
            self._close()

    def _reply_error(self, status: int) -> None:
        reasons = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}
        if self.transport is not None and not self.closing:
            self._respond(
                status, reasons[status], f"{reasons[status]}\n".encode(), keep_alive=False
            )
        self._close()

    def _close(self) -> None:
        self.closing = True
        if self.idle is not None:
            self.idle.cancel()
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first

    def abort(self) -> None:
        """Close now, dropping anything unsent: the server is stopping."""
        self.closing = True
        if self.idle is not None:
            self.idle.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(IDLE_TIMEOUT, self._close)
