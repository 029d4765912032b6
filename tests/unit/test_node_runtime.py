"""The node runtime's own rules: when an answer may leave, one group commit per node, admission,
completions, a failed flush, background work after its writes, and the runtime's mutants.

The runtime runs on a memory node store, a scheduler the test moves by hand and a disk that
holds each flush job until the test lets it finish, so every assertion names the exact moment
an answer leaves relative to the flush that carries its writes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.partition import put
from support.runtime import P0, P1, START_US, Node

from kvstore import limits
from kvstore.errors import InternalError, KvError, Overloaded, WrongOwner
from kvstore.messages import (
    CompleteRequest,
    DecideRequest,
    ExecuteReply,
    ExecuteRequest,
    GetRequest,
    LedgerRecord,
    PrepareRequest,
    Reply,
    TxnState,
    WriteReply,
    WriteRequest,
)
from kvstore.runtime.admission import LagGate
from kvstore.types import PartitionId, Timestamp, TxnId

P2 = PartitionId(2)


@pytest.fixture
def node() -> Node:
    return Node()


def test_a_write_is_answered_only_after_the_flush_that_carries_it(node: Node) -> None:
    answers = node.put(P0, "a")
    assert answers == [] and len(node.disk.jobs) == 1
    node.finish_flush()
    [reply] = answers
    assert isinstance(reply, WriteReply) and reply.version == 1
    assert not node.store.dirty


def test_writes_of_every_partition_in_one_cycle_share_one_flush(node: Node) -> None:
    answers: list[Reply | KvError] = []
    for i in range(10):
        request = WriteRequest(partition=(P0, P1)[i % 2], op=put(f"k{i}", i))
        node.runtime.submit(request, answers.append)
    node.scheduler.settle()
    # ten items, and each partition's meta row (its largest write timestamp moved)
    assert len(node.disk.jobs) == 1 and node.disk.jobs[0][0].rows == 12
    node.finish_flush()
    assert len(answers) == 10 and not node.disk.jobs


def test_a_write_arriving_during_a_flush_waits_for_its_own_flush(node: Node) -> None:
    first = node.put(P0, "a")
    second = node.put(P1, "b")  # the first job is in flight: this one joins the next batch
    assert len(node.disk.jobs) == 1
    node.finish_flush()
    assert len(first) == 1 and second == [], "answered with a flush that did not carry it"
    assert len(node.disk.jobs) == 1  # the next batch is flushed as soon as the first ended
    node.finish_flush()
    assert len(second) == 1


def test_a_read_waits_for_a_flush_in_flight_and_is_answered_at_once_otherwise(node: Node) -> None:
    assert len(node.submit(GetRequest(partition=P0, key="a"))) == 1
    node.put(P0, "a")
    read = node.submit(GetRequest(partition=P0, key="a"))
    assert read == [], "the read may have seen a row that is not durable yet"
    node.finish_flush()
    assert len(read) == 1


def decided(node: Node, txn: TxnId) -> None:
    """A ledger record on P0, decided COMMITTED and durable, not yet completed."""
    ts = Timestamp(START_US, 0, 1)
    ledger = LedgerRecord(txn_id=txn, ts=ts, state=TxnState.PREPARING, participants=(P0, P1))
    node.submit(
        PrepareRequest(
            partition=P0, txn_id=txn, ts=ts, ops=(put("x", 1),), anchor=P0, ledger=ledger
        )
    )
    node.finish_flush()
    node.submit(DecideRequest(partition=P0, txn_id=txn, decision=TxnState.COMMITTED))
    node.finish_flush()


def test_a_completion_is_answered_at_once_and_rides_with_the_next_flush(node: Node) -> None:
    txn = TxnId("t1")
    decided(node, txn)
    done = node.submit(CompleteRequest(partition=P0, txn_id=txn))
    assert len(done) == 1 and node.store.dirty and not node.disk.jobs
    node.put(P1, "b")
    node.finish_flush()
    assert not node.store.dirty


def test_the_maintenance_tick_flushes_what_rode_along(node: Node) -> None:
    node.runtime.start()
    txn = TxnId("t1")
    decided(node, txn)
    node.submit(CompleteRequest(partition=P0, txn_id=txn))
    assert node.store.dirty
    node.scheduler.advance(limits.MAINTAIN_INTERVAL_MS * 1000)
    assert len(node.disk.jobs) == 1
    node.finish_flush()
    assert not node.store.dirty


def test_a_full_partition_is_overloaded_and_the_others_keep_serving(node: Node) -> None:
    node.runtime.in_progress[P0] = limits.PARTITION_QUEUE_MAX
    [refused] = node.put(P0, "a")
    assert isinstance(refused, Overloaded)
    assert node.put(P1, "b") == []  # admitted: waits for its flush
    node.finish_flush()


def test_a_full_node_is_overloaded_on_every_partition(node: Node) -> None:
    node.runtime.in_progress_total = limits.NODE_REQUESTS_IN_PROGRESS_MAX
    for pid in (P0, P1):
        [refused] = node.put(pid, "a")
        assert isinstance(refused, Overloaded) and refused.details["node"] == "n1"
    node.runtime.in_progress_total = 0
    answers = node.put(P0, "a")
    assert node.runtime.in_progress_total == 1
    node.finish_flush()
    assert len(answers) == 1 and node.runtime.in_progress_total == 0


def test_a_node_behind_on_its_work_refuses_new_work_but_finishes_admitted_work(
    node: Node,
) -> None:
    txn = TxnId("t1")
    decided(node, txn)  # a transaction admitted before the node fell behind
    gate = LagGate(target_ms=50, interval_ms=200)
    gate.observe(0, 300)
    gate.observe(200, 300)
    node.runtime.gate = gate
    for request in (GetRequest(partition=P0, key="a"), WriteRequest(partition=P1, op=put("b", 1))):
        [refused] = node.submit(request)
        assert isinstance(refused, Overloaded) and refused.retryable, refused
    # Its second phase is not new work: it runs, so what is in flight drains.
    [completed] = node.submit(CompleteRequest(partition=P0, txn_id=txn))
    assert not isinstance(completed, KvError), completed
    gate.observe(220, 10)
    assert node.put(P0, "a") == []  # admitted again: waits for its flush
    node.finish_flush()


def test_a_partition_of_another_node_is_wrong_owner(node: Node) -> None:
    [refused] = node.put(P2, "a")
    assert isinstance(refused, WrongOwner)


def test_a_failed_flush_fails_its_waiters_the_next_batch_and_the_node(node: Node) -> None:
    first = node.put(P0, "a")
    second = node.put(P1, "b")
    node.disk.fail(OSError("disk full"))
    node.scheduler.settle()
    assert [type(a) for a in first + second] == [InternalError, InternalError]
    assert len(node.fatal) == 1
    [later] = node.put(P0, "c")
    assert isinstance(later, InternalError)
    assert all(count == 0 for count in node.runtime.in_progress.values())


def test_background_actors_start_only_after_the_writes_they_follow_are_durable(
    node: Node,
) -> None:
    """An expired PREPARING record (of an earlier release) is cancelled by ``maintain``; the
    recovery that tells the participants must not start before that CANCELLED is durable."""
    txn = TxnId("t1")
    ts = Timestamp(START_US, 0, 1)
    ledger = LedgerRecord(txn_id=txn, ts=ts, state=TxnState.STAGING, participants=(P0, P1))
    prepare = PrepareRequest(
        partition=P0, txn_id=txn, ts=ts, ops=(put("x", 1),), anchor=P0, ledger=ledger
    )
    node.submit(prepare)
    node.finish_flush()
    store = node.runtime.cores[P0].store  # a record of an earlier release: PREPARING
    record = store.get_ledger(txn)
    assert record is not None
    store.put_ledger(replace(record, state=TxnState.PREPARING))
    node.scheduler.now += limits.LEDGER_DECISION_DEADLINE_MS * 1000 + limits.INTENT_STALE_MS * 1000
    node.runtime.maintain_now()
    node.scheduler.settle()
    assert len(node.disk.jobs) == 1 and node.runtime.actors.running == 0
    node.finish_flush()
    assert node.runtime.actors.running + len(node.disk.jobs) > 0  # started once durable


def test_an_execute_that_commits_is_answered_after_its_flush(node: Node) -> None:
    ops = (put("a", 1), put("b", 2))
    request = ExecuteRequest(partition=P0, txn_id=TxnId("t"), ts=Timestamp(START_US, 0, 1), ops=ops)
    answers = node.submit(request)
    assert answers == []
    node.finish_flush()
    [reply] = answers
    assert isinstance(reply, ExecuteReply) and reply.committed


def test_singleton_writes_above_their_keys_floors_never_share_a_timestamp(node: Node) -> None:
    """Both keys were written at a ts ahead of the node's clock; each singleton write then gets
    the successor of its key's floor. The node's clock must move past the first, or the second
    reissues it (simulator, seed 136 of the first sweep with singletons)."""
    ahead = Timestamp(START_US + 100_000, 0, 1)  # within the clock-skew guard
    request = ExecuteRequest(
        partition=P0, txn_id=TxnId("t"), ts=ahead, ops=(put("a", 1), put("b", 1))
    )
    node.submit(request)
    node.finish_flush()
    stamps = []
    for key in ("a", "b"):
        answers = node.put(P0, key, 2)
        node.finish_flush()
        [reply] = answers
        assert isinstance(reply, WriteReply) and reply.ts is not None and reply.ts > ahead
        stamps.append(reply.ts)
    assert stamps[0] != stamps[1]
