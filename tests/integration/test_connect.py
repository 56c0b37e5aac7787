"""The Connector over real loopback sockets: the pool's place is reserved at once and given
back exactly once, whatever the outcome (both builds: mypyc once broke this in a `finally`)."""

from __future__ import annotations

import asyncio
import socket

from bascule.config.schema import EndpointConfig
from bascule.l7.h1.client import UpstreamConnection
from bascule.upstream.cluster import make_endpoint
from bascule.upstream.connect import Connection, Connector
from bascule.upstream.pool import Pool, PoolKey


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(port: int) -> tuple[list[tuple[object, int, str]], Pool, int]:
    async def main() -> tuple[list[tuple[object, int, str]], Pool, int]:
        loop = asyncio.get_running_loop()
        endpoint = make_endpoint(EndpointConfig.model_validate({"address": f"127.0.0.1:{port}"}))
        pool = Pool(PoolKey("127.0.0.1", port), 4, 10.0)
        outcomes: list[tuple[object, int, str]] = []
        task = Connector(loop).open(
            pool,
            endpoint,
            lambda: UpstreamConnection(pool, endpoint, loop),
            lambda c, s, r: outcomes.append((c, s, r)),
            timeout=2.0,
        )
        reserved = pool.open
        await task
        for conn, _, _ in outcomes:
            if isinstance(conn, UpstreamConnection) and conn.transport is not None:
                conn.transport.close()
                await asyncio.sleep(0)
        return outcomes, pool, reserved

    return asyncio.run(main())


def test_refused_connect_gives_its_place_back_and_says_502() -> None:
    outcomes, pool, reserved = _run(_closed_port())
    assert reserved == 1  # counted before anything was awaited
    assert len(outcomes) == 1
    conn, status, reason = outcomes[0]
    assert conn is None and status == 502 and "127.0.0.1" in reason
    assert pool.open == 0 and pool.created == 0


def test_made_connection_keeps_its_place_and_is_counted() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        outcomes, pool, _ = _run(server.getsockname()[1])
    conn, status, _ = outcomes[0]
    assert isinstance(conn, Connection) and status == 0
    assert conn.counted and pool.created == 1
