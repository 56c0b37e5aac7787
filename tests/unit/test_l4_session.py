"""The TCP session's logic (l4/tcp.py, buffered relay) without sockets.

The session, its protocols, the cluster and pools are the real objects; only the edges are
stand-ins (bascule.testing): recording transports, a Connector whose outcomes the test
decides, a loop on a clock the test moves.
"""

from __future__ import annotations

from typing import Any

import pytest

from bascule.config.schema import ClusterConfig
from bascule.l4.tcp import DONE, IDLE, REFUSED, RESET, TcpProxy
from bascule.testing import fakes
from bascule.testing.fakes import FakeLoop, FakeTransport, ScriptedConnector
from bascule.upstream.cluster import Cluster


class Transport(FakeTransport):
    """A FakeTransport that also takes the write-buffer limits the relay sets."""

    def __init__(self, peer: tuple[str, int] = ("198.51.100.7", 40000)) -> None:
        super().__init__(peer)
        self.high_water = 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high or 0


class Bench:
    """One proxy, one client connection, and the connects it asks for."""

    def __init__(self, endpoints: int = 2, **cluster: Any) -> None:
        spec = {
            "name": "c",
            "endpoints": [{"address": f"127.0.0.1:{9000 + i}"} for i in range(endpoints)],
        }
        spec.update(cluster)
        self.loop = FakeLoop()
        self.cluster = Cluster(ClusterConfig.model_validate(spec))
        self.cluster.loop = self.loop.as_loop()
        self.connector = ScriptedConnector()
        self.proxy = TcpProxy(
            self.cluster, self.connector, self.loop.as_loop(), mode="buffered", idle_timeout=60
        )
        self.client = self.proxy.protocol()
        self.client_t = Transport()
        self.client.connection_made(self.client_t)  # type: ignore[arg-type]
        self.session = next(iter(self.proxy.sessions))

    def accept(self) -> tuple[Any, Transport]:
        """The oldest connect succeeds: the upstream protocol and its transport."""
        conn, transport = self.connector.accept()
        assert isinstance(transport, Transport)
        return conn, transport


@pytest.fixture(autouse=True)
def _buffer_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The scripted Connector's transports must take the relay's write-buffer limits too.
    monkeypatch.setattr(fakes, "FakeTransport", Transport)


def test_client_waits_unread_until_connected_and_early_bytes_are_kept() -> None:
    b = Bench()
    assert not b.client_t.reading
    # uvloop may deliver one read although connection_made paused reading: it is kept.
    b.client.data_received(b"early")
    b.client.eof_received()
    up, up_t = b.accept()
    assert up_t.take() == b"early" and up_t.eof_written
    assert b.client_t.reading is False  # its FIN was read: nothing more to read from it
    up.data_received(b"answer")
    assert b.client_t.take() == b"answer"
    up.eof_received()
    assert b.session.ended == DONE and b.client_t.closed and up_t.closed


def test_backpressure_pauses_the_feeding_side() -> None:
    b = Bench()
    up, up_t = b.accept()
    assert b.client_t.reading and up_t.reading
    assert up_t.high_water == b.client_t.high_water == b.proxy.high_water
    up.pause_writing()  # the endpoint's socket is full: stop reading the client
    assert not b.client_t.reading and up_t.reading
    up.resume_writing()
    assert b.client_t.reading
    b.client.pause_writing()  # the client's socket is full: stop reading the endpoint
    assert not up_t.reading
    up.eof_received()  # the endpoint's FIN is read while paused...
    b.client.resume_writing()
    assert not up_t.reading  # ...so it is not read again (it would report its EOF twice)


def test_half_close_each_way_then_done() -> None:
    b = Bench()
    up, up_t = b.accept()
    assert b.client.eof_received() is True  # the client's FIN: kept open for the answer
    assert up_t.eof_written and not up_t.closed and not b.client_t.closed
    up.data_received(b"rest of the answer")
    assert b.client_t.take() == b"rest of the answer"
    assert up.eof_received() is False
    assert b.client_t.eof_written and b.client_t.closed and up_t.closed
    assert b.session.ended == DONE and not b.session.proxy.sessions
    endpoint = b.cluster.endpoints[0]
    assert endpoint.active == 0 and endpoint.requests == 1 and endpoint.failures == 0
    up.connection_lost(None)  # what a real transport does after close()
    assert b.cluster.pools[endpoint].open == 0


def test_endpoint_reset_aborts_the_client() -> None:
    b = Bench()
    up, _up_t = b.accept()
    up.connection_lost(ConnectionResetError("reset by peer"))
    assert b.client_t.aborted and b.session.ended == RESET
    endpoint = b.cluster.endpoints[0]
    assert endpoint.failures == 1 and b.cluster.pools[endpoint].open == 0


def test_client_reset_aborts_the_endpoint_connection() -> None:
    b = Bench()
    _up, up_t = b.accept()
    b.client.connection_lost(ConnectionResetError("reset by peer"))
    assert up_t.aborted and not b.client_t.aborted and b.session.ended == RESET
    assert b.cluster.endpoints[0].failures == 0  # the client's doing


def test_connect_failures_try_the_next_endpoint_up_to_attempts() -> None:
    b = Bench(endpoints=3, retries={"attempts": 1})
    first = b.connector.refuse()
    second = b.connector.refuse()
    assert first is not second  # the one tried is skipped
    assert not b.connector.waiting  # attempts 1: two tries, no third
    assert b.session.ended == REFUSED and b.client_t.closed
    assert [e.failures for e in b.cluster.endpoints].count(1) == 2
    assert all(e.active == 0 for e in b.cluster.endpoints)


def test_a_retry_that_connects_relays_normally() -> None:
    b = Bench()
    b.connector.refuse()
    _up, up_t = b.accept()
    b.client.data_received(b"hi")
    assert up_t.take() == b"hi"
    assert b.proxy.counts["connect_failures"] == 1 and not b.session.ended


def test_idle_timeout_counts_from_the_last_read() -> None:
    b = Bench()
    up, _ = b.accept()
    b.loop.advance(50)
    up.data_received(b"x")  # activity at 50 s: the deadline moves to 110 s
    b.loop.advance(50)
    assert not b.session.ended
    b.loop.advance(11)
    assert b.session.ended == IDLE and b.client_t.closed


def test_no_healthy_endpoint_closes_the_client() -> None:
    loop = FakeLoop()
    spec = ClusterConfig.model_validate({"name": "c", "endpoints": [{"address": "127.0.0.1:9000"}]})
    cluster = Cluster(spec)
    cluster.endpoints[0].set_check(False)
    proxy = TcpProxy(cluster, ScriptedConnector(), loop.as_loop(), mode="buffered")
    client = proxy.protocol()
    transport = Transport()
    client.connection_made(transport)  # type: ignore[arg-type]
    assert transport.closed and proxy.counts[REFUSED] == 1 and not proxy.sessions


def test_a_draining_buffer_is_progress_not_idle() -> None:
    """A slow client drains what was buffered for it without the endpoint sending more: that
    is progress, and the idle deadline counts from it."""
    b = Bench()
    b.accept()
    b.loop.advance(40)
    b.client.pause_writing()  # the client's buffer is full
    b.loop.advance(15)
    b.client.resume_writing()  # ...and drained at 55 s: the deadline moves to 115 s
    b.loop.advance(55)
    assert not b.session.ended
    b.loop.advance(10)
    assert b.session.ended == IDLE
