"""L4 TCP: bascule (splice, buffered) against haproxy `mode tcp` (with and without splice).

Run by hand (`bash bench/l4.sh`), never in the test suite. Each proxy in turn listens on
127.0.0.1 pinned to `--proxy-cpu`; the load (iperf3, wrk) and the endpoints (an iperf3 server,
an nginx serving fixed-size bodies) run on `--load-cpu`. Scenarios, per proxy and round:
  bulk-upload / bulk-download   one iperf3 stream (`-R` for download): Gbit/s
  parallel-100k / parallel-10m  wrk -c 50 fetching 100 KiB / 10 MiB bodies over 50 proxied
                                connections: transfers/s and Gbit/s
  new-conns                     wrk -c 50 with `Connection: close` on a 3-byte body: every
                                exchange is a new client and a new endpoint connection: conn/s
The proxy's user/system CPU (its process tree, bench/proc_usage.py) is read around each run and
given per Gbit (bulk, parallel) or per connection (new-conns). The median of `--rounds` rounds
is reported with ratios to haproxy without splice (the machine is noisy: use 3 or more).
`--driver harness` runs bascule's TcpProxy directly (what a worker runs); `--driver config`
runs `bascule run` on a `protocol: tcp` listener, for when config has that listener.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A sibling module: run as a script, bench/ is first on sys.path.
from http_bench import backend_conf
from proc_usage import Usage, tree_usage

HERE = Path(__file__).resolve().parent
SIZES = {"small": 3, "100k": 100 * 1024, "10m": 10 * 1024 * 1024}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, within: float = 10.0) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def serve_bascule(mode: str, port: int, backend: int) -> None:
    """The proxy process: one uvloop loop, one TcpProxy (what a worker would run)."""
    import uvloop

    from bascule.config.schema import ClusterConfig
    from bascule.l4.tcp import TcpProxy
    from bascule.upstream.cluster import Cluster
    from bascule.upstream.connect import Connector

    async def main() -> None:
        loop = asyncio.get_running_loop()
        spec = {"name": "bench", "endpoints": [{"address": f"127.0.0.1:{backend}"}]}
        cluster = Cluster(ClusterConfig.model_validate(spec))
        proxy = TcpProxy(cluster, Connector(loop), loop, mode=mode)  # type: ignore[arg-type]
        listening = socket.socket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", port))
        listening.listen(1024)
        await proxy.serve(listening)
        await asyncio.Event().wait()

    uvloop.run(main())


def haproxy_config(port: int, backend: int, splice: bool) -> str:
    return f"""global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    {"option splice-auto" if splice else "no option splice-auto"}
listen l4
    bind 127.0.0.1:{port}
    server s1 127.0.0.1:{backend}
"""


def bascule_config(port: int, backend: int, mode: str) -> str:
    """A `protocol: tcp` listener for `--driver config`, relaying by `mode` (splice|buffered)."""
    return f"""workers: 1
listeners:
  - name: l4
    address: 127.0.0.1:{port}
    protocol: tcp
    relay: {mode}
    cluster: bench
clusters:
  - name: bench
    endpoints: [{{address: 127.0.0.1:{backend}}}]
