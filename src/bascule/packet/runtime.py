"""The packet modes inside `bascule run`: program the services at start, follow the endpoints'
health, set up transparent proxying, and undo it all on a clean exit.

Rules of this module:
- The supervisor calls `start_packet(config, printer)` once, after its listeners are bound, and
  `stop()` on the way out. Nothing here runs when the config has no `services:` and no cluster
  with `source_address: client` (then `start_packet` returns None).
- A refusal at start (not root, no nft, no such interface, VIP not on it, an unresolvable MAC)
  is a `StartupError` whose message names the config key and the fix: bascule exits non-zero
  and has programmed nothing.
- A clean exit removes bascule's tables and transparent routing. A killed bascule leaves them;
  the next start replaces them in one transaction (`ServiceManager.start`), so they are never
  merged with a stale program.
- nft and conntrack are subprocesses that block: they run in a thread (`asyncio.to_thread`),
  one at a time (a lock), so the event loop never stalls on them.
- The endpoints' health and slots are written to `status_path()` (one JSON file per network
  namespace) at start and after every reconcile, for `bascule services`; removed on exit.
- Health: each service with `health:` has every endpoint probed with a TCP connect
  (`services[].health.tcp.port`, interval, timeout, rise, fall), from this host, by the
  clusters' `ActiveChecker` (upstream/health.py). A flip reconciles the kernel
  (`ServiceManager.reconcile`: only the changed slots, one transaction at a time, flips that
  arrive meanwhile folded into the next). Endpoints start up, as the first program says.
  Services without `health:` are never probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from bascule.config.schema import Config
from bascule.config.services import ServiceConfig
from bascule.errors import StartupError
from bascule.observe import events
from bascule.packet import apply, transparent
from bascule.packet.manager import ServiceManager, health_key
from bascule.upstream.health import ActiveChecker, CheckTarget

Printer = Callable[[str], None]
STATUS_DIR = Path("/run/bascule/services")


def status_path(netns: str | None = None) -> Path:
    """Where a running bascule leaves its services' status for `bascule services`.

    One file per network namespace, named by the namespace's inode (the same whether seen as
    /proc/self/ns/net inside or /run/netns/NAME outside), so LBs in several namespaces of one
    host (the testbed, the scale-out test) never share one.
    """
    ns = Path("/proc/self/ns/net") if netns is None else Path("/run/netns") / netns
    return STATUS_DIR / f"net-{ns.stat().st_ino}.json"


def read_status(netns: str | None = None) -> list[dict[str, object]] | None:
    """The endpoints' status written by a live bascule in that namespace, or None."""
    try:
        data = json.loads(status_path(netns).read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    endpoints: list[dict[str, object]] = data.get("endpoints", [])
    return endpoints


def health_targets(services: Sequence[ServiceConfig]) -> list[CheckTarget]:
    """A TCP check of every endpoint of every service with `health:`, keyed as the
    ServiceManager's health is (`service/address`)."""
    return [
        CheckTarget(
            key=health_key(service, endpoint.address),
            host=endpoint.address,
            port=service.health_port,
            kind="tcp",
            interval=service.health.interval,
            timeout=service.health.timeout,
            rise=service.health.rise,
            fall=service.health.fall,
        )
        for service in services
        if service.health is not None
        for endpoint in service.endpoints
    ]


class PacketRuntime:
    """Services in the kernel and transparent routing, for the lifetime of one `bascule run`."""

    def __init__(
        self,
        services: Sequence[ServiceConfig],
        *,
        transparent: bool = False,
        printer: Printer = print,
        netns: str | None = None,
    ) -> None:
        self.services = list(services)
        self.transparent = transparent
        self.printer = printer
        self.manager = ServiceManager(netns)
        self.netns = netns
        self.health: dict[str, bool] = {}
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._transparent_up = False
        self.checker: ActiveChecker | None = None

    async def start(self) -> None:
        """Program everything; raise apply.PacketError (naming the key and fix) on refusal."""
        async with self._lock:
            if self.services:
                await asyncio.to_thread(self.manager.start, self.services)
                self._write_status()
            if self.transparent:
                await asyncio.to_thread(transparent.setup, self.netns)
                self._transparent_up = True
        for service in self.services:
            kind = f"{service.mode} {service.protocol}"
            ends = ", ".join(e.address for e in service.endpoints)
            self.printer(
                f"  service  {service.name:<14} {kind} {service.vip}:{service.port} → {ends}"
            )
        targets = health_targets(self.services)
        if targets:
            self.checker = ActiveChecker(targets, self._on_change)
            self._tasks.append(asyncio.create_task(self.checker.run()))
            self._tasks.append(asyncio.create_task(self._reconciler()))
        if self.transparent:
            self.printer("  transparent proxying: endpoints see client addresses")

    async def stop(self) -> None:
        """Stop probing, remove the tables and the transparent routing. Safe to call twice."""
        if self.checker is not None:
            self.checker.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)  # a reconcile's thread
            self._inflight = None
        async with self._lock:
            with contextlib.suppress(OSError):
                status_path(self.netns).unlink()
            try:
                await asyncio.to_thread(self.manager.stop)
            except apply.PacketError as exc:
                events.error("services", f"could not remove the services' nft tables: {exc}")
            if self._transparent_up:
                try:
                    await asyncio.to_thread(transparent.teardown, self.netns)
                except apply.PacketError as exc:
                    events.error("transparent", f"could not remove transparent routing: {exc}")
                self._transparent_up = False

    def _write_status(self) -> None:
        """Each endpoint's health and slots, for `bascule services` (best effort)."""
        data = {"pid": os.getpid(), "endpoints": [asdict(e) for e in self.manager.status()]}
        try:
            path = status_path(self.netns)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
        except OSError as exc:
            events.warning("services", f"cannot write {STATUS_DIR}: {exc}")

    # -------------------------------------------------------------- health

    def _on_change(self, key: str, healthy: bool) -> None:
        self.health[key] = healthy
        events.emit(
            "info" if healthy else "warning",
            "health",
            f"service {key.replace('/', ': ', 1)} is {'up' if healthy else 'down'}",
        )
        self._changed.set()

    async def _reconciler(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            async with self._lock:
                try:
                    # Kept: a cancelled task does not stop the thread, and stop() must wait
                    # for it before tearing the tables down.
                    self._inflight = asyncio.ensure_future(
                        asyncio.to_thread(self.manager.reconcile, self.services, dict(self.health))
                    )
                    program = await asyncio.shield(self._inflight)
                    self._write_status()
                    changed = program.count("\n")
                    events.info("services", f"services: kernel updated ({changed} nft statements)")
                except apply.PacketError as exc:
                    events.error("services", f"services: {exc}")


async def start_packet(config: Config, printer: Printer = print) -> PacketRuntime | None:
    """The supervisor's one call at start: None when the config uses no packet feature."""
    wants_transparent = any(c.source_address == "client" for c in config.clusters)
    if not config.services and not wants_transparent:
        return None
    runtime = PacketRuntime(config.services, transparent=wants_transparent, printer=printer)
    try:
        await runtime.start()
    except apply.PacketError as exc:
        await runtime.stop()
        raise StartupError(str(exc)) from None
    except BaseException:
        await runtime.stop()  # whatever failed, take down what was programmed
        raise
    return runtime


def check(config: Config) -> str | None:
    """`bascule check`: the machine checks `run` would make; the refusal's message, or None."""
    if not config.services:
        return None
    try:
        apply.preflight(config.services)
        for index, service in enumerate(config.services):
            if service.mode == "dsr":
                apply.endpoint_values(index, service)
    except apply.PacketError as exc:
        return str(exc)
    return None
