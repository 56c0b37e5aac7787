"""Packet-mode benchmark: throughput and connections/s through bascule's NAT and DSR against
plain routing, inside the testbed (bench/packet.sh runs it; root; iperf3).

What one run does:
- builds a testbed (client, router, lb, rs1, rs2 in namespaces; removed however the run ends);
- starts `iperf3 -s` and a tiny TCP server (accept, write 3 bytes, close) in rs1 and rs2;
- for each mode measures, in turn:
    route: the client reaches rs1 by its own address; the router forwards, replies pass the lb
           as a plain router (the testbed's policy rule); no nft program anywhere;
    nat:   `bascule run` in the lb with a nat service VIP:5201 and VIP:81 over rs1, rs2;
    dsr:   the same with a dsr service (servers hold the VIP on lo, reply straight to the client);
  `iperf3 -c -t T` (client → server, the direction the LB carries in every mode) and `-R`
  (server → client, which DSR sends around the LB), then a bounded connections/s loop (threads
  that connect, read 3 bytes, close; at most N connections or T seconds);
- reads bascule's CPU time (utime + stime of the supervisor, which is the whole of bascule with
  `workers: 1`) over the measured window, to show the data path is the kernel's.
With `--rounds N` the modes are measured N times, interleaved, and medians are printed.
Services use `source_hash` so iperf3's control and data connections reach the same server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bascule.packet import testbed, trace
from bascule.packet.testbed import RS_IPS, VIP, Testbed, netns_socket

IPERF_PORT = 5201
CPS_PORT = 81
TICK = os.sysconf("SC_CLK_TCK")

SERVICES = """\
workers: 1
access_log: {{path: null}}
services:
  - {{name: iperf, vip: {vip}, port: {iperf}, mode: {mode}, interface: eth0, balancer: source_hash,
     endpoints: [{{address: {rs1}}}, {{address: {rs2}}}],
     health: {{tcp: {{port: {iperf}}}, interval: 1s}}}}
  - {{name: cps, vip: {vip}, port: {cps}, mode: {mode}, interface: eth0, balancer: maglev,
     endpoints: [{{address: {rs1}}}, {{address: {rs2}}}],
     health: {{tcp: {{port: {cps}}}, interval: 1s}}}}
