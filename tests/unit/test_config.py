"""Config loading: valid files, every default, units, and each bad file's exact message."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bascule.config.demo import DEMO_YAML, demo_config
from bascule.config.errors import ConfigError, ConfigErrors, format_path
from bascule.config.loader import load_config, parse_config
from bascule.config.schema import (
    AccessLogConfig,
    ClusterTimeouts,
    Config,
    DirectResponse,
    EndpointConfig,
    ForwardedConfig,
    HeaderEdits,
    ListenerLimits,
    ListenerTimeouts,
    PoolConfig,
    Redirect,
    RetryConfig,
    RouteMatch,
)
from bascule.config.units import parse_duration, parse_size

FULL_YAML = """\
workers: 2
access_log:
  path: /var/log/bascule/access.log
  format: combined
listeners:
  - name: web
    address: 127.0.0.1:8080
    protocol: http
    trusted_proxies: [10.0.0.0/8, "::1/128"]
    server_name: edge-1
    timeouts: {request_header: 5s, idle: 1m, request_body: 30s, drain: 250ms}
    limits: {max_uri: 4KiB, max_header_size: 64KiB, max_request_body: 1MB}
    forwarded: {via: false}
    routes:
      - name: api
        match:
          host: "*.Example.com"
          path_prefix: /api/
          method: get
          headers: [{name: x-canary, value: "1"}]
        split:
          - {cluster: app, weight: 90}
          - {cluster: canary, weight: 10}
        rewrite_path_prefix: /
        request_headers:
          set: {X-Env: prod}
          remove: [X-Debug]
      - match: {path: /healthz}
        direct_response: {status: 200, body: "ok\\n"}
      - match: {path: /old}
        redirect: {path: /new, status: 301}
      - cluster: app
        buffer_request: true
        max_request_body: 64KiB
clusters:
  - name: app
    balancer: round_robin
    endpoints:
      - address: 127.0.0.1:9001
        weight: 3
      - address: "[::1]:9002"
        backup: true
    timeouts: {connect: 250ms, response_header: 5s}
    pool: {max_idle: 8, idle_timeout: 10s}
    retries: {attempts: 1}
  - name: canary
    endpoints:
      - address: localhost:9003
"""

FULL_TOML = """\
workers = 2

[access_log]
path = "/var/log/bascule/access.log"
format = "combined"

[[listeners]]
name = "web"
address = "127.0.0.1:8080"
protocol = "http"
trusted_proxies = ["10.0.0.0/8", "::1/128"]
server_name = "edge-1"
timeouts = { request_header = "5s", idle = "1m", request_body = "30s", drain = "250ms" }
limits = { max_uri = "4KiB", max_header_size = "64KiB", max_request_body = "1MB" }
forwarded.via = false

[[listeners.routes]]
name = "api"
match.host = "*.Example.com"
match.path_prefix = "/api/"
match.method = "get"
match.headers = [{ name = "x-canary", value = "1" }]
split = [
  { cluster = "app", weight = 90 },
  { cluster = "canary", weight = 10 },
]
rewrite_path_prefix = "/"
request_headers = { set = { X-Env = "prod" }, remove = ["X-Debug"] }

[[listeners.routes]]
match = { path = "/healthz" }
direct_response = { status = 200, body = "ok\\n" }

[[listeners.routes]]
match = { path = "/old" }
redirect = { path = "/new", status = 301 }

[[listeners.routes]]
cluster = "app"
buffer_request = true
max_request_body = "64KiB"

[[clusters]]
name = "app"
balancer = "round_robin"
endpoints = [
  { address = "127.0.0.1:9001", weight = 3 },
  { address = "[::1]:9002", backup = true },
]
timeouts = { connect = "250ms", response_header = "5s" }
pool = { max_idle = 8, idle_timeout = "10s" }
retries.attempts = 1

[[clusters]]
name = "canary"
[[clusters.endpoints]]
address = "localhost:9003"
"""

# A valid base the bad configs below break one key of; line numbers in the tests count on it.
BASE = """\
listeners:
  - name: web
    address: 127.0.0.1:8080
    routes:
      - cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
