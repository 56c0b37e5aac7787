"""Message bodies through real sockets: request framing (Content-Length, chunked), response
re-framing (chunked, close-delimited, HTTP/1.0 clients), bodiless responses, 100-continue,
buffered requests, retries, and keep-alive with curl.

One bascule (module fixture) routes by path prefix to one cluster per scenario.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers import Backend, BackendHandler, Client, Seen, free_port, proxy_config, running

# ------------------------------------------------------------------ backends

CHUNKED_BODY = b"".join(b"line %04d of a chunked response\n" % i for i in range(400))
CLOSE_BODY = os.urandom(50_000)


def app(h: BackendHandler, seen: Seen) -> None:
    path = seen.path
    if "/echo-body" in path:
        h.reply(200, seen.body, {"Content-Type": "application/octet-stream"})
    elif path.startswith("/chunked"):
        h.reply(200, CHUNKED_BODY, {"Content-Type": "text/plain"}, chunked=True)
    elif path == "/204":
        h.reply(204, headers={"X-Empty": "yes"})
    elif path == "/304":
        h.reply(304, headers={"ETag": '"v1"'})
    elif path == "/head":
        h.reply(200, b"hello-head", {"Content-Type": "text/plain"})
    else:
        body = json.dumps({"backend": h.server.backend.name, "path": seen.path,
                           "body_len": len(seen.body)}).encode()
        h.reply(200, body, {"Content-Type": "application/json"})


def silent_close(h: BackendHandler, seen: Seen) -> None:
    h.close_connection = True  # reads the request, closes without a byte of response


class CloseDelimitedBackend:
    """An HTTP/1.0-style server: no Content-Length, the body ends when it closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                for i in range(0, len(CLOSE_BODY), 8192):
                    conn.sendall(CLOSE_BODY[i:i + 8192])

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


BUFFER_LIMIT = 2000


@dataclass
class Proxy:
    port: int
    app: Backend
    close10: CloseDelimitedBackend
    closer: Backend
    buffered_good: Backend
    retry_good: Backend
    post_closer: Backend
    post_good: Backend
    ka: Backend

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("bodies")
    p = Proxy(
        port=free_port(),
        app=Backend(app, name="app"),
        close10=CloseDelimitedBackend(),
        closer=Backend(silent_close, name="closer"),
        buffered_good=Backend(app, name="buffered-good"),
        retry_good=Backend(app, name="retry-good"),
        post_closer=Backend(silent_close, name="post-closer"),
        post_good=Backend(app, name="post-good"),
        ka=Backend(app, name="ka"),
    )
    def cluster(name: str, *addresses: str) -> dict[str, object]:
        return {"name": name, "endpoints": [{"address": a} for a in addresses]}

    config = proxy_config(
        p.port, [p.app.address],
        routes=[
            {"match": {"path_prefix": "/buffered"}, "cluster": "buffered",
             "buffer_request": True, "max_request_body": BUFFER_LIMIT},
            {"match": {"path_prefix": "/close10"}, "cluster": "close10"},
            {"match": {"path_prefix": "/retry"}, "cluster": "retry"},
            {"match": {"path_prefix": "/post"}, "cluster": "post"},
            {"match": {"path_prefix": "/ka"}, "cluster": "ka"},
            {"match": {"path_prefix": "/"}, "cluster": "c"},
        ],
        extra_clusters=[
            cluster("buffered", p.closer.address, p.buffered_good.address),
            cluster("close10", p.close10.address),
            cluster("retry", f"127.0.0.1:{free_port()}", p.retry_good.address),
            cluster("post", p.post_closer.address, p.post_good.address),
            cluster("ka", p.ka.address),
        ],
    )
    config["access_log"] = {"path": None}
    try:
        with running(config, tmp, p.port):
            yield p
    finally:
        p.close10.stop()
        for b in (p.app, p.closer, p.buffered_good, p.retry_good, p.post_closer, p.post_good,
                  p.ka):
            b.stop()


