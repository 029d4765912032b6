"""How a node's flush job reaches the disk: the :class:`Disk` protocol and production's.

Theory of operation
-------------------
The node runtime decides *when* a flush runs and what waits on it; a :class:`Disk` decides only
*where* the job's ``run()`` (one SQLite transaction, one fsync) executes, and calls ``done``
once with ``None`` or the error. The simulator's disk completes a job after a simulated fsync
delay, the tests' at once.

:class:`ThreadDisk` is production's. A job of at most ``STAGE_ON_LOOP_ROWS_MAX`` rows is staged
on the event loop (CPU only: binding rows into an open transaction; a bigger one would stall the
loop, so it is staged on the flush thread). A job of at most ``FLUSH_INLINE_ROWS_MAX`` rows (a
quiet node) also commits on the loop itself while the fastest of the node's last
``FLUSH_COMMIT_SAMPLES`` COMMITs (fsync included) took under ``FLUSH_INLINE_COMMIT_US_MAX``: that
stalls the loop for the fsync but skips the hand-off to the flush thread and back (a thread-pool
submit, futex wake-ups of both threads, the GIL changing hands twice, the loop's self-pipe). A
bigger job means a busy node: it commits on the flush thread, so the loop runs the next requests
(and stages their batch) during the fsync, which matters once one group commit serves every
partition of the node (docs/bench.md: the comparison runs so far were too noisy to rank the two).
The fastest commit rather than an average, because on a busy machine a commit's wall time also
counts the wait for a CPU after the fsync. A slower disk makes even the fastest commit exceed the
bound and every commit moves to the flush thread (the fsync off the loop and without the GIL);
they keep being timed there, so small ones come back to the loop when the disk is fast again.

:func:`is_disk_full` tells the runtime which failures mean "no space left" (SQLite's
``SQLITE_FULL``, ``ENOSPC``, ``EDQUOT``): those it retries, holding the job, instead of failing
the node. An fsync that fails with ``ENOSPC`` reaches Python as SQLite's generic
``SQLITE_IOERR_FSYNC`` without the errno, so it cannot be told apart from a broken disk and stays
fatal (on local file systems ENOSPC comes from the write, which SQLite reports as
``SQLITE_FULL``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from kvstore.limits import (
    FLUSH_COMMIT_SAMPLES,
    FLUSH_INLINE_COMMIT_US_MAX,
    FLUSH_INLINE_ROWS_MAX,
    STAGE_ON_LOOP_ROWS_MAX,
)
from kvstore.storage_node.store import FlushJob

__all__ = ["Disk", "FlushDone", "ThreadDisk", "ImmediateDisk", "is_disk_full", "disk_full_cause"]

FlushDone = Callable[[BaseException | None], None]

_SQLITE_FULL = 13  # the primary result code; extended codes keep it in their low byte
_SQLITE_FULL_TEXT = "database or disk is full"
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes and contexts, each once."""
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in found):
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def is_disk_full(error: BaseException) -> bool:
    """Whether a failed flush failed for want of space (see the module), not a broken disk."""
    for cause in _chain(error):
        if isinstance(cause, sqlite3.Error):
            code = getattr(cause, "sqlite_errorcode", None)
            if (isinstance(code, int) and code & 0xFF == _SQLITE_FULL) or (
                _SQLITE_FULL_TEXT in str(cause)
            ):
                return True
        elif isinstance(cause, OSError) and cause.errno in _DISK_FULL_ERRNOS:
            return True
    return False


def disk_full_cause(error: BaseException) -> str:
    """A short text for a disk-full error: SQLite's message or the OS's for the errno."""
    for cause in _chain(error):
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL_ERRNOS:
            return os.strerror(cause.errno).lower()
    for cause in _chain(error):
        if isinstance(cause, sqlite3.Error):
            return str(cause)
    return "no space left on device"


class Disk(Protocol):
    def write(self, job: FlushJob, done: FlushDone) -> None:
        """Run ``job`` (make it durable) and call ``done`` once, maybe synchronously."""
        ...


class ImmediateDisk:
    """Runs every job at once on the calling thread (tests, tools)."""

    def write(self, job: FlushJob, done: FlushDone) -> None:
        try:
            job.run()
        except Exception as error:
            done(error)
            return
        done(None)


class ThreadDisk:
    """Production's disk: on the event loop while the disk is fast, else on one flush thread."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flush")
        # The latest COMMIT durations (µs), the fastest of which says how fast the disk is.
        self.recent_commits_us: deque[float] = deque(maxlen=FLUSH_COMMIT_SAMPLES)

    def commits_inline(self, rows: int) -> bool:
        """Whether a job of ``rows`` rows commits on the event loop (see the module)."""
        recent = self.recent_commits_us
        fast_disk = not recent or min(recent) < FLUSH_INLINE_COMMIT_US_MAX
        return rows <= FLUSH_INLINE_ROWS_MAX and fast_disk

    def write(self, job: FlushJob, done: FlushDone) -> None:
        try:
            if job.rows <= STAGE_ON_LOOP_ROWS_MAX:  # a big batch would stall the loop
                job.stage()
            if self.commits_inline(job.rows):
                job.run()
            else:
                future = asyncio.get_running_loop().run_in_executor(self._thread, job.run)
                future.add_done_callback(lambda f: self._ran(job, f, done))
                return
        except Exception as error:  # disk full (retried), I/O error (fatal): the runtime's call
            done(error)
            return
        self.recent_commits_us.append(job.commit_s * 1e6)
        done(None)

    def _ran(self, job: FlushJob, future: asyncio.Future[None], done: FlushDone) -> None:
        error = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if error is None:
            self.recent_commits_us.append(job.commit_s * 1e6)
        done(error)

    def close(self) -> None:
        """Wait for a job running on the flush thread, then stop the thread."""
        self._thread.shutdown(wait=True)
