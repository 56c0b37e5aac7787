"""ServiceManager: what the supervisor calls to keep the kernel's nft tables equal to the config
and the endpoints' health.

Rules of this module:
- `start` checks everything first (privileges, interfaces, VIPs, MACs), then replaces bascule's
  tables in one transaction, which also reconciles a table left by a killed run.
- `reconcile` recomputes each service's slot table from config and health (no history, so
  every LB with the same inputs holds the same tables) and applies the smallest transaction:
  only changed slots when the services' structure is unchanged, the whole program otherwise.
  When a DSR endpoint goes down its pinned flows are unpinned in the same transaction, so they
  move at once instead of blackholing until their timeout; a drained endpoint (weight 0) keeps
  its pinned flows.
- Health is keyed `"<service name>/<endpoint address>"`; a missing key means up.
- NAT over UDP: an endpoint that goes down or leaves the config has its conntrack entries
  flushed after the transaction, or a client that keeps its source port (a resolver) would stay
  NAT'd to it until the entry expires. A drained endpoint (weight 0) keeps them.
- `stop` removes the tables this manager programmed; it is safe to call twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bascule.config.services import ServiceConfig
from bascule.packet import apply, nft
from bascule.packet.nft import ServiceState, TableId


def health_key(service: ServiceConfig, address: str) -> str:
    return f"{service.name}/{address}"


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    service: str
    address: str
    value: str  # what the slots hold: the address (nat) or the MAC (dsr)
    up: bool
    weight: int
    slots: int


def gone_udp_nat_endpoints(
    old: Mapping[str, ServiceState],
    old_health: Mapping[str, bool],
    states: Sequence[ServiceState],
    health: Mapping[str, bool],
) -> list[tuple[ServiceConfig, str]]:
    """UDP NAT endpoints that took new flows before and take none now (down or removed).

    Their conntrack entries must go: UDP "connections" never end by themselves, so without a
    flush a client would keep reaching a dead endpoint. Drained ones (weight 0) keep theirs.
    """
    now = {s.service.name: s.service for s in states}
    gone: list[tuple[ServiceConfig, str]] = []
    for name, before in old.items():
        service = before.service
        if service.mode != "nat" or service.protocol != "udp":
            continue
        after = now.get(name)
        kept = {} if after is None else {e.address: e for e in after.endpoints}
        for endpoint in service.endpoints:
            key = health_key(service, endpoint.address)
            if endpoint.weight == 0 or not old_health.get(key, True):
                continue  # it took no new flows before either
            if endpoint.address in kept and health.get(key, True):
                continue  # still up (weight 0 drains: its flows finish)
            gone.append((service, endpoint.address))
    return gone


class ServiceManager:
    """Owns bascule's nft tables in one network namespace (None: this process's)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._states: dict[str, ServiceState] = {}
        self._values: dict[str, dict[str, str]] = {}  # service → endpoint address → slot value
        self._lb_macs: dict[str, str] = {}
        self._health: dict[str, bool] = {}
        self._unpin: dict[str, set[str]] = {}  # service → MACs of dead endpoints still pinned
        self._tables: set[TableId] = set()
        self.last_program = ""  # the last transaction applied, for logs and tests
        self.flushed = 0  # UDP conntrack entries flushed so far, for logs and tests

    # -------------------------------------------------------------- supervisor API

    def start(self, services: Sequence[ServiceConfig]) -> None:
        """Program every service (all endpoints up until health says otherwise)."""
        states = self._prepare(services, {})
        self._apply_replace(states, {})

    def reconcile(self, services: Sequence[ServiceConfig], health: Mapping[str, bool]) -> str:
        """Bring the kernel to these services and this health; return the transaction run."""
        old = dict(self._states)
        states = self._prepare(services, health)
        same_structure = set(old) == {s.service.name for s in states} and all(
            nft.structure_key(old[s.service.name]) == nft.structure_key(s) for s in states
        )
        old_health = dict(self._health)
        if not same_structure:
            self._apply_replace(states, health)
            self._flush_gone(old, old_health, states, health)
            return self.last_program
        slots = "".join(nft.slot_diff(old[s.service.name], s) for s in states)
        for state in states:
            self._note_dead(state, health)
        # Slots first: once no slot names a dead endpoint, no new flow can be pinned to it,
        # so the flows listed afterwards are all there is to unpin.
        if slots:
            apply.run_nft(slots, self.netns)
        self._commit(states, health)
        program = slots + self._unpin_dead()
        self.last_program = program
        self._flush_gone(old, old_health, states, health)
        return program

    def stop(self) -> None:
        """Remove the tables this manager made."""
        if self._tables:
            apply.remove(self._tables, self.netns)
        self._tables = set()
        self._states = {}

    def status(self) -> list[EndpointStatus]:
        """Each endpoint of each programmed service: health, weight and slots held."""
        rows = []
        for name, state in self._states.items():
            counts: dict[str, int] = {}
            for value in state.slots:
                counts[value] = counts.get(value, 0) + 1
            for endpoint in state.service.endpoints:
                value = self._values[name][endpoint.address]
                rows.append(
                    EndpointStatus(
                        name,
                        endpoint.address,
                        value,
                        self._health.get(health_key(state.service, endpoint.address), True),
                        endpoint.weight,
                        counts.get(value, 0),
                    )
                )
        return rows

    @property
    def states(self) -> Mapping[str, ServiceState]:
        return self._states

    # -------------------------------------------------------------- internals

    def _prepare(
        self, services: Sequence[ServiceConfig], health: Mapping[str, bool]
    ) -> list[ServiceState]:
        new_interfaces = {s.interface for s in services} - set(self._lb_macs)
        if new_interfaces or not self._states:
            self._lb_macs.update(apply.preflight(services, self.netns))
        states = []
        for index, service in enumerate(services):
            known = self._values.get(service.name, {})
            if {e.address for e in service.endpoints} - set(known) or any(
                e.mac is not None and known.get(e.address) != e.mac for e in service.endpoints
            ):
                known = apply.endpoint_values(index, service, self.netns)
            self._values[service.name] = known
            up = {
                e.address: health.get(health_key(service, e.address), True)
                for e in service.endpoints
            }
            states.append(
                ServiceState(
                    service,
                    nft.compute_slots(service, up, known),
                    self._lb_macs.get(service.interface) if service.mode == "dsr" else None,
                )
            )
        return states

    def _note_dead(self, after: ServiceState, health: Mapping[str, bool]) -> None:
        """Remember the MACs of DSR endpoints that just went down: their flows must go."""
        service = after.service
        if not nft.has_flow_map(service):
            return
        dead = {
            self._values[service.name][e.address]
            for e in service.endpoints
            if not health.get(health_key(service, e.address), True)
            and self._health.get(health_key(service, e.address), True)
        }
        if dead:
            self._unpin.setdefault(service.name, set()).update(dead)

    def _unpin_dead(self, attempts: int = 3) -> str:
        """Delete the flows pinned to dead endpoints; what fails is tried again next time.

        A listed flow may expire before the delete runs, and deleting a missing element
        fails the whole transaction (nft 1.0.6 has no `destroy`): list again and retry.
        """
        done = []
        for name, dead in list(self._unpin.items()):
            state = self._states.get(name)
            if state is None:
                del self._unpin[name]
                continue
            service = state.service
            for _ in range(attempts):
                flows = apply.list_flows(service, self.netns)
                deletes = nft.flow_deletes(service, [(a, p) for a, p, mac in flows if mac in dead])
                try:
                    if deletes:
                        apply.run_nft(deletes, self.netns)
                except apply.PacketError:
                    continue
                done.append(deletes)
                del self._unpin[name]
                break
        return "".join(done)

    def _flush_gone(
        self,
        old: Mapping[str, ServiceState],
        old_health: Mapping[str, bool],
        states: Sequence[ServiceState],
        health: Mapping[str, bool],
    ) -> None:
        """Flush the UDP conntrack entries of NAT endpoints that were up and are not any more."""
        for service, address in gone_udp_nat_endpoints(old, old_health, states, health):
            self.flushed += apply.flush_conntrack(service, address, self.netns)

    def _apply_replace(self, states: list[ServiceState], health: Mapping[str, bool]) -> None:
        program_tables = nft.tables_for(s.service for s in states)
        stale = (apply.bascule_tables(self.netns) | self._tables) - program_tables
        program = nft.replace_program(states, remove=stale)
        apply.run_nft(program, self.netns)
        self._tables = program_tables
        self._commit(states, health)
        self.last_program = program

    def _commit(self, states: list[ServiceState], health: Mapping[str, bool]) -> None:
        self._states = {s.service.name: s for s in states}
        self._health = dict(health)
