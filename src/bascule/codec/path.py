"""Request paths as routes see them: RFC 3986 normalisation (§6.2.2, §5.2.4), once per request.

Rules of this module:
- Pure: str in, str out (the target decoded as latin-1, one character per byte: `in` on a
  str is a memchr, on bytes it goes through the buffer protocol, about 5 times slower); no I/O, no
  asyncio. A refusal is a `ProtocolError` (400).
- The normalised path is what routes match AND what goes upstream, so a backend never gets a
  path that a route did not see. Normalising twice changes nothing (a backend that normalises
  again lands on the same path).
- A path with no `%`, `\\`, `;`, `/.` or `//` is already normal: it costs a few `in` checks.
- `%2F` and `%5C` (encoded `/` and `\\`) follow the listener's `path_with_escaped_slashes`:
  `keep` (default, RFC 3986: data, not a separator; upper-cased), `reject` (400), `unescape`
  (to `/`, before slashes and dot segments are resolved). NUL (`%00`) is always refused.
- Shapes that other servers read as separators or dot segments and RFC 3986 does not are
  refused rather than guessed at: a raw `\\` (Windows servers read `/`), and a segment that
  starts with `;` or is `.`/`..` followed by `;` (servlet containers strip `;` parameters,
  so `/..;/admin` is their `/../admin`).
"""

from __future__ import annotations

from typing import Final

from bascule.codec.http1 import ProtocolError

KEEP: Final = "keep"
REJECT: Final = "reject"
UNESCAPE: Final = "unescape"

# A request target has no fragment (RFC 9112 §3.2). An int, to test bytes with `in` at the
# speed of memchr: a bytes needle takes the buffer API, about 4 times slower.
FRAGMENT: Final = ord("#")

_HEX: Final = "0123456789abcdefABCDEF"
# Every hex pair to the character it encodes: one dict lookup both validates and decodes
# (int() would also take " 1", "+1" and "_1").
_PAIRS: Final = {a + b: chr(int(a + b, 16)) for a in _HEX for b in _HEX}
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(path: str, normalize: bool, merge_slashes: bool, escaped: str) -> str:
    """The path routes match and the endpoint receives; ProtocolError(400) for a bad one.

    `normalize` (the listener's `normalize_path`) decodes percent-encoded unreserved
    characters, upper-cases the other escapes and removes dot segments; `merge_slashes`
    turns `//` into `/`; `escaped` is `path_with_escaped_slashes`. Without `normalize`, only
    NUL is refused and slashes merged.
    """
    if (
        "%" not in path
        and "/." not in path
        and (not merge_slashes or "//" not in path)
        and "\\" not in path
        and ";" not in path
    ):
        return path
    if not normalize:
        if "%00" in path:
            raise ProtocolError("NUL (%00) in the path")
        return _merge(path) if merge_slashes else path
    if "\\" in path:
        raise ProtocolError("backslash in the path")
    if "%" in path:
        path = _decode(path, escaped)
    if merge_slashes:
        path = _merge(path)
    return _remove_dot_segments(path, True)


def resolve_path(path: str, merge_slashes: bool) -> str:
    """Merge slashes and remove dot segments of a path built from normal parts (a rewrite).

    Never refuses: its input is a normalised path and a prefix from the config.
    """
    if merge_slashes:
        path = _merge(path)
    if "/." in path:
        path = _remove_dot_segments(path, False)
    return path


def _decode(path: str, escaped: str) -> str:
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        char = _PAIRS.get(part[:2])
        if char is None:
            raise ProtocolError("invalid percent-encoding in the path")
        if char in _UNRESERVED:
            out.append(char)
        elif char in ("/", "\\"):
            if escaped == REJECT:
                raise ProtocolError("encoded slash (%2F or %5C) in the path")
            out.append("/" if escaped == UNESCAPE else "%" + part[:2].upper())
        elif char == "\0":
            raise ProtocolError("NUL (%00) in the path")
        else:
            out.append("%" + part[:2].upper())
        out.append(part[2:])
    return "".join(out)


def _merge(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _remove_dot_segments(path: str, strict: bool) -> str:
    """RFC 3986 §5.2.4 on a path that starts with `/`; `..` above the root stays at the root."""
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        if strict and segment.startswith((";", ".;", "..;")):
            raise ProtocolError("path segment that hides a dot segment or an empty one (;)")
        out.append(segment)
    result = "/" + "/".join(out)
    if segments[-1] in (".", "..") and result[-1:] != "/":
        result += "/"  # `/a/b/..` is the directory `/a/`, not the file `/a`
    return result
