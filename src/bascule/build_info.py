"""Which build of bascule is running: compiled (mypyc) or the pure-Python twin.

Rules of this module:
- It answers from the modules actually imported, never from how the package was installed:
  a pure .py file shadowed by a stale compiled one (or the reverse) shows here as it runs.
- `bascule.l7.exchange` stands for the compiled set: setup.py compiles every module of l7,
  codec and upstream together or none of them.
- It imports nothing of the data plane at module level, so `bascule version` stays cheap.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

from bascule import __version__

# A few modules of each compiled package; tests/unit/test_build.py checks every one.
COMPILED_MODULES = (
    "bascule.l7.exchange",
    "bascule.l7.session",
    "bascule.l7.upstream",
    "bascule.l7.router",
    "bascule.codec.http1",
    "bascule.codec.headers",
    "bascule.upstream.cluster",
    "bascule.upstream.pool",
    "bascule.upstream.balancers.maglev",
    "bascule.control.access_log",
)


def is_extension(module_name: str) -> bool:
    """Whether the named module, once imported, was loaded from a compiled extension file."""
    path = getattr(importlib.import_module(module_name), "__file__", None) or ""
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def is_compiled() -> bool:
    """Whether the running hot path is the compiled build."""
    return is_extension("bascule.l7.exchange")


def build_name() -> str:
    return "compiled: mypyc" if is_compiled() else "pure Python"


def version_line() -> str:
    """What `bascule version` prints, e.g. `bascule 0.1.0 (compiled: mypyc)`."""
    return f"bascule {__version__} ({build_name()})"
