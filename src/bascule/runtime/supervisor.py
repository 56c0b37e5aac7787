"""The supervisor: binds the listening sockets, runs the workers, stops them cleanly.

Rules of this module:
- Sockets are bound here, before any worker starts, so a port in use is one clear error at
  start-up, and every worker serves the very same sockets (inherited file descriptors).
- `workers: 1` serves in this process (one event loop); more workers are child processes
  started with `python -m bascule.runtime.worker`, given the config snapshot on standard input.
  A worker that dies unasked is restarted, with a pause if it keeps dying.
- SIGTERM/SIGINT: every worker drains (see worker.py), then the supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable

from bascule.config.schema import Config, ListenerConfig
from bascule.runtime.worker import Worker

Printer = Callable[[str], None]


class StartupError(Exception):
    """Something the user must fix before bascule can serve (a port in use, say)."""


def bind_listener(spec: ListenerConfig) -> socket.socket:
    host, port = spec.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
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
        demo_backends: list[tuple[str, int, str]] | None = None,
        printer: Printer = print,
    ) -> None:
        self.config = config
        self.demo_backends = demo_backends or []
        self.printer = printer
        self.sockets: dict[str, socket.socket] = {}
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = self.stop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for spec in self.config.listeners:
            self.sockets[spec.name] = bind_listener(spec)
        demo_servers = []
        if self.demo_backends:
            from bascule.demo_backend import start_demo_backend

            for host, port, name in self.demo_backends:
                try:
                    demo_servers.append(await start_demo_backend(host, port, name))
                except OSError as e:
                    raise StartupError(
                        f"demo backend {name}: cannot listen on {host}:{port}: {e.strerror}"
                    ) from e
        self._announce()
        # Packet modes (nat/dsr services, transparent routing): programmed now, removed below.
        from bascule.packet.runtime import start_packet

        packet = await start_packet(self.config, self.printer)
        count = self.config.worker_count
        if count == 1:
            worker = Worker(self.config, self.sockets)
            await worker.start()
            await stop.wait()
            self.printer("bascule: stopping (draining in-flight requests)")
            await worker.drain()
        else:
            tasks = [asyncio.create_task(self._keep_worker(i)) for i in range(count)]
            await stop.wait()
            self.printer("bascule: stopping (draining in-flight requests)")
            for proc in list(self.children.values()):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in demo_servers:
            server.close()
        for sock in self.sockets.values():
            sock.close()
        if packet is not None:
            await packet.stop()
        return 0

    async def _keep_worker(self, index: int) -> None:
        pause = 0.1
        while not self.stop.is_set():
            proc = await self._spawn()
            self.children[index] = proc
            if self.stop.is_set():  # asked to stop while this one was starting
                proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            if self.stop.is_set():
                return
            self.printer(f"bascule: worker {index} (pid {proc.pid}) exited with {code}; restarting")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _spawn(self) -> asyncio.subprocess.Process:
        fds = {name: sock.fileno() for name, sock in self.sockets.items()}
        args = [f"{name}={fd}" for name, fd in fds.items()]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bascule.runtime.worker",
            *args,
            stdin=asyncio.subprocess.PIPE,
            pass_fds=tuple(fds.values()),
            start_new_session=False,
        )
        assert proc.stdin is not None
        proc.stdin.write(self.config.model_dump_json().encode() + b"\n")
        await proc.stdin.drain()
        return proc

    def _announce(self) -> None:
        say = self.printer
        count = self.config.worker_count
        say(f"bascule {_version()}: {count} worker{'s' if count != 1 else ''}, pid {os.getpid()}")
        for host, port, name in self.demo_backends:
            say(f"  demo backend {name:<10} http://{host}:{port}/")
        for spec in self.config.listeners:
            host, port = spec.address
            shown = f"[{host}]" if ":" in host else host
            say(f"  listener {spec.name:<14} {spec.protocol}://{shown}:{port}/")
        if self.config.listeners:
            host, port = self.config.listeners[0].address
            shown = f"[{host}]" if ":" in host else host
            say(f"try: curl -i http://{shown}:{port}/")
        say("Ctrl-C stops.")


def _version() -> str:
    from bascule import __version__

    return __version__


def run(config: Config, demo_backends: list[tuple[str, int, str]] | None = None) -> int:
    import uvloop

    def printer(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    supervisor = Supervisor(config, demo_backends=demo_backends, printer=printer)
    try:
        return uvloop.run(supervisor.run())
    except StartupError as e:
        printer(f"bascule: {e}")
        return 1
