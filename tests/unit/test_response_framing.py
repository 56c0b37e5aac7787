"""Response framing through the upstream connection (bascule's codec, not llhttp), played
without sockets: exact client bytes for every framing, what ends a response, and when the
connection goes back to its pool."""

from __future__ import annotations

import pytest
from test_exchange_playbook import OK, OK_RELAYED, config

from bascule.codec.chunked import ChunkedDecoder
from bascule.testing.playbook import Downstream, Playbook, Upstream

GET_11 = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"
GET_10 = b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n"
VIA = b"Via: 1.1 bascule\r\n"


def start(request: bytes = GET_11) -> tuple[Playbook, Downstream, Upstream]:
    pb = Playbook(config())
    c = pb.client()
    c.send(request)
    up = pb.accept()
    up.take()
    return pb, c, up


def assert_pooled(pb: Playbook, c: Downstream, up: Upstream) -> None:
    """The next request goes over the same upstream connection."""
    c.send(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert pb.connects == 0
    assert up.take().startswith(b"GET /next HTTP/1.1\r\n")
    up.send(OK)
    assert c.take() == OK_RELAYED


def assert_not_pooled(pb: Playbook, c: Downstream, up: Upstream) -> None:
    assert up.closed
    c.send(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert pb.connects == 1


def test_chunked_is_rechunked_trailers_dropped_and_pooled() -> None:
    pb, c, up = start()
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\nX-A: 1\r\n\r\n")
    up.send(b"3;ext=1\r\nabc\r\n2\r\nde\r\n")
    up.send(b"0\r\nX-T: secret\r\n\r\n")
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n" + VIA + b"\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert_pooled(pb, c, up)


def test_length_body_over_several_reads_is_relayed_and_pooled() -> None:
    pb, c, up = start()
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n123")
    up.send(b"4567")
    up.send(b"890")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n" + VIA + b"\r\n1234567890"
    assert_pooled(pb, c, up)


def test_until_close_is_chunked_for_a_11_client_and_ends_on_fin() -> None:
    _, c, up = start()
    up.send(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhel")
    up.send(b"lo")
    assert c.take() == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n" + VIA + b"\r\n"
        b"3\r\nhel\r\n2\r\nlo\r\n"
    )
    up.close()
    assert c.take() == b"0\r\n\r\n"
    assert not c.closed


def test_until_close_is_close_delimited_for_a_10_client() -> None:
    _, c, up = start(GET_10)
    up.send(b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nhello")
    assert c.take() == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n" + VIA + b"\r\nhello"
    assert not c.closed
    up.close()
    assert c.closed


def test_head_response_keeps_its_content_length_and_ends_at_the_head() -> None:
    pb, c, up = start(b"HEAD / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n" + VIA + b"\r\n"
    assert_pooled(pb, c, up)


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_204_and_304_end_at_the_head(status: bytes) -> None:
    pb, c, up = start()
    up.send(b"HTTP/1.1 " + status + b'\r\nETag: "x"\r\n\r\n')
    assert c.take() == b"HTTP/1.1 " + status + b'\r\nETag: "x"\r\n' + VIA + b"\r\n"
    assert_pooled(pb, c, up)


def test_100_continue_is_passed_to_a_11_client_only() -> None:
    _, c, up = start()
    up.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    up.send(OK)
    assert c.take() == OK_RELAYED
    _, c10, up10 = start(GET_10)
    up10.send(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert c10.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n" + VIA + (
        b"\r\nok"
    )


def test_101_unasked_is_a_502() -> None:
    _, c, up = start()
    up.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert c.take().startswith(b"HTTP/1.1 502 ")
    assert up.closed


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n X-Fold: 1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
def test_bad_response_is_a_502(response: bytes) -> None:
    _, c, up = start()
    up.send(response)
    assert c.take().startswith(b"HTTP/1.1 502 ")
    assert up.closed


def test_bad_chunk_after_the_head_aborts_the_client() -> None:
    _, c, up = start()
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n")
    assert not c.take().endswith(b"0\r\n\r\n")  # never a last chunk: the client sees a cut
    assert c.closed and up.closed


@pytest.mark.parametrize(
    "response",
    [
        OK + b"extra",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nextra",
        b"HTTP/1.1 204 No Content\r\n\r\nextra",
    ],
)
def test_bytes_after_the_response_mean_not_pooled(response: bytes) -> None:
    pb, c, up = start()
    up.send(response)
    assert c.take().startswith(b"HTTP/1.1 20")
    assert_not_pooled(pb, c, up)


def dechunk(data: bytes) -> bytes:
    pieces, ended, rest = ChunkedDecoder().feed(data)
    assert ended and not rest
    return b"".join(pieces)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n",
    ],
)
def test_a_response_split_at_every_byte_gives_the_same_client_bytes(response: bytes) -> None:
    _, c, up = start()
    up.send(response)
    whole = c.take()
    head_end = whole.rfind(b"\r\n\r\n", 0, whole.find(VIA) + len(VIA) + 2) + 4
    for i in range(1, len(response)):
        _, c, up = start()
        up.send(response[:i])
        up.send(response[i:])
        got = c.take()
        assert got[:head_end] == whole[:head_end], i
        if b"chunked" in whole[:head_end]:
            assert dechunk(got[head_end:]) == dechunk(whole[head_end:]) == b"hello!", i
        else:
            assert got == whole, i
