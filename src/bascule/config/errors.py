"""Config errors that name the file, the line, the key path and what is wrong.

Rules of this module:
- One problem is a `ConfigError`; `str()` of it is one line a user can act on:
  `bascule.yaml:14 clusters[0].endpoints[1].address: port 70000 out of range`.
  Without a known line: `bascule.yaml clusters[0].name: ...`; without a key path (a syntax
  error, an unreadable file): `bascule.yaml:3: ...`.
- Several problems at once are a `ConfigErrors`, itself a `ConfigError` (so one `except`
  catches both), that prints one problem per line, sorted by line; problems without a line
  come last.
- The file is named as the user gave it, never made absolute: the message must match what they
  typed.
- Errors pickle, so a worker or a reload subprocess can hand one to the supervisor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

KeyPath = tuple[str | int, ...]

# Keys that read well after a dot; anything else (spaces, dots, empty) is shown in brackets.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def format_path(path: Iterable[object]) -> str:
    """`("clusters", 0, "endpoints", 1, "address")` → `clusters[0].endpoints[1].address`."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{part!r}]")
    return "".join(out)


class ConfigError(Exception):
    """One thing wrong with a config file, at a line and a key path when they are known."""

    def __init__(self, file: str, line: int | None, path: str, reason: str) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.reason = reason
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where} {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"

    def __str__(self) -> str:
        return self._one_line()

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Every problem this error stands for: itself, for a single one."""
        return (self,)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickles `args` (the message) and would call __init__ with one argument.
        return (ConfigError, (self.file, self.line, self.path, self.reason))

    def __repr__(self) -> str:
        return (
            f"ConfigError(file={self.file!r}, line={self.line!r}, path={self.path!r}, "
            f"reason={self.reason!r})"
        )


class ConfigErrors(ConfigError):
    """Several problems found in one pass; prints all of them, one per line, sorted by line.

    Its own file/line/path/reason are those of the first problem, so code that only looks at
    one still sees a real one.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        flat = [one for e in errors for one in e.errors]
        # Sorted by line (stable: equal lines keep pydantic's order); unknown lines last.
        flat.sort(key=lambda e: (e.line is None, e.line or 0))
        self._errors = tuple(flat)
        first = flat[0]
        super().__init__(first.file, first.line, first.path, first.reason)

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors

    def __str__(self) -> str:
        return "\n".join(e._one_line() for e in self._errors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigErrors, (list(self._errors),))

    def __repr__(self) -> str:
        return f"ConfigErrors({list(self._errors)!r})"


def combine(errors: Sequence[ConfigError]) -> ConfigError:
    """One error as itself, several as a `ConfigErrors`."""
    return errors[0] if len(errors) == 1 else ConfigErrors(errors)
