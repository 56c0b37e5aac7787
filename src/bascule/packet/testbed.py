"""The testbed: seed 000's topology (client, load balancer with a VIP, two real servers) built
from network namespaces, so that every packet mode runs for real on one machine.

```
 client 198.19.0.1 --- (net: router 198.19.0.254 | 198.18.0.1 on bridge br0) --+-- lb  198.18.0.10
                                                                             +-- rs1 198.18.0.11
        VIP 198.18.0.100 lives on lb's eth0                                  +-- rs2 198.18.0.12
```

Rules of this module:
- Only 198.18.0.0/15 addresses, and only inside namespaces created here. Nothing is created in
  the host's namespace: each veth pair is born with its ends already in two testbed namespaces,
  so link names need not be unique across runs; namespace names carry a per-run suffix.
- What will be made is recorded (`/run/bascule/testbed/<suffix>.json`) before it is made, so
  `testbed down` removes everything even after a crash. Deleting a namespace deletes its links
  and nft tables; processes still running inside it are killed first (only testbed namespaces).
- Routing follows the seeds: the router (namespace `net`) is every server's default gateway, so a
  DSR reply (source = the VIP, which sits on the server's lo) goes straight to the client. A
  server's replies from its own address go back through the LB (policy rule), as NAT needs
  (seed 000 §4: "the reply packet must be routed through the Load Balancer").
- IPv6 is disabled in the namespaces so that captures hold only the traffic a test makes.
- Sockets are opened inside a namespace by a short-lived thread that joins it (`setns` applies to
  one thread), so servers and clients run in this process without `ip netns exec`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

STATE_DIR = Path("/run/bascule/testbed")
PREFIX = "bsc-"  # every testbed namespace name starts with this
CLONE_NEWNET = 0x40000000

CLIENT_NET = "198.19.0.0/24"
CLIENT_IP = "198.19.0.1"
ROUTER_CLIENT_IP = "198.19.0.254"
ROUTER_IP = "198.18.0.1"
LB_IP = "198.18.0.10"
VIP = "198.18.0.100"
RS_IPS = ("198.18.0.11", "198.18.0.12")
PREFIXLEN = 24

# Fixed, readable MACs (02: locally administered; c6:12 / c6:13 = 198.18 / 198.19): each testbed
# is its own L2 domain, so two testbeds never see each other's MACs, and trace tables read well.
MACS = {
    "client": "02:00:c6:13:00:01",
    "router-client": "02:00:c6:13:00:fe",
    "router": "02:00:c6:12:00:01",
    "lb": "02:00:c6:12:00:0a",
    "rs1": "02:00:c6:12:00:0b",
    "rs2": "02:00:c6:12:00:0c",
}
RS_TABLE = 100  # the policy-routing table that sends a server's own replies through the LB

T = TypeVar("T")


class TestbedError(RuntimeError):
    """A testbed command failed; the message names the command and what it printed."""


@dataclass(frozen=True, slots=True)
class Testbed:
    """Names and addresses of one testbed. Build it with `up`, remove it with `down`."""

    __test__ = False  # pytest: a class named Test* that is not a test

    suffix: str
    extra: tuple[str, ...] = field(default=())  # more namespaces made by a test (e.g. lb2)

    def ns(self, host: str) -> str:
        """`client`, `net`, `lb`, `rs1`, `rs2` → the namespace's name for this run."""
        return f"{PREFIX}{self.suffix}-{host}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return ("net", "client", "lb", "rs1", "rs2")

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(self.ns(h) for h in self.hosts) + self.extra

    @property
    def rs_hosts(self) -> tuple[str, ...]:
        return ("rs1", "rs2")

    def address(self, host: str) -> str:
        return {
            "client": CLIENT_IP,
            "net": ROUTER_IP,
            "lb": LB_IP,
            "rs1": RS_IPS[0],
            "rs2": RS_IPS[1],
        }[host]


# ------------------------------------------------------------------ running things in namespaces


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 20.0) -> str:
    """Run a command; return its stdout; raise TestbedError with its stderr when it fails."""
    try:
        done = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise TestbedError(f"{argv[0]}: not found; install it (iproute2, nftables)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{' '.join(argv)}: no answer in {timeout}s") from exc
    if done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def ip_batch(ns: str, commands: Sequence[str]) -> None:
    """Run many `ip` commands inside one namespace with a single process (`ip -batch`)."""
    run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n")


