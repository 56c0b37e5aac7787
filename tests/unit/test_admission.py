"""Admission as one synchronous decision (upstream/admission.py), on real clusters."""

from __future__ import annotations

from typing import Any

from bascule.balance.endpoint import Endpoint
from bascule.config.schema import ClusterConfig
from bascule.upstream.admission import QUEUE, Refuse, admit
from bascule.upstream.cluster import Cluster


class Waiter:
    def wake(self) -> bool:
        return True


def cluster(limits: dict[str, Any] | None = None, **endpoint: Any) -> Cluster:
    return Cluster(ClusterConfig.model_validate({
        "name": "c",
        "endpoints": [{"address": "127.0.0.1:9001", **endpoint}],
        "limits": limits or {},
    }))


def test_plain_pick_is_admitted_and_counted() -> None:
    c = cluster({"max_requests": 2})
    got = admit(c, c.pick, False)
    assert isinstance(got, Endpoint)
    assert c.active == 1


def test_max_requests_queues_while_there_is_room_then_refuses() -> None:
    c = cluster({"max_requests": 1, "max_pending": 1})
    c.active = 1
    assert admit(c, c.pick, False) is QUEUE
    c.waiting.append(Waiter())
    got = admit(c, c.pick, False)
    assert isinstance(got, Refuse) and got.status == 503
    assert "max_requests" in got.reason
    assert c.rejected == 1


def test_max_requests_is_checked_before_any_pick() -> None:
    c = cluster({"max_requests": 1})
    c.active = 1
    picked: list[bool] = []

    def pick() -> Endpoint | None:
        picked.append(True)
        return c.pick()

    assert isinstance(admit(c, pick, False), Refuse)
    assert not picked


def test_no_healthy_endpoint_is_503_and_not_a_limit() -> None:
    c = cluster()
    c.endpoints[0].set_check(False)
    got = admit(c, c.pick, False)
    assert isinstance(got, Refuse) and got.status == 503
    assert "no healthy endpoint" in got.reason
    assert c.rejected == 0


def test_a_retry_with_nobody_left_is_502_with_the_callers_reason() -> None:
    c = cluster()
    got = admit(c, lambda: None, True)
    assert isinstance(got, Refuse) and (got.status, got.reason) == (502, "")


def test_endpoint_limits_make_the_cluster_saturated_queue_or_full() -> None:
    c = cluster({"max_pending": 1}, max_connections=1)
    c.endpoints[0].active = 1
    assert admit(c, c.pick, False) is QUEUE
    c.waiting.append(Waiter())
    got = admit(c, c.pick, False)
    assert isinstance(got, Refuse) and "is full" in got.reason
    assert c.rejected == 1


def test_cluster_max_connections_with_no_idle_connection_waits() -> None:
    c = cluster({"max_connections": 1, "max_pending": 1})
    c.pools[c.endpoints[0]].open = 1  # the one connection the cluster may hold is busy
    assert admit(c, c.pick, False) is QUEUE
    c.waiting.append(Waiter())
    got = admit(c, c.pick, False)
    assert isinstance(got, Refuse) and "max_connections" in got.reason
