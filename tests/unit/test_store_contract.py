"""The ``PartitionStore`` contract, run over views of ``MemoryNodeStore`` and ``SqliteNodeStore``.

Three layers of evidence that both node stores answer as the reference :class:`Model` (plain
dicts, no overlay: every write applied at once) does:

* scenario tests of every Protocol method, parametrized over both node stores and over where the
  data sits on its way to disk (open batch, a flush job begun, run, ended, the store reopened or
  crashed), scenarios of overlays over durable rows, and of two partitions of one node store that
  never see each other's rows;
* a Hypothesis state machine of random writes to every table of two partitions, interleaved with
  ``begin_flush`` / ``run`` / ``end_flush``, ``commit`` and crash-and-reopen, comparing every read
  and listing of both node stores with the model after each step (and the two stores' batches);
* real ``PartitionCore``\\ s on the model and on each node store, driven by the same random
  requests: identical replies.

Every listing orders ties by the table's key, in the model too, so answers compare exactly.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support.partition import P0, add, check, delete, put

from kvstore.conditions import Exists
from kvstore.limits import FLUSH_WRITES_MAX
from kvstore.messages import (
    CancelRequest,
    CommitRequest,
    CompleteRequest,
    DecideRequest,
    ExecuteRequest,
    GetRequest,
    ItemView,
    LedgerLookupRequest,
    LedgerRecord,
    OpOutcome,
    PrepareRequest,
    ReadRequest,
    ReasonCode,
    Request,
    ScanRequest,
    TokenLookupRequest,
    TxnState,
    WriteRequest,
)
from kvstore.ops import Op, OpKind
from kvstore.storage_node import sqlite_schema
from kvstore.storage_node.core import PartitionConfig, PartitionCore
from kvstore.storage_node.overlay import PartitionBatch
from kvstore.storage_node.sqlite_store import NODE_DB, SchemaError, SqliteNodeStore
from kvstore.storage_node.store import (
    FlushJob,
    Intent,
    ItemRow,
    MemoryNodeStore,
    MemoryStore,
    NodeStore,
    PartitionMeta,
    PartitionStore,
    TokenRow,
)
from kvstore.types import TIMESTAMP_ZERO, PartitionId, Timestamp, TxnId, Value

U64 = (1 << 64) - 1
P1 = PartitionId(1)
P2 = PartitionId(2)
PARTS = (P0, P1)

# The universes every comparison reads back.
KEYS = ("a", "b", "c", "c\x00", "d", "é", "\U0001f600")
TXNS = tuple(TxnId(f"{n:032x}") for n in (1, 2, 3))
TOKENS = ("tok-a", "tok-b", "tok c")
SCAN_BOUNDS: tuple[tuple[str, str | None], ...] = (
    ("", None),
    ("b", None),
    ("c\x00", "é"),
    ("a", "c"),
    ("d", "a"),
)
LIMITS = (0, 1, 2, 3, 1000)
TIME_BOUNDS = (0, 2, 4, 1000)
EVERYTHING = 1 << 62


def tsp(physical: int, logical: int = 0, origin: int = 1) -> Timestamp:
    return Timestamp(physical, logical, origin)


def item(
    key: str,
    value: Value = None,
    *,
    exists: bool = True,
    version: int = 1,
    write: Timestamp = TIMESTAMP_ZERO,
    read: Timestamp = TIMESTAMP_ZERO,
) -> ItemRow:
    return ItemRow(
        key=key, exists=exists, value=value, version=version, write_ts=write, read_ts=read
    )


def tomb(key: str, write: Timestamp, read: Timestamp = TIMESTAMP_ZERO, version: int = 2) -> ItemRow:
    return item(key, exists=False, version=version, write=write, read=read)


def intent(key: str, txn: TxnId, created_us: int, op: Op | None = None) -> Intent:
    return Intent(
        key=key,
        txn_id=txn,
        ts=tsp(created_us + 100, 1, U64),
        op=op or put(key, {"n": 1}),
        new_exists=True,
        new_value={"n": 1, "b": b"\x00\xff"},
        anchor=PartitionId(3),
        created_us=created_us,
    )


def record(txn: TxnId, created_us: int, completed_us: int | None = None) -> LedgerRecord:
    outcomes: tuple[OpOutcome, ...] = ()
    state = TxnState.PREPARING if completed_us is None else TxnState.COMMITTED
    if completed_us is not None and completed_us % 2:
        state = TxnState.CANCELLED
        view = ItemView(key="a", value=[1, "x"], version=3, ts=tsp(5))
        outcomes = (OpOutcome(), OpOutcome(code=ReasonCode.CONDITION_FAILED, item=view))
    return LedgerRecord(
        txn_id=txn,
        ts=tsp(created_us, 2, U64),
        state=state,
        participants=(P0, PartitionId(7)),
        created_us=created_us,
        deadline_us=created_us + 10,
        token="tok-a" if created_us % 2 else None,
        fingerprint="fp",
        outcomes=outcomes,
        completed_us=completed_us,
    )


def token(name: str, txn: TxnId, created_us: int) -> TokenRow:
    return TokenRow(token=name, txn_id=txn, fingerprint="fp-" + name, created_us=created_us)


# --- the reference --------------------------------------------------------------------------


class Model:
    """A ``PartitionStore`` in plain dicts with no overlay: every write applies at once.
    ``begin()`` remembers the state as a flush job would, ``ran()`` makes that state the durable
    one (``commit()`` does both), ``crash()`` returns to the durable state. Listings sort
    everything on each call, ties by the table's key."""

    def __init__(self) -> None:
        self.items: dict[str, ItemRow] = {}
        self.intents: dict[str, Intent] = {}
        self.ledger: dict[TxnId, LedgerRecord] = {}
        self.tokens: dict[str, TokenRow] = {}
        self.meta = PartitionMeta()
        self._durable = self._flushing = self._snapshot()

    def _snapshot(self) -> tuple[Any, ...]:
        return (
            dict(self.items),
            dict(self.intents),
            dict(self.ledger),
            dict(self.tokens),
            self.meta,
        )

    def begin(self) -> None:
        """A flush job begins: it holds the state now."""
        self._flushing = self._snapshot()

    def ran(self) -> None:
        """The flush job ran: its state is durable."""
        self._durable = self._flushing

    def commit(self) -> None:
        self.begin()
        self.ran()

    def crash(self) -> None:
        items, intents, ledger, tokens, self.meta = self._durable
        self.items, self.intents, self.ledger, self.tokens = (
            dict(items),
            dict(intents),
            dict(ledger),
            dict(tokens),
        )

    def get_item(self, key: str) -> ItemRow | None:
        return self.items.get(key)

    def put_item(self, row: ItemRow) -> None:
        self.items[row.key] = row

    def delete_item(self, key: str) -> None:
        self.items.pop(key, None)

    def tombstones(self, limit: int) -> list[ItemRow]:
        dead = [r for r in self.items.values() if not r.exists]
        return sorted(dead, key=lambda r: (max(r.write_ts, r.read_ts), r.key))[:limit]

    def scan_items(
        self, start: str, end: str | None, limit: int, reverse: bool = False
    ) -> list[ItemRow]:
        rows = [
            r
            for r in self.items.values()
            if r.exists and r.key >= start and (end is None or r.key < end)
        ]
        return sorted(rows, key=lambda r: r.key, reverse=reverse)[:limit]

    def item_count(self) -> int:
        return sum(1 for r in self.items.values() if r.exists)

    def get_intent(self, key: str) -> Intent | None:
        return self.intents.get(key)

    def put_intent(self, intent: Intent) -> None:
        self.intents[intent.key] = intent

    def delete_intent(self, key: str) -> None:
        self.intents.pop(key, None)

    def intents_of(self, txn_id: TxnId) -> list[Intent]:
        return sorted((i for i in self.intents.values() if i.txn_id == txn_id), key=lambda i: i.key)

    def intents_created_before(self, created_us: int, limit: int) -> list[Intent]:
        old = [i for i in self.intents.values() if i.created_us < created_us]
        return sorted(old, key=lambda i: (i.created_us, i.key))[:limit]

    def intent_count(self) -> int:
        return len(self.intents)

    def get_meta(self) -> PartitionMeta:
        return self.meta

    def put_meta(self, meta: PartitionMeta) -> None:
        self.meta = meta

    def get_ledger(self, txn_id: TxnId) -> LedgerRecord | None:
        return self.ledger.get(txn_id)

    def put_ledger(self, record: LedgerRecord) -> None:
        self.ledger[record.txn_id] = record

    def delete_ledger(self, txn_id: TxnId) -> None:
        self.ledger.pop(txn_id, None)

    def open_ledger_records(self, limit: int) -> list[LedgerRecord]:
        found = [r for r in self.ledger.values() if r.completed_us is None]
        return sorted(found, key=lambda r: (r.created_us, r.txn_id))[:limit]

    def ledger_completed_before(self, completed_us: int, limit: int) -> list[LedgerRecord]:
        found = [
            r
            for r in self.ledger.values()
            if r.completed_us is not None and r.completed_us < completed_us
        ]
        return sorted(found, key=lambda r: (r.completed_us or 0, r.txn_id))[:limit]

    def get_token(self, token: str) -> TokenRow | None:
        return self.tokens.get(token)

    def put_token(self, row: TokenRow) -> None:
        self.tokens[row.token] = row

    def delete_token(self, token: str) -> None:
        self.tokens.pop(token, None)

    def tokens_created_before(self, created_us: int, limit: int) -> list[TokenRow]:
        found = [t for t in self.tokens.values() if t.created_us < created_us]
        return sorted(found, key=lambda t: (t.created_us, t.token))[:limit]


