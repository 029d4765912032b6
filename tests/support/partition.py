"""Small helpers that make partition-core scenarios read like scripts of events."""

from __future__ import annotations

from kvstore.conditions import Condition, Exists
from kvstore.messages import (
    CancelRequest,
    CommitRequest,
    ExecuteReply,
    ExecuteRequest,
    GetRequest,
    ItemView,
    LedgerRecord,
    OpOutcome,
    PrepareReply,
    PrepareRequest,
    ReadEntry,
    ReadRequest,
    ReasonCode,
    ScanRequest,
    TxnState,
    WriteReply,
    WriteRequest,
)
from kvstore.ops import Op, OpKind
from kvstore.storage_node.core import PartitionConfig, PartitionCore
from kvstore.storage_node.store import MemoryStore
from kvstore.types import PartitionId, Timestamp, TxnId, Value
from kvstore.updates import ActionKind, UpdateAction

P0 = PartitionId(0)
NODE_ORIGIN = 99


def ts(physical_us: int, origin: int = 1) -> Timestamp:
    return Timestamp(physical_us, 0, origin)


def put(key: str, value: Value, cond: Condition | None = None, *, return_item: bool = False) -> Op:
    return Op(kind=OpKind.PUT, key=key, value=value, condition=cond, return_item=return_item)


def delete(key: str, cond: Condition | None = None) -> Op:
    return Op(kind=OpKind.DELETE, key=key, condition=cond)


EXISTS = Exists(expected=True)


def check(key: str, cond: Condition = EXISTS) -> Op:
    return Op(kind=OpKind.CHECK, key=key, condition=cond)


def add(key: str, path: tuple[str, ...], amount: int, cond: Condition | None = None) -> Op:
    action = UpdateAction(kind=ActionKind.ADD, path=path, operand=amount)
    return Op(kind=OpKind.UPDATE, key=key, actions=(action,), condition=cond)


class Partition:
    """One partition core on a memory store, with a clock the test moves by hand."""

    def __init__(self, config: PartitionConfig | None = None) -> None:
        self.store = MemoryStore()
        self.core = PartitionCore(P0, self.store, config)
        self.now_us = 1_000

    def prepare(
        self,
        txn: str,
        at: Timestamp,
        *ops: Op,
        anchor: bool = False,
        token: str | None = None,
        anchored_at: PartitionId = P0,
    ) -> PrepareReply:
        """Prepare ``ops`` here; ``anchor``: as the anchor (carrying the new record);
        ``anchored_at``: the anchor the intents name (another partition: a plain participant,
        which leaves an applied mark when it commits)."""
        ledger = None
        if anchor:
            ledger = LedgerRecord(
                txn_id=TxnId(txn),
                ts=at,
                state=TxnState.STAGING,
                participants=(P0, PartitionId(1)),
                token=token,
                fingerprint="fp-" + txn,
            )
        req = PrepareRequest(
            partition=P0, txn_id=TxnId(txn), ts=at, ops=ops, anchor=anchored_at, ledger=ledger
        )
        return self.core.prepare(req, self.now_us).reply

    def commit(self, txn: str) -> int:
        req = CommitRequest(partition=P0, txn_id=TxnId(txn))
        return self.core.commit(req, self.now_us).reply.applied

    def cancel(self, txn: str) -> int:
        return self.core.cancel(CancelRequest(partition=P0, txn_id=TxnId(txn))).reply.cleared

    def execute(
        self, txn: str, at: Timestamp, *ops: Op, token: str | None = None, fp: str = "fp"
    ) -> ExecuteReply:
        req = ExecuteRequest(
            partition=P0,
            txn_id=TxnId(txn),
            ts=at,
            ops=ops,
            token=token,
            fingerprint=fp if token else None,
        )
        return self.core.execute(req, self.now_us).reply

    def write(self, op: Op, node_clock_us: int) -> WriteReply:
        node_ts = Timestamp(node_clock_us, 0, NODE_ORIGIN)
        return self.core.write(WriteRequest(partition=P0, op=op), node_ts).reply

    def get(self, key: str) -> ItemView | None:
        return self.core.get(GetRequest(partition=P0, key=key)).reply.item

    def read(self, *keys: str) -> tuple[ReadEntry, ...]:
        return self.core.read(ReadRequest(partition=P0, keys=keys)).reply.entries

    def read_at(self, at: Timestamp, *keys: str) -> tuple[ReadEntry, ...]:
        """A snapshot read of ``keys`` as of ``at`` (docs/backup.md)."""
        req = ReadRequest(partition=P0, keys=keys, at=at)
        return self.core.read_at(req, at, self.now_us).reply.entries

    def scan_at(
        self, at: Timestamp, start: str = "", limit: int = 1000
    ) -> tuple[tuple[ItemView, ...], str | None]:
        """A backup's page as of ``at``: its items and where the next page starts."""
        req = ScanRequest(partition=P0, start=start, end=None, limit=limit, at=at)
        reply = self.core.scan_at(req, at, self.now_us).reply
        return reply.items, reply.next_start

    def maintain(self) -> None:
        self.core.maintain(self.now_us)

    def snapshot(self) -> tuple[object, ...]:
        """Everything the store holds, to show that a step wrote nothing."""
        node = self.store.node
        durable = node.durable_rows[P0]
        return (
            dict(durable.items),
            dict(durable.intent_rows),
            dict(durable.ledger),
            dict(durable.tokens),
            durable.meta,
            node.partition(P0).open_writes(),
        )


def codes(outcomes: tuple[OpOutcome, ...]) -> list[ReasonCode]:
    return [o.code for o in outcomes]
