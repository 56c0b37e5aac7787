"""The session's head deadline and half-close, driven without sockets: a fake loop and clock,
in-memory transports, a real HttpSession, Exchange and pooled UpstreamConnection."""

from __future__ import annotations

from typing import Any

from bascule.testing.fakes import FakeLoop, FakeTransport
from bascule.testing.playbook import Playbook

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


class Client:
    """The client's transport as these tests read it: everything written, in order."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport

    @property
    def out(self) -> bytes:
        return bytes(self.transport.data)

    @property
    def reading(self) -> bool:
        return self.transport.reading

    @property
    def closed(self) -> bool:
        return self.transport.closed


def serve(request_header: float = 1.0) -> tuple[FakeLoop, Any, Client, Any]:
    """A session over a cluster of one endpoint; its first request opens the connection."""
    pb = Playbook({
        "listeners": [{"name": "web", "address": "127.0.0.1:1",
                       "timeouts": {"request_header": request_header},
                       "routes": [{"match": {"path_prefix": "/"}, "cluster": "c"}]}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:2"}],
                      "pool": {"idle_timeout": 0}}],
    })
    down = pb.client()

    class Session:
        """Sends bytes; connects the endpoint the first time one is asked for."""

        def data_received(self, data: bytes) -> None:
            down.send(data)
            if pb.connects:
                upstream.append(pb.accept().conn)

        def eof_received(self) -> bool | None:
            return down.half_close()

    upstream: list[Any] = []

    class Upstream:
        def data_received(self, data: bytes) -> None:
            upstream[0].data_received(data)

    return pb.loop, Session(), Client(down.transport), Upstream()


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
