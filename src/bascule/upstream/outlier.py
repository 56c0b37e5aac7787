"""Passive health: eject endpoints that fail several times in a row (Envoy's outlier detection).

Rules of this module:
- The data plane reports every finished exchange with `record(endpoint, ok)`; ok is False for a
  5xx response, a connect failure, a connection lost before the response, or a timeout. It is
  O(1): one counter update, and on the threshold-th failure in a row, an ejection.
- An ejection lasts `base_ejection_time * level`, capped by `max_ejection_time`, where `level`
  counts ejections in a row: it goes up by one per ejection and down by one per
  `base_ejection_time` spent not ejected, so a flapping endpoint stays out longer each time and a
  recovered one is forgiven.
- At most `max_ejection_percent` of the cluster's endpoints are ejected at once, and always at
  least one may be (Envoy's rule); 0 switches ejection off. Passive health never empties a
  cluster because of a burst of failures across all endpoints (a backend-wide outage is left to
  active checks).
- Ejection only sets `Endpoint.ejected` (through `set_ejected`); active checks keep their own
  verdict, and the endpoint is healthy when both agree.
- State is per worker: each worker judges the traffic it sees, with no coordination.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from time import monotonic

from bascule.balance.endpoint import Endpoint
from bascule.config.schema import OutlierConfig


class OutlierDetector:
    __slots__ = ("_timers", "allowed", "base", "ejected_now", "maximum", "threshold")

    def __init__(self, spec: OutlierConfig, endpoints: Sequence[Endpoint]) -> None:
        self.threshold = spec.consecutive_failures
        self.base = spec.base_ejection_time
        self.maximum = max(spec.max_ejection_time, spec.base_ejection_time)
        self.allowed = 0
        self.ejected_now = 0
        self._timers: dict[Endpoint, asyncio.TimerHandle] = {}
        self.resize(len(endpoints), spec.max_ejection_percent)

    def resize(self, count: int, percent: int) -> None:
        """How many endpoints may be out at once, for a cluster of `count` endpoints."""
        self.allowed = max(1, count * percent // 100) if percent > 0 else 0

    def record(self, endpoint: Endpoint, ok: bool) -> None:
        """One finished exchange on this endpoint: count failures in a row, eject at the limit."""
        if ok:
            if endpoint.consecutive_failures:
                endpoint.consecutive_failures = 0
            return
        n = endpoint.consecutive_failures + 1
        endpoint.consecutive_failures = n
        if n >= self.threshold and not endpoint.ejected and self.ejected_now < self.allowed:
            self._eject(endpoint)

    def _eject(self, endpoint: Endpoint) -> None:
        now = monotonic()
        level = endpoint.eject_level
        if level and self.base > 0:
            # Forgive one level per base time spent in service since the last ejection ended.
            level = max(0, level - int((now - endpoint.ejected_until) // self.base))
        level += 1
        endpoint.eject_level = level
        duration = min(self.base * level, self.maximum)
        endpoint.ejected_until = now + duration
        endpoint.ejections += 1
        endpoint.set_ejected(True, now)
        self.ejected_now += 1
        loop = asyncio.get_running_loop()
        self._timers[endpoint] = loop.call_later(duration, self._restore, endpoint)

    def _restore(self, endpoint: Endpoint) -> None:
        self._timers.pop(endpoint, None)
        if endpoint.ejected:
            self.ejected_now -= 1
            endpoint.consecutive_failures = 0
            endpoint.set_ejected(False)

    def forget(self, endpoint: Endpoint) -> None:
        """The endpoint left the cluster: stop its timer and free its ejection slot."""
        timer = self._timers.pop(endpoint, None)
        if timer is not None:
            timer.cancel()
            if endpoint.ejected:
                self.ejected_now -= 1

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
