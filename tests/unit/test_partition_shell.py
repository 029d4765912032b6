"""The partition shell's group commit: where a flush commits, and what a failed one does.

A real SqliteStore in a temporary directory; the flush executor is a recording one, so each test
sees whether a flush went to the flush thread or committed on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kvstore.errors import InternalError
from kvstore.limits import (
    FLUSH_COMMIT_SAMPLES,
    FLUSH_INLINE_COMMIT_US_MAX,
    STAGE_ON_LOOP_ROWS_MAX,
)
from kvstore.storage_node.core import PartitionConfig, PartitionCore
from kvstore.storage_node.metrics import NodeMetrics
from kvstore.storage_node.shell import PartitionShell
from kvstore.storage_node.sqlite_store import FlushJob, SqliteStore
from kvstore.storage_node.store import ItemRow
from kvstore.types import TIMESTAMP_ZERO, PartitionId

pytestmark = pytest.mark.asyncio

WAIT_S = 60.0  # a guard against a hang: a flush is done in milliseconds unless the disk is busy


class RecordingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def parts(
    tmp_path: Path,
) -> Iterator[tuple[PartitionShell, RecordingExecutor, list[BaseException]]]:
    store = SqliteStore.open(tmp_path / "p.db")
    executor = RecordingExecutor()
    fatal: list[BaseException] = []
    core = PartitionCore(PartitionId(0), store, PartitionConfig())
    shell = PartitionShell(
        PartitionId(0),
        core,
        store,
        metrics=NodeMetrics("n1"),
        on_fatal=fatal.append,
        flush_executor=executor,
    )
    try:
        yield shell, executor, fatal
    finally:
        store.close()
        executor.shutdown(wait=True)


def write(shell: PartitionShell, key: str) -> None:
    shell.store.put_item(
        ItemRow(
            key=key,
            exists=True,
            value={"n": 1},
            version=1,
            write_ts=TIMESTAMP_ZERO,
            read_ts=TIMESTAMP_ZERO,
        )
    )


async def flush(shell: PartitionShell) -> None:
    waiter = shell.durable()
    assert waiter is not None
    await asyncio.wait_for(waiter, WAIT_S)


async def test_a_small_flush_on_a_fast_disk_commits_on_the_loop(parts: Any) -> None:
    shell, executor, _ = parts
    write(shell, "a")
    await flush(shell)
    assert executor.submitted == 0
    assert shell.store.get_item("a") is not None and not shell.store.dirty
    assert len(shell.recent_commits_us) == 1 and shell.recent_commits_us[0] > 0  # timed


async def test_slow_commits_move_to_the_flush_thread_and_keep_being_measured(parts: Any) -> None:
    shell, executor, _ = parts
    slow = FLUSH_INLINE_COMMIT_US_MAX * 4.0
    shell.recent_commits_us.extend([slow] * FLUSH_COMMIT_SAMPLES)  # a run of slow fsyncs
    assert not shell.commits_inline(1)
    write(shell, "a")
    await flush(shell)
    assert executor.submitted == 1
    # The commit on the thread was timed too: its sample pushed the oldest slow one out. (How
    # fast it was is the disk's business: under load an fsync may well take milliseconds; what
    # a fast sample does is the next test.)
    assert len(shell.recent_commits_us) == FLUSH_COMMIT_SAMPLES
    assert list(shell.recent_commits_us)[:-1] == [slow] * (FLUSH_COMMIT_SAMPLES - 1)
    assert 0 < shell.recent_commits_us[-1] != slow


async def test_one_fast_commit_among_slow_ones_keeps_commits_on_the_loop(parts: Any) -> None:
    # A busy machine stretches most commits' wall time (waiting for a CPU after the fsync); the
    # fastest recent one still shows the disk is fast.
    shell, executor, _ = parts
    shell.recent_commits_us.extend([FLUSH_INLINE_COMMIT_US_MAX * 10.0] * (FLUSH_COMMIT_SAMPLES - 1))
    shell.recent_commits_us.append(FLUSH_INLINE_COMMIT_US_MAX / 10)
    write(shell, "a")
    await flush(shell)
    assert executor.submitted == 0


async def test_a_batch_too_big_to_stage_on_the_loop_never_commits_there(parts: Any) -> None:
    shell, _, _ = parts
    assert shell.commits_inline(STAGE_ON_LOOP_ROWS_MAX)
    assert not shell.commits_inline(STAGE_ON_LOOP_ROWS_MAX + 1)


async def test_a_failed_inline_commit_fails_its_waiters_and_the_node(
    parts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell, executor, fatal = parts

    def broken(self: FlushJob) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(FlushJob, "run", broken)
    write(shell, "a")
    waiter = shell.durable()
    assert waiter is not None
    with pytest.raises(InternalError, match="failed to flush"):
        await asyncio.wait_for(waiter, WAIT_S)
    assert executor.submitted == 0
    assert len(fatal) == 1 and isinstance(fatal[0], OSError)
    with pytest.raises(InternalError):
        shell.durable()
