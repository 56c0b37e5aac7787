"""The `Date` of bascule's own answers: IMF-fixdate, formatted once per second, in the head."""

from __future__ import annotations

import email.utils

from bascule.codec.http1 import simple_response
from bascule.l7.http_date import HttpDate


def test_date_is_imf_fixdate() -> None:
    assert HttpDate(lambda: 784111777.9).value() == b"Sun, 06 Nov 1994 08:49:37 GMT"


def test_date_is_formatted_once_per_second() -> None:
    now = [1_700_000_000.0]
    date = HttpDate(lambda: now[0])
    first = date.value()
    now[0] += 0.999
    assert date.value() is first  # the cached bytes, not a new formatting
    now[0] += 0.001
    second = date.value()
    assert second is not first
    assert email.utils.parsedate_to_datetime(second.decode()).timestamp() == 1_700_000_001


def test_simple_response_carries_the_date_it_is_given() -> None:
    r = simple_response(502, b"x", date=b"Sun, 06 Nov 1994 08:49:37 GMT")
    assert r.startswith(b"HTTP/1.1 502 Bad Gateway\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n")
    assert b"Date:" not in simple_response(502, b"x")
