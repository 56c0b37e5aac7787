#!/usr/bin/env python3
"""HTTP/1.1 benchmark: bascule against haproxy and nginx, same backends, same run.

Started by bench/http.sh (which installs haproxy, nginx and wrk). System python3, standard
library only. Layout on a 2-core machine:

    CPU 0: the proxy under test, alone (taskset -c 0)
    CPU 1: the nginx backends (two listens, one worker) and wrk

Each proxy gets three scenarios (keep-alive /small, Connection: close /small, keep-alive /100k),
each after a short warm-up. The proxy's CPU time (its whole process tree, from /proc) is read
around the measured run, user and system apart (bench/proc_usage.py), which gives requests/s
per proxy core and user/system CPU microseconds per request; the tree's RSS is read at the end
of each run. One table is printed, with ratios to haproxy, and written as JSON to
bench/results/http-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# A sibling module: run as a script, bench/ is first on sys.path.
from proc_usage import Usage, per_unit_us, tree_usage

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The compiled build is what users run (`make run`); BENCH_BUILD=pure measures the fallback.
BUILD = os.environ.get("BENCH_BUILD", "compiled")
VENV = ".venv" if BUILD == "pure" else ".venv-compiled"
BASCULE = REPO / VENV / "bin" / "bascule"
MAKE_TARGET = ".venv/.installed-stamp" if BUILD == "pure" else "compiled"
RESULTS = HERE / "results"

PROXIES = ("bascule", "haproxy", "nginx")
SMALL_BODY = b"ok\n"
BIG_SIZE = 100 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Preferred ports; a busy one is replaced by a free port the kernel picks.
PORTS = {"backend1": 18081, "backend2": 18082, "bascule": 18090, "haproxy": 18091, "nginx": 18092}


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    headers: tuple[str, ...] = ()


SCENARIOS = (
    Scenario("keepalive-small", "/small"),
    Scenario("close-small", "/small", ("Connection: close",)),
    Scenario("keepalive-100k", "/100k"),
)


class BenchError(Exception):
    """A failure worth one clear line (proxy did not start, wrong response, wrk failed)."""


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if this script dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out_path: Path
    files: list[IO[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.out_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


class Runner:
    """Starts every long-lived process in its own session, and stops exactly those."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], cpu: str, stdout: Path | None = None) -> Proc:
        out_path = self.tmp / f"{name}.out"
        err = open(out_path, "ab")  # noqa: SIM115 - closed in stop()
        out = open(stdout, "ab") if stdout else err  # noqa: SIM115
        popen = subprocess.Popen(
            ["taskset", "-c", cpu, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        proc = Proc(name, popen, out_path, [err] if out is err else [err, out])
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 10.0) -> None:
        if proc not in self.procs:
            return
        self.procs.remove(proc)
        pgid = proc.pid  # leader of its own session and process group
        if proc.popen.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{proc.name} did not stop in {grace:.0f}s after SIGTERM, killing")
        try:  # sweep the group: the leader and any child it left behind
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(5)
        except subprocess.TimeoutExpired:
            log(f"{proc.name} (pid {proc.pid}) survived SIGKILL?")
        for f in proc.files:
            f.close()

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- ports and probes


def pick_ports() -> dict[str, int]:
    chosen: dict[str, int] = {}
    for name, preferred in PORTS.items():
        for candidate in (preferred, 0, 0, 0):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", candidate))
                except OSError:
                    continue
                port = s.getsockname()[1]
            if port not in chosen.values():
                chosen[name] = port
                break
        else:
            raise BenchError(f"no free port for {name}")
    return chosen


def wait_listening(proc: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.name} exited with status {proc.popen.returncode} before listening "
                f"on 127.0.0.1:{port}; its output:\n{proc.tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(
        f"{proc.name} is not listening on 127.0.0.1:{port} after {timeout:.0f}s; "
        f"its output:\n{proc.tail()}"
    )


