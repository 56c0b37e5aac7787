"""The `services:` section: a VIP, port and protocol served by the kernel in `nat` or `dsr` mode.

Rules of this module:
- Models are frozen and forbid unknown keys, like the rest of the schema (schema.py).
- Everything that can be checked without touching the machine is checked here: address
  families, MAC syntax, port ranges, which balancers a mode can run. What needs the machine
  (is the interface there, is the VIP on it, can a MAC be resolved) is checked by
  `bascule.packet.apply` before anything is programmed.
- Addresses are stored as normalised strings (`ipaddress`'s compressed form), MACs as lower-case
  `aa:bb:cc:dd:ee:ff`, so that two spellings of one service compare equal and diff as unchanged.
- A bad value raises ValueError whose message names the value and the fix; the loader adds the
  file, line and key path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from bascule.config.units import Duration

SERVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# Linux IFNAMSIZ is 16 bytes with the NUL; '/' and whitespace are refused by the kernel, ':' is
# the old alias syntax, and nft quotes the name, so '"' must not appear either.
_IFNAME = re.compile(r'^[^\s/:"]{1,15}$')
_MAC = re.compile(r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")

Mode = Literal["nat", "dsr"]
Protocol = Literal["tcp", "udp"]
ServiceBalancer = Literal["maglev", "round_robin", "weighted", "source_hash"]

# DSR keeps no connection state in the kernel beyond an expiring flow map, so a flow whose map
# entry expired must land on the same endpoint again: only hash balancers give that.
DSR_BALANCERS: frozenset[str] = frozenset({"maglev", "source_hash"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ip(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an IP address string, got {value!r}")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(
            f"{what} must be an IPv4 or IPv6 address such as 198.18.0.100 or 2001:db8::1, "
            f"got {value!r}"
        ) from None


class ServiceEndpoint(_Model):
    """One real server of a service. Its port is the service's port (NAT and DSR keep it)."""

    address: str
    mac: str | None = None  # DSR only; resolved from the neighbour table when absent
    weight: int = Field(1, ge=0, le=1000)  # 0 drains: no new flows, existing ones finish

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: object) -> str:
        return _ip(value, "endpoint address")

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not _MAC.match(value.strip()):
            raise ValueError(
                f"mac must be six hex bytes separated by colons, such as 02:00:00:00:00:12, "
                f"got {value!r}"
            )
        mac = value.strip().lower()
        if int(mac[:2], 16) & 1:
            raise ValueError(f"mac {mac} is a multicast address; an endpoint needs a unicast MAC")
        return mac


class TcpCheck(_Model):
    port: int | None = Field(None, ge=1, le=65535)  # None: the service's port


class ServiceHealth(_Model):
    tcp: TcpCheck = TcpCheck(port=None)
    interval: Duration = 1.0
    timeout: Duration = 1.0
    rise: int = Field(2, ge=1, le=100)  # consecutive successes that bring an endpoint up
    fall: int = Field(3, ge=1, le=100)  # consecutive failures that take it down

    @model_validator(mode="after")
    def _positive(self) -> ServiceHealth:
        if self.interval <= 0:
            raise ValueError("health interval must be more than 0, such as 1s")
        if self.timeout <= 0:
            raise ValueError("health timeout must be more than 0, such as 1s")
        return self


