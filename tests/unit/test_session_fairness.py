"""A chunked request body through a real HttpSession and UpstreamConnection on in-memory
transports (no sockets): tiny chunks are parsed under a budget per loop turn and sent upstream
as one chunk per read, and the body arrives intact whatever the chunk sizes."""

from __future__ import annotations

import asyncio
import random

import uvloop

from bascule.config.schema import Config
from bascule.l7.context import ListenerContext
from bascule.l7.h1.client import UpstreamConnection
from bascule.l7.session import FAIR, HttpSession
from bascule.observe.access_log import AccessLog
from bascule.upstream.cluster import Cluster
from helpers import proxy_config

HEAD = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


class Transport:
    """What a session and an upstream connection need of a transport, in memory."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.writes: list[bytes] = []
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, lines: list[bytes]) -> None:
        self.writes.append(b"".join(lines))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...
    def abort(self) -> None: ...
    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...


def dechunk(data: bytes) -> bytes:
    parts = []
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol], 16)
        if size == 0:
            return b"".join(parts)
        parts.append(data[eol + 2:eol + 2 + size])
        assert data[eol + 2 + size:eol + 4 + size] == b"\r\n"
        pos = eol + 4 + size


async def relay(chunks: list[bytes], read_size: int) -> tuple[Transport, list[int]]:
    """Feed HEAD and `chunks` (chunked) to a session in reads of `read_size`; the upstream
    transport, and how many loop turns each read took."""
    config = Config.model_validate(proxy_config(1, ["127.0.0.1:2"]))
    loop = asyncio.get_running_loop()
    cluster = Cluster(config.clusters[0])
    ctx = ListenerContext(config.listeners[0], {"c": cluster}, AccessLog(None, "json"), loop)
    endpoint = cluster.endpoints[0]
    pool = cluster.pools[endpoint]
    upstream = Transport(("127.0.0.1", 2))
    conn = UpstreamConnection(pool, endpoint, loop)
    conn.connection_made(upstream)  # type: ignore[arg-type]
    pool.release(conn, loop.time())
    session = HttpSession(ctx)
    client = Transport(("127.0.0.1", 3))
    session.connection_made(client)  # type: ignore[arg-type]
    session.data_received(HEAD)
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    turns = []
    for i in range(0, len(wire), read_size):
        session.data_received(wire[i:i + read_size])
        n = 1
        while not client.reading:  # the rest of the read waits for later loop turns
            assert session._paused & FAIR
            await asyncio.sleep(0)
            n += 1
        turns.append(n)
    return upstream, turns


def test_one_byte_chunks_are_parsed_under_a_budget_and_sent_once_per_read() -> None:
    chunks = [bytes([97 + i % 26]) for i in range(30000)]  # 180 kB of 1-byte chunks
    upstream, turns = uvloop.run(relay(chunks, 65536))
    body_writes = upstream.writes[1:]  # after the request head
    assert dechunk(b"".join(body_writes)) == b"".join(chunks)
    # A 64 KiB read of 6-byte chunks holds ~11,000 of them: it takes many loop turns, and its
    # chunks go upstream in one write (the last one adds the last chunk).
    assert min(turns[:-1]) > 100
    assert len(body_writes) <= len(turns) + 1


def test_mixed_chunks_arrive_intact_whatever_the_reads() -> None:
    rng = random.Random(7)
    chunks = [rng.randbytes(rng.choice((1, 3, 700, 5000, 70000))) for _ in range(100)]
    for sent, read_size in ((chunks[:12], 7), (chunks, 1000), (chunks, 65536), (chunks, 262144)):
        upstream, _ = uvloop.run(relay(sent, read_size))
        assert dechunk(b"".join(upstream.writes[1:])) == b"".join(sent)


def test_large_chunks_are_parsed_in_large_slices() -> None:
    big = [b"z" * 65536] * 32
    upstream, turns = uvloop.run(relay(big, 262144))
    # 8 callbacks per turn of up to 16 KiB each: a 256 KiB read takes a few turns, not one
    # per 64-byte slice
    assert max(turns) <= 4
    assert dechunk(b"".join(upstream.writes[1:])) == b"".join(big)
