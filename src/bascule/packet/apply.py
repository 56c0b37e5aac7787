"""Applying nft programs and checking the machine: the impure half of the packet modes.

Rules of this module:
- Programs come from `bascule.packet.nft` and go to the kernel whole, through one `nft -f -`
  (one netlink transaction): the kernel holds the old program or the new one, never half.
- Every check that can refuse a service runs before anything is applied, and a refusal is a
  `PacketError` naming the config key and the fix (not root, no nft, no such interface, VIP not
  on the interface, endpoint MAC unresolvable).
- Everything takes `netns`: None is the namespace this process runs in; a name runs the command
  inside that namespace (`ip netns exec`), which is how the testbed and tests use it.
- Tables are recognised as bascule's by name (`bascule`, `bascule_*`); nothing else is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from bascule.config.services import ServiceConfig
from bascule.packet import nft
from bascule.packet.nft import ServiceState, TableId

T = TypeVar("T")
_HAS_LLADDR = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}
MAC_RESOLVE_TIMEOUT = 1.0


class PacketError(RuntimeError):
    """The machine cannot run a service as configured; the message says what to change."""


def _argv(argv: Sequence[str], netns: str | None) -> list[str]:
    return list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]


def _run(argv: Sequence[str], netns: str | None, *, input: str | None = None) -> str:
    try:
        done = subprocess.run(
            _argv(argv, netns),
            input=input,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError:
        raise PacketError(f"{argv[0]}: command not found; install iproute2 and nftables") from None
    except subprocess.TimeoutExpired:
        raise PacketError(f"{' '.join(argv)}: no answer in 30s") from None
    if done.returncode != 0:
        raise PacketError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


# ------------------------------------------------------------------ preflight


def check_privileges() -> None:
    """Root (or CAP_NET_ADMIN, which in practice means root) and the nft and ip commands."""
    if os.geteuid() != 0:
        raise PacketError(
            "services: nat and dsr modes program the kernel and need root; run bascule as root "
            "or remove the services section"
        )
    for tool, package in (("nft", "nftables"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            raise PacketError(f"services: the {tool!r} command is missing; install {package}")


def interface_info(interface: str, netns: str | None = None) -> dict[str, Any]:
    """`ip -j addr show dev IF` for one interface, or PacketError when it does not exist."""
    try:
        out = _run(["ip", "-j", "addr", "show", "dev", interface], netns)
    except PacketError:
        out = "[]"
    entries = json.loads(out or "[]")
    if not entries:
        raise PacketError(f"no such interface {interface!r}")
    entry: dict[str, Any] = entries[0]
    return entry


def preflight(services: Sequence[ServiceConfig], netns: str | None = None) -> dict[str, str]:
    """Check each service against the machine; return each interface's MAC.

    Refuses (PacketError) a missing interface or a VIP that is not on its interface.
    """
    check_privileges()
    for index, service in enumerate(services):
        if (
            service.mode == "nat"
            and service.protocol == "udp"
            and shutil.which("conntrack") is None
        ):
            raise PacketError(
                f"services[{index}] ({service.name}).protocol: nat over udp flushes a removed "
                "endpoint's conntrack entries with the conntrack command; install conntrack"
            )
    macs: dict[str, str] = {}
    for index, service in enumerate(services):
        key = f"services[{index}] ({service.name})"
        try:
            info = interface_info(service.interface, netns)
        except PacketError:
            raise PacketError(
                f"{key}.interface: no such interface {service.interface!r}; "
                "name one listed by `ip link`"
            ) from None
        addresses = {a.get("local") for a in info.get("addr_info", [])}
        if service.vip not in addresses:
            length = 32 if service.family == 4 else 128
            raise PacketError(
                f"{key}.vip: {service.vip} is not on interface {service.interface}; add it "
                f"(ip addr add {service.vip}/{length} dev {service.interface}) so that the "
                "LAN sends the VIP's packets to this host"
            )
        macs[service.interface] = str(info.get("address", ""))
    return macs


# ------------------------------------------------------------------ neighbours


def _neigh_mac(address: str, interface: str, netns: str | None) -> str | None:
    out = _run(["ip", "-j", "neigh", "show", "to", address, "dev", interface], netns)
    for entry in json.loads(out or "[]"):
        states = set(entry.get("state", []))
        if entry.get("lladdr") and states & _HAS_LLADDR:
            return str(entry["lladdr"]).lower()
    return None


def _in_namespace(netns: str | None, fn: Callable[[], T]) -> T:
    if netns is None:
        return fn()
    from bascule.packet.testbed import in_netns

    return in_netns(netns, fn)


def _poke(address: str, interface: str) -> None:
    """Send one UDP datagram (discard port) so the kernel resolves the address's MAC."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        try:
            sock.sendto(b"", (address, 9))
        except OSError:
            pass  # unreachable now; the neighbour table tells


def resolve_mac(
    address: str, interface: str, netns: str | None = None, timeout: float = MAC_RESOLVE_TIMEOUT
) -> str | None:
    """The endpoint's MAC from the neighbour table, asking the LAN (one datagram) if needed."""
    mac = _neigh_mac(address, interface, netns)
    if mac is not None:
        return mac
    _in_namespace(netns, lambda: _poke(address, interface))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        mac = _neigh_mac(address, interface, netns)
        if mac is not None:
            return mac
    return None


