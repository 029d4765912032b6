"""One-node transactions in the node runtime: every partition of a ``NodeExecuteRequest`` is
voted, decided and applied in one step, made durable by one flush, and answered after it.

The node owns P0 and P1 (``support.runtime.Node``): a memory store, a scheduler the test moves
and a disk that holds each flush job until the test finishes it.
"""

from __future__ import annotations

import errno

import pytest
from support.partition import EXISTS, check, put
from support.runtime import P0, P1, START_US, Node

from kvstore import limits
from kvstore.conditions import Exists
from kvstore.errors import DiskFull, ErrorCode, KvError, Overloaded, WrongOwner
from kvstore.messages import (
    ExecuteReply,
    GetReply,
    GetRequest,
    LedgerRecord,
    NodeExecuteRequest,
    PrepareRequest,
    ReasonCode,
    Reply,
    TokenHit,
    TxnState,
)
from kvstore.ops import Op
from kvstore.types import PartitionId, Timestamp, TxnId

P2 = PartitionId(2)
TS = Timestamp(START_US, 0, 1)
OK = ReasonCode.NONE


@pytest.fixture
def node() -> Node:
    return Node()


def request(
    txn: str,
    *ops_at: tuple[Op, PartitionId],
    anchor: PartitionId = P0,
    at: Timestamp = TS,
    token: str | None = None,
    fingerprint: str | None = None,
) -> NodeExecuteRequest:
    return NodeExecuteRequest(
        partition=anchor,
        txn_id=TxnId(txn),
        ts=at,
        ops=tuple(op for op, _ in ops_at),
        placement=tuple(pid for _, pid in ops_at),
        token=token,
        fingerprint=fingerprint,
    )


def durable(node: Node, req: NodeExecuteRequest) -> ExecuteReply:
    """Submit, check that nothing is answered before the flush, finish it, return the answer."""
    answers = node.submit(req)
    assert answers == [], "answered before its flush"
    assert len(node.disk.jobs) == 1
    node.finish_flush()
    [reply] = answers
    assert isinstance(reply, ExecuteReply), reply
    return reply


def get(node: Node, pid: PartitionId, key: str) -> object:
    [reply] = node.submit(GetRequest(partition=pid, key=key))
    assert isinstance(reply, GetReply)
    return None if reply.item is None else (reply.item.value, reply.item.version)


def record(node: Node, txn: str, pid: PartitionId = P0) -> LedgerRecord | None:
    return node.runtime.cores[pid].store.get_ledger(TxnId(txn))


def test_all_partitions_commit_in_one_flush_and_the_answer_waits_for_it(node: Node) -> None:
    reply = durable(node, request("t1", (put("a", 1), P0), (put("b", 2), P1)))
    assert reply == ExecuteReply(txn_id=TxnId("t1"), committed=True)
    assert (get(node, P0, "a"), get(node, P1, "b")) == ((1, 1), (2, 1))
    done = record(node, "t1")
    assert done is not None and done.state is TxnState.COMMITTED
    assert done.participants == (P0, P1) and done.completed_us == START_US
    assert record(node, "t1", P1) is None  # one ledger record, on the anchor
    assert all(node.store.partition(p).intent_count() == 0 for p in (P0, P1))
    assert node.runtime.in_progress == {P0: 0, P1: 0} and node.runtime.in_progress_total == 0


def test_one_refusal_applies_nothing_and_keeps_each_ops_reason(node: Node) -> None:
    durable(node, request("t0", (put("b", 0), P1)))
    txn = request(
        "t1",
        (put("a", 1), P0),
        (put("b", 2, Exists(expected=False)), P1),
        (check("c"), P0),
        at=Timestamp(START_US + 1, 0, 1),
    )
    reply = durable(node, txn)
    assert not reply.committed and reply.error is None
    codes = [o.code for o in reply.outcomes]
    assert codes == [OK, ReasonCode.CONDITION_FAILED, ReasonCode.CONDITION_FAILED]
    assert get(node, P0, "a") is None and get(node, P1, "b") == (0, 1)
    cancelled = record(node, "t1")
    assert cancelled is not None and cancelled.state is TxnState.CANCELLED
    assert cancelled.outcomes == reply.outcomes and cancelled.completed_us is not None


def test_a_pending_intent_refuses_the_whole_transaction_and_stays(node: Node) -> None:
    prepare = PrepareRequest(
        partition=P1, txn_id=TxnId("other"), ts=TS, ops=(put("b", 9),), anchor=P1
    )
    node.submit(prepare)
    node.finish_flush()
    later = Timestamp(START_US + 1, 0, 1)
    reply = durable(node, request("t1", (put("a", 1), P0), (put("b", 2), P1), at=later))
    assert [o.code for o in reply.outcomes] == [OK, ReasonCode.TRANSACTION_CONFLICT]
    assert get(node, P0, "a") is None
    assert node.store.partition(P1).intent_count() == 1  # another transaction's: untouched


def test_a_duplicate_answers_the_recorded_outcome_and_applies_nothing_again(node: Node) -> None:
    txn = request("t1", (put("a", 1), P0), (put("b", 2), P1))
    first = durable(node, txn)
    [again] = node.submit(txn)  # nothing written, nothing in flight: answered at once
    assert again == first and not node.disk.jobs
    assert get(node, P0, "a") == (1, 1)


