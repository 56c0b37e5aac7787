"""A request as the session parsed it: head, framing, and the body not yet forwarded.

Rules of this module:
- A Request is built from the codec's RequestHead: it takes the head's fields as they are
  (no copy of the field list), and adds what the session tracks while the body arrives.
"""

from __future__ import annotations

from collections import deque

from bascule.codec.http1 import RequestHead


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

    def __init__(self, head: RequestHead, start: float) -> None:
        self.method = head.method
        self.method_raw = head.method_raw
        self.target = head.target
        self.version = head.version
        # (lower-cased name, name as sent, value): matching uses the first, forwarding the rest
        self.headers = head.fields
        self.start = start
        self.host = head.host  # lower-cased, without port: what routes match
        self.host_raw = head.host_raw  # as the client sent it (Host or the absolute-form authority)
        self.path = head.path
        self.query = head.query
        self.keep_alive = head.keep_alive
        self.framing = head.framing
        self.content_length = max(head.content_length, 0)
        self.conn_tokens = head.conn_tokens
        self.expect_continue = head.expect_continue
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