"""


def error_of(text: str, fmt: str = "yaml", filename: str = "bascule.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename, fmt)  # type: ignore[arg-type]
    return str(info.value)


# ---------------------------------------------------------------- valid configs


def test_full_yaml() -> None:
    config = parse_config(FULL_YAML, "bascule.yaml", "yaml")
    assert config.workers == 2 and config.worker_count == 2
    assert config.access_log == AccessLogConfig(
        path="/var/log/bascule/access.log", format="combined"
    )
    (web,) = config.listeners
    assert web.address == ("127.0.0.1", 8080)
    assert web.trusted_proxies == ["10.0.0.0/8", "::1/128"]
    assert web.timeouts == ListenerTimeouts(
        request_header=5.0, idle=60.0, request_body=30.0, drain=0.25
    )
    assert (web.limits.max_uri, web.limits.max_header_size) == (4096, 65536)
    assert web.limits.max_request_body == 1_000_000
    assert web.forwarded == ForwardedConfig(via=False)
    api, health, old, rest = web.routes
    assert api.match.host == "*.example.com"  # hosts compare lower-case
    assert api.match.method == ["GET"]  # one method may be written bare; upper-cased
    assert [(w.cluster, w.weight) for w in api.split or []] == [("app", 90), ("canary", 10)]
    assert api.request_headers == HeaderEdits(set={"X-Env": "prod"}, remove=["X-Debug"])
    assert health.direct_response == DirectResponse(status=200, body="ok\n")
    assert old.redirect == Redirect(path="/new", status=301)
    assert rest.cluster == "app" and rest.buffer_request and rest.max_request_body == 65536
    app, canary = config.clusters
    assert app.endpoints[0] == EndpointConfig(address="127.0.0.1:9001", weight=3)  # type: ignore[arg-type]
    assert app.endpoints[1].address == ("::1", 9002) and app.endpoints[1].backup
    assert app.timeouts == ClusterTimeouts(connect=0.25, response_header=5.0)
    assert app.pool == PoolConfig(max_idle=8, idle_timeout=10.0)
    assert app.retries == RetryConfig(attempts=1)
    assert canary.endpoints[0].address == ("localhost", 9003)


def test_toml_equals_yaml() -> None:
    assert parse_config(FULL_TOML, "bascule.toml", "toml") == parse_config(
        FULL_YAML, "bascule.yaml", "yaml"
    )


def test_load_config_picks_format_by_extension(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(FULL_YAML)
    (tmp_path / "a.yml").write_text(FULL_YAML)
    (tmp_path / "a.toml").write_text(FULL_TOML)
    expected = parse_config(FULL_YAML, "x", "yaml")
    for name in ("a.yaml", "a.yml", "a.toml"):
        assert load_config(tmp_path / name) == expected
        assert load_config(str(tmp_path / name)) == expected


def test_yaml_anchors_and_merge_keys() -> None:
    text = """\
clusters:
  - name: a
    endpoints: [{address: "127.0.0.1:1"}]
    timeouts: &fast {connect: 1s, idle: 2s}
  - name: b
    endpoints: [{address: "127.0.0.1:2"}]
    timeouts:
      <<: *fast
      idle: 5s
