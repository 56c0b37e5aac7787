"""Real servers and a real bascule for the tests: no mocks, loopback only, ports from the OS."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Seen:
    """One request as a backend received it."""

    def __init__(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
                 peer: tuple[str, int]) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.peer = peer

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


Handler = Callable[["BackendHandler", Seen], None]


class BackendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go out in two writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        elif length:
            body = self.server.read_body(self, int(length))
        else:
            body = b""
        seen = Seen(self.command, self.path, list(self.headers.items()), body,
                    self.client_address)
        self.server.backend.requests.append(seen)
        self.server.backend.handler(self, seen)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _handle

    def reply(self, status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None,
              chunked: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for i in range(0, len(body), 7):
                    part = body[i:i + 7]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
        else:
            if status not in (204, 304) and "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and status not in (204, 304):
                self.wfile.write(body)
        self.wfile.flush()


def echo(h: BackendHandler, seen: Seen) -> None:
    """Answer with JSON describing what arrived: method, path, headers, body length."""
    body = json.dumps({
        "backend": h.server.backend.name, "method": seen.method, "path": seen.path,
        "headers": seen.headers, "body_len": len(seen.body),
    }).encode()
    h.reply(200, body, {"Content-Type": "application/json"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    backend: Backend

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        self.backend.accepts += 1
        return conn, addr

    def read_body(self, h: BackendHandler, n: int) -> bytes:
        return h.rfile.read(n)


class Backend:
    """A real HTTP/1.1 server on 127.0.0.1 in a thread, counting accepted connections."""

    def __init__(self, handler: Handler = echo, name: str = "backend") -> None:
        self.handler = handler
        self.name = name
        self.accepts = 0
        self.requests: list[Seen] = []
        self.server = _Server(("127.0.0.1", 0), BackendHandler)
        self.server.backend = self
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Bascule:
    """bascule itself, as a real process started from a config dict."""

    def __init__(self, config: dict[str, Any], tmp: Path, *, port: int | None = None) -> None:
        self.config = config
        self.tmp = tmp
        self.path = tmp / "bascule.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port

    def start(self) -> Bascule:
        self.stderr = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bascule", "run", "-c", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=self.stderr, cwd=self.tmp,
        )
        if self.port is not None:
            try:
                wait_port(self.port)
            except TimeoutError as e:
                self.stop()
                raise RuntimeError("bascule did not start:\n" + self.log_path.read_text()) from e
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.stderr.close()
        return code

    def rss_kib(self) -> int:
        """Resident memory of bascule and its children, in KiB."""
        assert self.proc is not None
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def stderr_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def proxy_config(port: int, endpoints: list[str], *, access_log: str | None = None,
                 listener: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None,
                 routes: list[dict[str, Any]] | None = None, workers: int = 1,
                 extra_clusters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The smallest config: one listener on `port`, one cluster `c` over `endpoints`."""
    return {
        "workers": workers,
        "access_log": {"path": access_log, "format": "json"},
        "listeners": [{
            "name": "web", "address": f"127.0.0.1:{port}", "protocol": "http",
            "routes": routes or [{"match": {"path_prefix": "/"}, "cluster": "c"}],
            **(listener or {}),
        }],
        "clusters": [
            {"name": "c", "endpoints": [{"address": a} for a in endpoints], **(cluster or {})},
            *(extra_clusters or []),
        ],
    }


@contextmanager
def running(config: dict[str, Any], tmp: Path, port: int) -> Iterator[Bascule]:
    b = Bascule(config, tmp, port=port).start()
    try:
        yield b
    finally:
        b.stop()


def raw(port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Send bytes on a fresh connection and read until the proxy closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")


def read_response(s: socket.socket, *, head_only: bool = False) -> tuple[bytes, bytes]:
    """Read one response (Content-Length or chunked framing) from a socket: (head, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if head_only:
        return head, rest
    fields = {
        line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
    }
    if b"content-length" in fields:
        n = int(fields[b"content-length"])
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head, rest[:n]
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        body, data = b"", rest
        while True:
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return head, body
            body += data[:size]
            data = data[size + 2:]
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return head, rest
        rest += chunk


class Client:
    """One raw connection: send bytes, read whole responses, see whether the proxy closed."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def head(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed mid-head: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower().decode()
            assert key not in headers, f"{key} twice in {head!r}"
            headers[key] = value.strip().decode("latin-1")
        return int(lines[0].split(b" ", 2)[1]), headers, head

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes, bytes]:
        """(status, headers lower-cased, body, head) of the next final response."""
        while True:
            status, headers, head = self.head()
            if status >= 200:
                break
        if method == "HEAD" or status in (204, 304):
            return status, headers, b"", head
        if "content-length" in headers:
            assert "transfer-encoding" not in headers
            n = int(headers["content-length"])
            while len(self.buf) < n:
                if not self._fill():
                    raise EOFError("connection closed mid-body")
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, headers, body, head
        if "transfer-encoding" in headers:
            assert headers["transfer-encoding"].lower() == "chunked"
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    assert self._fill(), "closed mid-chunk"
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    assert self._fill(), "closed mid-chunk"
                body += self.buf[:size]
                assert self.buf[size:size + 2] == b"\r\n"
                self.buf = self.buf[size + 2:]
                if size == 0:
                    return status, headers, body, head
        while self._fill():  # close-delimited
            pass
        body, self.buf = self.buf, b""
        return status, headers, body, head

    def closed_by_peer(self, timeout: float = 3.0) -> bool:
        """True when the proxy ends the connection (FIN or reset) within `timeout`, sending
        nothing more."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536) == b"" and not self.buf
        except ConnectionResetError:
            return not self.buf
        except TimeoutError:
            return False


def who(r: Any) -> str:
    """The name of the echo backend that answered an httpx response (200 expected)."""
    assert r.status_code == 200, r.text
    return str(json.loads(r.content)["backend"])
