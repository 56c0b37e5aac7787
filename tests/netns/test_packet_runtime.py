"""`bascule run` with packet modes, as a real process in the LB's namespace: services programmed
at start, health followed, tables removed on SIGTERM and reconciled after SIGKILL; transparent
proxying; `bascule check` refusing what `run` would refuse; UDP conntrack flushed on removal.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bascule.config.loader import load_config
from bascule.packet import apply, testbed, trace, transparent
from bascule.packet.manager import ServiceManager, health_key
from bascule.packet.testbed import CLIENT_IP, MACS, RS_IPS, VIP, Testbed, netns_socket

pytestmark = pytest.mark.netns

SERVICES = """\
workers: 1
access_log: {path: null}
services:
  - name: web-nat
    vip: 198.18.0.100
    port: 80
    mode: nat
    interface: eth0
    endpoints: [{address: 198.18.0.11}, {address: 198.18.0.12}]
    health: {tcp: {port: 80}, interval: 200ms, timeout: 300ms, rise: 1, fall: 2}
  - name: web-dsr
    vip: 198.18.0.100
    port: 8080
    mode: dsr
    interface: eth0
    endpoints: [{address: 198.18.0.11}, {address: 198.18.0.12}]
    health: {tcp: {port: 8080}, interval: 200ms, timeout: 300ms, rise: 1, fall: 2}
"""


class Bascule:
    """`ip netns exec LB python -m bascule run -c FILE`, its stderr kept in a file."""

    def __init__(self, bed: Testbed, config: Path, log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", bed.ns("lb"), sys.executable, "-m", "bascule", "run",
             "-c", str(config)],
            stdout=self._out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} from bascule: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        return code


@pytest.fixture
def bascules() -> Iterator[list[Bascule]]:
    started: list[Bascule] = []
    try:
        yield started
    finally:
        for b in started:
            b.stop(signal.SIGKILL, timeout=5)


def _hosts(bed: Testbed, port: int, count: int) -> list[str]:
    """Who answered each of `count` requests to VIP:port ("rs1"/"rs2", or the error)."""
    answers = []
    for _ in range(count):
        body = trace.request(bed, "tcp", port=port, timeout=2.0)
        assert f" saw {CLIENT_IP}:" in body or body.startswith("error"), body
        answers.append(body.split()[0] if not body.startswith("error") else body)
    return answers


def _services(lb: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bascule", "services", "--netns", lb, "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def _wait_for_slots(lb: str, wanted: dict[str, set[str]], config: Path) -> None:
    """Until the kernel's slot maps hold only these values (the reconcile follows the log)."""
    services = {s.name: s for s in load_config(str(config)).services}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        held = {name: set(apply.slot_counts(services[name], lb)) for name in wanted}
        if held == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"slots hold {held}, not {wanted}")


def test_run_programs_services_follows_health_and_cleans_up(
    bed: Testbed, tmp_path: Path, bascules: list[Bascule]
) -> None:
    lb = bed.ns("lb")
    trace.prepare_realservers(bed)
    config = tmp_path / "services.yaml"
    config.write_text(SERVICES)
    servers = {
        (host, port): trace.Servers(bed, [host], "tcp", port=port, lifetime=60)
        for host in bed.rs_hosts
        for port in (80, 8080)
    }
    try:
        # A first bascule is killed: its tables stay, and the next start reconciles them.
        first = Bascule(bed, config, tmp_path / "first.log")
        bascules.append(first)
        first.wait_for("service  web-dsr")
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert apply.bascule_tables(lb) == {("inet", "bascule"), ("netdev", "bascule_eth0")}

        second = Bascule(bed, config, tmp_path / "second.log")
        bascules.append(second)
        second.wait_for("service  web-dsr")
        for port in (80, 8080):  # nat, dsr: both servers get flows, each sees the client
            assert set(_hosts(bed, port, 16)) == {"rs1", "rs2"}, port
        # rs2's servers die: health takes it out of both services, new flows go to rs1.
        servers[("rs2", 80)].close()
        servers[("rs2", 8080)].close()
        second.wait_for("web-nat: 198.18.0.12 is down")
        second.wait_for("web-dsr: 198.18.0.12 is down")
        _wait_for_slots(lb, {"web-nat": {RS_IPS[0]}, "web-dsr": {MACS["rs1"]}}, config)
        for port in (80, 8080):
            assert set(_hosts(bed, port, 12)) == {"rs1"}, port
        # `bascule services` shows what is programmed and each endpoint's health.
        shown = _services(lb)
        health = {(e["service"], e["address"]): (e["up"], e["slots"]) for e in shown["endpoints"]}
        assert health == {
            ("web-nat", RS_IPS[0]): (True, 65537),
            ("web-nat", RS_IPS[1]): (False, 0),
            ("web-dsr", RS_IPS[0]): (True, 65537),
            ("web-dsr", RS_IPS[1]): (False, 0),
        }
        assert {t["table"] for t in shown["tables"]} == {"inet bascule", "netdev bascule_eth0"}
        # SIGTERM: a clean exit removes every table and the status file.
        assert second.stop() == 0, second.log.read_text()
        assert apply.bascule_tables(lb) == set()
        assert _services(lb) == {"tables": [], "endpoints": None}
    finally:
        for server in servers.values():
            server.close()


