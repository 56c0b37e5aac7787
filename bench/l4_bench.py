"""L4 TCP bulk throughput: bascule (splice, buffered) against haproxy `mode tcp`, with iperf3.

Run by hand (`bash bench/l4.sh`), never in the test suite. One iperf3 server is the endpoint;
each proxy in turn listens on 127.0.0.1 pinned to `--proxy-cpu`, iperf3's client and server to
`--load-cpu`; one stream each way (`-R` for the download direction). Reports Gbit/s, the
proxy's user/system CPU seconds per Gbit, and each result as a ratio of haproxy's (no splice).
The median of `--rounds` rounds is reported (the machine is noisy: use 3 or more).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


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


def start_proxy(name: str, port: int, backend: int, cpu: int, tmp: Path) -> subprocess.Popen[bytes]:
    pin = ["taskset", "-c", str(cpu)]
    if name.startswith("bascule-"):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--proxies", default="haproxy,haproxy-splice,bascule-splice,bascule-buffered"
    )
    parser.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 10)))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_bascule(args.serve, args.port, args.backend)
        return
    backend = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", str(args.load_cpu), "iperf3", "-s", "-p", str(backend)],
        stdout=subprocess.DEVNULL,
    )
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        wait_port(backend)
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for name in args.proxies.split(","):
                    port = free_port()
                    proxy = start_proxy(name, port, backend, args.proxy_cpu, Path(tmp))
                    try:
                        wait_port(port)
                        for direction, reverse in (("upload", False), ("download", True)):
                            u0, s0 = cpu_seconds(proxy.pid)
                            gbps = iperf(port, args.duration, reverse, args.load_cpu)
                            u1, s1 = cpu_seconds(proxy.pid)
                            row = (gbps, u1 - u0, s1 - s0)
                            results.setdefault((name, direction), []).append(row)
                    finally:
                        proxy.terminate()
                        proxy.wait(timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"{'proxy':18} {'direction':9} {'Gbit/s':>7} {'x haproxy':>9} {'usr s/Gbit':>10} "
          f"{'sys s/Gbit':>10}")  # fmt: skip
    for (name, direction), rows in results.items():
        gbps = statistics.median(r[0] for r in rows)
        base = statistics.median(r[0] for r in results.get(("haproxy", direction), rows))
        gbit = gbps * args.duration
        usr = statistics.median(r[1] for r in rows) / gbit
        sys_ = statistics.median(r[2] for r in rows) / gbit
        print(f"{name:18} {direction:9} {gbps:7.2f} {gbps / base:9.2f} {usr:10.4f} {sys_:10.4f}")


if __name__ == "__main__":
    main()
