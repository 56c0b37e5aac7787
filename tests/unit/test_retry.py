"""The retry decision as a table (l7/retry.py)."""

from __future__ import annotations

import pytest

from bascule.l7.retry import may_retry

BASE = {
    "method": "GET",
    "response_started": False,
    "request_complete": True,
    "body_replayable": True,
}


@pytest.mark.parametrize(
    ("done", "allowed", "change", "expected"),
    [
        (0, 2, {}, True),
        (1, 2, {}, True),
        (2, 2, {}, False),  # attempts used up
        (0, 0, {}, False),  # retries off
        (0, 2, {"method": "POST"}, False),  # not idempotent
        (0, 2, {"method": "PATCH"}, False),
        (0, 2, {"method": "PUT"}, True),
        (0, 2, {"method": "DELETE"}, True),
        (0, 2, {"method": "HEAD"}, True),
        (0, 2, {"response_started": True}, False),  # the client has bytes of an answer
        (0, 2, {"request_complete": False}, False),  # still streaming the request
        (0, 2, {"body_replayable": False}, False),  # the body went and is not held
    ],
)
def test_may_retry(done: int, allowed: int, change: dict[str, object], expected: bool) -> None:
    args = {**BASE, **change}
    assert may_retry(done, allowed, **args) is expected  # type: ignore[arg-type]
