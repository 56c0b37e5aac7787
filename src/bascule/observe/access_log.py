"""The access log: one line per exchange, JSON lines or the combined log format.

Rules of this module:
- Lines are built by hand from already-known values (json.dumps of a dict per request is
  several microseconds on the hot path); strings go through the C string encoder.
- Lines are buffered and written every 20 ms, or sooner past 64 KiB, so a busy worker makes
  one write for many requests; a worker that stops flushes what it holds.
- A log that cannot be written (disk full, closed pipe) is dropped, never fatal to traffic.
"""

from __future__ import annotations

import asyncio
import os
import time
from json.encoder import encode_basestring_ascii as _q
from typing import Final

_FLUSH_AT: Final = 64 * 1024
_FLUSH_EVERY: Final = 0.02  # seconds a line may wait in the buffer
# %-formatting of one template is about three times faster than the equivalent f-string.
# Listener and cluster names (config names), methods (llhttp tokens), the peer's address and
# versions cannot hold a quote or a backslash: only free text goes through the string encoder.
_JSON_LINE: Final = (
    '{"time":"%s.%03dZ","listener":"%s","client":%s,"peer":"%s","method":"%s","uri":%s,'
    '"version":"%s","status":%d,"bytes":%d,"cluster":"%s","endpoint":"%s","route":%s,'
    '"upstream_header_ms":%.3f,"upstream_ms":%.3f,"total_ms":%.3f,"retries":%d,"host":%s,'
    '"user_agent":%s,"error":%s}\n'
)
_COMBINED_LINE: Final = (
    '%s - - [%s] "%s %s HTTP/%s" %d %s %s %s endpoint=%s upstream_ms=%.3f total_ms=%.3f\n'
)
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)


class ExchangeRecord:
    """What the access log says of one exchange (or of a request refused before one began).

    The data plane fills it where it knows each fact; the log only formats it. Every field
    has a neutral default, so a refusal at the head names just what it knows.
    """

    __slots__ = (
        "bytes_sent",
        "client",
        "cluster",
        "endpoint",
        "error",
        "host",
        "listener",
        "method",
        "peer",
        "referer",
        "retries",
        "route",
        "status",
        "total_ms",
        "upstream_header_ms",
        "upstream_ms",
        "uri",
        "user_agent",
        "version",
    )

    def __init__(self, listener: str, peer: str, method: str, uri: str, status: int) -> None:
        self.listener = listener
        self.peer = peer
        self.client = peer  # the address resolved from trusted headers, when there are some
        self.method = method
        self.uri = uri
        self.version = "1.1"
        self.status = status
        self.bytes_sent = 0  # the response body
        self.cluster = ""
        self.endpoint = ""
        self.route = ""
        self.upstream_header_ms = 0.0
        self.upstream_ms = 0.0
        self.total_ms = 0.0
        self.retries = 0
        self.host = ""
        self.user_agent = ""
        self.referer = ""
        self.error = ""


class AccessLog:
    __slots__ = (
        "_buf",
        "_clf",
        "_fd",
        "_flush_scheduled",
        "_iso",
        "_loop",
        "_second",
        "_size",
        "fmt",
    )

    def __init__(self, path: str | None, fmt: str = "json") -> None:
        self.fmt = fmt
        if path is None:
            self._fd = -1
        elif path == "-":
            self._fd = 1
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf: list[str] = []
        self._size = 0
        self._flush_scheduled = False
        self._second = -1
        self._iso = ""
        self._clf = ""

    @property
    def enabled(self) -> bool:
        return self._fd >= 0

    def _stamp(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._second = second
            t = time.gmtime(second)
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", t)
            self._clf = (
                f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
            )

    def log(self, r: ExchangeRecord) -> None:
        """One exchange's line, from its record."""
        if self._fd < 0:
            return
        now = time.time()
        if int(now) != self._second:
            self._stamp(now)
        if self.fmt == "json":
            line = _JSON_LINE % (
                self._iso,
                int(now * 1000) % 1000,
                r.listener,
                _q(r.client),  # from X-Forwarded-For when the peer is trusted: free text
                r.peer,
                r.method,
                _q(r.uri),
                r.version,
                r.status,
                r.bytes_sent,
                r.cluster,
                r.endpoint,
                _q(r.route),
                r.upstream_header_ms,
                r.upstream_ms,
                r.total_ms,
                r.retries,
                _q(r.host),
                _q(r.user_agent),
                _q(r.error),
            )
        else:
            line = _COMBINED_LINE % (
                r.client,
                self._clf,
                r.method,
                _clf_safe(r.uri),
                r.version,
                r.status,
                r.bytes_sent or "-",
                _q(r.referer or "-"),
                _q(r.user_agent or "-"),
                r.endpoint or "-",
                r.upstream_ms,
                r.total_ms,
            )
        self._buf.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT:
            self.flush()
        elif not self._flush_scheduled:
            # A busy worker writes its log every few milliseconds, not once per event-loop
            # turn: one write(2) for many lines is most of what a log line costs.
            self._flush_scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_later(_FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "replace")
        self._buf.clear()
        self._size = 0
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
        except OSError:
            pass

    def close(self) -> None:
        self.flush()
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1


def _clf_safe(uri: str) -> str:
    return uri.replace('"', "%22").replace(" ", "%20")
