"""Pipelined requests (RFC 9112 §9.3.2): answered in order, each with its own response,
those before a broken one first."""

from __future__ import annotations

from pathlib import Path

from helpers import Backend, Client, free_port, proxy_config, running


def test_pipelined_requests_after_head_get_their_own_responses(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port), Client(port) as c:
        c.send(b"HEAD /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response("HEAD")[0] == 200
        for path in ("/2", "/3"):
            status, _, body, _ = c.response()
            assert status == 200 and b'"path": "%s"' % path.encode() in body


def test_requests_before_a_broken_one_are_answered_first(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port), Client(port) as c:
        c.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        first, second, third = c.response(), c.response(), c.response()
        assert c.closed_by_peer()
    assert (first[0], second[0], third[0]) == (200, 200, 400)
    assert b'"path": "/1"' in first[2] and b'"path": "/2"' in second[2]
