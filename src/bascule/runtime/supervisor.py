"""The supervisor: binds the listening sockets, runs the workers, stops them cleanly.

Rules of this module:
- Sockets are bound here, before any worker starts, so a port in use is one clear error at
  start-up, and every worker serves the very same sockets (inherited file descriptors).
- `workers: 1` serves in this process (one event loop); more workers are child processes
  started with `python -m bascule.runtime.worker`, given the config snapshot on standard input.
  A worker that dies unasked is restarted, with a pause if it keeps dying.
- SIGTERM/SIGINT: every worker drains (see worker.py), then the supervisor exits 0.
- The control plane runs here, in this event loop: active health checks, discovery and the
  admin API. Their results reach workers through `channel` (stdin lines); workers report
  their counters back on a pipe of their own, and the admin API sums them.
- Two kinds of output on stderr: the banner (plain lines for the person who started bascule,
  once), and event lines (health flips, workers, discovery, drain), which all go through
  `bascule.observe.events`, with a time and a level, where the config's `log:` says.
- The config's `demo_backends:` are served here, in this event loop, before the banner.
- Sticky clusters without a configured secret get one random key for this run, put into the
  snapshot every worker gets (runtime/sticky.py): all workers honour each other's cookies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from bascule.config.schema import Config, EndpointConfig, ListenerConfig, LogConfig
from bascule.config.units import format_address
from bascule.control.admin import AdminServer, cluster_view
from bascule.errors import StartupError
from bascule.observe import events
from bascule.runtime import channel
from bascule.runtime.sticky import new_secret, with_sticky_secret
from bascule.runtime.worker import Worker
from bascule.upstream.discovery import Discovery
from bascule.upstream.health import ActiveChecker, cluster_targets

Printer = Callable[[str], None]


def bind_listener(spec: ListenerConfig) -> socket.socket:
    host, port = spec.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # udp listeners: one datagram socket, shared by every worker as the TCP ones are.
    udp = spec.protocol == "udp"
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if not udp:
            sock.listen(1024)
    except OSError as e:
        sock.close()
        raise StartupError(
            f"listener {spec.name}: cannot listen on {host}:{port}: {e.strerror or e}"
        ) from e
    sock.setblocking(False)
    return sock


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        printer: Printer = print,
    ) -> None:
        self.sticky_secret = new_secret()  # kept for the run: a reload must reuse it
        self.config = with_sticky_secret(config, self.sticky_secret)
        self.printer = printer  # the banner's; event lines go through observe.events
        self.sockets: dict[str, socket.socket] = {}
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.stop = asyncio.Event()
        # Control plane (health checks, admin API, discovery): see _start_control.
        self.worker: Worker | None = None  # the in-process worker, with `workers: 1`
        self.checker: ActiveChecker | None = None
        self.admin: AdminServer | None = None
        self.discovery: Discovery | None = None
        self.reports: dict[int, dict[str, Any]] = {}  # worker index → its last stats report
        self._control_tasks: list[asyncio.Task[None]] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = self.stop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for spec in self.config.listeners:
            self.sockets[spec.name] = bind_listener(spec)
        await self._start_control()
        demo_servers = []
        if self.config.demo_backends:
            from bascule.demo_backend import start_demo_backend

            for backend in self.config.demo_backends:
                host, port = backend.address
                try:
                    demo_servers.append(await start_demo_backend(host, port, backend.name))
                except OSError as e:
                    raise StartupError(
                        f"demo backend {backend.name}: cannot listen on "
                        f"{format_address(backend.address)}: {e.strerror or e}"
                    ) from e
        self._announce()
        # Packet modes (nat/dsr services, transparent routing): programmed now, removed below.
        from bascule.packet.runtime import start_packet

        packet = await start_packet(self.config, self.printer)
        count = self.config.worker_count
        if count == 1:
            worker = Worker(self.config, self.sockets)
            self.worker = worker
            await worker.start()
            if self.discovery is not None:
                self._send({"endpoints": self.discovery.current()})
            self._send({"health": self._down()})
            await stop.wait()
            events.info("drain", "stopping: draining in-flight requests")
            await worker.drain()
        else:
            tasks = [asyncio.create_task(self._keep_worker(i)) for i in range(count)]
            await stop.wait()
            events.info("drain", "stopping: draining in-flight requests")
            for proc in list(self.children.values()):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in demo_servers:
            server.close()
        for sock in self.sockets.values():
            sock.close()
        self._stop_control()
        if packet is not None:
            await packet.stop()
        events.info("drain", "stopped")
        return 0

    async def _keep_worker(self, index: int) -> None:
        pause = 0.1
        while not self.stop.is_set():
            proc = await self._spawn(index)
            self.children[index] = proc
            events.info(
                "worker", f"worker {index} started (pid {proc.pid})", worker=index, pid=proc.pid
            )
            if self.stop.is_set():  # asked to stop while this one was starting
                proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            if self.stop.is_set():
                return
            events.warning(
                "worker",
                f"worker {index} (pid {proc.pid}) exited with {code}; restarting",
                worker=index,
                pid=proc.pid,
                code=code,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        fds = {name: sock.fileno() for name, sock in self.sockets.items()}
        args = [f"{name}={fd}" for name, fd in fds.items()]
        # The worker's reports come back on a pipe of their own (stdout is the access log's).
        report_r, report_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bascule.runtime.worker",
                *args,
                f"-report={report_w}",
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(*fds.values(), report_w),
                start_new_session=False,
            )
        finally:
            os.close(report_w)
        self.reports.pop(index, None)
        await self._read_reports(index, report_r)
        assert proc.stdin is not None
        proc.stdin.write(self.config.model_dump_json().encode() + b"\n")
        # What the control plane knows already: a new worker must not route to a dead endpoint.
        # Endpoints first: a verdict for an endpoint the worker does not have yet is dropped.
        if self.discovery is not None:
            proc.stdin.write(channel.encode({"endpoints": self.discovery.current()}))
        proc.stdin.write(channel.encode({"health": self._down()}))
        await proc.stdin.drain()
        return proc

    # ------------------------------------------------------------ control plane

    async def _start_control(self) -> None:
        """Admin API, active health checks, discovery: all in this process's event loop."""
        config = self.config
        if config.admin is not None:
            host, port = config.admin.address
            self.admin = AdminServer(host, port, self._admin_view)
            try:
                await self.admin.start()
            except OSError as e:
                raise StartupError(
                    f"admin: cannot listen on {host}:{port}: {e.strerror or e}"
                ) from e
        if any(c.health_check is not None for c in config.clusters):
            targets = cluster_targets(config.clusters)
            self.checker = ActiveChecker(targets, self._health_changed)
            self._control_tasks.append(asyncio.create_task(self.checker.run()))
        if any(c.discovery is not None for c in config.clusters):
            self.discovery = Discovery(config.clusters, self._endpoints_changed)
            self._control_tasks.append(asyncio.create_task(self.discovery.run()))

    def _stop_control(self) -> None:
        if self.checker is not None:
            self.checker.stop()
        if self.discovery is not None:
            self.discovery.stop()
        for task in self._control_tasks:
            task.cancel()
        if self.admin is not None:
            self.admin.close()

    def _down(self) -> dict[str, bool]:
        if self.checker is None:
            return {}
        return {k: False for k, state in self.checker.states.items() if not state.healthy}

    def _health_changed(self, key: str, healthy: bool) -> None:
        word = "up" if healthy else "down"
        message = f"endpoint {key} is {word} (active health check)"
        events.emit(
            "info" if healthy else "warning", "health", message, endpoint=key, healthy=healthy
        )
        self._send({"health": {key: healthy}})

    def _endpoints_changed(self, cluster: str, endpoints: list[dict[str, Any]]) -> None:
        addresses = ", ".join(str(e.get("address")) for e in endpoints) or "none"
        events.info(
            "discovery",
            f"cluster {cluster}: {len(endpoints)} endpoint{'' if len(endpoints) == 1 else 's'}"
            f" after discovery: {addresses}",
            cluster=cluster,
            endpoints=len(endpoints),
        )
        self._send({"endpoints": {cluster: endpoints}})
        if self.checker is not None and self.discovery is not None:
            known = {
                name: [EndpointConfig.model_validate(e) for e in specs]
                for name, specs in self.discovery.current().items()
            }
            self.checker.set_targets(cluster_targets(self.config.clusters, known))

    def _send(self, message: dict[str, Any]) -> None:
        """To every worker: applied at once in-process, else one line on each worker's stdin."""
        if self.worker is not None:
            channel.apply(message, self.worker.clusters)
            return
        line = channel.encode(message)
        for proc in self.children.values():
            if proc.returncode is None and proc.stdin is not None:
                try:
                    proc.stdin.write(line)
                except (OSError, RuntimeError):
                    pass  # that worker is going away; its replacement gets the state at spawn

    async def _read_reports(self, index: int, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reports = self.reports

        class Reports(asyncio.Protocol):
            def __init__(self) -> None:
                self.lines = channel.LineReader()

            def data_received(self, data: bytes) -> None:
                for message in self.lines.feed(data):
                    stats = message.get("stats")
                    if isinstance(stats, dict):
                        reports[index] = stats

        await loop.connect_read_pipe(Reports, os.fdopen(fd, "rb", buffering=0))

    def _admin_view(self) -> dict[str, Any]:
        if self.worker is not None:
            reports = [{name: c.stats() for name, c in self.worker.clusters.items()}]
        else:
            reports = list(self.reports.values())
        checks = {}
        if self.checker is not None:
            checks = {k: s.as_json() for k, s in self.checker.states.items()}
        return cluster_view(self.config.clusters, reports, checks)

    def _announce(self) -> None:
        say = self.printer
        count = self.config.worker_count
        say(f"bascule {_version()}: {count} worker{'s' if count != 1 else ''}, pid {os.getpid()}")
        for backend in self.config.demo_backends:
            say(f"  demo backend {backend.name:<10} http://{format_address(backend.address)}/")
        for spec in self.config.listeners:
            say(f"  listener {spec.name:<14} {spec.protocol}://{format_address(spec.address)}/")
        if self.config.admin is not None:
            say(f"  {'admin API':<23} http://{format_address(self.config.admin.address)}/clusters")
        access = self.config.access_log
        where = {None: "off", "-": "standard output"}.get(access.path, access.path)
        say(f"  {'access log':<23} {where}" + (f" ({access.format})" if access.path else ""))
        log = self.config.log
        streams = {"stderr": "standard error", "stdout": "standard output"}
        shown_log = streams.get(log.path, log.path)
        say(f"  {'event log':<23} {shown_log} ({log.format}, {log.level} and above)")
        if self.config.listeners:
            host, port = self.config.listeners[0].address
            shown = f"[{host}]" if ":" in host else host
            say(f"try: curl -i http://{shown}:{port}/")
        say("Ctrl-C stops.")


def _version() -> str:
    from bascule import __version__

    return __version__


def run(config: Config) -> int:
    import uvloop

    def printer(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        events.configure(config.log)
    except OSError as e:
        printer(f"bascule: log.path: cannot open {config.log.path}: {e.strerror or e}")
        return 1
    supervisor = Supervisor(config, printer=printer)
    try:
        return uvloop.run(supervisor.run())
    except StartupError as e:
        printer(f"bascule: {e}")
        return 1
    finally:
        events.configure(LogConfig())  # closes the file, if the log was one