def check_responses(name: str, port: int) -> None:
    """A few real requests before loading: right status and body, keep-alive and close."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for path, want in (("/small", len(SMALL_BODY)), ("/100k", BIG_SIZE)) * 2:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or len(body) != want:
                raise BenchError(
                    f"{name}: GET {path} gave {resp.status} with {len(body)} bytes, "
                    f"want 200 with {want}"
                )
        conn.request("GET", "/small", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or body != SMALL_BODY:
            raise BenchError(f"{name}: GET /small with Connection: close gave {resp.status}")
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{name}: sanity request failed: {exc!r}") from exc
    finally:
        conn.close()


# ---------------------------------------------------------------- CPU accounting


def parse_cpu_list(spec: str) -> set[int]:
    """taskset's CPU list syntax: "0", "0,2", "1-3"."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def cpu_stat(cpus: set[int]) -> tuple[float, float]:
    """(busy, steal) seconds so far, summed over these CPUs, from /proc/stat. Busy is
    user+nice+system+irq+softirq: whatever ran there, the proxy or anything else."""
    busy = steal = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            user, nice, system, _idle, _iowait, irq, softirq, st = map(int, vals[:8])
            busy += user + nice + system + irq + softirq
            steal += st
    return busy / CLK_TCK, steal / CLK_TCK


# ---------------------------------------------------------------- wrk

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _time_ms(value: str, unit: str) -> float:
    return float(value) * UNIT_MS[unit]


