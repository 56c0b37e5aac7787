"""The listener's connection table, without sockets: counts, per-peer limits, idle order."""

from __future__ import annotations

from bascule.listen.table import ConnectionTable


def test_full_at_the_total_and_per_peer_limits() -> None:
    t: ConnectionTable[str] = ConnectionTable(3, 2)
    t.add("a1", "A")
    t.add("a2", "A")
    assert t.peer_full("A") and not t.peer_full("B") and not t.full()
    t.add("b1", "B")
    assert t.full() and len(t) == 3
    t.discard("a1")
    assert not t.full() and not t.peer_full("A")
    t.discard("a1")  # twice is harmless: a reclaimed session also reports its close
    assert len(t) == 2


def test_oldest_idle_overall_and_per_peer() -> None:
    t: ConnectionTable[str] = ConnectionTable(10)
    for s, peer in (("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")):
        t.add(s, peer)
    assert t.oldest_idle() is None
    for s in ("b1", "a2", "a1", "b2"):
        t.set_idle(s)
    assert t.oldest_idle() == "b1" and t.oldest_idle("A") == "a2" and t.oldest_idle("C") is None
    t.set_busy("b1")  # busy again, then idle again: now the newest
    t.set_idle("b1")
    assert t.oldest_idle() == "a2" and t.oldest_idle("B") == "b2"
    t.discard("a2")
    t.discard("b2")
    assert t.oldest_idle() == "a1" and t.oldest_idle("B") == "b1" and t.idle_count() == 2
    t.set_busy("a1")
    t.set_busy("a1")  # busy twice is harmless
    assert t.oldest_idle("A") is None and t.oldest_idle() == "b1"


def test_a_refused_session_counts_in_the_total_only_and_is_never_idle() -> None:
    t: ConnectionTable[str] = ConnectionTable(2, 1)
    t.add("a1", "A")
    t.add("a2", "A", refused=True)
    assert t.full() and t.peer_full("A")
    t.set_idle("a2")
    assert t.oldest_idle() is None
    t.discard("a2")
    assert not t.full() and t.peer_full("A")
    t.discard("a1")
    assert not t.peer_full("A") and len(t) == 0
