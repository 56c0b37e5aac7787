"""The `Date` field of the responses bascule makes itself (RFC 9110 §6.6.1).

Rules of this module:
- The value is an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form a sender may
  generate; it is formatted at most once per second of the clock and reused in between, so a
  burst of local answers costs one comparison each.
- The clock is injectable (tests); it must read wall-clock seconds since the epoch.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable


class HttpDate:
    __slots__ = ("_clock", "_second", "_value")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        """Now, as an IMF-fixdate, from the cache while the second has not changed."""
        second = int(self._clock())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(float(second), usegmt=True).encode("ascii")
        return self._value


HTTP_DATE = HttpDate()
