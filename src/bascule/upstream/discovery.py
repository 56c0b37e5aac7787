"""Discovery: endpoints from DNS names re-resolved on an interval, or from a watched file.

Rules of this module:
- Runs in the supervisor. For each cluster with `discovery`, a task looks on every `interval`
  and, when the endpoint set changed, calls `on_change(cluster, endpoints)` with the whole new
  list (the cluster's static `endpoints` first, then the discovered ones not already listed),
  as JSON-able endpoint specs; the supervisor sends it to workers (runtime/channel.py), which
  swap the set without dropping a connection (Cluster.set_endpoints).
- DNS (dnspython): `A`, `AAAA` or both, with the configured `port`; or `SRV`, which gives each
  target's port and weight (clamped to 1..1000), the lowest priority being the primaries and
  the others backups; SRV targets are resolved to A/AAAA addresses.
- File: a YAML (or JSON, which is YAML) list of endpoint mappings with the keys of
  `clusters[].endpoints[]`; re-read when its modification time or size changes.
- A failed lookup or a bad file keeps the last good set (an outage of the resolver must not
  empty a cluster) and is remembered in `errors` for the admin API; an empty answer too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from bascule.config.schema import ClusterConfig, DiscoveryConfig, EndpointConfig
from bascule.config.units import format_address

EndpointSpec = dict[str, Any]
OnChange = Callable[[str, list[EndpointSpec]], None]


def _static(cluster: ClusterConfig) -> list[EndpointSpec]:
    return [
        e.model_dump(mode="json", exclude_defaults=True) | {"address": format_address(e.address)}
        for e in cluster.endpoints
    ]


class Discovery:
    def __init__(self, clusters: Sequence[ClusterConfig], on_change: OnChange) -> None:
        self.clusters = [c for c in clusters if c.discovery is not None]
        self.on_change = on_change
        self.known: dict[str, list[EndpointSpec]] = {}
        self.errors: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._file_stamp: dict[str, tuple[float, int]] = {}

    def current(self) -> dict[str, list[EndpointSpec]]:
        """The last known set of every discovered cluster (for a worker that starts now)."""
        return dict(self.known)

    async def run(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(c)) for c in self.clusters]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _loop(self, cluster: ClusterConfig) -> None:
        spec = cluster.discovery
        assert spec is not None
        while True:
            await self.refresh(cluster)
            await asyncio.sleep(spec.interval)

    async def refresh(self, cluster: ClusterConfig) -> None:
        """Look once; on a change, tell on_change."""
        spec = cluster.discovery
        assert spec is not None
        found: list[EndpointSpec] | None
        try:
            if spec.dns is not None:
                found = await resolve(spec)
            else:
                found = self._read_file(cluster.name, spec)
                if found is None:
                    return  # unchanged file
        except Exception as e:  # any lookup failure keeps the last good set
            self.errors[cluster.name] = f"{type(e).__name__}: {e}"
            return
        if not found:
            self.errors[cluster.name] = "no endpoints found; keeping the last set"
            return
        self.errors.pop(cluster.name, None)
        endpoints = _static(cluster)
        listed = {e["address"] for e in endpoints}
        endpoints += [e for e in found if e["address"] not in listed]
        if self.known.get(cluster.name) != endpoints:
            self.known[cluster.name] = endpoints
            self.on_change(cluster.name, endpoints)

    def _read_file(self, name: str, spec: DiscoveryConfig) -> list[EndpointSpec] | None:
        assert spec.file is not None
        st = os.stat(spec.file)
        stamp = (st.st_mtime, st.st_size)
        if self._file_stamp.get(name) == stamp and name in self.known:
            return None
        with open(spec.file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if not isinstance(data, list):
            raise ValueError(f"{spec.file}: expected a list of endpoints")
        endpoints = []
        for item in data:
            endpoint = EndpointConfig.model_validate(item)  # the same rules as the config's
            endpoints.append(
                endpoint.model_dump(mode="json", exclude_defaults=True)
                | {"address": format_address(endpoint.address)}
            )
        self._file_stamp[name] = stamp
        return endpoints


async def resolve(spec: DiscoveryConfig) -> list[EndpointSpec]:
    """Ask DNS for the endpoints of one name, as endpoint specs."""
    import dns.asyncresolver
    import dns.rdatatype
    import dns.resolver

    assert spec.dns is not None
    if spec.resolver is not None:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [spec.resolver[0]]
        resolver.port = spec.resolver[1]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = min(5.0, spec.interval)
    defaults = spec.endpoint.model_dump(exclude_defaults=True) if spec.endpoint else {}

    async def addresses(name: str, record: str) -> list[str]:
        found: list[str] = []
        for rdtype in ("A", "AAAA") if record == "A+AAAA" else (record,):
            try:
                answer = await resolver.resolve(name, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            found += [r.address for r in answer]
        return sorted(found)

    if spec.record != "SRV":
        assert spec.port is not None
        return [
            {**defaults, "address": format_address((a, spec.port))}
            for a in await addresses(spec.dns, spec.record)
        ]
    answer = await resolver.resolve(spec.dns, "SRV")
    records = list(answer)
    if not records:
        return []
    best = min(r.priority for r in records)
    endpoints: list[EndpointSpec] = []
    seen: set[str] = set()
    for r in sorted(records, key=lambda r: (r.priority, str(r.target), r.port)):
        for a in await addresses(str(r.target), "A+AAAA"):
            address = format_address((a, r.port))
            if address in seen:
                continue
            seen.add(address)
            entry: EndpointSpec = {**defaults, "address": address}
            entry["weight"] = max(1, min(1000, r.weight))
            if r.priority != best:
                entry["backup"] = True
            endpoints.append(entry)
    return endpoints
