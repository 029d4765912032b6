"""Random interleavings of prepare / commit / cancel / singleton writes / read rounds on two
partition cores, checked against a model.

A tiny coordinator inside the test assigns timestamps out of real-time order (as skewed clocks
would), delivers prepares (also duplicated and late), decides, and delivers decisions in any
order. After every step: a key's timestamps and version never decrease. At the end, after every
decision has been delivered: no intent is left, and replaying the committed transactions and
singleton writes in timestamp order (a) finds every condition they were accepted under still
true at their timestamp, and (b) reproduces the final value, existence and version of every key.
That is: committed effects are all-or-nothing and equal a serial execution in timestamp order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from kvstore.conditions import Condition, Exists, evaluate
from kvstore.messages import (
    CancelRequest,
    CommitRequest,
    PrepareRequest,
    ReadRequest,
    ReasonCode,
    WriteRequest,
)
from kvstore.ops import Op, OpKind, apply_op
from kvstore.storage_node.core import PartitionCore
from kvstore.storage_node.store import MemoryStore
from kvstore.types import PartitionId, Timestamp, TxnId, Value
from kvstore.updates import ActionKind, UpdateAction

KEYS = ("k0", "k1", "k2", "k3")
NODE_ORIGIN = 1 << 40


def partition_of(key: str) -> PartitionId:
    return PartitionId(int(key[1]) % 2)


@dataclass
class Txn:
    txn_id: TxnId
    ts: Timestamp
    ops: tuple[Op, ...]
    votes: dict[PartitionId, bool] = field(default_factory=dict)
    decision: bool | None = None  # True committed, False cancelled

    def slice(self, pid: PartitionId) -> tuple[Op, ...]:
        return tuple(op for op in self.ops if partition_of(op.key) == pid)

    @property
    def partitions(self) -> list[PartitionId]:
        return sorted({partition_of(op.key) for op in self.ops})


conditions = st.sampled_from([None, Exists(expected=True), Exists(expected=False)])


@st.composite
def ops_strategy(draw: st.DrawFn) -> tuple[Op, ...]:
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
    ops = []
    for key in keys:
        kind = draw(st.sampled_from(list(OpKind)))
        cond: Condition | None = draw(conditions)
        if kind is OpKind.CHECK:
            cond = cond or Exists(expected=True)
        value: Value = {"v": draw(st.integers(0, 9))}
        actions = ()
        if kind is OpKind.UPDATE:
            actions = (UpdateAction(kind=ActionKind.ADD, path=("n",), operand=1),)
        ops.append(
            Op(
                kind=kind,
                key=key,
                value=value if kind is OpKind.PUT else None,
                actions=actions,
                condition=cond,
            )
        )
    return tuple(ops)


class PartitionInterleavings(RuleBasedStateMachine):
    txns = Bundle("txns")

    def __init__(self) -> None:
        super().__init__()
        self.cores = {PartitionId(p): PartitionCore(PartitionId(p), MemoryStore()) for p in (0, 1)}
        self.now_us = 1_000_000
        self.origin = 0
        self.all_txns: list[Txn] = []
        self.singletons: list[tuple[Timestamp, Op]] = []
        self.floor: dict[str, tuple[Timestamp, Timestamp, int]] = {}

    def core_of(self, key: str) -> PartitionCore:
        return self.cores[partition_of(key)]

    @rule(target=txns, ops=ops_strategy(), skew_us=st.integers(-300, 300))
    def begin(self, ops: tuple[Op, ...], skew_us: int) -> Txn:
        self.origin += 1
        self.now_us += 10
        ts = Timestamp(self.now_us + skew_us, 0, self.origin)
        txn = Txn(TxnId(f"t{self.origin}"), ts, ops)
        self.all_txns.append(txn)
        return txn

    @rule(ops=ops_strategy(), skew_us=st.integers(-300, 300))
    def run_whole(self, ops: tuple[Op, ...], skew_us: int) -> None:
        """A transaction without interleaving: most runs need many committed ones."""
        txn = self.begin(ops, skew_us)
        for which in range(len(txn.partitions)):
            self.deliver_prepare(txn, which)
        self.decide(txn, give_up=False)
        for pid in txn.partitions:
            self.send_decision(txn, pid)

    @rule(txn=txns, which=st.integers(0, 1))
    def deliver_prepare(self, txn: Txn, which: int) -> None:
        """Delivered any number of times, also after the decision (late duplicates)."""
        pid = txn.partitions[which % len(txn.partitions)]
        req = PrepareRequest(
            partition=pid,
            txn_id=txn.txn_id,
            ts=txn.ts,
            ops=txn.slice(pid),
            anchor=txn.partitions[0],
        )
        reply = self.cores[pid].prepare(req, self.now_us).reply
        if txn.decision is None:
            txn.votes.setdefault(pid, reply.accepted)
        if reply.accepted:
            assert all(o.code is ReasonCode.NONE for o in reply.outcomes)

    @rule(txn=txns, give_up=st.booleans())
    def decide(self, txn: Txn, give_up: bool) -> None:
        if txn.decision is not None:
            return
        all_in = len(txn.votes) == len(txn.partitions)
        if all_in and all(txn.votes.values()):
            txn.decision = True
        elif give_up or not all(txn.votes.values()):
            txn.decision = False  # a no vote, or a prepare timeout

    @precondition(lambda self: any(t.decision is not None for t in self.all_txns))
    @rule(data=st.data())
    def deliver_decision(self, data: st.DataObject) -> None:
        decided = [t for t in self.all_txns if t.decision is not None]
        txn = data.draw(st.sampled_from(decided))
        pid = data.draw(st.sampled_from(txn.partitions))
        self.send_decision(txn, pid)

    def send_decision(self, txn: Txn, pid: PartitionId) -> None:
        core = self.cores[pid]
        if txn.decision:
            core.commit(CommitRequest(partition=pid, txn_id=txn.txn_id), self.now_us)
        else:
            core.cancel(CancelRequest(partition=pid, txn_id=txn.txn_id))

    @rule(
        key=st.sampled_from(KEYS),
        kind=st.sampled_from([OpKind.PUT, OpKind.DELETE, OpKind.UPDATE]),
        cond=conditions,
        lag_us=st.integers(0, 500),
    )
    def singleton_write(self, key: str, kind: OpKind, cond: Condition | None, lag_us: int) -> None:
        actions = ()
        if kind is OpKind.UPDATE:
            actions = (UpdateAction(kind=ActionKind.ADD, path=("n",), operand=1),)
        op = Op(
            kind=kind,
            key=key,
            value={"s": lag_us} if kind is OpKind.PUT else None,
            actions=actions,
            condition=cond,
        )
        self.now_us += 1
        node_ts = Timestamp(self.now_us - lag_us, 0, NODE_ORIGIN + self.now_us)
        req = WriteRequest(partition=partition_of(key), op=op)
        reply = self.core_of(key).write(req, node_ts).reply
        if reply.outcome.code is ReasonCode.NONE:
            assert reply.ts is not None
            self.singletons.append((reply.ts, op))

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    def read_round(self, keys: list[str]) -> None:
        for key in keys:
            core = self.core_of(key)
            (entry,) = core.read(ReadRequest(partition=core.partition, keys=(key,))).reply.entries
            row = core.store.get_item(key)
            assert entry.exists == (row is not None and row.exists)
            assert entry.pending == (core.store.get_intent(key) is not None)

    @invariant()
    def timestamps_and_versions_never_decrease(self) -> None:
        for key in KEYS:
            core = self.core_of(key)
            row = core.store.get_item(key)
            meta = core.store.get_meta()
            now = (
                (row.write_ts, row.read_ts, row.version)
                if row is not None
                else (meta.max_delete_ts, meta.max_delete_ts, meta.max_deleted_version)
            )
            before = self.floor.get(key)
            if before is not None:
                assert all(n >= b for n, b in zip(now, before, strict=True)), (key, before, now)
            self.floor[key] = now

    def teardown(self) -> None:
        for txn in self.all_txns:
            if txn.decision is None:
                txn.decision = False
            for pid in txn.partitions:
                self.send_decision(txn, pid)
        for core in self.cores.values():
            assert core.store.intent_count() == 0
        self.check_replay()

    def check_replay(self) -> None:
        events: list[tuple[Timestamp, tuple[Op, ...]]] = [
            (t.ts, t.ops) for t in self.all_txns if t.decision
        ]
        events += [(ts, (op,)) for ts, op in self.singletons]
        events.sort(key=lambda e: e[0])
        state: dict[str, tuple[bool, Value, int]] = {k: (False, None, 0) for k in KEYS}
        for ts, ops in events:
            for op in ops:
                exists, value, version = state[op.key]
                assert evaluate(op.condition, exists=exists, value=value, version=version), (
                    f"condition of an op at {ts} does not hold in timestamp order",
                    op,
                    state[op.key],
                )
            for op in ops:
                exists, value, version = state[op.key]
                new_exists, new_value = apply_op(op, exists=exists, value=value)
                if op.is_write and (exists or new_exists):
                    version += 1
                state[op.key] = (new_exists, new_value if new_exists else None, version)
        for key in KEYS:
            row = self.core_of(key).store.get_item(key)
            actual = (False, None, 0) if row is None else (row.exists, row.value, row.version)
            assert actual == state[key], (key, actual, state[key])


TestPartitionInterleavings = PartitionInterleavings.TestCase
TestPartitionInterleavings.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
