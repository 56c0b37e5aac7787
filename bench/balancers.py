"""Picks per second of every balancer, with 10 and 100 endpoints: `python bench/balancers.py`.

Rules of this script:
- Standalone and bounded: each measurement runs for about MEASURE_S seconds, the whole run for
  well under a minute. Not a test; nothing asserts.
- Weights are mixed (1..4), keys vary per pick (as source addresses would), and nothing changes
  `active` between picks, so the numbers are the cost of `pick` alone. The last column has half
  of the 100 endpoints down, which exercises the walk-on and rejection paths.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bascule.balance import BALANCERS, Balancer, balancer_options, make_balancer
from bascule.balance.endpoint import Endpoint

MEASURE_S = 0.3
KEYS = [f"198.18.{i // 256 % 256}.{i % 256}".encode() for i in range(4096)]


def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(f"10.{i // 256}.{i % 256}.1", 8080, 1 + i % 4) for i in range(n)]


def build(name: str, eps: list[Endpoint]) -> tuple[Balancer, float]:
    options = {"seed": 1} if "seed" in balancer_options(name) else {}
    started = time.perf_counter()
    balancer = make_balancer(name, eps, **options)
    return balancer, time.perf_counter() - started


def picks_per_second(balancer: Balancer) -> float:
    pick = balancer.pick
    keys = KEYS
    done = 0
    started = time.perf_counter()
    deadline = started + MEASURE_S
    while True:
        for k in keys:
            pick(k)
        done += len(keys)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - started)


def main() -> None:
    print(
        f"{'balancer':<18} {'10 eps':>12} {'100 eps':>12} {'100, half down':>15} {'build 100':>10}"
    )
    for name in sorted(BALANCERS):
        small, _ = build(name, endpoints(10))
        eps = endpoints(100)
        large, build_s = build(name, eps)
        healthy_10 = picks_per_second(small)
        healthy_100 = picks_per_second(large)
        for e in eps[::2]:
            e.healthy = False
        half_down = picks_per_second(large)
        print(
            f"{name:<18} {healthy_10:>12,.0f} {healthy_100:>12,.0f} {half_down:>15,.0f}"
            f" {build_s * 1000:>8.1f}ms"
        )


if __name__ == "__main__":
    main()
