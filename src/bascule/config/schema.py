"""The config schema: what a bascule config file may say, as frozen pydantic models.

Rules of this module:
- Every model forbids unknown keys (a typo is an error, not a silent default) and is frozen:
  a loaded config is a snapshot, swapped whole on reload, never edited in place.
- Every default lives here, next to its field, and is documented in the README's config
  reference; change both together.
- Durations are float seconds, sizes int bytes, addresses (host, port) (see units.py).
- Cross-references (a route naming a cluster) are checked in `Config`, so the error names the
  key that refers to something missing.
- A validator that knows which key below its model is wrong raises `PathError` with that key's
  path (relative to the model), so the loader can name the key and its line, not just the model.
- A check across fields is a field validator on the last field it reads, taking the others from
  `info.data` and skipping when one of them failed (it is then absent): pydantic skips a model's
  "after" validators when any field fails, which would hide the check until that field is
  fixed. Such a validator raises `SiblingError`, whose path is relative to its model.
- Checks across the whole file (names, references, addresses) live in checks.py; `Config` runs
  them when everything else is valid, the loader runs them over the parts that are.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bascule.config.services import ServiceList
from bascule.config.units import Address, Duration, PositiveDuration, Size

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a header name
_BAD_VALUE = re.compile(r"[\r\n\x00]")
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- clusters


class EndpointConfig(Model):
    address: Address
    weight: int = Field(default=1, ge=0, le=1000)
    backup: bool = False
    max_connections: int = Field(default=0, ge=0)
    slow_start: Duration = 0.0  # after turning healthy, weight ramps from 10% to 100% over this
    drain: bool = False  # no new requests; those in flight finish
    disable: bool = False  # no traffic, and health checks do not bring it back
    check_address: Address | None = None  # health checks go here instead of `address`

    @field_validator("address")
    @classmethod
    def _real_port(cls, value: tuple[str, int]) -> tuple[str, int]:
        # Port 0 means "any port" when binding (listeners in tests use it), but nothing can be
        # reached at port 0, so for an endpoint it is always a mistake.
        if value[1] == 0:
            raise ValueError("port 0 is not a port an endpoint can listen on")
        return value


class ClusterTimeouts(Model):
    connect: Duration = 5.0
    response_header: Duration = 60.0  # from the request's last byte to the response head
    idle: Duration = 60.0  # upstream silence while a response body streams
    total: Duration = 0.0  # whole exchange; 0 disables


class PoolConfig(Model):
    max_idle: int = Field(default=64, ge=0)  # idle keep-alive connections kept per endpoint
    idle_timeout: Duration = 30.0


class RetryConfig(Model):
    # retries after the first try, each to another endpoint
    attempts: int = Field(default=2, ge=0, le=10)


class HashKey(Model):
    """What a keyed balancer hashes: exactly one of these. `source_ip` and `uri` may be given
    as a bare string (`hash_key: source_ip`)."""

    source_ip: bool = False
    uri: bool = False  # the request target, path and query
    header: str | None = None
    cookie: str | None = None
    query: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, value: object) -> object:
        if value in ("source_ip", "uri"):
            return {value: True}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> HashKey:
        given = [k for k in ("header", "cookie", "query") if getattr(self, k) is not None]
        given += [k for k in ("source_ip", "uri") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of source_ip, uri, header, cookie, query"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.header is not None and not _TOKEN.fullmatch(self.header):
            raise PathError(("header",), f"{self.header!r} is not a valid header name")
        return self


StatusRange = Annotated[str, Field(pattern=r"^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$")]


class HealthCheckConfig(Model):
    """Active health checks of every endpoint of a cluster, run by the supervisor."""

    kind: Literal["tcp", "http"] = "tcp"
    interval: PositiveDuration = 5.0
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)  # share of `interval` added or removed
    timeout: PositiveDuration = 2.0
    rise: int = Field(default=2, ge=1, le=100)  # consecutive successes to come back
    fall: int = Field(default=3, ge=1, le=100)  # consecutive failures to go down
    port: int | None = Field(default=None, ge=1, le=65535)  # check this port, not the endpoint's
    method: str = Field(default="GET", pattern=r"^[A-Z]+$")
    path: str = "/"
    host: str | None = None  # the Host header; default: the endpoint's address
    expect_status: list[StatusRange] = Field(default=["200-399"], min_length=1)
    expect_body: str | None = None  # the body must contain this text

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or _BAD_VALUE.search(value) or " " in value:
            raise ValueError(f"must start with '/' and contain no spaces or CR/LF, got {value!r}")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (_BAD_VALUE.search(value) or not value.strip()):
            raise ValueError("a host header must be non-empty, without CR, LF or NUL")
        return value

    @field_validator("expect_status")
    @classmethod
    def _ranges(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            low, _, high = text.partition("-")
            if high and int(high) < int(low):
                raise PathError((i,), f"status range {text!r} ends before it starts")
        return value


class OutlierConfig(Model):
    """Passive health: endpoints that fail in a row are ejected for a while (Envoy's)."""

    consecutive_failures: int = Field(default=5, ge=1, le=1000)  # 5xx, connect errors, timeouts
    base_ejection_time: Duration = 30.0  # grows with each repeated ejection
    max_ejection_time: Duration = 300.0
    max_ejection_percent: int = Field(default=10, ge=0, le=100)  # at least one may always be


class ClusterLimits(Model):
    """Circuit breaking: beyond these, a fast 503 (or a wait in the queue)."""

    max_requests: int = Field(default=0, ge=0)  # in flight in the cluster, per worker; 0: none
    max_connections: int = Field(default=0, ge=0)  # open to its endpoints, per worker; 0: none
    max_pending: int = Field(default=0, ge=0)  # requests waiting for an endpoint; 0: no queue
    queue_timeout: Duration = 5.0  # how long a request may wait in that queue


class StickyConfig(Model):
    """Cookie persistence: bascule sets a signed cookie naming the endpoint that answered."""

    cookie: str = Field(default="bascule_sticky", pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
    secret: str | None = None  # HMAC key; default: random at each start, shared by the workers
    max_age: Duration | None = None  # default: a session cookie
    path: str = "/"


class EndpointDefaults(Model):
    """What discovered endpoints get (a DNS answer only says addresses)."""

    weight: int = Field(default=1, ge=0, le=1000)
    max_connections: int = Field(default=0, ge=0)
    slow_start: Duration = 0.0


class DiscoveryConfig(Model):
    """Where a cluster's endpoints come from besides `endpoints`: a DNS name or a file."""

    dns: str | None = None  # a name to resolve on every interval
    record: Literal["A", "AAAA", "A+AAAA", "SRV"] = "A+AAAA"  # SRV gives port and weight too
    port: int | None = Field(default=None, ge=1, le=65535)  # for A/AAAA answers
    resolver: Address | None = None  # a nameserver to ask; default: the system's
    file: str | None = None  # a YAML or JSON list of endpoints, re-read when it changes
    interval: PositiveDuration = 30.0
    endpoint: EndpointDefaults | None = None  # settings for every discovered endpoint

    @model_validator(mode="after")
    def _one_source(self) -> DiscoveryConfig:
        if (self.dns is None) == (self.file is None):
            raise ValueError("give exactly one of dns, file")
        if self.dns is not None and self.record != "SRV" and self.port is None:
            raise PathError(("port",), f"{self.record} records carry no port: give port")
        return self


class ClusterConfig(Model):
    name: Name
    balancer: str = "round_robin"  # any name in bascule.balance.BALANCERS
    balancer_options: dict[str, int | float | None] = {}
    # validate_default: the checks below must run when these keys are absent too.
    hash_key: HashKey | None = Field(default=None, validate_default=True)  # for keyed balancers
    endpoints: list[EndpointConfig] = []  # at least one, unless `discovery` finds them
    discovery: DiscoveryConfig | None = Field(default=None, validate_default=True)
    timeouts: ClusterTimeouts = ClusterTimeouts()
    pool: PoolConfig = PoolConfig()
    retries: RetryConfig = RetryConfig()
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierConfig | None = None
    limits: ClusterLimits = ClusterLimits()
    sticky: StickyConfig | None = None
    # `client`: connect to endpoints from the client's own address (transparent proxying: the
    # endpoint sees the client; Linux, root; its replies must route through this host). A
    # connection made for one client is never reused for another: such clusters pool nothing.
    source_address: Literal["lb", "client"] = "lb"

    @field_validator("balancer")
    @classmethod
    def _known_balancer(cls, value: str) -> str:
        from bascule.balance import BALANCERS

        if value not in BALANCERS:
            raise ValueError(f"unknown balancer {value!r}; known: {', '.join(sorted(BALANCERS))}")
        return value

    @field_validator("balancer_options")
    @classmethod
    def _balancer_options(
        cls, value: dict[str, int | float | None], info: ValidationInfo
    ) -> dict[str, int | float | None]:
        from bascule.balance import make_balancer

        balancer = info.data.get("balancer")
        if value and balancer is not None:
            try:
                make_balancer(balancer, (), **value)
            except ValueError as e:
                key = next(iter(value))
                for name in value:
                    if repr(name) in str(e):
                        key = name
                raise PathError((key,), str(e)) from e
        return value

    @field_validator("hash_key")
    @classmethod
    def _hash_key_fits(cls, value: HashKey | None, info: ValidationInfo) -> HashKey | None:
        from bascule.balance import KEYED

        balancer = info.data.get("balancer")
        if balancer is None:
            return value  # the balancer itself is wrong: said there
        if balancer in KEYED and balancer != "source_ip" and value is None:
            raise SiblingError(
                ("balancer",),
                f"balancer {balancer!r} hashes a key: give hash_key "
                "(source_ip, uri, header, cookie or query)",
            )
        if value is not None and balancer not in KEYED:
            raise ValueError(
                f"balancer {balancer!r} ignores keys; hash_key needs one of "
                f"{', '.join(sorted(KEYED))}"
            )
        return value

    @field_validator("endpoints")
    @classmethod
    def _unique_endpoints(cls, value: list[EndpointConfig]) -> list[EndpointConfig]:
        seen: set[tuple[str, int]] = set()
        for i, endpoint in enumerate(value):
            if endpoint.address in seen:
                host, port = endpoint.address
                raise PathError((i, "address"), f"duplicate endpoint {host}:{port}")
            seen.add(endpoint.address)
        return value

    @field_validator("discovery")
    @classmethod
    def _some_endpoint(
        cls, value: DiscoveryConfig | None, info: ValidationInfo
    ) -> DiscoveryConfig | None:
        # Absent from info.data when they failed: then that failure is the one to report.
        if value is None and info.data.get("endpoints") == []:
            raise SiblingError(
                ("endpoints",), "a cluster needs at least one endpoint, or discovery"
            )
        return value


# ---------------------------------------------------------------- routes


class HeaderMatch(Model):
    """Match a header (or query parameter, or cookie) by exact value, regex, or presence."""

    name: str = Field(min_length=1)
    value: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> HeaderMatch:
        given = [x for x in (self.value, self.regex, self.present) if x is not None]
        if len(given) > 1:
            raise ValueError("give at most one of value, regex, present")
        if self.regex is not None:
            try:
                _check_regex(self.regex)
            except ValueError as e:
                raise PathError(("regex",), str(e)) from e
        return self


class RouteMatch(Model):
    host: str | None = None  # exact, or `*.example.com` for any subdomain
    path: str | None = None  # exact path
    path_prefix: str | None = None
    path_regex: str | None = None  # matched against the whole path (re.fullmatch)
    method: list[str] | None = None
    headers: list[HeaderMatch] = []
    query: list[HeaderMatch] = []
    cookies: list[HeaderMatch] = []

    @field_validator("method", mode="before")
    @classmethod
    def _methods(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("method")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [m.upper() for m in value]

    @field_validator("path", "path_prefix")
    @classmethod
    def _slash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value

    @field_validator("path_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            _check_regex(value)
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "*" in value and not (value.startswith("*.") and "*" not in value[2:]):
            raise ValueError(f"wildcards are only allowed as a leading '*.', got {value!r}")
        return value.lower()


class WeightedCluster(Model):
    cluster: Name
    weight: int = Field(ge=0, le=10000)


class Redirect(Model):
    location: str | None = None  # absolute target; or build one from the parts below
    scheme: str | None = None
    host: str | None = None
    path: str | None = None
    status: Literal[301, 302, 303, 307, 308] = 302
    keep_query: bool = True

    @model_validator(mode="after")
    def _target(self) -> Redirect:
        parts = [p for p in ("scheme", "host", "path") if getattr(self, p) is not None]
        if self.location is None and not parts:
            # With nothing to change, the redirect would point at itself: a loop for the client.
            raise ValueError("a redirect needs location, or at least one of scheme, host, path")
        if self.location is not None and parts:
            raise PathError((parts[0],), "give either location or scheme/host/path, not both")
        if self.path is not None and not self.path.startswith("/"):
            raise PathError(("path",), f"must start with '/', got {self.path!r}")
        return self


class DirectResponse(Model):
    status: int = Field(default=200, ge=200, le=599)
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


class HeaderEdits(Model):
    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []

    @model_validator(mode="after")
    def _wire_safe(self) -> HeaderEdits:
        # These go onto the wire verbatim: a CR or LF in them would split the message (header
        # injection), and a name outside RFC 9110's token grammar makes a message peers reject.
        for key in ("set", "add"):
            for name, value in getattr(self, key).items():
                if not _TOKEN.fullmatch(name):
                    raise PathError((key, name), f"{name!r} is not a valid header name")
                if _BAD_VALUE.search(value):
                    raise PathError((key, name), "header values must not contain CR, LF or NUL")
        for i, name in enumerate(self.remove):
            if not _TOKEN.fullmatch(name):
                raise PathError(("remove", i), f"{name!r} is not a valid header name")
        return self


class RouteConfig(Model):
    name: str | None = None
    match: RouteMatch = RouteMatch()
    cluster: Name | None = None
    split: list[WeightedCluster] | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite_path_prefix: str | None = None  # replaces the matched path_prefix
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()
    buffer_request: bool = False  # read the whole body before choosing an endpoint: retryable
    max_request_body: Size | None = None  # 413 above it; default: the listener's limit

    @model_validator(mode="after")
    def _one_action(self) -> RouteConfig:
        actions = [
            a
            for a in ("cluster", "split", "redirect", "direct_response")
            if getattr(self, a) is not None
        ]
        message = "a route needs exactly one action: cluster, split, redirect or direct_response"
        if not actions:
            raise ValueError(message)
        if len(actions) > 1:
            # Point at the second action: the first one is the likely intent.
            raise PathError((actions[1],), f"{message} (got {', '.join(actions)})")
        if self.split is not None and sum(w.weight for w in self.split) <= 0:
            raise PathError(("split",), "split weights must not all be zero")
        if self.rewrite_path_prefix is not None and self.match.path_prefix is None:
            raise PathError(("rewrite_path_prefix",), "rewrite_path_prefix needs match.path_prefix")
        return self


# ---------------------------------------------------------------- listeners


class ForwardedConfig(Model):
    """Which client-identity headers bascule adds to requests it forwards."""

    x_forwarded_for: bool = True
    x_forwarded_proto: bool = True
    x_forwarded_host: bool = True
    forwarded: bool = True  # RFC 7239
    via: bool = True


class ListenerTimeouts(Model):
    request_header: Duration = 10.0  # whole request head must arrive within this (slowloris)
    idle: Duration = 60.0  # keep-alive wait for the next request
    request_body: Duration = 60.0  # client silence while a request body streams
    drain: Duration = 30.0  # on shutdown, in-flight exchanges get this long to finish


class ListenerLimits(Model):
    max_uri: Size = 8192  # 414 above it
    max_header_size: Size = 65536  # whole request head; 431 above it
    max_headers: int = Field(default=100, ge=1)  # 431 above it
    max_request_body: Size = 0  # 413 above it; 0 means no limit for streamed bodies
    max_buffered_body: Size = 10 * 1024 * 1024  # limit for `buffer_request` routes
    # per worker: at it, the oldest idle keep-alive connection is closed, else accepting pauses
    max_connections: int = Field(default=10000, ge=1)
    max_connections_per_client: int = Field(default=0, ge=0)  # per peer address; 0: no limit
    min_body_rate: Size = 0  # bytes/s a request body must average per window; 0: no minimum
    body_rate_window: Duration = Field(default=5.0, gt=0)  # the window; the first is the grace


class ListenerConfig(Model):
    name: Name
    address: Address
    # http: routes; tcp and udp (L4 full proxy, l4/): one cluster, no routes.
    protocol: Literal["http", "tcp", "udp"] = "http"
    routes: list[RouteConfig] = []
    cluster: Name | None = None  # tcp and udp listeners: the cluster every session goes to
    # tcp listeners: `splice` moves bytes kernel to kernel (os.splice through a pipe); `buffered`
    # reads them into bascule, for when something must see them (and where splice is missing)
    relay: Literal["splice", "buffered"] = "splice"
    trusted_proxies: list[str] = []  # CIDRs whose forwarding headers are appended to, not replaced
    forwarded: ForwardedConfig = ForwardedConfig()
    timeouts: ListenerTimeouts = ListenerTimeouts()
    limits: ListenerLimits = ListenerLimits()
    server_name: str = "bascule"  # the `by`/Via name of this proxy
    # Request rules (codec/path.py, codec/headers.py); Envoy's names where it has them.
    normalize_path: bool = True  # RFC 3986 normalisation of the path routes match and forward
    merge_slashes: bool = True  # `//` becomes `/`
    path_with_escaped_slashes: Literal["keep", "reject", "unescape"] = "keep"  # %2F and %5C
    headers_with_underscores: Literal["allow", "drop", "reject"] = "allow"

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for i, cidr in enumerate(value):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as e:
                raise PathError((i,), f"{cidr!r} is not a CIDR such as 10.0.0.0/8") from e
        return value

    @model_validator(mode="after")
    def _protocol_keys(self) -> ListenerConfig:
        # Each protocol has its own way to the clusters: refuse the other's key, by name.
        if self.protocol == "http":
            if self.cluster is not None:
                raise PathError(("cluster",), "http listeners take routes, not cluster")
            if not self.routes:
                raise PathError(("routes",), "an http listener needs at least one route")
        else:
            if "routes" in self.model_fields_set:
                raise PathError(("routes",), f"{self.protocol} listeners take cluster, not routes")
            if self.cluster is None:
                raise PathError(("cluster",), f"a {self.protocol} listener needs a cluster")
        return self


# ---------------------------------------------------------------- root


class AccessLogConfig(Model):
    path: str | None = "-"  # '-' is standard output; null turns the access log off
    format: Literal["json", "combined"] = "json"


class AdminConfig(Model):
    """The admin API (`GET /clusters`), served by the supervisor; keep it on loopback."""

    address: Address


class LogConfig(Model):
    """Where the supervisor's event lines go (health, workers, discovery, drain)."""

    path: str = Field(default="stderr", min_length=1)  # `stderr`, `stdout` or a file to append to
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"  # the least severe one written


class DemoBackendConfig(Model):
    """A demo HTTP backend that `bascule run` starts in its own process (bascule.demo_backend),
    so that the printed demo config, saved to a file, works as it is."""

    name: Name
    address: Address


class Config(Model):
    workers: int | Literal["auto"] = "auto"
    access_log: AccessLogConfig = AccessLogConfig()
    log: LogConfig = LogConfig()
    admin: AdminConfig | None = None
    demo_backends: list[DemoBackendConfig] = []
    listeners: list[ListenerConfig] = []
    clusters: list[ClusterConfig] = []
    services: ServiceList = []  # packet-mode services (nat, dsr), programmed into the kernel

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("workers must be between 1 and 256, or auto")
        return value

    @model_validator(mode="after")
    def _across(self) -> Config:
        from bascule.config.checks import config_problems

        problems = config_problems(
            listeners=list(enumerate(self.listeners)),
            cluster_names=[(i, c.name) for i, c in enumerate(self.clusters)],
            admin=self.admin,
            demo_backends=list(enumerate(self.demo_backends)),
            services=list(enumerate(self.services)),
        )
        if problems:
            # One is enough here: the loader reports every one of them (checks.py).
            raise problems[0]
        return self

    @property
    def worker_count(self) -> int:
        import os

        if self.workers == "auto":
            return len(os.sched_getaffinity(0)) or 1
        return int(self.workers)


class PathError(ValueError):
    """A validator's error about one key below the model that raised it; carries that key's path.

    The path is relative to the model whose validator raised (pydantic reports the model's own
    location); for `Config` that is the whole path from the root.
    """

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in path)
        self.message = message


class SiblingError(PathError):
    """A field validator's error about another key of the same model; its path is relative to
    that model, not to the field being validated."""


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from e