"""
    a, b = parse_config(text, "bascule.yaml").clusters
    assert (a.timeouts.connect, a.timeouts.idle) == (1.0, 2.0)
    assert (b.timeouts.connect, b.timeouts.idle) == (1.0, 5.0)  # own key wins over merged


def test_yaml_keys_are_taken_as_written() -> None:
    # YAML 1.1 reads `on` as true; a config key is always a name.
    text = "listeners: []\non: 1\n"
    assert error_of(text) == "bascule.yaml:2 on: unknown key 'on'"
    config = parse_config(
        BASE.replace(
            "      - cluster: app\n",
            "      - cluster: app\n        request_headers: {set: {No: 'x'}}\n",
        ),
        "bascule.yaml",
    )
    assert config.listeners[0].routes[0].request_headers.set == {"No": "x"}


# ---------------------------------------------------------------- defaults


def test_empty_config_defaults() -> None:
    config = Config()
    assert config.workers == "auto" and config.worker_count >= 1
    assert config.access_log == AccessLogConfig(path="-", format="json")
    assert config.listeners == [] and config.clusters == []


def test_cluster_and_endpoint_defaults() -> None:
    cluster = parse_config(BASE, "bascule.yaml").clusters[0]
    assert cluster.balancer == "round_robin"
    endpoint = cluster.endpoints[0]
    assert (endpoint.weight, endpoint.backup, endpoint.max_connections) == (1, False, 0)
    timeouts = cluster.timeouts
    assert (timeouts.connect, timeouts.response_header, timeouts.idle, timeouts.total) == (
        5.0,
        60.0,
        60.0,
        0.0,
    )
    assert (cluster.pool.max_idle, cluster.pool.idle_timeout) == (64, 30.0)
    assert cluster.retries.attempts == 2


def test_listener_and_route_defaults() -> None:
    listener = parse_config(BASE, "bascule.yaml").listeners[0]
    assert listener.protocol == "http"
    assert listener.trusted_proxies == []
    assert listener.server_name == "bascule"
    forwarded = listener.forwarded
    assert all(
        (
            forwarded.x_forwarded_for,
            forwarded.x_forwarded_proto,
            forwarded.x_forwarded_host,
            forwarded.forwarded,
            forwarded.via,
        )
    )
    t = listener.timeouts
    assert (t.request_header, t.idle, t.request_body, t.drain) == (10.0, 60.0, 60.0, 30.0)
    limits = listener.limits
    assert limits == ListenerLimits(
        max_uri=8192,
        max_header_size=65536,
        max_headers=100,
        max_request_body=0,
        max_buffered_body=10 * 1024 * 1024,
        max_connections=10000,
        max_connections_per_client=0,
        min_body_rate=0,
        body_rate_window=5.0,
    )
    route = listener.routes[0]
    assert route.name is None and route.match == RouteMatch()
    assert route.match.headers == route.match.query == route.match.cookies == []
    assert route.split is None and route.redirect is None and route.direct_response is None
    assert route.rewrite_path_prefix is None
    assert route.request_headers == route.response_headers == HeaderEdits(set={}, add={}, remove=[])
    assert route.buffer_request is False and route.max_request_body is None


def test_action_defaults() -> None:
    assert Redirect(path="/") == Redirect(path="/", status=302, keep_query=True)
    response = DirectResponse()
    assert (response.status, response.body, response.content_type) == (
        200,
        "",
        "text/plain; charset=utf-8",
    )


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1.5h", 5400.0),
        ("100us", 1e-4),
        (2, 2.0),
        ("3", 3.0),
        (0.5, 0.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    config = parse_config(f"{BASE}    timeouts: {{connect: {text}}}\n", "bascule.yaml")
    assert config.clusters[0].timeouts.connect == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KiB", 65536),
        ("1MB", 1_000_000),
        ("1MiB", 1 << 20),
        ("4096", 4096),
        (4096, 4096),
        ("2k", 2048),
        ("1GB", 10**9),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size
    text_yaml = BASE.replace("    routes:", f"    limits: {{max_uri: {text}}}\n    routes:")
    assert parse_config(text_yaml, "bascule.yaml").listeners[0].limits.max_uri == size


def test_bad_duration_and_size() -> None:
    assert error_of(BASE + "    timeouts: {connect: 5x}\n") == (
        "bascule.yaml:11 clusters[0].timeouts.connect: "
        "expected a duration such as 250ms, 5s or 2m, got '5x'"
    )
    assert error_of(BASE + "    timeouts: {connect: -1}\n") == (
        "bascule.yaml:11 clusters[0].timeouts.connect: duration must not be negative, got -1"
    )
    text = BASE.replace("    routes:", "    limits: {max_uri: 12 parsecs}\n    routes:")
    assert error_of(text) == (
        "bascule.yaml:4 listeners[0].limits.max_uri: "
        "expected a size such as 64KiB, 1MiB or 4096, got '12 parsecs'"
    )


# ---------------------------------------------------------------- bad configs


def test_port_out_of_range() -> None:
    text = BASE.replace("127.0.0.1:9002", "127.0.0.1:70000")
    assert error_of(text) == (
        "bascule.yaml:10 clusters[0].endpoints[1].address: port 70000 out of range"
    )


def test_endpoint_port_zero() -> None:
    text = BASE.replace("127.0.0.1:9002", "127.0.0.1:0")
    assert error_of(text) == (
        "bascule.yaml:10 clusters[0].endpoints[1].address: "
        "port 0 is not a port an endpoint can listen on"
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "listeners:",
            "listners: []\nlisteners:",
            "bascule.yaml:1 listners: unknown key 'listners' (did you mean 'listeners'?)",
        ),
        (
            "    routes:",
            "    colour: blue\n    routes:",
            "bascule.yaml:4 listeners[0].colour: unknown key 'colour' (did you mean 'cluster'?)",
        ),
        (
            "      - cluster: app",
            "      - cluster: app\n        match: {pth: /}",
            "bascule.yaml:6 listeners[0].routes[0].match.pth: unknown key 'pth' "
            "(did you mean 'path'?)",
        ),
        (
            "      - address: 127.0.0.1:9002",
            "      - address: 127.0.0.1:9002\n        wieght: 2",
            "bascule.yaml:11 clusters[0].endpoints[1].wieght: unknown key 'wieght' "
            "(did you mean 'weight'?)",
        ),
    ],
)
def test_unknown_keys_at_every_depth(old: str, new: str, expected: str) -> None:
    assert error_of(BASE.replace(old, new)) == expected


def test_missing_required_key_points_at_its_mapping() -> None:
    text = BASE.replace("  - name: app\n    endpoints:", "  - endpoints:")
    assert error_of(text) == "bascule.yaml:7 clusters[0].name: missing required key 'name'"
    text = BASE.replace("    address: 127.0.0.1:8080\n", "")
    assert error_of(text) == ("bascule.yaml:2 listeners[0].address: missing required key 'address'")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      - address: 127.0.0.1:9002",
            "      - address: 127.0.0.1:9002\n        weight: heavy",
            "bascule.yaml:11 clusters[0].endpoints[1].weight: expected an integer, got 'heavy'",
        ),
        (
            "      - address: 127.0.0.1:9002",
            "      - address: 127.0.0.1:9002\n        backup: maybe",
            "bascule.yaml:11 clusters[0].endpoints[1].backup: expected true or false, got 'maybe'",
        ),
        (
            "    endpoints:\n      - address: 127.0.0.1:9001\n      - address: 127.0.0.1:9002\n",
            "    endpoints: 127.0.0.1:9001\n",
            "bascule.yaml:8 clusters[0].endpoints: expected a list, got '127.0.0.1:9001'",
        ),
        (
            "listeners:",
            "workers: many\nlisteners:",
            "bascule.yaml:1 workers: expected an integer or 'auto', got 'many'",
        ),
        (
            "    routes:",
            "    protocol: gopher\n    routes:",
            "bascule.yaml:4 listeners[0].protocol: "
            "expected 'http', 'tcp' or 'udp', got 'gopher'",
        ),
        (
            "      - address: 127.0.0.1:9002",
            "      - address: 127.0.0.1:9002\n        weight: -1",
            "bascule.yaml:11 clusters[0].endpoints[1].weight: must be at least 0, got -1",
        ),
        (
            "  - name: app",
            "  - name: my app",
            "bascule.yaml:7 clusters[0].name: a name is letters, digits, '_', '.' and '-', "
            "starting with a letter or digit; got 'my app'",
        ),
    ],
)
def test_wrong_types(old: str, new: str, expected: str) -> None:
    assert error_of(BASE.replace(old, new)) == expected


def test_literal_lists_allowed_values() -> None:
    text = "access_log:\n  format: xml\n"
    assert error_of(text) == (
        "bascule.yaml:2 access_log.format: expected 'json' or 'combined', got 'xml'"
    )
    text = BASE.replace("      - cluster: app", "      - redirect: {path: /, status: 200}")
    assert error_of(text) == (
        "bascule.yaml:5 listeners[0].routes[0].redirect.status: "
        "expected 301, 302, 303, 307 or 308, got 200"
    )


def test_duplicate_yaml_key() -> None:
    text = BASE.replace("  - name: app\n", "  - name: app\n    name: app2\n")
    assert error_of(text) == (
        "bascule.yaml:8 clusters[0].name: duplicate key 'name' (first at line 7)"
    )


def test_yaml_syntax_error() -> None:
    text = BASE.replace("    endpoints:", "   endpoints:")
    assert error_of(text) == (
        "bascule.yaml:8: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection that starts at line 7)"
    )
    assert error_of("a: [1, 2\nb: 3\n") == (
        "bascule.yaml:2: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence that starts at line 1)"
    )


def test_yaml_unsafe_tag_refused() -> None:
    assert error_of("workers: !!python/object/apply:os.system [true]\n") == (
        "bascule.yaml:1: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'"
    )


def test_yaml_recursive_alias_refused() -> None:
    assert error_of("a: &x [*x]\n") == "bascule.yaml:1 a[0]: recursive alias"


def test_yaml_top_level_must_be_a_mapping() -> None:
    assert error_of("- 1\n") == "bascule.yaml:1: expected a mapping, got a list"


def test_unknown_cluster_in_route() -> None:
    text = BASE.replace("      - cluster: app", "      - cluster: ap")
    assert error_of(text) == "bascule.yaml:5 listeners[0].routes[0].cluster: no cluster named 'ap'"


def test_unknown_cluster_in_split() -> None:
    text = BASE.replace(
        "      - cluster: app",
        "      - split:\n"
        "          - {cluster: app, weight: 1}\n"
        "          - {cluster: b, weight: 1}",
    )
    assert error_of(text) == (
        "bascule.yaml:7 listeners[0].routes[0].split[1].cluster: no cluster named 'b'"
    )


def test_duplicate_cluster_name() -> None:
    text = BASE + "  - name: app\n    endpoints: [{address: '127.0.0.1:1'}]\n"
    assert error_of(text) == "bascule.yaml:11 clusters[1].name: duplicate cluster name 'app'"


def test_duplicate_listener_name() -> None:
    text = BASE.replace(
        "clusters:",
        "  - name: web\n    address: 127.0.0.1:8081\n    routes: [{cluster: app}]\nclusters:",
    )
    assert error_of(text) == "bascule.yaml:6 listeners[1].name: duplicate listener name 'web'"


def test_duplicate_endpoint() -> None:
    text = BASE.replace("127.0.0.1:9002", "127.0.0.1:9001")
    assert error_of(text) == (
        "bascule.yaml:10 clusters[0].endpoints[1].address: duplicate endpoint 127.0.0.1:9001"
    )


def test_route_with_two_actions() -> None:
    text = BASE.replace("      - cluster: app", "      - cluster: app\n        redirect: {path: /}")
    assert error_of(text) == (
        "bascule.yaml:6 listeners[0].routes[0].redirect: a route needs exactly one action: "
        "cluster, split, redirect or direct_response (got cluster, redirect)"
    )


def test_route_with_no_action() -> None:
    text = BASE.replace("      - cluster: app", "      - name: nothing")
    assert error_of(text) == (
        "bascule.yaml:5 listeners[0].routes[0]: a route needs exactly one action: "
        "cluster, split, redirect or direct_response"
    )


def test_bad_regex() -> None:
    text = BASE.replace(
        "      - cluster: app", "      - cluster: app\n        match: {path_regex: '(['}"
    )
    assert error_of(text) == (
        "bascule.yaml:6 listeners[0].routes[0].match.path_regex: invalid regular expression "
        "'([': unterminated character set at position 1"
    )
    text = BASE.replace(
        "      - cluster: app",
        "      - cluster: app\n        match:\n          headers:\n"
        "            - {name: x, regex: '(('}",
    )
    assert error_of(text) == (
        "bascule.yaml:8 listeners[0].routes[0].match.headers[0].regex: invalid regular "
        "expression '((': missing ), unterminated subpattern at position 1"
    )


def test_bad_cidr_in_trusted_proxies() -> None:
    text = BASE.replace(
        "    routes:", "    trusted_proxies:\n      - 10.0.0.0/8\n      - 10.0.0.0/33\n    routes:"
    )
    assert error_of(text) == (
        "bascule.yaml:6 listeners[0].trusted_proxies[1]: '10.0.0.0/33' is not a CIDR such as "
        "10.0.0.0/8"
    )


def test_unknown_balancer() -> None:
    text = BASE.replace("  - name: app\n", "  - name: app\n    balancer: fastest\n")
    message = error_of(text)
    # The list of known balancers grows; the message names them all.
    assert message.startswith(
        "bascule.yaml:8 clusters[0].balancer: unknown balancer 'fastest'; known: "
    )
    assert "round_robin" in message.split("known: ")[1].split(", ")


def test_header_injection_refused() -> None:
    text = BASE.replace(
        "      - cluster: app",
        '      - cluster: app\n        response_headers: {set: {X-A: "1\\r\\nSet-Cookie: x"}}',
    )
    assert error_of(text) == (
        "bascule.yaml:6 listeners[0].routes[0].response_headers.set.X-A: "
        "header values must not contain CR, LF or NUL"
    )


def test_redirect_to_itself_refused() -> None:
    text = BASE.replace("      - cluster: app", "      - redirect: {status: 301}")
    assert error_of(text) == (
        "bascule.yaml:5 listeners[0].routes[0].redirect: "
        "a redirect needs location, or at least one of scheme, host, path"
    )


def test_all_errors_at_once_sorted_by_line() -> None:
    text = """\
