"""Every balancer against the rules of bascule.balance.base.

Plain calls, no sockets. Randomised balancers get a seed; Hypothesis runs derandomized, so the
file gives the same result on every run.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bascule.balance import (
    BALANCERS,
    KEYED,
    Balancer,
    balancer_options,
    make_balancer,
)
from bascule.balance.endpoint import Endpoint

NAMES = sorted(BALANCERS)
# Balancers whose zero-load spread is exact (a deterministic schedule), not sampled.
EXACT = {"round_robin", "weighted", "least_connections"}
# A small prime keeps Maglev tables cheap to build where the test is not about the table.
SMALL_TABLE = 5003


def build(name: str, endpoints: Sequence[Endpoint], **options: Any) -> Balancer:
    """The balancer with a fixed seed and a small Maglev table unless the test says otherwise."""
    accepted = balancer_options(name)
    if "seed" in accepted:
        options.setdefault("seed", 7)
    if name == "maglev":
        options.setdefault("table_size", SMALL_TABLE)
    return make_balancer(name, endpoints, **options)


def endpoints(weights: Sequence[int], *, backups: int = 0) -> list[Endpoint]:
    primaries = [Endpoint(f"10.0.0.{i + 1}", 8080, w) for i, w in enumerate(weights)]
    extra = [Endpoint(f"10.0.1.{i + 1}", 8080, backup=True) for i in range(backups)]
    return primaries + extra


def key(i: int) -> bytes:
    return f"198.18.{i // 256 % 256}.{i % 256}:{i}".encode()


def shares(balancer: Balancer, picks: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i in range(picks):
        chosen = balancer.pick(key(i))
        assert chosen is not None
        counts[chosen.name] += 1
    return counts


def is_eligible(endpoint: Endpoint, refused: set[str]) -> bool:
    return endpoint.weight > 0 and endpoint.available and endpoint.name not in refused


# --- registry and options -------------------------------------------------------------------


def test_registry_names() -> None:
    assert {
        "round_robin",
        "weighted",
        "random",
        "least_connections",
        "least_request",
        "peak_ewma",
        "source_ip",
        "hash",
        "ring_hash",
        "maglev",
    } <= set(BALANCERS)
    assert BALANCERS["round_robin"] is BALANCERS["weighted"]


def test_unknown_balancer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown balancer 'fastest'"):
        make_balancer("fastest", endpoints([1]))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("round_robin", {"seed": 1}, "has no option 'seed'"),
        ("random", {"ring_size": 10}, "has no option 'ring_size'"),
        ("least_request", {"choice_count": 1}, "at least 2"),
        ("least_request", {"choice_count": True}, "must be an integer"),
        ("peak_ewma", {"decay": 0}, "must be positive"),
        ("peak_ewma", {"decay": "10s"}, "number of seconds"),
        ("ring_hash", {"ring_size": 0}, "at least 1"),
        ("ring_hash", {"ring_size": 10**9}, "at most"),
        ("maglev", {"table_size": 65536}, "prime"),
        ("maglev", {"table_size": 7}, "at least the number of endpoints"),
        ("hash", {"seed": "x"}, "seed"),
    ],
)
def test_bad_options_are_value_errors(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_balancer(name, endpoints([1] * 10), **options)


@pytest.mark.parametrize("name", NAMES)
def test_empty_set_picks_nothing(name: str) -> None:
    balancer = build(name, [])
    assert balancer.pick(key(1)) is None
    assert balancer.pick(None) is None


# --- spread and weights ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_equal_weights_spread_evenly(name: str) -> None:
    eps = endpoints([1] * 5)
    counts = shares(build(name, eps), 5000)
    assert set(counts) == {e.name for e in eps}
    tolerance = 0 if name in EXACT or name == "plain_round_robin" else 0.12
    for e in eps:
        assert abs(counts[e.name] / 1000 - 1) <= tolerance, counts


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"plain_round_robin"}))
def test_weight_fairness_without_load(name: str) -> None:
    weights = [1, 2, 3, 4, 10]
    eps = endpoints(weights)
    picks = 20_000
    counts = shares(build(name, eps), picks)
    tolerance = 0.001 if name in EXACT else 0.15 if name == "ring_hash" else 0.08
    for e, w in zip(eps, weights, strict=True):
        expected = picks * w / sum(weights)
        assert abs(counts[e.name] / expected - 1) <= tolerance, (e.name, counts)


def test_plain_round_robin_ignores_weights() -> None:
    eps = endpoints([1, 5])
    counts = shares(build("plain_round_robin", eps), 100)
    assert counts[eps[0].name] == counts[eps[1].name] == 50


def test_smooth_weighted_is_nginx_order() -> None:
    eps = [
        Endpoint("a", 1, 5, name="a"),
        Endpoint("b", 1, 1, name="b"),
        Endpoint("c", 1, 1, name="c"),
    ]
    balancer = build("weighted", eps)
    order = [balancer.pick(None) for _ in range(14)]
    assert "".join(e.name for e in order if e is not None) == "aabacaa" * 2


def nginx_reference(weights: Sequence[int], picks: int) -> list[int]:
    """nginx's O(n) smooth weighted round robin, straight from its description."""
    current = [0] * len(weights)
    order = []
    for _ in range(picks):
        best = -1
        for i, w in enumerate(weights):
            current[i] += w
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= sum(weights)
        order.append(best)
    return order


