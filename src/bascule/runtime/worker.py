"""A worker: one uvloop event loop serving the listeners on sockets the supervisor bound.

Rules of this module:
- The worker never binds: it serves sockets it was given (inherited fds or, with `workers: 1`,
  the supervisor's own objects), so every worker shares the same listening sockets.
- SIGTERM/SIGINT: stop accepting, let in-flight exchanges finish (their responses say
  `Connection: close`), close idle keep-alive connections at once, and after the drain timeout
  cut what is left. Then exit 0.
- Run as `python -m bascule.runtime.worker FD...` the config snapshot arrives as one JSON line
  on standard input; standard input closing means the supervisor is gone: drain and exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

from bascule.config.schema import Config
from bascule.control.access_log import AccessLog
from bascule.l7.context import ListenerContext
from bascule.l7.session import HttpSession
from bascule.upstream.cluster import Cluster


class Worker:
    """The data plane of one process: listeners, their sessions, the clusters they use."""

    def __init__(self, config: Config, sockets: dict[str, socket.socket]) -> None:
        self.config = config
        self.sockets = sockets
        self.servers: list[asyncio.AbstractServer] = []
        self.contexts: list[ListenerContext] = []
        self.clusters: dict[str, Cluster] = {}
        self.access_log = AccessLog(config.access_log.path, config.access_log.format)
        self.stopping: asyncio.Event | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.clusters = {spec.name: Cluster(spec) for spec in self.config.clusters}
        for spec in self.config.listeners:
            ctx = ListenerContext(spec, self.clusters, self.access_log, loop)
            self.contexts.append(ctx)
            server = await loop.create_server(
                lambda ctx=ctx: HttpSession(ctx),  # type: ignore[misc]
                sock=self.sockets[spec.name],
                backlog=1024,
            )
            self.servers.append(server)

    def request_stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()

    async def wait_stopped(self) -> None:
        assert self.stopping is not None
        await self.stopping.wait()

    async def drain(self) -> None:
        """Stop accepting, finish in-flight exchanges up to the drain timeout, close the rest."""
        for server in self.servers:
            server.close()
        timeout = 0.0
        for ctx in self.contexts:
            ctx.draining = True
            timeout = max(timeout, ctx.timeouts.drain)
            for session in list(ctx.sessions):
                if session.exchange is None and not session.pending:
                    session.close_gracefully()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Sessions end in many places; a 20 Hz poll bounded by the drain timeout is simplest.
        while any(ctx.sessions for ctx in self.contexts) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for ctx in self.contexts:
            for session in list(ctx.sessions):
                session.abort()
        for cluster in self.clusters.values():
            cluster.close()
        self.access_log.close()


async def serve(config: Config, sockets: dict[str, socket.socket]) -> None:
    """Run one worker until SIGTERM/SIGINT (or standard input closing), then drain."""
    loop = asyncio.get_running_loop()
    worker = Worker(config, sockets)
    await worker.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.wait_stopped()
    await worker.drain()


def _watch_stdin(loop: asyncio.AbstractEventLoop, worker_stop: asyncio.Event) -> None:
    def on_readable() -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(0)
            worker_stop.set()

    os.set_blocking(0, False)
    loop.add_reader(0, on_readable)


async def _serve_child(fds: dict[str, int], config: Config) -> None:
    sockets = {name: socket.socket(fileno=fd) for name, fd in fds.items()}
    loop = asyncio.get_running_loop()
    worker = Worker(config, sockets)
    await worker.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    assert worker.stopping is not None
    _watch_stdin(loop, worker.stopping)
    await worker.wait_stopped()
    await worker.drain()


def child_main(argv: list[str]) -> int:
    """Entry of a worker process: `NAME=FD` pairs as arguments, the config on standard input."""
    import uvloop

    fds = {}
    for arg in argv:
        name, _, fd = arg.rpartition("=")
        fds[name] = int(fd)
    line = sys.stdin.buffer.readline()
    config = Config.model_validate(json.loads(line))
    uvloop.run(_serve_child(fds, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
