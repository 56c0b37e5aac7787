"""The L7 exchange played without sockets: exact bytes both ways, pooling, retries, timeouts
on a moved clock, the queue, and the Upgrade-smuggling shape (bascule.testing.playbook)."""

from __future__ import annotations

from typing import Any

import pytest

from bascule.testing.playbook import Playbook

IDENTITY = (
    b"X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: app.test\r\n"
    b"Forwarded: for=198.51.100.7;by=bascule;proto=http;host=app.test\r\nVia: 1.1 bascule\r\n"
)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_RELAYED = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 bascule\r\n\r\nok"


def config(
    endpoints: int = 1,
    cluster: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "name": "web",
                "address": "127.0.0.1:8080",
                "routes": [
                    {
                        "match": {"path_prefix": "/admin"},
                        "direct_response": {"status": 403, "body": "no\n"},
                    },
                    {"match": {"path_prefix": "/"}, "cluster": "c"},
                ],
                **(listener or {}),
            }
        ],
        "clusters": [
            {
                "name": "c",
                "endpoints": [{"address": f"127.0.0.1:{9001 + i}"} for i in range(endpoints)],
                **(cluster or {}),
            }
        ],
    }


def test_request_and_response_bytes_and_pool_reuse() -> None:
    pb = Playbook(config())
    c = pb.client()
    c.send(
        b"GET /a?x=1 HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\n\r\n"
    )
    assert pb.connects == 1
    up = pb.accept()
    assert up.take() == b"GET /a?x=1 HTTP/1.1\r\nHost: app.test\r\n" + IDENTITY + b"\r\n"
    up.send(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nX-A: 1\r\n\r\nok"
    )
    assert (
        c.take() == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nVia: 1.1 bascule\r\n\r\nok"
    )
    c.send(b"GET /b HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert pb.connects == 0  # the pooled connection took it
    assert up.take().startswith(b"GET /b HTTP/1.1\r\n")
    up.send(OK)
    assert c.take() == OK_RELAYED
    assert not c.closed and not up.closed


def test_chunked_response_is_rechunked_and_close_is_honoured() -> None:
    pb = Playbook(config())
    c = pb.client()
    c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    up = pb.accept()
    up.take()
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"Via: 1.1 bascule\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert c.closed


def test_refused_connect_is_retried_on_another_endpoint_for_get_only() -> None:
    pb = Playbook(config(endpoints=2))
    c = pb.client()
    c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    first = pb.connector.refuse()
    assert pb.connects == 1
    assert pb.connector.waiting[0].endpoint is not first  # an endpoint not tried yet
    up = pb.accept()
    up.take()
    up.send(OK)
    assert c.take() == OK_RELAYED


def test_post_is_never_retried_and_gets_502() -> None:
    pb = Playbook(config(endpoints=2))
    c = pb.client()
    c.send(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi")
    pb.refuse(502, "connect to 127.0.0.1:9001: Connection refused")
    assert pb.connects == 0
    out = c.take()
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


def test_response_header_timeout_on_the_moved_clock() -> None:
    pb = Playbook(config(cluster={"timeouts": {"response_header": "2s"}}))
    c = pb.client()
    c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    up = pb.accept()
    pb.advance(1.9)
    assert c.take() == b""
    pb.advance(0.2)
    assert c.take().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert up.closed  # a connection that did not answer is never pooled


def test_request_header_timeout_is_408() -> None:
    pb = Playbook(config(listener={"timeouts": {"request_header": "1s"}}))
    c = pb.client()
    c.send(b"GET / HTTP/1.1\r\nHost: app")
    pb.advance(1.01)
    assert c.take().startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_queue_hands_the_slot_to_the_waiter() -> None:
    pb = Playbook(
        config(cluster={"limits": {"max_requests": 1, "max_pending": 1, "queue_timeout": "5s"}})
    )
    a, b = pb.client(), pb.client(("198.51.100.8", 40001))
    a.send(b"GET /1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    b.send(b"GET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert pb.connects == 1  # b waits in the queue
    up = pb.accept()
    assert up.take().startswith(b"GET /1 ")
    up.send(OK)
    assert a.take() == OK_RELAYED
    pb.advance(0)  # the freed slot is handed over on the next loop turn
    assert up.take().startswith(b"GET /2 ")  # on the same, pooled, connection
    up.send(OK)
    assert b.take() == OK_RELAYED


def test_queue_timeout_is_503() -> None:
    pb = Playbook(
        config(cluster={"limits": {"max_requests": 1, "max_pending": 1, "queue_timeout": "1s"}})
    )
    a, b = pb.client(), pb.client(("198.51.100.8", 40001))
    a.send(b"GET /1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    b.send(b"GET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    pb.advance(1.01)
    assert b.take().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upgrade_request_body_is_relayed_and_never_parsed(framing: str) -> None:
    """Issue 13 item 1, played: the hidden request stays a body, the route is not passed."""
    hidden = b"GET /admin HTTP/1.1\r\nHost: app.test\r\n\r\n"
    if framing == "length":
        head = b"Content-Length: %d\r\n" % len(hidden)
        body = hidden
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(hidden), hidden)
    pb = Playbook(config())
    c = pb.client()
    c.send(
        b"POST /x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        + head
        + b"\r\n"
        + body
    )
    up = pb.accept()
    sent = up.take()
    assert b"Upgrade" not in sent
    # the whole body arrived before the connection: it goes with its length, either framing
    assert sent.count(b"Content-Length: %d\r\n" % len(hidden)) == 1
    assert sent.endswith(b"\r\n\r\n" + hidden)
    up.send(OK)
    assert c.take() == OK_RELAYED  # one response, no 403 for a hidden /admin
    c.send(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert up.take().startswith(b"GET /next ")  # the connection was in step: pooled


def test_connection_answered_before_the_body_was_sent_is_not_pooled() -> None:
    pb = Playbook(config())
    c = pb.client()
    c.send(b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n12345")
    up = pb.accept()
    up.take()
    up.send(OK)
    assert c.take() == OK_RELAYED
    assert up.closed  # half a body went: this connection is out of step
    c.send(b"67890")
    c.send(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert pb.connects == 1  # a new connection for the next request
