"""Sticky cookies: opaque values that map back to endpoints, and the key every worker shares."""

from __future__ import annotations

import re

from bascule.config.loader import parse_config
from bascule.runtime.sticky import new_secret, unkeyed_sticky, with_sticky_secret
from bascule.upstream.cluster import Cluster

CONFIG = """\
clusters:
  - name: app
    sticky: {}
    endpoints:
      - {address: 127.0.0.1:9001}
      - {address: 127.0.0.1:9002}
  - name: keyed
    sticky: {secret: s3cret}
    endpoints: [{address: 127.0.0.1:9001}]
  - name: plain
    endpoints: [{address: 127.0.0.1:9001}]
"""


def test_cookie_value_is_opaque_and_names_its_endpoint() -> None:
    config = with_sticky_secret(parse_config(CONFIG, "x.yaml"), "k")
    cluster = Cluster(config.clusters[0])
    values = [cluster.sticky_value(e) for e in cluster.endpoints]
    assert len(set(values)) == 2
    for endpoint, value in zip(cluster.endpoints, values, strict=True):
        assert re.fullmatch(rb"[0-9a-f]{24}", value)
        assert cluster.sticky_endpoint(value) is endpoint
    assert cluster.sticky_endpoint(b"127.0.0.1:9001") is None


def test_workers_built_from_one_snapshot_agree_and_restarts_do_not() -> None:
    config = parse_config(CONFIG, "x.yaml")
    run = with_sticky_secret(config, new_secret())
    a, b = Cluster(run.clusters[0]), Cluster(run.clusters[0])
    assert [a.sticky_value(e) for e in a.endpoints] == [b.sticky_value(e) for e in b.endpoints]
    other = Cluster(with_sticky_secret(config, new_secret()).clusters[0])
    assert other.sticky_value(other.endpoints[0]) != a.sticky_value(a.endpoints[0])
    # Built without any secret: a random key, never one made from the config.
    bare = [Cluster(config.clusters[0]) for _ in range(2)]
    assert bare[0].sticky_value(bare[0].endpoints[0]) != bare[1].sticky_value(bare[1].endpoints[0])


def test_only_sticky_clusters_without_secret_get_the_run_key() -> None:
    config = parse_config(CONFIG, "x.yaml")
    assert unkeyed_sticky(config) == [0]
    run = with_sticky_secret(config, "k")
    assert unkeyed_sticky(run) == []
    sticky = [c.sticky.secret if c.sticky else None for c in run.clusters]
    assert sticky == ["k", "s3cret", None]
    assert with_sticky_secret(run, "other") is run