# --- comparing two stores -------------------------------------------------------------------


@dataclass(frozen=True)
class Universe:
    """What a comparison reads back: these keys, transactions and tokens, listings at these
    bounds."""

    keys: tuple[str, ...] = KEYS
    txns: tuple[TxnId, ...] = TXNS
    tokens: tuple[str, ...] = TOKENS
    time_bounds: tuple[int, ...] = TIME_BOUNDS
    scan_bounds: tuple[tuple[str, str | None], ...] = SCAN_BOUNDS


def observe(store: PartitionStore, u: Universe) -> dict[str, object]:
    """Everything a store answers about the universe."""
    seen: dict[str, object] = {
        "items": [store.get_item(k) for k in u.keys],
        "intents": [store.get_intent(k) for k in u.keys],
        "ledger": [store.get_ledger(t) for t in (*u.txns, TxnId("f" * 32))],
        "tokens": [store.get_token(t) for t in u.tokens],
        "meta": store.get_meta(),
        "intent_count": store.intent_count(),
        "item_count": store.item_count(),
        "intents_of": [store.intents_of(t) for t in u.txns],
        "all tombstones": store.tombstones(EVERYTHING),
        "all tokens": store.tokens_created_before(EVERYTHING, EVERYTHING),
    }
    for start, end in u.scan_bounds:
        for limit in LIMITS:
            seen[f"scan {start!r} {end!r} {limit}"] = store.scan_items(start, end, limit)
    for limit in LIMITS:
        seen[f"open ledger {limit}"] = store.open_ledger_records(limit)
        seen[f"tombstones {limit}"] = store.tombstones(limit)
        for bound in u.time_bounds:
            seen[f"intents before {bound} {limit}"] = store.intents_created_before(bound, limit)
            seen[f"completed before {bound} {limit}"] = store.ledger_completed_before(bound, limit)
            seen[f"tokens before {bound} {limit}"] = store.tokens_created_before(bound, limit)
    return seen


def assert_same_answers(
    want: PartitionStore, got: PartitionStore, u: Universe = Universe()
) -> None:
    assert observe(got, u) == observe(want, u)


# --- a node store and the path of its writes to disk ----------------------------------------

PHASES = ("open", "begun", "ran", "ended", "reopened")


def open_node(kind: str, data_dir: Path, parts: tuple[PartitionId, ...] = PARTS) -> Any:
    """A ``MemoryNodeStore`` or ``SqliteNodeStore`` (``Any``: tests use either's extras)."""
    if kind == "memory":
        return MemoryNodeStore(parts)
    return SqliteNodeStore.open(data_dir, parts)


