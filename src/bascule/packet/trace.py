"""Trace one request through a packet mode in the testbed and tabulate it as seed 002 does.

Rules of this module:
- Capture is AF_PACKET on each host's eth0, opened inside its namespace before the request is
  sent (no capture tool to start and wait for). A tap sees frames both ways, and a frame
  received on the LB is seen before netdev ingress rewrites it, the rewritten copy when it
  leaves: the LB's two lines in DSR mode are the MAC rewrite itself.
- Kernel timestamps (SO_TIMESTAMPNS) order frames across hosts; all namespaces share a clock.
- Only frames that carry payload (the request and its response) become steps: the handshake
  would bury the table. A frame seen unchanged by two hosts (sent by one, received by the next)
  is one step, listing both.
- Servers and the client are threads of this process with sockets made in their namespace,
  bounded in time; a UDP server replies from the address it was reached at (IP_PKTINFO), as DSR
  requires (see realserver.py).
- `trace` programs the LB for the mode, runs one request, removes what it programmed, and
  returns a `TraceResult`; tests assert on it, `render` prints it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from bascule.config.services import ServiceConfig
from bascule.packet import apply, nft, realserver
from bascule.packet.testbed import CLIENT_IP, LB_IP, MACS, VIP, Testbed, in_netns, netns_socket

Mode = Literal["proxy", "transparent", "nat", "dsr"]
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
IP_PKTINFO = 8  # linux/in.h; Python's socket module lacks it
MAX_FRAMES = 5000  # per capture: a trace is one request, this bounds a runaway
SERVICE_PORT = 80
HOSTS = ("client", "lb", "rs1", "rs2")
NAMES = {mac: host for host, mac in MACS.items()}
NAMES.update({VIP: "VIP"})


@dataclass(frozen=True, slots=True)
class Frame:
    """One IPv4 TCP/UDP frame as one host's eth0 saw it."""

    host: str
    outgoing: bool
    time: float
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    protocol: str
    sport: int
    dport: int
    payload: int  # bytes after the transport header
    digest: str  # of IP payload: the same datagram seen at two hosts has the same digest

    def headers(self) -> tuple[str, str, str, str]:
        return (self.src_ip, self.src_mac, self.dst_ip, self.dst_mac)


@dataclass(frozen=True, slots=True)
class Step:
    number: int
    seen_by: tuple[str, ...]  # "client>" sent, ">lb" received
    src_ip: str
    src_mac: str
    dst_ip: str
    dst_mac: str
    what: str  # "request" or "response"


@dataclass(slots=True)
class TraceResult:
    mode: Mode
    protocol: str
    frames: list[Frame]
    response: str  # what the client got back (the server says who it saw)
    steps: list[Step] = field(default_factory=list)

    def received(
        self, host: str, *, dport: int | None = None, sport: int | None = None
    ) -> list[Frame]:
        return [
            f
            for f in self.frames
            if f.host == host
            and not f.outgoing
            and f.payload
            and (dport is None or f.dport == dport)
            and (sport is None or f.sport == sport)
        ]

    def seen(self, host: str) -> list[Frame]:
        return [f for f in self.frames if f.host == host and f.payload]

    def client_addresses(self) -> dict[str, set[str]]:
        """For each server host, the source addresses of the requests it received."""
        return {
            host: {f.src_ip for f in self.received(host, dport=SERVICE_PORT)}
            for host in ("rs1", "rs2")
            if self.received(host, dport=SERVICE_PORT)
        }


# ------------------------------------------------------------------ capture


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_frame(host: str, data: bytes, outgoing: bool, stamp: float) -> Frame | None:
    """An Ethernet/IPv4/TCP-or-UDP frame, or None for anything else (ARP, ICMP...)."""
    if len(data) < 34 or data[12:14] != b"\x08\x00":
        return None
    ihl = (data[14] & 0x0F) * 4
    total = int.from_bytes(data[16:18], "big")
    proto = data[23]
    frag = int.from_bytes(data[20:22], "big") & 0x1FFF
    if proto not in (6, 17) or frag:
        return None
    l4 = 14 + ihl
    if len(data) < l4 + 8:
        return None
    sport, dport = struct.unpack("!HH", data[l4 : l4 + 4])
    header = ((data[l4 + 12] >> 4) * 4) if proto == 6 else 8
    payload = max(0, total - ihl - header)
    return Frame(
        host=host,
        outgoing=outgoing,
        time=stamp,
        src_mac=_mac(data[6:12]),
        dst_mac=_mac(data[0:6]),
        src_ip=str(ipaddress.IPv4Address(data[26:30])),
        dst_ip=str(ipaddress.IPv4Address(data[30:34])),
        protocol="tcp" if proto == 6 else "udp",
        sport=sport,
        dport=dport,
        payload=payload,
        # Ports and payload identify a datagram along its path; IP header fields (TTL,
        # checksum) change at routers, so they are left out.
        digest=hashlib.blake2b(data[l4 : 14 + total], digest_size=8).hexdigest(),
    )


