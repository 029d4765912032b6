"""Waiting for other transactions' intents: the rule (who may wait for whom), the core's
read-only question (which transactions alone stop a request), and the runtime's parked requests
(woken when the blocker clears, stepped anyway at the bound, none beyond the node's limit).
"""

from __future__ import annotations

import pytest
from support.partition import P0, Partition, add, check, put, ts
from support.runtime import P1, START_US, Node

from kvstore import limits
from kvstore.conditions import Exists
from kvstore.errors import KvError, TransactionConflict
from kvstore.messages import (
    CancelRequest,
    CommitRequest,
    ExecuteReply,
    ExecuteRequest,
    PrepareReply,
    PrepareRequest,
    ReadReply,
    ReadRequest,
    ReasonCode,
    Reply,
    WriteReply,
    WriteRequest,
)
from kvstore.ops import Op
from kvstore.storage_node.intent_wait import may_wait
from kvstore.types import Timestamp, TxnId

WAIT_US = limits.INTENT_WAIT_MS * 1000

# --- the rule ---------------------------------------------------------------------------------


def test_a_transaction_waits_only_when_every_blocker_is_below_it() -> None:
    assert may_wait(ts(20), [ts(10)])
    assert may_wait(ts(20), [ts(10), ts(19)])
    assert not may_wait(ts(20), [ts(30)]), "the blocker's commit would leave the key above us"
    assert not may_wait(ts(20), [ts(10), ts(30)])
    assert not may_wait(ts(20), [ts(20)])
    assert not may_wait(ts(20), []), "nothing to wait for"


def test_a_request_holding_nothing_may_wait_for_anyone() -> None:
    assert may_wait(None, [ts(10), ts(10**9)])
    assert not may_wait(None, [])


def test_waits_for_edges_go_down_in_timestamp_so_no_cycle_exists() -> None:
    stamps = [ts(t) for t in (5, 9, 13, 21)]
    edges = {(a, b) for a in stamps for b in stamps if a != b and may_wait(a, [b])}
    assert all(b < a for a, b in edges)  # a strict order has no cycle


# --- the core's question -------------------------------------------------------------------


def prepare(txn: str, at: Timestamp, *ops: Op) -> PrepareRequest:
    return PrepareRequest(partition=P0, txn_id=TxnId(txn), ts=at, ops=ops, anchor=P0)


def test_a_prepare_meeting_a_lower_intent_is_blocked_by_it_and_nothing_is_written() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1)).accepted
    before = p.snapshot()
    assert p.core.blockers(prepare("t2", ts(20), put("x", 2), put("y", 2)), p.now_us) == ("t1",)
    assert p.snapshot() == before


def test_a_prepare_meeting_a_higher_intent_does_not_wait() -> None:
    p = Partition()
    assert p.prepare("t1", ts(30), put("x", 1)).accepted
    assert p.core.blockers(prepare("t2", ts(20), put("x", 2)), p.now_us) == ()


def test_a_prepare_refused_for_another_reason_too_does_not_wait() -> None:
    p = Partition()
    assert p.prepare("t0", ts(5), put("y", 0)).accepted and p.commit("t0") == 1
    assert p.prepare("t1", ts(10), put("x", 1)).accepted
    failing = check("y", Exists(expected=False))  # false whatever t1 does: y is not its key
    assert p.core.blockers(prepare("t2", ts(20), put("x", 2), failing), p.now_us) == ()
    # Too old on the blocked key itself: t5's commit cannot make it younger.
    assert p.prepare("t4", ts(50), put("z", 1)).accepted and p.commit("t4") == 1
    assert p.prepare("t5", ts(60), put("z", 2)).accepted
    assert p.core.blockers(prepare("t6", ts(45), put("z", 3)), p.now_us) == ()


def test_conditions_on_a_blocked_key_are_judged_after_the_wait() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1)).accepted
    needs_x = put("x", 2, Exists(expected=True))  # false now, may be true once t1 commits
    assert p.core.blockers(prepare("t2", ts(20), needs_x), p.now_us) == ("t1",)


def test_reads_and_singleton_writes_wait_for_any_intent() -> None:
    p = Partition()
    assert p.prepare("t1", ts(p.now_us + 400_000), put("x", 1)).accepted
    read = ReadRequest(partition=P0, keys=("w", "x"))
    assert p.core.blockers(read, p.now_us) == ("t1",)
    assert p.core.blockers(WriteRequest(partition=P0, op=put("x", 3)), p.now_us) == ("t1",)
    assert p.core.blockers(ReadRequest(partition=P0, keys=("w",)), p.now_us) == ()


