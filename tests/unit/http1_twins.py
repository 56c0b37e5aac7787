"""The two twins of the HTTP/1 head codec, as pytest parameters, and small helpers.

The compiled twin is skipped only when its extension is not built; the pure one always runs.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bascule.codec.http1 import head
from bascule.codec.http1.head import Limits
from bascule.codec.http1.rules import ProtocolError

chead: ModuleType | None
try:
    from bascule.codec.http1 import _chead as chead
except ImportError:  # not built: `.venv/bin/cythonize -i -3 src/bascule/codec/http1/_chead.pyx`
    chead = None

NOT_BUILT = "the Cython twin is not built (cythonize -i -3 src/bascule/codec/http1/_chead.pyx)"
TWINS = [
    pytest.param(head, id="pure"),
    pytest.param(chead, id="compiled", marks=pytest.mark.skipif(chead is None, reason=NOT_BUILT)),
]

# the limits tests/integration/test_proxy_errors.py runs bascule with
LIMITS = Limits(max_uri=1024, max_header_size=4096, max_headers=20, max_request_body=1000)

def _slots(cls_name: str) -> tuple[str, ...]:
    """A class's __slots__, read from head.py's source: a mypyc-compiled class has none."""
    tree = ast.parse((Path(head.__file__).parent / "head.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for stmt in node.body:
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
                if isinstance(target, ast.Name) and target.id == "__slots__":
                    assert isinstance(stmt, ast.Assign)
                    return tuple(ast.literal_eval(stmt.value))
    raise LookupError(cls_name)


HEAD_ATTRS = _slots("RequestHead")
RESPONSE_ATTRS = _slots("ResponseHead")


def request(codec: Any, buf: bytes, limits: Limits = LIMITS) -> Any:
    """The parsed head, None, or the (status, reason) of the refusal."""
    try:
        return codec.parse_request_head(buf, limits)
    except ProtocolError as e:
        return (e.status, e.reason)


def response(codec: Any, buf: bytes, method: str = "GET") -> Any:
    try:
        return codec.parse_response_head(buf, method)
    except ProtocolError as e:
        return (e.status, e.reason)


def as_dict(parsed: Any, attrs: tuple[str, ...]) -> Any:
    """A head's every attribute, to compare twins (anything else is returned as it is)."""
    if isinstance(parsed, head.RequestHead | head.ResponseHead):
        return {a: getattr(parsed, a) for a in attrs}
    return parsed