def parse_wrk(out: str) -> dict[str, Any]:
    """Numbers from wrk's --latency text output; latencies in ms."""
    res: dict[str, Any] = {}
    m = re.search(r"^\s*Requests/sec:\s+([\d.]+)", out, re.M)
    if not m:
        raise BenchError(f"no Requests/sec in wrk output:\n{out}")
    res["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        if not m:
            raise BenchError(f"no {pct}% latency in wrk output:\n{out}")
        res[f"p{pct}_ms"] = _time_ms(m.group(1), m.group(2))
    m = re.search(
        r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", out, re.M
    )
    if m:
        res["requests"] = int(m.group(1))
        res["duration_s"] = _time_ms(m.group(2), m.group(3)) / 1e3
        res["bytes_read"] = int(float(m.group(4)) * SIZE[m.group(5)])
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        for key, val in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            errors[key] = int(val)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors["status"] = int(m.group(1))
    res["errors"] = errors
    return res


@dataclass(frozen=True)
class Load:
    threads: int
    connections: int
    cpu: str


def run_wrk(load: Load, port: int, sc: Scenario, seconds: float) -> tuple[str, float]:
    """wrk's output, and the CPU seconds wrk used."""
    argv = ["taskset", "-c", load.cpu, "wrk", "-t", str(load.threads), "-c", str(load.connections)]
    argv += ["-d", f"{seconds:g}s", "--latency", "--timeout", "5s"]
    for header in sc.headers:
        argv += ["-H", header]
    argv.append(f"http://127.0.0.1:{port}{sc.path}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            preexec_fn=_die_with_parent,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish in {seconds + 30:.0f}s") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.stdout, cpu


# ---------------------------------------------------------------- configs


def backend_conf(tmp: Path, ports: dict[str, int], user: str) -> str:
    return f"""{user}worker_processes 1;
daemon off;
pid {tmp}/backends.pid;
error_log {tmp}/backends-error.log warn;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{_nginx_temp_paths(tmp, "backends")}
    server {{
        listen 127.0.0.1:{ports["backend1"]};
        listen 127.0.0.1:{ports["backend2"]};
        root {tmp}/www;
        location = /small {{ default_type text/plain; return 200 "ok\\n"; }}
        location = /100k {{ }}
    }}
}}
"""


def _nginx_temp_paths(tmp: Path, prefix: str) -> str:
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    return "\n".join(f"    {k}_temp_path {tmp}/{prefix}-{k}-temp;" for k in kinds)


def bascule_conf(tmp: Path, ports: dict[str, int]) -> str:
    return f"""workers: 1
access_log: {{path: {tmp}/bascule-access.log, format: json}}
listeners:
  - name: bench
    address: 127.0.0.1:{ports["bascule"]}
    protocol: http
    routes:
      - match: {{path_prefix: /}}
        cluster: backends
clusters:
  - name: backends
    balancer: round_robin
    endpoints:
      - {{address: 127.0.0.1:{ports["backend1"]}}}
      - {{address: 127.0.0.1:{ports["backend2"]}}}
"""


def haproxy_conf(ports: dict[str, int], logging: bool) -> str:
    glog = "    log stdout format raw local0\n" if logging else ""
    dlog = "    log global\n    option httplog\n" if logging else "    no log\n"
    return f"""global
    nbthread 1
    maxconn 8000
{glog}
defaults
    mode http
{dlog}    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s

frontend bench
    bind 127.0.0.1:{ports["haproxy"]}
    default_backend backends

backend backends
    balance roundrobin
    server b1 127.0.0.1:{ports["backend1"]}
    server b2 127.0.0.1:{ports["backend2"]}
"""


def nginx_conf(tmp: Path, ports: dict[str, int], user: str) -> str:
    return f"""{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8000; }}
http {{
    access_log {tmp}/nginx-access.log combined;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{_nginx_temp_paths(tmp, "nginx")}
    upstream backends {{
        server 127.0.0.1:{ports["backend1"]};
        server 127.0.0.1:{ports["backend2"]};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{ports["nginx"]};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


@dataclass
class ProxySpec:
    name: str
    argv: list[str]
    config: str
    config_path: Path
    access_log: Path | None  # where its per-request log goes, or None
    stdout: Path | None = None


def proxy_spec(name: str, tmp: Path, ports: dict[str, int], opts: argparse.Namespace) -> ProxySpec:
    user = "user root;\n" if os.geteuid() == 0 else ""
    if name == "bascule":
        path = tmp / "bascule.yaml"
        return ProxySpec(
            name,
            [str(BASCULE), "run", "-c", str(path)],
            bascule_conf(tmp, ports),
            path,
            tmp / "bascule-access.log",
        )
    if name == "haproxy":
        path = tmp / "haproxy.cfg"
        access = tmp / "haproxy-access.log" if opts.haproxy_log else None
        return ProxySpec(
            name,
            ["haproxy", "-db", "-f", str(path)],
            haproxy_conf(ports, opts.haproxy_log),
            path,
            access,
            stdout=access,
        )
    if name == "nginx":
        path = tmp / "nginx.conf"
        return ProxySpec(
            name,
            ["nginx", "-e", "stderr", "-p", str(tmp), "-c", str(path)],
            nginx_conf(tmp, ports, user),
            path,
            tmp / "nginx-access.log",
        )
    raise BenchError(f"unknown proxy {name!r}; known: {', '.join(PROXIES)}")


def ensure_bascule() -> None:
    # make knows whether the build is stale (the compiled one is rebuilt on any source change)
    log(f"building bascule ({BUILD}): make {MAKE_TARGET}")
    done = subprocess.run(["make", "-C", str(REPO), MAKE_TARGET], check=False)
    if done.returncode != 0 or not os.access(BASCULE, os.X_OK):
        raise BenchError(f"no bascule at {BASCULE}; run `make -C {REPO} {MAKE_TARGET}`")


# ---------------------------------------------------------------- versions


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def versions(proxies: Sequence[str]) -> dict[str, str]:
    out = {
        "haproxy": _first_line(["haproxy", "-v"]),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git": _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }
    if "bascule" in proxies and os.access(BASCULE, os.X_OK):
        out["bascule"] = _first_line([str(BASCULE), "version"])
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu"] = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?"
            )
    except OSError:
        out["cpu"] = "?"
    return out


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Snapshot:
    t: float
    proxy: Usage  # the proxy's process tree (user, system, RSS)
    backends: float  # CPU seconds of the backends' process tree
    proxy_cpus: tuple[float, float]  # (busy, steal) seconds of the proxy's CPUs
    load_cpus: tuple[float, float]  # (busy, steal) seconds of the load CPUs


@dataclass
class Bench:
    opts: argparse.Namespace
    runner: Runner
    backends: Proc
    load: Load

    def __post_init__(self) -> None:
        self.pcpus = parse_cpu_list(self.opts.proxy_cpu)
        self.lcpus = parse_cpu_list(self.load.cpu)

    def snapshot(self, proxy_pid: int) -> Snapshot:
        return Snapshot(
            time.monotonic(),
            tree_usage(proxy_pid),
            tree_usage(self.backends.pid).cpu_s,
            cpu_stat(self.pcpus),
            cpu_stat(self.lcpus),
        )

    def measure(self, proc: Proc, port: int, sc: Scenario) -> dict[str, Any]:
        opts = self.opts
        if opts.warmup > 0:
            run_wrk(self.load, port, sc, opts.warmup)
        s0 = self.snapshot(proc.pid)
        out, wrk_cpu = run_wrk(self.load, port, sc, opts.duration)
        s1 = self.snapshot(proc.pid)
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} died during {sc.name}:\n{proc.tail()}")
        res = parse_wrk(out)
        wall = s1.t - s0.t

        def pct(seconds: float) -> float:
            return 100.0 * seconds / wall

        cpu_pct = pct(s1.proxy.cpu_s - s0.proxy.cpu_s)
        # Requests served in the measured run (warm-up excluded: it ran before s0).
        served = res.get("requests") or res["rps"] * wall
        user_us, sys_us = per_unit_us(s0.proxy, s1.proxy, served)
        proxy_cpus_busy = pct(s1.proxy_cpus[0] - s0.proxy_cpus[0])
        load_cpus_busy = pct(s1.load_cpus[0] - s0.load_cpus[0])
        backends_pct = pct(s1.backends - s0.backends)
        wrk_pct = pct(wrk_cpu)
        steal = pct(s1.proxy_cpus[1] - s0.proxy_cpus[1] + s1.load_cpus[1] - s0.load_cpus[1])
        # What ran on our CPUs that is neither the proxy, nor the backends, nor wrk: other
        # processes (possibly in other containers on this kernel), kernel threads, softirq
        # charged to idle. Plus the hypervisor's steal. Near 0 in a clean run.
        other_p = proxy_cpus_busy - cpu_pct
        other_l = load_cpus_busy - backends_pct - wrk_pct
        return {
            "proxy": proc.name,
            "scenario": sc.name,
            **res,
            "cpu_pct": cpu_pct,
            "rps_per_core": res["rps"] / (cpu_pct / 100.0) if cpu_pct > 0 else None,
            "user_us_per_req": user_us,
            "sys_us_per_req": sys_us,
            "cpu_us_per_req": None if user_us is None else user_us + (sys_us or 0.0),
            "rss_mib": s1.proxy.rss_bytes / 2**20,
            "rss_before_mib": s0.proxy.rss_bytes / 2**20,
            "proxy_processes": s1.proxy.processes,
            "load_cpus_busy_pct": load_cpus_busy,
            "backends_cpu_pct": backends_pct,
            "wrk_cpu_pct": wrk_pct,
            "other_on_proxy_cpus_pct": other_p,
            "other_on_load_cpus_pct": other_l,
            "steal_pct": steal,
            "noise_pct": max(0.0, other_p) + max(0.0, other_l) + steal,
            "wall_s": wall,
            "wrk_output": out,
        }

    def proxy_round(self, spec: ProxySpec, port: int, rnd: int) -> list[dict[str, Any]]:
        opts = self.opts
        spec.config_path.write_text(spec.config)
        if spec.access_log:
            spec.access_log.unlink(missing_ok=True)
        log(f"round {rnd}: {spec.name} on 127.0.0.1:{port} (cpu {opts.proxy_cpu})")
        proc = self.runner.start(spec.name, spec.argv, opts.proxy_cpu, stdout=spec.stdout)
        rows: list[dict[str, Any]] = []
        try:
            wait_listening(proc, port, opts.start_timeout)
            check_responses(spec.name, port)
            for sc in SCENARIOS:
                row = self.measure(proc, port, sc)
                row["round"] = rnd
                rows.append(row)
                errs = sum(row["errors"].values())
                log(
                    f"  {sc.name:16} {row['rps']:8.0f} req/s  p99 {row['p99_ms']:6.2f} ms  "
                    f"cpu {row['cpu_pct']:3.0f}%  load cpu {row['load_cpus_busy_pct']:3.0f}%  "
                    f"noise {row['noise_pct']:3.0f}%" + (f"  {errs} ERRORS" if errs else "")
                )
        finally:
            self.runner.stop(proc)
        lines = _count_lines(spec.access_log)
        for row in rows:
            row["access_log_lines"] = lines
        if spec.access_log and not lines:
            log(f"  warning: {spec.name} wrote nothing to its access log {spec.access_log.name}")
        return rows


def _count_lines(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def median_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (proxy, scenario), the run with the median req/s (the lower one for even counts)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["proxy"], r["scenario"]), []).append(r)
    out = []
    for group in groups.values():
        group.sort(key=lambda r: r["rps"])
        chosen = {k: v for k, v in group[(len(group) - 1) // 2].items() if k != "wrk_output"}
        chosen["rounds"] = len(group)
        out.append(chosen)
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    base = {r["scenario"]: r for r in rows if r["proxy"] == "haproxy"}
    for row in rows:
        h = base.get(row["scenario"])
        row["vs_haproxy"] = None
        if h is None:
            continue

        def ratio(key: str, row: dict[str, Any] = row, h: dict[str, Any] = h) -> float | None:
            a, b = row.get(key), h.get(key)
            return a / b if a is not None and b else None

        row["vs_haproxy"] = {
            "rps": ratio("rps"),
            "rps_per_core": ratio("rps_per_core"),
            "p99": ratio("p99_ms"),
            "cpu_us_per_req": ratio("cpu_us_per_req"),
            "rss": ratio("rss_mib"),
        }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


TABLE = (
    # header, row -> cell
    ("proxy", lambda r: r["proxy"]),
    ("scenario", lambda r: r["scenario"]),
    ("req/s", lambda r: _fmt(r["rps"], ".0f")),
    ("p50 ms", lambda r: _fmt(r["p50_ms"], ".2f")),
    ("p99 ms", lambda r: _fmt(r["p99_ms"], ".2f")),
    ("cpu %", lambda r: _fmt(r["cpu_pct"], ".0f")),
    ("req/s/core", lambda r: _fmt(r["rps_per_core"], ".0f")),
    ("usr us/req", lambda r: _fmt(r["user_us_per_req"], ".1f")),
    ("sys us/req", lambda r: _fmt(r["sys_us_per_req"], ".1f")),
    ("RSS MiB", lambda r: _fmt(r["rss_mib"], ".1f")),
    ("load cpu %", lambda r: _fmt(r["load_cpus_busy_pct"], ".0f")),
    ("noise %", lambda r: _fmt(r["noise_pct"], ".0f")),
    ("errors", lambda r: str(sum(r["errors"].values()))),
    ("rps/hap", lambda r: _fmt((r["vs_haproxy"] or {}).get("rps"), ".2f")),
    ("rps/core/hap", lambda r: _fmt((r["vs_haproxy"] or {}).get("rps_per_core"), ".2f")),
    ("p99/hap", lambda r: _fmt((r["vs_haproxy"] or {}).get("p99"), ".2f")),
    ("cpu/req/hap", lambda r: _fmt((r["vs_haproxy"] or {}).get("cpu_us_per_req"), ".2f")),
)


def render_table(rows: list[dict[str, Any]]) -> str:
    head = [h for h, _ in TABLE]
    body = [[cell(r) for _, cell in TABLE] for r in rows]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    out = [line(head), "  ".join("-" * w for w in widths)]
    for i, (r, cells) in enumerate(zip(rows, body, strict=True)):
        if i and r["scenario"] != rows[i - 1]["scenario"]:
            out.append("")
        out.append(line(cells))
    return "\n".join(out)


LEGEND = """\
cpu %        proxy process tree CPU time / wall time (100 = one core)
req/s/core   req/s / (cpu % / 100): efficiency, comparable even when the proxy is not saturated
usr us/req   proxy tree user CPU (utime, all threads and workers) in microseconds per request
sys us/req   the same for system CPU (stime): kernel work done for the proxy (syscalls, TCP)
RSS MiB      resident memory of the proxy tree at the end of the run (summed over processes)
load cpu %   busy % of the CPU(s) running wrk and the backends; near 100 per CPU means the load
             side, not the proxy, capped req/s (compare req/s/core then, not req/s)
noise %      CPU used on our CPUs by anything else (other containers, kernel threads) plus steal;
             above ~10 the row is unreliable: run again
x/hap        ratio to haproxy in the same scenario (req/s: >1 is better; p99 and cpu/req:
             >1 is slower / costlier)"""


def _bool(text: str) -> bool:
    return text.strip().lower() not in ("0", "off", "no", "false", "")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="bench/http.sh", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add = p.add_argument
    add(
        "--proxies",
        default=env("BENCH_PROXIES", ",".join(PROXIES)),
        help="comma-separated, in run order (env BENCH_PROXIES; default: %(default)s)",
    )
    add(
        "--duration",
        type=float,
        default=float(env("BENCH_DURATION", "10")),
        help="seconds per measured run (env BENCH_DURATION; default: %(default)s)",
    )
    add(
        "--warmup",
        type=float,
        default=float(env("BENCH_WARMUP", "2")),
        help="seconds of warm-up before each run (env BENCH_WARMUP; default: %(default)s)",
    )
    add(
        "--rounds",
        type=int,
        default=int(env("BENCH_ROUNDS", "1")),
        help="rounds over all proxies; the table shows each row's median run by req/s\n"
        "(env BENCH_ROUNDS; default: %(default)s)",
    )
    add(
        "--threads",
        type=int,
        default=int(env("BENCH_THREADS", "2")),
        help="wrk threads (env BENCH_THREADS; default: %(default)s)",
    )
    add(
        "--connections",
        type=int,
        default=int(env("BENCH_CONNECTIONS", "50")),
        help="wrk connections (env BENCH_CONNECTIONS; default: %(default)s)",
    )
    add(
        "--proxy-cpu",
        default=env("BENCH_PROXY_CPU", "0"),
        help="taskset CPU list for the proxy (env BENCH_PROXY_CPU; default: %(default)s)",
    )
    add(
        "--load-cpu",
        default=env("BENCH_LOAD_CPU", "1"),
        help="taskset CPU list for backends and wrk (env BENCH_LOAD_CPU; default: %(default)s)",
    )
    add(
        "--haproxy-log",
        type=_bool,
        default=_bool(env("BENCH_HAPROXY_LOG", "on")),
        help="haproxy logs every request to a file: on/off (env BENCH_HAPROXY_LOG; default: on)",
    )
    add(
        "--start-timeout",
        type=float,
        default=float(env("BENCH_START_TIMEOUT", "20")),
        help="seconds to wait for a proxy to listen (env BENCH_START_TIMEOUT; default: 20)",
    )
    add(
        "--keep-tmp",
        action="store_true",
        default=_bool(env("BENCH_KEEP_TMP", "")),
        help="keep the temp dir (configs, logs) for debugging (env BENCH_KEEP_TMP=1)",
    )
    opts = p.parse_args(argv)
    opts.proxy_list = [x.strip() for x in opts.proxies.split(",") if x.strip()]
    unknown = [x for x in opts.proxy_list if x not in PROXIES]
    if unknown or not opts.proxy_list or len(set(opts.proxy_list)) != len(opts.proxy_list):
        p.error(f"bad --proxies {opts.proxies!r}; choose from {', '.join(PROXIES)}")
    if not 0 < opts.duration <= 600 or not 0 <= opts.warmup <= 60:
        p.error("--duration must be in (0, 600] and --warmup in [0, 60] seconds")
    if not 1 <= opts.rounds <= 20:
        p.error("--rounds must be in [1, 20]")
    try:
        parse_cpu_list(opts.proxy_cpu)
        parse_cpu_list(opts.load_cpu)
    except ValueError:
        p.error("--proxy-cpu and --load-cpu take taskset CPU lists, e.g. 0 or 0,2 or 1-3")
    return opts


def idle_check(seconds: float = 1.0) -> float:
    """Busy % (of one core, summed over all CPUs) before we start anything."""
    cpus = set(range(os.cpu_count() or 1))
    b0, s0 = cpu_stat(cpus)
    time.sleep(seconds)
    b1, s1 = cpu_stat(cpus)
    return 100.0 * ((b1 - b0) + (s1 - s0)) / seconds


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    # Ctrl-C raises KeyboardInterrupt even where SIGINT came in ignored (a `cmd &` job);
    # SIGTERM and SIGHUP unwind through the same cleanup.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs; the proxy and the load share a core")
    idle_busy = idle_check()
    if idle_busy > 10:
        log(
            f"warning: {idle_busy:.0f}% CPU busy before starting (other containers or jobs?); "
            "numbers will be noisy"
        )
    load = Load(opts.threads, opts.connections, opts.load_cpu)

    tmp = Path(tempfile.mkdtemp(prefix="bascule-bench-"))
    tmp.chmod(0o755)  # nginx workers read the backend files
    runner = Runner(tmp)
    runs: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    configs: dict[str, str] = {}
    try:
        ports = pick_ports()
        (tmp / "www").mkdir()
        (tmp / "www" / "100k").write_bytes(bytes(range(256)) * (BIG_SIZE // 256))
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = tmp / "backends.conf"
        configs["backends"] = backend_conf(tmp, ports, user)
        conf.write_text(configs["backends"])
        backends = runner.start(
            "backends", ["nginx", "-e", "stderr", "-p", str(tmp), "-c", str(conf)], opts.load_cpu
        )
        for b in ("backend1", "backend2"):
            wait_listening(backends, ports[b], 10)
            check_responses(b, ports[b])
        log(f"backends on 127.0.0.1:{ports['backend1']},{ports['backend2']} (cpu {opts.load_cpu})")
        bench = Bench(opts, runner, backends, load)

        for rnd in range(1, opts.rounds + 1):
            for name in opts.proxy_list:
                if name in failures:
                    continue
                try:
                    if name == "bascule":
                        ensure_bascule()
                    spec = proxy_spec(name, tmp, ports, opts)
                    configs[name] = spec.config
                    runs += bench.proxy_round(spec, ports[name], rnd)
                except BenchError as exc:
                    failures[name] = str(exc)
                    log(f"FAILED {name}: {exc}")
                if backends.popen.poll() is not None:
                    raise BenchError(f"the backends died:\n{backends.tail()}")
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        runner.stop_all()
        if opts.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    order = {n: i for i, n in enumerate(opts.proxy_list)}
    scen = {s.name: i for i, s in enumerate(SCENARIOS)}
    rows = median_rows(runs)
    rows.sort(key=lambda r: (scen[r["scenario"]], order[r["proxy"]]))
    add_ratios(rows)
    if rows:
        rounds = f", median of {opts.rounds} rounds by req/s" if opts.rounds > 1 else ""
        print(
            f"\nwrk -t{opts.threads} -c{opts.connections} -d{opts.duration:g}s "
            f"(warm-up {opts.warmup:g}s) on cpu {opts.load_cpu} with the backends; "
            f"proxy alone on cpu {opts.proxy_cpu}{rounds}\n"
            f"access logs: bascule json file, nginx combined file, "
            f"haproxy {'httplog file (log stdout)' if opts.haproxy_log else 'off'}\n"
        )
        print(render_table(rows))
        print("\n" + LEGEND)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    out_path = RESULTS / f"http-{stamp}.json"
    report = {
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {
            "proxies": opts.proxy_list,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "rounds": opts.rounds,
            "threads": opts.threads,
            "connections": opts.connections,
            "proxy_cpu": opts.proxy_cpu,
            "load_cpu": opts.load_cpu,
            "haproxy_log": opts.haproxy_log,
            "busy_pct_before_start": idle_busy,
        },
        "versions": versions(opts.proxy_list),
        "rows": rows,
        "failures": failures,
        "runs": runs,
        "configs": configs,
    }
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out_path}", flush=True)
    if failures:
        log(f"failed: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
