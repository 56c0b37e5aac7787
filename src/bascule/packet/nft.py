"""The nftables program for a set of services: pure text generation, no subprocess.

Rules of this module:
- Output is nft's own language (`nft -f -`), not JSON: it is what `nft list` prints back, what a
  user reads in `bascule services` and in an incident, and `nft -c -f -` checks it without
  applying. JSON would add a second spelling of the same program and nothing we need.
- Tables are bascule's alone: `table inet bascule` holds every `nat` service, `table netdev
  bascule_<ifname>` the `dsr` services of one interface (a netdev chain hooks one device).
  `replace_program` empties and refills them in one transaction (`add table`, `delete table`,
  the table body), so a leftover table from a killed run is reconciled by the same text, and
  the kernel never holds half a program.
- Endpoint choice is a slot map of `TABLE_SIZE` (65537, prime) entries per service. The flow's
  hash (`jhash ... mod 65537 seed HASH_SEED`) or a counter (`numgen`) selects a slot, the map
  gives the endpoint (an address for NAT, a MAC for DSR). Python fills the map: Maglev for
  `maglev` and `source_hash`, smooth weighted round robin for `round_robin` and `weighted`.
  The seed is fixed, never random (nft's default), so every LB running the same services
  sends a flow to the same endpoint: that is what lets ECMP spread flows over several LBs.
- Slot tables are a pure function of the services and the healthy endpoints, never of history,
  for the same reason. A health change recomputes the table; `slot_diff` turns old and new into
  the changed slots only (`delete element` + `add element`, since nft refuses to overwrite a
  key), one transaction.
- DSR: the netdev ingress chain matches VIP:port, sets `ether saddr` to the LB's MAC (on a
  bridge, the client's MAC would otherwise be learned on the LB's port and replies go astray)
  and `ether daddr` to the endpoint's, and `fwd`s out of the interface; IP headers are untouched.
  A flow map (flow → MAC, refreshed by every packet, expiring after `FLOW_TIMEOUT`) is
  consulted first, so established flows keep their endpoint when the slots change (drain).
  Fragments carry ports only in the first one: every fragment is hashed on addresses only, so
  all fragments of a datagram reach one endpoint.
- IPv6 DSR has no flow map: nft 1.0.6 aborts (netlink_linearize.c assertion `dreg < reg_low`)
  on a dynamic map whose key is wider than 16 bytes with data, and an IPv6 flow key is 20 at
  least. IPv6 DSR flows therefore follow the slot table alone.
- NAT needs neither flow map nor fragment rule: conntrack reassembles before the nat hook and
  keeps each connection's endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bascule.balance.maglev import maglev_table
from bascule.balance.round_robin import smooth_weighted_sequence
from bascule.config.services import ServiceConfig, nft_identifier

TABLE_SIZE = 65537  # prime, as Maglev needs; the slot maps have this many entries
HASH_SEED = 0x62736375  # "bscu": fixed so that every LB hashes a flow the same way
FLOW_TIMEOUT = 60  # seconds an idle DSR flow stays pinned to its endpoint
FLOW_MAP_SIZE = 262144  # most pinned DSR flows per service; beyond it flows are hashed only
NAT_TABLE = "bascule"
TRANSPARENT_TABLE = "bascule_transparent"  # inet; packet/transparent.py's, not a service's
DSR_PRIORITY = -300  # netdev ingress: before anything else a user may hook there
ELEMENTS_PER_LINE = 4096  # element batches per `add element` statement, for readable errors

TableId = tuple[Literal["inet", "netdev"], str]


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What the kernel must hold for one service: its config, slot values and the LB's MAC.

    `slots` has TABLE_SIZE entries (an endpoint address for nat, an endpoint MAC for dsr), or
    none when no endpoint is up, which leaves the VIP to the LB's own stack (a TCP reset).
    """

    service: ServiceConfig
    slots: tuple[str, ...]
    lb_mac: str | None = None  # dsr only: the interface's own MAC


# ------------------------------------------------------------------ slot tables


def compute_slots(
    service: ServiceConfig,
    up: Mapping[str, bool],
    values: Mapping[str, str],
    size: int = TABLE_SIZE,
) -> tuple[str, ...]:
    """The slot table: for each slot, the value (address or MAC) of its endpoint.

    `up` says which endpoint addresses are healthy (missing means up); `values` gives the value
    of each endpoint (for nat its address, for dsr its MAC). Deterministic: no history.
    """
    live = [e for e in service.endpoints if e.weight > 0 and up.get(e.address, True)]
    if not live:
        return ()
    names = [e.address for e in live]
    weights = [e.weight for e in live]
    if service.balancer in ("maglev", "source_hash"):
        order = maglev_table(names, weights, size)
    else:
        # `numgen inc` walks the slots in order, so a round robin over them is a smooth weighted
        # round robin; `numgen random` picks them at random, so each gets its weight's share.
        order = smooth_weighted_sequence(weights, size)
    resolved = [values[name] for name in names]
    return tuple(resolved[i] for i in order)


# ------------------------------------------------------------------ names


