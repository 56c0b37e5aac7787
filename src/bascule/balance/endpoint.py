"""The live endpoint: one real server of a cluster, as the data plane sees it.

Rules of this module:
- An Endpoint is created from a spec (address, weight, flags) and lives as long as its cluster
  snapshot; balancers hold immutable tuples of them and never copy their state.
- Counters are plain ints mutated on the event loop's thread only; nothing here locks.
- `available` is the one test for "may receive new traffic": healthy, not draining, not
  disabled, under its connection limit. It is read on every pick, so it stays a few attribute
  reads.
- `weight` is the configured weight; `effective_weight` is what weighted balancers use. It
  differs only during slow start, when it ramps linearly from 10% to 100% of `weight` over
  `slow_start` seconds after the endpoint turned healthy (HAProxy's `slowstart`). Balancers that
  build static tables (hash, ring_hash, maglev) read `weight` once, at build time, and ignore
  slow start: changing a hash table as the weight ramps would move keys around.
- `observe(latency_s, ok)` is called by the data plane once per finished request (L7) or
  connection (L4). It is the one place that counts `requests` and `failures`, and it keeps a
  peak-sensitive EWMA of latency (Finagle's and Linkerd's "peak EWMA") for the `peak_ewma`
  balancer. It is O(1): one clock read and a few float operations.
- Health flips should go through `set_healthy`, which stamps `healthy_since` so slow start knows
  when the endpoint came up. `healthy_since` is 0.0 until the first flip, so an endpoint that
  is healthy from the start gets its full weight at once (HAProxy does not slow-start on boot).
- Two verdicts make `healthy` when both are in use: the active checks' (`set_check`) and the
  outlier detector's (`set_ejected`). `healthy` is "checks pass and not ejected", so neither
  can bring back an endpoint the other holds out, and `available` stays one attribute read.
"""

from __future__ import annotations

from math import exp
from time import monotonic
from typing import Any

# Slow start begins at this share of the weight, so a recovering endpoint gets some traffic at
# once (HAProxy's ramp also starts above zero).
SLOW_START_FLOOR = 0.1

# A failed request is recorded as at least this slow (seconds) in the latency EWMA, and at least
# twice the current estimate: a server that fails fast (connection refused, instant 5xx) must not
# look like the fastest server in the cluster and attract all the traffic.
FAILURE_LATENCY_S = 1.0

# Finagle's and Linkerd's default: a latency sample's influence falls to 1/e after 10 s.
DEFAULT_EWMA_DECAY_S = 10.0


class Endpoint:
    """One real server: its address, its weight and the state balancers need to choose it."""

    __slots__ = (
        "active",
        "address",
        "backup",
        "check_ok",
        "consecutive_failures",
        "disabled",
        "drain",
        "eject_level",
        "ejected",
        "ejected_until",
        "ejections",
        "ewma",
        "ewma_decay",
        "ewma_stamp",
        "extra",
        "failures",
        "healthy",
        "healthy_since",
        "host",
        "max_connections",
        "name",
        "port",
        "requests",
        "slow_start",
        "track_latency",
        "weight",
    )

    def __init__(
        self,
        host: str,
        port: int,
        weight: int = 1,
        *,
        backup: bool = False,
        max_connections: int = 0,
        name: str | None = None,
        slow_start: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.name = name or self.address
        self.weight = weight
        self.backup = backup
        # 0 means unlimited, as in HAProxy's `maxconn 0`.
        self.max_connections = max_connections
        self.healthy = True
        # Draining: finish what is in flight, take nothing new (admin `drain`, reload, scale-in).
        self.drain = False
        # Disabled by an operator: no new traffic, and health checks do not bring it back.
        self.disabled = False
        self.slow_start = slow_start
        self.healthy_since = 0.0
        self.active = 0  # connections (L4) or requests in flight (L7) on this endpoint now
        self.requests = 0
        self.failures = 0
        # Peak EWMA of latency in seconds; ewma_stamp == 0.0 means "never observed".
        self.ewma = 0.0
        self.ewma_stamp = 0.0
        self.ewma_decay = DEFAULT_EWMA_DECAY_S  # the peak_ewma balancer sets its own
        self.track_latency = False  # set by the balancers that read `ewma` (peak_ewma)
        # Room for balancers that need per-endpoint scratch state.
        self.extra: dict[str, Any] = {}
        # The active checks' verdict and the outlier detector's state (see outlier.py).
        self.check_ok = True
        self.ejected = False
        self.ejections = 0  # times ejected, ever (stats)
        self.eject_level = 0  # repeated ejections in a row: multiplies the ejection time
        self.ejected_until = 0.0  # monotonic; the end of the current or last ejection
        self.consecutive_failures = 0

    @property
    def available(self) -> bool:
        """Healthy, not draining or disabled, under its connection limit: a balancer may pick it."""
        return (
            self.healthy
            and not self.drain
            and not self.disabled
            and (self.max_connections == 0 or self.active < self.max_connections)
        )

    @property
    def effective_weight(self) -> float:
        """The weight balancers should use now: `weight`, ramped up during slow start."""
        window = self.slow_start
        if window <= 0.0:
            return self.weight
        elapsed = monotonic() - self.healthy_since
        if elapsed >= window:
            return self.weight
        if elapsed < 0.0:
            elapsed = 0.0
        return self.weight * (SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * elapsed / window)

    def set_healthy(self, healthy: bool, now: float | None = None) -> None:
        """Flip health; coming up starts the slow-start window at `now` (monotonic seconds)."""
        if healthy and not self.healthy:
            self.healthy_since = monotonic() if now is None else now
        self.healthy = healthy

    def set_check(self, ok: bool, now: float | None = None) -> None:
        """The active health checks' verdict; healthy again only if not ejected too."""
        self.check_ok = ok
        self.set_healthy(ok and not self.ejected, now)

    def set_ejected(self, ejected: bool, now: float | None = None) -> None:
        """The outlier detector's verdict; healthy again only if the checks pass too."""
        self.ejected = ejected
        self.set_healthy(self.check_ok and not ejected, now)

    @property
    def state(self) -> str:
        """One word for people (admin API): why this endpoint does or does not take traffic."""
        if self.disabled:
            return "disabled"
        if not self.check_ok:
            return "unhealthy"
        if self.ejected:
            return "ejected"
        if self.drain:
            return "draining"
        return "healthy"

    def observe(self, latency_s: float, ok: bool) -> None:
        """Record one finished request or connection: counters and the latency EWMA."""
        self.requests += 1
        if not ok:
            self.failures += 1
        if not self.track_latency:
            return  # only peak_ewma reads the average: others skip its arithmetic
        now = monotonic()
        ewma = self.ewma
        if not ok:
            latency_s = max(latency_s, 2.0 * ewma, FAILURE_LATENCY_S)
        if latency_s > ewma:
            # Peak sensitivity: a slow response moves the estimate up at once, so a server that
            # starts to struggle is avoided immediately rather than after many samples.
            self.ewma = latency_s
        else:
            # The weight of history depends on elapsed time, not on sample count, so a busy
            # endpoint and a quiet one forget at the same speed.
            w = exp((self.ewma_stamp - now) / self.ewma_decay)
            self.ewma = ewma * w + latency_s * (1.0 - w)
        self.ewma_stamp = now

    def __repr__(self) -> str:
        return f"Endpoint({self.address}, weight={self.weight}, healthy={self.healthy})"
