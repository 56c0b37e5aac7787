"""Shapes found in review: each once let a request reach the backend other than as routed."""

from __future__ import annotations

import socket
from pathlib import Path

from helpers import Backend, Client, free_port, proxy_config, read_response, running


def test_connection_cannot_make_content_length_hop_by_hop(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with running(proxy_config(port, [backend.address]), tmp_path, port), Client(port) as c:
        c.send(b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
        status, _, _, _ = c.response()
        assert status == 200
    assert [s.path for s in backend.requests] == ["/a"]
    assert backend.requests[0].body == smuggled
    assert backend.requests[0].header("Content-Length") == str(len(smuggled))


def test_trailers_never_become_header_fields(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = proxy_config(port, [backend.address], routes=[
        {"match": {"path_prefix": "/"}, "cluster": "c", "buffer_request": True}])
    with running(config, tmp_path, port), Client(port) as c:
        c.send(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\nHost: other\r\nX-Trailer: t\r\n\r\n")
        status, _, _, _ = c.response()
        assert status == 200
    seen = backend.requests[0]
    assert seen.body == b"hello"
    assert seen.header("Host") == "x"
    assert seen.header("X-Trailer") is None


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


def test_absolute_form_target_replaces_host(tmp_path: Path) -> None:
    good, evil = Backend(name="good"), Backend(name="evil")
    port = free_port()
    config = proxy_config(port, [good.address], routes=[
        {"match": {"host": "good.example"}, "cluster": "c"},
        {"match": {"path_prefix": "/"}, "cluster": "e"},
    ], extra_clusters=[{"name": "e", "endpoints": [{"address": evil.address}]}])
    try:
        with running(config, tmp_path, port), Client(port) as c:
            c.send(b"GET http://user@good.example/p HTTP/1.1\r\nHost: evil.example\r\n\r\n")
            assert c.response()[0] == 200
    finally:
        good.stop()
        evil.stop()
    assert not evil.requests
    assert good.requests[0].path == "/p"
    assert good.requests[0].header("Host") == "good.example"


def test_http10_request_without_host_gets_one_upstream(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        head, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 200")
    assert backend.requests[0].header("Host") == backend.address


def test_endpoint_that_stops_reading_the_body_is_cut_with_504(tmp_path: Path) -> None:
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held: list[socket.socket] = []

    def reads_head_only() -> None:
        conn, _ = listener.accept()
        held.append(conn)
        conn.recv(4096)  # the head, then nothing more: the body backs up

    threading.Thread(target=reads_head_only, daemon=True).start()
    port = free_port()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    config = proxy_config(port, [address], cluster={"timeouts": {"idle": "500ms"}})
    size = 64 << 20
    try:
        with running(config, tmp_path, port), socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as s:
            s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)

            def send_body() -> None:
                try:
                    s.sendall(b"x" * size)
                except OSError:
                    pass  # the proxy stops reading and closes: expected

            sender = threading.Thread(target=send_body, daemon=True)
            sender.start()
            head, _ = read_response(s, head_only=True)
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert head.startswith(b"HTTP/1.1 504")


def test_a_client_that_never_reads_is_cut_after_the_idle_timeout(tmp_path: Path) -> None:
    import time

    from helpers import BackendHandler, Seen

    block = b"y" * (1 << 20)

    def big(h: BackendHandler, seen: Seen) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(block) * 64))
        h.end_headers()
        try:
            for _ in range(64):
                h.wfile.write(block)
        except OSError:
            pass

    b = Backend(big)
    port = free_port()
    config = proxy_config(port, [b.address], listener={"timeouts": {"idle": "500ms"}})
    try:
        with running(config, tmp_path, port), socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
            time.sleep(3.0)  # never read: the proxy must give up on this client
            received = 0
            try:
                while chunk := s.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
    finally:
        b.stop()
    assert received < len(block) * 64


def test_requests_before_a_broken_one_are_answered_first(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port), Client(port) as c:
        c.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        first, second, third = c.response(), c.response(), c.response()
        assert c.closed_by_peer()
    assert (first[0], second[0], third[0]) == (200, 200, 400)
    assert b'"path": "/1"' in first[2] and b'"path": "/2"' in second[2]
