"""Transparent proxying (seed 000's "pass-through"): bascule terminates the client's TCP
connection and connects to the endpoint *from the client's address*, so the endpoint sees the
client, as with NAT, while bascule still reads HTTP.

Rules of this module:
- The socket side lives in `l7/exchange.py` (`Exchange._connect`): IP_TRANSPARENT lets a socket
  bind an address that is not the host's own, here (client address, port 0).
- The kernel side is set up here, once, by the supervisor, and removed on exit. The endpoint's
  replies are addressed to the client, so without help this host would route them on (or drop
  them) instead of handing them to bascule's socket:
    - nftables, `table inet bascule_transparent`: in prerouting (mangle priority), a packet that
      belongs to a transparent socket (`socket transparent 1`) gets mark `MARK`;
    - policy routing: `ip rule fwmark MARK lookup ROUTE_TABLE`, and that table holds
      `local 0.0.0.0/0 dev lo`, so marked packets are delivered locally, to the socket.
  The endpoints' own routing must send replies for clients through this host (their gateway, or
  a policy rule as the testbed sets up); that is the network's job, as for NAT.
- The commands are a pure plan (`plan`, `undo_plan`), so `bascule` can show them and tests
  check them; applying is idempotent (`ip route replace`; a rule is deleted before it is added).
- IPv4 only for now (the testbed has no IPv6); an IPv6 client on a transparent cluster fails to
  connect with a clear error from `_connect`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from bascule.packet import apply
from bascule.packet.nft import TRANSPARENT_TABLE

MARK = 0x6273  # "bs": the fwmark of packets for transparent sockets
ROUTE_TABLE = 25203  # 0x6273 in decimal; the routing table that delivers them locally
RULE_PRIORITY = 25203

Command = tuple[str, ...]


def nft_program() -> str:
    """The mark rule, as one transaction that replaces any leftover table."""
    return (
        f"add table inet {TRANSPARENT_TABLE}\n"
        f"delete table inet {TRANSPARENT_TABLE}\n"
        f"table inet {TRANSPARENT_TABLE} {{\n"
        "\tchain prerouting {\n"
        "\t\ttype filter hook prerouting priority mangle; policy accept;\n"
        f"\t\tmeta l4proto tcp socket transparent 1 meta mark set {MARK:#x} accept\n"
        "\t}\n"
        "}\n"
    )


def plan() -> list[Command]:
    """The routing commands (after `nft_program`): marked packets are delivered locally."""
    return [
        ("ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table",
         str(ROUTE_TABLE)),
        ("ip", "-4", "rule", "add", "fwmark", f"{MARK:#x}", "lookup", str(ROUTE_TABLE),
         "priority", str(RULE_PRIORITY)),
    ]  # fmt: skip


def undo_plan() -> list[Command]:
    return [
        ("ip", "-4", "rule", "del", "priority", str(RULE_PRIORITY)),
        ("ip", "-4", "route", "flush", "table", str(ROUTE_TABLE)),
    ]


def _run(command: Sequence[str], netns: str | None, *, ok_to_fail: bool = False) -> None:
    argv = list(command) if netns is None else ["ip", "netns", "exec", netns, *command]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise apply.PacketError(f"{command[0]}: command not found; install iproute2") from None
    except subprocess.TimeoutExpired:
        raise apply.PacketError(f"`{' '.join(command)}` did not finish in 10 s") from None
    if done.returncode != 0 and not ok_to_fail:
        raise apply.PacketError(
            f"source_address: client needs policy routing, and `{' '.join(command)}` failed: "
            f"{done.stderr.strip()}"
        )


def setup(netns: str | None = None) -> None:
    """Install the mark rule and the policy routing (replacing leftovers of a killed run)."""
    apply.check_privileges()
    try:
        apply.run_nft(nft_program(), netns)
        _run(undo_plan()[0], netns, ok_to_fail=True)  # a leftover rule: never two of them
        for command in plan():
            _run(command, netns)
    except BaseException:
        try:
            teardown(netns)  # never leave half of it behind
        except apply.PacketError:
            pass  # the first error is the one to report
        raise


def teardown(netns: str | None = None) -> None:
    """Remove what `setup` made; missing pieces are fine."""
    for command in undo_plan():
        _run(command, netns, ok_to_fail=True)
    apply.run_nft(
        f"add table inet {TRANSPARENT_TABLE}\ndelete table inet {TRANSPARENT_TABLE}\n", netns
    )


def is_set_up(netns: str | None = None) -> bool:
    """Whether the mark table is in the kernel (for tests and `bascule services`)."""
    argv = ["nft", "list", "table", "inet", TRANSPARENT_TABLE]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        raise apply.PacketError("`nft list table` did not finish in 10 s") from None
    return done.returncode == 0
