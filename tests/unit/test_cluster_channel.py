"""The supervisor-worker channel (JSON lines) and the live endpoint-set swap it drives."""

from __future__ import annotations

from bascule.config.loader import parse_config
from bascule.runtime import channel
from bascule.upstream.cluster import Cluster

CONFIG = """\
clusters:
  - name: app
    endpoints:
      - {address: 127.0.0.1:9001}
      - {address: 127.0.0.1:9002, weight: 2}
"""


def cluster() -> Cluster:
    return Cluster(parse_config(CONFIG, "x.yaml").clusters[0])


def test_line_reader_splits_and_skips_garbage() -> None:
    reader = channel.LineReader(b'{"a": 1}\n{"b"')
    assert reader.feed(b': 2}\nnot json\n[1, 2]\n\n{"c": 3') == [{"a": 1}, {"b": 2}]
    assert reader.feed(b"}\n") == [{"c": 3}]
    assert channel.LineReader().feed(channel.encode({"health": {"x/y": True}})) == [
        {"health": {"x/y": True}}
    ]


def test_health_messages_apply_to_named_endpoints() -> None:
    c = cluster()
    clusters = {"app": c}
    channel.apply(
        {"health": {"app/127.0.0.1:9002": False, "nope/1.2.3.4:1": False, "app/10.9.9.9:1": False}},
        clusters,
    )
    assert [e.healthy for e in c.endpoints] == [True, False]
    assert c.endpoints[1].state == "unhealthy"
    assert all(c.pick() is c.endpoints[0] for _ in range(5))
    channel.apply({"health": {"app/127.0.0.1:9002": True}}, clusters)
    assert c.endpoints[1].healthy


def test_endpoint_swap_keeps_state_and_pools() -> None:
    c = cluster()
    kept = c.endpoints[0]
    kept.requests = 7
    kept_pool = c.pools[kept]
    gone = c.endpoints[1]
    gone.active = 1  # an exchange still uses it
    channel.apply(
        {
            "endpoints": {
                "app": [
                    {"address": "127.0.0.1:9001"},
                    {"address": "127.0.0.1:9003", "weight": 5},
                ]
            }
        },
        {"app": c},
    )
    assert [e.address for e in c.endpoints] == ["127.0.0.1:9001", "127.0.0.1:9003"]
    assert c.endpoints[0] is kept and kept.requests == 7 and c.pools[kept] is kept_pool
    assert c.endpoints[1].weight == 5 and c.by_address["127.0.0.1:9003"] is c.endpoints[1]
    assert gone in c.pools and c.pools[gone].max_idle == 0  # kept until its exchange ends
    assert {c.pick() for _ in range(30)} == set(c.endpoints)
    # A bad spec, or an empty set, changes nothing.
    channel.apply({"endpoints": {"app": [{"address": "nonsense"}]}}, {"app": c})
    channel.apply({"endpoints": {"app": []}}, {"app": c})
    assert len(c.endpoints) == 2
    gone.active = 0
    channel.apply({"endpoints": {"app": [{"address": "127.0.0.1:9001"}]}}, {"app": c})
    assert gone not in c.pools and c.endpoints == (kept,)


def test_stats_report_is_one_line() -> None:
    c = cluster()
    c.endpoints[0].requests = 3
    line = channel.stats_report({"app": c})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    (message,) = channel.LineReader().feed(line)
    assert message["stats"]["app"]["endpoints"]["127.0.0.1:9001"]["requests"] == 3
