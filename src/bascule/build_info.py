"""Which build of bascule is running: compiled (mypyc) or the pure-Python twin.

Rules of this module:
- It answers from the files Python loads, never from how the package was installed: a pure
  .py file shadowed by a stale compiled one (or the reverse) shows here as it runs. A module
  already imported answers with its own file; another with the file its import would load.
- `bascule.l7.exchange` stands for the compiled set: setup.py compiles every module of l7,
  codec, upstream, balance and observe together, or none of them.
- It imports nothing of the data plane, so `bascule version` stays cheap.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec

from bascule import __version__

# A few modules of each compiled package; tests/unit/test_build.py checks every one.
COMPILED_MODULES = (
    "bascule.l7.exchange",
    "bascule.l7.session",
    "bascule.l7.h1.client",
    "bascule.l7.router",
    "bascule.codec.http1",
    "bascule.codec.headers",
    "bascule.upstream.cluster",
    "bascule.upstream.pool",
    "bascule.balance.maglev",
    "bascule.observe.access_log",
)


def is_extension(module_name: str) -> bool:
    """Whether the named module is (or would be) loaded from a compiled extension file."""
    module = sys.modules.get(module_name)
    if module is not None:
        path = getattr(module, "__file__", None)
    else:
        spec = find_spec(module_name)
        path = spec.origin if spec is not None else None
    return (path or "").endswith(tuple(EXTENSION_SUFFIXES))


def is_compiled() -> bool:
    """Whether the running hot path is the compiled build."""
    return is_extension("bascule.l7.exchange")


def build_name() -> str:
    return "compiled: mypyc" if is_compiled() else "pure Python"


def version_line() -> str:
    """What `bascule version` prints, e.g. `bascule 0.1.0 (compiled: mypyc)`."""
    return f"bascule {__version__} ({build_name()})"
