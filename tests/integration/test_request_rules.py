"""Request rules through real sockets: routes see a normalised path and the backend gets that
same path; identity fields spelt with underscores never reach a backend; Host is validated.

Each test starts its own bascule (several listeners, one per setting) and a recording backend;
requests are sent raw, since an HTTP client library would normalise the shapes under test.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    Backend,
    BackendHandler,
    Client,
    Seen,
    free_port,
    proxy_config,
    read_response,
    running,
)

ADMIN_DENIED: list[dict[str, Any]] = [
    {"match": {"path_prefix": "/admin"}, "direct_response": {"status": 403, "body": "denied\n"}},
    {"match": {"path_prefix": "/"}, "cluster": "c"},
]


def listener(name: str, port: int, **options: Any) -> dict[str, Any]:
    return {"name": name, "address": f"127.0.0.1:{port}", "routes": ADMIN_DENIED, **options}


def ask(port: int, target: bytes, extra: bytes = b"", host: bytes = b"app.test") -> int:
    """The status of one request sent byte for byte on a fresh connection."""
    with Client(port) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
               % (target, host, extra))
        return c.response()[0]


def paths_seen(backend: Backend) -> list[str]:
    return [seen.path for seen in backend.requests]


def record_target(h: BackendHandler, seen: Seen) -> None:
    # http.server collapses a leading `//` in `path` itself: keep the target as it arrived.
    seen.path = h.requestline.split(" ")[1]
    h.reply(200, b"ok\n")


@pytest.fixture
def recorder() -> Iterator[Backend]:
    b = Backend(record_target, name="recorder")
    yield b
    b.stop()


# ------------------------------------------------------------------ path normalisation

BYPASS_SHAPES = [
    b"//admin",
    b"///admin/x",
    b"/%61dmin",
    b"/./admin",
    b"/x/../admin",
    b"/x/%2e%2e/admin",
    b"/%2e/admin",
    b"/%2E%2E/admin",
    b"/.%2E/admin",
    b"/admin/..%2Fadmin",
    b"/admin%2F..",
    b"/x/..;/admin",
    b"/;x/admin",
    b"/x/.././/admin",
    b"/x/..%2fadmin",  # `..%2F` is one segment, kept encoded: reaches the backend as that
    b"/%2561dmin",  # `%25` is not unreserved: stays `%2561dmin`, never decoded twice
    b"/x\\..\\admin",
    b"/a%zz",
    b"/a%4",
    b"/a%",
    b"/a%00/admin",
    b"/admin#frag",
    b"/x#/../admin",
]


def test_admin_route_cannot_be_bypassed_by_path_shapes(tmp_path: Path, recorder: Backend) -> None:
    port = free_port()
    config = proxy_config(port, [recorder.address], routes=ADMIN_DENIED)
    statuses: dict[bytes, int] = {}
    with running(config, tmp_path, port):
        for target in BYPASS_SHAPES:
            statuses[target] = ask(port, target)
    refused = {t for t, s in statuses.items() if s == 400}
    denied = {t for t, s in statuses.items() if s == 403}
    # No shape reached the backend as /admin; the two that passed got their normalised path.
    assert {t for t, s in statuses.items() if s == 200} == {b"/x/..%2fadmin", b"/%2561dmin"}
    assert paths_seen(recorder) == ["/x/..%2Fadmin", "/%2561dmin"]
    assert denied == {b"//admin", b"///admin/x", b"/%61dmin", b"/./admin", b"/x/../admin",
                      b"/x/%2e%2e/admin", b"/%2e/admin", b"/%2E%2E/admin", b"/.%2E/admin",
                      b"/admin/..%2Fadmin", b"/admin%2F..", b"/x/.././/admin"}
    assert refused == {b"/x/..;/admin", b"/;x/admin", b"/x\\..\\admin", b"/a%zz", b"/a%4",
                       b"/a%", b"/a%00/admin", b"/admin#frag", b"/x#/../admin"}


def test_backend_and_log_get_the_routed_path(tmp_path: Path, recorder: Backend) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    config = proxy_config(port, [recorder.address], routes=ADMIN_DENIED, access_log=str(log))
    target = b"/%7euser/./a//b/../c%3a%2f?x=%2e%2E/..&y=a//b"
    with running(config, tmp_path, port):
        assert ask(port, target) == 200
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not (log.exists() and log.read_text()):
            time.sleep(0.05)
    # unreserved decoded, other escapes upper-cased, slashes merged, dots removed; query as sent
    assert paths_seen(recorder) == ["/~user/a/c%3A%2F?x=%2e%2E/..&y=a//b"]
    entry = json.loads(log.read_text().splitlines()[0])
    assert entry["uri"] == "/~user/a/c%3A%2F?x=%2e%2E/..&y=a//b"


def test_path_options_per_listener(tmp_path: Path, recorder: Backend) -> None:
    keep, reject, unescape, raw_path, slashes = (free_port() for _ in range(5))
    config = proxy_config(keep, [recorder.address], routes=ADMIN_DENIED)
    config["listeners"] += [
        listener("reject", reject, path_with_escaped_slashes="reject"),
        listener("unescape", unescape, path_with_escaped_slashes="unescape"),
        listener("raw", raw_path, normalize_path=False, merge_slashes=False),
        listener("slashes", slashes, merge_slashes=False),
    ]
    with running(config, tmp_path, keep):
        got = {
            "keep": [ask(keep, b"/x/..%2fadmin"), ask(keep, b"/x%5cy")],
            "reject": [ask(reject, b"/x/..%2Fadmin"), ask(reject, b"/x%5Cy"), ask(reject, b"/x/y")],
            "unescape": [ask(unescape, b"/x/..%2Fadmin"), ask(unescape, b"/x%5C..%5Cadmin"),
                         ask(unescape, b"/x%2fy")],
            # normalize_path off: routed as sent, so the deny route is bypassed (documented);
            # NUL is refused whatever the setting
            "raw": [ask(raw_path, b"/%61dmin"), ask(raw_path, b"//x/./y"),
                    ask(raw_path, b"/x%00")],
            "slashes": [ask(slashes, b"//admin"), ask(slashes, b"/x//./y")],
        }
    assert got == {
        "keep": [200, 200],
        "reject": [400, 400, 200],
        "unescape": [403, 403, 200],
        "raw": [200, 200, 400],
        "slashes": [200, 200],
    }
    assert paths_seen(recorder) == [
        "/x/..%2Fadmin", "/x%5Cy", "/x/y", "/x/y", "/%61dmin", "//x/./y", "//admin", "/x//y"]


def test_rewritten_path_has_no_dot_segments(tmp_path: Path, recorder: Backend) -> None:
    port = free_port()
    routes = [{"match": {"path_prefix": "/api"}, "rewrite_path_prefix": "/v1/", "cluster": "c"}]
    config = proxy_config(port, [recorder.address], routes=routes)
    with running(config, tmp_path, port):
        assert ask(port, b"/api..") == 200
        assert ask(port, b"/api/x") == 200
    # `/api..` matches the prefix; the rewrite would make `/v1/..`, i.e. the backend's root
    assert paths_seen(recorder) == ["/", "/v1/x"]


# ------------------------------------------------------------------ identity by underscore

SPOOFS = (
    b"X_Forwarded_For: 6.6.6.6\r\n"
    b"X-Forwarded_For: 6.6.6.7\r\n"
    b"X-Real_IP: 6.6.6.8\r\n"
    b"x_forwarded_proto: https\r\n"
    b"X_Forwarded_Host: evil.test\r\n"
    b"X_Client_IP: 6.6.6.9\r\n"
    b"True_Client_IP: 6.6.6.10\r\n"
    b"X-Client-IP: 6.6.6.11\r\n"
    b"X_Custom_Flag: kept\r\n"
)


def spoofed_names(backend: Backend) -> list[set[str]]:
    return [{n for n in seen.names() if "_" in n or n == "x-client-ip"} for seen in
            backend.requests]


def test_underscore_identity_fields_are_dropped(tmp_path: Path, recorder: Backend) -> None:
    port, trusting, dropping, rejecting = (free_port() for _ in range(4))
    config = proxy_config(port, [recorder.address])
    config["listeners"] += [
        listener("trusting", trusting, trusted_proxies=["127.0.0.1/32"]),
        listener("dropping", dropping, headers_with_underscores="drop"),
        listener("rejecting", rejecting, headers_with_underscores="reject"),
    ]
    with running(config, tmp_path, port):
        statuses = [
            ask(port, b"/untrusted", SPOOFS),
            ask(trusting, b"/trusted", SPOOFS + b"X-Forwarded-For: 10.1.1.1\r\n"),
            ask(dropping, b"/dropping", SPOOFS),
            ask(rejecting, b"/rejecting", SPOOFS),
            ask(rejecting, b"/clean", b"X-Custom-Flag: kept\r\n"),
        ]
    assert statuses == [200, 200, 200, 400, 200]
    untrusted, trusted, dropping_seen, clean = recorder.requests
    # only the non-identity underscore field passes by default
    assert spoofed_names(recorder) == [{"x_custom_flag"}, {"x_custom_flag", "x-client-ip"},
                                       set(), set()]
    assert untrusted.header("X-Forwarded-For") == "127.0.0.1"
    assert untrusted.header("X-Forwarded-Proto") == "http"
    assert untrusted.header("X-Forwarded-Host") == "app.test"
    # a trusted proxy's real X-Forwarded-For is appended to; its underscore twins are not
    assert trusted.header("X-Forwarded-For") == "10.1.1.1, 127.0.0.1"
    assert trusted.header("X-Forwarded-Host") == "app.test"
    assert dropping_seen.header("X-Forwarded-For") == "127.0.0.1"
    assert clean.header("X-Custom-Flag") == "kept"


# ------------------------------------------------------------------ Host syntax

BAD_HOSTS = [b"a b", b"a@b", b"user@app.test", b"a/b", b"a\\b", b":80", b":", b"app.test:8x",
             b"app.test:99999", b"app.test:80:80", b"[::1", b"[zz::1]", b"[::1]x", b"[::1]:x",
             b"app\xfftest", b"app%2etest", b"a\tb"]


def test_invalid_host_is_refused(tmp_path: Path, recorder: Backend) -> None:
    port = free_port()
    routes = [{"match": {"host": "app.test"}, "cluster": "c"},
              {"match": {"host": "[::1]"}, "cluster": "c"}]
    config = proxy_config(port, [recorder.address], routes=routes)
    with running(config, tmp_path, port):
        bad = {host: ask(port, b"/", host=host) for host in BAD_HOSTS}
        good = {host: ask(port, b"/", host=host) for host in
                (b"app.test", b"APP.Test:8080", b"app.test.", b"app.test:", b"[::1]:8080")}
        absolute = [ask(port, b"http://app.test:8x/p"), ask(port, b"http://a\\b/p"),
                    ask(port, b"http://app.test?q=1"), ask(port, b"http://[::1]/p")]
    assert bad == dict.fromkeys(BAD_HOSTS, 400)
    assert good == dict.fromkeys(good, 200)
    assert absolute == [400, 400, 200, 200]
    assert paths_seen(recorder)[-2:] == ["/?q=1", "/p"]


def test_connection_cannot_make_content_length_hop_by_hop(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with running(proxy_config(port, [backend.address]), tmp_path, port), Client(port) as c:
        c.send(b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
        status, _, _, _ = c.response()
        assert status == 200
    assert [s.path for s in backend.requests] == ["/a"]
    assert backend.requests[0].body == smuggled
    assert backend.requests[0].header("Content-Length") == str(len(smuggled))


def test_trailers_never_become_header_fields(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = proxy_config(port, [backend.address], routes=[
        {"match": {"path_prefix": "/"}, "cluster": "c", "buffer_request": True}])
    with running(config, tmp_path, port), Client(port) as c:
        c.send(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\nHost: other\r\nX-Trailer: t\r\n\r\n")
        status, _, _, _ = c.response()
        assert status == 200
    seen = backend.requests[0]
    assert seen.body == b"hello"
    assert seen.header("Host") == "x"
    assert seen.header("X-Trailer") is None


def test_absolute_form_target_replaces_host(tmp_path: Path) -> None:
    good, evil = Backend(name="good"), Backend(name="evil")
    port = free_port()
    config = proxy_config(port, [good.address], routes=[
        {"match": {"host": "good.example"}, "cluster": "c"},
        {"match": {"path_prefix": "/"}, "cluster": "e"},
    ], extra_clusters=[{"name": "e", "endpoints": [{"address": evil.address}]}])
    try:
        with running(config, tmp_path, port), Client(port) as c:
            c.send(b"GET http://user@good.example/p HTTP/1.1\r\nHost: evil.example\r\n\r\n")
            assert c.response()[0] == 200
    finally:
        good.stop()
        evil.stop()
    assert not evil.requests
    assert good.requests[0].path == "/p"
    assert good.requests[0].header("Host") == "good.example"


def test_http10_request_without_host_gets_one_upstream(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    with running(proxy_config(port, [backend.address]), tmp_path, port), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        head, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 200")
    assert backend.requests[0].header("Host") == backend.address
