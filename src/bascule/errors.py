"""Errors shared across the program's parts.

Rules of this module:
- It imports nothing from bascule, so any part (packet, runtime, listen) can raise these
  without an import cycle.
"""

from __future__ import annotations


class StartupError(Exception):
    """Something the user must fix before bascule can serve (a port in use, say)."""
