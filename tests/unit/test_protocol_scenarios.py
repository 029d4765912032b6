"""Scripted interleavings of the coordinator and partition cores on the in-memory network: the
histories from the reference that a correct build must get right, step by step."""

from __future__ import annotations

from support.network import Network, deliver_where, describe, run_to_prepared

from kvstore.coordinator.core import WriteTxn
from kvstore.coordinator.read import ReadTxn
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.errors import ErrorCode
from kvstore.messages import (
    CommitRequest,
    DecideRequest,
    GetReply,
    GetRequest,
    LedgerLookupRequest,
    LedgerReply,
    PrepareRequest,
    ReadRequest,
    TxnState,
)
from kvstore.ops import Op, OpKind
from kvstore.types import PartitionId, Timestamp, TxnId

X, Y = "x0", "y1"  # partition 0 and partition 1


def partition_of(key: str) -> PartitionId:
    return PartitionId(int(key[-1]))


def put(key: str, value: int) -> Op:
    return Op(kind=OpKind.PUT, key=key, value=value)


def run_to_commit_decision(net: Network, txn: WriteTxn) -> int:
    """The anchor (x's partition 0) decided COMMITTED, applying x with the decision; the commit
    to the other participant (y's partition 1) is in flight."""
    actor = run_to_prepared(net, txn)
    deliver_where(net, DecideRequest, reply=False)
    deliver_where(net, DecideRequest, reply=True)
    return actor


def get(net: Network, key: str) -> object:
    reply = net.call(GetRequest(partition=partition_of(key), key=key))
    assert isinstance(reply, GetReply)
    return None if reply.item is None else reply.item.value


def test_read_transaction_never_returns_a_fractured_snapshot() -> None:
    """Reference section 3: y read while T is pending on it; T commits x; x read (new value);
    round 2 sees both versions unchanged but y still pending: it must not return new x, old y.
    x is T's anchor, so T's writes on x become visible when its decide lands there."""
    net = Network(2)
    writer = WriteTxn(
        TxnId("t1"), Timestamp(1_000_001, 0, 1), (put(X, 1), put(Y, 1)), partition_of, net.now_us
    )
    run_to_prepared(net, writer)  # both intents held, the decide in flight
    reader = net.start(ReadTxn([X, Y], partition_of, net.now_us))
    deliver_where(net, ReadRequest, 1, reply=False)  # round 1 reads old y (pending)
    deliver_where(net, DecideRequest, 0, reply=False)  # T decided and applied on x only
    assert get(net, X) == 1 and get(net, Y) is None
    deliver_where(net, DecideRequest, 0, reply=True)  # y's commit now in flight
    assert [d for d in describe(net.inflight) if not d.startswith("Read")] == ["CommitRequest@1"]
    deliver_where(net, ReadRequest, 0, reply=False)  # round 1 reads new x
    for _ in range(2):
        deliver_where(net, ReadRequest, reply=True)
    for _ in range(2):  # round 2, y still pending
        deliver_where(net, ReadRequest, reply=False)
    for _ in range(2):
        deliver_where(net, ReadRequest, reply=True)
    net.heal()
    result = net.results[reader]
    assert isinstance(result, ReadResult)
    if result.error is None:
        values = {e.key: e.value for e in result.items}
        assert values in ({X: None, Y: None}, {X: 1, Y: 1}), f"fractured read: {values}"
    else:
        assert result.error is ErrorCode.TransactionConflict


def test_commit_is_answered_only_after_every_participant_applied_it() -> None:
    net = Network(2)
    writer = WriteTxn(
        TxnId("t1"), Timestamp(1_000_001, 0, 1), (put(X, 1), put(Y, 1)), partition_of, net.now_us
    )
    actor = run_to_commit_decision(net, writer)
    # The anchor applied x with the decision; only y's partition gets a commit.
    assert describe(net.inflight) == ["CommitRequest@1"]
    assert get(net, X) == 1 and get(net, Y) is None
    assert actor not in net.results, "one participant has not applied the commit yet"
    deliver_where(net, CommitRequest, 1, reply=False)
    deliver_where(net, CommitRequest, 1, reply=True)
    result = net.results[actor]
    assert isinstance(result, TxnResult) and result.committed
    assert get(net, X) == 1 and get(net, Y) == 1, "read-your-writes right after the answer"


def test_coordinator_crash_after_decision_is_finished_by_recovery() -> None:
    net = Network(2)
    writer = WriteTxn(
        TxnId("t1"), Timestamp(1_000_001, 0, 1), (put(X, 1), put(Y, 1)), partition_of, net.now_us
    )
    actor = run_to_commit_decision(net, writer)
    net.crash(actor)
    net.inflight.clear()  # its commit messages are lost with it
    net.heal()
    assert get(net, X) == 1 and get(net, Y) == 1
    reply = net.call(LedgerLookupRequest(partition=PartitionId(0), txn_id=TxnId("t1")))
    assert isinstance(reply, LedgerReply) and reply.record is not None
    assert reply.record.state is TxnState.COMMITTED and reply.record.completed_us is not None


