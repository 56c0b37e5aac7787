"""Load a config file (YAML, TOML or JSON) into a `Config`, or say exactly what is wrong with it.

Rules of this module:
- Every failure is a `ConfigError` (or `ConfigErrors`) naming the file as the user gave it, the
  1-based line, the key path and a reason a user can act on; nothing else escapes, not a YAML
  or TOML exception, not a pydantic `ValidationError`, not an `OSError`.
- Lines come from a map: key path tuple → line. For a key, the line of the key itself; for a
  list item, the line where the item starts. A path not in the map takes the line of its
  longest prefix that is, so an error always points somewhere near.
- YAML is composed (safe loader) into nodes, then built into plain data here, so that every
  key keeps its line and a key given twice in one mapping is an error rather than a silent
  "last one wins". Tags other than the standard ones fail as the safe loader fails them.
- TOML is parsed by tomllib; its lines come from a light scan of the text that follows the
  structure (tables, arrays of tables, keys, arrays, inline tables) without judging it. If the
  scan cannot follow (it should always be able to, tomllib accepted the text), errors simply
  have no line.
- JSON is parsed by the json module; its lines come from a scan like TOML's, which also
  refuses a key given twice in one object, as YAML does.
- The format follows the extension (`.yaml`, `.yml`, `.toml`, `.json`); any other is refused,
  never guessed: a `.conf` read as YAML would fail with messages about the wrong language.
- An empty file (or one holding only comments) is an empty config: valid, it serves nothing.
- All pydantic errors of one load are reported together, one per line, sorted by line, and
  with them the checks across the file (checks.py) over the parts that are valid: pydantic
  skips those when anything fails, and the README promises every problem at once.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import typing
from collections.abc import Iterator
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bascule.config.checks import config_problems
from bascule.config.errors import ConfigError, KeyPath, combine, format_path
from bascule.config.schema import (
    NAME_PATTERN,
    AdminConfig,
    Config,
    DemoBackendConfig,
    ListenerConfig,
    PathError,
    SiblingError,
)
from bascule.config.services import ServiceConfig

Format = Literal["yaml", "toml", "json"]
LineMap = dict[KeyPath, int]

__all__ = ["EXTENSIONS", "Format", "load_config", "parse_config"]

EXTENSIONS: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at `path`; its format follows the extension."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(filename, None, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(filename, None, "", "is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(filename, None, "", "permission denied") from None
    except OSError as e:
        raise ConfigError(filename, None, "", f"cannot read: {e.strerror or e}") from None
    try:
        # utf-8-sig: a byte order mark some editors write is not part of the config.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(filename, line, "", f"not UTF-8 text (byte {e.start})") from None
    return parse_config(text, filename, _format_of(filename))


def _format_of(filename: str) -> Format:
    suffix = os.path.splitext(filename)[1]
    fmt = EXTENSIONS.get(suffix.lower())
    if fmt is None:
        shown = repr(suffix) if suffix else "none"
        *most, last = EXTENSIONS
        raise ConfigError(
            filename,
            None,
            "",
            f"unknown config file extension {shown}: name it {', '.join(most)} or {last}",
        )
    return fmt


def parse_config(text: str, filename: str, fmt: Format = "yaml") -> Config:
    """Validate config `text`; `filename` is only used to name the file in errors."""
    if fmt == "yaml":
        data, lines = _load_yaml(text, filename)
    elif fmt == "toml":
        data, lines = _load_toml(text, filename)
    elif fmt == "json":
        data, lines = _load_json(text, filename)
    else:
        raise ValueError(f"unknown config format {fmt!r}; expected 'yaml', 'toml' or 'json'")
    if data is None:
        data = {}
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        errors = _explain(e, data, lines, filename)
    reported = {e.path for e in errors}
    for problem in _cross_problems(data):
        path = format_path(problem.path)
        if path not in reported:
            reported.add(path)
            errors.append(ConfigError(filename, _line_of(problem.path, lines), path, str(problem)))
    raise combine(errors) from None


def _cross_problems(data: Any) -> list[PathError]:
    """checks.py over the parts of `data` that validate on their own (see the module rules)."""
    if not isinstance(data, dict):
        return []
    raw = data.get("clusters")
    clusters = raw if isinstance(raw, list) else []
    names = [
        (i, c["name"])
        for i, c in enumerate(clusters)
        if isinstance(c, dict) and isinstance(c.get("name"), str) and _NAME.match(c["name"])
    ]
    admin = _valid(AdminConfig, data.get("admin"))
    return config_problems(
        listeners=_valid_items(ListenerConfig, data.get("listeners")),
        cluster_names=names,
        # A cluster without a valid name might be the one a route names: do not guess.
        all_names=len(names) == len(clusters),
        admin=admin,
        demo_backends=_valid_items(DemoBackendConfig, data.get("demo_backends")),
        services=_valid_items(ServiceConfig, data.get("services")),
    )


_M = typing.TypeVar("_M", bound=BaseModel)
_NAME = re.compile(NAME_PATTERN)


def _valid(model: type[_M], value: Any) -> _M | None:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _valid_items(model: type[_M], value: Any) -> list[tuple[int, _M]]:
    if not isinstance(value, list):
        return []
    found = ((i, _valid(model, item)) for i, item in enumerate(value))
    return [(i, part) for i, part in found if part is not None]


def _duplicate_key(filename: str, line: int, path: KeyPath, first: int) -> ConfigError:
    return ConfigError(
        filename, line, format_path(path), f"duplicate key {path[-1]!r} (first at line {first})"
    )


# ---------------------------------------------------------------- YAML

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _load_yaml(text: str, filename: str) -> tuple[Any, LineMap]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        lines: LineMap = {(): root.start_mark.line + 1}
        return _YamlBuilder(loader, filename, lines).build(root, ()), lines
    except yaml.MarkedYAMLError as e:
        raise ConfigError(filename, _mark_line(e), "", _yaml_reason(e)) from None
    except yaml.YAMLError as e:  # unmarked: rare (e.g. a reader error without position)
        raise ConfigError(filename, None, "", str(e)) from None
    except RecursionError:
        raise ConfigError(filename, None, "", "nested too deeply") from None
    finally:
        loader.dispose()


def _mark_line(e: yaml.MarkedYAMLError) -> int | None:
    mark = e.problem_mark or e.context_mark
    return None if mark is None else mark.line + 1


def _yaml_reason(e: yaml.MarkedYAMLError) -> str:
    reason = e.problem or e.context or "invalid YAML"
    if e.context and e.problem:
        # "while parsing a block mapping" and its start line help find an unbalanced indent.
        where = f" that starts at line {e.context_mark.line + 1}" if e.context_mark else ""
        reason = f"{reason} ({e.context}{where})"
    return reason


class _YamlBuilder:
    """Builds plain data from composed YAML nodes, recording each key's line as it goes."""

    def __init__(self, loader: yaml.SafeLoader, filename: str, lines: LineMap) -> None:
        self.loader = loader
        self.filename = filename
        self.lines = lines
        # An alias is the same node met again: build it once (so `a: &x [...]` repeated many
        # times costs nothing more, the "billion laughs" defence), and refuse cycles.
        self.built: dict[int, Any] = {}
        self.active: set[int] = set()

    def build(self, node: Node, path: KeyPath) -> Any:
        key = id(node)
        if key in self.built:
            return self.built[key]
        if key in self.active:
            raise ConfigError(
                self.filename, node.start_mark.line + 1, format_path(path), "recursive alias"
            )
        self.active.add(key)
        try:
            if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
                value: Any = self._mapping(node, path)
            elif isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
                value = self._sequence(node, path)
            else:
                # Scalars, and collections with other tags (!!set, !!omap): the safe
                # constructor knows them, and refuses unknown and unsafe tags with a mark.
                value = self.loader.construct_object(node, deep=True)
        finally:
            self.active.discard(key)
        self.built[key] = value
        return value

    def _sequence(self, node: SequenceNode, path: KeyPath) -> list[Any]:
        out = []
        for i, item in enumerate(node.value):
            self.lines[(*path, i)] = item.start_mark.line + 1
            out.append(self.build(item, (*path, i)))
        return out

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merged: list[dict[Any, Any]] = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                raise ConfigError(
                    self.filename, line, format_path(path), "a key must be a plain value"
                )
            # Keys are taken as written: every key in a config is a name, and YAML 1.1 would
            # make `on:` or `no:` (a header named `No`?) a boolean and `404:` an integer.
            key: str = key_node.value
            if key in out:
                raise _duplicate_key(self.filename, line, (*path, key), first_line[key])
            first_line[key] = line
            self.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        # YAML merge keys (`<<: *defaults`): the mapping's own keys win, earlier sources win
        # over later ones, as in the YAML merge spec.
        for source in merged:
            for key, value in source.items():
                out.setdefault(key, value)
        return out

    def _merge_sources(self, node: Node, path: KeyPath) -> Iterator[dict[Any, Any]]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        for source in nodes:
            value = self.build(source, path)
            if not isinstance(value, dict):
                raise ConfigError(
                    self.filename,
                    source.start_mark.line + 1,
                    format_path(path),
                    "'<<' merges mappings only",
                )
            yield value