def test_nobody_waits_for_an_intent_older_than_the_bound() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1)).accepted
    p.now_us += WAIT_US - 1
    assert p.core.blockers(prepare("t2", ts(20), put("x", 2)), p.now_us) == ("t1",)
    p.now_us += 1  # slow or orphaned: left to stale-intent resolution
    assert p.core.blockers(prepare("t2", ts(20), put("x", 2)), p.now_us) == ()
    assert p.core.blockers(ReadRequest(partition=P0, keys=("x",)), p.now_us) == ()
    assert p.core.blockers(WriteRequest(partition=P0, op=put("x", 3)), p.now_us) == ()


def test_a_duplicate_prepare_of_the_intents_owner_does_not_wait() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1)).accepted
    assert p.core.blockers(prepare("t1", ts(10), put("x", 1)), p.now_us) == ()


# --- the runtime -----------------------------------------------------------------------------


@pytest.fixture
def node() -> Node:
    return Node()


def flush_all(node: Node) -> None:
    while node.disk.jobs:
        node.finish_flush()


def hold(node: Node, txn: str, at_us: int, *ops: Op) -> None:
    """``txn`` prepared on P0, durable."""
    [reply] = (answers := node.submit(prepare(txn, ts(at_us), *ops))) or [None]
    if not answers:
        flush_all(node)
        [reply] = answers
    assert isinstance(reply, PrepareReply) and reply.accepted


def execute(node: Node, txn: str, at_us: int, *ops: Op) -> list[Reply | KvError]:
    return node.submit(ExecuteRequest(partition=P0, txn_id=TxnId(txn), ts=ts(at_us), ops=ops))


def test_a_parked_execute_is_stepped_again_when_its_blocker_commits(node: Node) -> None:
    bump = add("x", ("n",), 1)
    hold(node, "t1", START_US, bump)
    waiting = execute(node, "t2", START_US + 1, bump)
    assert waiting == [] and not node.disk.jobs, "parked, and nothing written"
    assert node.runtime.in_progress[P0] == 1
    node.submit(CommitRequest(partition=P0, txn_id=TxnId("t1")))
    flush_all(node)
    [reply] = waiting
    assert isinstance(reply, ExecuteReply) and reply.committed, "afresh, on t1's result"
    row = node.store.partition(P0).get_item("x")
    assert row is not None and row.value == {"n": 2}
    assert node.runtime.in_progress[P0] == 0


def test_a_parked_prepare_is_woken_by_a_cancel_and_answered_after_its_flush(node: Node) -> None:
    hold(node, "t1", START_US, put("x", 1))
    waiting = node.submit(prepare("t2", ts(START_US + 1), put("x", 2)))
    node.submit(CancelRequest(partition=P0, txn_id=TxnId("t1")))
    assert waiting == [], "the woken prepare's intent is not durable yet"
    flush_all(node)
    [reply] = waiting
    assert isinstance(reply, PrepareReply) and reply.accepted


def test_a_parked_prepare_whose_own_transaction_is_cancelled_meanwhile_is_refused(
    node: Node,
) -> None:
    """A repeat submission parked behind the first is cancelled by its coordinator while it
    waits; woken later it would leave an intent nobody clears (but stale resolution)."""
    hold(node, "t1", START_US, put("x", 1))
    waiting = node.submit(prepare("t2", ts(START_US + 1), put("x", 2)))
    node.submit(CancelRequest(partition=P0, txn_id=TxnId("t2")))  # t2 ended here, nothing held
    [refusal] = waiting
    assert isinstance(refusal, TransactionConflict)
    assert node.runtime.in_progress[P0] == 0 and node.runtime._waits.count == 0
    node.submit(CommitRequest(partition=P0, txn_id=TxnId("t1")))
    flush_all(node)
    assert node.store.partition(P0).get_intent("x") is None, "t2 never prepared"
    assert waiting == [refusal], "answered once"