class ServiceConfig(_Model):
    """A VIP:port/protocol that the kernel balances over endpoints in `nat` or `dsr` mode."""

    name: Annotated[str, Field(pattern=SERVICE_NAME_PATTERN, max_length=64)]
    vip: str
    port: int = Field(ge=1, le=65535)
    protocol: Protocol = "tcp"
    mode: Mode
    interface: str
    balancer: ServiceBalancer = "maglev"
    endpoints: list[ServiceEndpoint] = Field(min_length=1, max_length=1024)
    health: ServiceHealth | None = None  # None: endpoints are always considered up

    @field_validator("vip", mode="before")
    @classmethod
    def _vip(cls, value: object) -> str:
        return _ip(value, "vip")

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str) -> str:
        if not _IFNAME.match(value):
            raise ValueError(
                f"interface must be a Linux interface name (1 to 15 characters, no '/', ':', "
                f"quotes or spaces), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        family = ipaddress.ip_address(self.vip).version
        seen: set[str] = set()
        for endpoint in self.endpoints:
            if ipaddress.ip_address(endpoint.address).version != family:
                raise ValueError(
                    f"endpoint {endpoint.address} is IPv"
                    f"{ipaddress.ip_address(endpoint.address).version} but vip {self.vip} is "
                    f"IPv{family}; NAT and DSR cannot change the address family"
                )
            if endpoint.address in seen:
                raise ValueError(f"duplicate endpoint {endpoint.address}")
            if endpoint.address == self.vip:
                raise ValueError(f"endpoint {endpoint.address} is the vip itself")
            seen.add(endpoint.address)
            if endpoint.mac is not None and self.mode != "dsr":
                raise ValueError(
                    f"endpoint {endpoint.address}: mac is used only in dsr mode; remove it"
                )
        if self.mode == "dsr" and self.balancer not in DSR_BALANCERS:
            raise ValueError(
                f"balancer {self.balancer!r} cannot be used in dsr mode: the kernel keeps no "
                f"connection state there, so a flow must hash to the same endpoint every time; "
                f"use one of {', '.join(sorted(DSR_BALANCERS))}"
            )
        if not any(e.weight > 0 for e in self.endpoints):
            raise ValueError("at least one endpoint needs a weight above 0")
        return self

    @property
    def family(self) -> Literal[4, 6]:
        return 4 if ipaddress.ip_address(self.vip).version == 4 else 6

    @property
    def health_port(self) -> int:
        """The port health checks connect to on each endpoint."""
        if self.health is not None and self.health.tcp.port is not None:
            return self.health.tcp.port
        return self.port


def nft_identifier(service_name: str) -> str:
    """The service's name as an nft set/map name suffix: only letters, digits and '_'."""
    return re.sub(r"[^A-Za-z0-9_]", "_", service_name)


def check_services(services: Sequence[ServiceConfig]) -> Sequence[ServiceConfig]:
    """Rules across services: unique names, one service per VIP:port/protocol."""
    names: dict[str, str] = {}
    listens: dict[tuple[str, int, str], str] = {}
    for service in services:
        ident = nft_identifier(service.name)
        if ident in names:
            other = names[ident]
            raise ValueError(
                f"service names {other!r} and {service.name!r} clash"
                if other != service.name
                else f"duplicate service name {service.name!r}"
            )
        names[ident] = service.name
        key = (service.vip, service.port, service.protocol)
        if key in listens:
            raise ValueError(
                f"services {listens[key]!r} and {service.name!r} both claim "
                f"{service.vip} port {service.port}/{service.protocol}"
            )
        listens[key] = service.name
    interfaces: dict[str, str] = {}
    for service in services:
        if service.mode != "dsr":
            continue
        # One netdev table per interface, named from it: two names must not make one table.
        ident = nft_identifier(service.interface)
        if interfaces.setdefault(ident, service.interface) != service.interface:
            raise ValueError(
                f"interfaces {interfaces[ident]!r} and {service.interface!r} would share one "
                "nft table name; rename one"
            )
        # Non-first fragments carry no port: the DSR fragment rule matches VIP and protocol,
        # so a UDP DSR service needs its VIP and protocol to itself. (TCP sets Don't Fragment
        # and sizes segments to the path: its fragments do not occur in practice.)
        if service.protocol != "udp":
            continue
        for peer in services:
            if (
                peer is not service
                and peer.vip == service.vip
                and peer.protocol == service.protocol
            ):
                raise ValueError(
                    f"dsr service {service.name!r} needs {service.vip}/{service.protocol} to "
                    f"itself (fragments carry no port), but {peer.name!r} uses it too"
                )
    return services


def _check_list(services: list[ServiceConfig]) -> list[ServiceConfig]:
    check_services(services)
    return services


# What the root config declares: `services: ServiceList = []`.
ServiceList = Annotated[list[ServiceConfig], AfterValidator(_check_list)]