def post(path: str, body: bytes, extra: bytes = b"", method: bytes = b"POST") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (
        method, path.encode(), len(body), extra, body)


def chunked(sizes: list[int], data: bytes) -> bytes:
    out, i = [], 0
    for n, size in enumerate(sizes):
        ext = b";ext=%d" % n if n % 2 else b""
        out.append(b"%x%s\r\n%s\r\n" % (size, ext, data[i:i + size]))
        i += size
    return b"".join(out) + b"0\r\n\r\n"


# ------------------------------------------------------------------ request bodies


@pytest.mark.parametrize("size", [1, 65_536 + 7, 1_000_000])
def test_content_length_body_arrives_exactly(proxy: Proxy, size: int) -> None:
    body = os.urandom(size)
    with Client(proxy.port) as c:
        c.send(post(f"/echo-body/{size}", body))
        status, headers, got, _ = c.response()
        assert status == 200
        assert got == body
        assert headers["content-length"] == str(size)
    seen = proxy.app.requests[-1]
    assert seen.path == f"/echo-body/{size}"
    assert seen.body == body
    assert seen.header("Content-Length") == str(size)
    assert seen.header("Transfer-Encoding") is None


@pytest.mark.parametrize("trickle", [False, True], ids=["at-once", "trickled"])
def test_chunked_request_body_arrives_exactly(proxy: Proxy, trickle: bool) -> None:
    sizes = [1, 100, 4096, 17, 70_000, 3]
    data = os.urandom(sum(sizes))
    head = (b"POST /echo-body/chunked-%d HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % trickle)
    wire = chunked(sizes, data)
    with Client(proxy.port) as c:
        if trickle:
            # the head first, then the body in pieces: the body streams to the backend
            c.send(head)
            time.sleep(0.1)
            for i in range(0, len(wire), 20_000):
                c.send(wire[i:i + 20_000])
                time.sleep(0.02)
        else:
            c.send(head + wire)
        status, _, got, _ = c.response()
    assert status == 200
    assert got == data
    seen = proxy.app.requests[-1]
    assert seen.path == f"/echo-body/chunked-{int(trickle)}"
    assert seen.body == data
    te, cl = seen.header("Transfer-Encoding"), seen.header("Content-Length")
    assert (te, cl) in (("chunked", None), (None, str(len(data)))), (te, cl)


def test_empty_chunked_body(proxy: Proxy) -> None:
    with Client(proxy.port) as c:
        c.send(b"POST /echo-body/empty HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"\r\n0\r\n\r\n")
        status, _, got, _ = c.response()
    assert status == 200
    assert got == b""
    assert proxy.app.requests[-1].body == b""


# ------------------------------------------------------------------ response framing


def test_chunked_response_to_http11_client(proxy: Proxy) -> None:
    with Client(proxy.port) as c:
        c.send(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = c.response()
        assert status == 200
        assert headers["transfer-encoding"].lower() == "chunked"
        assert "content-length" not in headers
        assert body == CHUNKED_BODY
        # the framing was right: the same connection serves the next request
        c.send(b"GET /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body, _ = c.response()
        assert (status, body) == (200, b"hello-head")
        assert c.closed_by_peer()


def test_chunked_response_to_http10_client_is_close_delimited(proxy: Proxy) -> None:
    with Client(proxy.port) as c:
        c.send(b"GET /chunked HTTP/1.0\r\n\r\n")
        status, headers, body, _ = c.response()
    assert status == 200
    assert "transfer-encoding" not in headers
    assert headers.get("connection", "").lower() == "close"
    assert "content-length" not in headers or headers["content-length"] == str(len(CHUNKED_BODY))
    assert body == CHUNKED_BODY


def test_close_delimited_backend_to_http11_client(proxy: Proxy) -> None:
    with Client(proxy.port) as c:
        for i in range(2):
            c.send(b"GET /close10/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            status, headers, body, _ = c.response()
            assert status == 200
            # re-framed so the client connection can live on
            assert headers.get("transfer-encoding", "").lower() == "chunked" or (
                headers.get("content-length") == str(len(CLOSE_BODY)))
            assert headers.get("connection", "").lower() != "close"
            assert body == CLOSE_BODY
    assert proxy.close10.requests[-1].startswith(b"GET /close10/1 HTTP/1.1\r\n")


def test_close_delimited_backend_to_http10_client(proxy: Proxy) -> None:
    with Client(proxy.port) as c:
        c.send(b"GET /close10/ten HTTP/1.0\r\n\r\n")
        status, headers, body, _ = c.response()
        assert status == 200
        assert "transfer-encoding" not in headers
        assert body == CLOSE_BODY
        assert c.buf == b""


def test_head_has_length_but_no_body(proxy: Proxy) -> None:
    with Client(proxy.port) as c:
        c.send(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _, _ = c.response("HEAD")
        assert status == 200
        assert headers["content-length"] == "10"
        c.send(b"HEAD /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _, _ = c.response("HEAD")
        assert status == 200
        assert "content-length" not in headers
        c.send(b"GET /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        # had either HEAD response carried a body, it would be parsed here as a status line
        status, headers, body, _ = c.response()
        assert (status, body) == (200, b"hello-head")
        assert c.closed_by_peer()
    assert [s.method for s in proxy.app.requests[-3:]] == ["HEAD", "HEAD", "GET"]


def test_204_and_304_have_no_body(proxy: Proxy) -> None:
    with Client(proxy.port) as c:
        c.send(b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _, _ = c.response()
        assert status == 204
        assert headers["x-empty"] == "yes"
        assert "transfer-encoding" not in headers
        assert headers.get("content-length", "0") == "0"
        status, headers, _, _ = c.response()
        assert status == 304
        assert headers["etag"] == '"v1"'
        assert "transfer-encoding" not in headers
        c.send(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body, _ = c.response()
        assert status == 200
        assert json.loads(body)["path"] == "/after"
        assert c.closed_by_peer()


# ------------------------------------------------------------------ Expect: 100-continue


def test_expect_100_continue_with_curl(proxy: Proxy, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src, dst = tmp_path / "up.bin", tmp_path / "down.bin"
    src.write_bytes(data)
    t0 = time.monotonic()
    out = subprocess.run(
        ["curl", "-sS", "--expect100-timeout", "5", "--data-binary", f"@{src}",
         "-H", "Expect: 100-continue", "-H", "Content-Type: application/octet-stream",
         "-o", str(dst), "-w", "%{http_code}", f"{proxy.url}/echo-body/curl"],
        capture_output=True, timeout=20, check=True,
    )
    elapsed = time.monotonic() - t0
    assert out.stdout == b"200", out.stderr
    assert dst.read_bytes() == data
    assert proxy.app.requests[-1].body == data
    # curl waits 5 s for the 100 before sending anyway: the 100 must have come
    assert elapsed < 3.0


def test_expect_100_continue_raw(proxy: Proxy) -> None:
    body = os.urandom(5000)
    with Client(proxy.port, timeout=3) as c:
        c.send(b"POST /echo-body/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        status, _, _ = c.head()  # TimeoutError here: no 100 came
        assert status == 100
        c.send(body)
        status, _, got, _ = c.response()
    assert status == 200
    assert got == body
    assert proxy.app.requests[-1].body == body


def test_expect_100_continue_refused_without_100(proxy: Proxy) -> None:
    with Client(proxy.port, timeout=3) as c:
        c.send(post("/buffered/expect", b"", method=b"PUT").replace(
            b"Content-Length: 0", b"Content-Length: %d\r\nExpect: 100-continue" % (
                BUFFER_LIMIT + 1)))
        status, headers, _ = c.head()
        assert status == 413
        assert headers["connection"].lower() == "close"


# ------------------------------------------------------------------ buffered requests


def test_buffered_request_above_limit_is_413(proxy: Proxy) -> None:
    before = len(proxy.buffered_good.requests) + len(proxy.closer.requests)
    with Client(proxy.port) as c:
        c.send(post("/buffered/big", os.urandom(BUFFER_LIMIT + 1), method=b"PUT"))
        status, headers, _, _ = c.response()
        assert status == 413
        assert headers["connection"].lower() == "close"
        assert c.closed_by_peer()
    data = os.urandom(BUFFER_LIMIT + 500)
    with Client(proxy.port) as c:
        c.send(b"PUT /buffered/big-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"\r\n" + chunked([500] * 5, data))
        status, headers, _, _ = c.response()
        assert status == 413
        assert headers["connection"].lower() == "close"
        assert c.closed_by_peer()
    assert len(proxy.buffered_good.requests) + len(proxy.closer.requests) == before


def test_buffered_request_is_retried_to_another_endpoint(proxy: Proxy) -> None:
    # round robin over [closer, good]: of two requests at least one meets the closer first
    bodies = [os.urandom(BUFFER_LIMIT - 100) for _ in range(2)]
    with Client(proxy.port) as c:
        for i, body in enumerate(bodies):
            c.send(post(f"/buffered/echo-body/{i}", body, method=b"PUT"))
            status, _, got, _ = c.response()
            assert status == 200
            assert got == body
        # and a chunked one, wholly held before any endpoint is chosen
        data = os.urandom(1500)
        c.send(b"PUT /buffered/echo-body/chunked HTTP/1.1\r\nHost: x\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunked([500, 500, 500], data))
        status, _, got, _ = c.response()
        assert status == 200
        assert got == data
    good = {s.path: s.body for s in proxy.buffered_good.requests}
    assert good["/buffered/echo-body/0"] == bodies[0]
    assert good["/buffered/echo-body/1"] == bodies[1]
    assert good["/buffered/echo-body/chunked"] == data
    assert len(proxy.closer.requests) >= 1
    assert all(s.body in (*bodies, data) for s in proxy.closer.requests)


# ------------------------------------------------------------------ retries


def test_get_is_retried_past_a_refusing_endpoint(proxy: Proxy) -> None:
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        statuses = [client.get(f"/retry/{i}").status_code for i in range(20)]
    assert statuses == [200] * 20
    assert [s.path for s in proxy.retry_good.requests[-20:]] == [f"/retry/{i}" for i in range(20)]


def test_post_is_not_retried_once_sent(proxy: Proxy) -> None:
    # round robin over [closer, good]: of two POSTs one meets the closer and must get 502
    results = {}
    for i in range(2):
        with Client(proxy.port) as c:
            c.send(post(f"/post/{i}", b"payload-%d" % i))
            results[f"/post/{i}"] = c.response()[0]
    assert sorted(results.values()) == [200, 502]
    failed = next(p for p, s in results.items() if s == 502)
    assert failed in {s.path for s in proxy.post_closer.requests}
    assert failed not in {s.path for s in proxy.post_good.requests}
    # GET to the same cluster is retried: never a 502
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        assert [client.get(f"/post-get/{i}").status_code for i in range(4)] == [200] * 4


# ------------------------------------------------------------------ keep-alive


def test_curl_reuses_one_connection_and_so_does_bascule(proxy: Proxy) -> None:
    urls = [f"{proxy.url}/ka/{i}" for i in range(3)]
    out = subprocess.run(
        ["curl", "-sS", "-w", r"\n%{num_connects}\n", *urls],
        capture_output=True, timeout=20, check=True,
    )
    lines = out.stdout.decode().splitlines()
    assert [json.loads(line)["path"] for line in lines[0::2]] == ["/ka/0", "/ka/1", "/ka/2"]
    assert lines[1::2] == ["1", "0", "0"]  # curl opened one connection for the three
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        for i in range(10):
            assert client.post(f"/ka/echo-body/{i}", content=b"x" * i).status_code == 200
    assert len(proxy.ka.requests) == 13
    assert proxy.ka.accepts == 1
