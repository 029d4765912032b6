"""Write coordinator, one-partition transactions: one ExecuteRequest, its reply is the answer."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from support.coordinator import partition_of

from kvstore.coordinator.core import WriteEffect, WriteTxn
from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.results import TxnResult
from kvstore.coordinator.state import WriteState
from kvstore.errors import ErrorCode, InternalError, ValidationError
from kvstore.limits import PREPARE_DEADLINE_MS, RESEND_INTERVAL_MS
from kvstore.messages import (
    ExecuteReply,
    ExecuteRequest,
    LedgerLookupRequest,
    LedgerRecord,
    LedgerReply,
    OpOutcome,
    ReasonCode,
    TokenHit,
    TxnState,
)
from kvstore.ops import Op, OpKind, txn_fingerprint
from kvstore.types import PartitionId, Timestamp, TxnId

T0 = 1_000_000_000
TXN = TxnId("1" * 32)
ORIGINAL = TxnId("0" * 32)
TS = Timestamp(T0, 0, 7)
ORIGINAL_TS = Timestamp(T0 - 5_000_000, 3, 9)
PART = PartitionId(1)
OPS = (Op(kind=OpKind.PUT, key="a:1", value=1), Op(kind=OpKind.DELETE, key="a:2"))


def sends(effects: Sequence[WriteEffect]) -> list[Send]:
    assert all(isinstance(e, Send) for e in effects), effects
    return [e for e in effects if isinstance(e, Send)]


def finish(effects: Sequence[WriteEffect]) -> TxnResult:
    results = [e.result for e in effects if isinstance(e, Finish)]
    assert len(results) == 1, effects
    return results[0]


def start(token: str | None = None) -> tuple[WriteTxn, Send]:
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0, token=token)
    (send,) = sends(txn.step_start(T0))
    return txn, send


def test_execute_request_carries_the_whole_transaction() -> None:
    txn, send = start()
    assert txn.state is WriteState.EXECUTING
    assert send.request == ExecuteRequest(partition=PART, txn_id=TXN, ts=TS, ops=OPS)
    assert send.deadline_us == T0 + PREPARE_DEADLINE_MS * 1000
    assert txn.next_deadline_us == send.deadline_us


def test_execute_request_carries_token_and_fingerprint() -> None:
    _, send = start(token="tok-1")
    assert isinstance(send.request, ExecuteRequest)
    assert send.request.token == "tok-1"
    assert send.request.fingerprint == txn_fingerprint(OPS)


def test_committed() -> None:
    txn, send = start()
    effects = txn.step_reply(send.call_id, ExecuteReply(txn_id=TXN, committed=True), T0 + 10)
    assert finish(effects) == TxnResult(committed=True, txn_id=TXN, ts=TS)
    assert txn.done
    assert txn.next_deadline_us is None


def test_cancelled_reports_reasons_in_request_order() -> None:
    txn, send = start()
    reasons = (OpOutcome(), OpOutcome(code=ReasonCode.CONDITION_FAILED, message="no"))
    reply = ExecuteReply(txn_id=TXN, committed=False, outcomes=reasons)
    result = finish(txn.step_reply(send.call_id, reply, T0 + 10))
    assert result.error is ErrorCode.TransactionCanceled
    assert result.outcomes == reasons
    assert not result.committed
    assert txn.done


def test_whole_request_error_is_the_answer() -> None:
    txn, send = start()
    reply = ExecuteReply(txn_id=TXN, committed=False, error=ErrorCode.ClockSkew)
    result = finish(txn.step_reply(send.call_id, reply, T0 + 10))
    assert result.error is ErrorCode.ClockSkew
    assert txn.done


@pytest.mark.parametrize("how", ["failed", "timeout"])
def test_a_call_that_may_have_run_means_outcome_unknown(how: str) -> None:
    txn, send = start()
    if how == "failed":
        effects = txn.step_failed(send.call_id, ErrorCode.OutcomeUnknown, T0 + 10)
    else:
        assert txn.step_tick(send.deadline_us - 1) == []
        effects = txn.step_tick(send.deadline_us)
    assert finish(effects).error is ErrorCode.OutcomeUnknown
    assert txn.done
    # The late reply of the abandoned call changes nothing.
    assert txn.step_reply(send.call_id, ExecuteReply(txn_id=TXN, committed=True), T0) == []


@pytest.mark.parametrize(
    "code",
    [ErrorCode.Overloaded, ErrorCode.DiskFull, ErrorCode.WrongOwner, ErrorCode.Unavailable],
)
def test_a_definite_refusal_ran_nothing_and_is_the_answer(code: ErrorCode) -> None:
    txn, send = start()
    result = finish(txn.step_failed(send.call_id, code, T0 + 10))
    assert result.error is code and not result.committed
    assert txn.done


def test_reply_for_unknown_call_is_ignored() -> None:
    txn, send = start()
    assert txn.step_reply(send.call_id + 99, ExecuteReply(txn_id=TXN, committed=True), T0) == []
    assert txn.state is WriteState.EXECUTING


def test_token_used_with_other_content() -> None:
    txn, send = start(token="tok-1")
    hit = TokenHit(txn_id=ORIGINAL, same_content=False)
    reply = ExecuteReply(txn_id=TXN, committed=False, token_hit=hit)
    result = finish(txn.step_reply(send.call_id, reply, T0 + 10))
    assert result.error is ErrorCode.IdempotencyMismatch
    assert txn.done


def _record(state: TxnState, completed: bool, outcomes: tuple[OpOutcome, ...] = ()) -> LedgerReply:
    record = LedgerRecord(
        txn_id=ORIGINAL,
        ts=ORIGINAL_TS,
        state=state,
        participants=(PART,),
        outcomes=outcomes,
        completed_us=T0 if completed else None,
    )
    return LedgerReply(txn_id=ORIGINAL, record=record)


def test_token_same_content_follows_the_original_until_completed() -> None:
    txn, send = start(token="tok-1")
    hit = TokenHit(txn_id=ORIGINAL, same_content=True)
    reply = ExecuteReply(txn_id=TXN, committed=False, token_hit=hit)
    (lookup,) = sends(txn.step_reply(send.call_id, reply, T0 + 10))
    assert txn.state is WriteState.FOLLOWING
    assert lookup.request == LedgerLookupRequest(partition=PART, txn_id=ORIGINAL)
    # Decided but not completed yet: ask again one interval later.
    assert txn.step_reply(lookup.call_id, _record(TxnState.COMMITTED, False), T0 + 20) == []
    again_at = T0 + 20 + RESEND_INTERVAL_MS * 1000
    assert txn.next_deadline_us == again_at
    assert txn.step_tick(again_at - 1) == []
    (lookup2,) = sends(txn.step_tick(again_at))
    assert lookup2.call_id != lookup.call_id
    result = finish(txn.step_reply(lookup2.call_id, _record(TxnState.COMMITTED, True), again_at))
    assert result == TxnResult(committed=True, txn_id=ORIGINAL, ts=ORIGINAL_TS)
    assert txn.done


def test_constructor_validates_before_anything() -> None:
    with pytest.raises(ValidationError):
        WriteTxn(TXN, TS, (), partition_of, T0)
    with pytest.raises(ValidationError):
        WriteTxn(TXN, TS, (OPS[0], OPS[0]), partition_of, T0)
    with pytest.raises(ValidationError):
        WriteTxn(TXN, TS, OPS, partition_of, T0, txn_ops_max=1)
    with pytest.raises(ValidationError):
        WriteTxn(TXN, TS, OPS, partition_of, T0, token="")
    with pytest.raises(ValidationError):
        WriteTxn(TXN, TS, OPS, partition_of, T0, token="x" * 65)


def test_illegal_transition_raises_and_poisons() -> None:
    txn, send = start()
    with pytest.raises(InternalError, match="illegal transition EXECUTING -> EXECUTING"):
        txn.step_start(T0)
    with pytest.raises(InternalError, match="unusable"):
        txn.step_reply(send.call_id, ExecuteReply(txn_id=TXN, committed=True), T0)
    with pytest.raises(InternalError):
        txn.step_tick(T0)
    with pytest.raises(InternalError):
        txn.step_failed(send.call_id, ErrorCode.Unavailable, T0)
