"""One partition inside a node process: its core, its SQLite store and its group-commit loop.

Theory of operation
-------------------
The core writes into the store's open batch synchronously (on the event loop, microseconds). A
reply may only leave once every write it could depend on is durable, so after each step the
service awaits :meth:`PartitionShell.durable`:

* the open batch has writes -> wait for the flush that will carry it;
* else a flush is in flight -> wait for it (this step may have read rows it holds);
* else nothing: answer at once.

The flush loop runs while the open batch is non-empty: it moves the batch into a flush job
(``begin_flush``), writes its rows into an open SQLite transaction on the loop (CPU only; a batch
of more than ``STAGE_ON_LOOP_ROWS_MAX`` rows is written on the flush thread instead, so no batch
stalls the loop for more than about a millisecond), commits it, then ``end_flush`` and releases
every reply that waited on that job. Where it commits depends on the disk: while the fastest of
the partition's last ``FLUSH_COMMIT_SAMPLES`` COMMITs (fsync included) took under
``FLUSH_INLINE_COMMIT_US_MAX``, a small batch commits on the event loop itself, which stalls the
loop for that long but skips the hand-off to the flush thread and back (a thread-pool submit,
futex wake-ups of both threads, the GIL changing hands twice and the loop's self-pipe): on this
machine's disk, with fsync at about 90 µs, that cut the nodes' CPU per transfer by a quarter
(docs/bench.md). The fastest rather than an average, because on a busy machine a commit's wall
time also counts the wait for a CPU after the fsync (an average of 1 ms sent most commits back to
the thread under load). A slower disk makes even the fastest commit exceed the bound and the
commits move to the node's flush thread (the fsync off the event loop and without the GIL);
they keep being timed there, so they come back to the loop when the disk is fast again. One flush
thread serves every partition of the node: commits queue up there for a fraction of a
millisecond each, while a thread per partition made sixteen threads fight the event loop for
the GIL after every fsync (measured: 4.3k puts/s with a thread per partition against 5.6k with
one, bench/node_bench.py).
Writes that arrive meanwhile gather in the next open batch, so under load each fsync carries many
requests (group commit) and no request waits for more than the batch in flight plus its own. Each
partition flushes on its own, so one slow partition never holds up another's replies.

A failed flush cannot be retried safely (after a failed fsync the kernel may have dropped the
dirty pages), so it fails its waiters with ``InternalError`` and calls ``on_fatal``: the node stops
and recovers from disk on restart, where only acknowledged writes are guaranteed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from kvstore.errors import InternalError
from kvstore.limits import (
    FLUSH_COMMIT_SAMPLES,
    FLUSH_INLINE_COMMIT_US_MAX,
    STAGE_ON_LOOP_ROWS_MAX,
)
from kvstore.logs import log_event
from kvstore.storage_node.core import PartitionCore
from kvstore.storage_node.metrics import NodeMetrics
from kvstore.storage_node.sqlite_store import SqliteStore
from kvstore.types import PartitionId

__all__ = ["PartitionShell"]

_log = logging.getLogger("kvstore.storage_node")


class PartitionShell:
    def __init__(
        self,
        pid: PartitionId,
        core: PartitionCore,
        store: SqliteStore,
        *,
        metrics: NodeMetrics,
        on_fatal: Callable[[BaseException], None],
        flush_executor: Executor,
    ) -> None:
        self.pid = pid
        self.core = core
        self.store = store
        self.in_progress = 0  # requests admitted and not yet answered (the bounded queue)
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._flush_executor = flush_executor
        self._open_waiters: list[asyncio.Future[None]] = []
        self._flight_waiters: list[asyncio.Future[None]] | None = None
        self._flusher: asyncio.Task[None] | None = None
        # This partition's latest COMMIT durations (µs), the fastest of which says how fast
        # the disk is.
        self.recent_commits_us: deque[float] = deque(maxlen=FLUSH_COMMIT_SAMPLES)
        self.failed: BaseException | None = None

    def durable(self) -> asyncio.Future[None] | None:
        """A future that resolves once every write so far is durable; None if already so."""
        if self.failed is not None:
            raise InternalError(f"partition {self.pid} failed to flush: {self.failed}")
        if self.store.dirty:
            waiter = asyncio.get_running_loop().create_future()
            self._open_waiters.append(waiter)
            if self._flusher is None:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
            return waiter
        if self._flight_waiters is not None:
            waiter = asyncio.get_running_loop().create_future()
            self._flight_waiters.append(waiter)
            return waiter
        return None

    def commits_inline(self, rows: int) -> bool:
        """Whether a flush of ``rows`` rows commits on the event loop (see the module)."""
        recent = self.recent_commits_us
        fast_disk = not recent or min(recent) < FLUSH_INLINE_COMMIT_US_MAX
        return rows <= STAGE_ON_LOOP_ROWS_MAX and fast_disk

    def queue_depth(self) -> int:
        """Requests admitted and not yet answered (for the queue-depth gauge)."""
        return self.in_progress

    async def idle(self) -> None:
        """Wait until nothing is buffered or in flight (for shutdown)."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.store.dirty:
                writes = self.store.pending_writes
                job = self.store.begin_flush()
                if job is None:
                    break
                waiters, self._open_waiters = self._open_waiters, []
                self._flight_waiters = waiters
                started = time.perf_counter()
                try:
                    if job.rows <= STAGE_ON_LOOP_ROWS_MAX:  # a big batch would stall the loop
                        job.stage()  # CPU only, no disk wait (see FlushJob.stage)
                    if self.commits_inline(job.rows):
                        job.run()
                    else:
                        await loop.run_in_executor(self._flush_executor, job.run)
                except Exception as error:  # disk full, I/O error: see the module docstring
                    self._fail(error, waiters)
                    return
                self.recent_commits_us.append(job.commit_s * 1e6)
                self.store.end_flush(job)
                self._flight_waiters = None
                self._metrics.fsyncs.inc()
                self._metrics.fsync_seconds.observe(time.perf_counter() - started)
                self._metrics.batch_writes.observe(writes)
                self._metrics.batch_waiters.observe(len(waiters))
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._flusher = None

    def _fail(self, error: BaseException, waiters: list[asyncio.Future[None]]) -> None:
        self.failed = error
        log_event(_log, "flush.failed", logging.CRITICAL, partition=self.pid, error=repr(error))
        failure = InternalError(f"partition {self.pid} failed to flush")
        for waiter in [*waiters, *self._open_waiters]:
            if not waiter.done():
                waiter.set_exception(failure)
        self._open_waiters = []
        self._flight_waiters = None
        self._on_fatal(error)
