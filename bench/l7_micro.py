"""Pure-Python cost of one keep-alive exchange on bascule's L7 path, sockets left out.

Drives a real HttpSession and a pooled UpstreamConnection with in-memory transports, so the
figure is what bascule's own code costs per request (parsing, routing, head rewriting,
pooling, access log formatting), without the kernel. Run: .venv/bin/python bench/l7_micro.py
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import time

import uvloop

from bascule.config.schema import Config
from bascule.l7.context import ListenerContext
from bascule.l7.h1.client import UpstreamConnection
from bascule.l7.session import HttpSession
from bascule.observe.access_log import AccessLog
from bascule.testing.fakes import FakeTransport
from bascule.upstream.cluster import Cluster

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 02:30:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n"
    b"Last-Modified: Sun, 22 Nov 2026 02:20:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6740ee00-3"\r\nAccept-Ranges: bytes\r\n\r\nok\n'
)


async def main(n: int, log_path: str | None, profile: bool) -> None:
    config = Config.model_validate({
        "access_log": {"path": log_path},
        "listeners": [{"name": "bench", "address": "127.0.0.1:18090",
                       "routes": [{"match": {"path_prefix": "/"}, "cluster": "backends"}]}],
        "clusters": [{"name": "backends", "endpoints": [{"address": "127.0.0.1:18091"}]}],
    })
    loop = asyncio.get_running_loop()
    cluster = Cluster(config.clusters[0])
    log = AccessLog(config.access_log.path, config.access_log.format)
    ctx = ListenerContext(config.listeners[0], {"backends": cluster}, log, loop)
    endpoint = cluster.endpoints[0]
    pool = cluster.pools[endpoint]
    conn = UpstreamConnection(pool, endpoint, loop)
    conn.connection_made(FakeTransport(("127.0.0.1", 18091), record=False))  # type: ignore[arg-type]
    pool.release(conn, loop.time())
    session = HttpSession(ctx)
    session.connection_made(FakeTransport(("127.0.0.1", 40000), record=False))  # type: ignore[arg-type]

    def one() -> None:
        session.data_received(REQUEST)
        conn.data_received(RESPONSE)

    for _ in range(2000):
        one()
    await asyncio.sleep(0)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    # The minimum over short rounds: other processes on the machine only ever add time.
    best = float("inf")
    rounds = max(n // 2000, 1)
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(2000):
            one()
        best = min(best, time.perf_counter() - t0)
        await asyncio.sleep(0)  # let the access log flush as it would between reads
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    log.close()
    print(f"{best / 2000 * 1e6:.2f} us per exchange, best of {rounds} rounds of 2000 "
          f"(access log {'on' if log_path else 'off'})")


if __name__ == "__main__":
    n = int(os.environ.get("N", "50000"))
    profile = "--profile" in sys.argv
    uvloop.run(main(n, None, profile))
    uvloop.run(main(n, "/dev/null", profile))
