"""CPU time (user and system apart) and resident memory of a process tree, read from /proc.

Rules of this module: standard library only (bench/http_bench.py runs on the system python3);
it only reads /proc, never signals or changes a process. A tree is a root and every live
descendant (bascule's workers are children of its supervisor); each /proc/PID/stat already sums
the process's threads, and its cutime/cstime add the children it has reaped, so a worker that
exited during a run still counts. Take a `Usage` before and after a run and divide the
difference by what was served (`per_unit_us`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    user_s: float  # utime + cutime of the tree, seconds
    sys_s: float  # stime + cstime of the tree, seconds
    rss_bytes: int  # sum of the processes' resident sets (shared pages count once per process)
    processes: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def _table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, user ticks, system ticks) for every process still readable."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # Fields after "(comm)" (comm may hold spaces): state ppid ... utime(14) stime cutime
        # cstime, 1-based in proc(5), so rest[11..14] here.
        rest = data[data.rindex(b")") + 2 :].split()
        user = int(rest[11]) + int(rest[13])
        system = int(rest[12]) + int(rest[14])
        table[int(entry)] = (int(rest[1]), user, system)
    return table


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0  # exited between the two reads


def tree_usage(root: int) -> Usage:
    """The usage of root and all its live descendants (zero if root is gone)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    user = system = rss = count = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in table:
            continue
        user += table[pid][1]
        system += table[pid][2]
        rss += _rss(pid)
        count += 1
        todo.extend(children.get(pid, ()))
    return Usage(user / CLK_TCK, system / CLK_TCK, rss, count)


def per_unit_us(before: Usage, after: Usage, units: float) -> tuple[float | None, float | None]:
    """(user, system) CPU microseconds per unit served between two readings; None when
    nothing was served. The tick is 1/CLK_TCK s (10 ms at 100 Hz): runs must be long enough
    that the proxy uses many ticks, or the split is coarse."""
    if units <= 0:
        return None, None
    return (
        (after.user_s - before.user_s) * 1e6 / units,
        (after.sys_s - before.sys_s) * 1e6 / units,
    )
