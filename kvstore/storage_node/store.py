"""The partition core's storage interface, the node store's, and their in-memory implementation.

Theory of operation
-------------------
A partition keeps four kinds of durable records: item rows (a row with ``exists=False`` is a
per-key tombstone), pending intents (at most one per key, kept apart from item rows so they stay
invisible to reads and conditions), ledger records (transactions anchored here) and idempotency
tokens; plus one :class:`PartitionMeta` row with the deleted-key watermark.

The core reads and writes through :class:`PartitionStore` synchronously. A node keeps all its
partitions in one :class:`NodeStore` (DESIGN section 2a: one group commit per node); a core's
``PartitionStore`` is the node store's view of its partition. Writes land in the node's open
batch at once and are visible to later reads of the same view; they become durable when the
node's runtime flushes: ``begin_flush`` detaches the batch of every partition into one
:class:`FlushJob`, a plain value that ``run`` makes durable in one transaction and one fsync,
``end_flush`` then drops it from the views. No reply may leave before the job holding every write
it depended on has run.

:class:`MemoryNodeStore` is the node store in dicts: the overlay code of the SQLite store
(:mod:`~kvstore.storage_node.overlay`) over durable dicts, so the simulator runs what production
runs, and can ``crash()`` it: unflushed writes vanish, flushed ones survive.
:class:`MemoryStore` is one partition on its own memory node store, with ``commit()`` and
``crash()``, for the core's unit tests.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from kvstore.messages import LedgerRecord
from kvstore.ops import Op
from kvstore.storage_node.overlay import (
    FlushJobBase,
    NodeBatch,
    OverlayNode,
    PartitionBatch,
    completed_order,
    item_key,
    open_ledger_order,
    token_order,
    tombstone_order,
)
from kvstore.types import TIMESTAMP_ZERO, Key, PartitionId, Timestamp, TxnId, Value

__all__ = [
    "ItemRow",
    "Intent",
    "PartitionMeta",
    "TokenRow",
    "PartitionStore",
    "FlushJob",
    "NodeStore",
    "MemoryNodeStore",
    "MemoryFlushJob",
    "MemoryStore",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemRow:
    """A key's committed state. ``exists=False`` is a tombstone: deleted, or only read while
    absent; it keeps the key's version and timestamps until GC folds them into the watermark."""

    key: Key
    exists: bool
    value: Value
    version: int
    write_ts: Timestamp
    read_ts: Timestamp


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """A prepared, undecided operation of ``txn_id`` on ``key``. ``new_exists``/``new_value`` are
    computed at prepare so that applying it at commit cannot fail."""

    key: Key
    txn_id: TxnId
    ts: Timestamp
    op: Op
    new_exists: bool
    new_value: Value
    anchor: PartitionId
    created_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionMeta:
    """The partition-wide floor for keys with no row (never decreases), and the partition's
    replication position (:mod:`kvstore.replication.rules`): ``epoch`` and ``seq`` of the last
    write batch this replica holds, ``promised`` the highest leader epoch it promised to (it
    refuses batches of older epochs). All zero in a cluster that does not replicate."""

    max_delete_ts: Timestamp = TIMESTAMP_ZERO
    max_deleted_version: int = 0
    epoch: int = 0
    seq: int = 0
    promised: int = 0
    # Snapshot reads (docs/backup.md): no write at or below ``read_floor`` may be accepted any
    # more (a snapshot read or backup at that timestamp was answered); ``max_write_ts`` is the
    # largest commit timestamp of any write applied, where the version history may start.
    read_floor: Timestamp = TIMESTAMP_ZERO
    max_write_ts: Timestamp = TIMESTAMP_ZERO


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRow:
    token: str
    txn_id: TxnId
    fingerprint: str
    created_us: int


