"""One connection must not starve a worker: a client streaming 1-byte chunks as fast as it can
(`1\\r\\nx\\r\\n` repeated) and a normal keep-alive client on the same worker (issue 13, item 2).

The attacker and the endpoint it streams to run in processes of their own, so the only thing
they share with the normal client is bascule's one worker. The bound asserted is generous (the
machine is shared); the figures measured are printed for the report (`pytest -s`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from helpers import Backend, Client, free_port, proxy_config, running, wait_port

SOLO_SECONDS = 1.5
ATTACK_SECONDS = 3.0

# An endpoint that reads whatever comes and never answers: the attacker's body goes there.
SINK = textwrap.dedent("""
    import asyncio, sys
    class Sink(asyncio.Protocol):
        def data_received(self, data):
            pass
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", int(sys.argv[1]))
        await asyncio.sleep(float(sys.argv[2]))
    asyncio.run(main())
""")

# A client sending one chunked request whose chunks hold one byte each, as fast as it can.
ATTACKER = textwrap.dedent("""
    import socket, sys, time
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"POST /upload HTTP/1.1\\r\\nHost: x\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
    block = b"1\\r\\nx\\r\\n" * 20000
    sent = 0
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        s.sendall(block)
        sent += len(block)
    print(sent // 6)
""")


def run_client(port: int, seconds: float) -> list[float]:
    """Sequential keep-alive GETs for `seconds`: the latency of each."""
    latencies = []
    with Client(port, timeout=10) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.monotonic()
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body, _ = c.response()
            latencies.append(time.monotonic() - start)
            assert status == 200 and b'"path": "/"' in body
    return latencies


def p99(latencies: list[float]) -> float:
    return sorted(latencies)[int(len(latencies) * 0.99)]


def test_a_one_byte_chunk_stream_does_not_starve_a_normal_client(tmp_path: Path) -> None:
    backend = Backend()  # echo: a small JSON answer
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port), "60"])
    routes = [{"match": {"path_prefix": "/upload"}, "cluster": "sink"},
              {"match": {"path_prefix": "/"}, "cluster": "c"}]
    config = proxy_config(port, [backend.address], routes=routes, extra_clusters=[
        {"name": "sink", "endpoints": [{"address": f"127.0.0.1:{sink_port}"}]}])
    try:
        wait_port(sink_port)
        with running(config, tmp_path, port):
            run_client(port, 0.3)  # warm up: the pool holds a connection to the backend
            # Solo rounds before and after the attack: the machine is shared, and its load
            # drifts; their mean is the reference.
            solo = run_client(port, SOLO_SECONDS)
            attacker = subprocess.Popen(
                [sys.executable, "-c", ATTACKER, str(port), str(ATTACK_SECONDS + 1.0)],
                stdout=subprocess.PIPE, text=True)
            try:
                time.sleep(0.3)  # the attack is at full speed before the normal client starts
                attacked = run_client(port, ATTACK_SECONDS)
                out, _ = attacker.communicate(timeout=30)
            finally:
                attacker.kill()
                attacker.wait()
            solo += run_client(port, SOLO_SECONDS)
    finally:
        sink.kill()
        sink.wait()
        backend.stop()
    solo_rate = len(solo) / (2 * SOLO_SECONDS)
    attacked_rate = len(attacked) / ATTACK_SECONDS
    print(f"\nsolo {solo_rate:.0f} req/s p99 {p99(solo) * 1000:.1f} ms; with the attacker "
          f"{attacked_rate:.0f} req/s ({attacked_rate / solo_rate:.0%}) p99 "
          f"{p99(attacked) * 1000:.1f} ms; attacker sent {int(out or 0)} chunks")
    assert int(out), "the attacker ran"
    assert attacked_rate >= 0.5 * solo_rate
    assert p99(attacked) < 0.2


class CountingBackend:
    """An endpoint that reads a Content-Length body, answers its length, and counts the
    connections open to it (bascule's connections, held or not by slow clients)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.open = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                body = b"%d" % length
                buf = buf[length:]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            return
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    def stop(self) -> None:
        self.listener.close()


def test_slow_request_bodies_are_cut_below_min_body_rate(tmp_path: Path) -> None:
    backend = CountingBackend()
    port = free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [backend.address], access_log=str(log), listener={
        "limits": {"min_body_rate": 100, "body_rate_window": "1s"}})
    slow = []
    try:
        with running(config, tmp_path, port):
            for _ in range(20):  # a byte every 0.5 s: 2 bytes/s against 100
                c = Client(port, timeout=10)
                c.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx")
                slow.append(c)
            deadline = time.monotonic() + 5
            while backend.open < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert backend.open == 20, "each slow POST holds an endpoint connection at first"
            start = time.monotonic()
            # A normal upload, at the same time, is not affected.
            upload = b"y" * (4 << 20)
            with Client(port, timeout=10) as normal:
                normal.send(b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(upload), upload))
                assert normal.response()[:3:2] == (200, b"%d" % len(upload))
            cut = []
            while time.monotonic() - start < 6 and len(cut) < len(slow):
                for c in slow:
                    if c not in cut:
                        try:
                            c.send(b"x")
                        except OSError:
                            cut.append(c)  # the 408 came and the connection closed
                time.sleep(0.5)
            assert len(cut) == len(slow), "every slow body is cut"
            for c in slow:
                status, _, body, _ = c.response()
                assert status == 408 and b"too slow" in body
            deadline = time.monotonic() + 5
            while backend.open > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            # what is left is the normal upload's connection, idle in the pool
            assert backend.open == 1, "the endpoint connections the slow bodies held are freed"
        assert log.read_text().count('"status":408') == 20
    finally:
        for c in slow:
            c.close()
        backend.stop()
