"""Pure parts of the packet runtime: transparent proxying's plan, `source_address`, which NAT
endpoints get their UDP conntrack entries flushed, and `start_packet` doing nothing unasked."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from bascule.config.schema import ClusterConfig, Config
from bascule.config.services import ServiceConfig
from bascule.packet import manager, nft, transparent
from bascule.packet.manager import gone_udp_nat_endpoints, health_key
from bascule.packet.nft import ServiceState
from bascule.packet.runtime import start_packet


def test_transparent_plan_marks_local_delivery_and_undoes_it() -> None:
    program = transparent.nft_program()
    assert program.startswith(f"add table inet {nft.TRANSPARENT_TABLE}\n")
    assert "socket transparent 1 meta mark set 0x6273 accept" in program
    assert "priority mangle" in program
    commands = [" ".join(c) for c in transparent.plan()]
    assert commands == [
        f"ip -4 route replace local 0.0.0.0/0 dev lo table {transparent.ROUTE_TABLE}",
        f"ip -4 rule add fwmark 0x6273 lookup {transparent.ROUTE_TABLE} "
        f"priority {transparent.RULE_PRIORITY}",
    ]
    undo = [" ".join(c) for c in transparent.undo_plan()]
    assert undo == [
        f"ip -4 rule del priority {transparent.RULE_PRIORITY}",
        f"ip -4 route flush table {transparent.ROUTE_TABLE}",
    ]


def test_source_address_is_lb_or_client() -> None:
    base = {"name": "c", "endpoints": [{"address": "127.0.0.1:8080"}]}
    assert ClusterConfig.model_validate(base).source_address == "lb"
    assert ClusterConfig.model_validate({**base, "source_address": "client"}).source_address == (
        "client"
    )
    with pytest.raises(ValidationError):
        ClusterConfig.model_validate({**base, "source_address": "10.0.0.1"})


def test_start_packet_does_nothing_without_services_or_transparent_clusters() -> None:
    config = Config.model_validate(
        {"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:8080"}]}]}
    )
    assert asyncio.run(start_packet(config)) is None


def _udp(endpoints: list[dict[str, object]], protocol: str = "udp") -> ServiceConfig:
    return ServiceConfig.model_validate(
        {"name": "dns", "vip": "198.18.0.100", "port": 53, "protocol": protocol, "mode": "nat",
         "interface": "eth0", "endpoints": endpoints}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("before", "after", "health", "flushed"),
    [
        # down by health: flushed
        ([{"address": "198.18.0.11"}, {"address": "198.18.0.12"}], None, {"198.18.0.12": False},
         ["198.18.0.12"]),
        # removed from the config: flushed
        ([{"address": "198.18.0.11"}, {"address": "198.18.0.12"}], [{"address": "198.18.0.11"}],
         {}, ["198.18.0.12"]),
        # drained (weight 0): its flows finish, nothing flushed
        ([{"address": "198.18.0.11"}, {"address": "198.18.0.12"}],
         [{"address": "198.18.0.11"}, {"address": "198.18.0.12", "weight": 0}], {}, []),
        # nothing changed
        ([{"address": "198.18.0.11"}, {"address": "198.18.0.12"}], None, {}, []),
    ],
)  # fmt: skip
def test_which_udp_nat_endpoints_are_flushed(
    before: list[dict[str, object]],
    after: list[dict[str, object]] | None,
    health: dict[str, bool],
    flushed: list[str],
) -> None:
    old_svc, new_svc = _udp(before), _udp(after or before)
    old = {"dns": ServiceState(old_svc, ())}
    keyed = {health_key(new_svc, a): up for a, up in health.items()}
    gone = gone_udp_nat_endpoints(old, {}, [ServiceState(new_svc, ())], keyed)
    assert [address for _, address in gone] == flushed
    # TCP NAT services are never flushed.
    tcp = _udp(before, "tcp")
    assert gone_udp_nat_endpoints({"dns": ServiceState(tcp, ())}, {}, [], {}) == []
    assert manager.health_key(tcp, "198.18.0.11") == "dns/198.18.0.11"


def test_health_targets_are_keyed_as_the_manager_reads_them() -> None:
    from bascule.packet.runtime import health_targets

    checked = _udp([{"address": "198.18.0.11"}, {"address": "198.18.0.12"}])
    checked = checked.model_copy(
        update={"health": ServiceConfig.model_validate(
            {**checked.model_dump(), "health": {"tcp": {"port": 5353}, "interval": "200ms",
                                                "fall": 1}}
        ).health}
    )  # fmt: skip
    unchecked = _udp([{"address": "198.18.0.13"}]).model_copy(update={"name": "quiet"})
    targets = health_targets([checked, unchecked])
    assert [(t.key, t.host, t.port, t.kind) for t in targets] == [
        ("dns/198.18.0.11", "198.18.0.11", 5353, "tcp"),
        ("dns/198.18.0.12", "198.18.0.12", 5353, "tcp"),
    ]
    assert (targets[0].interval, targets[0].fall, targets[0].rise) == (0.2, 1, 2)
