"""Routes: match a request (host, path, method, header, query, cookie) to an action.

Rules of this module:
- Routes are compiled once per config snapshot into plain predicates; matching a request runs
  the cheapest tests first (path, host, method) and touches headers only for routes that ask.
- The first matching route wins, in config order. No match means 404.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from itertools import accumulate
from typing import NamedTuple
from urllib.parse import parse_qsl

from bascule.codec.headers import cookie_values
from bascule.config.schema import HeaderEdits, HeaderMatch, RouteConfig

HeaderLookup = Callable[[bytes], list[bytes]]

# action kinds
FORWARD = 0
REDIRECT = 1
DIRECT = 2


class DirectSpec(NamedTuple):
    """A fixed answer; framed per request (HEAD, Connection: close) by the exchange."""

    status: int
    body: bytes
    content_type: bytes


class HeaderEditor:
    """Per-route set/add/remove of header fields, applied to a (name, value) list."""

    __slots__ = ("add", "remove", "set")

    def __init__(self, spec: HeaderEdits) -> None:
        self.set = [(k.encode(), v.encode()) for k, v in spec.set.items()]
        self.add = [(k.encode(), v.encode()) for k, v in spec.add.items()]
        self.remove = frozenset(k.lower().encode() for k in spec.remove) | frozenset(
            k.lower() for k, _ in self.set
        )

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


class Route:
    """A compiled route: its predicates and its action."""

    __slots__ = (
        "buffer_request",
        "cluster",
        "direct",
        "kind",
        "max_request_body",
        "name",
        "prefix",
        "redirect",
        "request_edits",
        "response_edits",
        "rewrite_prefix",
        "split",
        "split_totals",
        "tests",
    )

    def __init__(self, spec: RouteConfig, index: int) -> None:
        self.name = spec.name or f"route{index}"
        m = spec.match
        tests: list[Callable[[str, str, str, str, HeaderLookup], bool]] = []
        if m.path is not None:
            exact = m.path
            tests.append(lambda method, host, path, query, h: path == exact)
        self.prefix = m.path_prefix
        if m.path_prefix is not None and m.path_prefix != "/":
            prefix = m.path_prefix
            tests.append(lambda method, host, path, query, h: path.startswith(prefix))
        if m.path_regex is not None:
            rx = re.compile(m.path_regex)
            tests.append(lambda method, host, path, query, h: rx.fullmatch(path) is not None)
        if m.host is not None:
            if m.host.startswith("*."):
                suffix = m.host[1:]
                tests.append(lambda method, host, path, query, h: host.endswith(suffix))
            else:
                wanted = m.host
                tests.append(lambda method, host, path, query, h: host == wanted)
        if m.method is not None:
            methods = frozenset(m.method)
            tests.append(lambda method, host, path, query, h: method in methods)
        tests += [_header_test(hm) for hm in m.headers]
        tests += [_query_test(qm) for qm in m.query]
        tests += [_cookie_test(cm) for cm in m.cookies]
        self.tests = tuple(tests)

        self.cluster: str | None = spec.cluster
        self.split: list[str] = []
        self.split_totals: list[int] = []
        self.redirect = spec.redirect
        self.direct: DirectSpec | None = None
        if spec.cluster is not None or spec.split is not None:
            self.kind = FORWARD
            if spec.split is not None:
                self.split = [w.cluster for w in spec.split]
                self.split_totals = list(accumulate(w.weight for w in spec.split))
        elif spec.redirect is not None:
            self.kind = REDIRECT
        else:
            self.kind = DIRECT
            d = spec.direct_response
            assert d is not None
            self.direct = DirectSpec(d.status, d.body.encode(), d.content_type.encode())
        self.rewrite_prefix = spec.rewrite_path_prefix
        self.request_edits = HeaderEditor(spec.request_headers)
        self.response_edits = HeaderEditor(spec.response_headers)
        self.buffer_request = spec.buffer_request
        self.max_request_body = spec.max_request_body

    def matches(self, method: str, host: str, path: str, query: str, h: HeaderLookup) -> bool:
        for test in self.tests:
            if not test(method, host, path, query, h):
                return False
        return True

    def pick_cluster(self) -> str:
        """The cluster for this request: fixed, or a weighted draw for a split (canary)."""
        if self.cluster is not None:
            return self.cluster
        draw = random.random() * self.split_totals[-1]
        for name, total in zip(self.split, self.split_totals, strict=True):
            if draw < total:
                return name
        return self.split[-1]

    def rewrite(self, path: str) -> str:
        """Replace the matched prefix (the query string is kept by the caller)."""
        assert self.prefix is not None and self.rewrite_prefix is not None
        rest = path[len(self.prefix) :]
        new = self.rewrite_prefix
        if new.endswith("/") and rest.startswith("/"):
            rest = rest[1:]
        return (new + rest) or "/"

    def redirect_location(self, scheme: str, host: str, path: str, query: str) -> str:
        r = self.redirect
        assert r is not None
        if r.location is not None:
            location = r.location
        else:
            target_path = r.path if r.path is not None else path
            if r.scheme is None and r.host is None:
                location = target_path
            else:
                location = f"{r.scheme or scheme}://{r.host or host}{target_path}"
        if r.keep_query and query:
            location += ("&" if "?" in location else "?") + query
        return location


class Router:
    """The routes of one listener, in order."""

    __slots__ = ("routes",)

    def __init__(self, specs: list[RouteConfig]) -> None:
        self.routes = tuple(Route(spec, i) for i, spec in enumerate(specs))

    def match(self, method: str, host: str, path: str, query: str, h: HeaderLookup) -> Route | None:
        for route in self.routes:
            if route.matches(method, host, path, query, h):
                return route
        return None


def _value_test(spec: HeaderMatch) -> Callable[[list[str]], bool]:
    if spec.present is False:
        return lambda values: not values
    if spec.value is not None:
        wanted = spec.value
        return lambda values: wanted in values
    if spec.regex is not None:
        rx = re.compile(spec.regex)
        return lambda values: any(rx.fullmatch(v) for v in values)
    return lambda values: bool(values)


def _header_test(spec: HeaderMatch) -> Callable[[str, str, str, str, HeaderLookup], bool]:
    name = spec.name.lower().encode()
    test = _value_test(spec)
    return lambda method, host, path, query, h: test([v.decode("latin-1").strip() for v in h(name)])


def _query_test(spec: HeaderMatch) -> Callable[[str, str, str, str, HeaderLookup], bool]:
    name = spec.name
    test = _value_test(spec)
    return lambda method, host, path, query, h: test(
        [v for k, v in parse_qsl(query, keep_blank_values=True) if k == name]
    )


def _cookie_test(spec: HeaderMatch) -> Callable[[str, str, str, str, HeaderLookup], bool]:
    name = spec.name.encode("latin-1")
    test = _value_test(spec)
    return lambda method, host, path, query, h: test(
        [v.decode("latin-1") for v in cookie_values(h(b"cookie"), name)]
    )
