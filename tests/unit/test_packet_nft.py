"""The services schema and the generated nft program (pure), checked by `nft -c` when possible."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from bascule.config.services import ServiceConfig, ServiceList
from bascule.packet import nft, realserver

RS1, RS2 = "02:00:c6:12:00:0b", "02:00:c6:12:00:0c"
LB_MAC = "02:00:c6:12:00:0a"


def svc(**over: Any) -> ServiceConfig:
    data: dict[str, Any] = {
        "name": "web-dsr",
        "vip": "198.18.0.100",
        "port": 80,
        "protocol": "tcp",
        "mode": "dsr",
        "interface": "eth0",
        "balancer": "maglev",
        "endpoints": [{"address": "198.18.0.11"}, {"address": "198.18.0.12", "mac": RS2}],
        "health": {"tcp": {"port": 80}, "interval": "1s"},
    }
    data.update(over)
    return ServiceConfig.model_validate(data)


def state(service: ServiceConfig, up: dict[str, bool] | None = None) -> nft.ServiceState:
    if service.mode == "dsr":
        values = {
            e.address: m
            for e, m in zip(service.endpoints, (RS1, RS2, "02:00:00:00:00:13"), strict=False)
        }
    else:
        values = {e.address: e.address for e in service.endpoints}
    slots = nft.compute_slots(service, up or {}, values)
    return nft.ServiceState(service, slots, LB_MAC if service.mode == "dsr" else None)


# ------------------------------------------------------------------ schema


def test_issue_example_parses() -> None:
    s = svc()
    assert s.health is not None and s.health.interval == 1.0 and s.health_port == 80
    assert s.endpoints[1].mac == RS2 and s.endpoints[0].weight == 1
    with pytest.raises(ValidationError):
        s.port = 81  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"vip": "198.18.0.300"}, "vip must be an IPv4 or IPv6 address"),
        ({"port": 0}, "greater than or equal to 1"),
        ({"port": 65536}, "less than or equal to 65535"),
        ({"protocol": "sctp"}, "'tcp' or 'udp'"),
        ({"mode": "tun"}, "'nat' or 'dsr'"),
        ({"balancer": "round_robin"}, "cannot be used in dsr mode"),
        ({"interface": "a-very-long-interface"}, "1 to 15 characters"),
        ({"endpoints": [{"address": "198.18.0.11", "mac": "02:00:00:00:12"}]}, "six hex bytes"),
        ({"endpoints": [{"address": "198.18.0.11", "mac": "01:00:5e:00:00:01"}]}, "multicast"),
        ({"endpoints": [{"address": "2001:db8::1"}]}, "cannot change the address family"),
        ({"endpoints": [{"address": "198.18.0.11"}, {"address": "198.18.0.11"}]}, "duplicate"),
        ({"endpoints": [{"address": "198.18.0.11", "weight": 0}]}, "weight above 0"),
        ({"mode": "nat"}, "mac is used only in dsr mode"),
        ({"health": {"interval": "soon"}}, "expected a duration"),
        ({"health": {"tcp": {"port": 80}, "retries": 3}}, "Extra inputs are not permitted"),
        ({"extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_services_are_refused_with_a_clear_message(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        svc(**over)


def test_service_list_refuses_clashes() -> None:
    adapter = TypeAdapter(ServiceList)
    one = svc().model_dump()
    with pytest.raises(ValidationError, match="duplicate service name"):
        adapter.validate_python([one, one])
    with pytest.raises(ValidationError, match=r"both claim 198\.18\.0\.100 port 80/tcp"):
        adapter.validate_python([one, {**one, "name": "other"}])
    with pytest.raises(ValidationError, match="clash"):
        adapter.validate_python([one, {**one, "name": "web.dsr", "port": 81}])
    assert len(adapter.validate_python([one, {**one, "name": "udp", "protocol": "udp"}])) == 2


# ------------------------------------------------------------------ slot tables


def test_maglev_slots_follow_weights_and_one_failure_moves_about_one_nth() -> None:
    endpoints = [{"address": f"198.18.0.{10 + i}", "weight": 1} for i in range(5)]
    s = svc(mode="nat", endpoints=endpoints)
    before = state(s).slots
    assert len(before) == nft.TABLE_SIZE
    shares = {a: before.count(a) / nft.TABLE_SIZE for a in set(before)}
    assert all(abs(v - 0.2) < 0.01 for v in shares.values())
    after = state(s, {"198.18.0.12": False}).slots
    moved = sum(1 for a, b in zip(before, after, strict=True) if a != b)
    owned = before.count("198.18.0.12")
    assert owned <= moved <= owned * 1.1  # ≈ 1/N: the dead one's slots, and few others
    assert "198.18.0.12" not in after
    # No history: recomputing from the same inputs gives the same table (ECMP LBs agree).
    assert state(s, {"198.18.0.12": False}).slots == after


def test_round_robin_slots_are_smooth_weighted() -> None:
    s = svc(
        mode="nat",
        balancer="round_robin",
        endpoints=[
            {"address": "198.18.0.11", "weight": 5},
            {"address": "198.18.0.12", "weight": 1},
            {"address": "198.18.0.13", "weight": 1},
        ],
    )
    first = [a[-2:] for a in state(s).slots[:7]]
    assert first == ["11", "11", "12", "11", "13", "11", "11"]  # nginx's a,a,b,a,c,a,a


def test_no_endpoint_up_means_no_slots() -> None:
    s = svc()
    assert state(s, {"198.18.0.11": False, "198.18.0.12": False}).slots == ()


# ------------------------------------------------------------------ program text


def test_dsr_program_rewrites_both_macs_pins_flows_and_hashes_fragments_on_addresses() -> None:
    text = nft.replace_program([state(svc())])
    lines = text.splitlines()
    assert lines[:3] == [
        "add table netdev bascule_eth0",
        "delete table netdev bascule_eth0",
        "table netdev bascule_eth0 {",
    ]
    assert 'type filter hook ingress device "eth0" priority -300; policy accept;' in text
    seed = f"seed {nft.HASH_SEED:#x}"
    rules = [line.strip() for line in lines if line.startswith("\t\tip ")]
    assert rules[0] == (
        "ip daddr 198.18.0.100 ip protocol tcp ip frag-off & 0x3fff != 0 ether daddr set "
        f"jhash ip saddr . ip daddr mod 65537 {seed} map @slots_web_dsr "
        f'ether saddr set {LB_MAC} fwd to "eth0"'
    )
    assert "ether daddr set ip saddr . tcp sport map @flows_web_dsr" in rules[1]
    assert (
        f"jhash ip saddr . tcp sport . ip daddr . tcp dport mod 65537 {seed} "
        "map @slots_web_dsr update @flows_web_dsr"
    ) in rules[2]
    assert "update" not in rules[3]  # the fallback when the flow map is full
    assert "flags dynamic,timeout; timeout 60s;" in text
    elements = sum(line.count(" : ") for line in lines if line.startswith("add element"))
    assert elements == nft.TABLE_SIZE


def test_nat_program_uses_dnat_and_numgen() -> None:
    maglev = nft.replace_program(
        [state(svc(mode="nat", endpoints=[{"address": "198.18.0.11"}, {"address": "198.18.0.12"}]))]
    )
    assert (
        "ip daddr 198.18.0.100 tcp dport 80 dnat ip to jhash ip saddr . tcp sport . "
        "ip daddr . tcp dport mod 65537 seed 0x62736375 map @slots_web_dsr"
    ) in maglev
    assert "type nat hook prerouting priority dstnat; policy accept;" in maglev
    rr = nft.replace_program(
        [
            state(
                svc(
                    mode="nat",
                    name="rr",
                    protocol="udp",
                    port=53,
                    balancer="round_robin",
                    endpoints=[{"address": "198.18.0.11"}],
                )
            )
        ]
    )
    assert "udp dport 53 dnat ip to numgen inc mod 65537 map @slots_rr" in rr
    src = nft.replace_program([state(svc(balancer="source_hash"))])
    assert "jhash ip saddr mod 65537" in src


def test_ipv6_dsr_has_no_flow_map() -> None:
    s = svc(vip="2001:db8::100", endpoints=[{"address": "2001:db8::11", "mac": RS1}])
    text = nft.replace_program([nft.ServiceState(s, (RS1,) * nft.TABLE_SIZE, LB_MAC)])
    assert "flows_" not in text and "exthdr frag exists" in text
    assert "ip6 daddr 2001:db8::100" in text


def test_slot_diff_touches_only_changed_slots() -> None:
    s = svc()
    before, after = state(s), state(s, {"198.18.0.12": False})
    text = nft.slot_diff(before, after)
    changed = [i for i in range(nft.TABLE_SIZE) if before.slots[i] != after.slots[i]]
    deleted = [
        int(k)
        for line in text.splitlines()
        if line.startswith("delete element")
        for k in line.split("{")[1].rstrip(" }").split(", ")
    ]
    assert deleted == changed
    assert sum(line.count(" : ") for line in text.splitlines()) == len(changed)
    assert nft.slot_diff(before, before) == ""
    # Losing every endpoint empties the map; gaining one back fills it.
    empty = state(s, {"198.18.0.11": False, "198.18.0.12": False})
    assert "add element" not in nft.slot_diff(before, empty)
    assert "delete element" not in nft.slot_diff(empty, before)


def test_flow_deletes_and_delete_program() -> None:
    assert nft.flow_deletes(svc(), [("198.19.0.1", 40000)]) == (
        "delete element netdev bascule_eth0 flows_web_dsr { 198.19.0.1 . 40000 }\n"
    )
    assert nft.delete_program([("inet", "bascule")]) == (
        "add table inet bascule\ndelete table inet bascule\n"
    )


def test_realserver_plan() -> None:
    assert realserver.render(realserver.plan("198.18.0.100")) == (
        "ip addr replace 198.18.0.100/32 dev lo\n"
        "sysctl -qw net.ipv4.conf.all.arp_ignore=1\n"
        "sysctl -qw net.ipv4.conf.all.arp_announce=2\n"
    )
    assert realserver.plan("2001:db8::1") == [
        ("ip", "-6", "addr", "replace", "2001:db8::1/128", "dev", "lo")
    ]


# ------------------------------------------------------------------ nft -c (real syntax check)


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    """A namespace holding an `eth0` (a veth) so netdev chains can hook it; nft -c needs root."""
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None:
        reason = "nft -c needs root, nft and ip"
        if os.environ.get("BASCULE_REQUIRE_NETNS", "") not in ("", "0"):
            pytest.fail(f"{reason} (BASCULE_REQUIRE_NETNS is set)")
        pytest.skip(reason)
    name = f"bsc-{secrets.token_hex(3)}-unit"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
            check=True,
            timeout=30,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True, timeout=30)


def _nft_check(ns: str, program: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"],
        input=program,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_generated_programs_pass_nft_check(scratch_netns: str) -> None:
    services = [
        svc(),
        svc(name="dns", protocol="udp", port=53, balancer="source_hash"),
        svc(name="v6", vip="2001:db8::100", endpoints=[{"address": "2001:db8::11", "mac": RS1}]),
        svc(name="nat", mode="nat", port=8080, endpoints=[{"address": "198.18.0.11"}]),
        svc(
            name="rr",
            mode="nat",
            port=8081,
            balancer="round_robin",
            endpoints=[{"address": "198.18.0.11", "weight": 3}],
        ),
        svc(
            name="wr",
            mode="nat",
            port=8082,
            balancer="weighted",
            protocol="udp",
            endpoints=[{"address": "198.18.0.11"}],
        ),
        svc(name="nat6", mode="nat", vip="2001:db8::100", endpoints=[{"address": "2001:db8::11"}]),
    ]
    states = [
        state(s) if s.name != "v6" else nft.ServiceState(s, (RS1,) * nft.TABLE_SIZE, LB_MAC)
        for s in services
    ]
    diff = nft.slot_diff(states[0], state(services[0], {"198.18.0.12": False}))
    # The diff is checked against the tables the same input creates first.
    whole = nft.replace_program(states, remove=[("netdev", "bascule_eth9")])
    _nft_check(scratch_netns, whole + diff)