@settings(derandomize=True, max_examples=40, deadline=None)
@given(weights=st.lists(st.integers(1, 12), min_size=1, max_size=12))
def test_smooth_weighted_period_matches_nginx(weights: list[int]) -> None:
    eps = endpoints(weights)
    balancer = build("weighted", eps)
    picks = 3 * sum(weights) + 5
    got = [balancer.pick(None) for _ in range(picks)]
    assert got == [eps[i] for i in nginx_reference(weights, picks)]


@pytest.mark.parametrize(
    ("weights", "periods"), [([1, 2, 3, 4, 10], 20), ([900, 1, 1000] * 12, 2)], ids=["fast", "scan"]
)
def test_smooth_weighted_keeps_shares_when_some_are_down(weights: list[int], periods: int) -> None:
    # The second set's period is too long to precompute: it exercises the O(n) scan.
    eps = endpoints(weights)
    balancer = build("weighted", eps)
    assert (balancer._periods[0] is None) == (periods == 2)  # type: ignore[attr-defined]
    eps[1].healthy = False
    eps[-1].drain = True
    up = [(e, w) for e, w in zip(eps, weights, strict=True) if e.available]
    # Whole periods: each endpoint's count is then exact, within rounding.
    picks = periods * sum(w for _, w in up)
    counts = shares(balancer, picks)
    for e, w in up:
        assert abs(counts[e.name] - picks * w / sum(w for _, w in up)) <= 2, counts


@pytest.mark.parametrize("name", ["least_connections", "least_request", "peak_ewma"])
def test_weight_fairness_under_load(name: str) -> None:
    """A steady 40 requests in flight, oldest finishing first: shares follow the weights."""
    weights = [1, 2, 3, 4]
    eps = endpoints(weights)
    balancer = build(name, eps)
    in_flight: deque[Endpoint] = deque()
    counts: Counter[str] = Counter()
    for i in range(20_000):
        chosen = balancer.pick(key(i))
        assert chosen is not None
        chosen.active += 1
        counts[chosen.name] += 1
        in_flight.append(chosen)
        if len(in_flight) > 40:
            done = in_flight.popleft()
            done.active -= 1
            done.observe(0.01, True)
    # Peak EWMA's cost has `active + 1`, which equalises (active + 1) / weight rather than
    # active / weight and so gives the lightest endpoint a little less than its share.
    tolerance = 0.2 if name == "peak_ewma" else 0.1
    for e, w in zip(eps, weights, strict=True):
        expected = 20_000 * w / sum(weights)
        assert abs(counts[e.name] / expected - 1) <= tolerance, (name, counts)


