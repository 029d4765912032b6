"""The durable node store: one SQLite database per node, written by one group commit per node.

Theory of operation
-------------------
:class:`SqliteNodeStore` implements :class:`~kvstore.storage_node.store.NodeStore` on
``node.db`` in the node's data directory, a SQLite file in WAL mode holding every partition of the
node (file format, and the import of older releases' per-partition files:
:mod:`kvstore.storage_node.sqlite_schema`). The open batch, the flushing layer, listing merges,
the item cache and the intent mirror are the overlay every node store shares
(:mod:`kvstore.storage_node.overlay`); this module adds what is SQLite's:

* **Reads** that the overlay does not answer go to the *reader* connection, which belongs to the
  thread that opened the store (the event loop) and serves every partition's view
  (:class:`_SqliteRows`). WAL lets it read the last committed state while the writer writes; a
  point read is one cached ``SELECT ... WHERE partition = ? AND key = ?``, and every statement
  runs to its end, so none pins the reader to an old snapshot.
* **Group commit**: ``begin_flush`` (loop thread) moves the node's open batch, every partition's
  writes, into one :class:`SqliteFlushJob`. Its :meth:`~SqliteFlushJob.stage` writes the batch
  into one ``BEGIN IMMEDIATE`` transaction on the *writer* connection (``executemany`` per
  table, over all partitions), without waiting for the disk; :meth:`~SqliteFlushJob.run` stages
  if needed and commits, which with ``synchronous=FULL`` is the one fsync of the cycle. ``run``
  may run on another thread (the node runtime's disk driver owns that thread; the store owns
  none); a lock keeps the writer to one thread at a time, so :meth:`SqliteNodeStore.close` waits
  for a ``run`` in progress. ``end_flush`` (loop thread) then drops the job's overlay.

Durability: a job's rows are acknowledged only once ``run()`` returned, that is once SQLite's
COMMIT appended them, with a commit frame, to the WAL and fsynced it. After ``kill -9`` at any
instant, SQLite's WAL recovery replays exactly the frames of committed transactions, so a job is
either entirely present or entirely absent, for every partition at once, and every acknowledged
write survives. If ``run()`` raises, its transaction is rolled back and the job stays in flight
with its overlay, so nothing is lost from view and nothing was acknowledged; the caller may
``run()`` it again or treat the store as failed (the node runtime runs it again while the disk
is full, and fails the node for any other error). ``close()`` does not flush: writes not yet
flushed were never acknowledged and are dropped, as a crash would.

Opening creates ``node.db`` (mode 0600; SQLite gives its ``-wal`` and ``-shm`` the same mode),
checks its schema, and imports and deletes the per-partition files of older releases
(:attr:`SqliteNodeStore.migrated_files`, :attr:`SqliteNodeStore.deleted_files`; the caller logs
them). Memory: apart from the open and in-flight batches, the item caches and the durable intents
(bounded by pending transactions), nothing per key stays in Python; SQLite's page cache is bounded
by ``SQLITE_CACHE_KIB`` per connection (two connections per node).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Container, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from kvstore.messages import LedgerRecord
from kvstore.storage_node import sqlite_schema as schema
from kvstore.storage_node.overlay import FlushJobBase, NodeBatch, OverlayNode
from kvstore.storage_node.sqlite_schema import NODE_DB, SCHEMA_VERSION, SchemaError, Sql
from kvstore.storage_node.store import Intent, ItemRow, PartitionMeta, TokenRow
from kvstore.types import Key, PartitionId, TxnId

__all__ = ["SqliteNodeStore", "SqliteFlushJob", "SchemaError", "SCHEMA_VERSION", "NODE_DB"]

V = TypeVar("V")
_FILE_MODE = 0o600


class _SqliteRows:
    """One partition's durable rows, read through the node's reader connection."""

    __slots__ = ("_conn", "_pid", "_point")

    def __init__(self, conn: sqlite3.Connection, pid: PartitionId) -> None:
        self._conn = conn
        self._pid = pid
        # Point reads share one cursor (no cursor allocation per call). A single-row lookup is
        # stepped to its end by ``fetchone``, and listings read every row, so no statement stays
        # active between calls: an active one would pin the reader to an old WAL snapshot.
        self._point = conn.cursor()

    def _listing(
        self,
        sql: str,
        params: tuple[object, ...],
        limit: int,
        skip: Container[Any],
        decode: Callable[..., V],
    ) -> list[V]:
        cursor = self._conn.execute(sql, (self._pid, *params, limit))
        return [decode(*row) for row in cursor if row[0] not in skip]

    def get_item(self, key: Key) -> ItemRow | None:
        row = self._point.execute(Sql.GET_ITEM, (self._pid, key)).fetchone()
        return None if row is None else schema.decode_item(key, *row)

    def tombstones(self, limit: int, skip: Container[Key]) -> list[ItemRow]:
        return self._listing(Sql.TOMBSTONES, (), limit, skip, schema.decode_item)

    def scan_items(
        self, start: Key, end: Key | None, limit: int, skip: Container[Key], reverse: bool = False
    ) -> list[ItemRow]:
        if end is None:
            sql = Sql.SCAN_FROM_DESC if reverse else Sql.SCAN_FROM
            return self._listing(sql, (start,), limit, skip, schema.decode_item)
        sql = Sql.SCAN_RANGE_DESC if reverse else Sql.SCAN_RANGE
        return self._listing(sql, (start, end), limit, skip, schema.decode_item)

    def live_item_count(self, among: Collection[Key]) -> tuple[int, int]:
        conn, pid = self._conn, self._pid
        conn.execute("BEGIN")  # one snapshot: a flush may commit between the statements
        try:
            total: int = conn.execute(Sql.COUNT_LIVE_ITEMS, (pid,)).fetchone()[0]
            live_among = 0
            for key in among:
                stored = conn.execute(Sql.ITEM_LIVE, (pid, key)).fetchone()
                live_among += stored is not None and stored[0] == 1
        finally:
            conn.execute("COMMIT")
        return total, live_among

    def intents(self) -> Iterable[Intent]:
        return [
            schema.decode_intent(*row) for row in self._conn.execute(Sql.ALL_INTENTS, (self._pid,))
        ]

    def get_meta(self) -> PartitionMeta:
        return schema.decode_meta(self._point.execute(Sql.GET_META, (self._pid,)).fetchone())

    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None:
        row = self._point.execute(Sql.GET_LEDGER, (self._pid, txn_id)).fetchone()
        return None if row is None else schema.decode_ledger(*row)

    def open_ledger_records(self, limit: int, skip: Container[TxnId]) -> list[LedgerRecord]:
        return self._listing(Sql.LEDGER_OPEN, (), limit, skip, schema.decode_ledger)

    def ledger_completed_before(
        self, completed_us: int, limit: int, skip: Container[TxnId]
    ) -> list[LedgerRecord]:
        return self._listing(
            Sql.LEDGER_COMPLETED_BEFORE, (completed_us,), limit, skip, schema.decode_ledger
        )

    def get_token(self, token: str) -> TokenRow | None:
        row = self._point.execute(Sql.GET_TOKEN, (self._pid, token)).fetchone()
        return None if row is None else schema.decode_token(*row)

    def tokens_created_before(
        self, created_us: int, limit: int, skip: Container[str]
    ) -> list[TokenRow]:
        return self._listing(Sql.TOKENS_BEFORE, (created_us,), limit, skip, schema.decode_token)


class SqliteFlushJob(FlushJobBase):
    """One batch of the whole node on its way to ``node.db``: :attr:`batch` (per partition, per
    table, key -> row or ``None``), ``rows`` its row writes. Call :meth:`run` once it is begun
    (on any one thread), then :meth:`SqliteNodeStore.end_flush`."""

    __slots__ = ("_store",)

    def __init__(self, store: SqliteNodeStore, batch: NodeBatch) -> None:
        super().__init__(batch)
        self._store = store

    def stage(self) -> None:
        """Write the rows into an open SQLite transaction without committing. Meant for the
        loop thread: it needs the GIL throughout (binding parameters) but never waits for the
        disk, while :meth:`run` then holds the GIL only around one COMMIT. Raises after rolling
        back on failure."""
        with self._store._writer_lock:
            self._stage_locked()

    def _stage_locked(self) -> None:
        if not self.staged:
            self._store._check_open()
            schema.stage_batch(self._store._writer, self.batch)
            self.staged = True

    def run(self) -> None:
        """Commit the job (staging it first if needed): one SQLite transaction, one fsync, for
        every partition. Any one thread. Raises on failure, after rolling back; the job then
        stays in flight and may be run again."""
        with self._store._writer_lock:
            if self.durable:
                return
            self._stage_locked()
            started = time.perf_counter()
            try:
                schema.commit_rows(self._store._writer)
            except BaseException:
                self.staged = False
                raise
            self.commit_s = time.perf_counter() - started
            self.durable = True


class SqliteNodeStore(OverlayNode[SqliteFlushJob]):
    """A ``NodeStore`` on ``node.db`` (see the module docstring). Use :meth:`open`; call every
    method but :meth:`SqliteFlushJob.run` from the thread that opened it."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        partitions: Iterable[PartitionId],
        migration: schema.Migration,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._writer_lock = threading.Lock()  # the writer is used by one thread at a time
        self.migrated_files = migration.imported  # older releases' files imported by this open
        self.deleted_files = migration.deleted  # and those deleted (imported now or before)
        super().__init__({pid: _SqliteRows(reader, pid) for pid in partitions}, str(path))

    @classmethod
    def open(
        cls,
        data_dir: Path,
        partitions: Iterable[PartitionId],
        *,
        synchronous_full: bool = True,
    ) -> SqliteNodeStore:
        """Open (creating if absent) ``data_dir / "node.db"`` with views of ``partitions``,
        after importing older releases' per-partition files found in ``data_dir``.
        ``synchronous_full=False`` uses ``synchronous=NORMAL`` for flushes: still safe against
        process crashes, not against power loss (the import always commits with ``FULL``).
        Raises :class:`SchemaError` for a file of another schema version or program."""
        path = data_dir / NODE_DB
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
        writer = schema.connect(path, writer=True, synchronous_full=True)
        try:
            schema.ensure_schema(writer, path)
            migration = schema.import_partition_files(writer, data_dir)
            if not synchronous_full:
                schema.set_synchronous(writer, full=False)
            reader = schema.connect(path, writer=False)
            try:
                return cls(path, writer, reader, partitions, migration)
            except BaseException:
                reader.close()
                raise
        except BaseException:
            writer.close()
            raise

    def _new_job(self, batch: NodeBatch) -> SqliteFlushJob:
        return SqliteFlushJob(self, batch)

    def close(self) -> None:
        """Wait for a ``run`` in progress on another thread, then close the connections.
        Unflushed writes are dropped (they were never acknowledged). Idempotent."""
        with self._writer_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._writer.close()  # rolls back a job staged and not run
            finally:
                self._reader.close()

    def __enter__(self) -> SqliteNodeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