clusters:
  - name: a
    endpoints:
      - address: 127.0.0.1:70000
        weight: heavy
access_log:
  format: xml
workers: 0
"""
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, "bascule.yaml")
    assert str(info.value).splitlines() == [
        "bascule.yaml:4 clusters[0].endpoints[0].address: port 70000 out of range",
        "bascule.yaml:5 clusters[0].endpoints[0].weight: expected an integer, got 'heavy'",
        "bascule.yaml:7 access_log.format: expected 'json' or 'combined', got 'xml'",
        "bascule.yaml:8 workers: workers must be between 1 and 256, or auto",
    ]
    assert [e.line for e in info.value.errors] == [4, 5, 7, 8]
    assert info.value.line == 4  # the first problem's, for code that looks at one


# ---------------------------------------------------------------- TOML errors


def test_toml_errors_have_lines() -> None:
    text = FULL_TOML.replace('address = "localhost:9003"', 'address = "localhost:99999"')
    assert error_of(text, "toml", "bascule.toml") == (
        "bascule.toml:57 clusters[1].endpoints[0].address: port 99999 out of range"
    )
    text = FULL_TOML.replace(
        '  { cluster = "canary", weight = 10 },', '  { cluster = "x", weight = 10 },'
    )
    assert error_of(text, "toml", "bascule.toml") == (
        "bascule.toml:25 listeners[0].routes[0].split[1].cluster: no cluster named 'x'"
    )
    text = FULL_TOML.replace("retries.attempts = 1", "retries.attempts = 1\nretries.tries = 2")
    assert error_of(text, "toml", "bascule.toml") == (
        "bascule.toml:53 clusters[0].retries.tries: unknown key 'tries'"
    )
    text = FULL_TOML.replace('[[clusters]]\nname = "canary"\n', "[[clusters]]\n")
    assert error_of(text, "toml", "bascule.toml") == (
        "bascule.toml:54 clusters[1].name: missing required key 'name'"
    )


def test_toml_syntax_error() -> None:
    assert error_of("workers = 2\nclusters = [\n", "toml", "b.toml").startswith("b.toml:3: ")
    assert error_of("[a]\n[a]\n", "toml", "b.toml") == "b.toml:2: cannot declare ('a',) twice"


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("content", ["", "\n\n", "# nothing yet\n", "---\n"])
def test_empty_file_is_an_empty_config(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bascule.yaml"
    path.write_text(content)
    assert load_config(path) == Config()
    (tmp_path / "bascule.toml").write_text(content.replace("---", ""))
    assert load_config(tmp_path / "bascule.toml") == Config()
    (tmp_path / "bascule.json").write_text(content.replace("---", "").replace("# nothing yet", ""))
    assert load_config(tmp_path / "bascule.json") == Config()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: no such file"
    assert (info.value.file, info.value.line, info.value.path) == (str(path), None, "")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a config file"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"workers: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: not UTF-8 text (byte 16)"


def test_file_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bascule.yaml").write_text("workers: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config("bascule.yaml")
    assert str(info.value) == "bascule.yaml:1 workers: workers must be between 1 and 256, or auto"


# ---------------------------------------------------------------- the error type


def test_error_format_without_line() -> None:
    err = ConfigError("bascule.yaml", None, "clusters[0].name", "no")
    assert str(err) == "bascule.yaml clusters[0].name: no"
    assert str(ConfigError("b.yaml", 3, "", "bad")) == "b.yaml:3: bad"


def test_errors_pickle() -> None:
    one = ConfigError("b.yaml", 14, "clusters[0].endpoints[1].address", "port 70000 out of range")
    copy = pickle.loads(pickle.dumps(one))
    assert (copy.file, copy.line, copy.path, copy.reason, str(copy)) == (
        one.file,
        one.line,
        one.path,
        one.reason,
        str(one),
    )
    many = ConfigErrors([ConfigError("b.yaml", None, "a", "x"), one])
    assert str(pickle.loads(pickle.dumps(many))) == str(many)
    assert str(many).splitlines()[0] == str(one)  # sorted: unknown lines last


def test_format_path() -> None:
    assert format_path(("clusters", 0, "endpoints", 1, "address")) == (
        "clusters[0].endpoints[1].address"
    )
    assert format_path(("set", "X-Env")) == "set.X-Env"
    assert format_path(("set", "a b")) == "set['a b']"
    assert format_path(()) == ""


# ---------------------------------------------------------------- the demo


def test_demo_config() -> None:
    config = demo_config()
    (web,) = config.listeners
    assert (web.name, web.address, web.protocol) == ("web", ("127.0.0.1", 8080), "http")
    health, old, rest = web.routes
    assert health.match.path == "/healthz" and health.direct_response is not None
    assert old.match.path == "/old" and old.redirect == Redirect(path="/")
    assert rest.match.path_prefix == "/" and rest.cluster == "demo"
    (demo,) = config.clusters
    assert demo.balancer == "round_robin"
    assert [e.address for e in demo.endpoints] == [b.address for b in config.demo_backends]
    assert [b.name for b in config.demo_backends] == ["demo-1", "demo-2"]
    assert DEMO_YAML.startswith("# bascule demo")


# ---------------------------------------------------------------- robustness

_WORDS = ["clusters", "listeners", "name", "endpoints", "address", "[[clusters]]", '"""', "---"]
_CONFIG_ALPHABET = st.sampled_from([*"abc:-[]{}=,.\"'#&*!<> \n\t0123456789", *_WORDS])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_CONFIG_ALPHABET, max_size=40).map("".join),
    st.sampled_from(["yaml", "toml", "json"]),
)
def test_any_text_gives_a_config_or_a_config_error(text: str, fmt: str) -> None:
    try:
        parse_config(text, "fuzz", fmt)  # type: ignore[arg-type]
    except ConfigError as e:
        assert str(e).startswith("fuzz")


