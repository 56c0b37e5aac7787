"""Cluster features through the real proxy: hash keys, sticky cookies, drain/disable,
outlier ejection, circuit breaking and the queue."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import Backend, BackendHandler, Seen, echo, free_port, proxy_config, running, who


@pytest.mark.parametrize(
    ("balancer", "hash_key", "request_kw"),
    [
        ("maglev", {"header": "X-User"}, lambda u: {"headers": {"X-User": u}}),
        ("ring_hash", {"cookie": "uid"}, lambda u: {"headers": {"Cookie": f"a=1; uid={u}"}}),
        ("maglev", {"query": "user"}, lambda u: {"params": {"user": u, "z": "1"}}),
        ("hash", "uri", lambda u: {"path": f"/u/{u}"}),
    ],
)
def test_keyed_balancer_is_consistent_across_workers(
    tmp_path: Path, three: list[Backend], balancer: str, hash_key: Any, request_kw: Any
) -> None:
    port = free_port()
    config = proxy_config(port, [b.address for b in three], workers=2,
                          cluster={"balancer": balancer, "hash_key": hash_key})
    with running(config, tmp_path, port):
        owners: dict[str, set[str]] = {}
        for user in [f"user{i}" for i in range(12)]:
            kw = request_kw(user)
            path = kw.pop("path", "/")
            for _ in range(4):  # new connections: both workers answer
                r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5, **kw)
                owners.setdefault(user, set()).add(who(r))
        assert all(len(s) == 1 for s in owners.values()), owners
        assert len({next(iter(s)) for s in owners.values()}) >= 2  # keys spread


def test_source_ip_balancer_needs_no_key(tmp_path: Path, three: list[Backend]) -> None:
    port = free_port()
    config = proxy_config(port, [b.address for b in three], cluster={"balancer": "source_ip"})
    with running(config, tmp_path, port), httpx.Client(timeout=5) as client:
        assert len({who(client.get(f"http://127.0.0.1:{port}/")) for _ in range(10)}) == 1


def test_sticky_cookie_pins_and_falls_back(tmp_path: Path, three: list[Backend]) -> None:
    port = free_port()
    config = proxy_config(port, [b.address for b in three], workers=2, cluster={
        "sticky": {"cookie": "srv", "secret": "s3cret", "max_age": 3600},
        "health_check": {"interval": 0.1, "fall": 1, "jitter": 0},
    })
    with running(config, tmp_path, port):
        url = f"http://127.0.0.1:{port}/"
        first = httpx.get(url, timeout=5)
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("srv=") and "Max-Age=3600" in cookie and "HttpOnly" in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        pinned = who(first)
        for _ in range(10):
            r = httpx.get(url, headers={"Cookie": f"srv={value}"}, timeout=5)
            assert who(r) == pinned
            assert "set-cookie" not in r.headers  # the cookie already says the right thing
        # A forged cookie (a value bascule did not make) is ignored: a fresh one comes.
        forged = value[:-1] + ("1" if value[-1] == "0" else "0")
        r = httpx.get(url, headers={"Cookie": f"srv={forged}"}, timeout=5)
        assert "set-cookie" in r.headers
        # The pinned endpoint goes down (its checks fail; pooled connections to it would
        # still work): requests go elsewhere, with a new cookie.
        next(b for b in three if b.name == pinned).stop()
        time.sleep(0.4)
        r = httpx.get(url, headers={"Cookie": f"srv={value}"}, timeout=5)
        assert who(r) != pinned and r.headers["set-cookie"].startswith("srv=")


def test_drain_and_disable_take_no_traffic(tmp_path: Path, three: list[Backend]) -> None:
    port = free_port()
    config = proxy_config(port, [], cluster={"endpoints": [
        {"address": three[0].address},
        {"address": three[1].address, "drain": True},
        {"address": three[2].address, "disable": True},
    ]})
    with running(config, tmp_path, port), httpx.Client(timeout=5) as client:
        assert {who(client.get(f"http://127.0.0.1:{port}/")) for _ in range(9)} == {"b0"}


def test_outlier_ejects_failing_endpoint_then_returns(tmp_path: Path) -> None:
    status = {"b2": 500}

    def handler(h: BackendHandler, seen: Seen) -> None:
        code = status.get(h.server.backend.name, 200)
        if code != 200:
            h.reply(code, b"broken")
        else:
            echo(h, seen)

    b1, b2 = Backend(handler, name="b1"), Backend(handler, name="b2")
    port, admin = free_port(), free_port()
    config = proxy_config(port, [b1.address, b2.address], cluster={
        "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": 1,
                              "max_ejection_percent": 50},
    })
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    try:
        with running(config, tmp_path, port), httpx.Client(timeout=5) as client:
            codes = [client.get(f"http://127.0.0.1:{port}/").status_code for _ in range(6)]
            assert codes.count(500) == 3  # round robin: b2's three 500s, then it is out
            ejected_at = time.monotonic()
            assert all(who(client.get(f"http://127.0.0.1:{port}/")) == "b1" for _ in range(10))
            view = httpx.get(f"http://127.0.0.1:{admin}/clusters").json()["c"]["endpoints"]
            assert view[b2.address]["state"] == "ejected"
            assert view[b2.address]["ejections"] == 1 and view[b2.address]["failures"] == 3
            status["b2"] = 200
            time.sleep(max(0.0, ejected_at + 1.1 - time.monotonic()))
            seen = {who(client.get(f"http://127.0.0.1:{port}/")) for _ in range(4)}
            assert seen == {"b1", "b2"}
    finally:
        b1.stop()
        b2.stop()


def slow_backend(name: str, delay: float) -> Backend:
    def handler(h: BackendHandler, seen: Seen) -> None:
        time.sleep(delay)
        echo(h, seen)

    return Backend(handler, name=name)


Result = tuple[int, float, dict[str, str], str]


def logged_errors(path: Path, count: int) -> list[str]:
    """The `error` field of the access log's 503 entries (bodies say no more than `503 ...`),
    once `count` of them are there (bounded wait)."""
    errors: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(errors) < count:
        lines = path.read_text().splitlines() if path.exists() else []
        errors = [e["error"] for e in map(json.loads, lines) if e["status"] == 503]
        time.sleep(0.05)
    return errors


def parallel(port: int, n: int) -> list[Result]:
    """n requests at once, each on its own connection: (status, seconds, headers, body)."""
    results: list[Result] = []
    lock = threading.Lock()

    def one() -> None:
        t0 = time.monotonic()
        r = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        with lock:
            results.append((r.status_code, time.monotonic() - t0, dict(r.headers), r.text))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_max_requests_fast_503_counted(tmp_path: Path) -> None:
    b = slow_backend("slow", 1.5)
    port, admin = free_port(), free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [b.address], access_log=str(log),
                          cluster={"limits": {"max_requests": 2}})
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    try:
        with running(config, tmp_path, port):
            results = parallel(port, 6)
            ok = [r for r in results if r[0] == 200]
            refused = [r for r in results if r[0] == 503]
            assert len(ok) == 2 and len(refused) == 4
            # Fast: long before the backend's 1.5 s (a loose bound, for a loaded machine).
            assert all(t < 0.75 and h["retry-after"] == "1" for _, t, h, _ in refused)
            assert all(body.startswith("503 ") for *_, body in refused)
            assert logged_errors(log, 4) == ["cluster c is at max_requests"] * 4
            view = httpx.get(f"http://127.0.0.1:{admin}/clusters").json()["c"]
            assert view["rejected"] == 4 and view["active"] == 0
    finally:
        b.stop()


def test_queue_waits_for_a_free_endpoint(tmp_path: Path) -> None:
    b = slow_backend("slow", 0.3)
    port = free_port()
    config = proxy_config(port, [], cluster={
        "endpoints": [{"address": b.address, "max_connections": 1}],
        "limits": {"max_pending": 10, "queue_timeout": 5},
    })
    try:
        with running(config, tmp_path, port):
            results = parallel(port, 3)
            assert [r[0] for r in results] == [200, 200, 200]
            # One at a time: the last waited for the two before it, on the same connection.
            assert max(r[1] for r in results) >= 0.85
            assert b.accepts == 1
    finally:
        b.stop()


def test_queue_timeout_and_full_queue_give_503(tmp_path: Path) -> None:
    b = slow_backend("slow", 1.5)
    port, admin = free_port(), free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [], access_log=str(log), cluster={
        "endpoints": [{"address": b.address, "max_connections": 1}],
        "limits": {"max_pending": 2, "queue_timeout": 0.5},
    })
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    try:
        with running(config, tmp_path, port):
            results = parallel(port, 5)
            codes = sorted(r[0] for r in results)
            assert codes == [200, 503, 503, 503, 503]
            errors = sorted(logged_errors(log, 4))
            assert errors == ["every endpoint of cluster c is full"] * 2 + [
                "no endpoint of cluster c freed up in time"] * 2
            # The two queued waited queue_timeout (well under the backend's 1.5 s); the queue
            # was full for the two others.
            waited = sorted(r[1] for r in results if r[0] == 503)[2:]
            assert all(0.45 <= t < 1.4 for t in waited), waited
            view = httpx.get(f"http://127.0.0.1:{admin}/clusters").json()["c"]
            assert view["queue_timeouts"] == 2 and view["rejected"] == 2 and view["queued"] == 2
    finally:
        b.stop()


def test_max_connections_caps_the_cluster_and_overflows_to_503(tmp_path: Path) -> None:
    a, b = slow_backend("a", 1.0), slow_backend("b", 1.0)
    port = free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [a.address, b.address], access_log=str(log),
                          cluster={"limits": {"max_connections": 2}})
    try:
        with running(config, tmp_path, port):
            results = parallel(port, 5)
            codes = sorted(r[0] for r in results)
            assert codes == [200, 200, 503, 503, 503]
            assert logged_errors(log, 3) == ["cluster c is at max_connections"] * 3
            # with every connection idle again, requests flow over the same two
            for _ in range(4):
                assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        assert a.accepts + b.accepts == 2
    finally:
        a.stop()
        b.stop()


def test_max_connections_with_a_queue_reuses_the_connections(tmp_path: Path) -> None:
    b = slow_backend("slow", 0.3)
    port = free_port()
    config = proxy_config(port, [b.address], cluster={
        "limits": {"max_connections": 1, "max_pending": 10, "queue_timeout": 5}})
    try:
        with running(config, tmp_path, port):
            results = parallel(port, 3)
            assert [r[0] for r in results] == [200, 200, 200]
        assert b.accepts == 1
    finally:
        b.stop()