class PartitionStore(Protocol):
    """What the partition core needs from storage. All calls are synchronous and local."""

    def get_item(self, key: Key) -> ItemRow | None: ...
    def put_item(self, row: ItemRow) -> None: ...
    def delete_item(self, key: Key) -> None: ...
    def tombstones(self, limit: int) -> list[ItemRow]:
        """Rows with ``exists=False``, oldest ``max(write_ts, read_ts).physical_us`` first."""
        ...

    def scan_items(
        self, start: Key, end: Key | None, limit: int, reverse: bool = False
    ) -> list[ItemRow]:
        """Live items with ``start <= key < end`` in key order (``reverse``: descending)."""
        ...

    def get_intent(self, key: Key) -> Intent | None: ...
    def put_intent(self, intent: Intent) -> None: ...
    def delete_intent(self, key: Key) -> None: ...
    def intents_of(self, txn_id: TxnId) -> list[Intent]: ...
    def intents_created_before(self, created_us: int, limit: int) -> list[Intent]: ...
    def intent_count(self) -> int: ...
    def item_count(self) -> int:
        """Items that exist (tombstones excluded); a full count, for status pages."""
        ...

    def get_meta(self) -> PartitionMeta: ...
    def put_meta(self, meta: PartitionMeta) -> None: ...

    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None: ...
    def put_ledger(self, record: LedgerRecord) -> None: ...
    def delete_ledger(self, txn_id: TxnId) -> None: ...
    def open_ledger_records(self, limit: int) -> list[LedgerRecord]:
        """Records not yet acknowledged by every participant (``completed_us is None``), oldest
        ``created_us`` first."""
        ...

    def ledger_completed_before(self, completed_us: int, limit: int) -> list[LedgerRecord]:
        """Completed records with ``completed_us`` below the bound, oldest first."""
        ...

    def get_token(self, token: str) -> TokenRow | None: ...
    def put_token(self, row: TokenRow) -> None: ...
    def delete_token(self, token: str) -> None: ...
    def tokens_created_before(self, created_us: int, limit: int) -> list[TokenRow]: ...

    def commit(self) -> None:
        """Make every write so far durable (the shell's group commit)."""
        ...


class FlushJob(Protocol):
    """One write batch of a whole node (every partition's rows) on its way to disk: a plain
    value (:attr:`batch`) that could be shipped to another process. ``stage`` writes it into an
    open transaction without waiting for the disk (CPU only); ``run`` stages if needed and
    commits (one fsync); both raise on failure after rolling back, and the job may be run again.
    ``commit_s`` is how long ``run``'s COMMIT took; ``durable`` says ``run`` succeeded."""

    @property
    def batch(self) -> NodeBatch: ...
    @property
    def durable(self) -> bool: ...
    @property
    def rows(self) -> int: ...
    @property
    def commit_s(self) -> float: ...
    def stage(self) -> None: ...
    def run(self) -> None: ...