class Harness:
    """A node store under test, partitions ``P0`` and ``P1``; ``store`` is the view of ``P0``,
    ``other`` that of ``P1``. ``settle(phase)`` moves every write so far to ``phase``: still in
    the open batch, in a flush job begun / run / ended, or ended and the store reopened (SQLite)
    or crashed (memory)."""

    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.node = open_node(kind, data_dir)
        self.job: FlushJob | None = None

    @property
    def store(self) -> PartitionStore:
        view: PartitionStore = self.node.partition(P0)
        return view

    @property
    def other(self) -> PartitionStore:
        view: PartitionStore = self.node.partition(P1)
        return view

    def settle(self, phase: str) -> None:
        if phase == "open":
            return
        self.job = self.node.begin_flush()
        assert self.job is not None
        if phase in {"ran", "ended", "reopened"}:
            self.job.run()
        if phase in {"ended", "reopened"}:
            self.finish()
        if phase == "reopened":
            self.reopen()

    def finish(self) -> None:
        """End the flush job in flight, running it first if needed."""
        if self.job is not None:
            if not self.job.durable:
                self.job.run()
            self.node.end_flush(self.job)
        self.job = None

    def reopen(self) -> None:
        """Lose what no job has run: a crash of the memory store, close and open of SQLite."""
        if self.kind == "memory":
            self.node.crash()
        else:
            self.node.close()
            self.node = open_node(self.kind, self.data_dir)
        self.job = None

    def close(self) -> None:
        self.node.close()


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def harness(kind: str, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(kind, tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def node(kind: str, tmp_path: Path) -> Iterator[Any]:
    store = open_node(kind, tmp_path)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def sqlite_node(tmp_path: Path) -> Iterator[SqliteNodeStore]:
    store = SqliteNodeStore.open(tmp_path, PARTS)
    try:
        yield store
    finally:
        store.close()


# --- every Protocol method, wherever the rows sit -------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_items_round_trip_every_value_type(harness: Harness, phase: str) -> None:
    values: list[Value] = [
        None,
        True,
        -(1 << 63),
        U64,
        -0.5,
        1e300,
        "",
        "naïve \U0001f600",
        b"\x00\xff",
        [1, [2, {"x": None}], b""],
        {"z": 1, "a": {"nested": [True, 2.5]}, "": "empty"},
    ]
    rows = [
        item(
            key,
            value,
            version=(1 << 63) - 1 if i == 0 else i,
            write=Timestamp(U64, U64, U64) if i == 1 else tsp(i, i, 1 << 63),
            read=tsp(i + 7, 0, U64),
        )
        for i, (key, value) in enumerate(zip(KEYS, values, strict=False))
    ]
    for row in rows:
        harness.store.put_item(row)
    harness.store.put_item(tomb("gone", tsp(3)))
    harness.settle(phase)
    store = harness.store
    for row in rows:
        assert store.get_item(row.key) == row
    assert store.get_item("gone") == tomb("gone", tsp(3))
    assert store.get_item("never") is None
    assert store.get_item("a\x00") is None, "keys with NUL are distinct keys"


@pytest.mark.parametrize("phase", PHASES)
def test_delete_item_and_overwrite(harness: Harness, phase: str) -> None:
    store = harness.store
    store.put_item(item("a", 1))
    store.put_item(item("b", 2))
    store.put_item(item("a", 3, version=2))
    store.delete_item("b")
    store.delete_item("never")
    harness.settle(phase)
    store = harness.store
    assert store.get_item("a") == item("a", 3, version=2)
    assert store.get_item("b") is None
    assert store.get_item("never") is None
    assert store.scan_items("", None, 10) == [item("a", 3, version=2)]


@pytest.mark.parametrize("phase", PHASES)
def test_tombstones_oldest_max_timestamp_first(harness: Harness, phase: str) -> None:
    rows = [
        tomb("t-read-newest", write=tsp(10), read=tsp(90)),  # max = read_ts 90
        tomb("t-high-origin", write=tsp(50, 0, U64)),
        tomb("t-low-origin", write=tsp(50, 0, 2)),
        tomb("t-logical", write=tsp(50, 1, 1)),
        tomb("t-physical-wins", write=tsp(49, 9, U64), read=tsp(3)),
        tomb("t-huge", write=Timestamp(1 << 63, 0, 0)),
        tomb("t-zero", write=TIMESTAMP_ZERO),
    ]
    for row in rows:
        harness.store.put_item(row)
    harness.store.put_item(item("live", 1, write=tsp(1)))  # live rows are not tombstones
    harness.settle(phase)
    expected = [
        "t-zero",
        "t-physical-wins",
        "t-low-origin",
        "t-high-origin",
        "t-logical",
        "t-read-newest",
        "t-huge",
    ]
    for limit in range(len(rows) + 2):
        assert [row.key for row in harness.store.tombstones(limit)] == expected[:limit]
    assert harness.store.tombstones(1)[0] == tomb("t-zero", write=TIMESTAMP_ZERO)


@pytest.mark.parametrize("phase", PHASES)
def test_tombstone_ties(harness: Harness, phase: str) -> None:
    for key in ("c", "a", "b"):
        harness.store.put_item(tomb(key, write=tsp(5), read=tsp(4)))
    harness.store.put_item(tomb("z", write=tsp(4)))
    harness.settle(phase)
    rows = harness.store.tombstones(10)
    assert [row.key for row in rows] == ["z", "a", "b", "c"]  # ties by key
    assert [row.key for row in harness.store.tombstones(2)] == ["z", "a"]


@pytest.mark.parametrize("phase", PHASES)
def test_scan_items_in_key_order_live_rows_only(harness: Harness, phase: str) -> None:
    for key in reversed(KEYS):
        harness.store.put_item(item(key, {"k": key}))
    harness.store.put_item(tomb("bb", tsp(1)))
    harness.settle(phase)
    store = harness.store
    ordered = sorted(KEYS)
    assert [r.key for r in store.scan_items("", None, 100)] == ordered
    assert [r.key for r in store.scan_items("", None, 2)] == ordered[:2]
    assert [r.key for r in store.scan_items("b", "d", 100)] == ["b", "c", "c\x00"]
    assert [r.key for r in store.scan_items("c\x00", None, 2)] == ["c\x00", "d"]
    assert [r.key for r in store.scan_items("d", "c", 100)] == []
    assert [r.key for r in store.scan_items("é", None, 100)] == ["é", "\U0001f600"]
    assert store.scan_items("", None, 0) == []
    assert store.scan_items("a", "b", 5) == [item("a", {"k": "a"})]


@pytest.mark.parametrize("phase", PHASES)
def test_intents(harness: Harness, phase: str) -> None:
    t1, t2, t3 = TXNS
    stored = [
        intent("d", t1, 30, delete("d")),
        intent("b", t1, 10, check("b", Exists(expected=False))),
        intent("a", t2, 10, add("a", ("n",), 5)),
        intent("c", t1, 20),
        intent("é", t2, 5),
    ]
    for i in stored:
        harness.store.put_intent(i)
    harness.store.put_intent(intent("gone", t3, 1))
    harness.store.delete_intent("gone")
    harness.settle(phase)
    store = harness.store
    for i in stored:
        assert store.get_intent(i.key) == i
    assert store.get_intent("gone") is None
    assert [i.key for i in store.intents_of(t1)] == ["b", "c", "d"]
    assert [i.key for i in store.intents_of(t2)] == ["a", "é"]
    assert store.intents_of(t3) == []
    assert [i.key for i in store.intents_created_before(100, 100)] == ["é", "a", "b", "c", "d"]
    assert [i.key for i in store.intents_created_before(20, 100)] == ["é", "a", "b"]
    assert [i.key for i in store.intents_created_before(100, 2)] == ["é", "a"]
    assert store.intents_created_before(5, 100) == []
    assert store.intent_count() == 5


@pytest.mark.parametrize("phase", PHASES)
def test_meta(harness: Harness, phase: str) -> None:
    assert harness.store.get_meta() == PartitionMeta()
    meta = PartitionMeta(max_delete_ts=Timestamp(U64, 1, U64), max_deleted_version=(1 << 63) - 1)
    harness.store.put_meta(PartitionMeta(max_delete_ts=tsp(1), max_deleted_version=1))
    harness.store.put_meta(meta)
    harness.settle(phase)
    assert harness.store.get_meta() == meta


@pytest.mark.parametrize("phase", PHASES)
def test_ledger(harness: Harness, phase: str) -> None:
    t1, t2, t3 = TXNS
    t4, t5 = TxnId("e" * 32), TxnId("d" * 32)
    records = [
        record(t1, 30),
        record(t2, 10),
        record(t3, 20, completed_us=50),
        record(t4, 5, completed_us=41),
        record(t5, 20, completed_us=50),
    ]
    for r in records:
        harness.store.put_ledger(r)
    harness.store.put_ledger(record(TxnId("c" * 32), 1))
    harness.store.delete_ledger(TxnId("c" * 32))
    harness.settle(phase)
    store = harness.store
    for r in records:
        assert store.get_ledger(r.txn_id) == r
    assert store.get_ledger(TxnId("c" * 32)) is None
    assert [r.txn_id for r in store.open_ledger_records(10)] == [t2, t1]
    assert [r.txn_id for r in store.open_ledger_records(1)] == [t2]
    assert [r.txn_id for r in store.ledger_completed_before(51, 10)] == [t4, t3, t5]
    assert [r.txn_id for r in store.ledger_completed_before(50, 10)] == [t4]
    assert [r.txn_id for r in store.ledger_completed_before(51, 2)] == [t4, t3]
    assert store.ledger_completed_before(41, 10) == []


@pytest.mark.parametrize("phase", PHASES)
def test_tokens(harness: Harness, phase: str) -> None:
    rows = [token("tok-b", TXNS[0], 20), token("tok-a", TXNS[1], 10), token("tok c", TXNS[2], 30)]
    for row in rows:
        harness.store.put_token(row)
    harness.store.put_token(token("tok-gone", TXNS[0], 1))
    harness.store.delete_token("tok-gone")
    harness.settle(phase)
    store = harness.store
    for row in rows:
        assert store.get_token(row.token) == row
    assert store.get_token("tok-gone") is None
    assert [t.token for t in store.tokens_created_before(31, 10)] == ["tok-a", "tok-b", "tok c"]
    assert [t.token for t in store.tokens_created_before(30, 10)] == ["tok-a", "tok-b"]
    assert [t.token for t in store.tokens_created_before(31, 1)] == ["tok-a"]
    assert store.tokens_created_before(10, 10) == []


def test_node_stores_implement_the_protocols(node: Any) -> None:
    store: NodeStore = node
    view: PartitionStore = store.partition(P0)
    assert store.partitions == PARTS
    assert store.partition(P0) is view, "one view per partition"
    view.commit()  # nothing to write: a no-op
    assert node.flushes == 0
    with pytest.raises(KeyError, match="partition 2 is not in this store"):
        store.partition(P2)


# --- two partitions of one node store --------------------------------------------------------


def write_partition(store: PartitionStore, tag: str, created_us: int) -> None:
    """The same keys, transactions and tokens in every partition, with different rows."""
    for key in ("a", "b", "é"):
        store.put_item(item(key, {"tag": tag}, write=tsp(created_us)))
    store.put_item(tomb("t-" + tag, write=tsp(created_us)))
    store.put_intent(intent("a", TXNS[0], created_us))
    store.put_intent(intent("i-" + tag, TXNS[1], created_us))
    store.put_ledger(record(TXNS[0], created_us))
    store.put_ledger(record(TXNS[1], created_us, completed_us=created_us + 2))
    store.put_token(token("tok-a", TXNS[0], created_us))
    store.put_meta(PartitionMeta(max_delete_ts=tsp(created_us), max_deleted_version=created_us))


@pytest.mark.parametrize("phase", PHASES)
def test_partitions_never_see_each_others_rows(harness: Harness, phase: str) -> None:
    models = {P0: Model(), P1: Model()}
    for pid, tag, created in ((P0, "zero", 2), (P1, "one", 4)):
        for store in (models[pid], harness.node.partition(pid)):
            write_partition(store, tag, created)
    models[P1].delete_item("b")  # a deletion in one partition only
    harness.other.delete_item("b")
    harness.settle(phase)
    universe = Universe(keys=(*KEYS, "t-zero", "t-one", "i-zero", "i-one"))
    for pid in PARTS:
        assert_same_answers(models[pid], harness.node.partition(pid), universe)
    assert harness.store.get_item("b") == item("b", {"tag": "zero"}, write=tsp(2))
    assert harness.other.get_item("b") is None
    assert [r.key for r in harness.other.tombstones(10)] == ["t-one"]
    assert [i.key for i in harness.store.intents_of(TXNS[1])] == ["i-zero"]
    assert harness.other.get_meta().max_deleted_version == 4
    assert harness.store.item_count() == 3 and harness.other.item_count() == 2


def test_one_job_carries_every_partition_and_empty_partitions_are_left_out(node: Any) -> None:
    node.partition(P0).put_item(item("a", 0))
    node.partition(P1).delete_item("b")
    node.partition(P1).put_meta(PartitionMeta(max_delete_ts=tsp(1), max_deleted_version=1))
    assert node.dirty and node.pending_writes == 3
    job = node.begin_flush()
    assert job is not None and job.rows == 3
    assert job.batch == {
        P0: PartitionBatch(items={"a": item("a", 0)}, intents={}, ledger={}, tokens={}, meta=None),
        P1: PartitionBatch(
            items={"b": None},
            intents={},
            ledger={},
            tokens={},
            meta=PartitionMeta(max_delete_ts=tsp(1), max_deleted_version=1),
        ),
    }
    node.partition(P0).put_item(item("c", 1))  # the next batch: P0 only
    job.run()
    node.end_flush(job)
    job = node.begin_flush()
    assert job is not None and list(job.batch) == [P0]
    job.run()
    node.end_flush(job)


# --- overlays over durable rows -------------------------------------------------------------


def write_base(store: PartitionStore) -> None:
    t1, t2, t3 = TXNS
    for i, key in enumerate(("a", "b", "c", "d", "é")):
        store.put_item(item(key, {"base": key}, version=i + 1, write=tsp(i + 1)))
    store.put_item(tomb("c\x00", write=tsp(20)))
    store.put_item(tomb("\U0001f600", write=tsp(10), read=tsp(30)))
    store.put_intent(intent("a", t1, 1))
    store.put_intent(intent("b", t1, 3))
    store.put_intent(intent("c", t2, 2))
    store.put_ledger(record(t1, 1))
    store.put_ledger(record(t2, 2, completed_us=3))
    store.put_ledger(record(t3, 3, completed_us=2))
    store.put_token(token("tok-a", t1, 1))
    store.put_token(token("tok-b", t2, 3))
    store.put_meta(PartitionMeta(max_delete_ts=tsp(1), max_deleted_version=1))


def write_changes(store: PartitionStore) -> None:
    t1, t2, t3 = TXNS
    store.put_item(item("a", {"new": 1}, version=9, write=tsp(40)))  # overwrite
    store.delete_item("b")  # delete a live row
    store.put_item(tomb("c", write=tsp(5)))  # live -> tombstone, now the oldest
    store.delete_item("c\x00")  # delete a tombstone
    store.put_item(item("\U0001f600", "back", write=tsp(31)))  # tombstone -> live
    store.put_item(item("bb", "new key"))
    store.delete_item("never")
    store.delete_intent("a")
    store.put_intent(intent("b", t2, 0))  # over a stored intent: another txn, older
    store.put_intent(intent("d", t1, 5))
    store.delete_intent("never")
    store.put_ledger(record(t1, 1, completed_us=1))  # open -> completed
    store.delete_ledger(t3)
    store.put_ledger(record(TxnId("f" * 32), 0))
    store.delete_token("tok-a")
    store.put_token(token("tok c", t3, 0))
    store.put_meta(PartitionMeta(max_delete_ts=tsp(2), max_deleted_version=2))


def check_changed(store: PartitionStore) -> None:
    t1, t2, _ = TXNS
    assert store.get_item("a") == item("a", {"new": 1}, version=9, write=tsp(40))
    assert store.get_item("b") is None
    assert store.get_item("c\x00") is None
    assert [r.key for r in store.scan_items("", None, 10)] == ["a", "bb", "d", "é", "\U0001f600"]
    assert [r.key for r in store.scan_items("", None, 2)] == ["a", "bb"]
    assert [r.key for r in store.scan_items("b", "e", 10)] == ["bb", "d"]
    assert [r.key for r in store.tombstones(10)] == ["c"]
    assert store.get_intent("a") is None
    assert [i.key for i in store.intents_of(t1)] == ["d"]
    assert [i.key for i in store.intents_of(t2)] == ["b", "c"]
    assert [i.key for i in store.intents_created_before(10, 10)] == ["b", "c", "d"]
    assert [i.key for i in store.intents_created_before(10, 1)] == ["b"]
    assert store.intent_count() == 3
    assert [r.txn_id for r in store.open_ledger_records(10)] == [TxnId("f" * 32)]
    assert [r.txn_id for r in store.ledger_completed_before(10, 10)] == [t1, t2]
    assert store.get_ledger(TXNS[2]) is None
    assert [t.token for t in store.tokens_created_before(10, 10)] == ["tok c", "tok-b"]
    assert store.get_meta() == PartitionMeta(max_delete_ts=tsp(2), max_deleted_version=2)


@pytest.mark.parametrize("base_phase", ["ended", "reopened"])
@pytest.mark.parametrize("change_phase", PHASES)
def test_overlay_over_database(harness: Harness, base_phase: str, change_phase: str) -> None:
    """Base rows on disk; then changes in the open batch or in a flush job not yet ended."""
    oracle = Model()
    write_base(oracle)
    write_base(harness.store)
    harness.settle(base_phase)
    write_changes(oracle)
    write_changes(harness.store)
    harness.settle(change_phase)
    check_changed(harness.store)
    assert_same_answers(oracle, harness.store)
    # Writes on top of a job in flight land in the open batch, above the job.
    for store in (oracle, harness.store):
        store.put_item(item("a", "newest", version=10))
        store.delete_item("d")
        store.delete_intent("b")
    assert harness.store.get_item("a") == item("a", "newest", version=10)
    assert harness.store.intent_count() == 2
    assert_same_answers(oracle, harness.store)
    harness.finish()
    assert_same_answers(oracle, harness.store)
    harness.settle("reopened")
    oracle.commit()
    assert_same_answers(oracle, harness.store)


def test_intent_count_over_stored_intents(node: Any) -> None:
    store = node.partition(P0)
    for key in ("a", "b", "c"):
        store.put_intent(intent(key, TXNS[0], 1))
    store.commit()
    assert store.intent_count() == 3
    store.put_intent(intent("a", TXNS[1], 2))  # over a stored one: no change
    store.delete_intent("b")
    store.delete_intent("zz")  # never existed
    store.put_intent(intent("d", TXNS[1], 2))
    assert store.intent_count() == 3
    job = node.begin_flush()
    assert job is not None
    store.delete_intent("d")  # above the job
    assert store.intent_count() == 2
    job.run()
    assert store.intent_count() == 2
    node.end_flush(job)
    assert store.intent_count() == 2
    store.commit()
    assert store.intent_count() == 2


def test_reads_never_pin_an_old_snapshot(node: Any) -> None:
    """Each point read and listing runs to its end, so the next read sees the latest flush."""
    store = node.partition(P0)
    for n in range(3):
        store.put_item(item("a", n, version=n + 1))
        store.put_intent(intent("a", TXNS[n], n))
        store.commit()
        assert store.get_item("a") == item("a", n, version=n + 1)
        assert store.scan_items("", None, 1) == [item("a", n, version=n + 1)]
        assert store.get_intent("a") == intent("a", TXNS[n], n)
        assert store.get_item("zz") is None


def test_listing_pages_are_not_starved_by_overlay_deletions(node: Any) -> None:
    store = node.partition(P0)
    for n in range(50):
        store.put_item(item(f"k{n:02d}", n))
        store.put_item(tomb(f"t{n:02d}", write=tsp(n)))
        store.put_token(token(f"tok{n:02d}", TXNS[0], n))
    store.commit()
    for n in range(45):
        store.delete_item(f"k{n:02d}")
        store.delete_item(f"t{n:02d}")
        store.delete_token(f"tok{n:02d}")
    assert [r.key for r in store.scan_items("", None, 3)] == ["k45", "k46", "k47"]
    assert [r.key for r in store.tombstones(3)] == ["t45", "t46", "t47"]
    assert [r.token for r in store.tokens_created_before(100, 3)] == ["tok45", "tok46", "tok47"]


# --- group commit: the flush job's life -----------------------------------------------------


def test_dirty_and_pending_writes(node: Any) -> None:
    store = node.partition(P0)
    assert not node.dirty and node.pending_writes == 0
    assert node.begin_flush() is None
    store.put_item(item("a", 1))
    store.put_item(item("a", 2))  # the same row twice counts once
    store.delete_item("b")
    store.put_intent(intent("a", TXNS[0], 1))
    store.put_ledger(record(TXNS[0], 1))
    store.put_token(token("tok-a", TXNS[0], 1))
    store.put_meta(PartitionMeta())
    node.partition(P1).put_item(item("a", 1))  # the same key in another partition: another row
    assert node.dirty and node.pending_writes == 7
    assert not node.flush_due
    job = node.begin_flush()
    assert job is not None and job.rows == 7
    assert not node.dirty and node.pending_writes == 0
    store.put_item(item("c", 3))
    assert node.dirty and node.pending_writes == 1
    job.run()
    node.end_flush(job)
    assert node.dirty and node.flushes == 1
    node.commit()
    assert not node.dirty and node.flushes == 2


def test_flush_due_at_flush_writes_max(node: Any) -> None:
    for n in range(FLUSH_WRITES_MAX - 1):
        node.partition(PARTS[n % 2]).delete_item(f"k{n}")
    assert not node.flush_due
    node.partition(P0).delete_item("last")
    assert node.flush_due


def test_one_job_at_a_time_and_ended_only_once_durable(node: Any) -> None:
    store = node.partition(P0)
    store.put_item(item("a", 1))
    job = node.begin_flush()
    assert job is not None and node.in_flight is job
    store.put_item(item("b", 2))
    with pytest.raises(RuntimeError, match="in flight"):
        node.begin_flush()
    with pytest.raises(RuntimeError, match="in flight"):
        store.commit()
    with pytest.raises(RuntimeError, match="before the job ran"):
        node.end_flush(job)
    job.stage()
    job.run()
    job.run()  # a job already durable: nothing to do
    node.end_flush(job)
    assert node.in_flight is None
    with pytest.raises(RuntimeError, match="not in flight"):
        node.end_flush(job)
    store.commit()
    assert store.get_item("b") == item("b", 2)


def test_close_drops_unflushed_writes(node: Any) -> None:
    store = node.partition(P0)
    store.put_item(item("durable", 1))
    store.commit()
    store.put_item(item("begun", 2))
    assert node.begin_flush() is not None
    store.put_item(item("open", 3))
    node.close()
    node.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        node.begin_flush()


def test_memory_crash_keeps_what_ran_and_drops_the_rest() -> None:
    node = MemoryNodeStore(PARTS)
    store = node.partition(P0)
    store.put_item(item("ran", 1))
    ran = node.begin_flush()
    assert ran is not None
    ran.run()
    node.crash()  # after run, before end_flush: durable
    assert store.get_item("ran") == item("ran", 1)
    store.put_item(item("begun", 2))
    begun = node.begin_flush()
    assert begun is not None
    node.partition(P1).put_item(item("open", 3))
    node.crash()
    assert node.in_flight is None and not node.dirty
    assert store.get_item("begun") is None
    assert node.partition(P1).get_item("open") is None
    with pytest.raises(RuntimeError, match="crashed before this job ran"):
        begun.run()
    assert store.get_item("begun") is None
    store.put_item(item("after", 4))  # the views stay valid
    node.commit()
    assert store.get_item("after") == item("after", 4)


def test_memory_store_is_one_partition_with_commit_and_crash() -> None:
    store = MemoryStore()
    store.put_item(item("a", 1))
    store.commit()
    store.put_item(item("b", 2))
    store.crash()
    assert store.get_item("a") == item("a", 1)
    assert store.get_item("b") is None
    assert store.commits == 1
    assert store.node.partitions == (P0,)


# --- SQLite: the file, threads, failures ------------------------------------------------------


def test_sqlite_close_keeps_durable_writes_only(tmp_path: Path) -> None:
    node = SqliteNodeStore.open(tmp_path, PARTS)
    node.partition(P0).put_item(item("durable", 1))
    node.partition(P1).put_item(item("durable", 2))
    node.commit()
    node.partition(P0).put_item(item("begun", 2))
    begun = node.begin_flush()
    assert begun is not None
    node.partition(P1).put_item(item("open", 3))
    node.close()
    with pytest.raises(RuntimeError, match="closed"):
        begun.run()
    with SqliteNodeStore.open(tmp_path, PARTS) as again:
        assert again.partition(P0).get_item("durable") == item("durable", 1)
        assert again.partition(P1).get_item("durable") == item("durable", 2)
        assert again.partition(P0).get_item("begun") is None
        assert again.partition(P1).get_item("open") is None


def test_one_flush_job_is_one_transaction_for_every_partition(tmp_path: Path) -> None:
    with SqliteNodeStore.open(tmp_path, (P0, P1, P2)) as node:
        statements: list[str] = []
        node._writer.set_trace_callback(statements.append)
        for n, pid in enumerate((P0, P1, P2)):
            view = node.partition(pid)
            view.put_item(item("k", n))
            view.put_item(tomb("t", write=tsp(n)))
            view.put_intent(intent("k", TXNS[n], n))
            view.put_ledger(record(TXNS[n], n))
            view.put_token(token("tok-a", TXNS[n], n))
            view.put_meta(PartitionMeta(max_deleted_version=n))
        node.partition(P1).delete_item("gone")
        job = node.begin_flush()
        assert job is not None and set(job.batch) == {P0, P1, P2} and job.rows == 19
        job.run()
        node.end_flush(job)
        node._writer.set_trace_callback(None)
        assert [s for s in statements if s in {"BEGIN IMMEDIATE", "COMMIT"}] == [
            "BEGIN IMMEDIATE",
            "COMMIT",
        ]
        assert len(statements) == 2 + 19, "one statement run per row written"
    other = sqlite3.connect(tmp_path / NODE_DB)
    try:
        for table, count in (("items", 6), ("intents", 3), ("ledger", 3), ("tokens", 3)):
            found = other.execute(f"SELECT partition, count(*) FROM {table} GROUP BY partition")
            assert found.fetchall() == [(p, count // 3) for p in (0, 1, 2)], table
        assert other.execute("SELECT partition FROM meta").fetchall() == [(0,), (1,), (2,)]
    finally:
        other.close()


def test_job_runs_on_another_thread(sqlite_node: SqliteNodeStore, tmp_path: Path) -> None:
    sqlite_node.partition(P0).put_item(item("a", 1))
    sqlite_node.partition(P1).put_item(item("b", 2))
    job = sqlite_node.begin_flush()
    assert job is not None
    job.stage()  # on this thread, then the commit on another
    with ThreadPoolExecutor(max_workers=1) as flusher:
        flusher.submit(job.run).result(timeout=30)
    assert job.commit_s > 0
    other = sqlite3.connect(tmp_path / NODE_DB)
    try:  # committed: visible to another reader
        found = other.execute("SELECT partition, key FROM items ORDER BY partition").fetchall()
        assert found == [(0, "a"), (1, "b")]
    finally:
        other.close()
    sqlite_node.end_flush(job)
    assert sqlite_node.partition(P0).get_item("a") == item("a", 1)


def test_failed_run_rolls_back_keeps_the_overlay_and_may_be_retried(
    sqlite_node: SqliteNodeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = sqlite_node
    store = node.partition(P0)
    store.put_item(item("base", 0))
    node.commit()
    store.put_item(item("a", 1))  # written before the intents in the job's transaction
    node.partition(P1).put_item(item("p1", 1))
    store.delete_item("base")
    store.put_intent(intent("x", TXNS[0], 1))
    real = sqlite_schema.intent_params
    failures = [OSError("disk on fire")]

    def failing(pid: PartitionId, i: Intent) -> tuple[object, ...]:
        if failures:
            raise failures.pop()
        return real(pid, i)

    monkeypatch.setattr(sqlite_schema, "intent_params", failing)
    job = node.begin_flush()
    assert job is not None
    with pytest.raises(OSError, match="disk on fire"):
        job.run()
    assert not job.durable
    other = sqlite3.connect(tmp_path / NODE_DB)
    try:  # nothing of the job reached the file
        assert other.execute("SELECT key FROM items").fetchall() == [("base",)]
    finally:
        other.close()
    assert store.get_item("a") == item("a", 1), "the job's rows stay visible"
    assert node.partition(P1).get_item("p1") == item("p1", 1)
    assert store.get_item("base") is None
    assert store.intent_count() == 1
    with pytest.raises(RuntimeError):
        node.end_flush(job)
    job.run()
    node.end_flush(job)
    node.close()
    with SqliteNodeStore.open(tmp_path, PARTS) as again:
        assert again.partition(P0).get_item("a") == item("a", 1)
        assert again.partition(P1).get_item("p1") == item("p1", 1)
        assert again.partition(P0).get_item("base") is None
        assert again.partition(P0).get_intent("x") == intent("x", TXNS[0], 1)


def test_close_waits_for_a_job_running_on_another_thread(tmp_path: Path) -> None:
    node = SqliteNodeStore.open(tmp_path, PARTS)
    for n in range(2000):
        node.partition(PARTS[n % 2]).put_item(item(f"k{n:05d}", "x" * 100))
    job = node.begin_flush()
    assert job is not None
    started = threading.Event()

    def run() -> None:
        started.set()
        job.run()

    with ThreadPoolExecutor(max_workers=1) as flusher:
        future = flusher.submit(run)
        started.wait(timeout=30)
        node.close()
        future.result(timeout=30)
    with SqliteNodeStore.open(tmp_path, PARTS) as again:
        found = sum(len(again.partition(p).scan_items("", None, 5000)) for p in PARTS)
        assert found == 2000


def test_file_is_wal_with_full_sync_versioned_and_private(
    sqlite_node: SqliteNodeStore, tmp_path: Path
) -> None:
    assert sqlite_node._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    path = tmp_path / NODE_DB
    assert path.stat().st_mode & 0o777 == 0o600
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    finally:
        other.close()
    assert sqlite_node.migrated_files == () and sqlite_node.deleted_files == ()
    normal_dir = tmp_path / "normal"
    normal_dir.mkdir()
    with SqliteNodeStore.open(normal_dir, PARTS, synchronous_full=False) as normal:
        assert normal._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_indexes_serve_every_listing(sqlite_node: SqliteNodeStore) -> None:
    """No listing sorts in a temporary b-tree or scans another partition's rows."""
    conn = sqlite_node._reader
    sql_ = sqlite_schema.Sql
    for sql, params in (
        (sql_.TOMBSTONES, (0, 10)),
        (sql_.SCAN_FROM, (0, "a", 10)),
        (sql_.SCAN_RANGE, (0, "a", "b", 10)),
        (sql_.LEDGER_OPEN, (0, 10)),
        (sql_.LEDGER_COMPLETED_BEFORE, (0, 5, 10)),
        (sql_.TOKENS_BEFORE, (0, 5, 10)),
        (sql_.ALL_INTENTS, (0,)),
        (sql_.COUNT_LIVE_ITEMS, (0,)),
    ):
        plan = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        assert all(line.startswith("SEARCH") and "partition=?" in line for line in plan), plan
        assert not any("TEMP B-TREE" in line for line in plan), plan


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    SqliteNodeStore.open(tmp_path, PARTS).close()
    conn = sqlite3.connect(tmp_path / NODE_DB)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaError, match=r"schema version 99.*only version 5"):
        SqliteNodeStore.open(tmp_path, PARTS)


def test_version_3_gains_the_replication_position_in_place(tmp_path: Path) -> None:
    store = SqliteNodeStore.open(tmp_path, PARTS)
    store.partition(P1).put_meta(PartitionMeta(max_delete_ts=tsp(3), max_deleted_version=3))
    store.commit()
    store.close()
    conn = sqlite3.connect(tmp_path / NODE_DB)
    for column in ("epoch", "seq", "promised", "read_floor", "max_write_ts"):
        conn.execute(f"ALTER TABLE meta DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    store = SqliteNodeStore.open(tmp_path, PARTS)
    try:
        view = store.partition(P1)
        assert view.get_meta() == PartitionMeta(max_delete_ts=tsp(3), max_deleted_version=3)
        view.put_meta(replace(view.get_meta(), epoch=2, seq=7, promised=3))
        store.commit()
    finally:
        store.close()
    store = SqliteNodeStore.open(tmp_path, PARTS)
    try:
        assert store.partition(P1).get_meta().seq == 7
    finally:
        store.close()


def test_version_4_gains_the_read_floor_and_largest_write_in_place(tmp_path: Path) -> None:
    store = SqliteNodeStore.open(tmp_path, PARTS)
    store.partition(P1).put_meta(PartitionMeta(max_delete_ts=tsp(3), epoch=2, seq=5))
    store.commit()
    store.close()
    conn = sqlite3.connect(tmp_path / NODE_DB)
    for column in ("read_floor", "max_write_ts"):
        conn.execute(f"ALTER TABLE meta DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    store = SqliteNodeStore.open(tmp_path, PARTS)
    try:
        view = store.partition(P1)
        assert view.get_meta() == PartitionMeta(max_delete_ts=tsp(3), epoch=2, seq=5)
        view.put_meta(replace(view.get_meta(), read_floor=tsp(9), max_write_ts=tsp(8)))
        store.commit()
    finally:
        store.close()
    store = SqliteNodeStore.open(tmp_path, PARTS)
    try:
        meta = store.partition(P1).get_meta()
        assert (meta.read_floor, meta.max_write_ts, meta.seq) == (tsp(9), tsp(8), 5)
    finally:
        store.close()


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / NODE_DB)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="not a kvstore node database"):
        SqliteNodeStore.open(tmp_path, PARTS)


# --- random operation sequences against the model --------------------------------------------

timestamps = st.builds(
    Timestamp,
    st.sampled_from([0, 1, 2, (1 << 63) - 1, 1 << 63, U64]),
    st.sampled_from([0, 1, U64]),
    st.sampled_from([0, 1, 1 << 63, U64]),
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), U64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
    | st.binary(max_size=4)
)
values: st.SearchStrategy[Value] = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
keys = st.sampled_from(KEYS)
txns = st.sampled_from(TXNS)
small_us = st.integers(0, 5)
parts = st.sampled_from(PARTS)
ops = st.builds(
    lambda kind, key, value: {
        "put": put(key, value),
        "delete": delete(key, Exists(expected=True)),
        "check": check(key),
        "add": add(key, ("n",), 2),
    }[kind],
    st.sampled_from(["put", "delete", "check", "add"]),
    keys,
    values,
)


class StoreComparison(RuleBasedStateMachine):
    """Random writes to two partitions of both node stores and of their models; every answer
    compared after every step. Flush moves go to both node stores at once (their batches must be
    equal) and to the models (``begin`` / ``ran``); a crash is a crash of the memory store and a
    close and reopen of the SQLite file, and the models go back to their durable state."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="kvstore-contract-"))
        self.models = {pid: Model() for pid in PARTS}
        self.mem = MemoryNodeStore(PARTS)
        self.sql = SqliteNodeStore.open(self.dir, PARTS, synchronous_full=False)
        self.jobs: tuple[FlushJob, FlushJob] | None = None

    def teardown(self) -> None:
        self.sql.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def stores(self, pid: PartitionId) -> tuple[PartitionStore, ...]:
        return (self.models[pid], self.mem.partition(pid), self.sql.partition(pid))

    @rule(
        pid=parts,
        key=keys,
        exists=st.booleans(),
        value=values,
        version=st.integers(0, (1 << 63) - 1),
        write=timestamps,
        read=timestamps,
    )
    def put_item(
        self,
        *,
        pid: PartitionId,
        key: str,
        exists: bool,
        value: Value,
        version: int,
        write: Timestamp,
        read: Timestamp,
    ) -> None:
        row = ItemRow(
            key=key, exists=exists, value=value, version=version, write_ts=write, read_ts=read
        )
        for store in self.stores(pid):
            store.put_item(row)

    @rule(pid=parts, key=keys)
    def delete_item(self, pid: PartitionId, key: str) -> None:
        for store in self.stores(pid):
            store.delete_item(key)

    @rule(
        pid=parts,
        key=keys,
        txn=txns,
        ts=timestamps,
        op=ops,
        new_exists=st.booleans(),
        new_value=values,
        created_us=small_us,
    )
    def put_intent(
        self,
        *,
        pid: PartitionId,
        key: str,
        txn: TxnId,
        ts: Timestamp,
        op: Op,
        new_exists: bool,
        new_value: Value,
        created_us: int,
    ) -> None:
        i = Intent(
            key=key,
            txn_id=txn,
            ts=ts,
            op=op,
            new_exists=new_exists,
            new_value=new_value,
            anchor=PartitionId(created_us),
            created_us=created_us,
        )
        for store in self.stores(pid):
            store.put_intent(i)

    @rule(pid=parts, key=keys)
    def delete_intent(self, pid: PartitionId, key: str) -> None:
        for store in self.stores(pid):
            store.delete_intent(key)

    @rule(pid=parts, txn=txns, created_us=small_us, completed_us=st.none() | small_us)
    def put_ledger(
        self, pid: PartitionId, txn: TxnId, created_us: int, completed_us: int | None
    ) -> None:
        for store in self.stores(pid):
            store.put_ledger(record(txn, created_us, completed_us))

    @rule(pid=parts, txn=txns)
    def delete_ledger(self, pid: PartitionId, txn: TxnId) -> None:
        for store in self.stores(pid):
            store.delete_ledger(txn)

    @rule(pid=parts, name=st.sampled_from(TOKENS), txn=txns, created_us=small_us)
    def put_token(self, pid: PartitionId, name: str, txn: TxnId, created_us: int) -> None:
        for store in self.stores(pid):
            store.put_token(token(name, txn, created_us))

    @rule(pid=parts, name=st.sampled_from(TOKENS))
    def delete_token(self, pid: PartitionId, name: str) -> None:
        for store in self.stores(pid):
            store.delete_token(name)

    @rule(pid=parts, ts=timestamps, version=st.integers(0, 100))
    def put_meta(self, pid: PartitionId, ts: Timestamp, version: int) -> None:
        for store in self.stores(pid):
            store.put_meta(PartitionMeta(max_delete_ts=ts, max_deleted_version=version))

    @precondition(lambda self: self.jobs is None)
    @rule()
    def begin_flush(self) -> None:
        mem, sql = self.mem.begin_flush(), self.sql.begin_flush()
        for model in self.models.values():
            model.begin()
        if mem is None or sql is None:
            assert mem is None and sql is None
            for model in self.models.values():
                model.ran()
            return
        assert mem.batch == sql.batch and mem.rows == sql.rows
        self.jobs = (mem, sql)

    @precondition(lambda self: self.jobs is not None and not self.jobs[0].durable)
    @rule(stage=st.booleans())
    def run_jobs(self, stage: bool) -> None:
        assert self.jobs is not None
        for job in self.jobs:
            if stage:
                job.stage()
            job.run()
        for model in self.models.values():
            model.ran()

    @precondition(lambda self: self.jobs is not None and self.jobs[0].durable)
    @rule()
    def end_flush(self) -> None:
        assert self.jobs is not None
        self.mem.end_flush(self.jobs[0])
        self.sql.end_flush(self.jobs[1])
        self.jobs = None

    @precondition(lambda self: self.jobs is None)
    @rule()
    def commit(self) -> None:
        self.mem.commit()
        self.sql.commit()
        for model in self.models.values():
            model.commit()

    @rule()
    def crash(self) -> None:
        self.mem.crash()
        self.sql.close()
        self.sql = SqliteNodeStore.open(self.dir, PARTS, synchronous_full=False)
        for model in self.models.values():
            model.crash()
        self.jobs = None

    @invariant()
    def same_answers(self) -> None:
        assert (self.mem.dirty, self.mem.pending_writes) == (
            self.sql.dirty,
            self.sql.pending_writes,
        )
        for pid in PARTS:
            want = observe(self.models[pid], Universe())
            assert observe(self.mem.partition(pid), Universe()) == want
            assert observe(self.sql.partition(pid), Universe()) == want


StoreComparison.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_random_operations_match_the_model = StoreComparison.TestCase


# --- a partition core on each store ---------------------------------------------------------

CORE_KEYS = ("k0", "k1", "k2", "k3", "k4", "k5")
CORE_CONFIG = PartitionConfig(
    intent_stale_ms=20,
    ledger_decision_deadline_ms=60,
    ledger_retention_ms=150,
    idempotency_window_ms=150,
    tombstone_retention_ms=40,
)


class CoreTwins:
    """Partition cores of ``P0`` and ``P1`` on the models and on views of both node stores, fed
    identically; each step goes to one partition."""

    def __init__(self, data_dir: Path, rng: random.Random) -> None:
        self.data_dir = data_dir
        self.rng = rng
        self.models = {pid: Model() for pid in PARTS}
        self.mem = MemoryNodeStore(PARTS)
        self.sql = SqliteNodeStore.open(data_dir, PARTS, synchronous_full=False)
        self.cores = self._cores()
        self.jobs: tuple[FlushJob, FlushJob] | None = None
        self.now_us = 1_000_000
        self.serial = 0
        self.txns: list[TxnId] = []

    def _cores(self) -> dict[PartitionId, tuple[PartitionCore, ...]]:
        return {
            pid: tuple(
                PartitionCore(pid, store, CORE_CONFIG)
                for store in (self.models[pid], self.mem.partition(pid), self.sql.partition(pid))
            )
            for pid in PARTS
        }

    def views(self, pid: PartitionId) -> tuple[PartitionStore, PartitionStore]:
        return (self.mem.partition(pid), self.sql.partition(pid))

    def close(self) -> None:
        self.sql.close()

    def handle(self, request: Request) -> None:
        node_ts = Timestamp(self.now_us, 0, 1 << 40)
        model, mem, sql = (
            core.handle(request, self.now_us, node_ts) for core in self.cores[request.partition]
        )
        assert mem == model, request
        assert sql == model, request

    def maintain(self) -> None:
        for cores in self.cores.values():
            model, mem, sql = (core.maintain(self.now_us) for core in cores)
            assert mem == model
            assert sql == model

    def new_txn(self) -> TxnId:
        self.serial += 1
        txn = TxnId(f"{self.serial:032x}")
        self.txns.append(txn)
        return txn

    def known_txn(self) -> TxnId:
        return self.rng.choice(self.txns) if self.txns else self.new_txn()

    def stamp(self) -> Timestamp:
        self.serial += 1
        return Timestamp(self.now_us + self.rng.randint(-30_000, 3_000), 0, self.serial)

    def ops(self) -> tuple[Op, ...]:
        rng = self.rng
        chosen = rng.sample(CORE_KEYS, rng.randint(1, 3))
        out = []
        for key in chosen:
            cond = rng.choice([None, None, Exists(expected=True), Exists(expected=False)])
            match rng.randrange(4):
                case 0:
                    out.append(put(key, {"n": rng.randint(0, 9), "b": b"\x01"}, cond))
                case 1:
                    out.append(delete(key, cond))
                case 2:
                    out.append(check(key, cond or Exists(expected=True)))
                case _:
                    out.append(add(key, ("n",), 1, cond))
        return tuple(out)

    def token(self) -> str | None:
        return self.rng.choice([None, None, "tok-1", "tok-2", "tok-3"])

    def step(self) -> None:
        rng = self.rng
        pid = rng.choice(PARTS)
        self.now_us += rng.randint(0, 8_000)
        choice = rng.randrange(16)
        if choice <= 1:
            anchor = rng.random() < 0.5
            txn = self.new_txn()
            at = self.stamp()
            tok = self.token() if anchor else None
            ledger = None
            if anchor:
                ledger = LedgerRecord(
                    txn_id=txn,
                    ts=at,
                    state=TxnState.PREPARING,
                    participants=(pid, PartitionId(9)),
                    token=tok,
                    fingerprint="fp" if tok else None,
                )
            self.handle(
                PrepareRequest(
                    partition=pid, txn_id=txn, ts=at, ops=self.ops(), anchor=pid, ledger=ledger
                )
            )
        elif choice == 2:
            self.handle(CommitRequest(partition=pid, txn_id=self.known_txn()))
        elif choice == 3:
            self.handle(CancelRequest(partition=pid, txn_id=self.known_txn()))
        elif choice == 4:
            tok = self.token()
            self.handle(
                ExecuteRequest(
                    partition=pid,
                    txn_id=self.new_txn(),
                    ts=self.stamp(),
                    ops=self.ops(),
                    token=tok,
                    fingerprint=rng.choice(["fp", "other"]) if tok else None,
                )
            )
        elif choice == 5:
            decision = rng.choice([TxnState.COMMITTED, TxnState.CANCELLED])
            self.handle(DecideRequest(partition=pid, txn_id=self.known_txn(), decision=decision))
        elif choice == 6:
            txn = self.known_txn() if rng.random() < 0.8 else self.new_txn()
            resolve = rng.random() < 0.5
            self.handle(LedgerLookupRequest(partition=pid, txn_id=txn, resolve=resolve))
        elif choice == 7:
            self.handle(CompleteRequest(partition=pid, txn_id=self.known_txn()))
        elif choice == 8:
            self.handle(TokenLookupRequest(partition=pid, token=rng.choice(["tok-1", "tok-2"])))
        elif choice == 9:
            keys = tuple(rng.sample(CORE_KEYS, rng.randint(1, 4)))
            self.handle(ReadRequest(partition=pid, keys=keys))
            self.handle(GetRequest(partition=pid, key=keys[0]))
        elif choice == 10:
            writes = [op for op in self.ops() if op.kind is not OpKind.CHECK]
            if writes:
                self.handle(WriteRequest(partition=pid, op=writes[0]))
        elif choice == 11:
            start = rng.choice(["", "k2", "k3"])
            end = rng.choice([None, "k4", "k1"])
            self.handle(
                ScanRequest(
                    partition=pid,
                    start=start,
                    end=end,
                    limit=rng.randint(1, 4),
                    reverse=rng.random() < 0.5,
                    bytes_max=rng.choice([0, 0, 1, 40]),
                )
            )
        elif choice == 12:
            self.maintain()
        else:
            self.flush_step()

    def flush_step(self) -> None:
        """Move writes along the path to disk, or crash (and reopen) the stores."""
        rng = self.rng
        move = rng.randrange(5)
        if move == 0 and self.jobs is None:
            jobs = (self.mem.begin_flush(), self.sql.begin_flush())
            for model in self.models.values():
                model.begin()
            if jobs[0] is not None and jobs[1] is not None:
                assert jobs[0].batch == jobs[1].batch
                self.jobs = (jobs[0], jobs[1])
            else:
                assert jobs == (None, None)
                for model in self.models.values():
                    model.ran()
        elif move == 1 and self.jobs is not None and not self.jobs[0].durable:
            for job in self.jobs:
                job.run()
            for model in self.models.values():
                model.ran()
        elif move == 2 and self.jobs is not None and self.jobs[0].durable:
            self.mem.end_flush(self.jobs[0])
            self.sql.end_flush(self.jobs[1])
            self.jobs = None
        elif move == 3 and self.jobs is None:
            self.mem.commit()
            self.sql.commit()
            for model in self.models.values():
                model.commit()
        elif move == 4 and rng.random() < 0.3:  # a crash: what no job ran vanishes everywhere
            self.mem.crash()
            self.sql.close()
            self.sql = SqliteNodeStore.open(self.data_dir, PARTS, synchronous_full=False)
            for model in self.models.values():
                model.crash()
            self.cores = self._cores()
            self.jobs = None


@pytest.mark.parametrize("seed", range(12))
def test_partition_cores_reply_alike_on_the_model_and_both_node_stores(
    tmp_path: Path, seed: int
) -> None:
    twins = CoreTwins(tmp_path, random.Random(seed))
    try:
        for _ in range(400):
            twins.step()
        universe = Universe(
            keys=CORE_KEYS,
            txns=tuple(twins.txns),
            tokens=("tok-1", "tok-2", "tok-3"),
            time_bounds=(0, twins.now_us - 50_000, twins.now_us + 1),
            scan_bounds=(("", None), ("k2", "k4")),
        )
        for pid in PARTS:
            for view in twins.views(pid):
                assert_same_answers(twins.models[pid], view, universe)
        twins.now_us += 10_000_000  # everything expires
        for _ in range(5):
            twins.maintain()
        for pid in PARTS:
            for view in twins.views(pid):
                assert_same_answers(twins.models[pid], view, universe)
                assert view.tombstones(10) == []
    finally:
        twins.close()