@pytest.mark.parametrize("name", ["least_connections", "least_request", "peak_ewma"])
def test_busy_endpoint_is_avoided(name: str) -> None:
    eps = endpoints([1] * 4)
    eps[0].active = 50
    counts = shares(build(name, eps), 4000)
    # Least connections never picks it; P2C picks it only when both draws land on it (1/16).
    limit = 0 if name == "least_connections" else 4000 / 16 * 1.5
    assert counts[eps[0].name] <= limit, counts


def test_least_connections_ties_take_turns() -> None:
    eps = endpoints([1] * 3)
    balancer = build("least_connections", eps)
    assert [balancer.pick(None) for _ in range(6)] == eps + eps


def test_peak_ewma_avoids_slow_endpoint() -> None:
    eps = endpoints([1] * 4)
    balancer = build("peak_ewma", eps)  # it asks its endpoints to track latency
    for e in eps:
        e.observe(0.010, True)
    eps[0].observe(0.500, True)  # one slow response is enough: the estimate jumps to the peak
    counts = shares(balancer, 4000)
    assert counts[eps[0].name] <= 4000 / 16 * 1.5, counts


def test_peak_ewma_avoids_fast_failures() -> None:
    eps = endpoints([1] * 4)
    balancer = build("peak_ewma", eps)
    for e in eps:
        e.observe(0.010, True)
    eps[0].observe(0.0001, False)  # refused at once: must not look like the fastest
    counts = shares(balancer, 4000)
    assert counts[eps[0].name] <= 4000 / 16 * 1.5, counts


def test_peak_ewma_probes_new_endpoint_one_request_at_a_time() -> None:
    eps = endpoints([1] * 4)
    for e in eps[1:]:
        e.observe(0.010, True)
    balancer = build("peak_ewma", eps)
    # Unobserved and idle: it costs nothing, so it wins whenever it is drawn.
    picks = [balancer.pick(key(i)) for i in range(200)]
    assert eps[0] in picks
    eps[0].active = 1  # its probe is in flight: now it loses every comparison
    for i in range(400):
        chosen = balancer.pick(key(i))
        assert chosen is not None
        if chosen is eps[0]:
            # Only when both draws were eps[0].
            continue
        assert chosen in eps[1:]
    counts = shares(balancer, 4000)
    assert counts[eps[0].name] <= 4000 / 16 * 1.5


def test_peak_ewma_sets_decay() -> None:
    eps = endpoints([1, 1])
    build("peak_ewma", eps, decay=2.5)
    assert all(e.ewma_decay == 2.5 for e in eps)


# --- eligibility -----------------------------------------------------------------------------


def _spread_keys(name: str) -> range:
    return range(600 if name in KEYED else 60)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("state", ["unhealthy", "full", "drain", "disabled", "weight0", "refused"])
def test_ineligible_endpoints_are_never_picked(name: str, state: str) -> None:
    eps = endpoints([1] * 5)
    out = eps[1:3]
    refused: set[str] = set()
    for e in out:
        if state == "unhealthy":
            e.healthy = False
        elif state == "full":
            e.max_connections = 3
            e.active = 3
        elif state == "drain":
            e.drain = True
        elif state == "disabled":
            e.disabled = True
        elif state == "refused":
            refused.add(e.name)
        else:
            e.weight = 0
    balancer = build(name, eps)
    seen = set()
    for i in _spread_keys(name):
        chosen = balancer.pick(key(i), lambda e: e.name not in refused)
        assert chosen is not None and chosen not in out
        seen.add(chosen.name)
    assert seen == {e.name for e in eps if e not in out}


@pytest.mark.parametrize("name", NAMES)
def test_under_connection_limit_is_eligible(name: str) -> None:
    eps = endpoints([1])
    eps[0].max_connections = 2
    eps[0].active = 1
    balancer = build(name, eps)
    assert balancer.pick(key(1)) is eps[0]
    eps[0].active = 2
    assert balancer.pick(key(1)) is None


