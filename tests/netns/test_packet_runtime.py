"""`bascule run` with packet modes, as a real process in the LB's namespace: services programmed
at start, health followed, tables removed on SIGTERM and reconciled after SIGKILL; transparent
proxying; `bascule check` refusing what `run` would refuse; UDP conntrack flushed on removal.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bascule.packet import apply, trace, transparent
from bascule.packet.manager import ServiceManager, health_key
from bascule.packet.testbed import CLIENT_IP, RS_IPS, VIP, Testbed, netns_socket

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
        time.sleep(0.3)  # the reconcile transaction follows the log line
        for port in (80, 8080):
            assert set(_hosts(bed, port, 12)) == {"rs1"}, port
        # SIGTERM: a clean exit removes every table.
        assert second.stop() == 0, second.log.read_text()
        assert apply.bascule_tables(lb) == set()
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
