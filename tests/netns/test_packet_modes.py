"""NAT and DSR on the wire: real namespaces, real nftables, real packets (seed 000, 002).

Each test builds its own testbed and asserts from frames captured on each host's eth0.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from bascule.config.services import ServiceConfig
from bascule.packet import apply, nft, realserver, testbed, trace
from bascule.packet.manager import ServiceManager, health_key
from bascule.packet.testbed import CLIENT_IP, LB_IP, MACS, RS_IPS, VIP, Testbed

pytestmark = pytest.mark.netns

RS_MAC = {"rs1": MACS["rs1"], "rs2": MACS["rs2"]}


# ------------------------------------------------------------------ the modes, as in the issue


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_nat_server_sees_client_and_replies_pass_the_lb(bed: Testbed, protocol: str) -> None:
    result = trace.trace(bed, "nat", protocol)
    assert " saw 198.19.0.1:" in result.response, result.response
    seen = result.client_addresses()
    assert len(seen) == 1 and next(iter(seen.values())) == {CLIENT_IP}
    (server,) = seen
    # The server's reply, from its own address, arrives at the LB, which un-NATs it.
    replies_in = result.received("lb", sport=80)
    assert [f.src_ip for f in replies_in] == [RS_IPS[int(server[-1]) - 1]]
    replies_out = [f for f in result.seen("lb") if f.outgoing and f.sport == 80]
    assert [f.src_ip for f in replies_out] == [VIP]
    assert {f.src_ip for f in result.received("client")} == {VIP}
    # The request left the LB with its destination rewritten to the server: NAT.
    request_out = [f for f in result.seen("lb") if f.outgoing and f.dport == 80]
    assert [(f.src_ip, f.dst_ip) for f in request_out] == [(CLIENT_IP, RS_IPS[int(server[-1]) - 1])]


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_dsr_server_sees_client_and_lb_never_sees_a_reply(bed: Testbed, protocol: str) -> None:
    result = trace.trace(bed, "dsr", protocol)
    assert " saw 198.19.0.1:" in result.response, result.response
    seen = result.client_addresses()
    assert len(seen) == 1 and next(iter(seen.values())) == {CLIENT_IP}
    (server,) = seen
    # Not one frame from port 80 passes the LB, either way.
    assert [f for f in result.frames if f.host == "lb" and f.sport == 80] == []
    # The reply leaves the server with the VIP as its source, straight to the client's router.
    replies = [f for f in result.seen(server) if f.outgoing]
    assert replies and {f.src_ip for f in replies} == {VIP}
    assert {f.src_ip for f in result.received("client")} == {VIP}
    # The LB rewrote both MACs and nothing else (seed 002's step 2; on a bridge the source MAC
    # must be the LB's).
    (into_lb,) = [f for f in result.seen("lb") if not f.outgoing]
    (out_of_lb,) = [f for f in result.seen("lb") if f.outgoing]
    addresses = (CLIENT_IP, VIP)
    assert (out_of_lb.src_ip, out_of_lb.dst_ip) == (into_lb.src_ip, into_lb.dst_ip) == addresses
    assert (out_of_lb.src_mac, out_of_lb.dst_mac) == (MACS["lb"], RS_MAC[server])
    assert out_of_lb.digest == into_lb.digest
    rendered = trace.render(result)
    assert "LB saw 0 reply frame(s)" in rendered


# ------------------------------------------------------------------ lifecycle


def _tables(ns: str) -> set[tuple[str, str]]:
    return apply.bascule_tables(ns)


def test_start_reconciles_a_leftover_table_and_stop_removes_it(bed: Testbed) -> None:
    lb = bed.ns("lb")
    # What a killed bascule could leave: a stale DSR table and a half-different NAT table.
    apply.run_nft(
        "table netdev bascule_eth0 {\n chain ingress {\n type filter hook ingress device "
        '"eth0" priority -300; policy accept;\n ip daddr 198.18.0.100 drop\n }\n}\n'
        "table inet bascule {\n chain junk {\n }\n}\n",
        lb,
    )
    manager = ServiceManager(lb)
    manager.start([trace.service("nat")])
    assert _tables(lb) == {("inet", "bascule")}
    listed = apply.list_program(lb)
    assert "junk" not in listed and "dnat ip to jhash" in listed
    servers = trace.Servers(bed, bed.rs_hosts, "tcp")
    try:
        assert " saw 198.19.0.1:" in trace.request(bed, "tcp")
    finally:
        servers.close()
    manager.stop()
    assert _tables(lb) == set()
    manager.stop()  # twice is fine


def test_refusals_name_the_key_and_the_fix(bed: Testbed) -> None:
    lb = bed.ns("lb")
    base = trace.service("dsr").model_dump()
    with pytest.raises(apply.PacketError, match=r"services\[0\] \(trace-dsr\)\.interface: no such"):
        apply.preflight([ServiceConfig.model_validate({**base, "interface": "eth9"})], lb)
    with pytest.raises(apply.PacketError, match=r"\.vip: 198\.18\.0\.101 is not on interface eth0"):
        apply.preflight([ServiceConfig.model_validate({**base, "vip": "198.18.0.101"})], lb)
    ghost = ServiceConfig.model_validate(
        {**base, "endpoints": [{"address": "198.18.0.11"}, {"address": "198.18.0.77"}]}
    )
    unresolvable = r"endpoints\[1\]\.mac: cannot resolve .*198\.18\.0\.77"
    with pytest.raises(apply.PacketError, match=unresolvable):
        apply.endpoint_values(0, ghost, lb)
    # Nothing was programmed by the refusals.
    assert _tables(lb) == set()


def test_realserver_apply_puts_the_vip_on_lo_without_arp(bed: Testbed) -> None:
    rs = bed.ns("rs1")
    realserver.apply(realserver.plan(VIP), netns=rs)
    realserver.apply(realserver.plan(VIP), netns=rs)  # idempotent
    addrs = json.loads(
        subprocess.run(
            ["ip", "-n", rs, "-j", "addr", "show", "dev", "lo"], capture_output=True, check=True
        ).stdout
    )
    assert VIP in {a["local"] for a in addrs[0]["addr_info"]}
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            rs,
            "sysctl",
            "-n",
            "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.all.arp_announce",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["1", "2"]


def test_testbed_down_removes_everything_after_a_crash() -> None:
    made = testbed.up()
    try:
        grown = testbed.add_namespace(made, "extra")
        # A "crash": only the state file remembers; down() from it removes every namespace.
        (remembered,) = [b for b in testbed.recorded() if b.suffix == made.suffix]
        assert remembered == grown
    finally:
        testbed.down(testbed.recorded_or(made))
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert made.suffix not in listed
    assert all(b.suffix != made.suffix for b in testbed.recorded())


# ------------------------------------------------------------------ health, drain, slots


class EchoServers:
    """Long-lived TCP connections: each line gets `<host>\\n` back, one thread a connection."""

    def __init__(self, bed: Testbed, lifetime: float = 30.0) -> None:
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._socks = []
        for host in bed.rs_hosts:
            sock = testbed.netns_socket(bed.ns(host), socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", 80))
            sock.listen(128)
            sock.settimeout(0.1)
            self._socks.append(sock)
            threading.Thread(target=self._accept, args=(host, sock), daemon=True).start()

    def _accept(self, host: str, sock: socket.socket) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(host, conn), daemon=True).start()

    def _serve(self, host: str, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                try:
                    if not conn.recv(100):
                        return
                    conn.sendall(f"{host}\n".encode())
                except TimeoutError:
                    continue
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        for sock in self._socks:
            sock.close()


@pytest.fixture
def echo(bed: Testbed) -> Iterator[EchoServers]:
    servers = EchoServers(bed)
    try:
        yield servers
    finally:
        servers.close()


def _connect(bed: Testbed, count: int) -> list[tuple[socket.socket, str]]:
    conns = []
    for _ in range(count):
        sock = testbed.netns_socket(bed.ns("client"), socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect((VIP, 80))
        conns.append((sock, _ask(sock)))
    return conns


def _ask(sock: socket.socket) -> str:
    sock.sendall(b"x")
    return sock.recv(100).decode().strip()


def _dsr_with(weights: tuple[int, int]) -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            **trace.service("dsr").model_dump(),
            "endpoints": [
                {"address": RS_IPS[0], "weight": weights[0]},
                {"address": RS_IPS[1], "weight": weights[1]},
            ],
        }
    )


def test_dsr_down_endpoint_moves_only_its_slots_and_flows(bed: Testbed, echo: EchoServers) -> None:
    trace.prepare_realservers(bed)
    manager = ServiceManager(bed.ns("lb"))
    svc = _dsr_with((1, 1))
    manager.start([svc])
    try:
        conns = _connect(bed, 24)
        where = [host for _, host in conns]
        assert set(where) == {"rs1", "rs2"}, where
        before = manager.states[svc.name].slots
        program = manager.reconcile([svc], {health_key(svc, RS_IPS[1]): False})
        after = manager.states[svc.name].slots
        changed = [i for i in range(nft.TABLE_SIZE) if before[i] != after[i]]
        # Exactly rs2's slots changed, and the transaction touched those slots only.
        assert changed == [i for i, v in enumerate(before) if v == MACS["rs2"]]
        assert program.count("delete element") >= 1
        assert sum(
            line.count(":") // 6 for line in program.splitlines() if line.startswith("add element")
        ) == len(changed)
        assert apply.slot_counts(svc, bed.ns("lb")) == {MACS["rs1"]: nft.TABLE_SIZE}
        # Flows on rs1 keep their server; rs2's flows were unpinned and rs2 gets nothing new.
        for sock, host in conns:
            if host == "rs1":
                assert _ask(sock) == "rs1"
        assert all(mac != MACS["rs2"] for _, _, mac in apply.list_flows(svc, bed.ns("lb")))
        fresh = _connect(bed, 6)
        assert {host for _, host in fresh} == {"rs1"}
        for sock, _ in conns + fresh:
            sock.close()
    finally:
        manager.stop()


def test_dsr_drain_keeps_established_flows(bed: Testbed, echo: EchoServers) -> None:
    trace.prepare_realservers(bed)
    manager = ServiceManager(bed.ns("lb"))
    manager.start([_dsr_with((1, 1))])
    try:
        conns = _connect(bed, 16)
        assert "rs2" in {host for _, host in conns}
        manager.reconcile([_dsr_with((1, 0))], {})  # rs2 drains: weight 0
        # Established flows, rs2's included, stay where they are (the flow map pins them).
        for sock, host in conns:
            assert _ask(sock) == host
        fresh = _connect(bed, 6)
        assert {host for _, host in fresh} == {"rs1"}
        for sock, _ in conns + fresh:
            sock.close()
    finally:
        manager.stop()


def test_nat_round_robin_alternates(bed: Testbed, echo: EchoServers) -> None:
    manager = ServiceManager(bed.ns("lb"))
    svc = trace.service("nat", balancer="round_robin")
    manager.start([svc])
    try:
        conns = _connect(bed, 6)
        hosts = [host for _, host in conns]
        assert hosts[0] != hosts[1] and hosts == hosts[:2] * 3
        for sock, _ in conns:
            sock.close()
        assert set(hosts) == {"rs1", "rs2"}
    finally:
        manager.stop()


def test_proxy_server_sees_the_lb(bed: Testbed) -> None:
    result = trace.trace(bed, "proxy", "tcp")
    assert " saw 198.18.0.10:" in result.response, result.response
    seen = result.client_addresses()
    assert len(seen) == 1 and next(iter(seen.values())) == {LB_IP}
    # Two connections: the server's reply goes to the LB, the LB answers the client from the VIP.
    assert {f.dst_ip for f in result.received("lb", sport=80)} == {LB_IP}
    assert {f.src_ip for f in result.received("client")} == {VIP}
