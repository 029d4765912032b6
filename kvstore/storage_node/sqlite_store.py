"""The durable partition store: one SQLite file per partition, written by group commit.

Theory of operation
-------------------
:class:`SqliteStore` implements :class:`~kvstore.storage_node.store.PartitionStore` with the
answers of :class:`~kvstore.storage_node.store.MemoryStore`, on a SQLite file in WAL mode (file
format: :mod:`kvstore.storage_node.sqlite_schema`). The partition core calls it synchronously on
the event loop thread, so no call may wait for the disk:

* **Writes** never touch SQLite on the caller's thread. They land in the *open batch*: one
  overlay dict per table (items, intents, ledger, tokens, meta), key -> row, with ``None``
  marking a deletion.
* **Reads** look in the open batch, then in the batch being flushed, then in SQLite through the
  *reader* connection, which belongs to the thread that opened the store (the event loop). WAL
  lets it read the last committed state while the writer writes; a point read is one cached
  ``SELECT ... WHERE key = ?``.
* **Listings** merge: they ask SQLite for ``limit + n`` rows, where ``n`` is the number of
  overlay entries of the table, drop the rows the overlay overrides or deletes, add the overlay
  rows that match, sort and cut to ``limit``. An entry of the overlay can push at most one row
  of the database out of the page, so ``limit + n`` rows always suffice. Orders are those of
  ``MemoryStore``, with the table's key breaking ties (``MemoryStore`` leaves ties of
  ``tombstones`` and ``tokens_created_before`` in arbitrary order).
* **Group commit** is split in three so that the fsync runs off the event loop:
  :meth:`SqliteStore.begin_flush` (loop thread) moves the open batch into a :class:`FlushJob`;
  :meth:`FlushJob.run` (the store's own single-thread :attr:`SqliteStore.executor`) writes every
  row of the job in one SQLite transaction on the *writer* connection and commits, which with
  ``synchronous=FULL`` is the fsync; :meth:`SqliteStore.end_flush` (loop thread) then drops the
  job's overlay. Writes made meanwhile gather in a new open batch. :meth:`SqliteStore.commit`
  does all three on the calling thread. One job at a time: ``begin_flush`` raises
  ``RuntimeError`` while a job is in flight, because ending jobs out of order would let an older
  overlay hide newer durable rows.

Durability: a job's rows are acknowledged only once ``run()`` returned, that is once SQLite's
COMMIT appended them, with a commit frame, to the WAL and fsynced it. After ``kill -9`` at any
instant, SQLite's WAL recovery replays exactly the frames of committed transactions, so a job is
either entirely present or entirely absent and every acknowledged write survives. If ``run()``
raises, its transaction is rolled back and the job stays in flight with its overlay, so nothing
is lost from view and nothing was acknowledged; the caller may ``run()`` it again or, as the
node's shell does, treat the store as failed. ``close()`` does not flush: writes not yet flushed
were never acknowledged and are dropped, as a crash would.

Hot path: point reads first try two in-memory structures, both kept exact by this store being the
file's only writer. A bounded cache of decoded durable item rows (``ITEM_CACHE_ROWS_MAX``, oldest
entry evicted first; absent keys are cached too) is filled by reads and by ``end_flush`` with the
rows just made durable. The durable intents themselves are mirrored in memory, with an index by
transaction (loaded at open, updated by ``end_flush``): ``get_intent``, ``intents_of`` (every
commit, cancel and decide) and ``intents_created_before`` (every maintenance tick) then never
query or decode a row (the SQL listings were 8% of a node's time under transfers, docs/bench.md).

Memory: apart from the open and in-flight batches, the item cache and the durable intents (bounded
by pending transactions: an intent lives one commit round, or until it is resolved as stale),
nothing per key stays in Python; SQLite's page cache is bounded by
``SQLITE_CACHE_KIB`` per connection (two connections per store).
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, Literal, TypeVar

from kvstore.limits import FLUSH_WRITES_MAX, ITEM_CACHE_ROWS_MAX
from kvstore.messages import LedgerRecord
from kvstore.storage_node import sqlite_schema as schema
from kvstore.storage_node.sqlite_schema import SCHEMA_VERSION, SchemaError, Sql
from kvstore.storage_node.store import Intent, ItemRow, PartitionMeta, TokenRow
from kvstore.types import Key, TxnId

__all__ = ["SqliteStore", "FlushJob", "SchemaError", "SCHEMA_VERSION"]

K = TypeVar("K")
V = TypeVar("V")


class _Missing(enum.Enum):
    MISSING = enum.auto()


_MISSING: Final = _Missing.MISSING
_META_KEY: Final = 0  # the meta table's single row


class _Overlay(Generic[K, V]):
    """One table's unflushed writes: the open batch and the batches being flushed (oldest
    first). A ``None`` value marks a deletion."""

    __slots__ = ("flushing", "open")

    def __init__(self) -> None:
        self.open: dict[K, V | None] = {}
        self.flushing: list[dict[K, V | None]] = []

    def get(self, key: K) -> V | Literal[_Missing.MISSING] | None:
        found = self.open.get(key, _MISSING)
        if found is _MISSING:
            for layer in reversed(self.flushing):
                found = layer.get(key, _MISSING)
                if found is not _MISSING:
                    break
        return found

    def merged(self) -> Mapping[K, V | None]:
        """Every unflushed entry, newest winning."""
        if not self.flushing:
            return self.open
        merged: dict[K, V | None] = {}
        for layer in self.flushing:
            merged.update(layer)
        merged.update(self.open)
        return merged

    def detach(self) -> dict[K, V | None]:
        """Start flushing the open batch; later writes go to a fresh one."""
        layer, self.open = self.open, {}
        self.flushing.append(layer)
        return layer

    def drop(self, layer: dict[K, V | None]) -> None:
        self.flushing = [kept for kept in self.flushing if kept is not layer]


class FlushJob:
    """One batch of writes on its way to disk. Call :meth:`run` once it is begun (on the store's
    executor), then :meth:`SqliteStore.end_flush`. ``rows`` is its number of row writes."""

    __slots__ = (
        "_writer",
        "commit_s",
        "durable",
        "intents",
        "items",
        "ledger",
        "meta",
        "rows",
        "staged",
        "tokens",
    )

    def __init__(
        self,
        writer: sqlite3.Connection,
        *,
        items: dict[Key, ItemRow | None],
        intents: dict[Key, Intent | None],
        ledger: dict[TxnId, LedgerRecord | None],
        tokens: dict[str, TokenRow | None],
        meta: dict[int, PartitionMeta | None],
    ) -> None:
        self._writer = writer
        self.items = items
        self.intents = intents
        self.ledger = ledger
        self.tokens = tokens
        self.meta = meta
        self.rows = len(items) + len(intents) + len(ledger) + len(tokens) + len(meta)
        self.staged = False  # stage() wrote the rows into an open transaction
        self.durable = False  # run() committed it
        self.commit_s = 0.0  # how long run()'s COMMIT took, its fsync included

    def stage(self) -> None:
        """Write the rows into an open SQLite transaction without committing. Meant for the
        loop thread: it needs the GIL throughout (binding parameters) but never waits for the
        disk, while :meth:`run` then holds the GIL only around one COMMIT. Doing both in the
        flush thread made it fight the event loop for the GIL on every row (about 12 ms per
        flush under load). Raises after rolling back on failure."""
        if not self.staged:
            schema.stage_rows(
                self._writer,
                items=self.items,
                intents=self.intents,
                ledger=self.ledger,
                tokens=self.tokens,
                meta=self.meta.get(_META_KEY),
            )
            self.staged = True

    def run(self) -> None:
        """Commit the job (staging it first if needed): one SQLite transaction, one fsync.
        Thread: the store's executor (or any single thread while no other uses the writer).
        Raises on failure, after rolling back; the job then stays in flight and may be run
        again."""
        self.stage()
        started = time.perf_counter()
        try:
            schema.commit_rows(self._writer)
        except BaseException:
            self.staged = False
            raise
        self.commit_s = time.perf_counter() - started
        self.durable = True


def _tombstone_order(row: ItemRow) -> tuple[object, ...]:
    return (max(row.write_ts, row.read_ts), row.key)


def _by_key(row: ItemRow | Intent) -> Key:
    return row.key


class SqliteStore:
    """A ``PartitionStore`` on one SQLite file (see the module docstring). Use :meth:`open`;
    call every method but :meth:`FlushJob.run` from the thread that opened it."""

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        # Point reads share one cursor (no cursor allocation per call). A single-row lookup is
        # stepped to its end by ``fetchone``, and listings read every row, so no statement stays
        # active between calls: an active one would pin the reader to an old WAL snapshot.
        self._point = reader.cursor()
        self._items: _Overlay[Key, ItemRow] = _Overlay()
        self._intents: _Overlay[Key, Intent] = _Overlay()
        self._ledger: _Overlay[TxnId, LedgerRecord] = _Overlay()
        self._tokens: _Overlay[str, TokenRow] = _Overlay()
        self._meta: _Overlay[int, PartitionMeta] = _Overlay()
        self._meta_durable = schema.load_meta(reader)  # only this store writes the file
        self._item_cache: dict[Key, ItemRow | None] = {}  # durable rows; None: no row
        self._durable_intents: dict[Key, Intent] = {}  # mirror of the intents table
        self._txn_intent_keys: dict[TxnId, set[Key]] = {}  # its index by transaction
        for row in reader.execute(Sql.ALL_INTENTS):
            self._mirror_intent(row[0], schema.decode_intent(*row))
        self._job: FlushJob | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.flushes = 0  # jobs ended

    @classmethod
    def open(cls, path: Path, *, synchronous_full: bool = True) -> SqliteStore:
        """Open (creating if absent) a partition file. ``synchronous_full=False`` uses
        ``synchronous=NORMAL``: still safe against process crashes, not against power loss.
        Raises :class:`SchemaError` for a file of another schema version or program."""
        writer = schema.connect(path, writer=True, synchronous_full=synchronous_full)
        try:
            schema.ensure_schema(writer, path)
            reader = schema.connect(path, writer=False)
            try:
                return cls(path, writer, reader)
            except BaseException:
                reader.close()
                raise
        except BaseException:
            writer.close()
            raise

    # --- group commit ---------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """The open batch holds writes."""
        return bool(
            self._items.open
            or self._intents.open
            or self._ledger.open
            or self._tokens.open
            or self._meta.open
        )

    @property
    def pending_writes(self) -> int:
        """Row writes in the open batch (a row written twice counts once)."""
        return sum(len(overlay.open) for overlay in self._overlays())

    @property
    def flush_due(self) -> bool:
        """The open batch is large enough to flush without waiting for more writes."""
        return self.pending_writes >= FLUSH_WRITES_MAX

    @property
    def in_flight(self) -> FlushJob | None:
        """The job begun and not yet ended, if any."""
        return self._job

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The store's single flush thread, for :meth:`FlushJob.run` (created on first use)."""
        if self._closed:
            raise RuntimeError(f"{self.path}: the store is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"flush-{self.path.name}"
            )
        return self._executor

    def begin_flush(self) -> FlushJob | None:
        """Move the open batch into a new flush job; None when there is nothing to write.
        Raises ``RuntimeError`` while another job is in flight (end it first)."""
        if self._closed:
            raise RuntimeError(f"{self.path}: the store is closed")
        if self._job is not None:
            raise RuntimeError(f"{self.path}: a flush job is in flight; end_flush it first")
        if not self.dirty:
            return None
        job = FlushJob(
            self._writer,
            items=self._items.detach(),
            intents=self._intents.detach(),
            ledger=self._ledger.detach(),
            tokens=self._tokens.detach(),
            meta=self._meta.detach(),
        )
        self._job = job
        return job

    def end_flush(self, job: FlushJob) -> None:
        """Forget a job's overlay once :meth:`FlushJob.run` has made it durable."""
        if job is not self._job:
            raise RuntimeError(f"{self.path}: end_flush of a job that is not in flight")
        if not job.durable:
            raise RuntimeError(f"{self.path}: end_flush before the job ran successfully")
        self._items.drop(job.items)
        self._intents.drop(job.intents)
        for key, row in job.items.items():
            self._cache_item(key, row)
        for key, intent in job.intents.items():
            self._mirror_intent(key, intent)
        self._ledger.drop(job.ledger)
        self._tokens.drop(job.tokens)
        self._meta.drop(job.meta)
        meta = job.meta.get(_META_KEY)
        if meta is not None:
            self._meta_durable = meta
        self._job = None
        self.flushes += 1

    def commit(self) -> None:
        """Flush the open batch on this thread: begin, run (fsync) and end."""
        job = self.begin_flush()
        if job is not None:
            job.run()
            self.end_flush(job)

    def close(self) -> None:
        """Wait for a job running on the executor, then close the executor and connections.
        Unflushed writes are dropped (they were never acknowledged). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
        finally:
            try:
                self._writer.close()
            finally:
                self._reader.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _overlays(self) -> tuple[_Overlay[Any, Any], ...]:
        return (self._items, self._intents, self._ledger, self._tokens, self._meta)

    def _listing(
        self,
        overlay: _Overlay[Any, V],
        sql: str,
        params: tuple[object, ...],
        *,
        limit: int | None,
        decode: Callable[..., V],
        wanted: Callable[[V], bool],
        order: Callable[[V], Any],
    ) -> list[V]:
        """SQLite's answer with the overlay applied (see "Listings" in the module docstring).
        ``limit=None``: the statement has no LIMIT."""
        merged = overlay.merged()
        if limit is not None:
            params = (*params, limit + len(merged) if limit >= 0 else -1)
        cursor = self._reader.execute(sql, params)
        if merged:
            found = [decode(*row) for row in cursor if row[0] not in merged]
            found.extend(row for row in merged.values() if row is not None and wanted(row))
            found.sort(key=order)
        else:
            found = [decode(*row) for row in cursor]
        return found if limit is None else found[:limit]

    # --- items ----------------------------------------------------------------------------

    def get_item(self, key: Key) -> ItemRow | None:
        found = self._items.get(key)
        if found is not _MISSING:
            return found
        cached = self._item_cache.get(key, _MISSING)
        if cached is not _MISSING:
            return cached
        row = self._point.execute(Sql.GET_ITEM, (key,)).fetchone()
        item = None if row is None else schema.decode_item(key, *row)
        self._cache_item(key, item)
        return item

    def _cache_item(self, key: Key, row: ItemRow | None) -> None:
        cache = self._item_cache
        if key not in cache and len(cache) >= ITEM_CACHE_ROWS_MAX:
            del cache[next(iter(cache))]  # the oldest entry: insertion order
        cache[key] = row

    def put_item(self, row: ItemRow) -> None:
        self._items.open[row.key] = row

    def delete_item(self, key: Key) -> None:
        self._items.open[key] = None

    def tombstones(self, limit: int) -> list[ItemRow]:
        return self._listing(
            self._items,
            Sql.TOMBSTONES,
            (),
            limit=limit,
            decode=schema.decode_item,
            wanted=lambda row: not row.exists,
            order=_tombstone_order,
        )

    def scan_items(self, start: Key, end: Key | None, limit: int) -> list[ItemRow]:
        params: tuple[str, ...] = (start,) if end is None else (start, end)
        sql = Sql.SCAN_FROM if end is None else Sql.SCAN_RANGE
        return self._listing(
            self._items,
            sql,
            params,
            limit=limit,
            decode=schema.decode_item,
            wanted=lambda row: row.exists and row.key >= start and (end is None or row.key < end),
            order=_by_key,
        )

    # --- intents --------------------------------------------------------------------------

    def _mirror_intent(self, key: Key, intent: Intent | None) -> None:
        """Make the in-memory mirror say what the intents table now says for ``key``."""
        old = self._durable_intents.pop(key, None)
        if old is not None:
            keys = self._txn_intent_keys.get(old.txn_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._txn_intent_keys[old.txn_id]
        if intent is not None:
            self._durable_intents[key] = intent
            self._txn_intent_keys.setdefault(intent.txn_id, set()).add(key)

    def get_intent(self, key: Key) -> Intent | None:
        found = self._intents.get(key)
        if found is not _MISSING:
            return found
        return self._durable_intents.get(key)

    def put_intent(self, intent: Intent) -> None:
        self._intents.open[intent.key] = intent

    def delete_intent(self, key: Key) -> None:
        self._intents.open[key] = None

    def _current_intents(self, durable: Iterable[Intent]) -> list[Intent]:
        """``durable`` mirror entries and every unflushed intent, the overlay winning."""
        merged = self._intents.merged()
        found = [intent for intent in durable if intent.key not in merged]
        found.extend(intent for intent in merged.values() if intent is not None)
        return found

    def intents_of(self, txn_id: TxnId) -> list[Intent]:
        keys = self._txn_intent_keys.get(txn_id, ())
        found = self._current_intents(self._durable_intents[key] for key in keys)
        return sorted((i for i in found if i.txn_id == txn_id), key=_by_key)

    def intents_created_before(self, created_us: int, limit: int) -> list[Intent]:
        found = self._current_intents(self._durable_intents.values())
        old = [intent for intent in found if intent.created_us < created_us]
        old.sort(key=lambda intent: (intent.created_us, intent.key))
        return old[:limit]

    def item_count(self) -> int:
        """Items that exist (tombstones excluded), unflushed writes included. A full count of
        the table: for status pages, not for the request path."""
        merged = self._items.merged()
        conn = self._reader
        conn.execute("BEGIN")  # one snapshot: a flush may commit between the statements
        try:
            count: int = conn.execute(Sql.COUNT_LIVE_ITEMS).fetchone()[0]
            for key, row in merged.items():
                stored = conn.execute(Sql.ITEM_LIVE, (key,)).fetchone()
                count += (row is not None and row.exists) - (stored is not None and stored[0] == 1)
        finally:
            conn.execute("COMMIT")
        return count

    def intent_count(self) -> int:
        """Intents now, unflushed ones included (from the in-memory mirror: no query)."""
        return len(self._current_intents(self._durable_intents.values()))

    # --- meta -----------------------------------------------------------------------------

    def get_meta(self) -> PartitionMeta:
        found = self._meta.get(_META_KEY)
        if found is _MISSING or found is None:
            return self._meta_durable
        return found

    def put_meta(self, meta: PartitionMeta) -> None:
        self._meta.open[_META_KEY] = meta

    # --- ledger ---------------------------------------------------------------------------

    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None:
        found = self._ledger.get(txn_id)
        if found is not _MISSING:
            return found
        row = self._point.execute(Sql.GET_LEDGER, (txn_id,)).fetchone()
        return None if row is None else schema.decode_ledger(*row)

    def put_ledger(self, record: LedgerRecord) -> None:
        self._ledger.open[record.txn_id] = record

    def delete_ledger(self, txn_id: TxnId) -> None:
        self._ledger.open[txn_id] = None

    def open_ledger_records(self, limit: int) -> list[LedgerRecord]:
        return self._listing(
            self._ledger,
            Sql.LEDGER_OPEN,
            (),
            limit=limit,
            decode=schema.decode_ledger,
            wanted=lambda record: record.completed_us is None,
            order=lambda record: (record.created_us, record.txn_id),
        )

    def ledger_completed_before(self, completed_us: int, limit: int) -> list[LedgerRecord]:
        return self._listing(
            self._ledger,
            Sql.LEDGER_COMPLETED_BEFORE,
            (completed_us,),
            limit=limit,
            decode=schema.decode_ledger,
            wanted=lambda r: r.completed_us is not None and r.completed_us < completed_us,
            order=lambda r: (r.completed_us or 0, r.txn_id),
        )

    # --- tokens ---------------------------------------------------------------------------

    def get_token(self, token: str) -> TokenRow | None:
        found = self._tokens.get(token)
        if found is not _MISSING:
            return found
        row = self._point.execute(Sql.GET_TOKEN, (token,)).fetchone()
        return None if row is None else schema.decode_token(*row)

    def put_token(self, row: TokenRow) -> None:
        self._tokens.open[row.token] = row

    def delete_token(self, token: str) -> None:
        self._tokens.open[token] = None

    def tokens_created_before(self, created_us: int, limit: int) -> list[TokenRow]:
        return self._listing(
            self._tokens,
            Sql.TOKENS_BEFORE,
            (created_us,),
            limit=limit,
            decode=schema.decode_token,
            wanted=lambda row: row.created_us < created_us,
            order=lambda row: (row.created_us, row.token),
        )
