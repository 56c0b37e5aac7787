"""Errors through real sockets: every bad request earns its status, a short body and a close;
every backend failure earns 502/503/504; and no bad client harms anyone else.

One bascule serves most tests (module fixture): small limits, a 500 ms request-head timeout,
and one cluster per kind of backend trouble, chosen by the request's Host.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers import (
    Backend,
    BackendHandler,
    Bascule,
    Client,
    Seen,
    free_port,
    proxy_config,
    running,
)


def req(host: str = "app.test", path: str = "/", extra: bytes = b"", method: bytes = b"GET",
        body: bytes = b"") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n%s" % (
        method, path.encode(), host.encode(), extra, body)


# ------------------------------------------------------------------ backends


def silent_close(h: BackendHandler, seen: Seen) -> None:
    h.close_connection = True  # closes without a byte of response


def garbage(h: BackendHandler, seen: Seen) -> None:
    h.wfile.write(b"THIS IS NOT HTTP\r\n\x00\x01\x02\r\n\r\n")
    h.wfile.flush()
    h.close_connection = True


RELEASE = threading.Event()


def never_answers(h: BackendHandler, seen: Seen) -> None:
    RELEASE.wait(5.0)  # bounded: released at teardown
    h.close_connection = True


MAX_URI = 1024
MAX_HEADER_SIZE = 4096
MAX_HEADERS = 20
MAX_BODY = 1000


@dataclass
class Proxy:
    port: int
    bascule: Bascule
    log: Path
    app: Backend

    def one(self, data: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        """Send on a fresh connection: (status, headers, body, connection closed after)."""
        c = Client(self.port)
        try:
            c.send(data)
            status, headers, body, _ = c.response()
            return status, headers, body, c.closed_by_peer()
        finally:
            c.close()

    def log_entries(self) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("errors")
    backends = {
        "c": Backend(name="app"),
        "closes": Backend(silent_close, name="closes"),
        "garbage": Backend(garbage, name="garbage"),
        "slow": Backend(never_answers, name="slow"),
        "zero": Backend(name="zero"),
    }
    port = free_port()
    log = tmp / "access.log"
    config = proxy_config(
        port, [backends["c"].address], access_log=str(log),
        listener={
            "timeouts": {"request_header": "500ms"},
            "limits": {"max_uri": MAX_URI, "max_header_size": MAX_HEADER_SIZE,
                       "max_headers": MAX_HEADERS, "max_request_body": MAX_BODY},
        },
        routes=[
            {"match": {"host": "app.test"}, "cluster": "c"},
            {"match": {"host": "refused.test"}, "cluster": "refused"},
            {"match": {"host": "closes.test"}, "cluster": "closes"},
            {"match": {"host": "garbage.test"}, "cluster": "garbage"},
            {"match": {"host": "slow.test"}, "cluster": "slow"},
            {"match": {"host": "zero.test"}, "cluster": "zero"},
        ],
        extra_clusters=[
            {"name": "refused", "endpoints": [{"address": f"127.0.0.1:{free_port()}"}]},
            {"name": "closes", "endpoints": [{"address": backends["closes"].address}]},
            {"name": "garbage", "endpoints": [{"address": backends["garbage"].address}]},
            {"name": "slow", "endpoints": [{"address": backends["slow"].address}],
             "timeouts": {"response_header": "500ms"}},
            {"name": "zero", "endpoints": [{"address": backends["zero"].address, "weight": 0}]},
        ],
    )
    try:
        with running(config, tmp, port) as b:
            yield Proxy(port, b, log, backends["c"])
    finally:
        RELEASE.set()
        for backend in backends.values():
            backend.stop()


def assert_refused(proxy: Proxy, data: bytes, status: int) -> bytes:
    """The proxy answers `status` with a short text body and `Connection: close`, then closes."""
    got, headers, body, closed = proxy.one(data)
    assert got == status, body
    assert headers.get("connection", "").lower() == "close"
    assert body.startswith(b"%d " % status)
    assert 0 < len(body) < 200
    assert closed, "the connection stayed open after the error"
    assert proxy.bascule.proc is not None and proxy.bascule.proc.poll() is None
    return body


# ------------------------------------------------------------------ 400


@pytest.mark.parametrize("head", [
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    b"Content-Length: 3\r\nContent-Length: 3\r\n",
    b"Content-Length: 3\r\nContent-Length: 4\r\n",
    b"Content-Length: abc\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 1 2\r\n",
    b"Content-Length: +3\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
], ids=["cl+te", "te+cl", "cl-dup-same", "cl-dup-diff", "cl-abc", "cl-negative", "cl-space",
        "cl-plus", "te-chunked-not-last", "te-gzip-alone", "te-chunked-twice"])
def test_bad_framing_is_400(proxy: Proxy, head: bytes) -> None:
    before = len(proxy.app.requests)
    assert_refused(proxy, req(method=b"POST", extra=head, body=b"abc"), 400)
    assert len(proxy.app.requests) == before  # nothing reached the backend


@pytest.mark.parametrize("data", [
    req(extra=b"X-A: 1\r\n folded\r\n"),
    req(extra=b"X-A: 1\r\n\tfolded\r\n"),
    req(extra=b"Bad Name: x\r\n"),
    req(extra=b"X :y\r\n"),
    req(extra=b"X\x01Y: z\r\n"),
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: app.test\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: app.test\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: app.test\r\n\r\n",
    b"GET nopath HTTP/1.1\r\nHost: app.test\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",
], ids=["obs-fold-space", "obs-fold-tab", "space-in-name", "space-before-colon",
        "ctl-in-name", "no-host", "two-hosts-same", "two-hosts-diff", "no-target",
        "extra-in-request-line", "bad-version", "bad-method", "relative-target", "tls-hello"])
def test_bad_head_is_400(proxy: Proxy, data: bytes) -> None:
    before = len(proxy.app.requests)
    assert_refused(proxy, data, 400)
    assert len(proxy.app.requests) == before


@pytest.mark.parametrize("chunks", [
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"3\r\nabcdef\r\n0\r\n\r\n",
    b"-1\r\nabc\r\n0\r\n\r\n",
    b"fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
], ids=["not-hex", "longer-than-size", "negative", "overflow"])
def test_bad_chunk_is_400(proxy: Proxy, chunks: bytes) -> None:
    data = req(method=b"POST", extra=b"Transfer-Encoding: chunked\r\n", body=chunks)
    assert_refused(proxy, data, 400)


def test_http10_without_host_is_not_400(proxy: Proxy) -> None:
    # Host is mandatory in 1.1 only; a 1.0 request without one simply matches no host route.
    status, _, body, _ = proxy.one(b"GET / HTTP/1.0\r\n\r\n")
    assert status == 404, body


# ------------------------------------------------------------------ 501


def test_unknown_transfer_coding_is_501(proxy: Proxy) -> None:
    data = req(method=b"POST", extra=b"Transfer-Encoding: gzip, chunked\r\n",
               body=b"3\r\nabc\r\n0\r\n\r\n")
    assert_refused(proxy, data, 501)
    assert not proxy.app.requests or proxy.app.requests[-1].method != "POST"


def test_connect_is_501(proxy: Proxy) -> None:
    assert_refused(proxy, b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n", 501)


# ------------------------------------------------------------------ 414, 431


def test_long_uri_is_414(proxy: Proxy) -> None:
    assert_refused(proxy, req(path="/" + "a" * MAX_URI), 414)
    # just under the limit still passes
    status, _, body, _ = proxy.one(req(path="/" + "a" * (MAX_URI - 10),
                                       extra=b"Connection: close\r\n"))
    assert status == 200
    assert json.loads(body)["path"] == "/" + "a" * (MAX_URI - 10)


def test_huge_header_is_431(proxy: Proxy) -> None:
    assert_refused(proxy, req(extra=b"X-Big: %s\r\n" % (b"b" * (MAX_HEADER_SIZE + 100))), 431)


def test_endless_head_is_cut_with_431(proxy: Proxy) -> None:
    # A header that never ends: bascule must answer before buffering much of it.
    c = Client(proxy.port)
    try:
        c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: ")
        sent = 0
        c.sock.settimeout(0.05)
        for _ in range(64):  # at most 256 KiB
            c.send(b"b" * 4096)
            sent += 4096
            try:
                if c._fill():
                    break
            except TimeoutError:
                pass
        c.sock.settimeout(5)
        status, headers, body, _ = c.response()
    finally:
        c.close()
    assert status == 431, body
    assert headers["connection"].lower() == "close"
    assert sent <= MAX_HEADER_SIZE + MAX_URI + 32 * 1024


def test_head_limit_counts_only_heads(proxy: Proxy) -> None:
    # Head size limits apply to each head, not to whatever else arrives in the same read:
    # a body sent together with its head, or pipelined requests, are no oversized head.
    one = req(path="/pipelined", extra=b"X-Pad: %s\r\n" % (b"p" * 900))
    n = 40  # 40 KiB in one send, each head well under MAX_HEADER_SIZE
    statuses = []
    c = Client(proxy.port)
    try:
        c.send(one * (n - 1) + one.replace(b"X-Pad", b"Connection: close\r\nX-Pad"))
        for _ in range(n):
            statuses.append(c.response()[0])  # noqa: PERF401 - keeps the statuses before an EOF
    except EOFError:
        pass
    finally:
        c.close()
    assert statuses == [200] * n


def test_too_many_headers_is_431(proxy: Proxy) -> None:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    assert_refused(proxy, req(extra=extra), 431)
    # exactly the limit (Host counts) passes
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 2))
    status, _, _, _ = proxy.one(req(extra=extra + b"Connection: close\r\n"))
    assert status == 200


# ------------------------------------------------------------------ 408


def test_half_sent_head_is_408(proxy: Proxy) -> None:
    c = Client(proxy.port)
    try:
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Partial: ")
        status, headers, body, _ = c.response()
        elapsed = time.monotonic() - t0
        assert status == 408, body
        assert 0.4 < elapsed < 2.0
        assert headers["connection"].lower() == "close"
        assert body.startswith(b"408 ")
        assert c.closed_by_peer()
    finally:
        c.close()


def test_silent_client_is_timed_out(proxy: Proxy) -> None:
    c = Client(proxy.port)
    try:
        t0 = time.monotonic()
        status, headers, body, _ = c.response()
        assert status == 408, body
        assert 0.4 < time.monotonic() - t0 < 2.0
        assert headers["connection"].lower() == "close"
        assert c.closed_by_peer()
    finally:
        c.close()


def test_header_timeout_counts_the_whole_head_not_each_read(proxy: Proxy) -> None:
    # A slowloris trickling a byte every 50 ms is cut at the deadline, not kept alive by bytes.
    c = Client(proxy.port)
    try:
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Trickle: ")
        c.sock.settimeout(0.05)
        for _ in range(40):  # 2 s at most: four times the deadline
            c.send(b"x")
            try:
                if c._fill():
                    break
            except TimeoutError:
                pass
        elapsed = time.monotonic() - t0
        c.sock.settimeout(5)
        status, _, _, _ = c.response()
    finally:
        c.close()
    assert status == 408
    assert 0.4 < elapsed < 1.5


# ------------------------------------------------------------------ 413


def test_content_length_above_limit_is_413(proxy: Proxy) -> None:
    before = len(proxy.app.requests)
    data = req(method=b"POST", extra=b"Content-Length: %d\r\n" % (MAX_BODY + 1),
               body=b"x" * (MAX_BODY + 1))
    assert_refused(proxy, data, 413)
    assert len(proxy.app.requests) == before
    # the limit itself passes
    status, _, body, _ = proxy.one(req(
        method=b"POST", extra=b"Content-Length: %d\r\nConnection: close\r\n" % MAX_BODY,
        body=b"x" * MAX_BODY))
    assert status == 200
    assert json.loads(body)["body_len"] == MAX_BODY


def test_chunked_body_growing_above_limit_is_413(proxy: Proxy) -> None:
    chunks = b"".join(b"64\r\n%s\r\n" % (b"y" * 100) for _ in range(MAX_BODY // 100 + 1))
    data = req(method=b"POST", extra=b"Transfer-Encoding: chunked\r\n",
               body=chunks + b"0\r\n\r\n")
    assert_refused(proxy, data, 413)


# ------------------------------------------------------------------ 404


def test_no_route_is_404_and_keeps_the_connection(proxy: Proxy) -> None:
    c = Client(proxy.port)
    try:
        c.send(req(host="nowhere.test", path="/x"))
        status, headers, body, _ = c.response()
        assert status == 404
        assert body.startswith(b"404 ")
        assert len(body) < 200
        assert headers.get("connection", "").lower() != "close"
        c.send(req(path="/after-404"))
        status, _, body, _ = c.response()
        assert status == 200
        assert json.loads(body)["path"] == "/after-404"
    finally:
        c.close()


# ------------------------------------------------------------------ 502, 503, 504


@pytest.mark.parametrize("host", ["refused.test", "garbage.test", "closes.test"])
def test_backend_failure_is_502(proxy: Proxy, host: str) -> None:
    c = Client(proxy.port)
    try:
        for method in (b"GET", b"POST"):
            extra = b"Content-Length: 2\r\n" if method == b"POST" else b""
            c.send(req(host=host, method=method, extra=extra, body=b"hi" if extra else b""))
            status, headers, body, _ = c.response()
            assert status == 502, body
            assert body.startswith(b"502 ")
            assert len(body) < 300
        # the client connection survives a backend's failure
        c.send(req(path="/after-502", extra=b"Connection: close\r\n"))
        status, headers, body, _ = c.response()
        assert status == 200
        assert headers["connection"].lower() == "close"
        assert c.closed_by_peer()
    finally:
        c.close()


def test_all_endpoints_weight_zero_is_503_with_retry_after(proxy: Proxy) -> None:
    status, headers, body, _ = proxy.one(req(host="zero.test", extra=b"Connection: close\r\n"))
    assert status == 503, body
    assert "retry-after" in headers
    assert int(headers["retry-after"]) >= 0
    assert body.startswith(b"503 ")
    assert len(body) < 200


def test_endpoint_that_never_answers_is_504(proxy: Proxy) -> None:
    t0 = time.monotonic()
    status, headers, body, closed = proxy.one(req(host="slow.test", extra=b"Connection: close\r\n"))
    elapsed = time.monotonic() - t0
    assert status == 504, body
    assert body.startswith(b"504 ")
    assert 0.4 < elapsed < 2.5
    assert headers["connection"].lower() == "close"
    assert closed


# ------------------------------------------------------------------ the access log


def test_errors_are_access_logged(proxy: Proxy) -> None:
    cases = [
        (req(path="/log-two-hosts", extra=b"Host: evil.test\r\n"), 400),
        (req(path="/log-cl", method=b"POST", extra=b"Content-Length: 1, 2\r\n"), 400),
        (req(path="/log-413", method=b"POST", extra=b"Content-Length: 99999\r\n"), 413),
        (req(path="/log-501", method=b"POST", extra=b"Transfer-Encoding: gzip, chunked\r\n"),
         501),
        (req(path="/log-431", extra=b"X-Big: %s\r\n" % (b"b" * MAX_HEADER_SIZE)), 431),
        (req(host="nowhere.test", path="/log-404", extra=b"Connection: close\r\n"), 404),
        (req(host="refused.test", path="/log-502", extra=b"Connection: close\r\n"), 502),
        (req(host="zero.test", path="/log-503", extra=b"Connection: close\r\n"), 503),
    ]
    for data, status in cases:
        assert proxy.one(data)[0] == status
    wanted = {data.split(b" ")[1].decode(): status for data, status in cases}
    found: dict[str, object] = {}
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and len(found) < len(wanted):
        found = {str(e["uri"]): e["status"] for e in proxy.log_entries()
                 if str(e["uri"]) in wanted}
        time.sleep(0.05)
    assert found == wanted


# ------------------------------------------------------------------ bad clients are contained


def test_bad_clients_never_harm_other_connections(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    stop = threading.Event()
    garbage_statuses: list[bytes] = []

    def stream_garbage() -> None:
        for _ in range(200):  # bounded
            if stop.is_set():
                return
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    first = b""
                    for _ in range(16):
                        s.sendall(os.urandom(4096))
                        s.settimeout(0)
                        try:
                            first += s.recv(65536)
                        except BlockingIOError:
                            pass
                        s.settimeout(2)
                    garbage_statuses.append(first[:12])
            except OSError:
                garbage_statuses.append(b"reset")

    config = proxy_config(port, [backend.address])  # default 10 s head timeout
    with running(config, tmp_path, port) as b:
        slow = []
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /slow%d HTTP/1.1\r\nHost: x\r\nX-Slow: " % i)
            slow.append(s)
        thread = threading.Thread(target=stream_garbage, daemon=True)
        thread.start()
        try:
            latencies = []
            with httpx.Client(timeout=5) as keep:
                for i in range(40):
                    t0 = time.monotonic()
                    if i % 2:
                        r = keep.get(f"http://127.0.0.1:{port}/ok{i}")
                    else:
                        r = httpx.get(f"http://127.0.0.1:{port}/ok{i}", timeout=5)
                    latencies.append(time.monotonic() - t0)
                    assert r.status_code == 200
                    assert r.json()["path"] == f"/ok{i}"
            # Prompt, with room for a loaded 2-core machine; the clients' own timeout is 5 s.
            assert sorted(latencies)[len(latencies) // 2] < 0.5, latencies
            assert max(latencies) < 2.5, latencies
        finally:
            stop.set()
            thread.join(10)
        assert any(s.startswith(b"HTTP/1.1 400") for s in garbage_statuses), garbage_statuses[:5]
        # the slowloris connections were held, not dropped: finishing their heads serves them
        for i, s in enumerate(slow):
            s.sendall(b"1\r\nConnection: close\r\n\r\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            s.close()
            assert out.startswith(b"HTTP/1.1 200"), out[:100]
            assert b'"path": "/slow%d"' % i in out
        assert b.proc is not None and b.proc.poll() is None