"""


def start_proxy(
    name: str, port: int, backend: int, cpu: int, tmp: Path, driver: str
) -> subprocess.Popen[bytes]:
    pin = ["taskset", "-c", str(cpu)]
    if name.startswith("bascule-") and driver == "config":
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(bascule_config(port, backend, name.split("-", 1)[1]))
        cmd = [str(Path(sys.executable).with_name("bascule")), "run", "-c", str(cfg)]
    elif name.startswith("bascule-"):
        cmd = [sys.executable, str(Path(__file__)), "--serve", name.split("-", 1)[1]]
        cmd += ["--port", str(port), "--backend", str(backend)]
    else:
        cfg = tmp / f"{name}.cfg"
        cfg.write_text(haproxy_config(port, backend, splice=name == "haproxy-splice"))
        cmd = ["haproxy", "-db", "-f", str(cfg)]
    return subprocess.Popen(pin + cmd, stdout=subprocess.DEVNULL)


def iperf(port: int, seconds: int, reverse: bool, cpu: int) -> float:
    cmd = ["taskset", "-c", str(cpu), "iperf3", "-c", "127.0.0.1", "-p", str(port)]
    cmd += ["-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=seconds + 30).stdout
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def nginx_config(tmp: Path, port: int) -> str:
    """http_bench's endpoint nginx on one port (its second listen gets a spare port): /small
    answers 3 bytes, /100k and /10m are files of tmp/www."""
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    for name, size in SIZES.items():
        (www / name).write_bytes(b"x" * size)
    user = "user root;\n" if os.geteuid() == 0 else ""
    return backend_conf(tmp, {"backend1": port, "backend2": free_port()}, user)


def wrk(port: int, path: str, seconds: int, cpu: int, close: bool) -> tuple[int, float]:
    """(exchanges completed, seconds) of one wrk run with 50 connections; any socket error or
    non-2xx answer fails the bench, as a proxy that drops transfers has no throughput."""
    cmd = ["taskset", "-c", str(cpu), "wrk", "-t", "1", "-c", "50", "-d", f"{seconds}s"]
    cmd += ["--timeout", "10s"] + (["-H", "Connection: close"] if close else [])
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/{path}"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", out, re.M)
    if m is None or "Socket errors" in out or "Non-2xx" in out:
        raise SystemExit(f"wrk through :{port} failed:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    return int(m.group(1)), float(m.group(2)) * scale


# scenario -> (unit of its rate, unit its CPU is given per)
SCENARIOS = {
    "bulk-upload": ("Gbit/s", "Gbit"),
    "bulk-download": ("Gbit/s", "Gbit"),
    "parallel-100k": ("Gbit/s", "Gbit"),
    "parallel-10m": ("Gbit/s", "Gbit"),
    "new-conns": ("conn/s", "conn"),
}


def run_scenario(scenario: str, port: int, args: argparse.Namespace) -> tuple[float, float]:
    """(rate, units served): Gbit/s and Gbit, or conn/s and connections."""
    if scenario.startswith("bulk-"):
        gbps = iperf(port, args.duration, scenario == "bulk-download", args.load_cpu)
        return gbps, gbps * args.duration
    if scenario == "new-conns":
        done, secs = wrk(port, "small", args.duration, args.load_cpu, close=True)
        return done / secs, float(done)
    path = scenario.split("-", 1)[1]
    done, secs = wrk(port, path, args.duration, args.load_cpu, close=False)
    gbit = done * SIZES[path] * 8 / 1e9
    return gbit / secs, gbit


Row = tuple[float, float, float]  # rate, user s per unit, system s per unit


def per_unit(before: Usage, after: Usage, units: float) -> tuple[float, float]:
    if units <= 0:
        return float("nan"), float("nan")
    return (after.user_s - before.user_s) / units, (after.sys_s - before.sys_s) / units


def report(results: dict[tuple[str, str], list[Row]]) -> None:
    print(f"{'proxy':17} {'scenario':14} {'rate':>9} {'unit':7} {'x haproxy':>9} "
          f"{'usr/unit':>10} {'sys/unit':>10} {'cpu x hap':>9}")  # fmt: skip
    for (name, scenario), rows in sorted(results.items(), key=lambda kv: kv[0][::-1]):
        rate, usr, sys_ = (statistics.median(r[i] for r in rows) for i in range(3))
        base = results.get(("haproxy", scenario), rows)
        b_rate = statistics.median(r[0] for r in base)
        b_cpu = statistics.median(r[1] + r[2] for r in base)
        unit, per = SCENARIOS[scenario]
        # Per connection, seconds are tiny: give them in microseconds.
        k, label = (1e6, f"us/{per}") if per == "conn" else (1.0, f"s/{per}")
        cpu_x = (usr + sys_) / b_cpu if b_cpu else float("nan")
        print(f"{name:17} {scenario:14} {rate:9.2f} {unit:7} {rate / b_rate:9.2f} "
              f"{usr * k:10.4f} {sys_ * k:10.4f} {cpu_x:9.2f}  "
              f"({label}, {len(rows)} rounds)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--proxies", default="haproxy,haproxy-splice,bascule-splice,bascule-buffered"
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 10)))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument(
        "--driver",
        choices=("harness", "config"),
        default=os.environ.get("BENCH_L4_DRIVER", "harness"),
        help="harness: TcpProxy run by this script; config: `bascule run` on a tcp listener",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_bascule(args.serve, args.port, args.backend)
        return
    scenarios = args.scenarios.split(",")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    iperf_port, nginx_port = free_port(), free_port()
    pin = ["taskset", "-c", str(args.load_cpu)]
    results: dict[tuple[str, str], list[Row]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "nginx.conf").write_text(nginx_config(tmp, nginx_port))
        servers = [
            subprocess.Popen(
                [*pin, "iperf3", "-s", "-p", str(iperf_port)], stdout=subprocess.DEVNULL
            ),
            subprocess.Popen(
                [*pin, "nginx", "-e", "stderr", "-p", tmp_name, "-c", str(tmp / "nginx.conf")]
            ),
        ]
        try:
            wait_port(iperf_port)
            wait_port(nginx_port)
            for _ in range(args.rounds):
                for name in args.proxies.split(","):
                    for scenario in scenarios:
                        backend = iperf_port if scenario.startswith("bulk-") else nginx_port
                        port = free_port()
                        proxy = start_proxy(name, port, backend, args.proxy_cpu, tmp, args.driver)
                        try:
                            wait_port(port)
                            before = tree_usage(proxy.pid)
                            rate, units = run_scenario(scenario, port, args)
                            usr, sys_ = per_unit(before, tree_usage(proxy.pid), units)
                            results.setdefault((name, scenario), []).append((rate, usr, sys_))
                        finally:
                            proxy.terminate()
                            proxy.wait(timeout=10)
        finally:
            for server in servers:
                server.terminate()
                server.wait(timeout=10)
    report(results)


if __name__ == "__main__":
    main()
