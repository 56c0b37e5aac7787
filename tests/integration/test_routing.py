"""Routes through real sockets: matches, first-match-wins, splits, redirects, direct responses,
path rewrites and header edits. One bascule (module fixture) with three named echo clusters.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from helpers import Backend, BackendHandler, Seen, free_port, proxy_config, running


class NoDelayHandler(BackendHandler):
    # helpers' handler writes head and body in two sends; with Nagle on, each keep-alive
    # response then waits for the proxy's delayed ACK (40 ms).
    disable_nagle_algorithm = True


def echo_with_headers(h: BackendHandler, seen: Seen) -> None:
    """The helpers' echo, plus two response headers the header-edit route rewrites."""
    body = json.dumps({
        "backend": h.server.backend.name, "method": seen.method, "path": seen.path,
        "headers": seen.headers, "body_len": len(seen.body),
    }).encode()
    h.reply(200, body, {"Content-Type": "application/json", "X-Backend-Secret": "s3cret",
                        "X-Resp-Set": "from-backend"})


ROUTES: list[dict[str, Any]] = [
    # host
    {"match": {"host": "exact.test"}, "cluster": "a"},
    {"match": {"host": "*.wild.test"}, "cluster": "b"},
    # path: exact, prefix, regex
    {"match": {"path": "/exact"}, "cluster": "a"},
    {"match": {"path_prefix": "/pre/"}, "cluster": "b"},
    {"match": {"path_regex": "/re/[0-9]+"}, "cluster": "c"},
    # method, and first match wins: the method route comes before the catch-all for /m/
    {"match": {"path_prefix": "/m/", "method": ["delete", "PUT"]}, "cluster": "b"},
    {"match": {"path_prefix": "/m/"}, "cluster": "a"},
    # headers: value, regex, present; /h/ has no fallback
    {"match": {"path_prefix": "/h/", "headers": [{"name": "X-Canary", "value": "1"}]},
     "cluster": "b"},
    {"match": {"path_prefix": "/h/", "headers": [{"name": "x-ver", "regex": "v[23]"}]},
     "cluster": "c"},
    {"match": {"path_prefix": "/h/", "headers": [{"name": "X-Debug", "present": True}]},
     "cluster": "a"},
    {"match": {"path_prefix": "/h/", "headers": [{"name": "X-Anon", "present": False},
                                                 {"name": "X-Team", "value": "web"}]},
     "cluster": "a"},
    # query and cookie, each with a fallback
    {"match": {"path_prefix": "/q/", "query": [{"name": "v", "value": "2"}]}, "cluster": "b"},
    {"match": {"path_prefix": "/q/", "query": [{"name": "beta", "present": True}]},
     "cluster": "c"},
    {"match": {"path_prefix": "/q/"}, "cluster": "a"},
    {"match": {"path_prefix": "/ck/", "cookies": [{"name": "beta", "value": "yes"}]},
     "cluster": "b"},
    {"match": {"path_prefix": "/ck/", "cookies": [{"name": "grp", "regex": "g[0-9]"}]},
     "cluster": "c"},
    {"match": {"path_prefix": "/ck/"}, "cluster": "a"},
    # weighted splits
    {"match": {"path_prefix": "/split/"},
     "split": [{"cluster": "a", "weight": 80}, {"cluster": "b", "weight": 20}]},
    {"match": {"path_prefix": "/all-a/"},
     "split": [{"cluster": "a", "weight": 100}, {"cluster": "b", "weight": 0}]},
    # redirects
    {"match": {"path_prefix": "/old"}, "redirect": {"path": "/new", "status": 301}},
    {"match": {"path": "/secure"}, "redirect": {"scheme": "https", "host": "secure.test",
                                                "status": 308}},
    {"match": {"path": "/away"}, "redirect": {"location": "http://elsewhere.test/x?y=1"}},
    {"match": {"path": "/drop"}, "redirect": {"location": "http://elsewhere.test/x",
                                              "keep_query": False}},
    # direct responses
    {"match": {"path": "/health"}, "direct_response": {"status": 200, "body": "ok\n",
                                                       "content_type": "text/x-health"}},
    {"match": {"path": "/teapot"}, "direct_response": {"status": 418, "body": "short and stout"}},
    # rewrites
    {"match": {"path_prefix": "/api/"}, "rewrite_path_prefix": "/", "cluster": "a"},
    {"match": {"path_prefix": "/v1"}, "rewrite_path_prefix": "/v2", "cluster": "a"},
    # header edits
    {"match": {"path_prefix": "/hdr/"}, "cluster": "a",
     "request_headers": {"set": {"X-Set": "by-proxy"}, "add": {"X-Add": "added"},
                         "remove": ["x-remove"]},
     "response_headers": {"set": {"X-Resp-Set": "by-proxy"}, "add": {"X-Resp-Add": "added"},
                          "remove": ["X-Backend-Secret"]}},
]