def slots_map(service: ServiceConfig) -> str:
    return f"slots_{nft_identifier(service.name)}"


def flows_map(service: ServiceConfig) -> str:
    return f"flows_{nft_identifier(service.name)}"


def dsr_table(interface: str) -> str:
    return f"bascule_{nft_identifier(interface)}"


def table_of(service: ServiceConfig) -> TableId:
    if service.mode == "nat":
        return ("inet", NAT_TABLE)
    return ("netdev", dsr_table(service.interface))


def tables_for(services: Iterable[ServiceConfig]) -> set[TableId]:
    return {table_of(s) for s in services}


def has_flow_map(service: ServiceConfig) -> bool:
    return service.mode == "dsr" and service.family == 4


# ------------------------------------------------------------------ expressions


def _ip(service: ServiceConfig) -> str:
    return "ip" if service.family == 4 else "ip6"


def _hash_key(service: ServiceConfig, *, fragment: bool = False) -> str:
    """The fields a flow is hashed on: the 4-tuple, or addresses only (fragments, source_hash)."""
    ip, proto = _ip(service), service.protocol
    if service.balancer == "source_hash":
        return f"{ip} saddr"
    if fragment:
        return f"{ip} saddr . {ip} daddr"
    return f"{ip} saddr . {proto} sport . {ip} daddr . {proto} dport"


def _selector(service: ServiceConfig, *, fragment: bool = False) -> str:
    """The expression that yields a slot number."""
    if service.balancer == "round_robin":
        return f"numgen inc mod {TABLE_SIZE}"
    if service.balancer == "weighted":
        return f"numgen random mod {TABLE_SIZE}"
    key = _hash_key(service, fragment=fragment)
    return f"jhash {key} mod {TABLE_SIZE} seed {HASH_SEED:#x}"


def _flow_key(service: ServiceConfig) -> str:
    # The map belongs to one service, so VIP and port are implied: the client's address and
    # port identify the flow, and the key stays within what nft can store with data.
    return f"ip saddr . {service.protocol} sport"


# ------------------------------------------------------------------ whole tables


def _nat_rules(service: ServiceConfig) -> list[str]:
    ip, proto = _ip(service), service.protocol
    match = f"{ip} daddr {service.vip} {proto} dport {service.port}"
    return [f"{match} dnat {ip} to {_selector(service)} map @{slots_map(service)}"]


def _dsr_rules(state: ServiceState) -> list[str]:
    service = state.service
    ip, proto, dev = _ip(service), service.protocol, service.interface
    if state.lb_mac is None:
        raise ValueError(f"service {service.name}: dsr needs the LB's MAC on {dev}")
    to = f'ether saddr set {state.lb_mac} fwd to "{dev}"'
    slots = f"map @{slots_map(service)}"
    if service.family == 4:
        fragment = f"{ip} daddr {service.vip} {ip} protocol {proto} {ip} frag-off & 0x3fff != 0"
    else:
        fragment = f"{ip} daddr {service.vip} meta l4proto {proto} exthdr frag exists"
    match = f"{ip} daddr {service.vip} {proto} dport {service.port}"
    rules = [f"{fragment} ether daddr set {_selector(service, fragment=True)} {slots} {to}"]
    if has_flow_map(service):
        flows, key = flows_map(service), _flow_key(service)
        pin = f"update @{flows} {{ {key} : ether daddr }}"
        rules += [
            # An established flow: its endpoint from the flow map, whose timer this refreshes.
            f"{match} ether daddr set {key} map @{flows} {pin} {to}",
            # A new flow: the slot map chooses; the flow map remembers.
            f"{match} ether daddr set {_selector(service)} {slots} {pin} {to}",
        ]
    # Reached only when the flow map is full (the update above fails): hash without pinning.
    rules.append(f"{match} ether daddr set {_selector(service)} {slots} {to}")
    return rules


def _maps(state: ServiceState) -> list[str]:
    service = state.service
    value = "ether daddr" if service.mode == "dsr" else f"{_ip(service)} daddr"
    lines = [f"map {slots_map(service)} {{ typeof numgen inc mod 2 : {value}; }}"]
    if has_flow_map(service):
        lines.append(
            f"map {flows_map(service)} {{ typeof {_flow_key(service)} : ether daddr; "
            f"size {FLOW_MAP_SIZE}; flags dynamic,timeout; timeout {FLOW_TIMEOUT}s; }}"
        )
    return lines


