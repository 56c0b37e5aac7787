"""Cluster config of the clusters issue: balancer options, hash keys, endpoint flags, health
checks, outlier detection, limits, stickiness, discovery, admin; each bad value refused with
file, line and key path."""

from __future__ import annotations

import pytest

from bascule.config.errors import ConfigError
from bascule.config.loader import parse_config
from bascule.upstream.cluster import COOKIE, HEADER, QUERY, SOURCE_IP, URI, Cluster

BASE = """\
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
"""


def cluster_yaml(extra: str, endpoint: str = "") -> str:
    """BASE with `extra` lines under the cluster and `endpoint` keys on its first endpoint."""
    text = BASE + "".join(f"    {line}\n" for line in extra.splitlines())
    if endpoint:
        text = text.replace(
            "      - address: 127.0.0.1:9001\n",
            "      - address: 127.0.0.1:9001\n"
            + "".join(f"        {line}\n" for line in endpoint.splitlines()),
        )
    return text


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bascule.yaml")
    return str(info.value)


def test_everything_valid() -> None:
    config = parse_config(
        cluster_yaml(
            """balancer: ring_hash
balancer_options: {ring_size: 2048}
hash_key: {header: X-User}
health_check:
  kind: http
  interval: 2s
  jitter: 0.2
  timeout: 500ms
  rise: 3
  fall: 2
  port: 8081
  method: HEAD
  path: /healthz
  host: app.internal
  expect_status: ["200-299", "404"]
  expect_body: ok
outlier_detection: {consecutive_failures: 3, base_ejection_time: 10s, max_ejection_percent: 50}
limits: {max_requests: 100, max_pending: 20, queue_timeout: 1s}
sticky: {cookie: srv, secret: k, max_age: 1h}""",
            "slow_start: 30s\ndrain: true\ncheck_address: 127.0.0.1:7000",
        ),
        "bascule.yaml",
    )
    spec = config.clusters[0]
    assert spec.balancer_options == {"ring_size": 2048}
    assert spec.health_check is not None and spec.health_check.timeout == 0.5
    assert spec.endpoints[0].slow_start == 30.0 and spec.endpoints[0].drain
    cluster = Cluster(spec)
    assert cluster.keyed and cluster.extended and cluster.hash_kind == HEADER
    assert cluster.hash_name == b"x-user"
    assert cluster.endpoints[0].drain and cluster.endpoints[0].slow_start == 30.0
    assert not cluster.endpoints[0].available  # draining


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("hash_key: source_ip", SOURCE_IP),
        ("hash_key: uri", URI),
        ("hash_key: {cookie: sid}", COOKIE),
        ("hash_key: {query: q}", QUERY),
    ],
)
def test_hash_keys(key: str, kind: int) -> None:
    config = parse_config(cluster_yaml(f"balancer: maglev\n{key}"), "bascule.yaml")
    assert Cluster(config.clusters[0]).hash_kind == kind


def test_plain_cluster_is_not_extended() -> None:
    cluster = Cluster(parse_config(BASE, "bascule.yaml").clusters[0])
    assert not cluster.extended and not cluster.keyed


def test_source_ip_needs_no_key() -> None:
    config = parse_config(cluster_yaml("balancer: source_ip"), "bascule.yaml")
    assert Cluster(config.clusters[0]).hash_kind == SOURCE_IP


