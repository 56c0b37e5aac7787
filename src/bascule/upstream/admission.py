"""Admission: may this request have an endpoint now, wait for one, or be refused?

Rules of this module (Envoy's circuit breakers, HAProxy's queues):
- One synchronous decision, no I/O: `admit` returns the endpoint (already counted against the
  cluster's `max_requests`), `QUEUE` (there is room in `max_pending`: the caller waits on the
  cluster), or a `Refuse` with the status the client gets and the reason the log gets.
- Limits are checked in the order they bind: the cluster's `max_requests` before any pick, the
  cluster's `max_connections` once an endpoint without an idle connection is picked, and the
  endpoints' own `max_connections` when the pick finds nobody (`saturated`).
- Every refusal that a limit caused counts in `cluster.rejected` (the admin API shows it);
  a cluster with no healthy endpoint is not a limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from bascule.balance.endpoint import Endpoint
from bascule.upstream.cluster import Cluster


class Refuse:
    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason  # "" for a retry that found no endpoint left: the caller's error


class Queue:
    __slots__ = ()


QUEUE: Final = Queue()


def _wait_or_refuse(cluster: Cluster, limit: str) -> Queue | Refuse:
    if len(cluster.waiting) < cluster.max_pending:
        return QUEUE
    cluster.rejected += 1
    return Refuse(503, f"cluster {cluster.name} is at {limit}")


def admit(
    cluster: Cluster, pick: Callable[[], Endpoint | None], retrying: bool
) -> Endpoint | Queue | Refuse:
    """`pick` chooses among the endpoints (key, stickiness, endpoints tried already)."""
    if cluster.max_requests and cluster.active >= cluster.max_requests:
        return _wait_or_refuse(cluster, "max_requests")
    endpoint = pick()
    if endpoint is None:
        saturated = cluster.saturated()
        if saturated and len(cluster.waiting) < cluster.max_pending:
            return QUEUE
        if retrying:
            return Refuse(502, "")
        if saturated:
            cluster.rejected += 1
            return Refuse(503, f"every endpoint of cluster {cluster.name} is full")
        return Refuse(503, f"no healthy endpoint in cluster {cluster.name}")
    if (
        cluster.max_connections
        and not cluster.pools[endpoint].idle
        and not cluster.room_for_connection(endpoint)
    ):
        # Every connection the cluster may hold is busy: wait for one, or overflow.
        return _wait_or_refuse(cluster, "max_connections")
    cluster.active += 1
    return endpoint