# ---------------------------------------------------------------- TOML

_TOML_AT = re.compile(r"\s*\((?:at line (\d+), column \d+|at end of document)\)\s*$")


def _load_toml(text: str, filename: str) -> tuple[Any, LineMap]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _TOML_AT.search(message)
        line = int(m.group(1)) if m and m.group(1) else None
        if m and line is None:
            line = text.count("\n") + 1
        reason = message[: m.start()] if m else message
        raise ConfigError(filename, line, "", reason[:1].lower() + reason[1:]) from None
    lines: LineMap = {}
    try:
        _TomlScanner(text, lines).run()
    except (_ScanError, IndexError, ValueError):
        pass  # the lines found so far are still right; later keys go without one
    return data, lines


class _ScanError(Exception):
    pass


def _string_end(s: str, i: int) -> int:
    """Past the closing quote of the `"`-string at `i` (TOML basic and JSON strings alike)."""
    i += 1
    while s[i] != '"':
        i += 2 if s[i] == "\\" else 1
    return i + 1


_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]+")
_SCALAR_END = frozenset(",]}#\r\n")


class _TomlScanner:
    """Walks TOML text that tomllib accepted, recording the line of each key and list item.

    It follows structure only (where strings start and end, brackets, keys) and does not
    check anything else; tomllib has.
    """

    def __init__(self, text: str, lines: LineMap) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.lines = lines
        self.array_tables: dict[KeyPath, int] = {}  # path of an `[[x]]` array → items so far

    def run(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip(newlines=True)
            if self.i >= len(self.s):
                return
            if self.s.startswith("[[", self.i):
                self.i += 2
                table = self._header(self._keys(), array=True)
                self._expect("]]")
            elif self.s[self.i] == "[":
                self.i += 1
                table = self._header(self._keys(), array=False)
                self._expect("]")
            else:
                self._keyval(table)

    def _header(self, keys: list[str], *, array: bool) -> KeyPath:
        path: KeyPath = ()
        for n, key in enumerate(keys):
            path = (*path, key)
            self.lines.setdefault(path, self.line)
            last = n == len(keys) - 1
            if array and last:
                count = self.array_tables.get(path, 0)
                self.array_tables[path] = count + 1
                path = (*path, count)
                self.lines[path] = self.line
            elif path in self.array_tables:
                # `[a.b]` after `[[a]]` means b inside a's latest item.
                path = (*path, self.array_tables[path] - 1)
        return path

    def _keyval(self, base: KeyPath) -> None:
        line = self.line
        keys = self._keys()
        path = base
        for key in keys:
            path = (*path, key)
            self.lines.setdefault(path, line)
        self._skip()
        self._expect("=")
        self._skip()
        self._value(path)

    def _keys(self) -> list[str]:
        keys = []
        while True:
            self._skip()
            c = self.s[self.i]
            if c == '"':
                raw = self._basic_string()
                try:
                    keys.append(json.loads(raw))
                except ValueError:
                    keys.append(raw[1:-1])  # an escape JSON lacks (\e, \U): close enough
            elif c == "'":
                keys.append(self._literal_string()[1:-1])
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if not m:
                    raise _ScanError
                keys.append(m.group())
                self.i = m.end()
            self._skip()
            if self.i < len(self.s) and self.s[self.i] == ".":
                self.i += 1
                continue
            return keys

    def _value(self, path: KeyPath) -> None:
        s = self.s
        if s.startswith('"""', self.i) or s.startswith("'''", self.i):
            self._multiline_string()
        elif s[self.i] == '"':
            self._basic_string()
        elif s[self.i] == "'":
            self._literal_string()
        elif s[self.i] == "[":
            self.i += 1
            index = 0
            while True:
                self._skip(newlines=True)
                if s[self.i] == "]":
                    self.i += 1
                    return
                self.lines[(*path, index)] = self.line
                self._value((*path, index))
                self._skip(newlines=True)
                if s[self.i] == ",":
                    self.i += 1
                index += 1
        elif s[self.i] == "{":
            self.i += 1
            while True:
                self._skip(newlines=True)
                if s[self.i] == "}":
                    self.i += 1
                    return
                self._keyval(path)
                self._skip(newlines=True)
                if s[self.i] == ",":
                    self.i += 1
        else:
            start = self.i
            while self.i < len(s) and s[self.i] not in _SCALAR_END:
                self.i += 1
            if self.i == start:
                raise _ScanError  # no progress: the scan lost its way

    def _skip(self, *, newlines: bool = False) -> None:
        """Skip blanks (and, where `newlines`, line ends and comments)."""
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t":
                self.i += 1
            elif c == "#":
                while self.i < len(s) and s[self.i] != "\n":
                    self.i += 1
            elif newlines and c in "\r\n":
                self.line += c == "\n"
                self.i += 1
            else:
                return

    def _expect(self, token: str) -> None:
        self._skip()
        if not self.s.startswith(token, self.i):
            raise _ScanError
        self.i += len(token)

    def _basic_string(self) -> str:
        start, self.i = self.i, _string_end(self.s, self.i)
        return self.s[start : self.i]

    def _literal_string(self) -> str:
        end = self.s.index("'", self.i + 1)
        raw = self.s[self.i : end + 1]
        self.i = end + 1
        return raw

    def _multiline_string(self) -> None:
        s = self.s
        quote = s[self.i : self.i + 3]
        start = self.i = self.i + 3
        while not s.startswith(quote, self.i):
            self.i += 2 if quote == '"""' and s[self.i] == "\\" else 1
            if self.i > len(s):
                raise _ScanError
        self.i += 3
        # Up to two more quotes may close the string: `""""a""""`.
        for _ in range(2):
            if self.i < len(s) and s[self.i] == quote[0]:
                self.i += 1
        self.line += s.count("\n", start, self.i)


# ---------------------------------------------------------------- JSON


def _load_json(text: str, filename: str) -> tuple[Any, LineMap]:
    if not text.strip():
        return None, {}  # an empty file is an empty config, as in YAML and TOML
    lines: LineMap = {(): 1}
    try:
        data = json.loads(text)
        _JsonScanner(text, filename, lines).value(())
    except json.JSONDecodeError as e:
        raise ConfigError(filename, e.lineno, "", e.msg[:1].lower() + e.msg[1:]) from None
    except RecursionError:
        raise ConfigError(filename, None, "", "nested too deeply") from None
    return data, lines


class _JsonScanner:
    """Walks JSON text that json.loads accepted, recording the line of each key and item, and
    refusing a key given twice in one object (json.loads would keep the last one)."""

    def __init__(self, text: str, filename: str, lines: LineMap) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.filename = filename
        self.lines = lines

    def value(self, path: KeyPath) -> None:
        self._skip()
        c = self.s[self.i]
        if c == "{":
            self.i += 1
            first_line: dict[str, int] = {}
            while self._more("}"):
                line = self.line
                key = json.loads(self._string())
                if key in first_line:
                    raise _duplicate_key(self.filename, line, (*path, key), first_line[key])
                first_line[key] = line
                self.lines[(*path, key)] = line
                self._skip()
                self.i += 1  # the ':'
                self.value((*path, key))
        elif c == "[":
            self.i += 1
            index = 0
            while self._more("]"):
                self._skip()
                self.lines[(*path, index)] = self.line
                self.value((*path, index))
                index += 1
        elif c == '"':
            self._string()
        else:
            while self.i < len(self.s) and self.s[self.i] not in ",]} \t\r\n":
                self.i += 1

    def _more(self, close: str) -> bool:
        """Past a separating ',' if any: False (and past `close`) at the end of a container."""
        self._skip()
        if self.s[self.i] == ",":
            self.i += 1
            self._skip()
        if self.s[self.i] == close:
            self.i += 1
            return False
        return True

    def _string(self) -> str:
        self._skip()
        start, self.i = self.i, _string_end(self.s, self.i)
        return self.s[start : self.i]

    def _skip(self) -> None:
        s = self.s
        while self.i < len(s) and s[self.i] in " \t\r\n":
            self.line += s[self.i] == "\n"
            self.i += 1


# ---------------------------------------------------------------- pydantic errors → ConfigError


def _explain(exc: ValidationError, data: Any, lines: LineMap, filename: str) -> list[ConfigError]:
    """One ConfigError per key path pydantic found wrong, merging a union's per-branch errors."""
    found: dict[KeyPath, tuple[KeyPath, list[str]]] = {}  # path → (path of its line, reasons)
    for err in exc.errors():
        loc: KeyPath = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if err["type"] == "missing":
            # A missing key has no line of its own: point at the mapping that lacks it.
            parent = _in_data(loc[:-1], data)
            path, line_path = (*parent, loc[-1]), parent
            reason = f"missing required key {loc[-1]!r}"
        else:
            # pydantic adds locations that are not keys (a union's branch name, `[key]` for
            # a dict key); only the part of the location found in the data is a key path.
            if isinstance(cause, SiblingError):  # raised for a field, about another key
                path = (*_in_data(loc[:-1], data), *cause.path)
            else:
                path = _in_data(loc, data)
                if isinstance(cause, PathError):
                    path = (*path, *cause.path)
            line_path = path
            reason = _reason(err, loc)
        reasons = found.setdefault(path, (line_path, []))[1]
        if reason not in reasons:
            reasons.append(reason)
    return [
        ConfigError(filename, _line_of(line_path, lines), format_path(path), _merge(reasons))
        for path, (line_path, reasons) in found.items()
    ]


def _in_data(loc: KeyPath, data: Any) -> KeyPath:
    node = data
    for n, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        else:
            return loc[:n]
    return loc


def _line_of(path: KeyPath, lines: LineMap) -> int | None:
    for n in range(len(path), -1, -1):
        line = lines.get(path[:n])
        if line is not None:
            return line
    return None


_GOT = re.compile(r"^expected (.*)(, got .*)$")


def _merge(reasons: list[str]) -> str:
    """`expected an integer, got 'x'` + `expected 'auto', got 'x'` → one sentence."""
    if len(reasons) == 1:
        return reasons[0]
    parts = [m.groups() for r in reasons if (m := _GOT.match(r))]
    if len(parts) == len(reasons) and len({got for _, got in parts}) == 1:
        return "expected " + " or ".join(what for what, _ in parts) + parts[0][1]
    return "; ".join(reasons)


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _reason(err: Any, loc: KeyPath) -> str:
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    got = _show(err.get("input"))
    if kind == "extra_forbidden":
        key = loc[-1]
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {key!r}{hint}"
    if kind in ("value_error", "assertion_error"):
        cause = ctx.get("error")
        if cause is not None:
            return str(cause)
        return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {got}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got}"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "too_short":
        return f"needs at least {ctx['min_length']} items"
    if kind == "too_long":
        return f"takes at most {ctx['max_length']} items"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return (
                "a name is letters, digits, '_', '.' and '-', starting with a letter or digit;"
                f" got {got}"
            )
        return f"must match {ctx.get('pattern')}, got {got}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx[key]}, got {got}"
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


def _show(value: Any) -> str:
    """A value as the user wrote it, or its kind when it is too big to repeat."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(path: KeyPath) -> list[str]:
    """The keys the model at `path` accepts, for a did-you-mean hint; [] when unknown."""
    tp: Any = Config
    for part in path:
        model = _model_in(tp)
        if isinstance(part, int):
            tp = _item_type(tp)
        elif model is not None and part in model.model_fields:
            tp = model.model_fields[part].annotation
        else:
            return []
        if tp is None:
            return []
    model = _model_in(tp)
    return list(model.model_fields) if model is not None else []


def _model_in(tp: Any) -> type[BaseModel] | None:
    """The model class in `tp`, looking through `X | None`."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _item_type(tp: Any) -> Any:
    """The item type of `list[X]` or `list[X] | None`."""
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0]
    for arg in typing.get_args(tp):
        if typing.get_origin(arg) is list:
            return typing.get_args(arg)[0]
    return None
