"""Memory of idle keep-alive client connections: bascule against haproxy (and nginx), one run.

Each proxy in turn (one worker/thread each, the configs of bench/http_bench.py) gets N client
connections that each make one request and then stay open, idle. The figure is the growth of
the proxy's resident memory (its whole process tree) from before the first connection to after
the last answer, per proxy and as a ratio to haproxy's. Not a test: run by hand,
`python3 bench/idle_memory.py [N]` (default 10000; ulimit -n must allow 2 N + some).
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_bench as hb

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    total = 0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def open_idle(port: int, n: int, deadline: float) -> list[socket.socket]:
    """n connections, each answered once, left open; bounded by `deadline`."""
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    answered = 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(REQUEST)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        # keep the number of unanswered connections small: the proxy sees a steady trickle
        while len(socks) - answered > 200 and time.monotonic() < deadline:
            answered += _drain(sel, 0.5)
    while answered < n and time.monotonic() < deadline:
        answered += _drain(sel, 0.5)
    if answered < n:
        raise hb.BenchError(f"only {answered} of {n} connections answered in time")
    return socks


def _drain(sel: selectors.BaseSelector, timeout: float) -> int:
    done = 0
    for key, _ in sel.select(timeout):
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        data = sock.recv(65536)
        if data.endswith(b"ok\n"):
            sel.unregister(sock)
            done += 1
    return done


def measure(name: str, n: int, tmp: Path, ports: dict[str, int], runner: hb.Runner) -> int:
    opts = argparse.Namespace(haproxy_log=True)
    spec = hb.proxy_spec(name, tmp, ports, opts)
    spec.config_path.write_text(spec.config)
    proc = runner.start(name, spec.argv, "0", spec.stdout)
    try:
        hb.wait_listening(proc, ports[name], 20)
        hb.check_responses(name, ports[name])
        time.sleep(1.0)
        before = tree_rss_kib(proc.pid)
        socks = open_idle(ports[name], n, time.monotonic() + 120)
        time.sleep(2.0)  # let buffers settle (and bascule's access log flush)
        after = tree_rss_kib(proc.pid)
        for s in socks:
            s.close()
        return after - before
    finally:
        runner.stop(proc)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * n + 1000)), hard))
    hb.ensure_bascule()
    tmp = Path(tempfile.mkdtemp(prefix="bascule-idle-"))
    tmp.chmod(0o755)
    (tmp / "www").mkdir()
    (tmp / "www" / "100k").write_bytes(b"x" * 102400)  # check_responses asks for it
    ports = hb.pick_ports()
    runner = hb.Runner(tmp)
    user = "user root;\n" if os.geteuid() == 0 else ""
    try:
        conf = tmp / "backends.conf"
        conf.write_text(hb.backend_conf(tmp, ports, user))
        backends = runner.start("backends", ["nginx", "-e", "stderr", "-p", str(tmp), "-c",
                                             str(conf)], "1")
        hb.wait_listening(backends, ports["backend1"], 10)
        growth = {name: measure(name, n, tmp, ports, runner) for name in ("haproxy", "bascule")}
    finally:
        runner.stop_all()
    base = growth["haproxy"]
    for name, kib in growth.items():
        ratio = kib / base if base > 0 else float("nan")
        print(f"{name:8s} +{kib / 1024:7.1f} MiB for {n} idle connections "
              f"({kib * 1024 / n:6.0f} B each), {ratio:.2f} x haproxy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