# ---------------------------------------------------------------- the reference doc

README = Path(__file__).parents[2] / "README.md"


class _Reference:
    """The README's config reference: its last section, from `## Config reference` on."""

    @staticmethod
    def read_text() -> str:
        text = README.read_text()
        return text[text.index("\n## Config reference\n") :]


REFERENCE = _Reference()


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    seen.add(model)
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in seen:
                _models(tp, seen)
            stack.extend(getattr(tp, "__args__", ()))


def test_reference_names_every_key() -> None:
    text = REFERENCE.read_text()
    models: set[type[BaseModel]] = set()
    _models(Config, models)
    missing = {
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if f"| `{name}` |" not in text
    }
    assert not missing


def test_reference_examples_are_valid() -> None:
    blocks = re.findall(r"```(yaml|toml)\n(.*?)```", REFERENCE.read_text(), re.S)
    assert [fmt for fmt, _ in blocks] == ["yaml", "toml"]
    for fmt, body in blocks:
        parse_config(body, f"config-reference.{fmt}", fmt)


def test_durations_must_be_finite(tmp_path: Path) -> None:
    bad = tmp_path / "b.yaml"
    bad.write_text(
        "clusters:\n  - name: c\n    endpoints: [{address: 127.0.0.1:9}]\n"
        "    timeouts: {connect: .nan}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "clusters[0].timeouts.connect: duration must be a finite number" in str(e.value)


def test_udp_dsr_needs_its_vip_to_itself_and_interfaces_distinct_tables(tmp_path: Path) -> None:
    def services(*entries: str) -> str:
        return "services:\n" + "".join(entries)

    def svc(name: str, mode: str, port: int, iface: str = "eth0", proto: str = "udp") -> str:
        mac = ", mac: '02:00:00:00:00:11'" if mode == "dsr" else ""
        return (
            f"  - {{name: {name}, vip: 198.18.0.100, port: {port}, protocol: {proto}, "
            f"mode: {mode}, interface: {iface}, balancer: maglev, "
            f"endpoints: [{{address: 198.18.0.11{mac}}}]}}\n"
        )

    path = tmp_path / "s.yaml"
    path.write_text(services(svc("dns", "dsr", 53), svc("other", "dsr", 54)))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "fragments carry no port" in str(e.value)
    path.write_text(
        services(svc("a", "dsr", 80, "eth-0", "tcp"), svc("b", "dsr", 81, "eth_0", "tcp"))
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "would share one nft table name" in str(e.value)
    path.write_text(services(svc("a", "dsr", 80, proto="tcp"), svc("b", "nat", 81, proto="tcp")))
    assert len(load_config(path).services) == 2


# ---------------------------------------------------------------- every problem at once


def test_model_level_errors_come_with_field_errors() -> None:
    # Before the fix, the model-level problems (interval 0 next to a bad rise in one
    # health_check, the duplicate endpoint next to a bad retries, the unknown cluster next to
    # anything else) only appeared once the field errors were fixed.
    text = """\
listeners:
  - name: web
    address: 127.0.0.1:8080
    routes:
      - cluster: nope
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9001
    retries: {attempts: 99}
    health_check:
      interval: 0
      rise: 0
"""
    assert error_of(text).splitlines() == [
        "bascule.yaml:5 listeners[0].routes[0].cluster: no cluster named 'nope'",
        "bascule.yaml:10 clusters[0].endpoints[1].address: duplicate endpoint 127.0.0.1:9001",
        "bascule.yaml:11 clusters[0].retries.attempts: must be at most 10, got 99",
        "bascule.yaml:13 clusters[0].health_check.interval: must be positive, got 0",
        "bascule.yaml:14 clusters[0].health_check.rise: must be at least 1, got 0",
    ]


def test_cross_checks_skip_what_failed_on_its_own() -> None:
    # A cluster with a bad field still exists by name: no false "no cluster named" for it.
    text = BASE.replace("127.0.0.1:9002", "127.0.0.1:70000")
    assert error_of(text) == (
        "bascule.yaml:10 clusters[0].endpoints[1].address: port 70000 out of range"
    )


def test_every_address_conflict_at_once() -> None:
    text = """\
admin: {address: 127.0.0.1:8081}
listeners:
  - {name: a, address: 127.0.0.1:8080, routes: [{cluster: app}]}
  - {name: b, address: 127.0.0.1:8080, routes: [{cluster: app}]}
  - {name: c, address: 127.0.0.1:8081, routes: [{cluster: app}]}
clusters:
  - {name: app, endpoints: [{address: 127.0.0.1:9001}]}
"""
    # Listeners claim their addresses first: the admin API is the one refused.
    assert error_of(text).splitlines() == [
        "bascule.yaml:1 admin.address: 127.0.0.1:8081 is already listener c's address",
        "bascule.yaml:4 listeners[1].address: 127.0.0.1:8080 is already listener a's address",
    ]


_NOT_IPV4 = "is not an IPv4 address (each of its four numbers is 0 to 255)"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.300:80", f"'127.0.0.300' {_NOT_IPV4}"),
        ("10.1:80", f"'10.1' {_NOT_IPV4}"),
        ('"[::g]:80"', "'::g' is not an IPv6 address"),
        ("bad_host!:80", "'bad_host!' is neither an IP address nor a host name"),
    ],
)
def test_bad_hosts_in_addresses(address: str, reason: str) -> None:
    text = BASE.replace("127.0.0.1:9001", address)
    assert error_of(text) == f"bascule.yaml:9 clusters[0].endpoints[0].address: {reason}"


