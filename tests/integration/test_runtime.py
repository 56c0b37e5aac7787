"""The process model: CLI, workers, graceful drain on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

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