class NodeStore(Protocol):
    """Every partition of one node in one durable store, written by one group commit.

    ``partition(pid)`` is the view one core reads and writes through (a ``PartitionStore``;
    its ``commit`` commits the whole node). Writes of every view land in the node's one open
    batch; ``begin_flush`` moves that batch into a :class:`FlushJob` (``None`` when clean, and
    ``RuntimeError`` while another job is in flight), ``job.run()`` makes it durable (may run on
    another thread), ``end_flush`` forgets the job's overlay. ``commit`` does all three here.
    ``close`` drops unflushed writes (never acknowledged), as a crash would.
    ``unflushed_reads(pid)`` counts the reads of partition ``pid`` that an unflushed write
    answered or shaped (:class:`~kvstore.storage_node.overlay.PartitionView`).
    """

    @property
    def partitions(self) -> tuple[PartitionId, ...]: ...
    def partition(self, pid: PartitionId) -> PartitionStore: ...
    def unflushed_reads(self, pid: PartitionId) -> int: ...
    def open_writes_of(self, pid: PartitionId) -> int: ...
    def discard_open_writes(self, pid: PartitionId) -> None: ...
    @property
    def dirty(self) -> bool: ...
    @property
    def pending_writes(self) -> int: ...
    @property
    def in_flight(self) -> FlushJob | None: ...
    def begin_flush(self) -> FlushJob | None: ...
    def end_flush(self, job: FlushJob) -> None: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class _DictRows:
    """One partition's durable rows in dicts (the :class:`~kvstore.storage_node.overlay.DurableRows`
    of :class:`MemoryNodeStore`). Listings sort on demand: fine for tests and the simulator, not
    meant for large partitions (SQLite indexes them). Iterations copy the dict first, so a job
    running on another thread cannot break them."""

    __slots__ = ("intent_rows", "items", "ledger", "meta", "tokens")

    def __init__(self) -> None:
        self.items: dict[Key, ItemRow] = {}
        self.intent_rows: dict[Key, Intent] = {}
        self.ledger: dict[TxnId, LedgerRecord] = {}
        self.tokens: dict[str, TokenRow] = {}
        self.meta = PartitionMeta()

    def apply(self, part: PartitionBatch) -> None:
        _apply(self.items, part.items)
        _apply(self.intent_rows, part.intents)
        _apply(self.ledger, part.ledger)
        _apply(self.tokens, part.tokens)
        if part.meta is not None:
            self.meta = part.meta

    def get_item(self, key: Key) -> ItemRow | None:
        return self.items.get(key)

    def tombstones(self, limit: int, skip: Container[Key]) -> list[ItemRow]:
        rows = [r for r in list(self.items.values()) if not r.exists and r.key not in skip]
        return sorted(rows, key=tombstone_order)[:limit]

    def scan_items(
        self, start: Key, end: Key | None, limit: int, skip: Container[Key], reverse: bool = False
    ) -> list[ItemRow]:
        rows = [
            r
            for r in list(self.items.values())
            if r.exists and r.key >= start and (end is None or r.key < end) and r.key not in skip
        ]
        return sorted(rows, key=item_key, reverse=reverse)[:limit]

    def live_item_count(self, among: Collection[Key]) -> tuple[int, int]:
        items = dict(self.items)
        live_among = sum(1 for key in among if (row := items.get(key)) is not None and row.exists)
        return sum(1 for row in items.values() if row.exists), live_among

    def intents(self) -> Iterable[Intent]:
        return list(self.intent_rows.values())

    def get_meta(self) -> PartitionMeta:
        return self.meta

    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None:
        return self.ledger.get(txn_id)

    def open_ledger_records(self, limit: int, skip: Container[TxnId]) -> list[LedgerRecord]:
        found = [
            r for r in list(self.ledger.values()) if r.completed_us is None and r.txn_id not in skip
        ]
        return sorted(found, key=open_ledger_order)[:limit]

    def ledger_completed_before(
        self, completed_us: int, limit: int, skip: Container[TxnId]
    ) -> list[LedgerRecord]:
        found = [
            r
            for r in list(self.ledger.values())
            if r.completed_us is not None and r.completed_us < completed_us and r.txn_id not in skip
        ]
        return sorted(found, key=completed_order)[:limit]

    def get_token(self, token: str) -> TokenRow | None:
        return self.tokens.get(token)

    def tokens_created_before(
        self, created_us: int, limit: int, skip: Container[str]
    ) -> list[TokenRow]:
        found = [
            t
            for t in list(self.tokens.values())
            if t.created_us < created_us and t.token not in skip
        ]
        return sorted(found, key=token_order)[:limit]


K = TypeVar("K")
V = TypeVar("V")


def _apply(durable: dict[K, V], layer: Mapping[K, V | None]) -> None:
    for key, row in layer.items():
        if row is None:
            durable.pop(key, None)
        else:
            durable[key] = row


class MemoryFlushJob(FlushJobBase):
    """A flush job of :class:`MemoryNodeStore`: ``run`` applies the batch to the durable dicts
    (nothing to stage; ``commit_s`` stays 0). A job the store crashed under never runs."""

    __slots__ = ("_node", "crashed")

    def __init__(self, node: MemoryNodeStore, batch: NodeBatch) -> None:
        super().__init__(batch)
        self._node = node
        self.crashed = False

    def stage(self) -> None:
        self.staged = True

    def run(self) -> None:
        if self.crashed:
            raise RuntimeError(f"{self._node.name}: the store crashed before this job ran")
        if self.durable:
            return
        for pid, part in self.batch.items():
            self._node.durable_rows[pid].apply(part)
        self.staged = self.durable = True