@dataclass
class Proxy:
    port: int
    backends: dict[str, Backend]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("routing")
    backends = {n: Backend(echo_with_headers, name=n) for n in ("a", "b", "c")}
    for b in backends.values():
        b.server.RequestHandlerClass = NoDelayHandler
    port = free_port()
    config = proxy_config(
        port, [backends["c"].address], routes=ROUTES,
        extra_clusters=[{"name": n, "endpoints": [{"address": backends[n].address}]}
                        for n in ("a", "b")],
    )
    config["access_log"] = {"path": None}
    try:
        with running(config, tmp, port):
            yield Proxy(port, backends)
    finally:
        for b in backends.values():
            b.stop()


@pytest.fixture(scope="module")
def client(proxy: Proxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, follow_redirects=False, timeout=5) as c:
        yield c


def who(client: httpx.Client, path: str, method: str = "GET", host: str = "any.test",
        **kw: Any) -> str:
    """Which cluster answered: 'a', 'b', 'c', or the status when no backend did."""
    r = client.request(method, path, headers={"Host": host, **kw.pop("headers", {})}, **kw)
    if r.status_code != 200 or r.headers.get("content-type") != "application/json":
        return str(r.status_code)
    return str(r.json()["backend"])


@pytest.mark.parametrize(("host", "expected"), [
    ("exact.test", "a"),
    ("EXACT.Test", "a"),
    ("exact.test:8080", "a"),
    ("x.wild.test", "b"),
    ("deep.x.wild.test", "b"),
    ("wild.test", "404"),
    ("xwild.test", "404"),
    ("exact.test.evil", "404"),
])
def test_host(client: httpx.Client, host: str, expected: str) -> None:
    assert who(client, "/nothing-else", host=host) == expected


@pytest.mark.parametrize(("path", "expected"), [
    ("/exact", "a"),
    ("/exact?x=1", "a"),
    ("/exact/", "404"),
    ("/exactly", "404"),
    ("/pre/", "b"),
    ("/pre/deeper/still", "b"),
    ("/pre", "404"),
    ("/re/123", "c"),
    ("/re/123x", "404"),
    ("/re/", "404"),
    ("/x/re/1", "404"),
])
def test_path(client: httpx.Client, path: str, expected: str) -> None:
    assert who(client, path) == expected


@pytest.mark.parametrize(("method", "expected"), [
    ("GET", "a"), ("POST", "a"), ("DELETE", "b"), ("PUT", "b"),
])
def test_method_and_first_match_wins(client: httpx.Client, method: str, expected: str) -> None:
    assert who(client, "/m/thing", method=method) == expected


@pytest.mark.parametrize(("headers", "expected"), [
    ({"X-Canary": "1"}, "b"),
    ({"x-canary": "1"}, "b"),
    ({"X-Canary": "2"}, "404"),
    ({"X-Canary": "1", "X-Ver": "v2"}, "b"),  # first match wins
    ({"X-Ver": "v3"}, "c"),
    ({"X-Ver": "v3.1"}, "404"),  # regex must match the whole value
    ({"X-Ver": "v4"}, "404"),
    ({"X-Debug": ""}, "a"),
    ({"X-Debug": "anything"}, "a"),
    ({"X-Team": "web"}, "a"),
    ({"X-Team": "web", "X-Anon": "1"}, "404"),
    ({}, "404"),
])
def test_headers(client: httpx.Client, headers: dict[str, str], expected: str) -> None:
    assert who(client, "/h/x", headers=headers) == expected


@pytest.mark.parametrize(("query", "expected"), [
    ("v=2", "b"),
    ("x=1&v=2", "b"),
    ("v=3", "a"),
    ("v=2x", "a"),
    ("beta", "c"),
    ("beta=&v=1", "c"),
    ("", "a"),
])
def test_query(client: httpx.Client, query: str, expected: str) -> None:
    assert who(client, "/q/x" + ("?" + query if query else "")) == expected


@pytest.mark.parametrize(("cookie", "expected"), [
    ("beta=yes", "b"),
    ("a=1; beta=yes; z=2", "b"),
    ("beta=no", "a"),
    ("grp=g7", "c"),
    ("grp=g77", "a"),
    ("xbeta=yes", "a"),
    (None, "a"),
])
def test_cookie(proxy: Proxy, cookie: str | None, expected: str) -> None:
    # a fresh client per case: httpx's cookie jar must not carry cookies between cases
    headers = {"Cookie": cookie} if cookie is not None else {}
    with httpx.Client(base_url=proxy.url, timeout=5) as c:
        assert who(c, "/ck/x", headers=headers) == expected


def test_weighted_split(client: httpx.Client) -> None:
    n = 500
    counts = Counter(who(client, f"/split/{i}") for i in range(n))
    assert set(counts) <= {"a", "b"}
    # 80/20 of 500: mean 400, standard deviation ~8.9; ±45 is five of them
    assert abs(counts["a"] - 400) <= 45, counts
    assert counts["a"] + counts["b"] == n


