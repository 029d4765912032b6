"""Unflushed writes over a node's durable rows: the one overlay every node store runs.

Theory of operation
-------------------
A node store keeps every partition of the node in one durable store (the SQLite file of
:mod:`~kvstore.storage_node.sqlite_store`, or the dicts of
:class:`~kvstore.storage_node.store.MemoryNodeStore`). What lies between the partition cores and
that store is the same for both and lives here, so the simulator runs the code production runs:

* :class:`OverlayNode` is the node: one :class:`PartitionView` per partition, the job in flight,
  and group commit. ``begin_flush`` detaches the *open batch* (every view's unflushed writes) into
  a flush job whose :attr:`FlushJobBase.batch` is a plain value, :data:`NodeBatch`: per partition
  a :class:`PartitionBatch`, per table key -> new row, ``None`` marking a deletion. A subclass
  makes the job (``_new_job``) and says how ``run`` makes the batch durable. ``end_flush`` (once
  ``run`` succeeded) drops the batch from the views. One job at a time: ending jobs out of order
  would let an older overlay hide newer durable rows.
* :class:`PartitionView` is one partition's :class:`~kvstore.storage_node.store.PartitionStore`.
  Writes land in its tables' open layer (:class:`TableOverlay`) at once. Reads look in the open
  layer, then in the flushing layer (the job in flight), then in the durable rows
  (:class:`DurableRows`, the backend's per-partition reader).
* **Listings** merge: they ask the durable rows for ``limit + n`` rows, where ``n`` is the number
  of overlay entries of the table, leaving out the keys the overlay overrides or deletes; add the
  overlay rows that match; sort and cut to ``limit``. An overlay entry can push at most one
  durable row out of the page, so ``limit + n`` rows always suffice. Every order breaks ties on
  the table's key (the ``*_order`` functions; the SQLite statements sort alike).
* **Hot path**: point reads of items first try a bounded cache of durable rows
  (``ITEM_CACHE_ROWS_MAX`` per partition, oldest evicted first; absent keys cached too), filled by
  reads and by ``end_flush``. The durable intents are mirrored in memory with an index by
  transaction (loaded from the durable rows, updated by ``end_flush``), so ``get_intent``,
  ``intents_of`` and ``intents_created_before`` never reach the backend. Both stay exact because
  the node store is the only writer of its durable rows.
* **Unflushed reads**: every read that an unflushed entry answered or shaped (an overlay hit, a
  listing merged with a non-empty overlay, an unflushed watermark) adds one to
  :attr:`PartitionView.unflushed_reads`. The node runtime compares it around a read's step
  while its disk is full: a read that saw only durable rows is answered at once, one that saw
  unflushed rows waits for them to become durable.

Threads: everything here runs on the thread that opened the store; only the job's ``run`` may run
elsewhere (the backend's business). This module is pure (no I/O), like the cores.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, TypeVar

from kvstore.limits import FLUSH_WRITES_MAX, ITEM_CACHE_ROWS_MAX
from kvstore.messages import LedgerRecord
from kvstore.types import Key, PartitionId, Timestamp, TxnId

if TYPE_CHECKING:  # store.py imports this module
    from kvstore.storage_node.store import FlushJob, Intent, ItemRow, PartitionMeta, TokenRow

__all__ = [
    "MISSING",
    "TableOverlay",
    "PartitionBatch",
    "NodeBatch",
    "DurableRows",
    "FlushJobBase",
    "OverlayNode",
    "PartitionView",
    "tombstone_order",
    "item_key",
    "intent_order",
    "open_ledger_order",
    "completed_order",
    "token_order",
]

K = TypeVar("K")
V = TypeVar("V")


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING: Final = _Missing.MISSING  # "the overlay says nothing about this key"


class TableOverlay(Generic[K, V]):
    """One table's unflushed writes of one partition: the open layer and the layer of the job in
    flight (at most one). A ``None`` value marks a deletion."""

    __slots__ = ("flushing", "open")

    def __init__(self) -> None:
        self.open: dict[K, V | None] = {}
        self.flushing: dict[K, V | None] | None = None

    def get(self, key: K) -> V | Literal[_Missing.MISSING] | None:
        found = self.open.get(key, MISSING)
        if found is MISSING and self.flushing is not None:
            return self.flushing.get(key, MISSING)
        return found

    def merged(self) -> Mapping[K, V | None]:
        """Every unflushed entry, the open layer winning."""
        if not self.flushing:
            return self.open
        if not self.open:
            return self.flushing
        return {**self.flushing, **self.open}

    def detach(self) -> dict[K, V | None]:
        """Start flushing the open layer; later writes go to a fresh one."""
        layer, self.open = self.open, {}
        self.flushing = layer
        return layer


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionBatch:
    """One partition's writes in a flush: per table, key -> the new row, or ``None`` for a
    deletion; ``meta`` is the new watermark row, ``None`` when unchanged."""

    items: dict[Key, ItemRow | None]
    intents: dict[Key, Intent | None]
    ledger: dict[TxnId, LedgerRecord | None]
    tokens: dict[str, TokenRow | None]
    meta: PartitionMeta | None

    @property
    def rows(self) -> int:
        """Row writes (a row written twice counts once)."""
        tables = len(self.items) + len(self.intents) + len(self.ledger) + len(self.tokens)
        return tables + (self.meta is not None)


NodeBatch = Mapping[PartitionId, PartitionBatch]  # one flush of a node: its dirty partitions


class DurableRows(Protocol):
    """One partition's durable rows as a backend stores them: what a :class:`PartitionView`
    reads below its overlay. Listings are in the order of the ``*_order`` function of their
    table and return the first ``limit`` rows less those whose key is in ``skip`` (they may
    return more rows of that order, never a row of ``skip``)."""

    def get_item(self, key: Key) -> ItemRow | None: ...
    def tombstones(self, limit: int, skip: Container[Key]) -> list[ItemRow]: ...
    def scan_items(
        self, start: Key, end: Key | None, limit: int, skip: Container[Key], reverse: bool = False
    ) -> list[ItemRow]: ...
    def live_item_count(self, among: Collection[Key]) -> tuple[int, int]:
        """Live rows in all, and live rows whose key is in ``among``: from one snapshot."""
        ...

    def intents(self) -> Iterable[Intent]: ...
    def get_meta(self) -> PartitionMeta: ...
    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None: ...
    def open_ledger_records(self, limit: int, skip: Container[TxnId]) -> list[LedgerRecord]: ...
    def ledger_completed_before(
        self, completed_us: int, limit: int, skip: Container[TxnId]
    ) -> list[LedgerRecord]: ...
    def get_token(self, token: str) -> TokenRow | None: ...
    def tokens_created_before(
        self, created_us: int, limit: int, skip: Container[str]
    ) -> list[TokenRow]: ...


# --- orders (ties broken by the table's key; the SQLite statements sort alike) ---------------


def tombstone_order(row: ItemRow) -> tuple[Timestamp, Key]:
    return (max(row.write_ts, row.read_ts), row.key)


def item_key(row: ItemRow) -> Key:
    return row.key


def intent_order(intent: Intent) -> tuple[int, Key]:
    return (intent.created_us, intent.key)


def open_ledger_order(record: LedgerRecord) -> tuple[int, str]:
    return (record.created_us, record.txn_id)


def completed_order(record: LedgerRecord) -> tuple[int, str]:
    return (record.completed_us or 0, record.txn_id)


def token_order(row: TokenRow) -> tuple[int, str]:
    return (row.created_us, row.token)


# --- the node ---------------------------------------------------------------------------------


class FlushJobBase:
    """A node's batch on its way to disk (see :class:`~kvstore.storage_node.store.FlushJob`).
    ``durable`` turns true once ``run`` succeeded; ``rows`` counts its row writes."""

    __slots__ = ("batch", "commit_s", "durable", "rows", "staged")

    def __init__(self, batch: NodeBatch) -> None:
        self.batch = batch
        self.rows = sum(part.rows for part in batch.values())
        self.staged = False  # stage() has written the batch into an open transaction
        self.durable = False  # run() has made it durable
        self.commit_s = 0.0  # how long run()'s commit took, its fsync included

    def stage(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError


J = TypeVar("J", bound=FlushJobBase)


class OverlayNode(Generic[J]):
    """The node part of a node store: views, open batch, job in flight (module docstring)."""

    def __init__(self, durable: Mapping[PartitionId, DurableRows], name: str) -> None:
        self.name = name  # for error messages
        self._views = {pid: PartitionView(self, pid, rows) for pid, rows in durable.items()}
        self._dirty_views: list[PartitionView] = []  # views with writes in the open batch
        self._job: J | None = None
        self._closed = False
        self.flushes = 0  # jobs ended

    def _new_job(self, batch: NodeBatch) -> J:
        raise NotImplementedError

    @property
    def partitions(self) -> tuple[PartitionId, ...]:
        return tuple(self._views)

    def partition(self, pid: PartitionId) -> PartitionView:
        """The view partition ``pid``'s core reads and writes through."""
        try:
            return self._views[pid]
        except KeyError:
            raise KeyError(f"{self.name}: partition {pid} is not in this store") from None

    def unflushed_reads(self, pid: PartitionId) -> int:
        """Reads of partition ``pid`` an unflushed write answered or shaped (module doc)."""
        return self._views[pid].unflushed_reads

    def open_writes_of(self, pid: PartitionId) -> int:
        """Row writes of partition ``pid`` in the open batch."""
        return self._views[pid].pending_writes

    def discard_open_writes(self, pid: PartitionId) -> None:
        """Drop partition ``pid``'s writes from the open batch (a replicated node that stopped
        leading it: they belong to no replica's history). Its answers must fail; the caller's
        business."""
        view = self._views[pid]
        view.discard_open()
        if view in self._dirty_views and not view.pending_writes:
            self._dirty_views.remove(view)
            view._dirty = False

    @property
    def dirty(self) -> bool:
        """The open batch holds writes."""
        return bool(self._dirty_views)

    @property
    def pending_writes(self) -> int:
        """Row writes in the open batch (a row written twice counts once)."""
        return sum(view.pending_writes for view in self._dirty_views)

    @property
    def flush_due(self) -> bool:
        """The open batch is large enough to flush without waiting for more writes."""
        return self.pending_writes >= FLUSH_WRITES_MAX

    @property
    def in_flight(self) -> J | None:
        """The job begun and not yet ended, if any."""
        return self._job

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name}: the store is closed")

    def begin_flush(self) -> J | None:
        """Move the open batch (every partition's writes) into a new flush job; ``None`` when
        there is nothing to write. Raises ``RuntimeError`` while another job is in flight."""
        self._check_open()
        if self._job is not None:
            raise RuntimeError(f"{self.name}: a flush job is in flight; end_flush it first")
        if not self._dirty_views:
            return None
        batch = {view.pid: view._detach() for view in self._dirty_views}
        self._dirty_views = []
        job = self._new_job(batch)
        self._job = job
        return job

    def end_flush(self, job: FlushJob) -> None:
        """Forget a job's overlay once its ``run`` has made it durable."""
        ended = self._job
        if ended is None or job is not ended:
            raise RuntimeError(f"{self.name}: end_flush of a job that is not in flight")
        if not ended.durable:
            raise RuntimeError(f"{self.name}: end_flush before the job ran successfully")
        for pid, part in ended.batch.items():
            self._views[pid]._end_flush(part)
        self._job = None
        self.flushes += 1

    def commit(self) -> None:
        """Flush the open batch on this thread: begin, run (the fsync) and end."""
        job = self.begin_flush()
        if job is not None:
            job.run()
            self.end_flush(job)

    def _forget_unflushed(self) -> None:
        """Drop the open batch and the job in flight; views reread the durable rows."""
        self._job = None
        self._dirty_views = []
        for view in self._views.values():
            view._reload()


