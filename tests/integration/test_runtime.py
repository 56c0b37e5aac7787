"""The process model: CLI, workers, graceful drain on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from helpers import Backend, BackendHandler, Bascule, Seen, free_port, proxy_config, running


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bascule", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=30)


def test_version_and_check(tmp_path: Path) -> None:
    out = run_cli("version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("bascule ")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(proxy_config(8080, ["127.0.0.1:9001"])))
    out = run_cli("check", "-c", str(good), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("127.0.0.1:9001", "127.0.0.1:70000"))
    out = run_cli("check", "-c", str(bad), cwd=tmp_path)
    assert out.returncode != 0
    assert "bad.yaml:" in out.stderr
    assert "clusters[0].endpoints[0].address: port 70000 out of range" in out.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path, backend: Backend) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "b.yaml"
        cfg.write_text(yaml.safe_dump(proxy_config(port, [backend.address])))
        out = run_cli("run", "-c", str(cfg), cwd=tmp_path)
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    def slow(h: BackendHandler, seen: Seen) -> None:
        time.sleep(1.0)
        h.reply(200, b"finished")

    b = Backend(slow)
    port = free_port()
    proxy = Bascule(proxy_config(port, [b.address]), tmp_path, port=port).start()
    result: dict[str, httpx.Response] = {}

    def client() -> None:
        result["r"] = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=10)

    try:
        t = threading.Thread(target=client)
        t.start()
        time.sleep(0.4)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        t.join(10)
        code = proxy.proc.wait(10)
    finally:
        proxy.stop()
        b.stop()
    assert result["r"].status_code == 200
    assert result["r"].content == b"finished"
    assert result["r"].headers["connection"] == "close"
    assert code == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_several_workers_share_the_listener(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address], workers=2), tmp_path, port) as proxy:
        time.sleep(0.5)
        assert proxy.proc is not None
        children = Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children").read_text()
        assert len(children.split()) == 2
        for _ in range(20):
            with httpx.Client() as c:
                assert c.get(f"http://127.0.0.1:{port}/").status_code == 200


def test_a_killed_worker_is_replaced(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address], workers=2), tmp_path, port) as proxy:
        time.sleep(0.5)
        assert proxy.proc is not None
        children_file = Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children")
        first = children_file.read_text().split()
        subprocess.run(["kill", "-9", first[0]], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = children_file.read_text().split()
            if len(now) == 2 and first[0] not in now:
                break
            time.sleep(0.1)
        assert len(now) == 2 and first[0] not in now
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200


def test_demo_runs_with_no_config(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bascule", "run"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        ok = False
        while time.monotonic() < deadline and not ok:
            try:
                r = httpx.get("http://127.0.0.1:8080/", timeout=2)
                ok = r.status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        assert ok
        assert "demo" in r.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "curl" in out and "127.0.0.1:8080" in out


# ---------------------------------------------------------------- a new user's frictions


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_printed_demo_saved_and_run_with_c_serves_both_backends(tmp_path: Path) -> None:
    # Before the fix the saved demo answered 502: nothing started its backends.
    printed = run_cli("run", "--print-demo", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout
    port, one, two = free_port(), free_port(), free_port()
    for fixed, free in (("8080", port), ("9101", one), ("9102", two)):
        assert f"127.0.0.1:{fixed}" in text
        text = text.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{free}")
    proxy = Bascule({}, tmp_path, port=port)
    proxy.path.write_text(text)  # the printed text itself, comments and all
    proxy.start()
    try:
        with httpx.Client(timeout=5) as client:
            answers = [client.get(f"http://127.0.0.1:{port}/") for _ in range(4)]
    finally:
        proxy.stop()
    assert [r.status_code for r in answers] == [200] * 4
    assert {r.headers["x-backend"] for r in answers} == {"demo-1", "demo-2"}
    banner = proxy.stderr_text()
    assert f"demo backend demo-1     http://127.0.0.1:{one}/" in banner


_STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _dead_cluster_config(port: int, backend: Backend, dead: int) -> dict[str, Any]:
    """A proxy whose second endpoint nobody listens on, checked often: a 'down' event soon."""
    return proxy_config(
        port, [backend.address, f"127.0.0.1:{dead}"],
        cluster={"health_check": {"interval": "100ms", "timeout": "100ms", "fall": 1}},
    )


def test_event_lines_have_time_and_level_and_banner_names_the_logs(
    tmp_path: Path, backend: Backend
) -> None:
    port, dead, admin = free_port(), free_port(), free_port()
    config = _dead_cluster_config(port, backend, dead)
    config["workers"] = 2
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    config["access_log"] = {"path": str(tmp_path / "access.log"), "format": "json"}
    proxy = Bascule(config, tmp_path, port=port).start()
    try:
        down = re.compile(
            rf"^{_STAMP} warning endpoint c/127\.0\.0\.1:{dead} is down \(active health check\)$",
            re.M,
        )
        assert _wait_for(lambda: bool(down.search(proxy.stderr_text())))
        assert _wait_for(lambda: proxy.stderr_text().count("worker 1 started") == 1)
    finally:
        code = proxy.stop()
    assert code == 0
    err = proxy.stderr_text()
    assert re.search(rf"^{_STAMP} info    worker 0 started \(pid \d+\)$", err, re.M)
    assert re.search(rf"^{_STAMP} info    stopping: draining in-flight requests$", err, re.M)
    # The banner: plain lines, naming the admin API and where both logs go.
    assert f"\n  admin API               http://127.0.0.1:{admin}/clusters\n" in err
    assert f"\n  access log              {tmp_path / 'access.log'} (json)\n" in err
    assert "\n  event log               standard error (text, info and above)\n" in err


def test_event_log_to_a_file_as_json_with_a_level(tmp_path: Path, backend: Backend) -> None:
    port, dead = free_port(), free_port()
    events_file = tmp_path / "events.jsonl"
    config = _dead_cluster_config(port, backend, dead)
    config["log"] = {"path": str(events_file), "format": "json", "level": "warning"}
    proxy = Bascule(config, tmp_path, port=port).start()
    try:
        assert _wait_for(lambda: events_file.exists() and "is down" in events_file.read_text())
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    finally:
        code = proxy.stop()
    assert code == 0
    records = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert records, "no event written"
    for record in records:
        assert re.fullmatch(_STAMP, record["time"])
        assert record["level"] in ("warning", "error")  # level: warning drops info lines
    health = [r for r in records if r["event"] == "health"]
    assert health[0] == {
        "time": health[0]["time"], "level": "warning", "event": "health",
        "message": f"endpoint c/127.0.0.1:{dead} is down (active health check)",
        "endpoint": f"c/127.0.0.1:{dead}", "healthy": False,
    }
    err = proxy.stderr_text()
    assert "is down" not in err  # the events went to the file, not to stderr
    assert f"\n  event log               {events_file} (json, warning and above)\n" in err


def test_discovery_changes_are_events(
    tmp_path: Path, backend: Backend, backend2: Backend
) -> None:
    port = free_port()
    listed = tmp_path / "endpoints.yaml"
    listed.write_text(yaml.safe_dump([{"address": backend.address}]))
    config = proxy_config(port, [], cluster={"discovery": {"file": str(listed),
                                                            "interval": "100ms"}})
    proxy = Bascule(config, tmp_path, port=port).start()
    try:
        first = f"info    cluster c: 1 endpoint after discovery: {backend.address}\n"
        assert _wait_for(lambda: first in proxy.stderr_text())
        listed.write_text(yaml.safe_dump([{"address": a} for a in (backend.address,
                                                                     backend2.address)]))
        both = f"cluster c: 2 endpoints after discovery: {backend.address}, {backend2.address}"
        assert _wait_for(lambda: both in proxy.stderr_text())
    finally:
        proxy.stop()
    assert re.search(rf"^{_STAMP} info    {re.escape(both)}$", proxy.stderr_text(), re.M)


def test_unwritable_event_log_is_a_clear_error(tmp_path: Path, backend: Backend) -> None:
    cfg = tmp_path / "b.yaml"
    config = proxy_config(free_port(), [backend.address])
    config["log"] = {"path": str(tmp_path / "no" / "such" / "dir" / "events.log")}
    cfg.write_text(yaml.safe_dump(config))
    out = run_cli("run", "-c", str(cfg), cwd=tmp_path)
    assert out.returncode == 1
    assert "bascule: log.path: cannot open" in out.stderr and "No such file" in out.stderr


def test_split_never_falls_back_when_one_side_is_down(tmp_path: Path, backend: Backend) -> None:
    # The README says so: a weighted split draws a cluster first; that cluster having no
    # healthy endpoint gives a 503 for its share, even while the other cluster is healthy.
    port, dead = free_port(), free_port()
    config = proxy_config(
        port, [backend.address],
        routes=[{"match": {"path_prefix": "/"},
                 "split": [{"cluster": "c", "weight": 1}, {"cluster": "down", "weight": 1}]}],
        extra_clusters=[{
            "name": "down", "endpoints": [{"address": f"127.0.0.1:{dead}"}],
            "health_check": {"interval": "100ms", "timeout": "100ms", "fall": 1},
        }],
    )
    proxy = Bascule(config, tmp_path, port=port).start()
    try:
        assert _wait_for(lambda: f"127.0.0.1:{dead} is down" in proxy.stderr_text())
        with httpx.Client(timeout=5) as client:
            statuses = [client.get(f"http://127.0.0.1:{port}/").status_code for _ in range(60)]
    finally:
        proxy.stop()
    assert set(statuses) == {200, 503}  # both shares: P(no 503 in 60 draws) = 2**-60
