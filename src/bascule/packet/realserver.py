"""What a DSR endpoint (real server) needs, as commands to print or to run.

Rules of this module:
- `plan` is pure: it returns the commands, so `bascule realserver --vip V` prints exactly what
  `--apply` would run, and tests check them without a machine.
- Every command is idempotent (`ip addr replace`, `sysctl -w`), so applying twice is harmless.
- IPv4 needs the ARP sysctls: the server holds the VIP on `lo` but must neither answer ARP for it
  (`arp_ignore=1`: answer only for addresses on the receiving interface) nor use it as the source
  of its own ARP requests (`arp_announce=2`: use the best local address on the interface), or it
  would steal the VIP from the load balancer on the LAN. IPv6 neighbour discovery answers only
  for addresses on the receiving interface already, so a VIP on `lo` needs nothing more.
- UDP servers in DSR must answer from the address they were reached at (the VIP): a socket
  bound to the wildcard address has to use IP_PKTINFO (or bind the VIP), or the reply's source is
  the server's own address and the client drops it.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
from collections.abc import Sequence

Command = tuple[str, ...]


def plan(vip: str) -> list[Command]:
    """The commands that prepare this host to serve `vip` by DSR."""
    address = ipaddress.ip_address(vip)
    if address.version == 4:
        return [
            ("ip", "addr", "replace", f"{address}/32", "dev", "lo"),
            ("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"),
            ("sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"),
        ]
    return [("ip", "-6", "addr", "replace", f"{address}/128", "dev", "lo")]


def undo_plan(vip: str) -> list[Command]:
    """Remove the VIP from `lo` (the sysctls stay: they are harmless without a VIP)."""
    address = ipaddress.ip_address(vip)
    length = 32 if address.version == 4 else 128
    return [("ip", "addr", "del", f"{address}/{length}", "dev", "lo")]


def render(commands: Sequence[Command]) -> str:
    """Shell text for the commands, one a line."""
    return "".join(shlex.join(c) + "\n" for c in commands)


def apply(commands: Sequence[Command], *, netns: str | None = None) -> None:
    """Run the commands (inside `netns` when given); raise RuntimeError naming the failing one."""
    for command in commands:
        argv = list(command) if netns is None else ["ip", "netns", "exec", netns, *command]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except FileNotFoundError:
            raise RuntimeError(f"{command[0]}: not found; install iproute2 and procps") from None
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed: {done.stderr.strip()}")
