"""Memory of one side of a peer benchmark, from /proc (Linux): the process's peak resident memory, and the private
memory of its live child processes (DataLoader workers), whose inherited pages the parent's figure already holds."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_pids() -> list[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").glob("*"):
        try:
            pids.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            continue
    return sorted(pids)


def private_mib(pid: int) -> float:
    """Private_Clean + Private_Dirty of a process (its unique set), 0 where /proc does not tell."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    kib = sum(int(line.split()[1]) for line in text.splitlines() if line.startswith(("Private_Clean", "Private_Dirty")))
    return kib / 1024


def children_private_mib() -> tuple[int, float]:
    """The live child processes, and their private memory summed."""
    pids = child_pids()
    return len(pids), sum(private_mib(pid) for pid in pids)
