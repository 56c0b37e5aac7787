"""Opening connections to endpoints: the Connector, and the PoolKey that says which are alike.

Rules of this module (httpcore's and aiohttp's connectors, Pingora's peer):
- A connection is opened for one pool and reused only through it: the pool's `PoolKey`
  (upstream/pool.py) says what the connection is (address, source, later TLS, SNI, ALPN).
- `Connector.open` reserves the connection's place in `pool.open` before anything is awaited,
  so a cancelled or failed connect can never leak or double-count it; the connection takes the
  place over once it exists (`counted`), and gives it back when it closes.
- The outcome reaches the caller through one callback, exactly once: a connection, or no
  connection with the status it implies (502 refused/reset, 504 timed out) and a reason for the
  log. The Connector knows nothing about HTTP: the protocol object comes from a factory, so L7
  and L4 share it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

from bascule.balance.endpoint import Endpoint
from bascule.upstream.pool import CLIENT, Pool


class Connection(asyncio.Protocol):
    """The base of a protocol object the Connector connects: what it needs to count it."""

    __slots__ = ("closed", "counted")

    def __init__(self) -> None:
        self.closed = False
        self.counted = False  # holds one of its pool's `open` (handed over by the Connector)


C = TypeVar("C", bound=Connection)
# (connection or None, status if None, reason if None)
Done = Callable[[C | None, int, str], None]


class Connects(Protocol):
    """The Connector as the data plane uses it (tests put a scripted one in its place)."""

    def open(
        self,
        pool: Pool,
        endpoint: Endpoint,
        factory: Callable[[], C],
        done: Done[C],
        *,
        timeout: float,
        client: str = "",
    ) -> asyncio.Task[None] | None: ...


def transparent_socket(client: str) -> socket.socket:
    """A socket bound to the client's address, which is not ours: IP_TRANSPARENT allows it."""
    v6 = ":" in client
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    try:
        # IPV6_TRANSPARENT (75) is missing from Python's socket module.
        level = socket.IPPROTO_IPV6 if v6 else socket.SOL_IP
        sock.setsockopt(level, 75 if v6 else socket.IP_TRANSPARENT, 1)
        sock.setblocking(False)
        sock.bind((client, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _unreserve(pool: Pool, sock: socket.socket | None) -> None:
    """A connect that made no connection gives back its place in `pool.open`."""
    pool.open -= 1
    if sock is not None:
        sock.close()


class Connector:
    """Connects to endpoints from bascule's address, or from the client's (transparent)."""

    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def open(
        self,
        pool: Pool,
        endpoint: Endpoint,
        factory: Callable[[], C],
        done: Done[C],
        *,
        timeout: float,
        client: str = "",
    ) -> asyncio.Task[None]:
        """Connect for `pool`; `client` is the address a transparent pool connects from."""
        pool.open += 1  # reserved now, before any await (see the module rules)
        source = client if pool.key.source == CLIENT else ""
        return self.loop.create_task(self._open(pool, endpoint, factory, done, timeout, source))

    async def _open(
        self,
        pool: Pool,
        endpoint: Endpoint,
        factory: Callable[[], C],
        done: Done[C],
        connect_timeout: float,
        source: str,
    ) -> None:
        loop = self.loop
        sock: socket.socket | None = None  # transparent proxying's own, until a transport owns it
        # No `finally` that reads `conn`: mypyc 2.4.1 type-checks the narrowed variable there
        # and raises TypeError on None. Each way out undoes the reservation itself.
        try:
            async with asyncio.timeout(connect_timeout):
                if source:
                    # Transparent proxying (packet/transparent.py): bascule's marks and policy
                    # routing hand the endpoint's replies to this socket.
                    sock = transparent_socket(source)
                    await loop.sock_connect(sock, (endpoint.host, endpoint.port))
                    _, conn = await loop.create_connection(factory, sock=sock)
                else:
                    _, conn = await loop.create_connection(factory, endpoint.host, endpoint.port)
        except TimeoutError:
            _unreserve(pool, sock)
            done(None, 504, f"connect to {endpoint.address} timed out")
            return
        except OSError as e:
            _unreserve(pool, sock)
            done(None, 502, f"connect to {endpoint.address}: {e.strerror or e}")
            return
        except BaseException:  # cancelled (the worker stops): give the place back, go on
            _unreserve(pool, sock)
            raise
        pool.created += 1
        conn.counted = True  # from here the connection gives back its place in `pool.open`
        if conn.closed:  # lost before it was handed over: as a connect failure
            pool.open -= 1
            done(None, 502, f"{endpoint.address} closed the new connection")
            return
        done(conn, 0, "")