class MemoryNodeStore(OverlayNode[MemoryFlushJob]):
    """A :class:`NodeStore` on dicts, with the overlay and group commit of the SQLite store
    (:mod:`~kvstore.storage_node.overlay`): writes wait in the open batch, ``begin_flush`` /
    ``job.run()`` / ``end_flush`` make them durable (``run`` into the dicts). :meth:`crash`
    simulates a process crash: the open batch and a job not yet run vanish, the dicts stay."""

    def __init__(self, partitions: Iterable[PartitionId]) -> None:
        self.durable_rows = {pid: _DictRows() for pid in partitions}
        super().__init__(self.durable_rows, "memory node store")

    def _new_job(self, batch: NodeBatch) -> MemoryFlushJob:
        return MemoryFlushJob(self, batch)

    def crash(self) -> None:
        """Lose every write no job has run yet, and any cached state (a restart). The views
        stay valid and answer from the durable dicts."""
        if self._job is not None:
            self._job.crashed = True
        self._forget_unflushed()

    def close(self) -> None:
        """Drop unflushed writes (never acknowledged), as a crash would; further flushes raise."""
        self.crash()
        self._closed = True


_FIRST_PARTITION = PartitionId(0)


class MemoryStore:
    """One partition's ``PartitionStore`` with ``commit()`` and ``crash()``, for the core's
    unit tests and the simulator: the view of partition ``pid`` of its own one-partition
    :class:`MemoryNodeStore`. ``commits`` counts ``commit()`` calls."""

    def __init__(self, pid: PartitionId = _FIRST_PARTITION) -> None:
        self.node = MemoryNodeStore((pid,))
        self._view = self.node.partition(pid)
        self.commits = 0

    def commit(self) -> None:
        self.node.commit()
        self.commits += 1

    def crash(self) -> None:
        """Lose every write since the last ``commit()`` (a simulated process crash)."""
        self.node.crash()

    # The PartitionStore calls, answered by the view.
    def get_item(self, key: Key) -> ItemRow | None:
        return self._view.get_item(key)

    def put_item(self, row: ItemRow) -> None:
        self._view.put_item(row)

    def delete_item(self, key: Key) -> None:
        self._view.delete_item(key)

    def tombstones(self, limit: int) -> list[ItemRow]:
        return self._view.tombstones(limit)

    def scan_items(
        self, start: Key, end: Key | None, limit: int, reverse: bool = False
    ) -> list[ItemRow]:
        return self._view.scan_items(start, end, limit, reverse)

    def get_intent(self, key: Key) -> Intent | None:
        return self._view.get_intent(key)

    def put_intent(self, intent: Intent) -> None:
        self._view.put_intent(intent)

    def delete_intent(self, key: Key) -> None:
        self._view.delete_intent(key)

    def intents_of(self, txn_id: TxnId) -> list[Intent]:
        return self._view.intents_of(txn_id)

    def intents_created_before(self, created_us: int, limit: int) -> list[Intent]:
        return self._view.intents_created_before(created_us, limit)

    def intent_count(self) -> int:
        return self._view.intent_count()

    def item_count(self) -> int:
        return self._view.item_count()

    def get_meta(self) -> PartitionMeta:
        return self._view.get_meta()

    def put_meta(self, meta: PartitionMeta) -> None:
        self._view.put_meta(meta)

    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None:
        return self._view.get_ledger(txn_id)

    def put_ledger(self, record: LedgerRecord) -> None:
        self._view.put_ledger(record)

    def delete_ledger(self, txn_id: TxnId) -> None:
        self._view.delete_ledger(txn_id)

    def open_ledger_records(self, limit: int) -> list[LedgerRecord]:
        return self._view.open_ledger_records(limit)

    def ledger_completed_before(self, completed_us: int, limit: int) -> list[LedgerRecord]:
        return self._view.ledger_completed_before(completed_us, limit)

    def get_token(self, token: str) -> TokenRow | None:
        return self._view.get_token(token)

    def put_token(self, row: TokenRow) -> None:
        self._view.put_token(row)

    def delete_token(self, token: str) -> None:
        self._view.delete_token(token)

    def tokens_created_before(self, created_us: int, limit: int) -> list[TokenRow]:
        return self._view.tokens_created_before(created_us, limit)
