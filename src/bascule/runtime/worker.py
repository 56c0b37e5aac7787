"""A worker: one uvloop event loop serving the listeners on sockets the supervisor bound.

Rules of this module:
- The worker never binds: it serves sockets it was given (inherited fds or, with `workers: 1`,
  the supervisor's own objects), so every worker shares the same listening sockets. Each
  becomes a Listener (listen/), which accepts, counts and limits its sessions.
- SIGTERM/SIGINT: stop accepting, let in-flight exchanges finish (their responses say
  `Connection: close`), close idle keep-alive connections at once, and after the drain timeout
  cut what is left. Then exit 0.
- Run as `python -m bascule.runtime.worker FD...` the config snapshot arrives as one JSON line
  on standard input; standard input closing means the supervisor is gone: drain and exit.
  Later lines on standard input are control messages (health verdicts, endpoint sets: see
  channel.py), applied to this worker's clusters as they come. With `-report=FD` the worker
  writes its counters to that pipe every second, for the supervisor's admin API.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

from bascule.config.schema import Config
from bascule.l7.context import ListenerContext
from bascule.listen.l4 import L4Listener
from bascule.listen.listener import Listener
from bascule.observe.access_log import AccessLog
from bascule.runtime import channel
from bascule.upstream.cluster import Cluster


class Worker:
    """The data plane of one process: listeners, their sessions, the clusters they use."""

    def __init__(self, config: Config, sockets: dict[str, socket.socket]) -> None:
        self.config = config
        self.sockets = sockets
        self.listeners: list[Listener] = []
        self.l4_listeners: list[L4Listener] = []  # tcp and udp listeners (listen/l4.py)
        self.clusters: dict[str, Cluster] = {}
        self.access_log = AccessLog(config.access_log.path, config.access_log.format)
        self.stopping: asyncio.Event | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.clusters = {spec.name: Cluster(spec) for spec in self.config.clusters}
        for spec in self.config.listeners:
            if spec.protocol != "http":
                l4 = L4Listener(spec, self.sockets[spec.name], self.clusters, loop)
                self.l4_listeners.append(l4)
                await l4.start()
                continue
            ctx = ListenerContext(spec, self.clusters, self.access_log, loop)
            listener = Listener(spec, self.sockets[spec.name], ctx)
            self.listeners.append(listener)
            listener.start()

    def request_stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()

    async def wait_stopped(self) -> None:
        assert self.stopping is not None
        await self.stopping.wait()

    async def drain(self) -> None:
        """Stop accepting, finish in-flight exchanges up to the drain timeout, close the rest."""
        timeout = 0.0
        for l4 in self.l4_listeners:
            l4.stop()
            timeout = max(timeout, l4.spec.timeouts.drain)
        for listener in self.listeners:
            listener.stop()
            listener.ctx.draining = True
            timeout = max(timeout, listener.ctx.timeouts.drain)
            for session in listener.sessions():
                if session.exchange is None and not session.pending:
                    session.close_gracefully()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Sessions end in many places; a 20 Hz poll bounded by the drain timeout is simplest.
        while self._busy() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for l4 in self.l4_listeners:
            l4.abort()
        for listener in self.listeners:
            for session in listener.sessions():
                session.abort()
        for cluster in self.clusters.values():
            cluster.close()
        self.access_log.close()

    def _busy(self) -> bool:
        return any(listener.table for listener in self.listeners) or any(
            l4.active() for l4 in self.l4_listeners
        )


async def serve(config: Config, sockets: dict[str, socket.socket]) -> None:
    """Run one worker until SIGTERM/SIGINT (or standard input closing), then drain."""
    loop = asyncio.get_running_loop()
    worker = Worker(config, sockets)
    await worker.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.wait_stopped()
    await worker.drain()


def _watch_stdin(
    loop: asyncio.AbstractEventLoop, worker: Worker, lines: channel.LineReader
) -> None:
    assert worker.stopping is not None
    worker_stop = worker.stopping

    def on_readable() -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(0)
            worker_stop.set()
            return
        for message in lines.feed(data):
            channel.apply(message, worker.clusters)

    os.set_blocking(0, False)
    loop.add_reader(0, on_readable)


async def _serve_child(
    fds: dict[str, int], config: Config, rest: bytes = b"", report_fd: int | None = None
) -> None:
    sockets = {name: socket.socket(fileno=fd) for name, fd in fds.items()}
    loop = asyncio.get_running_loop()
    worker = Worker(config, sockets)
    await worker.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    assert worker.stopping is not None
    lines = channel.LineReader()
    for message in lines.feed(rest):
        channel.apply(message, worker.clusters)
    _watch_stdin(loop, worker, lines)
    reporter = None
    if report_fd is not None:
        reporter = loop.create_task(_report(worker, report_fd))
    await worker.wait_stopped()
    if reporter is not None:
        reporter.cancel()
    await worker.drain()


async def _report(worker: Worker, fd: int) -> None:
    """Send this worker's counters to the supervisor every REPORT_INTERVAL seconds."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", buffering=0))
    try:
        while not transport.is_closing():
            # A supervisor that stopped reading must not make this worker buffer without end.
            if transport.get_write_buffer_size() < 1 << 20:
                transport.write(channel.stats_report(worker.clusters))
            await asyncio.sleep(channel.REPORT_INTERVAL)
    finally:
        transport.close()


def _read_config_line() -> tuple[bytes, bytes]:
    """The first line of standard input, unbuffered: what follows it stays for the channel."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def child_main(argv: list[str]) -> int:
    """Entry of a worker process: `NAME=FD` pairs as arguments, the config on standard input."""
    import uvloop

    fds = {}
    report_fd = None
    for arg in argv:
        name, _, fd = arg.rpartition("=")
        if name == "-report":  # listener names cannot start with '-'
            report_fd = int(fd)
        else:
            fds[name] = int(fd)
    line, rest = _read_config_line()
    config = Config.model_validate(json.loads(line))
    uvloop.run(_serve_child(fds, config, rest, report_fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
