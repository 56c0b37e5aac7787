"""Robustness and leaks, through the real proxy (issue 13): half-closing clients, pipelines that
bascule itself paused, the retry count in the access log, `Date` on bascule's own answers, and
what error bodies and sticky cookies may tell a client."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from helpers import (
    Backend,
    BackendHandler,
    Client,
    Seen,
    echo,
    free_port,
    proxy_config,
    running,
    who,
)

IMF_FIXDATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")


def log_entries(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The access log's entries, once there are at least `count` (bounded wait)."""
    deadline = time.monotonic() + timeout
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            entries = [json.loads(line) for line in path.read_text().splitlines() if line]
            if len(entries) >= count:
                break
        time.sleep(0.05)
    return entries


# ------------------------------------------------------------------ half-closing clients


@pytest.mark.parametrize("count", [1, 3])
def test_half_closed_client_gets_its_responses_then_the_close(tmp_path: Path, count: int) -> None:
    def slow(h: BackendHandler, seen: Seen) -> None:
        time.sleep(0.2)  # the client's FIN arrives while the exchange is in progress
        echo(h, seen)

    backend = Backend(slow)
    port = free_port()
    try:
        with running(proxy_config(port, [backend.address]), tmp_path, port), Client(
                port, timeout=10) as c:
            c.send(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count)))
            c.sock.shutdown(socket.SHUT_WR)
            for i in range(count):
                status, _, body, _ = c.response()
                assert status == 200 and json.loads(body)["path"] == f"/r{i}"
            # closed at once, not after the 60 s idle timeout
            assert c.closed_by_peer(timeout=3.0)
    finally:
        backend.stop()


# ------------------------------------------------------------------ the head timeout


def test_pipeline_paused_by_bascule_is_not_cut_by_the_head_timeout(tmp_path: Path) -> None:
    body = b"x" * 32768

    def big(h: BackendHandler, seen: Seen) -> None:
        h.reply(200, body)

    backend = Backend(big)
    port = free_port()
    count = 400
    # ~1 KiB heads: 400 of them span several reads, so one read ends inside a head, which
    # then waits in the kernel while bascule pauses reading behind the pipeline.
    one = b"GET /p HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (b"p" * 997)
    config = proxy_config(port, [backend.address],
                          listener={"timeouts": {"request_header": "1s"}})
    try:
        with running(config, tmp_path, port), Client(port, timeout=20) as c:
            # A small receive buffer: 13 MiB of responses cannot all wait in the kernel.
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sender = threading.Thread(target=c.send, args=(one * count,), daemon=True)
            sender.start()
            time.sleep(2.5)  # not reading, for more than the head timeout
            statuses = [c.response()[0] for _ in range(count)]
            sender.join(10)
            assert statuses == [200] * count
    finally:
        backend.stop()


def test_every_408_is_access_logged(tmp_path: Path) -> None:
    def slow(h: BackendHandler, seen: Seen) -> None:
        time.sleep(1.0)
        echo(h, seen)

    backend = Backend(slow)
    port = free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [backend.address], access_log=str(log), listener={
        "timeouts": {"request_header": "300ms", "request_body": "300ms"}})
    try:
        with running(config, tmp_path, port):
            with Client(port, timeout=10) as c:
                # a whole request, then the start of a head that never ends: answered after
                # the exchange in progress
                c.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHo")
                assert c.response()[0] == 200
                assert c.response()[0] == 408
            with Client(port, timeout=10) as c:  # a head that never ends, alone
                c.send(b"GET /alone HTTP/1.1\r\nHo")
                assert c.response()[0] == 408
            with Client(port, timeout=10) as c:  # a body that stalls
                c.send(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
                assert c.response()[0] == 408
            entries = log_entries(log, 4)
        assert sorted((e["status"], e["uri"], e["error"]) for e in entries) == [
            (200, "/first", ""),
            (408, "/alone", "request header timeout"),
            (408, "/body", "request body timeout"),
            (408, "/second", "request header timeout"),
        ]
    finally:
        backend.stop()


# ------------------------------------------------------------------ retries in the log


@pytest.mark.parametrize("dead", [2, 3])
def test_retries_count_only_retries_made(tmp_path: Path, dead: int) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    endpoints = [f"127.0.0.1:{free_port()}" for _ in range(dead)]  # nothing listens: refused
    config = proxy_config(port, endpoints, access_log=str(log),
                          cluster={"retries": {"attempts": 5}})
    with running(config, tmp_path, port):
        r = httpx.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}, timeout=5)
        assert r.status_code == 502
        entries = log_entries(log, 1)
    # every endpoint tried once: the first try and dead - 1 retries, no phantom one
    assert [e["retries"] for e in entries] == [dead - 1]