def test_coordinator_crash_once_every_participant_prepared_is_committed_by_recovery() -> None:
    """Rule 5a: both participants hold their intents durably, so the STAGING record is
    committed, though nobody ever asked for it: recovery asks y, which answers that it holds
    its intents, and decides COMMITTED."""
    net = Network(2)
    writer = WriteTxn(
        TxnId("t1"), Timestamp(1_000_001, 0, 1), (put(X, 1), put(Y, 1)), partition_of, net.now_us
    )
    actor = net.start(writer)
    for _ in range(2):
        deliver_where(net, PrepareRequest, reply=False)  # both prepared, nobody decides
    net.crash(actor)
    net.inflight.clear()
    net.heal()
    assert get(net, X) == 1 and get(net, Y) == 1
    reply = net.call(LedgerLookupRequest(partition=PartitionId(0), txn_id=TxnId("t1")))
    assert isinstance(reply, LedgerReply) and reply.record is not None
    assert reply.record.state is TxnState.COMMITTED


def test_coordinator_crash_before_a_participant_prepared_is_cancelled_for_good() -> None:
    """Only the anchor prepared. Recovery's PreventRequest makes y refuse t1 durably, so the
    record is CANCELLED; y's prepare, arriving late, is refused and leaves no intent."""
    net = Network(2)
    writer = WriteTxn(
        TxnId("t1"), Timestamp(1_000_001, 0, 1), (put(X, 1), put(Y, 1)), partition_of, net.now_us
    )
    actor = net.start(writer)
    deliver_where(net, PrepareRequest, 0, reply=False)  # the anchor prepared
    net.crash(actor)
    late = [m for m in net.inflight if m.reply is None and m.request.partition == 1]
    net.inflight = [m for m in net.inflight if m not in late]
    net.heal()
    assert get(net, X) is None and get(net, Y) is None
    reply = net.call(LedgerLookupRequest(partition=PartitionId(0), txn_id=TxnId("t1")))
    assert isinstance(reply, LedgerReply) and reply.record is not None
    assert reply.record.state is TxnState.CANCELLED
    net.inflight.extend(late)
    net.heal()
    assert get(net, Y) is None
    assert net.cores[PartitionId(1)].store.intent_count() == 0


def test_a_participant_that_applied_keeps_it_committed_when_the_anchor_lagged() -> None:
    """Parallel commit: y applied its commit (and left an applied mark), the anchor's decide was
    lost with the coordinator. Recovery of the STAGING record learns from y's mark that it
    applied, and commits x too, never cancels."""
    net = Network(2)
    writer = WriteTxn(
        TxnId("t1"), Timestamp(1_000_001, 0, 1), (put(X, 1), put(Y, 1)), partition_of, net.now_us
    )
    actor = run_to_prepared(net, writer)
    assert sorted(describe(net.inflight)) == ["CommitRequest@1", "DecideRequest@0"]
    deliver_where(net, CommitRequest, 1, reply=False)
    assert get(net, Y) == 1 and get(net, X) is None
    net.crash(actor)
    net.inflight.clear()  # the decide is lost
    net.heal()
    assert get(net, X) == 1 and get(net, Y) == 1
    reply = net.call(LedgerLookupRequest(partition=PartitionId(0), txn_id=TxnId("t1")))
    assert isinstance(reply, LedgerReply) and reply.record is not None
    assert reply.record.state is TxnState.COMMITTED


def test_late_prepare_after_recovery_cancelled_the_transaction_cannot_revive_it() -> None:
    """Participant y prepared, the anchor never heard of t1; recovery writes CANCELLED at the
    anchor; the anchor's delayed prepare then arrives and must be refused."""
    net = Network(2)
    writer = WriteTxn(
        TxnId("t1"), Timestamp(1_000_001, 0, 1), (put(X, 1), put(Y, 1)), partition_of, net.now_us
    )
    actor = net.start(writer)
    net.crash(actor)
    deliver_where(net, PrepareRequest, 1, reply=False)  # y holds an intent
    late = [m for m in net.inflight if m.reply is None and m.request.partition == 0]
    net.inflight = [m for m in net.inflight if m not in late]
    net.heal()  # y's stale intent asks the anchor: absent -> CANCELLED
    net.inflight.extend(late)
    net.heal()
    assert get(net, X) is None and get(net, Y) is None
    core = net.cores[PartitionId(0)]
    assert core.store.intent_count() == 0


def test_a_one_node_transaction_is_one_message_and_a_duplicate_applies_nothing_again() -> None:
    """Coordinator core and node runtime together: both partitions on one node, so one
    NodeExecuteRequest; its duplicate, delivered after the first, answers the recorded
    outcome (a late copy of a transaction can never run twice)."""
    net = Network(2)
    writer = WriteTxn(
        TxnId("t1"),
        Timestamp(1_000_001, 0, 1),
        (put(X, 1), put(Y, 1)),
        partition_of,
        net.now_us,
        node_of=lambda pid: "n1",
    )
    actor = net.start(writer)
    assert describe(net.inflight) == ["NodeExecuteRequest@0"]
    net.duplicate(0)
    net.deliver(0)
    assert get(net, X) == 1 and get(net, Y) == 1
    net.deliver(0)  # the duplicate, run after the first
    while net.inflight:
        net.deliver(0)
    result = net.results[actor]
    assert isinstance(result, TxnResult) and result.committed
    record = net.cores[PartitionId(0)].store.get_ledger(TxnId("t1"))
    assert record is not None and record.completed_us is not None
    item = net.cores[PartitionId(1)].store.get_item(Y)
    assert item is not None and item.version == 1  # applied once
    net.heal()