def test_a_woken_prepare_whose_transaction_is_cancelled_in_the_same_frame_is_refused(
    node: Node,
) -> None:
    """One frame from one coordinator process: the blocker's commit wakes the parked prepare
    (its step is scheduled), then its own transaction's cancel arrives before it runs."""
    hold(node, "t1", START_US, put("x", 1))
    waiting = node.submit(prepare("t2", ts(START_US + 1), put("x", 2)))
    runtime, got = node.runtime, []
    runtime.submit(CommitRequest(partition=P0, txn_id=TxnId("t1")), got.append)
    runtime.submit(CancelRequest(partition=P0, txn_id=TxnId("t2")), got.append)
    node.scheduler.settle()
    flush_all(node)
    [refusal] = waiting
    assert isinstance(refusal, TransactionConflict)
    assert node.store.partition(P0).get_intent("x") is None, "t2 never prepared"
    assert runtime.in_progress[P0] == 0


def test_a_parked_request_is_stepped_anyway_at_the_bound(node: Node) -> None:
    hold(node, "t1", START_US, put("x", 1))
    waiting = execute(node, "t2", START_US + 1, put("x", 2))
    node.scheduler.advance(WAIT_US - 1)
    assert waiting == []
    node.scheduler.advance(1)
    flush_all(node)  # a refused execute leaves its CANCELLED record
    [reply] = waiting
    assert isinstance(reply, ExecuteReply) and not reply.committed
    assert [o.code for o in reply.outcomes] == [ReasonCode.TRANSACTION_CONFLICT]
    assert node.runtime.in_progress[P0] == 0


def test_a_request_behind_a_higher_intent_is_refused_at_once(node: Node) -> None:
    hold(node, "t1", START_US + 50, put("x", 1))
    answers = execute(node, "t2", START_US + 1, put("x", 2))
    flush_all(node)
    [reply] = answers
    assert isinstance(reply, ExecuteReply) and not reply.committed


def test_a_woken_request_meeting_another_lower_intent_waits_again_with_its_first_deadline(
    node: Node,
) -> None:
    hold(node, "t1", START_US, put("x", 1))
    third = execute(node, "t3", START_US + 3, put("x", 3))
    second = node.submit(prepare("t2", ts(START_US + 2), put("x", 2)))
    node.scheduler.advance(WAIT_US // 2)
    node.submit(CommitRequest(partition=P0, txn_id=TxnId("t1")))
    flush_all(node)
    assert len(second) == 1 and third == [], "t2 holds x now; t3 waits for it"
    node.scheduler.advance(WAIT_US // 2)
    flush_all(node)
    [reply] = third
    assert isinstance(reply, ExecuteReply) and not reply.committed, "the bound ran from arrival"


def test_reads_and_singleton_writes_wait_too(node: Node) -> None:
    hold(node, "t1", START_US + 400_000, put("x", 1))  # above the node clock: they still wait
    read = node.submit(ReadRequest(partition=P0, keys=("x",)))
    write = node.submit(WriteRequest(partition=P0, op=put("x", 5)))
    assert read == [] and write == []
    node.submit(CommitRequest(partition=P0, txn_id=TxnId("t1")))
    flush_all(node)
    [entries] = read
    assert isinstance(entries, ReadReply)
    assert entries.entries[0].value == 1 and not entries.entries[0].pending
    [written] = write
    assert isinstance(written, WriteReply) and written.outcome.code is ReasonCode.NONE


def test_no_request_waits_beyond_the_nodes_bound(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node.runtime._waits, "_waiters_max", 1)
    hold(node, "t1", START_US, put("x", 1))
    first = node.submit(ReadRequest(partition=P0, keys=("x",)))
    second = node.submit(ReadRequest(partition=P0, keys=("x",)))
    assert first == [] and len(second) == 1, "the table was full: answered at once"
    [answer] = second
    assert isinstance(answer, ReadReply) and answer.entries[0].pending


def test_other_partitions_commits_do_not_wake_a_waiter(node: Node) -> None:
    hold(node, "t1", START_US, put("x", 1))
    waiting = node.submit(ReadRequest(partition=P0, keys=("x",)))
    node.submit(
        PrepareRequest(
            partition=P1, txn_id=TxnId("t1"), ts=ts(START_US), ops=(put("y", 1),), anchor=P0
        )
    )
    flush_all(node)
    node.submit(CommitRequest(partition=P1, txn_id=TxnId("t1")))
    flush_all(node)
    assert waiting == []


def test_stopping_the_node_forgets_its_waiters(node: Node) -> None:
    hold(node, "t1", START_US, put("x", 1))
    waiting = node.submit(ReadRequest(partition=P0, keys=("x",)))
    node.runtime.stop()
    node.scheduler.advance(WAIT_US * 2)
    assert waiting == [] and node.runtime._waits.count == 0
