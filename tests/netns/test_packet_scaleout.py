"""Scale-out: a router spreads the VIP's flows over two LBs by ECMP; both run the same DSR
service, so they pick the same endpoint for the same flow, and when one LB goes away the
flows it carried continue through the other, to the same endpoint, without a reset.

```
 client --- router (net): 198.18.0.100/32 nexthop via lb 198.18.0.10
                                          nexthop via lb2 198.18.0.20   (L4 hash)
                      br0 --+-- lb, lb2 (each: bascule's DSR program, VIP on eth0)
                            +-- rs1, rs2 (VIP on lo; reply straight to the client)
```
"""

from __future__ import annotations

import pytest
from test_packet_modes import EchoServers, _ask, _connect, _dsr_with

from bascule.packet import apply, testbed, trace
from bascule.packet.manager import ServiceManager
from bascule.packet.testbed import LB_IP, MACS, PREFIXLEN, ROUTER_IP, VIP, Testbed

pytestmark = pytest.mark.netns

LB2_IP = "198.18.0.20"
LB2_MAC = "02:00:c6:12:00:14"
FLOWS = 32


def add_second_lb(bed: Testbed) -> str:
    """lb2: one more namespace on the servers' bridge, holding the VIP like lb."""
    grown = testbed.add_namespace(bed, "lb2")
    lb2 = grown.extra[-1]
    testbed.ip_batch(
        bed.ns("net"),
        [
            f"link add lb2 type veth peer name eth0 address {LB2_MAC} netns {lb2}",
            "link set lb2 master br0",
            "link set lb2 up",
        ],
    )
    testbed.ip_batch(
        lb2,
        [
            "link set eth0 up",
            f"addr add {LB2_IP}/{PREFIXLEN} dev eth0",
            f"addr add {VIP}/32 dev eth0",
            f"route add default via {ROUTER_IP}",
        ],
    )
    return lb2


def ecmp(bed: Testbed, *gateways: str) -> None:
    """The router's route to the VIP: a multipath route hashed on the 4-tuple (policy 1)."""
    testbed.sysctl(bed.ns("net"), {"net.ipv4.fib_multipath_hash_policy": "1"})
    hops = " ".join(f"nexthop via {gw}" for gw in gateways)
    testbed.ip_batch(bed.ns("net"), [f"route replace {VIP}/32 {hops}"])


def test_two_lbs_behind_ecmp_agree_and_take_over(bed: Testbed) -> None:
    lb, lb2 = bed.ns("lb"), add_second_lb(bed)
    trace.prepare_realservers(bed)
    echo = EchoServers(bed, lifetime=60)
    svc = _dsr_with((1, 1))
    managers = [ServiceManager(lb), ServiceManager(lb2)]
    try:
        for manager in managers:
            manager.start([svc])
        # Same config, same Maglev table: the two kernels hold identical slot maps.
        assert managers[0].states[svc.name].slots == managers[1].states[svc.name].slots
        ecmp(bed, LB_IP, LB2_IP)

        conns = _connect(bed, FLOWS)
        port_of = {sock.getsockname()[1]: (sock, host) for sock, host in conns}
        carried = {
            name: {port: mac for _, port, mac in apply.list_flows(svc, ns)}
            for name, ns in (("lb", lb), ("lb2", lb2))
        }
        # ECMP spread the flows over both LBs; each flow passed exactly one of them.
        assert carried["lb"] and carried["lb2"], carried
        assert set(carried["lb"]) | set(carried["lb2"]) == set(port_of)
        assert not set(carried["lb"]) & set(carried["lb2"])
        # Each LB sent each of its flows to the server that answers it.
        for flows in carried.values():
            for port, mac in flows.items():
                assert MACS[port_of[port][1]] == mac

        # lb goes away (its link down, its route withdrawn, as BGP would): lb2 takes every flow.
        ecmp(bed, LB2_IP)
        testbed.ip_batch(lb, ["link set eth0 down"])
        for sock, host in conns:
            assert _ask(sock) == host  # same server, same TCP connection: no reset
        moved = {port: mac for _, port, mac in apply.list_flows(svc, lb2)}
        # lb2 had never seen lb's flows; its own table chose the endpoint lb had chosen.
        assert {p: moved[p] for p in carried["lb"]} == carried["lb"]
        for sock, _ in conns:
            sock.close()
    finally:
        echo.close()
        for manager in managers:
            manager.stop()