def test_a_repeated_token_meets_the_first_transaction_and_applies_nothing(node: Node) -> None:
    first = request("t1", (put("a", 1), P0), (put("b", 2), P1), token="tok", fingerprint="f1")
    assert durable(node, first).committed
    assert node.runtime.cores[P0].store.get_token("tok") is not None
    later = Timestamp(START_US + 5, 0, 1)
    for fingerprint, same in (("f1", True), ("f2", False)):
        repeat = request(
            "t2",
            (put("a", 5), P0),
            (put("b", 6), P1),
            at=later,
            token="tok",
            fingerprint=fingerprint,
        )
        [reply] = node.submit(repeat)
        assert isinstance(reply, ExecuteReply) and not reply.committed
        assert reply.token_hit == TokenHit(txn_id=TxnId("t1"), same_content=same)
        assert not node.disk.jobs and record(node, "t2") is None
    assert (get(node, P0, "a"), get(node, P1, "b")) == ((1, 1), (2, 1))


def test_a_cancelled_transaction_takes_its_token_too(node: Node) -> None:
    durable(node, request("t0", (put("b", 0), P1)))
    refused = request(
        "t1", (put("a", 1), P0), (put("b", 2, Exists(expected=False)), P1), token="tok"
    )
    assert not durable(node, refused).committed
    repeat = request(
        "t2", (put("a", 1), P0), anchor=P0, token="tok", at=Timestamp(START_US + 1, 0, 1)
    )
    [reply] = node.submit(repeat)
    assert isinstance(reply, ExecuteReply) and reply.token_hit is not None
    assert reply.token_hit.txn_id == TxnId("t1")


def test_a_timestamp_too_far_ahead_is_refused_for_good(node: Node) -> None:
    ahead = Timestamp(START_US + (limits.MAX_CLOCK_SKEW_MS + 1) * 1000, 0, 1)
    reply = durable(node, request("t1", (put("a", 1), P0), (put("b", 2), P1), at=ahead))
    assert reply.error is ErrorCode.ClockSkew and not reply.committed
    placeholder = record(node, "t1")
    assert placeholder is not None and placeholder.state is TxnState.CANCELLED
    assert get(node, P0, "a") is None


def test_the_anchor_may_hold_only_the_ledger_record(node: Node) -> None:
    reply = durable(node, request("t1", (put("b", 2), P1), (check("c", EXISTS), P1), anchor=P0))
    assert [o.code for o in reply.outcomes] == [OK, ReasonCode.CONDITION_FAILED]
    cancelled = record(node, "t1")
    assert cancelled is not None and cancelled.participants == (P0, P1)


def test_it_counts_on_every_partition_until_answered(node: Node) -> None:
    answers = node.submit(request("t1", (put("a", 1), P0), (put("b", 2), P1)))
    assert node.runtime.in_progress == {P0: 1, P1: 1} and node.runtime.in_progress_total == 1
    node.finish_flush()
    assert len(answers) == 1
    assert node.runtime.in_progress == {P0: 0, P1: 0} and node.runtime.in_progress_total == 0


def test_a_request_arriving_during_a_flush_waits_for_its_own(node: Node) -> None:
    node.put(P0, "x")  # its flush is in flight
    answers = node.submit(request("t1", (put("a", 1), P0), (put("b", 2), P1)))
    node.finish_flush()
    assert answers == [] and len(node.disk.jobs) == 1  # its own flush, now in flight
    node.finish_flush()
    assert len(answers) == 1


def refused_whole(node: Node, req: NodeExecuteRequest) -> KvError:
    answers: list[Reply | KvError] = node.submit(req)
    [error] = answers
    assert isinstance(error, KvError), error
    assert not node.store.dirty and not node.disk.jobs  # nothing ran
    return error


def test_admission_is_all_or_nothing(node: Node) -> None:
    node.runtime.in_progress[P1] = limits.PARTITION_QUEUE_MAX
    error = refused_whole(node, request("t1", (put("a", 1), P0), (put("b", 2), P1)))
    assert isinstance(error, Overloaded) and error.retryable
    assert node.runtime.in_progress[P0] == 0 and node.runtime.in_progress_total == 0
    node.runtime.in_progress[P1] = 0
    node.runtime.in_progress_total = limits.NODE_REQUESTS_IN_PROGRESS_MAX
    error = refused_whole(node, request("t2", (put("a", 1), P0), (put("b", 2), P1)))
    assert isinstance(error, Overloaded)


def test_a_partition_of_another_node_refuses_the_whole_request(node: Node) -> None:
    error = refused_whole(node, request("t1", (put("a", 1), P0), (put("z", 2), P2)))
    assert isinstance(error, WrongOwner)
    error = refused_whole(node, request("t2", (put("a", 1), P0), anchor=P2))
    assert isinstance(error, WrongOwner)


def test_a_full_disk_refuses_it_as_a_write(node: Node) -> None:
    node.runtime.disk_full = OSError(errno.ENOSPC, "No space left on device")
    error = refused_whole(node, request("t1", (put("a", 1), P0), (put("b", 2), P1)))
    assert isinstance(error, DiskFull) and error.retryable
