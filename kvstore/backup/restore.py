"""Restores: a backup file's items written into a cluster, as they were.

Theory of operation
-------------------
:func:`restore_backup` reads the file in key order, in batches (memory holds batches, never the
file), places each item by the *target* cluster's partitioning (its partition count may differ
from the source's) and sends each partition its rows in ``restore`` messages of at most
``RESTORE_ROWS_MAX`` rows and about ``TXN_BYTES_MAX`` bytes, ``RESTORE_CALLS_IN_FLIGHT_MAX`` at
once. A row keeps its version and commit timestamp; each message also raises the partition's
read floor to the backup's timestamp ``T`` and its deleted-key version to the backup's, and
the node's clock past ``T``: a restored cluster never writes at or below ``T``, and keys keep
growing versions. Every partition gets one last message (rows or not), so every floor is set.

Each cluster process draws its timestamp origin and transaction ids at random when it starts
(DESIGN section 4): two clusters restored from one backup never issue the same timestamp or
transaction id. A message is idempotent (it sets rows), so a refused one is simply sent again
while its error is retryable (bounded, as a backup's pages are).

The target must be empty (no item in any partition), unless ``force``: then the backup's rows
replace the keys they name and other keys stay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import msgpack

from kvstore.backup.create import BackupFailed, retried
from kvstore.errors import KvError, ValidationError
from kvstore.limits import (
    RESTORE_CALLS_IN_FLIGHT_MAX,
    RESTORE_ROWS_MAX,
    TXN_BYTES_MAX,
)
from kvstore.messages import ItemView, RestoreRequest
from kvstore.types import PartitionId, Timestamp

__all__ = ["RestoreSink", "RestoreSummary", "restore_backup"]

_ROW_OVERHEAD_BYTES = 64  # a row's version, timestamp and framing, roughly


class RestoreSink(Protocol):
    """Where restore messages go (one attempt each; errors are the catalogue's)."""

    async def restore(self, request: RestoreRequest) -> int: ...
    async def is_empty(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class RestoreSummary:
    items: int
    partitions: int
    seconds: float


async def restore_backup(
    sink: RestoreSink,
    batches: Iterable[list[ItemView]],
    *,
    at: Timestamp,
    deleted_version: int,
    partition_of: Callable[[str], PartitionId],
    partitions: int,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RestoreSummary:
    """Write ``batches`` (the file's items) into the cluster behind ``sink``; see the module."""
    started = time.monotonic()
    if not force and not await sink.is_empty():
        message = (
            "the target cluster is not empty; restore into a fresh cluster, or pass --force "
            "to write the backup's items over the keys they name"
        )
        raise BackupFailed(message, ValidationError("target", message))
    sender = _Sender(sink, at, deleted_version, progress)
    buffers: dict[PartitionId, list[ItemView]] = {}
    sizes: dict[PartitionId, int] = {}
    try:
        for batch in batches:
            for item in batch:
                pid = partition_of(item.key)
                rows = buffers.setdefault(pid, [])
                rows.append(item)
                sizes[pid] = sizes.get(pid, 0) + _size(item)
                if len(rows) >= RESTORE_ROWS_MAX or sizes[pid] >= TXN_BYTES_MAX:
                    await sender.send(pid, buffers.pop(pid))
                    del sizes[pid]
            await asyncio.sleep(0)  # let sends progress between file batches
        for p in range(partitions):  # every partition's last message sets its floors
            await sender.send(PartitionId(p), buffers.pop(PartitionId(p), []))
        await sender.drain()
    finally:
        sender.cancel()
    return RestoreSummary(
        items=sender.restored, partitions=partitions, seconds=time.monotonic() - started
    )


class _Sender:
    """Restore messages in flight, at most ``RESTORE_CALLS_IN_FLIGHT_MAX``; the first failure
    stops the restore."""

    def __init__(
        self,
        sink: RestoreSink,
        at: Timestamp,
        deleted_version: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._sink = sink
        self._at = at
        self._deleted_version = deleted_version
        self._progress = progress
        self._slots = asyncio.Semaphore(RESTORE_CALLS_IN_FLIGHT_MAX)
        self._pending: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self.restored = 0

    async def send(self, pid: PartitionId, rows: list[ItemView]) -> None:
        await self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        request = RestoreRequest(
            partition=pid, items=tuple(rows), floor=self._at, deleted_version=self._deleted_version
        )
        task = asyncio.ensure_future(self._one(request))
        self._pending.add(task)
        task.add_done_callback(self._done)

    async def _one(self, request: RestoreRequest) -> None:
        try:
            await _sent(self._sink, request)
        finally:
            self._slots.release()
        self.restored += len(request.items)
        if self._progress is not None:
            self._progress(len(request.items))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and self._failure is None:
            self._failure = task.exception()

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    def cancel(self) -> None:
        for task in list(self._pending):
            task.cancel()


def _size(item: ItemView) -> int:
    packed: bytes = msgpack.packb(item.value, use_bin_type=True)
    return len(item.key.encode()) + len(packed) + _ROW_OVERHEAD_BYTES


async def _sent(sink: RestoreSink, request: RestoreRequest) -> int:
    """One message, sent again while its refusal is retryable (bounded)."""

    def failed(error: KvError) -> BackupFailed:
        return BackupFailed(
            f"partition {request.partition}: {error.message} ({error.code.name}); the restore"
            " stopped part way: restore again into a fresh cluster",
            error,
        )

    return await retried(lambda: sink.restore(request), failed)