# --- one partition ----------------------------------------------------------------------------


class PartitionView:
    """One partition's ``PartitionStore`` in a node store (module docstring). ``commit``
    commits the whole node."""

    __slots__ = (
        "_dirty",
        "_durable",
        "_durable_intents",
        "_intents",
        "_item_cache",
        "_items",
        "_ledger",
        "_meta_durable",
        "_meta_flushing",
        "_meta_open",
        "_node",
        "_tokens",
        "_txn_intent_keys",
        "pid",
        "unflushed_reads",
    )

    def __init__(self, node: OverlayNode[Any], pid: PartitionId, durable: DurableRows) -> None:
        self.pid = pid
        self._node = node
        self._durable = durable
        self.unflushed_reads = 0  # reads an unflushed entry answered or shaped (module doc)
        self._reload()

    def _reload(self) -> None:
        """Forget every unflushed write and cached row; load the intents and meta afresh."""
        self._items: TableOverlay[Key, ItemRow] = TableOverlay()
        self._intents: TableOverlay[Key, Intent] = TableOverlay()
        self._ledger: TableOverlay[TxnId, LedgerRecord] = TableOverlay()
        self._tokens: TableOverlay[str, TokenRow] = TableOverlay()
        self._meta_open: PartitionMeta | None = None
        self._meta_flushing: PartitionMeta | None = None
        self._dirty = False
        self._item_cache: dict[Key, ItemRow | None] = {}  # durable rows; None: no row
        self._durable_intents: dict[Key, Intent] = {}  # mirror of the durable intents
        self._txn_intent_keys: dict[TxnId, set[Key]] = {}  # its index by transaction
        for intent in self._durable.intents():
            self._mirror_intent(intent.key, intent)
        self._meta_durable: PartitionMeta = self._durable.get_meta()

    # --- the open batch -----------------------------------------------------------------------

    def _wrote(self) -> None:
        self._dirty = True
        self._node._dirty_views.append(self)

    @property
    def pending_writes(self) -> int:
        """Row writes of this partition in the open batch."""
        tables = (
            len(self._items.open)
            + len(self._intents.open)
            + len(self._ledger.open)
            + len(self._tokens.open)
        )
        return tables + (self._meta_open is not None)

    def discard_open(self) -> None:
        """Forget this partition's writes in the open batch (never flushed, never read by a
        released answer); the layer in flight and the durable rows stay."""
        self._items.open = {}
        self._intents.open = {}
        self._ledger.open = {}
        self._tokens.open = {}
        self._meta_open = None

    def open_writes(self) -> PartitionBatch:
        """A copy of this partition's writes in the open batch (for tests and diagnostics)."""
        return PartitionBatch(
            items=dict(self._items.open),
            intents=dict(self._intents.open),
            ledger=dict(self._ledger.open),
            tokens=dict(self._tokens.open),
            meta=self._meta_open,
        )

    def _detach(self) -> PartitionBatch:
        part = PartitionBatch(
            items=self._items.detach(),
            intents=self._intents.detach(),
            ledger=self._ledger.detach(),
            tokens=self._tokens.detach(),
            meta=self._meta_open,
        )
        self._meta_flushing, self._meta_open = self._meta_open, None
        self._dirty = False
        return part

    def _end_flush(self, part: PartitionBatch) -> None:
        self._items.flushing = None
        self._intents.flushing = None
        self._ledger.flushing = None
        self._tokens.flushing = None
        self._meta_flushing = None
        for key, row in part.items.items():
            self._cache_item(key, row)
        for key, intent in part.intents.items():
            self._mirror_intent(key, intent)
        if part.meta is not None:
            self._meta_durable = part.meta

    def commit(self) -> None:
        """Make every write so far durable: a group commit of the whole node."""
        self._node.commit()

    def _listing(
        self,
        overlay: TableOverlay[Any, V],
        durable: Callable[[int, Container[Any]], list[V]],
        limit: int,
        wanted: Callable[[V], bool],
        order: Callable[[V], Any],
        *,
        reverse: bool = False,
    ) -> list[V]:
        """The durable rows' listing with the overlay applied (module docstring); ``reverse``:
        the durable listing is in descending order, and so is the result."""
        limit = max(limit, 0)
        merged = overlay.merged()
        if not merged:
            return durable(limit, ())
        self.unflushed_reads += 1
        found = durable(limit + len(merged), merged)
        found.extend(row for row in merged.values() if row is not None and wanted(row))
        found.sort(key=order, reverse=reverse)
        return found[:limit]

    # --- items --------------------------------------------------------------------------------

    def get_item(self, key: Key) -> ItemRow | None:
        found = self._items.get(key)
        if found is not MISSING:
            self.unflushed_reads += 1
            return found
        cached = self._item_cache.get(key, MISSING)
        if cached is not MISSING:
            return cached
        item = self._durable.get_item(key)
        self._cache_item(key, item)
        return item

    def _cache_item(self, key: Key, row: ItemRow | None) -> None:
        cache = self._item_cache
        if key not in cache and len(cache) >= ITEM_CACHE_ROWS_MAX:
            del cache[next(iter(cache))]  # the oldest entry: insertion order
        cache[key] = row

    def put_item(self, row: ItemRow) -> None:
        self._items.open[row.key] = row
        if not self._dirty:
            self._wrote()

    def delete_item(self, key: Key) -> None:
        self._items.open[key] = None
        if not self._dirty:
            self._wrote()

    def tombstones(self, limit: int) -> list[ItemRow]:
        """Rows with ``exists=False``, oldest ``max(write_ts, read_ts)`` first."""
        return self._listing(
            self._items,
            self._durable.tombstones,
            limit,
            lambda row: not row.exists,
            tombstone_order,
        )

    def scan_items(
        self, start: Key, end: Key | None, limit: int, reverse: bool = False
    ) -> list[ItemRow]:
        return self._listing(
            self._items,
            lambda n, skip: self._durable.scan_items(start, end, n, skip, reverse),
            limit,
            lambda row: row.exists and row.key >= start and (end is None or row.key < end),
            item_key,
            reverse=reverse,
        )

    def item_count(self) -> int:
        """Items that exist (tombstones excluded), unflushed writes included. A full count of
        the partition: for status pages, not for the request path."""
        merged = self._items.merged()
        total, stored_live = self._durable.live_item_count(merged.keys())
        unflushed_live = sum(1 for row in merged.values() if row is not None and row.exists)
        return total - stored_live + unflushed_live

    # --- intents ------------------------------------------------------------------------------

    def _mirror_intent(self, key: Key, intent: Intent | None) -> None:
        """Make the in-memory mirror say what the durable intents now say for ``key``."""
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
        if found is not MISSING:
            self.unflushed_reads += 1
            return found
        return self._durable_intents.get(key)

    def put_intent(self, intent: Intent) -> None:
        self._intents.open[intent.key] = intent
        if not self._dirty:
            self._wrote()

    def delete_intent(self, key: Key) -> None:
        self._intents.open[key] = None
        if not self._dirty:
            self._wrote()

    def _current_intents(self, durable: Iterable[Intent]) -> list[Intent]:
        """``durable`` mirror entries and every unflushed intent, the overlay winning."""
        merged = self._intents.merged()
        if merged:
            self.unflushed_reads += 1
        found = [intent for intent in durable if intent.key not in merged]
        found.extend(intent for intent in merged.values() if intent is not None)
        return found

    def intents_of(self, txn_id: TxnId) -> list[Intent]:
        keys = self._txn_intent_keys.get(txn_id, ())
        found = self._current_intents(self._durable_intents[key] for key in keys)
        return sorted((i for i in found if i.txn_id == txn_id), key=lambda i: i.key)

    def intents_created_before(self, created_us: int, limit: int) -> list[Intent]:
        found = self._current_intents(self._durable_intents.values())
        old = [intent for intent in found if intent.created_us < created_us]
        old.sort(key=intent_order)
        return old[: max(limit, 0)]

    def intent_count(self) -> int:
        """Intents now, unflushed ones included (from the in-memory mirror)."""
        return len(self._current_intents(self._durable_intents.values()))

    # --- meta ---------------------------------------------------------------------------------

    def get_meta(self) -> PartitionMeta:
        if self._meta_open is not None:
            self.unflushed_reads += 1
            return self._meta_open
        if self._meta_flushing is not None:
            self.unflushed_reads += 1
            return self._meta_flushing
        return self._meta_durable

    def put_meta(self, meta: PartitionMeta) -> None:
        self._meta_open = meta
        if not self._dirty:
            self._wrote()

    # --- ledger -------------------------------------------------------------------------------

    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None:
        found = self._ledger.get(txn_id)
        if found is not MISSING:
            self.unflushed_reads += 1
            return found
        return self._durable.get_ledger(txn_id)

    def put_ledger(self, record: LedgerRecord) -> None:
        self._ledger.open[record.txn_id] = record
        if not self._dirty:
            self._wrote()

    def delete_ledger(self, txn_id: TxnId) -> None:
        self._ledger.open[txn_id] = None
        if not self._dirty:
            self._wrote()

    def open_ledger_records(self, limit: int) -> list[LedgerRecord]:
        return self._listing(
            self._ledger,
            self._durable.open_ledger_records,
            limit,
            lambda record: record.completed_us is None,
            open_ledger_order,
        )

    def ledger_completed_before(self, completed_us: int, limit: int) -> list[LedgerRecord]:
        return self._listing(
            self._ledger,
            lambda n, skip: self._durable.ledger_completed_before(completed_us, n, skip),
            limit,
            lambda r: r.completed_us is not None and r.completed_us < completed_us,
            completed_order,
        )

    # --- tokens -------------------------------------------------------------------------------

    def get_token(self, token: str) -> TokenRow | None:
        found = self._tokens.get(token)
        if found is not MISSING:
            self.unflushed_reads += 1
            return found
        return self._durable.get_token(token)

    def put_token(self, row: TokenRow) -> None:
        self._tokens.open[row.token] = row
        if not self._dirty:
            self._wrote()

    def delete_token(self, token: str) -> None:
        self._tokens.open[token] = None
        if not self._dirty:
            self._wrote()

    def tokens_created_before(self, created_us: int, limit: int) -> list[TokenRow]:
        return self._listing(
            self._tokens,
            lambda n, skip: self._durable.tokens_created_before(created_us, n, skip),
            limit,
            lambda row: row.created_us < created_us,
            token_order,
        )
