"""Giving memory back: server processes use the C allocator and return its free pages.

Theory of operation
-------------------
A burst of thousands of clients makes a coordinator allocate per-connection buffers and objects
by the tens of megabytes. Once the burst is over they are freed, but with CPython's own small-
object allocator (pymalloc) the freed blocks stay scattered over its 1 MiB arenas, which go back
to the system only when entirely empty: measured here, a coordinator that grew from 50 to 83 MB
during a 20x burst stayed at 83 MB after its connections had closed, and a full garbage
collection found nothing to free (``docs/bench.md``, overload).

So a server process runs with ``PYTHONMALLOC=malloc`` (every allocation from glibc's malloc) and
calls glibc's ``malloc_trim(0)`` every ``MEMORY_TRIM_INTERVAL_MS``, which returns the free pages
inside the heap to the system (``madvise``); it costs about a millisecond. With both, the same
coordinator came back to within 15% of its pre-burst size less than a minute after its
connections closed.
:func:`use_system_malloc` re-executes the process with the variable set (the same pid, so pid
files and supervisors see nothing); an operator who sets ``PYTHONMALLOC`` to anything keeps it.
Elsewhere than glibc, the trim is a no-op.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Sequence

from kvstore.limits import MEMORY_TRIM_INTERVAL_MS

__all__ = ["use_system_malloc", "MemoryTrimmer"]

_ENV = "PYTHONMALLOC"


def use_system_malloc(module: str, argv: Sequence[str]) -> None:
    """Re-execute ``python -m module argv...`` with ``PYTHONMALLOC=malloc`` unless it is set."""
    if _ENV in os.environ:
        return
    env = {**os.environ, _ENV: "malloc"}
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def _malloc_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return lambda: trim(0)


class MemoryTrimmer:
    """Calls ``malloc_trim(0)`` every ``interval_ms`` on the running loop, while started."""

    def __init__(self, interval_ms: int = MEMORY_TRIM_INTERVAL_MS) -> None:
        self._interval_s = interval_ms / 1000
        self._trim = _malloc_trim()
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0

    def start(self) -> None:
        if self._trim is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._fire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        assert self._trim is not None
        self._trim()
        self.trims += 1
        self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._fire)
