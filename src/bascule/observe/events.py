"""Event lines: what bascule tells its operator as it runs (health, workers, discovery, drain).

Rules of this module:
- Every event line of the control plane goes through `emit` (or `debug`/`info`/`warning`/
  `error`): one line each, with a UTC timestamp and a level, as text
  (`2026-12-02T16:40:00.123Z warning endpoint api/10.0.0.11:9000 is down (active health check)`)
  or as one JSON object (`{"time": ..., "level": ..., "event": ..., "message": ..., ...}`, the
  event's own fields last). `event` is a short stable name (`health`, `worker`, ...) to filter
  on; the message is for people and may change.
- One log per process, set by `configure(spec)` from the config's `log:` section; until then
  text on stderr at `info`, so nothing said early is lost. Lines below the level are dropped.
- `stderr` and `stdout` are the process's own streams; anything else is a file, appended to,
  created if missing. Each line is written and flushed whole, so lines from one process never
  interleave mid-line.
- Writing never raises into the caller: a log that cannot be written (disk full, a closed
  pipe) must not stop health checks or a drain; such lines are lost.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Final

from bascule.config.schema import LogConfig

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}

Field = str | int | float | bool | None


class EventLog:
    """Where event lines go, in which form, from which level on."""

    def __init__(self, spec: LogConfig) -> None:
        self.spec = spec
        self.threshold = LEVELS[spec.level]
        self.json = spec.format == "json"
        # A file that cannot be opened is the caller's startup error (OSError), not a silently
        # lost log. The process's own streams are looked up at each line: they may be replaced.
        self._file: IO[str] | None = None
        if spec.path not in ("stderr", "stdout"):
            self._file = open(spec.path, "a", encoding="utf-8")  # noqa: SIM115 - see close()

    @property
    def stream(self) -> IO[str]:
        if self._file is not None:
            return self._file
        return sys.stdout if self.spec.path == "stdout" else sys.stderr

    def emit(self, level: str, event: str, message: str, **fields: Field) -> None:
        if LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        stamp = f"{stamp}.{int(now * 1000) % 1000:03d}Z"
        if self.json:
            record: dict[str, Field] = {
                "time": stamp,
                "level": level,
                "event": event,
                "message": message,
            }
            record.update(fields)
            line = json.dumps(record, separators=(",", ":")) + "\n"
        else:
            line = f"{stamp} {level:<7} {message}\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed under us
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    @property
    def where(self) -> str:
        """The destination as the banner names it: `stderr`, `stdout` or the file's path."""
        return self.spec.path


_log = EventLog(LogConfig())


def configure(spec: LogConfig) -> EventLog:
    """Send this process's event lines where `spec` says; returns the new log."""
    global _log
    new = EventLog(spec)
    old, _log = _log, new
    old.close()
    return new


def current() -> EventLog:
    return _log


def emit(level: str, event: str, message: str, **fields: Field) -> None:
    _log.emit(level, event, message, **fields)


def debug(event: str, message: str, **fields: Field) -> None:
    _log.emit("debug", event, message, **fields)


def info(event: str, message: str, **fields: Field) -> None:
    _log.emit("info", event, message, **fields)


def warning(event: str, message: str, **fields: Field) -> None:
    _log.emit("warning", event, message, **fields)


def error(event: str, message: str, **fields: Field) -> None:
    _log.emit("error", event, message, **fields)
