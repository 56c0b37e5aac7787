"""Bodies stream through bascule with backpressure: memory stays flat whatever the size."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

from helpers import (
    Backend,
    BackendHandler,
    Seen,
    free_port,
    proxy_config,
    read_response,
    running,
)

BLOCK = bytes(range(256)) * 4096  # 1 MiB
GIB_BLOCKS = 1024


def big_download(h: BackendHandler, seen: Seen) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(BLOCK) * GIB_BLOCKS))
    h.end_headers()
    for _ in range(GIB_BLOCKS):
        h.wfile.write(BLOCK)
    h.wfile.flush()


def test_one_gib_through_a_slow_reader_keeps_memory_flat(tmp_path: Path) -> None:
    b = Backend(big_download)
    port = free_port()
    try:
        with running(proxy_config(port, [b.address]), tmp_path, port) as proxy:
            baseline = proxy.rss_kib()
            peak = baseline
            digest = hashlib.md5()
            received = 0
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(4096)
                head, _, first = head.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                assert b"Content-Length: 1073741824" in head
                digest.update(first)
                received += len(first)
                # slow phase: 2 s of small reads while the backend pushes as fast as it can
                slow_until = time.monotonic() + 2.0
                while time.monotonic() < slow_until:
                    chunk = s.recv(16384)
                    digest.update(chunk)
                    received += len(chunk)
                    time.sleep(0.005)
                    peak = max(peak, proxy.rss_kib())
                slow_received = received
                buf = bytearray(1 << 20)
                view = memoryview(buf)
                deadline = time.monotonic() + 60
                while received < len(BLOCK) * GIB_BLOCKS and time.monotonic() < deadline:
                    n = s.recv_into(view)
                    if not n:
                        break
                    digest.update(view[:n])
                    received += n
                    if received % (64 << 20) < n:
                        peak = max(peak, proxy.rss_kib())
    finally:
        b.stop()
    expected = hashlib.md5()
    for _ in range(GIB_BLOCKS):
        expected.update(BLOCK)
    assert received == len(BLOCK) * GIB_BLOCKS
    assert digest.hexdigest() == expected.hexdigest()
    assert slow_received < 64 << 20, "the slow phase should have exercised backpressure"
    # Flat: the proxy holds a few socket buffers, not the body.
    assert peak - baseline < 32 * 1024, f"RSS grew by {(peak - baseline) // 1024} MiB"


def test_upload_streams_to_a_slow_backend_with_flat_memory(tmp_path: Path) -> None:
    size = 256 << 20
    digest_holder: dict[str, str] = {}

    def handler(h: BackendHandler, seen: Seen) -> None:
        h.reply(200, digest_holder["digest"].encode())

    b = Backend(handler)

    def slow_read(h: BackendHandler, n: int) -> bytes:
        d = hashlib.md5()
        left = n
        t_end = time.monotonic() + 1.5
        while left:
            chunk = h.rfile.read(min(left, 8192 if time.monotonic() < t_end else 1 << 20))
            if not chunk:
                break
            d.update(chunk)
            left -= len(chunk)
            if time.monotonic() < t_end:
                time.sleep(0.002)
        digest_holder["digest"] = f"{n - left} {d.hexdigest()}"
        return b""

    b.server.read_body = slow_read  # type: ignore[method-assign]
    port = free_port()
    peak = [0]
    try:
        with running(proxy_config(port, [b.address]), tmp_path, port) as proxy:
            baseline = proxy.rss_kib()
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], proxy.rss_kib())
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            expected = hashlib.md5()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // len(BLOCK)):
                    s.sendall(BLOCK)
                    expected.update(BLOCK)
                head, body = read_response(s)
            stop.set()
            sampler.join()
    finally:
        b.stop()
    assert head.startswith(b"HTTP/1.1 200")
    assert body == f"{size} {expected.hexdigest()}".encode()
    assert peak[0] - baseline < 32 * 1024, f"RSS grew by {(peak[0] - baseline) // 1024} MiB"


def test_long_bodies_relayed_raw_keep_the_connections_reusable(tmp_path: Path) -> None:
    """Bodies longer than one read are relayed without the parser; the pool still works."""
    sizes = [300_000, 1, 700_001, 65_536, 2_000_000]

    def sized(h: BackendHandler, seen: Seen) -> None:
        n = int(seen.path.strip("/"))
        h.reply(200, bytes(i % 251 for i in range(n)))

    b = Backend(sized)
    port = free_port()
    try:
        with running(proxy_config(port, [b.address]), tmp_path, port), socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as s:
            for n in sizes * 2:
                s.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
                head, body = read_response(s)
                assert head.startswith(b"HTTP/1.1 200")
                assert body == bytes(i % 251 for i in range(n))
    finally:
        b.stop()
    assert len(b.requests) == len(sizes) * 2
    assert b.accepts == 1
