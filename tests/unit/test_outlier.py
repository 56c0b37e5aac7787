"""Outlier detection: consecutive failures eject, ejection time grows and is capped, and
max_ejection_percent bounds how many endpoints are out at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from bascule.balance.endpoint import Endpoint
from bascule.config.schema import OutlierConfig
from bascule.upstream.outlier import OutlierDetector


def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 9000 + i) for i in range(n)]


def test_consecutive_failures_eject_and_success_resets() -> None:
    async def main() -> None:
        eps = endpoints(4)
        d = OutlierDetector(OutlierConfig(consecutive_failures=3, max_ejection_percent=50), eps)
        e = eps[0]
        d.record(e, False)
        d.record(e, False)
        d.record(e, True)  # a success in between: the count starts again
        d.record(e, False)
        d.record(e, False)
        assert not e.ejected and e.available
        d.record(e, False)
        assert e.ejected and not e.healthy and not e.available
        assert e.ejections == 1 and e.state == "ejected"
        assert e.check_ok  # the active checks' verdict is untouched
        d.close()

    asyncio.run(main())


def test_ejection_time_grows_then_is_forgiven() -> None:
    async def main() -> None:
        eps = endpoints(2)
        spec = OutlierConfig(
            consecutive_failures=1,
            base_ejection_time=0.1,
            max_ejection_time=0.25,
            max_ejection_percent=50,
        )
        d = OutlierDetector(spec, eps)
        e = eps[0]
        durations = []
        for _ in range(3):
            t0 = time.monotonic()
            d.record(e, False)
            assert e.ejected
            durations.append(e.ejected_until - t0)
            while e.ejected:  # noqa: ASYNC110 - the detector's own timer ends it
                await asyncio.sleep(0.005)
            assert e.healthy and e.consecutive_failures == 0
        # 0.1, 0.2, then capped at 0.25
        assert durations == pytest.approx([0.1, 0.2, 0.25], abs=0.02)
        # After base time x level in service, the level is forgiven one step per base time.
        e.ejected_until = time.monotonic() - 0.25
        d.record(e, False)
        # Level 3; 0.25 s of good service forgives two steps; this ejection adds one.
        assert e.eject_level == 2
        d.close()

    asyncio.run(main())


def test_max_ejection_percent_caps_and_one_always_allowed() -> None:
    async def main() -> None:
        eps = endpoints(10)
        d = OutlierDetector(OutlierConfig(consecutive_failures=1, max_ejection_percent=20), eps)
        for e in eps:
            d.record(e, False)
        assert sum(e.ejected for e in eps) == 2
        d.close()
        two = endpoints(2)
        d = OutlierDetector(OutlierConfig(consecutive_failures=1, max_ejection_percent=10), two)
        for e in two:
            d.record(e, False)
        assert sum(e.ejected for e in two) == 1  # 10% of 2 rounds down, but one may go
        d.close()
        off = endpoints(2)
        d = OutlierDetector(OutlierConfig(consecutive_failures=1, max_ejection_percent=0), off)
        d.record(off[0], False)
        assert not off[0].ejected
        d.close()

    asyncio.run(main())


def test_ejection_and_active_check_compose() -> None:
    async def main() -> None:
        eps = endpoints(2)
        d = OutlierDetector(
            OutlierConfig(consecutive_failures=1, base_ejection_time=0.05, max_ejection_percent=50),
            eps,
        )
        e = eps[0]
        d.record(e, False)
        e.set_check(True)  # a passing check does not cut the ejection short
        assert not e.healthy
        e.set_check(False)
        while e.ejected:  # noqa: ASYNC110 - the detector's own timer ends it
            await asyncio.sleep(0.005)
        assert not e.healthy and e.state == "unhealthy"  # ejection over, checks still failing
        e.set_check(True)
        assert e.healthy
        d.close()

    asyncio.run(main())
