"""Sans-I/O HTTP/1: head parsing and RFC 9112 checks, framing rules, head serialisation.

Rules of this package:
- No I/O, no asyncio: bytes in, heads and verdicts out; heads and decisions in, bytes out.
- Two twins of the head codec give the same answers: `head` (pure Python, the reference) and
  `_chead` (Cython). The compiled one is used when it is built and `BASCULE_NO_EXTENSIONS` is
  unset or empty; `IMPLEMENTATION` says which ("compiled" or "pure").
"""

from __future__ import annotations

import os

from bascule.codec.http1.head import (
    Field,
    HeadLimits,
    Limits,
    RequestHead,
    ResponseHead,
)
from bascule.codec.http1.rules import (
    CHUNKED,
    IDEMPOTENT_METHODS,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ProtocolError,
    parse_content_length,
    parse_transfer_encoding,
    response_has_body,
)
from bascule.codec.http1.serialize import (
    CONTINUE_100,
    LAST_CHUNK,
    error_body,
    framing_field,
    reason_phrase,
    request_head,
    response_head,
    simple_response,
)

if os.environ.get("BASCULE_NO_EXTENSIONS"):
    from bascule.codec.http1.head import parse_request_head, parse_response_head

    IMPLEMENTATION = "pure"
else:
    try:
        from bascule.codec.http1._chead import parse_request_head, parse_response_head

        IMPLEMENTATION = "compiled"
    except ImportError:
        from bascule.codec.http1.head import parse_request_head, parse_response_head

        IMPLEMENTATION = "pure"

__all__ = [
    "CHUNKED",
    "CONTINUE_100",
    "IDEMPOTENT_METHODS",
    "IMPLEMENTATION",
    "LAST_CHUNK",
    "LENGTH",
    "NO_BODY",
    "UNTIL_CLOSE",
    "Field",
    "HeadLimits",
    "Limits",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
    "error_body",
    "framing_field",
    "parse_content_length",
    "parse_request_head",
    "parse_response_head",
    "parse_transfer_encoding",
    "reason_phrase",
    "request_head",
    "response_has_body",
    "response_head",
    "simple_response",
]