class Capture:
    """AF_PACKET taps on eth0 of several testbed hosts, read by one thread until `stop`."""

    def __init__(self, bed: Testbed, hosts: Sequence[str] = HOSTS) -> None:
        self.frames: list[Frame] = []
        self._socks: dict[socket.socket, str] = {}
        for host in hosts:
            sock = netns_socket(
                bed.ns(host), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)
            )
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            # The interface name is looked up in the namespace of the thread that binds.
            in_netns(bed.ns(host), partial(sock.bind, ("eth0", ETH_P_ALL)))
            self._socks[sock] = host
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="capture", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        socks = list(self._socks)
        while not self._stop.is_set() and len(self.frames) < MAX_FRAMES:
            ready, _, _ = select.select(socks, [], [], 0.05)
            for sock in ready:
                data, ancdata, _, address = sock.recvmsg(65535, 64)
                stamp = time.time()
                for level, kind, value in ancdata:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", value[:16])
                        stamp = sec + nsec / 1e9
                frame = parse_frame(self._socks[sock], data, address[2] == PACKET_OUTGOING, stamp)
                if frame is not None:
                    self.frames.append(frame)

    def stop(self, settle: float = 0.2) -> list[Frame]:
        time.sleep(settle)  # let frames in flight arrive
        self._stop.set()
        self._thread.join(timeout=2)
        for sock in self._socks:
            sock.close()
        return sorted(self.frames, key=lambda f: f.time)


# ------------------------------------------------------------------ servers and client