@pytest.mark.parametrize(
    ("extra", "endpoint", "expected"),
    [
        (
            "balancer: maglev",
            "",
            "bascule.yaml:6 clusters[0].balancer: balancer 'maglev' hashes a key: give hash_key "
            "(source_ip, uri, header, cookie or query)",
        ),
        (
            "balancer: round_robin\nhash_key: uri",
            "",
            "bascule.yaml:7 clusters[0].hash_key: balancer 'round_robin' ignores keys; hash_key "
            "needs one of hash, maglev, ring_hash, source_ip",
        ),
        (
            "balancer: maglev\nhash_key: {header: a, cookie: b}",
            "",
            "bascule.yaml:7 clusters[0].hash_key: give exactly one of source_ip, uri, header, "
            "cookie, query (got header, cookie)",
        ),
        (
            "balancer: maglev\nhash_key: {header: 'a b'}",
            "",
            "bascule.yaml:7 clusters[0].hash_key.header: 'a b' is not a valid header name",
        ),
        (
            "balancer: maglev\nhash_key: uri\nbalancer_options: {table_size: 100}",
            "",
            "bascule.yaml:8 clusters[0].balancer_options.table_size: option 'table_size' must be "
            "a prime number, got 100",
        ),
        (
            "balancer_options: {ring_size: 5}",
            "",
            "bascule.yaml:6 clusters[0].balancer_options.ring_size: balancer 'round_robin' has no "
            "option 'ring_size'; accepted: none",
        ),
        (
            "balancer: least_request\nbalancer_options: {choice_count: 1}",
            "",
            "bascule.yaml:7 clusters[0].balancer_options.choice_count: option 'choice_count' must "
            "be at least 2, got 1",
        ),
        (
            "",
            "weight: 1001",
            "bascule.yaml:5 clusters[0].endpoints[0].weight: must be at most 1000, got 1001",
        ),
        (
            "",
            "weight: -1",
            "bascule.yaml:5 clusters[0].endpoints[0].weight: must be at least 0, got -1",
        ),
        (
            "",
            "slow_start: -1s",
            "bascule.yaml:5 clusters[0].endpoints[0].slow_start: expected a duration such as "
            "250ms, 5s or 2m, got '-1s'",
        ),
        (
            "health_check: {rise: 0}",
            "",
            "bascule.yaml:6 clusters[0].health_check.rise: must be at least 1, got 0",
        ),
        (
            "health_check: {fall: 0}",
            "",
            "bascule.yaml:6 clusters[0].health_check.fall: must be at least 1, got 0",
        ),
        (
            "health_check: {interval: 0}",
            "",
            "bascule.yaml:6 clusters[0].health_check.interval: must be positive, got 0",
        ),
        (
            "health_check: {expect_status: ['299-200']}",
            "",
            "bascule.yaml:6 clusters[0].health_check.expect_status[0]: status range '299-200' "
            "ends before it starts",
        ),
        (
            "health_check: {path: health}",
            "",
            "bascule.yaml:6 clusters[0].health_check.path: must start with '/' and contain no "
            "spaces or CR/LF, got 'health'",
        ),
        (
            "outlier_detection: {consecutive_failures: 0}",
            "",
            "bascule.yaml:6 clusters[0].outlier_detection.consecutive_failures: must be at least "
            "1, got 0",
        ),
        (
            "limits: {max_requests: -1}",
            "",
            "bascule.yaml:6 clusters[0].limits.max_requests: must be at least 0, got -1",
        ),
        (
            "discovery: {dns: web.internal}",
            "",
            "bascule.yaml:6 clusters[0].discovery.port: A+AAAA records carry no port: give port",
        ),
        (
            "discovery: {dns: a, file: b}",
            "",
            "bascule.yaml:6 clusters[0].discovery: give exactly one of dns, file",
        ),
    ],
)
def test_bad_cluster_config(extra: str, endpoint: str, expected: str) -> None:
    assert error_of(cluster_yaml(extra, endpoint)) == expected


def test_duplicate_endpoints_refused() -> None:
    text = BASE.replace("127.0.0.1:9002", "127.0.0.1:9001")
    assert error_of(text) == (
        "bascule.yaml:5 clusters[0].endpoints[1].address: duplicate endpoint 127.0.0.1:9001"
    )


def test_endpoints_needed_unless_discovered() -> None:
    assert error_of("clusters:\n  - name: app\n") == (
        "bascule.yaml:2 clusters[0].endpoints: a cluster needs at least one endpoint, or discovery"
    )
    config = parse_config(
        "clusters:\n  - name: app\n    discovery: {file: eps.yaml}\n", "bascule.yaml"
    )
    assert config.clusters[0].endpoints == []


def test_admin_address() -> None:
    config = parse_config("admin: {address: 127.0.0.1:9901}\n", "bascule.yaml")
    assert config.admin is not None and config.admin.address == ("127.0.0.1", 9901)
    assert error_of("admin: {address: 127.0.0.1:99999}\n") == (
        "bascule.yaml:1 admin.address: port 99999 out of range"
    )
