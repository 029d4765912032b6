"""The ``PartitionStore`` contract, run over ``MemoryStore`` and ``SqliteStore``.

Three layers of evidence that the SQLite engine answers exactly as the reference does:

* scenario tests of every Protocol method, parametrized over both stores and over where the data
  sits on its way to disk (open batch, a flush job begun, run, ended, the file reopened), and
  scenarios of overlays over the database (overwrites and deletions in the open batch and in a
  flush job that has not ended);
* a Hypothesis state machine of random writes to every table, interleaved with ``begin_flush`` /
  ``run`` / ``end_flush``, ``commit`` and close-and-reopen, comparing every read and listing with a
  ``MemoryStore`` after each step;
* a real ``PartitionCore`` on each store, driven by the same random requests: identical replies.

``MemoryStore`` orders ties of ``tombstones`` (equal ``max(write_ts, read_ts)``) and of
``tokens_created_before`` (equal ``created_us``) by set iteration, so those two listings are
compared up to the order within a tie; ``SqliteStore`` must order ties by key.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
from kvstore.storage_node.sqlite_store import FlushJob, SchemaError, SqliteStore
from kvstore.storage_node.store import (
    Intent,
    ItemRow,
    MemoryStore,
    PartitionMeta,
    PartitionStore,
    TokenRow,
)
from kvstore.types import TIMESTAMP_ZERO, PartitionId, Timestamp, TxnId, Value

T = TypeVar("T")
U64 = (1 << 64) - 1

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


# --- comparing two stores -------------------------------------------------------------------


def rank_tomb(row: ItemRow) -> Timestamp:
    return max(row.write_ts, row.read_ts)


def rank_token(row: TokenRow) -> int:
    return row.created_us


def name_of(row: ItemRow | TokenRow) -> str:
    return row.key if isinstance(row, ItemRow) else row.token


def assert_same_up_to_ties(
    got: Sequence[T],
    want: Sequence[T],
    full: Sequence[T],
    rank: Callable[[T], Any],
    name: Callable[[T], str],
) -> None:
    """Equal ranks in order; equal rows but within the last (possibly cut) tie group, whose rows
    need only belong to the complete listing ``full``."""
    assert [rank(row) for row in got] == [rank(row) for row in want]
    if not got:
        return
    last = rank(got[-1])
    assert sorted((r for r in got if rank(r) != last), key=name) == sorted(
        (r for r in want if rank(r) != last), key=name
    )
    assert all(row in full for row in got if rank(row) == last)


@dataclass(frozen=True)
class Universe:
    """What a comparison reads back: these keys, transactions and tokens, listings at these
    bounds."""

    keys: Sequence[str] = KEYS
    txns: Sequence[TxnId] = TXNS
    tokens: Sequence[str] = TOKENS
    time_bounds: Sequence[int] = TIME_BOUNDS
    scan_bounds: Sequence[tuple[str, str | None]] = SCAN_BOUNDS


def observe_exact(store: PartitionStore, u: Universe) -> dict[str, object]:
    """Everything a store answers that must be identical, element for element."""
    seen: dict[str, object] = {
        "items": [store.get_item(k) for k in u.keys],
        "intents": [store.get_intent(k) for k in u.keys],
        "ledger": [store.get_ledger(t) for t in (*u.txns, TxnId("f" * 32))],
        "tokens": [store.get_token(t) for t in u.tokens],
        "meta": store.get_meta(),
        "intent_count": store.intent_count(),
        "item_count": store.item_count(),
        "intents_of": [store.intents_of(t) for t in u.txns],
    }
    for start, end in u.scan_bounds:
        for limit in LIMITS:
            seen[f"scan {start!r} {end!r} {limit}"] = store.scan_items(start, end, limit)
    for limit in LIMITS:
        seen[f"open ledger {limit}"] = store.open_ledger_records(limit)
        for bound in u.time_bounds:
            seen[f"intents before {bound} {limit}"] = store.intents_created_before(bound, limit)
            seen[f"completed before {bound} {limit}"] = store.ledger_completed_before(bound, limit)
    return seen


def assert_same_answers(
    want: PartitionStore, got: PartitionStore, u: Universe = Universe()
) -> None:
    assert observe_exact(got, u) == observe_exact(want, u)
    everything = 1 << 62
    full_want, full_got = want.tombstones(everything), got.tombstones(everything)
    assert sorted(full_got, key=name_of) == sorted(full_want, key=name_of)
    for limit in LIMITS:
        assert_same_up_to_ties(
            got.tombstones(limit), want.tombstones(limit), full_got, rank_tomb, name_of
        )
        for bound in u.time_bounds:
            assert_same_up_to_ties(
                got.tokens_created_before(bound, limit),
                want.tokens_created_before(bound, limit),
                got.tokens_created_before(bound, everything),
                rank_token,
                name_of,
            )
    if isinstance(got, SqliteStore):  # ties broken by key
        assert full_got == sorted(full_got, key=lambda r: (rank_tomb(r), r.key))
        tokens = got.tokens_created_before(everything, everything)
        assert tokens == sorted(tokens, key=lambda r: (r.created_us, r.token))


# --- a store and the path of its writes to disk ---------------------------------------------

PHASES = ("open", "begun", "ran", "ended", "reopened")


class Harness:
    """A store under test. ``settle(phase)`` moves every write so far to ``phase``: still in the
    open batch, in a flush job begun / run / ended, or ended and the file reopened. For
    ``MemoryStore`` every phase but ``open`` is a commit (plus a crash for ``reopened``)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.store: MemoryStore | SqliteStore = (
            MemoryStore() if kind == "memory" else SqliteStore.open(path)
        )
        self.job: FlushJob | None = None

    def settle(self, phase: str) -> None:
        store = self.store
        if isinstance(store, MemoryStore):
            if phase != "open":
                store.commit()
            if phase == "reopened":
                store.crash()
            return
        if phase == "open":
            return
        self.job = store.begin_flush()
        assert self.job is not None
        if phase in {"ran", "ended", "reopened"}:
            self.job.run()
        if phase in {"ended", "reopened"}:
            self.finish()
        if phase == "reopened":
            self.reopen()

    def finish(self) -> None:
        """End the flush job in flight, running it first if needed."""
        if isinstance(self.store, SqliteStore) and self.job is not None:
            if not self.job.durable:
                self.job.run()
            self.store.end_flush(self.job)
        self.job = None

    def reopen(self) -> None:
        if isinstance(self.store, SqliteStore):
            self.store.close()
            self.store = SqliteStore.open(self.path)
        else:
            self.store.crash()
        self.job = None

    def close(self) -> None:
        if isinstance(self.store, SqliteStore):
            self.store.close()


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def harness(kind: str, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(kind, tmp_path / "p0000.db")
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore.open(tmp_path / "p.db")
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
    assert rows[0].key == "z"
    assert sorted(row.key for row in rows[1:]) == ["a", "b", "c"]
    if harness.kind == "sqlite":
        assert [row.key for row in rows] == ["z", "a", "b", "c"]
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


def test_a_store_is_a_partition_store(sqlite_store: SqliteStore) -> None:
    store: PartitionStore = sqlite_store
    store.commit()  # nothing to write: a no-op
    assert sqlite_store.flushes == 0


# --- overlays over the database -------------------------------------------------------------


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
    oracle = MemoryStore()
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


def test_intent_count_over_stored_intents(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    for key in ("a", "b", "c"):
        store.put_intent(intent(key, TXNS[0], 1))
    store.commit()
    assert store.intent_count() == 3
    store.put_intent(intent("a", TXNS[1], 2))  # over a stored one: no change
    store.delete_intent("b")
    store.delete_intent("zz")  # never existed
    store.put_intent(intent("d", TXNS[1], 2))
    assert store.intent_count() == 3
    job = store.begin_flush()
    assert job is not None
    store.delete_intent("d")  # above the job
    assert store.intent_count() == 2
    job.run()
    assert store.intent_count() == 2
    store.end_flush(job)
    assert store.intent_count() == 2
    store.commit()
    assert store.intent_count() == 2


def test_reads_never_pin_an_old_snapshot(sqlite_store: SqliteStore) -> None:
    """Each point read and listing runs to its end, so the next read sees the latest flush."""
    store = sqlite_store
    for n in range(3):
        store.put_item(item("a", n, version=n + 1))
        store.put_intent(intent("a", TXNS[n], n))
        store.commit()
        assert store.get_item("a") == item("a", n, version=n + 1)
        assert store.scan_items("", None, 1) == [item("a", n, version=n + 1)]
        assert store.get_intent("a") == intent("a", TXNS[n], n)
        assert store.get_item("zz") is None


def test_listing_pages_are_not_starved_by_overlay_deletions(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
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


def test_dirty_and_pending_writes(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    assert not store.dirty and store.pending_writes == 0
    assert store.begin_flush() is None
    store.put_item(item("a", 1))
    store.put_item(item("a", 2))  # the same row twice counts once
    store.delete_item("b")
    store.put_intent(intent("a", TXNS[0], 1))
    store.put_ledger(record(TXNS[0], 1))
    store.put_token(token("tok-a", TXNS[0], 1))
    store.put_meta(PartitionMeta())
    assert store.dirty and store.pending_writes == 6
    assert not store.flush_due
    job = store.begin_flush()
    assert job is not None and job.rows == 6
    assert not store.dirty and store.pending_writes == 0
    store.put_item(item("c", 3))
    assert store.dirty and store.pending_writes == 1
    job.run()
    store.end_flush(job)
    assert store.dirty and store.flushes == 1
    store.commit()
    assert not store.dirty and store.flushes == 2


def test_flush_due_at_flush_writes_max(sqlite_store: SqliteStore) -> None:
    for n in range(FLUSH_WRITES_MAX - 1):
        sqlite_store.delete_item(f"k{n}")
    assert not sqlite_store.flush_due
    sqlite_store.delete_item("last")
    assert sqlite_store.flush_due


def test_one_job_at_a_time_and_ended_only_once_durable(sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    store.put_item(item("a", 1))
    job = store.begin_flush()
    assert job is not None and store.in_flight is job
    store.put_item(item("b", 2))
    with pytest.raises(RuntimeError, match="in flight"):
        store.begin_flush()
    with pytest.raises(RuntimeError, match="in flight"):
        store.commit()
    with pytest.raises(RuntimeError, match="before the job ran"):
        store.end_flush(job)
    job.run()
    store.end_flush(job)
    assert store.in_flight is None
    with pytest.raises(RuntimeError, match="not in flight"):
        store.end_flush(job)
    store.commit()
    assert store.get_item("b") == item("b", 2)


def test_job_runs_on_the_store_executor(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    store = sqlite_store
    store.put_item(item("a", 1))
    job = store.begin_flush()
    assert job is not None
    assert store.executor is store.executor
    store.executor.submit(job.run).result(timeout=30)
    other = sqlite3.connect(tmp_path / "p.db")
    try:  # committed: visible to another reader
        assert other.execute("SELECT key FROM items").fetchall() == [("a",)]
    finally:
        other.close()
    store.end_flush(job)
    assert store.get_item("a") == item("a", 1)


def test_failed_run_rolls_back_keeps_the_overlay_and_may_be_retried(
    sqlite_store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sqlite_store
    store.put_item(item("base", 0))
    store.commit()
    store.put_item(item("a", 1))  # written before the intents in the job's transaction
    store.delete_item("base")
    store.put_intent(intent("x", TXNS[0], 1))
    real = sqlite_schema.intent_params
    failures = [OSError("disk on fire")]

    def failing(i: Intent) -> tuple[object, ...]:
        if failures:
            raise failures.pop()
        return real(i)

    monkeypatch.setattr(sqlite_schema, "intent_params", failing)
    job = store.begin_flush()
    assert job is not None
    with pytest.raises(OSError, match="disk on fire"):
        job.run()
    assert not job.durable
    other = sqlite3.connect(tmp_path / "p.db")
    try:  # nothing of the job reached the file
        assert other.execute("SELECT key FROM items").fetchall() == [("base",)]
    finally:
        other.close()
    assert store.get_item("a") == item("a", 1), "the job's rows stay visible"
    assert store.get_item("base") is None
    assert store.intent_count() == 1
    with pytest.raises(RuntimeError):
        store.end_flush(job)
    job.run()
    store.end_flush(job)
    store.close()
    with SqliteStore.open(tmp_path / "p.db") as again:
        assert again.get_item("a") == item("a", 1)
        assert again.get_item("base") is None
        assert again.get_intent("x") == intent("x", TXNS[0], 1)


def test_close_drops_unflushed_writes_and_keeps_durable_ones(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore.open(path)
    store.put_item(item("durable", 1))
    store.commit()
    store.put_item(item("begun", 2))
    assert store.begin_flush() is not None
    store.put_item(item("open", 3))
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.begin_flush()
    with SqliteStore.open(path) as again:
        assert again.get_item("durable") == item("durable", 1)
        assert again.get_item("begun") is None
        assert again.get_item("open") is None


def test_close_waits_for_a_job_on_the_executor(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore.open(path)
    for n in range(2000):
        store.put_item(item(f"k{n:05d}", "x" * 100))
    job = store.begin_flush()
    assert job is not None
    future = store.executor.submit(job.run)
    store.close()
    assert future.done() and future.exception() is None
    with SqliteStore.open(path) as again:
        assert len(again.scan_items("", None, 5000)) == 2000


def test_file_is_wal_with_full_sync_and_versioned(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    assert sqlite_store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    other = sqlite3.connect(tmp_path / "p.db")
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    finally:
        other.close()


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    SqliteStore.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaError, match=r"schema version 99.*only version 2"):
        SqliteStore.open(path)


def test_version_1_file_is_upgraded_in_place_and_keeps_its_intents(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with SqliteStore.open(path) as store:
        store.put_intent(intent("k", TXNS[0], created_us=5))
        store.commit()
    conn = sqlite3.connect(path)  # make it the version-1 file an older release wrote
    conn.execute("CREATE INDEX intents_by_created ON intents (created_us, key)")
    conn.execute("CREATE INDEX intents_by_txn ON intents (txn_id, key)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with SqliteStore.open(path) as store:
        assert [i.key for i in store.intents_of(TXNS[0])] == ["k"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert not names & {"intents_by_created", "intents_by_txn"}
    finally:
        conn.close()


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="not a kvstore partition database"):
        SqliteStore.open(path)


# --- random operation sequences against MemoryStore ----------------------------------------

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
    """Random writes to both stores; every answer compared after every step. ``MemoryStore``
    commits when a SQLite flush job begins (reads cannot tell), and crashes when the SQLite file
    is closed and reopened; a job not yet run is run before that, so the two stay comparable."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="kvstore-contract-"))
        self.path = self.dir / "p.db"
        self.mem = MemoryStore()
        self.sql = SqliteStore.open(self.path, synchronous_full=False)
        self.job: FlushJob | None = None

    def teardown(self) -> None:
        self.sql.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def both(self) -> tuple[PartitionStore, PartitionStore]:
        return (self.mem, self.sql)

    @rule(
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
        for store in self.both():
            store.put_item(row)

    @rule(key=keys)
    def delete_item(self, key: str) -> None:
        for store in self.both():
            store.delete_item(key)

    @rule(
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
        for store in self.both():
            store.put_intent(i)

    @rule(key=keys)
    def delete_intent(self, key: str) -> None:
        for store in self.both():
            store.delete_intent(key)

    @rule(txn=txns, created_us=small_us, completed_us=st.none() | small_us)
    def put_ledger(self, txn: TxnId, created_us: int, completed_us: int | None) -> None:
        for store in self.both():
            store.put_ledger(record(txn, created_us, completed_us))

    @rule(txn=txns)
    def delete_ledger(self, txn: TxnId) -> None:
        for store in self.both():
            store.delete_ledger(txn)

    @rule(name=st.sampled_from(TOKENS), txn=txns, created_us=small_us)
    def put_token(self, name: str, txn: TxnId, created_us: int) -> None:
        for store in self.both():
            store.put_token(token(name, txn, created_us))

    @rule(name=st.sampled_from(TOKENS))
    def delete_token(self, name: str) -> None:
        for store in self.both():
            store.delete_token(name)

    @rule(ts=timestamps, version=st.integers(0, 100))
    def put_meta(self, ts: Timestamp, version: int) -> None:
        for store in self.both():
            store.put_meta(PartitionMeta(max_delete_ts=ts, max_deleted_version=version))

    @precondition(lambda self: self.job is None)
    @rule()
    def begin_flush(self) -> None:
        self.job = self.sql.begin_flush()
        self.mem.commit()

    @precondition(lambda self: self.job is not None and not self.job.durable)
    @rule()
    def run_job(self) -> None:
        assert self.job is not None
        self.job.run()

    @precondition(lambda self: self.job is not None and self.job.durable)
    @rule()
    def end_flush(self) -> None:
        assert self.job is not None
        self.sql.end_flush(self.job)
        self.job = None

    @precondition(lambda self: self.job is None)
    @rule()
    def commit(self) -> None:
        self.sql.commit()
        self.mem.commit()

    @rule()
    def reopen(self) -> None:
        if self.job is not None and not self.job.durable:
            self.job.run()
        self.sql.close()
        self.mem.crash()
        self.sql = SqliteStore.open(self.path, synchronous_full=False)
        self.job = None

    @invariant()
    def same_answers(self) -> None:
        assert_same_answers(self.mem, self.sql)


StoreComparison.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_random_operations_match_memory_store = StoreComparison.TestCase


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
    """Two partition cores, on a ``MemoryStore`` and on a ``SqliteStore``, fed identically."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        self.path = path
        self.rng = rng
        self.mem = MemoryStore()
        self.sql = SqliteStore.open(path, synchronous_full=False)
        self.cores = self._cores()
        self.job: FlushJob | None = None
        self.now_us = 1_000_000
        self.serial = 0
        self.txns: list[TxnId] = []

    def _cores(self) -> tuple[PartitionCore, PartitionCore]:
        return (
            PartitionCore(P0, self.mem, CORE_CONFIG),
            PartitionCore(P0, self.sql, CORE_CONFIG),
        )

    def close(self) -> None:
        self.sql.close()

    def handle(self, request: Request) -> None:
        node_ts = Timestamp(self.now_us, 0, 1 << 40)
        mem, sql = (core.handle(request, self.now_us, node_ts) for core in self.cores)
        assert sql == mem, request

    def maintain(self) -> None:
        mem, sql = (core.maintain(self.now_us) for core in self.cores)
        assert sql == mem

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
                    participants=(P0, PartitionId(1)),
                    token=tok,
                    fingerprint="fp" if tok else None,
                )
            self.handle(
                PrepareRequest(
                    partition=P0, txn_id=txn, ts=at, ops=self.ops(), anchor=P0, ledger=ledger
                )
            )
        elif choice == 2:
            self.handle(CommitRequest(partition=P0, txn_id=self.known_txn()))
        elif choice == 3:
            self.handle(CancelRequest(partition=P0, txn_id=self.known_txn()))
        elif choice == 4:
            tok = self.token()
            self.handle(
                ExecuteRequest(
                    partition=P0,
                    txn_id=self.new_txn(),
                    ts=self.stamp(),
                    ops=self.ops(),
                    token=tok,
                    fingerprint=rng.choice(["fp", "other"]) if tok else None,
                )
            )
        elif choice == 5:
            decision = rng.choice([TxnState.COMMITTED, TxnState.CANCELLED])
            self.handle(DecideRequest(partition=P0, txn_id=self.known_txn(), decision=decision))
        elif choice == 6:
            txn = self.known_txn() if rng.random() < 0.8 else self.new_txn()
            resolve = rng.random() < 0.5
            self.handle(LedgerLookupRequest(partition=P0, txn_id=txn, resolve=resolve))
        elif choice == 7:
            self.handle(CompleteRequest(partition=P0, txn_id=self.known_txn()))
        elif choice == 8:
            self.handle(TokenLookupRequest(partition=P0, token=rng.choice(["tok-1", "tok-2"])))
        elif choice == 9:
            keys = tuple(rng.sample(CORE_KEYS, rng.randint(1, 4)))
            self.handle(ReadRequest(partition=P0, keys=keys))
            self.handle(GetRequest(partition=P0, key=keys[0]))
        elif choice == 10:
            writes = [op for op in self.ops() if op.kind is not OpKind.CHECK]
            if writes:
                self.handle(WriteRequest(partition=P0, op=writes[0]))
        elif choice == 11:
            start = rng.choice(["", "k2", "k3"])
            end = rng.choice([None, "k4", "k1"])
            self.handle(ScanRequest(partition=P0, start=start, end=end, limit=rng.randint(1, 4)))
        elif choice == 12:
            self.maintain()
        else:
            self.flush_step()

    def flush_step(self) -> None:
        """Move writes along the path to disk, or close and reopen (or crash) the stores."""
        rng = self.rng
        move = rng.randrange(5)
        if move == 0 and self.job is None:
            self.job = self.sql.begin_flush()
            self.mem.commit()
        elif move == 1 and self.job is not None and not self.job.durable:
            self.job.run()
        elif move == 2 and self.job is not None and self.job.durable:
            self.sql.end_flush(self.job)
            self.job = None
        elif move == 3 and self.job is None:
            self.sql.commit()
            self.mem.commit()
        elif move == 4 and rng.random() < 0.3:  # a crash: unflushed writes vanish from both
            if self.job is not None and not self.job.durable:
                self.job.run()
            self.sql.close()
            self.mem.crash()
            self.sql = SqliteStore.open(self.path, synchronous_full=False)
            self.cores = self._cores()
            self.job = None


@pytest.mark.parametrize("seed", range(12))
def test_partition_core_replies_alike_on_both_stores(tmp_path: Path, seed: int) -> None:
    twins = CoreTwins(tmp_path / "p.db", random.Random(seed))
    try:
        for _ in range(400):
            twins.step()
        universe = Universe(
            keys=CORE_KEYS,
            txns=twins.txns,
            tokens=("tok-1", "tok-2", "tok-3"),
            time_bounds=(0, twins.now_us - 50_000, twins.now_us + 1),
            scan_bounds=(("", None), ("k2", "k4")),
        )
        assert_same_answers(twins.mem, twins.sql, universe)
        twins.now_us += 10_000_000  # everything expires
        for _ in range(5):
            twins.maintain()
        assert_same_answers(twins.mem, twins.sql, universe)
        assert twins.sql.tombstones(10) == []
    finally:
        twins.close()
