"""Active health checks through the real proxy: an endpoint that fails its check is out within
fall x interval and back within rise x interval, in every worker; the admin API shows it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import Backend, BackendHandler, Seen, echo, free_port, proxy_config, running

INTERVAL = 0.2
FALL = 2
RISE = 2


def health_backend(name: str) -> tuple[Backend, dict[str, int]]:
    """A backend whose /health answers `state["status"]`; everything else is echoed."""
    state = {"status": 200}

    def handler(h: BackendHandler, seen: Seen) -> None:
        if seen.path == "/health":
            h.reply(state["status"], b"ok" if state["status"] == 200 else b"sick")
        else:
            echo(h, seen)

    return Backend(handler, name=name), state


def admin_clusters(port: int) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}/clusters", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    result: dict[str, Any] = r.json()
    return result


def backends_seen(client: httpx.Client, port: int, n: int) -> list[str]:
    names = []
    for _ in range(n):
        r = client.get(f"http://127.0.0.1:{port}/x")
        assert r.status_code == 200
        names.append(json.loads(r.content)["backend"])
    return names


def last_hit_after(client: httpx.Client, port: int, name: str, start: float,
                   want: bool, limit: float = 5.0) -> float:
    """Send requests until `name` is (want=True) seen, or (want=False) absent for 0.5 s;
    return the time, after `start`, when that became true."""
    last = time.monotonic()
    while time.monotonic() - start < limit:
        r = client.get(f"http://127.0.0.1:{port}/x")
        assert r.status_code == 200, r.text
        now = time.monotonic()
        hit = json.loads(r.content)["backend"] == name
        if want and hit:
            return now - start
        if not want:
            if hit:
                last = now
            elif now - last > 0.5:
                return last - start
    raise AssertionError(f"{name} never became {'used' if want else 'unused'}")


@pytest.mark.parametrize("workers", [1, 2])
def test_failing_endpoint_out_within_fall_and_back_within_rise(
    tmp_path: Path, workers: int
) -> None:
    b1, _ = health_backend("b1")
    b2, state2 = health_backend("b2")
    port, admin = free_port(), free_port()
    config = proxy_config(port, [b1.address, b2.address], workers=workers, cluster={
        "health_check": {"kind": "http", "path": "/health", "interval": INTERVAL,
                         "jitter": 0, "timeout": 0.5, "fall": FALL, "rise": RISE},
    })
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    try:
        with running(config, tmp_path, port), httpx.Client(timeout=5) as client:
            # Both serve (round robin), in every worker.
            assert set(backends_seen(client, port, 8)) == {"b1", "b2"}
            state2["status"] = 503
            flipped = time.monotonic()
            out = last_hit_after(client, port, "b2", flipped, want=False)
            # The 2nd failed check lands at most FALL x INTERVAL after the flip; allow 0.4 s
            # for the verdict to reach the workers, requests in flight, and a busy machine.
            assert out <= FALL * INTERVAL + 0.4, out
            assert set(backends_seen(client, port, 10)) == {"b1"}
            view = admin_clusters(admin)["c"]["endpoints"]
            assert view[b2.address]["state"] == "unhealthy"
            assert view[b2.address]["check"]["ok"] is False
            assert view[b2.address]["check"]["detail"] == "status 503"
            assert view[b1.address]["state"] == "healthy"
            state2["status"] = 200
            fixed = time.monotonic()
            back = last_hit_after(client, port, "b2", fixed, want=True)
            assert back <= RISE * INTERVAL + 0.4, back
            time.sleep(0.1)
            assert set(backends_seen(client, port, 8)) == {"b1", "b2"}
    finally:
        b1.stop()
        b2.stop()


def test_admin_api_sums_worker_counters(tmp_path: Path) -> None:
    b1 = Backend(name="b1")
    b2 = Backend(name="b2")
    port, admin = free_port(), free_port()
    config = proxy_config(port, [b1.address, b2.address], workers=2)
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    try:
        with running(config, tmp_path, port):
            n = 40
            for _ in range(n):  # a new connection each: the kernel spreads them over workers
                assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                view = admin_clusters(admin)
                eps = view["c"]["endpoints"]
                if sum(e["requests"] for e in eps.values()) == n:
                    break
                time.sleep(0.2)
            assert sum(e["requests"] for e in eps.values()) == n
            # Each worker round-robins on its own: the sum is even to within one per worker.
            assert abs(eps[b1.address]["requests"] - eps[b2.address]["requests"]) <= 2
            for e in eps.values():
                assert e["state"] == "healthy" and e["failures"] == 0 and e["active"] == 0
                assert e["ejections"] == 0 and e["check"] is None
            assert view["c"]["balancer"] == "round_robin" and view["c"]["rejected"] == 0
            assert httpx.get(f"http://127.0.0.1:{admin}/nope", timeout=5).status_code == 404
            assert httpx.post(f"http://127.0.0.1:{admin}/clusters", timeout=5).status_code == 405
    finally:
        b1.stop()
        b2.stop()


def test_restarted_worker_learns_current_verdicts(tmp_path: Path) -> None:
    b1, _ = health_backend("b1")
    b2, state2 = health_backend("b2")
    state2["status"] = 503
    port = free_port()
    config = proxy_config(port, [b1.address, b2.address], workers=2, cluster={
        "health_check": {"kind": "http", "path": "/health", "interval": 0.1, "jitter": 0,
                         "fall": 1, "rise": 100},
    })
    try:
        with running(config, tmp_path, port) as bascule:
            time.sleep(0.5)
            assert bascule.proc is not None
            pid = bascule.proc.pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            assert len(children) == 2
            os.kill(int(children[0]), signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                now = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                if len(now) == 2 and children[0] not in now:
                    break
                time.sleep(0.05)
            assert children[0] not in now
            # The verdict flipped long before this worker started, and will not flip again
            # (rise 100): only the state sent at spawn keeps it off b2.
            names = [json.loads(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).content)
                     ["backend"] for _ in range(30)]
            assert set(names) == {"b1"}
            assert "exited" in bascule.stderr_text()
    finally:
        b1.stop()
        b2.stop()
