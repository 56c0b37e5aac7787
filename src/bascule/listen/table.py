"""The open connections of one listener in one worker: how many, from whom, which are idle.

Rules of this module:
- Pure bookkeeping: no asyncio, no sockets. The listener asks it what to do and does it.
- Idle sessions (between exchanges, nothing buffered) are kept oldest first, overall and per
  client address, so the one to reclaim at a limit is found in O(1).
- A refused session (over its client's limit) counts against the listener's total, it holds
  a socket, but not against its client's count, which only admitted sessions fill.
"""

from __future__ import annotations

from typing import Generic, TypeVar

S = TypeVar("S")


class ConnectionTable(Generic[S]):
    __slots__ = ("_idle", "_idle_by_peer", "_peers", "_per_peer", "max_per_peer", "max_total")

    def __init__(self, max_total: int, max_per_peer: int = 0) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer  # 0: no limit per client address
        self._peers: dict[S, str] = {}  # every open session → its peer ("" when refused)
        self._per_peer: dict[str, int] = {}
        # insertion-ordered dicts used as ordered sets: the first key is the oldest idle one
        self._idle: dict[S, None] = {}
        self._idle_by_peer: dict[str, dict[S, None]] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, session: S) -> bool:
        return session in self._peers

    def sessions(self) -> list[S]:
        return list(self._peers)

    def full(self) -> bool:
        return len(self._peers) >= self.max_total

    def peer_full(self, peer: str) -> bool:
        return bool(self.max_per_peer) and self._per_peer.get(peer, 0) >= self.max_per_peer

    def add(self, session: S, peer: str, refused: bool = False) -> None:
        if refused:
            self._peers[session] = ""
            return
        self._peers[session] = peer
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1

    def discard(self, session: S) -> None:
        peer = self._peers.pop(session, None)
        if peer is None:
            return
        self.set_busy(session, peer)
        if peer:
            n = self._per_peer[peer] - 1
            if n:
                self._per_peer[peer] = n
            else:
                del self._per_peer[peer]

    def set_idle(self, session: S) -> None:
        peer = self._peers.get(session)
        if not peer:  # gone, or refused (never idle: it closes after its answer)
            return
        self._idle[session] = None
        self._idle_by_peer.setdefault(peer, {})[session] = None

    def set_busy(self, session: S, peer: str | None = None) -> None:
        if session in self._idle:
            del self._idle[session]
            peer = peer or self._peers[session]
            by_peer = self._idle_by_peer[peer]
            del by_peer[session]
            if not by_peer:
                del self._idle_by_peer[peer]

    def oldest_idle(self, peer: str | None = None) -> S | None:
        """The session idle the longest (from this peer, if given), or None."""
        idle = self._idle if peer is None else self._idle_by_peer.get(peer)
        if not idle:
            return None
        return next(iter(idle))

    def idle_count(self) -> int:
        return len(self._idle)
