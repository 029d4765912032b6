"""Write coordinator, several partitions of one node: one NodeExecuteRequest, its reply is the
answer (the one-round rule extended to one node); partitions on several nodes keep 2PC."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from support.coordinator import partition_of

from kvstore.conditions import Exists
from kvstore.coordinator.core import WriteEffect, WriteTxn, new_write_txn
from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.results import TxnResult
from kvstore.coordinator.state import WriteState
from kvstore.errors import ErrorCode
from kvstore.limits import PREPARE_DEADLINE_MS
from kvstore.messages import (
    ExecuteReply,
    ExecuteRequest,
    LedgerLookupRequest,
    NodeExecuteRequest,
    OpOutcome,
    PrepareRequest,
    ReasonCode,
    TokenHit,
)
from kvstore.ops import Op, OpKind, txn_fingerprint
from kvstore.types import PartitionId, Timestamp, TxnId

T0 = 1_000_000_000
TXN = TxnId("1" * 32)
ORIGINAL = TxnId("0" * 32)
TS = Timestamp(T0, 0, 7)
P1, P2, P3 = PartitionId(1), PartitionId(2), PartitionId(3)
# Request order b, a, c: partitions 2, 1, 2; the anchor is the first key's, partition 2.
OPS = (
    Op(kind=OpKind.PUT, key="b:1", value=1),
    Op(kind=OpKind.DELETE, key="a:1"),
    Op(kind=OpKind.CHECK, key="b:2", condition=Exists(expected=True)),
)


def one_node(pid: PartitionId) -> str:
    return "n1"


def by_parity(pid: PartitionId) -> str:
    """Partitions 1 and 3 on n1, 2 on n2."""
    return f"n{2 - pid % 2}"


def sends(effects: Sequence[WriteEffect]) -> list[Send]:
    assert all(isinstance(e, Send) for e in effects), effects
    return [e for e in effects if isinstance(e, Send)]


def finish(effects: Sequence[WriteEffect]) -> TxnResult:
    results = [e.result for e in effects if isinstance(e, Finish)]
    assert len(results) == 1, effects
    return results[0]


def start(
    ops: tuple[Op, ...] = OPS,
    node_of: Callable[[PartitionId], str] | None = one_node,
    token: str | None = None,
) -> tuple[WriteTxn, list[Send]]:
    txn = new_write_txn(TXN, TS, ops, partition_of, T0, token=token, node_of=node_of)
    return txn, sends(txn.step_start(T0))


def test_partitions_of_one_node_get_one_request_with_each_ops_partition() -> None:
    txn, [send] = start()
    assert txn.one_node and txn.state is WriteState.EXECUTING
    assert send.request == NodeExecuteRequest(
        partition=P2, txn_id=TXN, ts=TS, ops=OPS, placement=(P2, P1, P2)
    )
    assert send.deadline_us == T0 + PREPARE_DEADLINE_MS * 1000
    assert txn.participants == (P1, P2)


def test_partitions_of_several_nodes_or_no_owner_map_keep_two_phase_commit() -> None:
    for node_of in (by_parity, None):
        txn, prepares = start(node_of=node_of)
        assert not txn.one_node and txn.state is WriteState.PREPARING
        assert {type(s.request) for s in prepares} == {PrepareRequest}
        assert len(prepares) == 2


def test_one_partition_stays_a_plain_execute() -> None:
    txn, [send] = start(ops=OPS[:1])
    assert not txn.one_node and type(send.request) is ExecuteRequest


def test_a_token_home_on_the_same_node_is_the_anchor_holding_no_key() -> None:
    # The token "c..." lives on partition 3: with keys on 1 and 3 all on n1 by parity.
    ops = (Op(kind=OpKind.PUT, key="a:1", value=1),)
    txn, [send] = start(ops=ops, node_of=by_parity, token="c-token")
    assert isinstance(send.request, NodeExecuteRequest)
    assert send.request.partition == P3 and send.request.placement == (P1,)
    assert send.request.token == "c-token"
    assert send.request.fingerprint == txn_fingerprint(ops)
    txn, prepares = start(ops=ops, node_of=by_parity, token="b-token")  # home on n2
    assert txn.state is WriteState.PREPARING and len(prepares) == 2


def test_committed() -> None:
    txn, [send] = start()
    result = finish(txn.step_reply(send.call_id, ExecuteReply(txn_id=TXN, committed=True), T0))
    assert result == TxnResult(committed=True, txn_id=TXN, ts=TS)
    assert txn.done


def test_cancelled_reports_the_nodes_reasons_in_request_order() -> None:
    txn, [send] = start()
    failed = OpOutcome(code=ReasonCode.CONDITION_FAILED, message="no")
    reasons = (OpOutcome(), OpOutcome(), failed)
    reply = ExecuteReply(txn_id=TXN, committed=False, outcomes=reasons)
    result = finish(txn.step_reply(send.call_id, reply, T0 + 10))
    assert result.error is ErrorCode.TransactionCanceled and result.outcomes == reasons
    assert txn.done


@pytest.mark.parametrize("code", [ErrorCode.WrongOwner, ErrorCode.Overloaded, ErrorCode.DiskFull])
def test_a_definite_refusal_ran_nothing_and_is_the_answer(code: ErrorCode) -> None:
    txn, [send] = start()
    result = finish(txn.step_failed(send.call_id, code, T0 + 10))
    assert result.error is code and txn.done


def test_a_call_that_may_have_run_is_outcome_unknown() -> None:
    txn, [send] = start()
    assert finish(txn.step_tick(send.deadline_us)).error is ErrorCode.OutcomeUnknown


def test_a_repeated_token_follows_the_original_on_the_anchor() -> None:
    txn, [send] = start(token="b-token")
    hit = TokenHit(txn_id=ORIGINAL, same_content=True)
    reply = ExecuteReply(txn_id=TXN, committed=False, token_hit=hit)
    (lookup,) = sends(txn.step_reply(send.call_id, reply, T0 + 10))
    assert txn.state is WriteState.FOLLOWING
    assert lookup.request == LedgerLookupRequest(partition=P2, txn_id=ORIGINAL)
