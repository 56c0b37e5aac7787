"""Fuzz the compiled HTTP/1 head codec: random and mutated bytes, bounded in count and time.

Every call must return a RequestHead/ResponseHead or None, or raise ProtocolError, and agree
with the pure twin; anything else (a crash, another exception) fails. Not collected by pytest
(run by hand; a few hundred cases of the same run inside the suite via test_http1_diff.py).

    .venv/bin/python tests/fuzz/fuzz_http1.py --cases 200000 --seconds 600

To catch a read past the buffer, build the twin with AddressSanitizer and let every bytes
object be its own malloc block:

    CFLAGS="-fsanitize=address -fno-omit-frame-pointer -O1" LDFLAGS=-fsanitize=address \\
        .venv/bin/cythonize -f -i -3 src/bascule/codec/http1/_chead.pyx
    PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \\
        LD_PRELOAD=$(gcc -print-file-name=libasan.so) .venv/bin/python tests/fuzz/fuzz_http1.py

(then rebuild it without: `cythonize -f -i -3 ...`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from http1_twins import HEAD_ATTRS, LIMITS, RESPONSE_ATTRS, as_dict, chead
from test_http1_diff import REQUEST_CORPUS, RESPONSE_CORPUS, mutated

from bascule.codec.http1 import ProtocolError, RequestHead, ResponseHead
from bascule.codec.http1 import head as pure


def outcome(parse: Any, *args: Any) -> Any:
    try:
        got = parse(*args)
    except ProtocolError as e:
        return ("refused", e.status, e.reason)
    assert got is None or isinstance(got, RequestHead | ResponseHead), got
    return got


def one(buf: bytes, cut: int) -> None:
    for data in (buf, buf[: cut % (len(buf) + 1)]):
        got = outcome(chead.parse_request_head, data, LIMITS)
        assert as_dict(got, HEAD_ATTRS) == as_dict(
            outcome(pure.parse_request_head, data, LIMITS), HEAD_ATTRS), data
        for method in ("GET", "HEAD"):
            got = outcome(chead.parse_response_head, data, method)
            assert as_dict(got, RESPONSE_ATTRS) == as_dict(
                outcome(pure.parse_response_head, data, method), RESPONSE_ATTRS), data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    if chead is None:
        print("the Cython twin is not built: cythonize -i -3 src/bascule/codec/http1/_chead.pyx")
        return 2
    deadline = time.monotonic() + args.seconds
    count = 0
    corpus = REQUEST_CORPUS + RESPONSE_CORPUS
    data = st.binary(max_size=512) | mutated(corpus) | st.sampled_from(corpus).flatmap(
        lambda c: st.binary(max_size=16).map(lambda b: c + b))

    @settings(max_examples=args.cases, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data, st.integers(0, 1 << 16))
    def run(buf: bytes, cut: int) -> None:
        nonlocal count
        if time.monotonic() > deadline:
            return
        one(buf, cut)
        count += 1

    started = time.monotonic()
    run()
    print(f"{count} cases, {time.monotonic() - started:.1f} s: no crash, twins agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