@pytest.mark.parametrize("name", NAMES)
def test_backups_only_when_no_primary_is_eligible(name: str) -> None:
    eps = endpoints([1] * 3, backups=2)
    primaries, backups = eps[:3], eps[3:]
    balancer = build(name, eps)
    for i in _spread_keys(name):
        assert balancer.pick(key(i)) in primaries
    primaries[0].healthy = False
    primaries[1].drain = True
    for i in _spread_keys(name):
        assert balancer.pick(key(i)) is primaries[2]
    # The last primary refused by the caller (a retry): backups take over.
    for i in _spread_keys(name):
        assert balancer.pick(key(i), lambda e: e is not primaries[2]) in backups
    primaries[2].disabled = True
    seen = {balancer.pick(key(i)) for i in _spread_keys(name)}
    assert seen == set(backups)
    for e in backups:
        e.healthy = False
    assert balancer.pick(key(1)) is None
    assert balancer.pick(None) is None


@pytest.mark.parametrize("name", NAMES)
def test_accept_refusing_everything_gives_none(name: str) -> None:
    balancer = build(name, endpoints([1] * 4, backups=1))
    assert balancer.pick(key(3), lambda e: False) is None
    assert balancer.pick(None, lambda e: False) is None


@pytest.mark.parametrize("name", sorted(KEYED))
def test_keyless_pick_on_hash_balancer_falls_back(name: str) -> None:
    eps = endpoints([1, 3])
    balancer = build(name, eps)
    counts = Counter(balancer.pick(None) for _ in range(4000))
    # Weighted random: both used, in proportion to weight.
    assert abs(counts[eps[1]] / 3000 - 1) < 0.1, counts


# --- the property: never ineligible, None only when nothing is eligible ----------------------

endpoint_states = st.fixed_dictionaries(
    {
        "weight": st.integers(0, 5),
        "backup": st.booleans(),
        "healthy": st.booleans(),
        "drain": st.booleans(),
        "disabled": st.booleans(),
        "max_connections": st.integers(0, 3),
        "active": st.integers(0, 4),
        "refused": st.booleans(),
        "slow_start": st.sampled_from([0.0, 0.0, 30.0]),
    }
)


@settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(NAMES),
    states=st.lists(endpoint_states, min_size=0, max_size=8),
    keys=st.lists(st.one_of(st.none(), st.binary(max_size=16)), min_size=1, max_size=6),
    seed=st.integers(0, 2**32),
)
def test_pick_is_eligible_or_none_only_when_none_is(
    name: str, states: list[dict[str, Any]], keys: list[bytes | None], seed: int
) -> None:
    eps = []
    refused: set[str] = set()
    for i, s in enumerate(states):
        e = Endpoint(f"10.9.0.{i + 1}", 80, s["weight"], backup=s["backup"])
        e.healthy = s["healthy"]
        e.drain = s["drain"]
        e.disabled = s["disabled"]
        e.max_connections = s["max_connections"]
        e.active = s["active"]
        if s["slow_start"]:
            e.slow_start = s["slow_start"]
            e.healthy_since = 1e300  # came up "just now" whatever the clock: ramping
        if s["refused"]:
            refused.add(e.name)
        eps.append(e)
    options: dict[str, Any] = {"table_size": 211} if name == "maglev" else {}
    if "seed" in balancer_options(name):
        options["seed"] = seed
    balancer = make_balancer(name, eps, **options)
    primaries = [e for e in eps if not e.backup and is_eligible(e, refused)]
    backups = [e for e in eps if e.backup and is_eligible(e, refused)]
    for k in keys:
        chosen = balancer.pick(k, lambda e: e.name not in refused)
        if chosen is None:
            assert not primaries and not backups
        elif primaries:
            assert chosen in primaries
        else:
            assert chosen in backups