def sysctl(ns: str, settings: dict[str, str]) -> None:
    run(["ip", "netns", "exec", ns, "sysctl", "-qw", *(f"{k}={v}" for k, v in settings.items())])


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Call `fn` in a thread that has joined namespace `ns`; return what it returns.

    Sockets keep the namespace they were created in, so a socket made here can be used by any
    thread afterwards. The joining thread ends with `fn`, so no other code runs in `ns`.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        except FileNotFoundError:
            failure.append(TestbedError(f"no network namespace {ns!r}"))
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                failure.append(OSError(err, f"setns({ns}): {os.strerror(err)}"))
                return
            result.append(fn())
        except BaseException as exc:  # carried to the caller's thread
            failure.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def netns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `ns`."""
    return in_netns(ns, lambda: socket.socket(family, kind, proto))


# ------------------------------------------------------------------ state


def _state_path(suffix: str) -> Path:
    return STATE_DIR / f"{suffix}.json"


def _record(bed: Testbed) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = _state_path(bed.suffix)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**asdict(bed), "namespaces": list(bed.namespaces)}))
    tmp.replace(path)


def recorded() -> list[Testbed]:
    """Testbeds whose state file exists (up, or half made by a crashed run)."""
    beds = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            beds.append(Testbed(suffix=data["suffix"], extra=tuple(data.get("extra", ()))))
        except (OSError, ValueError, KeyError):
            continue
    return beds


def add_namespace(bed: Testbed, name: str) -> Testbed:
    """Record, then create, one more namespace belonging to `bed`; return the new Testbed."""
    full = f"{PREFIX}{bed.suffix}-{name}"
    grown = Testbed(suffix=bed.suffix, extra=(*bed.extra, full))
    _record(grown)
    run(["ip", "netns", "add", full])
    sysctl(full, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})
    ip_batch(full, ["link set lo up"])
    return grown


# ------------------------------------------------------------------ up / down


def new_suffix() -> str:
    return secrets.token_hex(3)


def up(suffix: str | None = None) -> Testbed:
    """Build a testbed; on any failure remove what was made and raise TestbedError."""
    bed = Testbed(suffix=suffix or new_suffix())
    if _state_path(bed.suffix).exists():
        raise TestbedError(f"testbed {bed.suffix} already exists; run `bascule testbed down`")
    _record(bed)  # before anything exists, so a crash mid-way is still cleaned up
    try:
        _build(bed)
    except BaseException:
        down(bed)
        raise
    return bed


def _build(bed: Testbed) -> None:
    for ns in bed.namespaces:
        run(["ip", "netns", "add", ns])
    quiet = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
    net, client, lb = bed.ns("net"), bed.ns("client"), bed.ns("lb")

    # The router/switch namespace: a bridge for the server LAN, a routed port to the client.
    ip_batch(
        net,
        [
            "link set lo up",
            f"link add br0 address {MACS['router']} type bridge forward_delay 0 stp_state 0",
            f"link add cl address {MACS['router-client']} type veth "
            f"peer name eth0 address {MACS['client']} netns {client}",
            *(
                f"link add {host} type veth "
                f"peer name eth0 address {MACS[host]} netns {bed.ns(host)}"
                for host in ("lb", "rs1", "rs2")
            ),
            *(f"link set {port} master br0" for port in ("lb", "rs1", "rs2")),
            *(f"link set {port} up" for port in ("br0", "cl", "lb", "rs1", "rs2")),
            f"addr add {ROUTER_IP}/{PREFIXLEN} dev br0",
            f"addr add {ROUTER_CLIENT_IP}/{PREFIXLEN} dev cl",
        ],
    )
    sysctl(net, {**quiet, "net.ipv4.ip_forward": "1"})

    ip_batch(
        client,
        [
            "link set lo up",
            "link set eth0 up",
            f"addr add {CLIENT_IP}/{PREFIXLEN} dev eth0",
            f"route add default via {ROUTER_CLIENT_IP}",
        ],
    )
    sysctl(client, quiet)

    ip_batch(
        lb,
        [
            "link set lo up",
            "link set eth0 up",
            f"addr add {LB_IP}/{PREFIXLEN} dev eth0",
            f"addr add {VIP}/32 dev eth0",
            f"route add default via {ROUTER_IP}",
        ],
    )
    # NAT forwards replies back out the port they came in on; a redirect would tell the server
    # to bypass the LB, which breaks un-NAT.
    sysctl(
        lb,
        {
            **quiet,
            "net.ipv4.ip_forward": "1",
            "net.ipv4.conf.all.send_redirects": "0",
            "net.ipv4.conf.eth0.send_redirects": "0",
        },
    )

    for host in bed.rs_hosts:
        address = bed.address(host)
        ip_batch(
            bed.ns(host),
            [
                "link set lo up",
                "link set eth0 up",
                f"addr add {address}/{PREFIXLEN} dev eth0",
                f"route add default via {ROUTER_IP}",
                f"route add {CLIENT_NET} via {LB_IP} table {RS_TABLE}",
                f"rule add from {address} lookup {RS_TABLE} priority 100",
            ],
        )
        sysctl(
            bed.ns(host),
            {
                **quiet,
                "net.ipv4.conf.all.accept_redirects": "0",
                "net.ipv4.conf.eth0.accept_redirects": "0",
            },
        )


def _existing_namespaces() -> set[str]:
    # An error propagates: answering "none" would make `down` forget namespaces that exist.
    out = run(["ip", "-j", "netns", "list"])
    return {entry["name"] for entry in json.loads(out or "[]")}


def down(bed: Testbed) -> None:
    """Remove every namespace of `bed` (killing what runs in them) and its state file."""
    existing = _existing_namespaces()
    errors = []
    for ns in reversed(bed.namespaces):
        if ns not in existing:
            continue
        try:
            _kill_inside(ns)
            run(["ip", "netns", "del", ns])
        except TestbedError as exc:
            errors.append(str(exc))
    if errors:
        raise TestbedError("; ".join(errors))
    with contextlib.suppress(FileNotFoundError):
        _state_path(bed.suffix).unlink()


def down_all() -> list[str]:
    """Remove every recorded testbed; return their suffixes."""
    beds = recorded()
    for bed in beds:
        down(bed)
    return [bed.suffix for bed in beds]


def _kill_inside(ns: str) -> None:
    """Stop processes left in a testbed namespace (a capture or server from a crashed run)."""
    pids = [int(p) for p in run(["ip", "netns", "pids", ns]).split() if p.isdigit()]
    for pid in pids:
        if pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except OSError as exc:
                if exc.errno == errno.EPERM:
                    break
                raise
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def testbed() -> Iterator[Testbed]:
    """A testbed for the duration of a `with` block, removed however the block ends."""
    bed = up()
    try:
        yield bed
    finally:
        down(recorded_or(bed))


def recorded_or(bed: Testbed) -> Testbed:
    """The latest recorded state of `bed` (it grows when namespaces are added)."""
    for other in recorded():
        if other.suffix == bed.suffix:
            return other
    return bed
