"""A request as the session parsed it: head, framing, and the body not yet forwarded."""

from __future__ import annotations

from collections import deque


class Request:
    __slots__ = (
        "body",
        "body_buffered",
        "body_received",
        "complete",
        "conn_tokens",
        "content_length",
        "expect_continue",
        "framing",
        "headers",
        "host",
        "host_raw",
        "keep_alive",
        "method",
        "method_raw",
        "path",
        "query",
        "start",
        "target",
        "version",
    )

    def __init__(
        self,
        method_raw: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes, bytes]],
        start: float,
    ) -> None:
        self.method = method_raw.decode("ascii", "replace")
        self.method_raw = method_raw
        self.target = target
        self.version = version
        # (lower-cased name, name as sent, value): matching uses the first, forwarding the rest
        self.headers = headers
        self.start = start
        self.host = ""  # lower-cased, without port: what routes match
        self.host_raw = b""  # as the client sent it (Host or the absolute-form authority)
        self.path = "/"
        self.query = ""
        self.keep_alive = True
        self.framing = 0
        self.content_length = 0
        self.conn_tokens: frozenset[bytes] = frozenset()
        self.expect_continue = False
        self.body: deque[bytes] = deque()  # received, not yet forwarded
        self.body_buffered = 0  # bytes in `body`
        self.body_received = 0  # all body bytes received so far
        self.complete = False  # the whole message has been received

    def header_values(self, lname: bytes) -> list[bytes]:
        return [v for n, _, v in self.headers if n == lname]

    def header(self, lname: bytes) -> str:
        for n, _, v in self.headers:
            if n == lname:
                return v.decode("latin-1")
        return ""
