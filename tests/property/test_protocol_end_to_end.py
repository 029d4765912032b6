"""Coordinator cores and partition cores together, under message loss, duplication, reordering,
coordinator crashes and skewed timestamps; then heal, recover and check.

Checks after healing:
* no intent is left and every ledger record is decided and completed;
* a client told "committed" has a COMMITTED ledger record; one told "cancelled" has not;
* replaying the committed transactions and singleton writes in timestamp order finds every
  condition true at its timestamp and reproduces every key's final existence, value and version;
* every successful read-only transaction saw, per key, a state that existed in that replay, and
  saw each committed transaction's writes to the keys it read all or none (atomic visibility).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from support.network import Network

from kvstore.conditions import Condition, Exists, evaluate
from kvstore.coordinator.core import WriteTxn
from kvstore.coordinator.read import ReadTxn
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.errors import ErrorCode
from kvstore.messages import LedgerLookupRequest, LedgerReply, TxnState, WriteReply, WriteRequest
from kvstore.ops import Op, OpKind, apply_op
from kvstore.storage_node.core import PartitionConfig
from kvstore.types import PartitionId, Timestamp, TxnId, Value
from kvstore.updates import ActionKind, UpdateAction

KEYS = tuple(f"k{i}" for i in range(4))
PARTITIONS = 2
# Tombstones must not fold during a run: the replay numbers versions without the watermark.
# intent_wait_ms=0: the harness delivers one message at a time and expects its answer at once.
CONFIG = PartitionConfig(tombstone_retention_ms=10**9, intent_wait_ms=0)


def partition_of(key: str) -> PartitionId:
    return PartitionId(int(key[1:]) % PARTITIONS)


conditions = st.sampled_from([None, None, Exists(expected=True), Exists(expected=False)])


@st.composite
def ops_strategy(draw: st.DrawFn) -> tuple[Op, ...]:
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    ops = []
    for key in keys:
        kind = draw(st.sampled_from(list(OpKind)))
        cond: Condition | None = draw(conditions)
        if kind is OpKind.CHECK and cond is None:
            cond = Exists(expected=True)
        actions = ()
        if kind is OpKind.UPDATE:
            actions = (UpdateAction(kind=ActionKind.ADD, path=("n",), operand=1),)
        value: Value = {"v": draw(st.integers(0, 99))} if kind is OpKind.PUT else None
        ops.append(Op(kind=kind, key=key, value=value, actions=actions, condition=cond))
    return tuple(ops)


@dataclass
class WriteRecord:
    actor: int
    txn_id: TxnId
    ts: Timestamp
    ops: tuple[Op, ...]


class EndToEnd(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = Network(PARTITIONS, CONFIG)
        self.writes: list[WriteRecord] = []
        self.reads: dict[int, tuple[str, ...]] = {}
        self.singletons: list[tuple[Timestamp, Op]] = []
        self.origin = 0

    @rule(ops=ops_strategy(), skew_us=st.integers(-2_000, 2_000), token=st.booleans())
    def start_write(self, ops: tuple[Op, ...], skew_us: int, token: bool) -> None:
        self.origin += 1
        txn_id = TxnId(f"t{self.origin}")
        ts = Timestamp(self.net.now_us + skew_us, 0, self.origin)
        txn = WriteTxn(
            txn_id,
            ts,
            ops,
            partition_of,
            self.net.now_us,
            token=f"tok{self.origin}" if token else None,
        )
        actor = self.net.start(txn)
        self.writes.append(WriteRecord(actor, txn_id, ts, ops))

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    def start_read(self, keys: list[str]) -> None:
        actor = self.net.start(ReadTxn(keys, partition_of, self.net.now_us))
        self.reads[actor] = tuple(keys)

    @rule(key=st.sampled_from(KEYS), value=st.integers(0, 9), cond=conditions)
    def singleton_put(self, key: str, value: int, cond: Condition | None) -> None:
        op = Op(kind=OpKind.PUT, key=key, value={"s": value}, condition=cond)
        reply = self.net.call(WriteRequest(partition=partition_of(key), op=op))
        assert isinstance(reply, WriteReply)
        if reply.ts is not None:
            self.singletons.append((reply.ts, op))

    @precondition(lambda self: self.net.inflight)
    @rule(index=st.integers(0, 50), times=st.integers(1, 4))
    def deliver(self, index: int, times: int) -> None:
        for _ in range(times):
            if self.net.inflight:
                self.net.deliver(index)

    @precondition(lambda self: self.net.inflight)
    @rule(index=st.integers(0, 50))
    def drop(self, index: int) -> None:
        self.net.drop(index)

    @precondition(lambda self: self.net.inflight)
    @rule(index=st.integers(0, 50))
    def fail(self, index: int) -> None:
        self.net.fail(index)

    @precondition(lambda self: self.net.inflight)
    @rule(index=st.integers(0, 50))
    def duplicate(self, index: int) -> None:
        self.net.duplicate(index)

    @precondition(lambda self: self.writes)
    @rule(which=st.integers(0, 50))
    def crash_coordinator(self, which: int) -> None:
        self.net.crash(self.writes[which % len(self.writes)].actor)

    @rule(dt_ms=st.sampled_from([1, 50, 300, 3_000]))
    def tick(self, dt_ms: int) -> None:
        self.net.tick(dt_ms * 1000)

    def teardown(self) -> None:
        self.net.heal()
        states = self.ledger_states()
        self.check_client_answers(states)
        history = self.check_replay(states)
        self.check_reads(history)

    def ledger_states(self) -> dict[TxnId, TxnState | None]:
        states: dict[TxnId, TxnState | None] = {}
        for w in self.writes:
            anchor = partition_of(w.ops[0].key)
            reply = self.net.call(LedgerLookupRequest(partition=anchor, txn_id=w.txn_id))
            assert isinstance(reply, LedgerReply)
            record = reply.record
            assert record is None or record.state is not TxnState.PREPARING, record
            assert record is None or record.completed_us is not None, record
            states[w.txn_id] = None if record is None else record.state
        return states

    def check_client_answers(self, states: dict[TxnId, TxnState | None]) -> None:
        for w in self.writes:
            result = self.net.results.get(w.actor)
            if result is None:
                continue
            assert isinstance(result, TxnResult)
            if result.committed:
                assert states[w.txn_id] is TxnState.COMMITTED, w
            elif result.error is ErrorCode.TransactionCanceled:
                assert states[w.txn_id] is not TxnState.COMMITTED, w

    def check_replay(
        self, states: dict[TxnId, TxnState | None]
    ) -> dict[str, list[tuple[int, bool, Value, TxnId | None]]]:
        events: list[tuple[Timestamp, tuple[Op, ...], TxnId | None]] = [
            (w.ts, w.ops, w.txn_id) for w in self.writes if states[w.txn_id] is TxnState.COMMITTED
        ]
        events += [(ts, (op,), None) for ts, op in self.singletons]
        events.sort(key=lambda e: e[0])
        history: dict[str, list[tuple[int, bool, Value, TxnId | None]]] = {
            k: [(0, False, None, None)] for k in KEYS
        }
        for ts, ops, txn_id in events:
            for op in ops:
                version, exists, value, _ = history[op.key][-1]
                assert evaluate(op.condition, exists=exists, value=value, version=version), (
                    "a condition is false at its timestamp",
                    ts,
                    op,
                )
            for op in ops:
                version, exists, value, _ = history[op.key][-1]
                if not op.is_write:
                    continue
                new_exists, new_value = apply_op(op, exists=exists, value=value)
                if exists or new_exists:
                    history[op.key].append((version + 1, new_exists, new_value, txn_id))
        for key in KEYS:
            row = self.net.cores[partition_of(key)].store.get_item(key)
            actual = (0, False, None) if row is None else (row.version, row.exists, row.value)
            assert actual == history[key][-1][:3], (key, actual, history[key][-1])
        return history

    def check_reads(self, history: dict[str, list[tuple[int, bool, Value, TxnId | None]]]) -> None:
        writer_version: dict[tuple[TxnId, str], int] = {}
        for key, versions in history.items():
            for version, _, _, writer in versions:
                if writer is not None:
                    writer_version[(writer, key)] = version
        for actor, keys in self.reads.items():
            result = self.net.results.get(actor)
            assert result is not None, "a read-only transaction always answers"
            assert isinstance(result, ReadResult)
            if result.error is not None:
                continue
            seen = {e.key: e.version for e in result.items}
            for entry in result.items:
                states_of_key = [(v, ex, val) for v, ex, val, _ in history[entry.key]]
                assert (entry.version, entry.exists, entry.value) in states_of_key, entry
            for w in self.writes:
                mine = [k for k in keys if (w.txn_id, k) in writer_version]
                applied = {seen[k] >= writer_version[(w.txn_id, k)] for k in mine}
                assert len(applied) <= 1, ("fractured read", w.txn_id, mine, result.items)


TestEndToEnd = EndToEnd.TestCase
TestEndToEnd.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
