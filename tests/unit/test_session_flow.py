"""The session's head deadline and half-close, driven without sockets: a fake loop and clock,
in-memory transports, a real HttpSession, Exchange and pooled UpstreamConnection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bascule.config.schema import Config
from bascule.l7.context import ListenerContext
from bascule.l7.session import HttpSession
from bascule.l7.upstream import UpstreamConnection
from bascule.observe.access_log import AccessLog
from bascule.upstream.cluster import Cluster

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


class Timer:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """What a session asks of its loop: the time and timers, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        self.timers.append(timer)
        return timer

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        return self.call_at(self.now + delay, callback, *args)

    def advance(self, seconds: float) -> None:
        """Move the clock, running every timer that falls due, in order."""
        self.now += seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= self.now]
            if not due:
                return
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            timer.callback(*timer.args)


class Transport:
    def __init__(self, port: int) -> None:
        self.peer = ("127.0.0.1", port)
        self.out = b""
        self.reading = True
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, lines: list[bytes]) -> None:
        self.out += b"".join(lines)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


def serve(request_header: float = 1.0) -> tuple[FakeLoop, HttpSession, Transport, Any]:
    """A session over a cluster of one endpoint with one pooled connection: no connect."""
    config = Config.model_validate({
        "listeners": [{"name": "web", "address": "127.0.0.1:1",
                       "timeouts": {"request_header": request_header},
                       "routes": [{"match": {"path_prefix": "/"}, "cluster": "c"}]}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:2"}],
                      "pool": {"idle_timeout": 0}}],
    })
    loop = FakeLoop()
    cluster = Cluster(config.clusters[0])
    ctx = ListenerContext(config.listeners[0], {"c": cluster}, AccessLog(None), loop)  # type: ignore[arg-type]
    endpoint = cluster.endpoints[0]
    upstream = UpstreamConnection(cluster.pools[endpoint], endpoint, loop)  # type: ignore[arg-type]
    upstream.connection_made(Transport(2))  # type: ignore[arg-type]
    cluster.pools[endpoint].release(upstream, loop.time())
    session = HttpSession(ctx)
    client = Transport(3)
    session.connection_made(client)  # type: ignore[arg-type]
    return loop, session, client, upstream


def test_head_deadline_does_not_run_while_bascule_paused_reading() -> None:
    loop, session, client, upstream = serve(request_header=1.0)
    # two whole requests and the start of a third head: the second waits, reading pauses
    session.data_received(REQUEST * 2 + b"GET /third HTTP/1.1\r\nHo")
    assert not client.reading
    loop.advance(5.0)  # the first exchange takes long; the third head cannot progress
    assert b" 408 " not in client.out
    upstream.data_received(RESPONSE)
    upstream.data_received(RESPONSE)
    assert client.reading and client.out.count(b"HTTP/1.1 200 OK") == 2
    loop.advance(0.5)  # the head's deadline runs again, from where it stopped
    session.data_received(b"st: x\r\n\r\n")
    upstream.data_received(RESPONSE)
    assert client.out.count(b"HTTP/1.1 200 OK") == 3 and b" 408 " not in client.out


def test_head_deadline_resumes_after_the_pause() -> None:
    loop, session, client, upstream = serve(request_header=1.0)
    session.data_received(REQUEST * 2 + b"GET /third HTTP/1.1\r\nHo")
    loop.advance(5.0)
    upstream.data_received(RESPONSE)
    upstream.data_received(RESPONSE)
    loop.advance(0.9)
    assert b" 408 " not in client.out
    loop.advance(0.2)  # now past its deadline, not counting the pause: a slow client
    assert b"HTTP/1.1 408 Request Timeout" in client.out


def test_half_closed_client_is_closed_after_its_response() -> None:
    _, session, client, upstream = serve()
    session.data_received(REQUEST)
    assert session.eof_received() is True  # kept open for the answer
    assert not client.closed
    upstream.data_received(RESPONSE)
    assert client.out.startswith(b"HTTP/1.1 200 OK") and client.closed