def table_body(table: TableId, states: Sequence[ServiceState]) -> str:
    """`table FAMILY NAME { maps; chain }` for the services that live in this table."""
    family, name = table
    lines = [f"table {family} {name} {{"]
    for state in states:
        lines += [f"\t{m}" for m in _maps(state)]
    if family == "inet":
        lines.append("\tchain prerouting {")
        lines.append("\t\ttype nat hook prerouting priority dstnat; policy accept;")
        for state in states:
            lines += [f"\t\t{r}" for r in _nat_rules(state.service)]
    else:
        devices = {s.service.interface for s in states}
        if len(devices) != 1:
            raise ValueError(f"table {name} would hook {sorted(devices)}; one device per table")
        lines.append("\tchain ingress {")
        lines.append(
            f'\t\ttype filter hook ingress device "{devices.pop()}" priority {DSR_PRIORITY}; '
            "policy accept;"
        )
        for state in states:
            lines += [f"\t\t{r}" for r in _dsr_rules(state)]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def _add_elements(table: TableId, map_name: str, items: Sequence[tuple[int, str]]) -> list[str]:
    family, name = table
    out = []
    for start in range(0, len(items), ELEMENTS_PER_LINE):
        chunk = ", ".join(f"{k} : {v}" for k, v in items[start : start + ELEMENTS_PER_LINE])
        out.append(f"add element {family} {name} {map_name} {{ {chunk} }}")
    return out


def _delete_elements(table: TableId, map_name: str, keys: Sequence[int]) -> list[str]:
    family, name = table
    out = []
    for start in range(0, len(keys), ELEMENTS_PER_LINE):
        chunk = ", ".join(str(k) for k in keys[start : start + ELEMENTS_PER_LINE])
        out.append(f"delete element {family} {name} {map_name} {{ {chunk} }}")
    return out


def group_by_table(states: Iterable[ServiceState]) -> dict[TableId, list[ServiceState]]:
    grouped: dict[TableId, list[ServiceState]] = {}
    for state in states:
        grouped.setdefault(table_of(state.service), []).append(state)
    return grouped


def replace_program(states: Sequence[ServiceState], *, remove: Iterable[TableId] = ()) -> str:
    """One transaction that makes the kernel hold exactly these services' tables.

    Each table is created if missing, deleted, and written whole, so a leftover table (from a
    killed run) is replaced, never merged. `remove` names tables to delete that no service
    needs any more (a reload dropped them).
    """
    grouped = group_by_table(states)
    lines: list[str] = []
    for family, name in sorted(set(remove) - set(grouped)):
        lines += [f"add table {family} {name}", f"delete table {family} {name}"]
    for table in sorted(grouped):
        family, name = table
        lines += [f"add table {family} {name}", f"delete table {family} {name}"]
        lines.append(table_body(table, grouped[table]).rstrip("\n"))
        for state in grouped[table]:
            lines += _add_elements(table, slots_map(state.service), list(enumerate(state.slots)))
    return "\n".join(lines) + "\n" if lines else ""


def delete_program(tables: Iterable[TableId]) -> str:
    """One transaction removing bascule's tables (missing ones are fine)."""
    lines: list[str] = []
    for family, name in sorted(set(tables)):
        lines += [f"add table {family} {name}", f"delete table {family} {name}"]
    return "\n".join(lines) + "\n" if lines else ""


# ------------------------------------------------------------------ incremental updates


def slot_changes(old: Sequence[str], new: Sequence[str]) -> tuple[list[int], list[tuple[int, str]]]:
    """(slots to delete, slots to add) turning map `old` into map `new`, changed slots only."""
    deletes: list[int] = []
    adds: list[tuple[int, str]] = []
    for slot in range(max(len(old), len(new))):
        before = old[slot] if slot < len(old) else None
        after = new[slot] if slot < len(new) else None
        if before == after:
            continue
        if before is not None:
            deletes.append(slot)
        if after is not None:
            adds.append((slot, after))
    return deletes, adds


def slot_diff(old: ServiceState, new: ServiceState) -> str:
    """The element updates that turn one service's slot map into the other's ("" if equal).

    Both states must describe the same service structure (same table, map and rules); only
    the slots differ. nft refuses to `add` a key that exists, so a changed slot is deleted
    and added again inside the same transaction.
    """
    if table_of(old.service) != table_of(new.service) or slots_map(old.service) != slots_map(
        new.service
    ):
        raise ValueError("slot_diff compares two states of one service")
    deletes, adds = slot_changes(old.slots, new.slots)
    table, name = table_of(new.service), slots_map(new.service)
    lines = _delete_elements(table, name, deletes) + _add_elements(table, name, adds)
    return "\n".join(lines) + "\n" if lines else ""


def flow_deletes(service: ServiceConfig, keys: Sequence[tuple[str, int]]) -> str:
    """Unpin DSR flows (client address, client port), e.g. those of an endpoint that died."""
    if not has_flow_map(service) or not keys:
        return ""
    family, name = table_of(service)
    out = []
    for start in range(0, len(keys), ELEMENTS_PER_LINE):
        chunk = ", ".join(f"{a} . {p}" for a, p in keys[start : start + ELEMENTS_PER_LINE])
        out.append(f"delete element {family} {name} {flows_map(service)} {{ {chunk} }}")
    return "\n".join(out) + "\n"


def structure_key(state: ServiceState) -> tuple[object, ...]:
    """Everything about a service except its slots: equal keys mean a slot diff suffices."""
    service = state.service
    return (
        service.name,
        service.vip,
        service.port,
        service.protocol,
        service.mode,
        service.interface,
        service.balancer,
        state.lb_mac,
    )