# ------------------------------------------------------------------ Date


def test_answers_bascule_makes_carry_a_date(tmp_path: Path, three: list[Backend]) -> None:
    port = free_port()
    routes = [
        {"match": {"path_prefix": "/direct"}, "direct_response": {"status": 200, "body": "hi"}},
        {"match": {"path_prefix": "/moved"}, "redirect": {"path": "/elsewhere"}},
        {"match": {"path_prefix": "/dead"}, "cluster": "dead"},
        {"match": {"path_prefix": "/buffered"}, "cluster": "c", "buffer_request": True},
        {"match": {"host": "served.test"}, "cluster": "c"},
    ]
    config = proxy_config(port, [three[0].address], routes=routes, extra_clusters=[
        {"name": "dead", "endpoints": [{"address": f"127.0.0.1:{free_port()}"}]}])
    with running(config, tmp_path, port):
        dates = []
        for path, status in [("/direct", 200), ("/moved", 302), ("/dead", 502),
                             ("/none", 404)]:
            r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
            assert r.status_code == status
            dates.append(r.headers["date"])
        with Client(port) as c:  # a parse error, answered by the session itself
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            status, headers, _, _ = c.response()
            assert status == 400
            dates.append(headers["date"])
        with Client(port) as c:  # bascule's own 100 Continue carries none
            c.send(b"POST /buffered HTTP/1.1\r\nHost: served.test\r\nContent-Length: 2\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            status, headers, _ = c.head()
            assert status == 100 and "date" not in headers
    for value in dates:
        assert IMF_FIXDATE.fullmatch(value), value
        assert abs(email.utils.parsedate_to_datetime(value).timestamp() - time.time()) < 10


# ------------------------------------------------------------------ leaks in error bodies


def test_gateway_errors_tell_clients_nothing_internal(tmp_path: Path) -> None:
    def silent(h: BackendHandler, seen: Seen) -> None:
        time.sleep(2.0)

    quiet = Backend(silent)
    refused = f"127.0.0.1:{free_port()}"
    port = free_port()
    log = tmp_path / "access.log"
    routes = [
        {"match": {"path_prefix": "/refused"}, "cluster": "secret-refused"},
        {"match": {"path_prefix": "/empty"}, "cluster": "secret-empty"},
        {"match": {"path_prefix": "/slow"}, "cluster": "secret-slow"},
    ]
    config = proxy_config(port, [refused], access_log=str(log), routes=routes, extra_clusters=[
        {"name": "secret-refused", "endpoints": [{"address": refused}]},
        {"name": "secret-empty", "endpoints": [{"address": refused, "weight": 0}]},
        {"name": "secret-slow", "endpoints": [{"address": quiet.address}],
         "timeouts": {"response_header": "300ms"}},
    ])
    try:
        with running(config, tmp_path, port):
            bodies = {}
            for path, status in [("/refused", 502), ("/empty", 503), ("/slow", 504)]:
                r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
                assert r.status_code == status
                bodies[path] = r.text
            entries = log_entries(log, 3)
    finally:
        quiet.stop()
    for path, text in bodies.items():
        status = {"/refused": 502, "/empty": 503, "/slow": 504}[path]
        assert text.startswith(f"{status} "), text
        for secret in ("127.0.0.1", "secret-", "refused", "errno", "Errno", "connect"):
            assert secret not in text, (path, text)
    errors = {e["uri"]: e["error"] for e in entries}
    # the details stay in the log, for the operator
    assert refused in errors["/refused"] and "refused" in errors["/refused"].lower()
    assert "secret-empty" in errors["/empty"]
    assert errors["/slow"] == "endpoint did not answer in time"


# ------------------------------------------------------------------ sticky cookies


def sticky_cookie(r: httpx.Response) -> str:
    return r.headers["set-cookie"].split(";")[0].split("=", 1)[1]


def test_sticky_cookie_carries_no_address(tmp_path: Path, three: list[Backend]) -> None:
    port = free_port()
    config = proxy_config(port, [b.address for b in three], cluster={"sticky": {}})
    url = f"http://127.0.0.1:{port}/"
    with running(config, tmp_path, port):
        first = httpx.get(url, timeout=5)
        value = sticky_cookie(first)
        pinned = next(b for b in three if b.name == who(first))
        assert re.fullmatch(r"[0-9a-f]{20,64}", value), value
        assert "127.0.0.1" not in value
        r = httpx.get(url, headers={"Cookie": f"bascule_sticky={value}"}, timeout=5)
        assert who(r) == pinned.name and "set-cookie" not in r.headers


def test_sticky_cookie_signed_with_the_old_public_key_names_nothing(
    tmp_path: Path, three: list[Backend]
) -> None:
    port = free_port()
    config = proxy_config(port, [b.address for b in three], cluster={"sticky": {}})
    url = f"http://127.0.0.1:{port}/"
    with running(config, tmp_path, port):
        # Cookies computed with the old, public key ("bascule:" + cluster name) name nothing:
        # a fresh cookie comes back each time.
        for b in three:
            for message, shape in [(b.address, "{a}~{m}"), (b.address, "{m}")]:
                mac = hmac.new(b"bascule:c", message.encode(), hashlib.sha256).hexdigest()
                forged = shape.format(a=b.address, m=mac[:20])
                r = httpx.get(url, headers={"Cookie": f"bascule_sticky={forged}"}, timeout=5)
                assert r.status_code == 200 and "set-cookie" in r.headers, forged


def test_workers_honour_each_others_sticky_cookies(tmp_path: Path,
                                                  three: list[Backend]) -> None:
    port = free_port()
    config = proxy_config(port, [b.address for b in three], workers=2,
                          cluster={"sticky": {}})
    url = f"http://127.0.0.1:{port}/"
    with running(config, tmp_path, port):
        first = httpx.get(url, timeout=5)
        value = sticky_cookie(first)
        pinned = next(b for b in three if b.name == who(first))
        # Each worker keeps its own pooled connection to the endpoint: a second one opened
        # means the other worker served a request too.
        deadline = time.monotonic() + 20
        sent = 0
        while pinned.accepts < 2 and time.monotonic() < deadline and sent < 400:
            # a new connection each time: either worker may take it
            r = httpx.get(url, headers={"Cookie": f"bascule_sticky={value}"}, timeout=5)
            sent += 1
            assert who(r) == pinned.name and "set-cookie" not in r.headers
        assert pinned.accepts >= 2, "only one worker answered"


def test_check_warns_about_a_sticky_cluster_without_secret(tmp_path: Path) -> None:
    def check(sticky: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "b.yaml"
        path.write_text(yaml.safe_dump(proxy_config(free_port(), ["127.0.0.1:9"],
                                                     cluster={"sticky": sticky})))
        return subprocess.run([sys.executable, "-m", "bascule", "check", "-c", str(path)],
                              capture_output=True, text=True, timeout=30, check=False)

    without = check({})
    assert without.returncode == 0, without.stderr
    assert "warning" in without.stderr and "clusters[0].sticky.secret" in without.stderr
    with_secret = check({"secret": "s3cret"})
    assert with_secret.returncode == 0 and "warning" not in with_secret.stderr