def test_check_refuses_what_run_would_refuse(bed: Testbed, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        SERVICES.replace("vip: 198.18.0.100\n    port: 8080", "vip: 198.18.0.101\n    port: 8080")
    )
    argv = ["ip", "netns", "exec", bed.ns("lb"), sys.executable, "-m", "bascule"]
    done = subprocess.run([*argv, "check", "-c", str(config)], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 1
    assert "services[1] (web-dsr).vip: 198.18.0.101 is not on interface eth0" in done.stderr
    assert "ip addr add 198.18.0.101/32 dev eth0" in done.stderr
    # `run` refuses the same way, exits non-zero and programs nothing.
    done = subprocess.run([*argv, "run", "-c", str(config)], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 1 and "services[1] (web-dsr).vip" in done.stderr, done.stderr
    assert apply.bascule_tables(bed.ns("lb")) == set()
    config.write_text(SERVICES)
    done = subprocess.run([*argv, "check", "-c", str(config)], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_transparent_proxy_server_sees_the_client(bed: Testbed) -> None:
    result = trace.trace(bed, "transparent", "tcp")
    assert f" saw {CLIENT_IP}:" in result.response, result.response
    seen = result.client_addresses()
    assert len(seen) == 1 and next(iter(seen.values())) == {CLIENT_IP}
    (server,) = seen
    # Two connections (bascule terminates TCP): the client's ends at the VIP, bascule's second
    # one leaves the LB from the client's address, and the server's reply comes back to the LB.
    to_server = [f for f in result.seen("lb") if f.outgoing and f.dport == 80]
    assert {(f.src_ip, f.dst_ip) for f in to_server} == {(CLIENT_IP, RS_IPS[int(server[-1]) - 1])}
    assert {f.dst_ip for f in result.received("lb", sport=80)} == {CLIENT_IP}
    assert {f.src_ip for f in result.received("client")} == {VIP}
    # bascule removed its marks and policy routing on exit.
    assert not transparent.is_set_up(bed.ns("lb"))
    rules = subprocess.run(["ip", "-n", bed.ns("lb"), "rule"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert f"{transparent.MARK:#x}" not in rules


class KeepAliveServers:
    """HTTP/1.1 keep-alive servers on port 80 of rs1 and rs2: each response body says which
    server answered and the peer address of the connection (`rs1 saw 198.19.0.2:40000`)."""

    def __init__(self, bed: Testbed, lifetime: float = 30.0) -> None:
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._socks = []
        for host in bed.rs_hosts:
            sock = netns_socket(bed.ns(host), socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", 80))
            sock.listen(64)
            sock.settimeout(0.1)
            self._socks.append(sock)
            threading.Thread(target=self._accept, args=(host, sock), daemon=True).start()

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _accept(self, host: str, sock: socket.socket) -> None:
        while self._running():
            try:
                conn, peer = sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(host, conn, peer), daemon=True).start()

    def _serve(self, host: str, conn: socket.socket, peer: tuple[str, int]) -> None:
        conn.settimeout(0.2)
        data = b""
        with conn:
            while self._running():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    _, _, data = data.partition(b"\r\n\r\n")
                    body = f"{host} saw {peer[0]}:{peer[1]}\n".encode()
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
                    conn.sendall(head.encode() + body)

    def close(self) -> None:
        self._stop.set()
        for sock in self._socks:
            sock.close()


def _get_from(bed: Testbed, source: str) -> str:
    """One HTTP/1.1 request to the VIP from `source` (an address of the client host)."""
    sock = netns_socket(bed.ns("client"), socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(3)
        sock.bind((source, 0))
        sock.connect((VIP, 80))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {VIP}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.partition(b"\r\n\r\n")[2].decode()


def test_transparent_connections_serve_only_their_own_client(bed: Testbed) -> None:
    # Two clients; keep-alive servers, so a pooled connection would be reused if bascule let it.
    other = "198.19.0.2"
    testbed.ip_batch(bed.ns("client"), [f"addr add {other}/24 dev eth0"])
    servers = KeepAliveServers(bed)
    try:
        with trace.proxy(bed, transparent=True):
            # Round robin over rs1, rs2: A, A, B, B puts B's first request on rs1 right after
            # A's connection to rs1 went idle; it must not be reused for B.
            answers = [
                (source, _get_from(bed, source)) for source in (CLIENT_IP, CLIENT_IP, other, other)
            ]
    finally:
        servers.close()
    assert {a.split()[0] for _, a in answers} == {"rs1", "rs2"}, answers
    for source, answer in answers:
        assert f" saw {source}:" in answer, answers


def test_nat_udp_flushes_conntrack_of_a_removed_endpoint(bed: Testbed) -> None:
    lb = bed.ns("lb")
    svc = trace.service("nat", "udp")
    manager = ServiceManager(lb)
    manager.start([svc])
    servers = trace.Servers(bed, bed.rs_hosts, "udp", lifetime=30)
    # One client socket, one source port: a resolver's flow, which conntrack keeps NAT'd.
    sock = netns_socket(bed.ns("client"), socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(2)

        def ask() -> str:
            sock.sendto(b"query", (VIP, 80))
            return sock.recvfrom(2048)[0].decode().split()[0]

        first = ask()
        assert all(ask() == first for _ in range(3))  # conntrack keeps the flow's endpoint
        dead = RS_IPS[int(first[-1]) - 1]
        manager.reconcile([svc], {health_key(svc, dead): False})
        assert manager.flushed == 1
        survivor = {"rs1": "rs2", "rs2": "rs1"}[first]
        assert ask() == survivor  # the same source port now reaches the other endpoint
    finally:
        sock.close()
        servers.close()
        manager.stop()
