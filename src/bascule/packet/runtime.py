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
- Health: each service with `health:` has every endpoint probed with a TCP connect
  (`services[].health.tcp.port`, interval, timeout, rise, fall), from this host. A change of
  state reconciles the kernel (`ServiceManager.reconcile`, only the changed slots). Endpoints
  start up, as the first program says. Services without `health:` are never probed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from bascule.config.schema import Config
from bascule.config.services import ServiceConfig
from bascule.packet import apply, transparent
from bascule.packet.manager import ServiceManager, health_key

Printer = Callable[[str], None]


async def tcp_ok(address: str, port: int, within: float) -> bool:
    """One TCP health probe: does `address:port` accept a connection within `within` seconds?"""
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


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
        self._tasks: list[asyncio.Task[None]] = []
        self._transparent_up = False

    async def start(self) -> None:
        """Program everything; raise apply.PacketError (naming the key and fix) on refusal."""
        async with self._lock:
            if self.services:
                await asyncio.to_thread(self.manager.start, self.services)
            if self.transparent:
                await asyncio.to_thread(transparent.setup, self.netns)
                self._transparent_up = True
        for service in self.services:
            kind = f"{service.mode} {service.protocol}"
            ends = ", ".join(e.address for e in service.endpoints)
            self.printer(
                f"  service  {service.name:<14} {kind} {service.vip}:{service.port} → {ends}"
            )
            if service.health is not None:
                for endpoint in service.endpoints:
                    self._tasks.append(asyncio.create_task(self._probe(service, endpoint.address)))
        if self._tasks:
            self._tasks.append(asyncio.create_task(self._reconciler()))
        if self.transparent:
            self.printer("  transparent proxying: endpoints see client addresses")

    async def stop(self) -> None:
        """Stop probing, remove the tables and the transparent routing. Safe to call twice."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        async with self._lock:
            try:
                await asyncio.to_thread(self.manager.stop)
            except apply.PacketError as exc:
                self.printer(f"bascule: could not remove the services' nft tables: {exc}")
            if self._transparent_up:
                try:
                    await asyncio.to_thread(transparent.teardown, self.netns)
                except apply.PacketError as exc:
                    self.printer(f"bascule: could not remove transparent routing: {exc}")
                self._transparent_up = False

    # -------------------------------------------------------------- health

    async def _probe(self, service: ServiceConfig, address: str) -> None:
        spec = service.health
        assert spec is not None
        key = health_key(service, address)
        up, streak = True, 0
        while True:
            ok = await tcp_ok(address, service.health_port, spec.timeout)
            if ok == up:
                streak = 0
            else:
                streak += 1
                if streak >= (spec.rise if ok else spec.fall):
                    up, streak = ok, 0
                    self.health[key] = up
                    self.printer(
                        f"bascule: service {service.name}: {address} is {'up' if up else 'down'}"
                    )
                    self._changed.set()
            await asyncio.sleep(spec.interval)

    async def _reconciler(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            async with self._lock:
                try:
                    await asyncio.to_thread(
                        self.manager.reconcile, self.services, dict(self.health)
                    )
                except apply.PacketError as exc:
                    self.printer(f"bascule: services: {exc}")


async def start_packet(config: Config, printer: Printer = print) -> PacketRuntime | None:
    """The supervisor's one call at start: None when the config uses no packet feature."""
    wants_transparent = any(c.source_address == "client" for c in config.clusters)
    if not config.services and not wants_transparent:
        return None
    from bascule.runtime.supervisor import StartupError

    runtime = PacketRuntime(config.services, transparent=wants_transparent, printer=printer)
    try:
        await runtime.start()
    except apply.PacketError as exc:
        await runtime.stop()
        raise StartupError(str(exc)) from None
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