"""


class QuickServers:
    """Accept, write b"ok\\n", close: one thread per host, until `close` or the deadline."""

    def __init__(self, bed: Testbed, lifetime: float) -> None:
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._socks = []
        for host in bed.rs_hosts:
            sock = netns_socket(bed.ns(host), socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", CPS_PORT))
            sock.listen(1024)
            sock.settimeout(0.2)
            self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            try:
                conn.sendall(b"ok\n")
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop.set()
        for sock in self._socks:
            sock.close()


def connections_per_second(
    bed: Testbed, address: str, limit: int, seconds: float, threads: int
) -> tuple[float, int]:
    """Bounded loop: (connections/s, failures) over at most `limit` connections or `seconds`."""
    done = [0]
    failed = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < deadline:
            with lock:
                if done[0] + failed[0] >= limit:
                    return
            sock = netns_socket(bed.ns("client"), socket.AF_INET, socket.SOCK_STREAM)
            ok = False
            try:
                sock.settimeout(2)
                sock.connect((address, CPS_PORT))
                ok = sock.recv(16) == b"ok\n"
            except OSError:
                pass
            finally:
                sock.close()
            with lock:
                if ok:
                    done[0] += 1
                else:
                    failed[0] += 1

    start = time.monotonic()
    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + 5)
    return done[0] / (time.monotonic() - start), failed[0]


def iperf(bed: Testbed, address: str, seconds: int, reverse: bool) -> float:
    """Gbit/s received, one TCP stream, client → server (or server → client with -R)."""
    argv = ["ip", "netns", "exec", bed.ns("client"), "iperf3", "-c", address, "-p",
            str(IPERF_PORT), "-t", str(seconds), "-J", *(["-R"] if reverse else [])]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    data = json.loads(done.stdout or "{}")
    if "error" in data or done.returncode != 0:
        raise RuntimeError(f"iperf3 to {address}: {data.get('error') or done.stderr.strip()}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def start_bascule(bed: Testbed, mode: str, workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / f"{mode}.yaml"
    config.write_text(
        SERVICES.format(
            vip=VIP, iperf=IPERF_PORT, cps=CPS_PORT, mode=mode, rs1=RS_IPS[0], rs2=RS_IPS[1]
        )
    )
    log = (workdir / f"{mode}.log").open("wb")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", bed.ns("lb"), sys.executable, "-m", "bascule", "run", "-c",
         str(config)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if b"service  cps" in (workdir / f"{mode}.log").read_bytes():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"bascule did not start: {(workdir / f'{mode}.log').read_text()}")


def measure(bed: Testbed, args: argparse.Namespace, mode: str, workdir: Path) -> dict[str, Any]:
    proc = start_bascule(bed, mode, workdir) if mode != "route" else None
    address = RS_IPS[0] if mode == "route" else VIP
    try:
        time.sleep(0.5)
        wall0 = time.monotonic()
        cpu0 = cpu_seconds(proc.pid) if proc else 0.0
        up = iperf(bed, address, args.seconds, reverse=False)
        down = iperf(bed, address, args.seconds, reverse=True)
        cps, failed = connections_per_second(
            bed, address, args.connections, args.seconds, args.threads
        )
        wall = time.monotonic() - wall0
        cpu = (cpu_seconds(proc.pid) - cpu0) if proc else 0.0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "mode": mode,
        "upload_gbps": up,
        "download_gbps": down,
        "connections_per_s": cps,
        "failed_connections": failed,
        "bascule_cpu_s": cpu,
        "wall_s": wall,
        "bascule_cpu_pct": 100 * cpu / wall if proc else None,
    }


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number's median over the rounds (failures summed)."""
    out: dict[str, Any] = {"mode": runs[0]["mode"], "rounds": len(runs)}
    for key, value in runs[0].items():
        if key == "mode":
            continue
        if value is None:
            out[key] = None
        elif key == "failed_connections":
            out[key] = sum(r[key] for r in runs)
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds",
        type=int,
        default=int(os.environ.get("BENCH_SECONDS", "5")),
        help="length of each iperf3 run and of the connections loop (5)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=20000,
        help="most connections in the connections/s loop (20000)",
    )
    parser.add_argument("--threads", type=int, default=4, help="client threads for connections/s")
    parser.add_argument("--modes", default="route,nat,dsr")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each mode this many times, interleaved; report medians",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()  # fmt: skip
    if os.geteuid() != 0:
        print("bench/packet.py: needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    modes = args.modes.split(",")
    results: list[dict[str, Any]] = []
    with testbed.testbed() as bed, tempfile.TemporaryDirectory() as tmp:
        trace.prepare_realservers(bed)
        iperfs = [
            subprocess.Popen(
                ["ip", "netns", "exec", bed.ns(h), "iperf3", "-s", "-p", str(IPERF_PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for h in bed.rs_hosts
        ]  # fmt: skip
        servers = QuickServers(bed, lifetime=60 + 10 * args.seconds * len(modes))
        try:
            time.sleep(0.5)
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for round_ in range(args.rounds):
                for mode in modes:
                    print(f"bench: round {round_ + 1} {mode} ...", file=sys.stderr, flush=True)
                    runs[mode].append(measure(bed, args, mode, Path(tmp)))
            results = [median(runs[m]) for m in modes]
        finally:
            servers.close()
            for proc in iperfs:
                proc.terminate()
                proc.wait(timeout=5)
    base = next((r for r in results if r["mode"] == "route"), None)
    print(f"{'mode':6} {'up Gbit/s':>10} {'ratio':>6} {'down Gbit/s':>12} {'ratio':>6} "
          f"{'conn/s':>8} {'ratio':>6} {'fail':>5} {'bascule CPU':>12}")  # fmt: skip
    for r in results:

        def ratio(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key] / base[key]:.2f}" if base and base[key] else "-"

        cpu = "-" if r["bascule_cpu_pct"] is None else f"{r['bascule_cpu_pct']:.2f}%"
        print(f"{r['mode']:6} {r['upload_gbps']:10.2f} {ratio('upload_gbps'):>6} "
              f"{r['download_gbps']:12.2f} {ratio('download_gbps'):>6} "
              f"{r['connections_per_s']:8.0f} {ratio('connections_per_s'):>6} "
              f"{r['failed_connections']:5d} {cpu:>12}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