def endpoint_values(index: int, service: ServiceConfig, netns: str | None = None) -> dict[str, str]:
    """Each endpoint's slot value: its address (nat) or its MAC (dsr, resolved when absent)."""
    if service.mode == "nat":
        return {e.address: e.address for e in service.endpoints}
    values = {}
    for e_index, endpoint in enumerate(service.endpoints):
        mac = endpoint.mac or resolve_mac(endpoint.address, service.interface, netns)
        if mac is None:
            raise PacketError(
                f"services[{index}] ({service.name}).endpoints[{e_index}].mac: cannot resolve "
                f"the MAC of {endpoint.address} on {service.interface} (no answer to ARP/ND); "
                f"check that it is up on the same LAN, or write its mac in the config"
            )
        values[endpoint.address] = mac
    return values


# ------------------------------------------------------------------ nft


def run_nft(program: str, netns: str | None = None, *, check_only: bool = False) -> None:
    """Apply `program` as one transaction (or only check it, `nft -c`)."""
    if not program:
        return
    argv = ["nft", "-c", "-f", "-"] if check_only else ["nft", "-f", "-"]
    try:
        _run(argv, netns, input=program)
    except PacketError as exc:
        raise PacketError(f"nftables refused bascule's program: {exc}") from None


def flush_conntrack(service: ServiceConfig, address: str, netns: str | None = None) -> int:
    """Forget a NAT service's UDP conntrack entries that lead to endpoint `address`.

    UDP has no close: without this, a client that keeps sending (a DNS resolver's fixed source
    port) stays NAT'd to a dead endpoint until the entry times out. TCP is left alone: a dead
    endpoint's connections fail by themselves and new ones pick another endpoint. Returns how
    many entries were deleted.
    """
    argv = [
        "conntrack", "-D", "-p", "udp", "--orig-dst", service.vip,
        "--dport", str(service.port), "--reply-src", address,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            _argv(argv, netns), capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise PacketError("conntrack: command not found; install conntrack") from None
    except subprocess.TimeoutExpired:
        raise PacketError("conntrack -D: no answer in 30s") from None
    # conntrack exits 1 when nothing matched; its summary line says how many were deleted.
    words = done.stderr.split()
    if "flow" in words and words.index("flow") > 0 and words[words.index("flow") - 1].isdigit():
        return int(words[words.index("flow") - 1])
    if done.returncode != 0:
        raise PacketError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return 0


def bascule_tables(netns: str | None = None) -> set[TableId]:
    """bascule's tables in the kernel now (leftovers from a killed run included)."""
    out = _run(["nft", "-j", "list", "tables"], netns)
    found: set[TableId] = set()
    for item in json.loads(out or "{}").get("nftables", []):
        table = item.get("table")
        if not table:
            continue
        name, family = table.get("name", ""), table.get("family", "")
        if name == nft.TRANSPARENT_TABLE and family == "inet":
            continue  # transparent proxying's marks: owned by packet/transparent.py
        if (name == nft.NAT_TABLE or name.startswith("bascule_")) and family in ("inet", "netdev"):
            found.add((family, name))
    return found


def replace(states: Sequence[ServiceState], netns: str | None = None) -> None:
    """Make the kernel hold exactly these services: one transaction, leftovers removed."""
    wanted = nft.tables_for(s.service for s in states)
    stale = bascule_tables(netns) - wanted
    run_nft(nft.replace_program(states, remove=stale), netns)


def remove(tables: Iterable[TableId] | None = None, netns: str | None = None) -> None:
    """Delete bascule's tables (all of them when `tables` is None)."""
    chosen = bascule_tables(netns) if tables is None else set(tables)
    run_nft(nft.delete_program(chosen), netns)


def list_flows(service: ServiceConfig, netns: str | None = None) -> list[tuple[str, int, str]]:
    """The pinned DSR flows of a service: (client address, client port, endpoint MAC)."""
    if not nft.has_flow_map(service):
        return []
    family, table = nft.table_of(service)
    out = _run(["nft", "-j", "list", "map", family, table, nft.flows_map(service)], netns)
    flows = []
    for item in json.loads(out or "{}").get("nftables", []):
        for element in (item.get("map") or {}).get("elem", []):
            key, mac = element
            if isinstance(key, dict) and "elem" in key:  # carries timeout/expires
                key = key["elem"]["val"]
            address, port = key["concat"]
            flows.append((str(address), int(port), str(mac)))
    return flows


def list_program(netns: str | None = None) -> str:
    """The text of bascule's tables, slot maps summarised (65537 lines help nobody)."""
    parts = []
    for family, name in sorted(bascule_tables(netns)):
        text = _run(["nft", "-t", "list", "table", family, name], netns)
        parts.append(text)
    return "".join(parts)


def slot_counts(service: ServiceConfig, netns: str | None = None) -> Mapping[str, int]:
    """How many slots each endpoint value holds in the kernel's map now."""
    family, table = nft.table_of(service)
    out = _run(["nft", "-j", "list", "map", family, table, nft.slots_map(service)], netns)
    counts: dict[str, int] = {}
    for item in json.loads(out or "{}").get("nftables", []):
        for element in (item.get("map") or {}).get("elem", []):
            value = str(element[1])
            counts[value] = counts.get(value, 0) + 1
    return counts
