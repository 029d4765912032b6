"""The partition core's storage interface, and its in-memory implementation.

Theory of operation
-------------------
A partition keeps four kinds of durable records: item rows (a row with ``exists=False`` is a
per-key tombstone), pending intents (at most one per key, kept apart from item rows so they stay
invisible to reads and conditions), ledger records (transactions anchored here) and idempotency
tokens; plus one :class:`PartitionMeta` row with the deleted-key watermark.

The core reads and writes through :class:`PartitionStore` synchronously. Writes land in the
store's open batch at once and are visible to later reads of the same store; they become durable
when the shell calls ``commit()`` (one SQLite transaction and one fsync for many requests: group
commit). The shell must not release a reply until the batch holding every write that reply
depended on is committed. ``MemoryStore`` keeps the batch as an overlay on the durable maps, so
the simulator can ``crash()`` it: uncommitted writes vanish, committed ones survive.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from kvstore.messages import LedgerRecord
from kvstore.ops import Op
from kvstore.types import TIMESTAMP_ZERO, Key, PartitionId, Timestamp, TxnId, Value

__all__ = [
    "ItemRow",
    "Intent",
    "PartitionMeta",
    "TokenRow",
    "PartitionStore",
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
    """The partition-wide floor for keys with no row: never decreases."""

    max_delete_ts: Timestamp = TIMESTAMP_ZERO
    max_deleted_version: int = 0


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

    def scan_items(self, start: Key, end: Key | None, limit: int) -> list[ItemRow]: ...

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


K = TypeVar("K")
V = TypeVar("V")
_DELETED = object()  # overlay marker: the key was deleted in the open batch


class _Table(Generic[K, V]):
    """One durable map plus the open batch's overlay."""

    def __init__(self) -> None:
        self.durable: dict[K, V] = {}
        self.overlay: dict[K, V | object] = {}

    def get(self, key: K) -> V | None:
        if key in self.overlay:
            found = self.overlay[key]
            return None if found is _DELETED else found  # type: ignore[return-value]
        return self.durable.get(key)

    def put(self, key: K, value: V) -> None:
        self.overlay[key] = value

    def delete(self, key: K) -> None:
        self.overlay[key] = _DELETED

    def values(self) -> Iterator[V]:
        for key in self.durable.keys() | self.overlay.keys():
            value = self.get(key)
            if value is not None:
                yield value

    def commit(self) -> None:
        for key, value in self.overlay.items():
            if value is _DELETED:
                self.durable.pop(key, None)
            else:
                self.durable[key] = value  # type: ignore[assignment]
        self.overlay.clear()

    def crash(self) -> None:
        self.overlay.clear()


class MemoryStore:
    """A ``PartitionStore`` in dicts. Scans and listings sort on demand: fine for tests and the
    simulator, not meant for large partitions (the SQLite engine indexes them)."""

    def __init__(self) -> None:
        self._items: _Table[Key, ItemRow] = _Table()
        self._intents: _Table[Key, Intent] = _Table()
        self._ledger: _Table[TxnId, LedgerRecord] = _Table()
        self._tokens: _Table[str, TokenRow] = _Table()
        self._meta: _Table[int, PartitionMeta] = _Table()
        self.commits = 0

    # items
    def get_item(self, key: Key) -> ItemRow | None:
        return self._items.get(key)

    def put_item(self, row: ItemRow) -> None:
        self._items.put(row.key, row)

    def delete_item(self, key: Key) -> None:
        self._items.delete(key)

    def tombstones(self, limit: int) -> list[ItemRow]:
        dead = [row for row in self._items.values() if not row.exists]
        dead.sort(key=lambda row: max(row.write_ts, row.read_ts))
        return dead[:limit]

    def scan_items(self, start: Key, end: Key | None, limit: int) -> list[ItemRow]:
        rows = sorted(
            (
                row
                for row in self._items.values()
                if row.exists and row.key >= start and (end is None or row.key < end)
            ),
            key=lambda row: row.key,
        )
        return rows[:limit]

    # intents
    def get_intent(self, key: Key) -> Intent | None:
        return self._intents.get(key)

    def put_intent(self, intent: Intent) -> None:
        self._intents.put(intent.key, intent)

    def delete_intent(self, key: Key) -> None:
        self._intents.delete(key)

    def intents_of(self, txn_id: TxnId) -> list[Intent]:
        return sorted(
            (i for i in self._intents.values() if i.txn_id == txn_id), key=lambda i: i.key
        )

    def intents_created_before(self, created_us: int, limit: int) -> list[Intent]:
        old = [i for i in self._intents.values() if i.created_us < created_us]
        old.sort(key=lambda i: (i.created_us, i.key))
        return old[:limit]

    def intent_count(self) -> int:
        return sum(1 for _ in self._intents.values())

    def item_count(self) -> int:
        return sum(1 for row in self._items.values() if row.exists)

    # meta
    def get_meta(self) -> PartitionMeta:
        return self._meta.get(0) or PartitionMeta()

    def put_meta(self, meta: PartitionMeta) -> None:
        self._meta.put(0, meta)

    # ledger
    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None:
        return self._ledger.get(txn_id)

    def put_ledger(self, record: LedgerRecord) -> None:
        self._ledger.put(record.txn_id, record)

    def delete_ledger(self, txn_id: TxnId) -> None:
        self._ledger.delete(txn_id)

    def open_ledger_records(self, limit: int) -> list[LedgerRecord]:
        records = sorted(
            (r for r in self._ledger.values() if r.completed_us is None),
            key=lambda r: (r.created_us, r.txn_id),
        )
        return records[:limit]

    def ledger_completed_before(self, completed_us: int, limit: int) -> list[LedgerRecord]:
        records = sorted(
            (
                r
                for r in self._ledger.values()
                if r.completed_us is not None and r.completed_us < completed_us
            ),
            key=lambda r: (r.completed_us or 0, r.txn_id),
        )
        return records[:limit]

    # tokens
    def get_token(self, token: str) -> TokenRow | None:
        return self._tokens.get(token)

    def put_token(self, row: TokenRow) -> None:
        self._tokens.put(row.token, row)

    def delete_token(self, token: str) -> None:
        self._tokens.delete(token)

    def tokens_created_before(self, created_us: int, limit: int) -> list[TokenRow]:
        old = sorted(
            (t for t in self._tokens.values() if t.created_us < created_us),
            key=lambda t: t.created_us,
        )
        return old[:limit]

    # durability
    def commit(self) -> None:
        for table in self._tables():
            table.commit()
        self.commits += 1

    def crash(self) -> None:
        """Lose every write since the last ``commit()`` (a simulated process crash)."""
        for table in self._tables():
            table.crash()

    def _tables(self) -> tuple[_Table[object, object], ...]:
        return (self._items, self._intents, self._ledger, self._tokens, self._meta)  # type: ignore[return-value]
