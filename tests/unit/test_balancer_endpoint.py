"""The endpoint state balancers read: availability, slow start, and the latency EWMA."""

from __future__ import annotations

import math
from collections import Counter
from time import monotonic

import pytest

from bascule.balance import make_balancer
from bascule.balance.endpoint import FAILURE_LATENCY_S, Endpoint


def test_available_flags() -> None:
    e = Endpoint("10.0.0.1", 80)
    states = [e.available]
    for flag in ("drain", "disabled", "healthy"):
        setattr(e, flag, not getattr(e, flag))
        states.append(e.available)
        setattr(e, flag, not getattr(e, flag))
    e.max_connections = 2
    e.active = 1
    states.append(e.available)
    e.active = 2
    states.append(e.available)
    assert states == [True, False, False, False, True, False]


def test_effective_weight_ramps_during_slow_start() -> None:
    e = Endpoint("10.0.0.1", 80, 10, slow_start=100.0)
    # Healthy from boot: no ramp, as HAProxy does not slow-start at startup.
    assert e.effective_weight == 10
    e.set_healthy(False)
    now = monotonic()
    e.set_healthy(True, now=now)
    assert e.healthy_since == now
    assert e.effective_weight == pytest.approx(1.0, abs=0.05)
    e.healthy_since = now - 50.0
    assert e.effective_weight == pytest.approx(5.5, abs=0.05)
    e.healthy_since = now - 100.0
    assert e.effective_weight == 10
    # Staying healthy does not restart the window.
    e.set_healthy(True)
    assert e.healthy_since == now - 100.0


def test_no_slow_start_means_full_weight() -> None:
    e = Endpoint("10.0.0.1", 80, 3)
    e.set_healthy(False)
    e.set_healthy(True)
    assert e.effective_weight == 3


@pytest.mark.parametrize(
    "name", ["round_robin", "random", "least_connections", "least_request", "peak_ewma"]
)
def test_weighted_balancers_honour_slow_start(name: str) -> None:
    steady = Endpoint("10.0.0.1", 80, 10)
    ramping = Endpoint("10.0.0.2", 80, 10, slow_start=60.0)
    ramping.set_healthy(False)
    ramping.set_healthy(True, now=monotonic() - 30.0)  # halfway: 55% of its weight
    options = {"seed": 3} if name not in ("round_robin", "least_connections") else {}
    balancer = make_balancer(name, [steady, ramping], **options)
    counts = Counter(balancer.pick(None) for _ in range(10_000))
    expected = 10_000 * 5.5 / 15.5
    assert abs(counts[ramping] / expected - 1) < 0.08, counts


def test_observe_counts_requests_and_failures() -> None:
    e = Endpoint("10.0.0.1", 80)
    e.observe(0.01, True)
    e.observe(0.01, False)
    assert (e.requests, e.failures) == (2, 1)


def test_observe_jumps_to_peaks_and_decays_towards_lower_samples() -> None:
    e = Endpoint("10.0.0.1", 80)
    e.track_latency = True  # as peak_ewma sets it
    assert e.ewma_stamp == 0.0
    e.observe(0.010, True)
    assert e.ewma == 0.010 and e.ewma_stamp > 0
    e.observe(0.200, True)
    assert e.ewma == 0.200  # a peak is taken at once
    # A lower sample moves the estimate by 1 - exp(-elapsed / decay): pretend 10 s went by.
    e.ewma_stamp -= 10.0
    e.observe(0.010, True)
    w = math.exp(-1.0)
    assert e.ewma == pytest.approx(0.200 * w + 0.010 * (1 - w), rel=1e-3)
    # Samples close together barely move it down.
    before = e.ewma
    e.observe(0.010, True)
    assert e.ewma == pytest.approx(before, rel=1e-3)


def test_failure_never_looks_fast() -> None:
    e = Endpoint("10.0.0.1", 80)
    e.track_latency = True
    e.observe(0.0001, False)
    assert e.ewma == FAILURE_LATENCY_S
    e.ewma = 3.0
    e.observe(0.0001, False)
    assert e.ewma == 6.0


def test_only_tracked_endpoints_average_latency() -> None:
    e = Endpoint("10.0.0.1", 80)
    e.observe(0.5, True)
    e.observe(0.5, False)
    assert (e.requests, e.failures, e.ewma) == (2, 1, 0.0)
