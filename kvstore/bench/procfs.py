"""What the benchmarks read of a process from Linux's ``/proc``: CPU time, RSS, open files.

Theory of operation
-------------------
Each function reads one file of ``/proc/<pid>`` and answers None (or 0 open files) when the
process is gone or the system has no ``/proc``; a benchmark then leaves that figure out rather
than fail.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_s", "rss_mb", "open_files"]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds ``pid`` has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def rss_mb(pid: int) -> float | None:
    """The resident set size of ``pid`` in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_files(pid: int) -> int:
    """How many files (sockets included) ``pid`` has open."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
