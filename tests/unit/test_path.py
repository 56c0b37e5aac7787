"""Request rules without sockets: path normalisation, Host syntax, underscore field names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bascule.codec.headers import IDENTITY, UNDERSCORE_IDENTITY, drop_underscored, route_host
from bascule.codec.http1 import ProtocolError
from bascule.codec.path import KEEP, REJECT, UNESCAPE, normalize_path, resolve_path


def norm(path: str, escaped: str = KEEP, *, normalize: bool = True, merge: bool = True) -> str:
    return normalize_path(path, normalize, merge, escaped)


# ------------------------------------------------------------------ paths

NORMALISED = [
    # already normal: returned as is
    ("/", "/"),
    ("/api/v1/users/12345", "/api/v1/users/12345"),
    ("/a.b/c-d_e~f/.well-known/x", "/a.b/c-d_e~f/.well-known/x"),
    ("/trailing/", "/trailing/"),
    # percent-encoded unreserved characters are decoded, in either case
    ("/%61dmin", "/admin"),
    ("/%41%5a%7e%2d%2E%5f%30", "/AZ~-._0"),
    # other escapes stay, upper-cased; never decoded twice
    ("/a%20b%3a%3F%25", "/a%20b%3A%3F%25"),
    ("/%2561dmin", "/%2561dmin"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    # dot segments (RFC 3986 §5.2.4), also percent-encoded
    ("/./admin", "/admin"),
    ("/x/../admin", "/admin"),
    ("/../../admin", "/admin"),
    ("/a/b/../../../c", "/c"),
    ("/%2e/admin", "/admin"),
    ("/%2E%2E/admin", "/admin"),
    ("/x/.%2e/admin", "/admin"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/..", "/"),
    ("/..", "/"),
    ("/.", "/"),
    ("/a/...", "/a/..."),  # three dots are a name
    ("/a/..b/.c", "/a/..b/.c"),
    # slashes merged before dot segments: `//` is one separator, as nginx reads it
    ("//admin", "/admin"),
    ("///a////b", "/a/b"),
    ("/a//../b", "/b"),
    ("/x/.././/admin", "/admin"),
    # encoded slashes are data by default: `..%2F` is one segment, not a dot segment
    ("/admin/..%2Fadmin", "/admin/..%2Fadmin"),
    ("/x/..%2fadmin", "/x/..%2Fadmin"),
    ("/x%5cy", "/x%5Cy"),
    # `;` inside a segment is data (jsessionid, matrix parameters)
    ("/app;jsessionid=1/x", "/app;jsessionid=1/x"),
    ("/admin;x", "/admin;x"),
]


@pytest.mark.parametrize(("path", "expected"), NORMALISED)
def test_normalised_path(path: str, expected: str) -> None:
    assert norm(path) == expected
    assert norm(expected) == expected  # a backend normalising again lands on the same path


REFUSED = [
    "/a%zz",
    "/a%4",
    "/a%",
    "/%%41",
    "/a% 1",
    "/a%+1",  # int() would read these: validated as hex, not parsed
    "/a%0x",
    "/a%00b",
    "/%00",
    "/a\\b",
    "/x\\..\\admin",
    "/x/..;/admin",
    "/x/.;/admin",
    "/;x/admin",
    "/x/%2e%2e;/admin",
]


@pytest.mark.parametrize("path", REFUSED)
def test_refused_path(path: str) -> None:
    with pytest.raises(ProtocolError) as e:
        norm(path)
    assert e.value.status == 400


@pytest.mark.parametrize(("path", "keep", "unescape"), [
    ("/x/..%2Fadmin", "/x/..%2Fadmin", "/admin"),
    ("/x%2fy", "/x%2Fy", "/x/y"),
    ("/x%5C..%5Cadmin", "/x%5C..%5Cadmin", "/admin"),
    ("/a%2F%2Fb", "/a%2F%2Fb", "/a/b"),
])
def test_escaped_slashes(path: str, keep: str, unescape: str) -> None:
    assert norm(path, KEEP) == keep
    assert norm(path, UNESCAPE) == unescape
    with pytest.raises(ProtocolError):
        norm(path, REJECT)
    assert norm("/no/escaped/slash%41", REJECT) == "/no/escaped/slashA"


def test_options_off() -> None:
    # normalize_path off: only NUL is refused, and slashes merged if asked
    assert norm("/%61dmin/./x", normalize=False) == "/%61dmin/./x"
    assert norm("//a/%zz\\", normalize=False) == "/a/%zz\\"
    assert norm("//a//b", normalize=False, merge=False) == "//a//b"
    with pytest.raises(ProtocolError):
        norm("/a%00", normalize=False)
    # merge_slashes off: empty segments stay, and `..` removes one of them
    assert norm("//admin", merge=False) == "//admin"
    assert norm("/a//../b", merge=False) == "/a/b"


def test_fast_path_returns_the_same_object() -> None:
    path = "/api/v1/users/12345?"[:-1]
    assert norm(path) is path


def test_resolve_path_after_a_rewrite() -> None:
    assert resolve_path("/v1/..", True) == "/"
    assert resolve_path("/v1//x/./y", True) == "/v1/x/y"
    assert resolve_path("/v1//x", False) == "/v1//x"
    assert resolve_path("/v1/x", True) == "/v1/x"


segment = st.sampled_from(
    ["", ".", "..", "%2e", "%2E%2e", "a", "%61", "b.c", "%2F", "%5c", "~", "%7E", ";x", "x;"]
)


@given(st.lists(segment, max_size=8), st.sampled_from([KEEP, UNESCAPE]), st.booleans())
def test_normalising_twice_changes_nothing(segments: list[str], escaped: str, merge: bool) -> None:
    path = "/" + "/".join(segments)
    try:
        once = norm(path, escaped, merge=merge)
    except ProtocolError:
        return
    assert norm(once, escaped, merge=merge) == once
    assert once.startswith("/")
    parts = once.split("/")
    assert "." not in parts and ".." not in parts
    assert "%2e" not in once.lower() and "%61" not in once.lower()
    if merge:
        assert "//" not in once


# ------------------------------------------------------------------ Host

HOSTS = [
    (b"", ""),
    (b"example.com", "example.com"),
    (b"Example.COM", "example.com"),
    (b"example.com:8080", "example.com"),
    (b"example.com:", "example.com"),  # RFC 3986: port = *DIGIT
    (b"example.com.", "example.com"),
    (b"example.com.:80", "example.com"),
    (b"a_b-c~d", "a_b-c~d"),
    (b"127.0.0.1", "127.0.0.1"),
    (b"127.0.0.1:65535", "127.0.0.1"),
    (b"[::1]", "[::1]"),
    (b"[2001:DB8::1]:443", "[2001:db8::1]"),
    (b"[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"),
    (b"localhost", "localhost"),
]


@pytest.mark.parametrize(("value", "expected"), HOSTS)
def test_valid_host(value: bytes, expected: str) -> None:
    assert route_host(value) == expected


BAD_HOSTS = [
    b"a b",
    b"a\tb",
    b"a@b",
    b"user@example.com",
    b"a/b",
    b"a\\b",
    b"a\x00b",
    b"a\x7fb",
    b"caf\xc3\xa9.test",
    b"ex%61mple.com",
    b"a?b",
    b"a#b",
    b":80",
    b":",
    b"example.com:8x",
    b"example.com:-1",
    b"example.com:+80",
    b"example.com:65536",
    b"example.com:000080",
    b"example.com:80:80",
    b"[::1",
    b"[]",
    b"[zz::1]",
    b"[127.0.0.1]",
    b"[fe80::1%25eth0]",
    b"[::1]x",
    b"[::1]:x",
    b"[::1]:99999",
    b"::1",
]


@pytest.mark.parametrize("value", BAD_HOSTS)
def test_invalid_host(value: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        route_host(value)
    assert e.value.status == 400


# ------------------------------------------------------------------ underscores

def fields(*names: bytes) -> list[tuple[bytes, bytes, bytes]]:
    return [(n.lower(), n, b"v") for n in names]


def test_underscore_spellings_of_identity_fields() -> None:
    for name in (b"x_forwarded_for", b"x-forwarded_for", b"x_forwarded-for", b"x-real_ip",
                 b"x_real_ip", b"x_forwarded_proto", b"x_cluster-client_ip", b"true_client_ip"):
        assert name in UNDERSCORE_IDENTITY
    for name in (*IDENTITY, b"x_custom_flag", b"my_header", b"x_forwarded_forx", b"forwarded"):
        assert name not in UNDERSCORE_IDENTITY
    assert len(UNDERSCORE_IDENTITY) == sum(2 ** n.count(b"-") - 1 for n in IDENTITY)


def test_drop_or_reject_underscored_fields() -> None:
    given_fields = fields(b"X-Forwarded-For", b"X_Custom_Flag", b"my_header", b"Host")
    assert [f[1] for f in drop_underscored(given_fields, "drop")] == [b"X-Forwarded-For", b"Host"]
    with pytest.raises(ProtocolError):
        drop_underscored(given_fields, "reject")
    clean = fields(b"X-Forwarded-For", b"Host")
    assert drop_underscored(clean, "reject") is clean
    assert drop_underscored(clean, "drop") is clean


def test_identity_covers_what_backends_read() -> None:
    for name in (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                 b"x-real-ip", b"x-forwarded-port", b"true-client-ip", b"x-client-ip"):
        assert name in IDENTITY
    assert b"via" not in IDENTITY