class Servers:
    """A tiny TCP (HTTP-ish) or UDP server on port 80 in each named host; each reply says
    `<host> saw <address>:<port>`, the peer as the server's socket saw it."""

    def __init__(
        self,
        bed: Testbed,
        hosts: Sequence[str],
        protocol: str,
        port: int = SERVICE_PORT,
        lifetime: float = 20.0,
    ) -> None:
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._threads = []
        self._socks: list[socket.socket] = []
        for host in hosts:
            if protocol == "tcp":
                sock = netns_socket(bed.ns(host), socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port))
                sock.listen(64)
                target = self._serve_tcp
            else:
                sock = netns_socket(bed.ns(host), socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                sock.bind(("0.0.0.0", port))
                target = self._serve_udp
            sock.settimeout(0.1)
            self._socks.append(sock)
            thread = threading.Thread(target=target, args=(host, sock), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _serve_tcp(self, host: str, sock: socket.socket) -> None:
        while self._running():
            try:
                conn, peer = sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    body = f"{host} saw {peer[0]}:{peer[1]}\n".encode()
                    conn.sendall(
                        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                except OSError:
                    continue

    def _serve_udp(self, host: str, sock: socket.socket) -> None:
        while self._running():
            try:
                _, ancdata, _, peer = sock.recvmsg(2048, 256)
            except (TimeoutError, OSError):
                continue
            reply = []
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    # in_pktinfo: ifindex, spec_dst, addr; answer from the address we were sent to
                    reply = [(level, kind, struct.pack("i4s4s", 0, value[8:12], b"\0" * 4))]
            body = f"{host} saw {peer[0]}:{peer[1]}\n".encode()
            try:
                sock.sendmsg([body], reply, 0, peer)
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        for sock in self._socks:
            sock.close()


def request(
    bed: Testbed, protocol: str, address: str = VIP, port: int = SERVICE_PORT, timeout: float = 3.0
) -> str:
    """One request from the client; the response body (or the error, as text)."""
    if protocol == "tcp":
        sock = netns_socket(bed.ns("client"), socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(timeout)
            try:
                sock.connect((address, port))
                sock.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            except OSError as exc:
                return f"error: {exc}"
        return data.partition(b"\r\n\r\n")[2].decode(errors="replace")
    sock = netns_socket(bed.ns("client"), socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(b"query", (address, port))
            data, peer = sock.recvfrom(2048)
        except OSError as exc:
            return f"error: {exc}"
        if peer[0] != address:
            return f"error: reply came from {peer[0]}, not {address}"
        return data.decode(errors="replace")


# ------------------------------------------------------------------ modes


def service(
    mode: Literal["nat", "dsr"],
    protocol: str = "tcp",
    name: str | None = None,
    balancer: str = "maglev",
) -> ServiceConfig:
    """The testbed's service: VIP:80 over rs1 and rs2."""
    return ServiceConfig.model_validate(
        {
            "name": name or f"trace-{mode}",
            "vip": VIP,
            "port": SERVICE_PORT,
            "protocol": protocol,
            "mode": mode,
            "interface": "eth0",
            "balancer": balancer,
            "endpoints": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"}],
        }
    )


def program(
    bed: Testbed, svc: ServiceConfig, lb: str = "lb", up: dict[str, bool] | None = None
) -> nft.ServiceState:
    """Check, resolve and apply one service on an LB host; return what was applied."""
    ns = bed.ns(lb)
    macs = apply.preflight([svc], ns)
    values = apply.endpoint_values(0, svc, ns)
    state = nft.ServiceState(
        svc,
        nft.compute_slots(svc, up or {}, values),
        macs[svc.interface] if svc.mode == "dsr" else None,
    )
    apply.replace([state], ns)
    return state


def prepare_realservers(bed: Testbed, vip: str = VIP) -> None:
    for host in bed.rs_hosts:
        realserver.apply(realserver.plan(vip), netns=bed.ns(host))


def undo_realservers(bed: Testbed, vip: str = VIP) -> None:
    for host in bed.rs_hosts:
        with contextlib.suppress(RuntimeError):  # already gone
            realserver.apply(realserver.undo_plan(vip), netns=bed.ns(host))


@contextlib.contextmanager
def proxy(bed: Testbed, lifetime: float = 30.0, *, transparent: bool = False) -> Iterator[None]:
    """bascule's own HTTP proxy on VIP:80 in the LB namespace, forwarding to rs1 and rs2;
    `transparent`: from the client's address (`source_address: client`)."""
    if shutil.which("bascule") is None and not Path(sys.executable).with_name("bascule").exists():
        raise RuntimeError("proxy mode needs the `bascule run` command, which is not installed")
    exe = str(Path(sys.executable).with_name("bascule"))
    config = (
        "workers: 1\n"
        "listeners:\n"
        f'  - {{name: web, address: "{VIP}:{SERVICE_PORT}", protocol: http,\n'
        "     routes: [{match: {path_prefix: /}, cluster: c}]}\n"
        "clusters:\n"
        '  - {name: c, endpoints: [{address: "198.18.0.11:80"}, {address: "198.18.0.12:80"}]'
        + (", source_address: client}\n" if transparent else "}\n")
    )
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(config)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", bed.ns("lb"), exe, "run", "-c", handle.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + min(lifetime, 10.0)
        while time.monotonic() < deadline:  # wait for the listener
            if proc.poll() is not None:
                raise RuntimeError(
                    f"bascule run exited: {proc.stderr.read() if proc.stderr else ''}"
                )
            probe = netns_socket(bed.ns("lb"), socket.AF_INET, socket.SOCK_STREAM)
            with probe:
                probe.settimeout(0.2)
                if probe.connect_ex((VIP, SERVICE_PORT)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("bascule run did not listen on the VIP within 10s")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        Path(handle.name).unlink(missing_ok=True)


def trace(bed: Testbed, mode: Mode, protocol: str = "tcp") -> TraceResult:
    """Program the LB for `mode`, run one request with captures on, clean up, tabulate."""
    if mode in ("proxy", "transparent") and protocol != "tcp":
        raise ValueError(f"{mode} mode traces an HTTP request: use protocol tcp")
    servers = Servers(bed, bed.rs_hosts, protocol)
    try:
        with contextlib.ExitStack() as stack:
            if mode == "proxy" or mode == "transparent":
                stack.enter_context(proxy(bed, transparent=mode == "transparent"))
            else:
                if mode == "dsr":
                    prepare_realservers(bed)
                    stack.callback(undo_realservers, bed)  # leave the testbed as found
                program(bed, service(mode, protocol))
                stack.callback(apply.remove, None, bed.ns("lb"))
            capture = Capture(bed)
            response = request(bed, protocol)
            frames = capture.stop()
    finally:
        servers.close()
    result = TraceResult(mode=mode, protocol=protocol, frames=frames, response=response)
    result.steps = steps(frames)
    return result


# ------------------------------------------------------------------ the table


def steps(frames: Sequence[Frame]) -> list[Step]:
    """Seed 002's steps: each distinct (addresses, MACs) a payload frame had along its path."""
    groups: dict[tuple[str, tuple[str, str, str, str]], list[Frame]] = {}
    for frame in frames:
        if frame.payload:
            groups.setdefault((frame.digest, frame.headers()), []).append(frame)
    ordered = sorted(groups.values(), key=lambda fs: min(f.time for f in fs))
    result = []
    for number, group in enumerate(ordered, 1):
        group.sort(key=lambda f: f.time)
        first = group[0]
        seen = tuple(f"{f.host}>" if f.outgoing else f">{f.host}" for f in group)
        what = "response" if first.sport == SERVICE_PORT else "request"
        result.append(Step(number, seen, *first.headers(), what))
    return result


def _label(value: str) -> str:
    name = NAMES.get(value)
    return f"{value} ({name})" if name else value


def render(result: TraceResult) -> str:
    """The seed 002 table plus who saw which client address."""
    head = ("step", "seen at", "source IP", "source MAC", "destination IP", "destination MAC")
    rows = [head] + [
        (
            str(s.number),
            " ".join(s.seen_by),
            _label(s.src_ip),
            _label(s.src_mac),
            _label(s.dst_ip),
            _label(s.dst_mac),
        )
        for s in result.steps
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"mode {result.mode} ({result.protocol}); client {CLIENT_IP}, LB {LB_IP}, VIP {VIP}"]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append("('client>' = sent by client, '>lb' = received by lb)")
    for host, sources in sorted(result.client_addresses().items()):
        lines.append(f"{host} saw requests from {', '.join(sorted(sources))}")
    replies_at_lb = result.received("lb", sport=SERVICE_PORT)
    lines.append(f"LB saw {len(replies_at_lb)} reply frame(s) from the servers")
    lines.append(f"client got: {result.response.strip()}")
    return "\n".join(lines) + "\n"