def test_split_with_zero_weight_sends_nothing_there(client: httpx.Client) -> None:
    counts = Counter(who(client, f"/all-a/{i}") for i in range(100))
    assert counts == {"a": 100}


@pytest.mark.parametrize(("path", "status", "location"), [
    ("/old", 301, "/new"),
    ("/old?x=1&y=2", 301, "/new?x=1&y=2"),
    ("/older/page", 301, "/new"),
    ("/secure", 308, "https://secure.test/secure"),
    ("/secure?q=1", 308, "https://secure.test/secure?q=1"),
    ("/away?z=9", 302, "http://elsewhere.test/x?y=1&z=9"),
    ("/drop?z=9", 302, "http://elsewhere.test/x"),
])
def test_redirect(proxy: Proxy, client: httpx.Client, path: str, status: int,
                  location: str) -> None:
    before = sum(len(b.requests) for b in proxy.backends.values())
    r = client.get(path)
    assert r.status_code == status
    assert r.headers["location"] == location
    assert sum(len(b.requests) for b in proxy.backends.values()) == before


def test_direct_response(proxy: Proxy, client: httpx.Client) -> None:
    before = sum(len(b.requests) for b in proxy.backends.values())
    r = client.get("/health")
    assert r.status_code == 200
    assert r.content == b"ok\n"
    assert r.headers["content-type"] == "text/x-health"
    assert r.headers["content-length"] == "3"
    r = client.post("/teapot", content=b"ignored body")
    assert r.status_code == 418
    assert r.content == b"short and stout"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert sum(len(b.requests) for b in proxy.backends.values()) == before


def _read_until_close(s: socket.socket) -> bytes:
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_direct_response_to_head_has_no_body(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /teapot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = _read_until_close(s)
    first, second = out.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200")
    assert b"\r\nContent-Length: 3" in first
    # no body after the HEAD response: the next bytes are the GET's status line
    assert second.startswith(b"HTTP/1.1 418"), out
    assert second.endswith(b"\r\n\r\nshort and stout")


def test_direct_response_answers_connection_close(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = _read_until_close(s)
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nConnection: close" in head
    assert body == b"ok\n"


def test_redirect_answers_connection_close(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /old HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = _read_until_close(s)
    assert out.startswith(b"HTTP/1.1 301")
    assert b"\r\nConnection: close\r\n" in out
    assert b"\r\nLocation: /new\r\n" in out


@pytest.mark.parametrize(("path", "seen_path"), [
    ("/api/users", "/users"),
    ("/api/users?x=1", "/users?x=1"),
    ("/api/", "/"),
    ("/v1/items", "/v2/items"),
    ("/v1", "/v2"),
])
def test_rewrite_path_prefix(client: httpx.Client, path: str, seen_path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.json()["backend"] == "a"
    assert r.json()["path"] == seen_path


def test_request_and_response_header_edits(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /hdr/x HTTP/1.1\r\nHost: x\r\nX-Set: from-client\r\nX-Add: client\r\n"
                  b"X-Remove: 1\r\nx-remove: 2\r\nX-Keep: yes\r\nConnection: close\r\n\r\n")
        out = _read_until_close(s)
    head, body = out.split(b"\r\n\r\n", 1)
    seen = json.loads(body)
    assert seen["backend"] == "a"
    got: dict[str, list[str]] = {}
    for k, v in seen["headers"]:
        got.setdefault(k.lower(), []).append(v)
    assert got["x-set"] == ["by-proxy"]
    assert got["x-add"] == ["client", "added"]
    assert "x-remove" not in got
    assert got["x-keep"] == ["yes"]
    lines = [line.lower() for line in head.split(b"\r\n")[1:]]
    assert lines.count(b"x-resp-set: by-proxy") == 1
    assert not any(line.startswith(b"x-resp-set: from-backend") for line in lines)
    assert b"x-resp-add: added" in lines
    assert not any(line.startswith(b"x-backend-secret") for line in lines)
    assert b"content-type: application/json" in lines


def test_header_edits_apply_only_to_their_route(client: httpx.Client) -> None:
    r = client.get("/exact", headers={"X-Remove": "1"})
    assert r.headers["x-backend-secret"] == "s3cret"
    assert r.headers["x-resp-set"] == "from-backend"
    assert "x-resp-add" not in r.headers
    names = {k.lower() for k, _ in r.json()["headers"]}
    assert "x-remove" in names and "x-set" not in names


def test_no_route_is_404(proxy: Proxy, client: httpx.Client) -> None:
    before = sum(len(b.requests) for b in proxy.backends.values())
    r = client.get("/nothing/here", headers={"Host": "nothing.test"})
    assert r.status_code == 404
    assert r.content.startswith(b"404 ")
    assert len(r.content) < 200
    assert sum(len(b.requests) for b in proxy.backends.values()) == before
    # the connection is still good
    assert who(client, "/exact") == "a"
