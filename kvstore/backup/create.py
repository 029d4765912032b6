"""Online backups: every partition's items as of one timestamp, streamed into a backup file.

Theory of operation
-------------------
A backup at ``T`` is one very large read-only transaction at ``T`` (docs/backup.md, "The
rule"): every partition is read page by page *as of* ``T`` (``ScanRequest(at=T)``, served by the
partition's owner or leader). The first page a partition answers raises its read floor to ``T``
(no write at or below ``T`` can commit there afterwards), pins ``T`` (the versions that writes
after ``T`` replace are kept while the backup runs) and, like every page, waits for intents at or
below ``T`` to be decided. So the file holds exactly the effects of the transactions committed at
or before ``T``, whatever runs meanwhile.

:func:`create_backup` drives it over a :class:`PageSource` (production's is
:class:`~kvstore.backup.remote.NativePages`, the native protocol to the nodes):

1. ``T`` is the given ``at``, or the serving node's clock at the backup's first page.
2. Every partition gets its first page at once, one item long (floors and pins in place
   early: a pin must be set while ``T`` is still inside the partition's version window), then
   pages of ``BACKUP_PAGE_ITEMS`` go on with at most ``BACKUP_PAGES_IN_FLIGHT_MAX`` in flight,
   so the store keeps most of its capacity for its clients. Each page's items go to the writer
   as they arrive: memory holds that many pages, never the store.
3. A refused page is asked again while its error is retryable (an intent at or below ``T``
   still pending, a node restarting or changing leader, overload), with capped exponential
   backoff, for at most ``BACKUP_PAGE_RETRY_MS``. ``SnapshotTooOld`` (the partition lost the
   versions of ``T``: a restart or a leader change after writes above ``T``, or ``T`` older
   than the window) and any other failure end the backup: the partial file is deleted, so a
   backup file either holds a consistent cut or does not exist.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from kvstore.errors import KvError, SnapshotTooOld
from kvstore.limits import (
    BACKUP_PAGE_ITEMS,
    BACKUP_PAGE_RETRY_MS,
    BACKUP_PAGES_IN_FLIGHT_MAX,
)
from kvstore.messages import ItemView, ScanReply
from kvstore.types import PartitionId, Timestamp

__all__ = [
    "PageSource",
    "BackupSink",
    "BackupFailed",
    "BackupSummary",
    "create_backup",
    "retried",
]

T = TypeVar("T")
_MS_PER_S = 1000
_OPENING_ITEMS = 1  # a partition's first page: it sets the floor and the pin, all at once
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 1.0


class PageSource(Protocol):
    """Where backup pages come from (one attempt each; errors are the catalogue's)."""

    async def page(
        self, partition: PartitionId, start: str, at: Timestamp | None, limit: int
    ) -> tuple[Timestamp, ScanReply]:
        """A page of ``partition`` as of ``at`` (None: the serving node's clock picks it),
        with the timestamp it was read at."""
        ...


class BackupSink(Protocol):
    """Where the items go (a :class:`~kvstore.backup.file.BackupWriter`)."""

    def add(self, partition: int, items: Iterable[ItemView]) -> object: ...


class BackupFailed(Exception):
    """A backup or restore could not be completed (a backup left no file); ``cause`` is the
    catalogue error behind it."""

    def __init__(self, message: str, cause: KvError) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


@dataclass(frozen=True, slots=True)
class BackupSummary:
    at: Timestamp
    items: int
    partitions: int
    deleted_version: int  # the largest deleted-key version seen (a restore keeps above it)
    seconds: float


async def create_backup(
    source: PageSource,
    open_sink: Callable[[Timestamp], BackupSink],
    partitions: int,
    *,
    at: Timestamp | None = None,
    progress: Callable[[int], None] | None = None,
    partition_done: Callable[[], None] | None = None,
    pages_in_flight: int = BACKUP_PAGES_IN_FLIGHT_MAX,
    page_items: int = BACKUP_PAGE_ITEMS,
) -> BackupSummary:
    """Read every partition as of ``at`` (default: now) into the sink ``open_sink(T)`` makes.
    Raises :class:`BackupFailed`; the caller deletes the partial file then."""
    started = time.monotonic()
    first_pid = PartitionId(0)
    at, first = await _page(source, first_pid, "", at, _OPENING_ITEMS)
    sink = open_sink(at)
    slots = asyncio.Semaphore(max(1, pages_in_flight))
    counted = 0
    deleted = 0

    def taken(pid: PartitionId, reply: ScanReply) -> None:
        nonlocal counted, deleted
        sink.add(pid, list(reply.items))
        counted += len(reply.items)
        deleted = max(deleted, reply.deleted_version)
        if progress is not None:
            progress(len(reply.items))

    async def one_partition(pid: PartitionId) -> None:
        assert at is not None
        if pid == first_pid:
            reply = first
        else:  # every partition's first page at once (floor and pin early), one item long
            _, reply = await _page(source, pid, "", at, _OPENING_ITEMS)
        taken(pid, reply)
        while reply.next_start is not None:
            async with slots:
                _, reply = await _page(source, pid, reply.next_start, at, page_items)
            taken(pid, reply)
        if partition_done is not None:
            partition_done()

    tasks = [asyncio.ensure_future(one_partition(PartitionId(p))) for p in range(partitions)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return BackupSummary(
        at=at,
        items=counted,
        partitions=partitions,
        deleted_version=deleted,
        seconds=time.monotonic() - started,
    )


async def _page(
    source: PageSource, pid: PartitionId, start: str, at: Timestamp | None, limit: int
) -> tuple[Timestamp, ScanReply]:
    """One page, asked again while its refusal is retryable (bounded; see the module)."""

    def failed(error: KvError) -> BackupFailed:
        if isinstance(error, SnapshotTooOld):
            return BackupFailed(
                f"partition {pid} no longer keeps its versions as of the backup's timestamp"
                " (a node restarted or a leader changed after writes above it, or the"
                " timestamp is older than the window): nothing was kept; run the backup again",
                error,
            )
        return BackupFailed(
            f"partition {pid}: {error.message} ({error.code.name}); nothing was kept", error
        )

    return await retried(lambda: source.page(pid, start, at, limit), failed)


async def retried(
    attempt: Callable[[], Awaitable[T]], failed: Callable[[KvError], BackupFailed]
) -> T:
    """``attempt()`` again after each retryable refusal (capped exponential backoff with full
    jitter, for at most ``BACKUP_PAGE_RETRY_MS``); other refusals raise ``failed(error)``."""
    deadline = time.monotonic() + BACKUP_PAGE_RETRY_MS / _MS_PER_S
    backoff_s = _BACKOFF_MIN_S
    while True:
        try:
            return await attempt()
        except KvError as error:
            final = isinstance(error, SnapshotTooOld) or not error.code.retryable
            if final or time.monotonic() >= deadline:
                raise failed(error) from None
        await asyncio.sleep(random.uniform(0, backoff_s))
        backoff_s = min(_BACKOFF_MAX_S, backoff_s * 2)
