"""Production's disk policy (kvstore/runtime/disk.py): where a flush job commits, and what a
failed one reports. The jobs record the thread they ran on."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kvstore.limits import (
    FLUSH_COMMIT_SAMPLES,
    FLUSH_INLINE_COMMIT_US_MAX,
    FLUSH_INLINE_ROWS_MAX,
    STAGE_ON_LOOP_ROWS_MAX,
)
from kvstore.runtime.disk import ThreadDisk

pytestmark = pytest.mark.asyncio

WAIT_S = 60.0  # a guard against a hang: a fake commit takes no time


class Job:
    def __init__(self, rows: int, commit_us: float = 10.0, error: BaseException | None = None):
        self.rows = rows
        self.commit_s = 0.0
        self._commit_us = commit_us
        self._error = error
        self.staged_on: str | None = None
        self.ran_on: str | None = None

    def stage(self) -> None:
        self.staged_on = threading.current_thread().name

    def run(self) -> None:
        if self.staged_on is None:
            self.stage()
        self.ran_on = threading.current_thread().name
        if self._error is not None:
            raise self._error
        self.commit_s = self._commit_us / 1e6


async def write(disk: ThreadDisk, job: Job) -> BaseException | None:
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    disk.write(job, done.set_result)
    return await asyncio.wait_for(done, WAIT_S)


@pytest.fixture
def disk() -> ThreadDisk:
    return ThreadDisk()


async def test_a_small_job_on_a_fast_disk_commits_on_the_loop(disk: ThreadDisk) -> None:
    job = Job(rows=FLUSH_INLINE_ROWS_MAX)
    assert await write(disk, job) is None
    main = threading.current_thread().name
    assert job.staged_on == main and job.ran_on == main
    disk.close()


async def test_a_busy_nodes_job_stages_on_the_loop_and_commits_on_the_thread(
    disk: ThreadDisk,
) -> None:
    job = Job(rows=FLUSH_INLINE_ROWS_MAX + 1)
    assert await write(disk, job) is None
    assert job.staged_on == threading.current_thread().name
    assert job.ran_on is not None and job.ran_on.startswith("flush")
    disk.close()


async def test_a_job_too_big_to_stage_on_the_loop_is_staged_on_the_thread(
    disk: ThreadDisk,
) -> None:
    job = Job(rows=STAGE_ON_LOOP_ROWS_MAX + 1)
    assert await write(disk, job) is None
    assert job.staged_on is not None and job.staged_on.startswith("flush")
    disk.close()


async def test_slow_commits_move_to_the_thread_and_come_back_when_one_is_fast(
    disk: ThreadDisk,
) -> None:
    slow_us = FLUSH_INLINE_COMMIT_US_MAX * 2
    for _ in range(FLUSH_COMMIT_SAMPLES):
        await write(disk, Job(rows=FLUSH_INLINE_ROWS_MAX + 1, commit_us=slow_us))
    assert not disk.commits_inline(1), "every recent commit was slow"
    job = Job(rows=1, commit_us=10)
    await write(disk, job)
    assert job.ran_on is not None and job.ran_on.startswith("flush"), "timed on the thread"
    assert disk.commits_inline(1), "one fast commit among the recent ones brings it back"
    disk.close()


async def test_a_failed_commit_reports_its_error(disk: ThreadDisk) -> None:
    failure = OSError("disk full")
    assert await write(disk, Job(rows=1, error=failure)) is failure
    assert await write(disk, Job(rows=FLUSH_INLINE_ROWS_MAX + 1, error=failure)) is failure
    disk.close()
