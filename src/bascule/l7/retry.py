"""When a failed exchange may be tried again on another endpoint: one pure decision.

Rules of this module (seed 003 §5, RFC 9110 §9.2.2):
- Only idempotent methods: a POST may have been acted on before the connection dropped.
- Only before any byte of a response reached the client, and only when the whole request is
  held (nothing of it streamed away that could not be sent again).
- At most `allowed` times; which endpoint comes next is the balancer's business (`accept`
  skips the ones tried).
"""

from __future__ import annotations

from bascule.codec.http1 import IDEMPOTENT_METHODS


def may_retry(
    done: int,
    allowed: int,
    *,
    method: str,
    response_started: bool,
    request_complete: bool,
    body_replayable: bool,
) -> bool:
    """`done` retries made so far; `body_replayable`: no body, or all of it is held."""
    return (
        done < allowed
        and not response_started
        and request_complete
        and body_replayable
        and method in IDEMPOTENT_METHODS
    )
