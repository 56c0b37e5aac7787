"""The chunked body decoder: exact payloads, every split of the input, strict refusals, and
never a laxer verdict than llhttp's."""

from __future__ import annotations

import pytest
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from hypothesis import given, settings
from hypothesis import strategies as st

from bascule.codec.chunked import ChunkedDecoder
from bascule.codec.http1 import ProtocolError


def decode_all(data: bytes, step: int | None = None) -> tuple[bytes, bool, bytes]:
    d = ChunkedDecoder()
    out: list[bytes] = []
    parts = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    done, rest = False, b""
    for part in parts:
        if done:
            rest += part
            continue
        pieces, done, rest = d.feed(part)
        out += pieces
    return b"".join(out), done, rest


@pytest.mark.parametrize(
    ("body", "payload", "rest"),
    [
        (b"0\r\n\r\n", b"", b""),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"5;ext=1\r\nhello\r\n0\r\n\r\nGET /", b"hello", b"GET /"),
        (b"A\r\n0123456789\r\n1\r\nx\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\nnext", b"0123456789x", b"next"),
        (b"00000003\r\nabc\r\n0\r\n\r\n", b"abc", b""),
    ],
)
def test_decodes_exactly_whatever_the_split(body: bytes, payload: bytes, rest: bytes) -> None:
    for step in (None, 1, 2, 3, 7):
        got, done, left = decode_all(body, step)
        assert (got, done, left) == (payload, True, rest), step


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\n",  # not hex
        b"-1\r\nx\r\n",
        b" 5\r\nhello\r\n",
        b"5 \r\nhello\r\n",
        b"+5\r\nhello\r\n",
        b"5\nhello\r\n",  # bare LF
        b"5\r\nhelloXX0\r\n\r\n",  # data not followed by CRLF
        b"5\r\nhello\n0\r\n\r\n",
        b"11111111111111111\r\n",  # 17 digits
        b"5;a\x00b\r\nhello\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        b"0\r\n: empty name\r\n\r\n",
        b"\r\n",  # empty size line
        b"0;\r\n\r\n",  # empty extension (llhttp refuses it)
        b"5;a=\r\nhello\r\n",
        b"5;a b\r\nhello\r\n",
    ],
)
def test_refuses_bad_shapes(body: bytes) -> None:
    for step in (None, 1):
        with pytest.raises(ProtocolError) as e:
            decode_all(body, step)
        assert e.value.status == 400


def test_size_line_and_trailers_are_bounded() -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(b"5;" + b"x" * 2000)
    d = ChunkedDecoder(max_trailers=100)
    with pytest.raises(ProtocolError) as e:
        d.feed(b"0\r\n" + b"X: " + b"y" * 200)
    assert e.value.status == 431


def test_one_feed_returns_every_chunk_of_a_read() -> None:
    """A read of many tiny chunks is one batch, not one callback per chunk (issue 13 item 2)."""
    pieces, done, _ = ChunkedDecoder().feed(b"1\r\nx\r\n" * 1000)
    assert len(pieces) == 1000 and not done
    assert b"".join(pieces) == b"x" * 1000


def _llhttp(body: bytes) -> bytes | None:
    """llhttp's reading of a chunked request body: the payload, or None when it refuses."""
    got: list[bytes] = []
    complete: list[bool] = []

    class Cb:
        def on_body(self, b: bytes) -> None:
            got.append(b)

        def on_message_complete(self) -> None:
            complete.append(True)

    p = HttpRequestParser(Cb())
    try:
        p.feed_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    except (HttpParserError, HttpParserUpgrade):
        return None
    return b"".join(got) if complete else None


_pieces = st.lists(st.binary(min_size=0, max_size=20), min_size=0, max_size=5)
_noise = st.sampled_from(
    [
        b"",
        b" ",
        b"\n",
        b"\r",
        b";",
        b";a=b",
        b"0",
        b"x",
        b"\r\n",
        b"\x00",
        b"\t",
        b"-",
        b"Z: 1\r\n",
        b";a",
        b';a="q"',
        b";=",
        b";a;b=c",
        b"=",
        b'"',
    ]
)


@settings(max_examples=1500, deadline=None)
@given(_pieces, st.integers(min_value=0, max_value=200), _noise)
def test_never_laxer_than_llhttp(chunks: list[bytes], at: int, noise: bytes) -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    at = min(at, len(body))
    mutated = body[:at] + noise + body[at:]
    try:
        ours, done, rest = decode_all(mutated)
    except ProtocolError:
        return
    if not done:
        return
    theirs = _llhttp(mutated[: len(mutated) - len(rest)])  # what follows is the next request
    assert theirs == ours, (mutated, ours, theirs)