def test_host_names_still_accepted() -> None:
    config = parse_config(BASE.replace("127.0.0.1:9001", "backend-1.internal:9001"), "b.yaml")
    assert config.clusters[0].endpoints[0].address == ("backend-1.internal", 9001)


# ---------------------------------------------------------------- file formats


def _load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_json_config_with_lines(tmp_path: Path) -> None:
    good = tmp_path / "bascule.json"
    expected = parse_config(FULL_YAML, "x", "yaml")
    good.write_text(json.dumps(expected.model_dump(mode="json"), indent=2))
    assert load_config(good) == expected
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{\n  "clusters": [\n    {\n      "name": "c",\n      "endpoints": [\n'
        '        {"address": "127.0.0.1:70000"}\n      ]\n    }\n  ],\n  "wrkers": 1\n}\n'
    )
    assert _load_error(bad).splitlines() == [
        f"{bad}:6 clusters[0].endpoints[0].address: port 70000 out of range",
        f"{bad}:10 wrkers: unknown key 'wrkers' (did you mean 'workers'?)",
    ]


def test_json_syntax_error_and_duplicate_key() -> None:
    assert error_of('{\n  "workers": 1,\n}\n', "json", "b.json").startswith("b.json:3: ")
    assert error_of('{"workers": 1,\n "workers": 2}', "json", "b.json") == (
        "b.json:2 workers: duplicate key 'workers' (first at line 1)"
    )
    deep = "[" * 100_000 + "]" * 100_000
    assert error_of(deep, "json", "b.json") == "b.json: nested too deeply"


@pytest.mark.parametrize("name", ["bascule.conf", "bascule", "bascule.yaml.bak"])
def test_unknown_extension_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("workers: 1\n")
    suffix = Path(name).suffix
    shown = f"'{suffix}'" if suffix else "none"
    assert _load_error(path) == (
        f"{path}: unknown config file extension {shown}: name it .yaml, .yml, .toml or .json"
    )


L4 = """\
listeners:
  - name: t
    address: 127.0.0.1:0
    protocol: tcp
    cluster: app
clusters:
  - name: app
    endpoints: [{address: '127.0.0.1:1'}]
"""


def test_tcp_and_udp_listeners_with_cluster_load() -> None:
    for protocol in ("tcp", "udp"):
        config = parse_config(L4.replace("tcp", protocol), "bascule.yaml", "yaml")
        listener = config.listeners[0]
        assert (listener.protocol, listener.cluster, listener.routes) == (protocol, "app", [])


def test_tcp_listener_unknown_cluster() -> None:
    text = L4.replace("    cluster: app", "    cluster: ap")
    assert error_of(text) == "bascule.yaml:5 listeners[0].cluster: no cluster named 'ap'"


def test_tcp_listener_refuses_routes() -> None:
    text = L4.replace("    cluster: app", "    cluster: app\n    routes: [{cluster: app}]")
    assert error_of(text) == (
        "bascule.yaml:6 listeners[0].routes: tcp listeners take cluster, not routes"
    )


def test_udp_listener_needs_cluster() -> None:
    text = L4.replace("tcp", "udp").replace("    cluster: app\n", "")
    assert error_of(text) == "bascule.yaml:2 listeners[0].cluster: a udp listener needs a cluster"


def test_http_listener_refuses_cluster() -> None:
    text = L4.replace("    protocol: tcp\n", "")
    assert error_of(text) == (
        "bascule.yaml:4 listeners[0].cluster: http listeners take routes, not cluster"
    )
