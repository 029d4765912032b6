"""Snapshot read transactions (``ReadTxn`` with ``at``) against real partition cores on the
in-memory network, and the coordinator library's checks of ``at``.

The coordinator core's own rules (one clean round, pending retried, ``SnapshotTooOld`` final)
are scripted in test_coordinator_read.py; here they meet the partition core's snapshot reads
(tests/unit/test_snapshot_reads.py): an intent above ``at`` does not hold the read up, one at or
below it does until it resolves, and the read floor refuses later writes at or below ``at``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.network import Network, deliver_where, run_to_prepared

from kvstore.config import ClusterConfig, load_cluster, write_cluster_file, write_secret
from kvstore.coordinator.core import WriteTxn
from kvstore.coordinator.engine import Coordinator
from kvstore.coordinator.read import ReadTxn
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.errors import ErrorCode, SnapshotTooOld, ValidationError
from kvstore.limits import SNAPSHOT_WINDOW_MS
from kvstore.messages import (
    CommitRequest,
    DecideRequest,
    ReadReply,
    ReadRequest,
    Reply,
    Request,
)
from kvstore.ops import Op, OpKind
from kvstore.timestamps import HybridClock
from kvstore.types import PartitionId, Timestamp, TxnId

X, Y = "x0", "y1"  # partition 0 and partition 1
T1 = Timestamp(1_000_001, 0, 1)
AT = Timestamp(1_000_050, 0, 1)
T2 = Timestamp(1_000_100, 0, 1)


def partition_of(key: str) -> PartitionId:
    return PartitionId(int(key[-1]))


def put(key: str, value: int) -> Op:
    return Op(kind=OpKind.PUT, key=key, value=value)


class Unreachable:
    async def call(self, request: Request, timeout_ms: int) -> Reply:
        raise AssertionError("a refused read must not send anything")


def one_node_cluster(tmp_path: Path) -> ClusterConfig:
    path = tmp_path / "cluster.toml"
    write_cluster_file(path, nodes={"n1": "127.0.0.1:1"}, partitions=1)
    write_secret(path.parent / "secret")
    return load_cluster(path)


def committed(net: Network, txn_id: str, ts: Timestamp, value: int) -> None:
    actor = net.start(WriteTxn(TxnId(txn_id), ts, (put(X, value), put(Y, value)), partition_of, 0))
    net.heal()
    result = net.results[actor]
    assert isinstance(result, TxnResult) and result.committed, result


def read_through(net: Network, reader: int) -> ReadResult:
    """Deliver read requests and their replies (only reads: nothing else moves) until
    ``reader`` answers; its result."""
    while reader not in net.results:
        deliver_where(net, ReadRequest, reply=False)
        deliver_where(net, ReadRequest, reply=True)
    result = net.results[reader]
    assert isinstance(result, ReadResult)
    return result


def values(result: object) -> dict[str, object]:
    assert isinstance(result, ReadResult) and result.error is None, result
    return {entry.key: entry.value for entry in result.items}


def test_an_intent_above_at_does_not_hold_up_a_snapshot_read() -> None:
    net = Network(2)
    committed(net, "t1", T1, 1)
    t2 = WriteTxn(TxnId("t2"), T2, (put(X, 2), put(Y, 2)), partition_of, 0)
    writer = run_to_prepared(net, t2)  # t2 holds both keys, above ``at``
    snapshot = read_through(net, net.start(ReadTxn([X, Y], partition_of, net.now_us, at=AT)))
    assert values(snapshot) == {X: 1, Y: 1}
    assert (snapshot.rounds, snapshot.at) == (1, AT)
    # A plain read of the same keys meets t2's intents: pending in its round.
    plain = net.start(ReadTxn([X, Y], partition_of, net.now_us))
    for _ in range(2):
        deliver_where(net, ReadRequest, reply=False)
    replies = [m.reply for m in net.inflight if isinstance(m.request, ReadRequest)]
    assert all(isinstance(r, ReadReply) and r.entries[0].pending for r in replies)
    net.heal()  # t2 (above the floor the snapshot raised) still commits
    done = net.results[writer]
    assert isinstance(done, TxnResult) and done.committed
    assert values(net.results[plain]) == {X: 2, Y: 2}


def test_an_intent_at_or_below_at_is_waited_out_and_its_outcome_shown() -> None:
    net = Network(2)
    committed(net, "t1", T1, 1)
    below = Timestamp(AT.physical_us - 10, 0, 1)
    writer = run_to_prepared(
        net, WriteTxn(TxnId("t3"), below, (put(X, 3), put(Y, 3)), partition_of, 0)
    )
    snapshot = net.start(ReadTxn([X, Y], partition_of, net.now_us, at=AT))
    for _ in range(2):  # round 1: both keys pending (an intent at or below ``at``)
        deliver_where(net, ReadRequest, reply=False)
    for _ in range(2):
        deliver_where(net, ReadRequest, reply=True)
    assert snapshot not in net.results
    # t3 decides and commits on both partitions before the second round is read.
    deliver_where(net, DecideRequest, reply=False)
    deliver_where(net, DecideRequest, reply=True)
    deliver_where(net, CommitRequest, reply=False)
    deliver_where(net, CommitRequest, reply=True)
    assert isinstance(net.results[writer], TxnResult)
    result = read_through(net, snapshot)
    assert values(result) == {X: 3, Y: 3}
    assert result.rounds == 2


def test_after_a_snapshot_read_no_write_at_or_below_at_commits() -> None:
    net = Network(2)
    committed(net, "t1", T1, 1)
    snapshot = net.start(ReadTxn([X], partition_of, net.now_us, at=AT))
    net.heal()
    assert values(net.results[snapshot]) == {X: 1}
    # Y's partition was not read: its floor did not move, but X's did.
    late = net.start(WriteTxn(TxnId("late"), AT, (put(X, 9), put(Y, 9)), partition_of, 0))
    net.heal()
    result = net.results[late]
    assert isinstance(result, TxnResult) and not result.committed
    assert result.error is ErrorCode.TransactionCanceled
    assert [o.code.name for o in result.outcomes] == ["TIMESTAMP_TOO_OLD", "NONE"]
    again = net.start(ReadTxn([X, Y], partition_of, net.now_us, at=AT))
    net.heal()
    assert values(net.results[again]) == {X: 1, Y: 1}  # the snapshot never changes


@pytest.mark.asyncio
async def test_the_coordinator_library_refuses_a_future_or_too_old_at_before_sending(
    tmp_path: Path,
) -> None:
    now_us = 1_800_000_000_000_000
    clock = HybridClock(lambda: now_us, 5)
    coordinator = Coordinator.from_config(
        one_node_cluster(tmp_path),
        transport=Unreachable(),
        clock=clock,
        physical_clock=lambda: now_us,
    )
    try:
        with pytest.raises(ValidationError, match="in the future") as future:
            await coordinator.read(["k"], at=Timestamp(now_us + 1, 0, 1))
        assert future.value.field == "at"
        too_old = Timestamp(now_us - SNAPSHOT_WINDOW_MS * 1000 - 1, 0, 1)
        with pytest.raises(SnapshotTooOld, match="snapshot window"):
            await coordinator.read(["k"], at=too_old)
        with pytest.raises(ValidationError, match="keys"):  # the keys are checked first
            await coordinator.read([], at=too_old)
        assert coordinator.running == 0
    finally:
        await coordinator.close()
