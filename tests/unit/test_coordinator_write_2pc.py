"""Write coordinator, multi-partition transactions: prepare, then parallel commit (the anchor's
decide and the others' commits at once) or decide CANCELLED and cancel, then complete.

Every test is a small event script: start, hand-made partition replies, ticks; then a look at
the exact effects. Keys ``a:*`` live on partition 1, ``b:*`` on 2, ``c:*`` on 3. The transaction
below has four ops; its first op is on partition 2, the anchor. The anchor's ``decide`` resolves
its own intents with the decision, so commits and cancels go to the other participants (1 and 3)
only.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from support.coordinator import finishes, partition_of, sends

from kvstore.coordinator.core import NO_ANSWER, WriteEffect, WriteTxn
from kvstore.coordinator.effects import Send
from kvstore.coordinator.results import TxnResult
from kvstore.coordinator.state import WriteState
from kvstore.errors import ErrorCode
from kvstore.limits import (
    DECISION_ATTEMPTS_MAX,
    FINISH_DEADLINE_MS,
    PREPARE_DEADLINE_MS,
    RESEND_INTERVAL_MS,
    RPC_TIMEOUT_MS,
)
from kvstore.messages import (
    CancelReply,
    CancelRequest,
    CommitReply,
    CommitRequest,
    CompleteRequest,
    DecideRequest,
    LedgerRecord,
    LedgerReply,
    OpOutcome,
    PrepareReply,
    PrepareRequest,
    ReasonCode,
    TxnState,
)
from kvstore.ops import Op, OpKind
from kvstore.types import PartitionId, Timestamp, TxnId

T0 = 1_000_000_000
TXN = TxnId("1" * 32)
TS = Timestamp(T0, 0, 7)
P1, P2, P3 = PartitionId(1), PartitionId(2), PartitionId(3)
ANCHOR = P2
OPS = (
    Op(kind=OpKind.PUT, key="b:1", value=1),
    Op(kind=OpKind.PUT, key="a:1", value=2),
    Op(kind=OpKind.DELETE, key="b:2"),
    Op(kind=OpKind.PUT, key="c:1", value=3),
)
OK = OpOutcome()
SLICES = {P2: (OPS[0], OPS[2]), P1: (OPS[1],), P3: (OPS[3],)}
OTHERS = (P1, P3)  # the participants that are not the anchor: they get commits and cancels


# --- script helpers -------------------------------------------------------------------------


def to(effects: Sequence[WriteEffect], partition: PartitionId) -> Send:
    (send,) = [s for s in sends(effects) if s.request.partition == partition]
    return send


def only_send(effects: Sequence[WriteEffect]) -> Send:
    assert finishes(effects) == []
    (send,) = sends(effects)
    return send


def state_of(txn: WriteTxn) -> WriteState:
    """The state, read through a call so the type checker does not narrow it between events."""
    return txn.state


def yes(partition: PartitionId) -> PrepareReply:
    return PrepareReply(txn_id=TXN, accepted=True, outcomes=(OK,) * len(SLICES[partition]))


def ledger(state: TxnState) -> LedgerReply:
    record = LedgerRecord(txn_id=TXN, ts=TS, state=state, participants=(P1, P2, P3))
    return LedgerReply(txn_id=TXN, record=record)


def start(now: int = T0) -> tuple[WriteTxn, dict[PartitionId, Send]]:
    txn = WriteTxn(TXN, TS, OPS, partition_of, now)
    effects = txn.step_start(now)
    return txn, {p: to(effects, p) for p in (P1, P2, P3)}


def all_yes_calls(
    txn: WriteTxn, prepares: dict[PartitionId, Send], now: int = T0 + 10
) -> dict[PartitionId, Send]:
    """Every participant votes yes; returns the parallel commit's calls by partition: the
    anchor's decide and the others' commits, all sent at the last vote."""
    assert txn.step_reply(prepares[P1].call_id, yes(P1), now) == []
    assert txn.step_reply(prepares[P2].call_id, yes(P2), now) == []
    effects = txn.step_reply(prepares[P3].call_id, yes(P3), now)
    assert finishes(effects) == []
    return {s.request.partition: s for s in sends(effects)}


def all_yes(txn: WriteTxn, prepares: dict[PartitionId, Send], now: int = T0 + 10) -> Send:
    """Every participant votes yes; returns the anchor's decide call."""
    return all_yes_calls(txn, prepares, now)[ANCHOR]


def committing(now: int = T0 + 20) -> tuple[WriteTxn, dict[PartitionId, Send]]:
    """A transaction whose anchor answered COMMITTED; returns its commit calls (non-anchor)."""
    txn, prepares = start()
    calls = all_yes_calls(txn, prepares)
    decide = calls.pop(ANCHOR)
    assert txn.step_reply(decide.call_id, ledger(TxnState.COMMITTED), now) == []
    assert [s.request for s in calls.values()] == [
        CommitRequest(partition=p, txn_id=TXN) for p in OTHERS
    ]
    return txn, calls


def reject_p1(txn: WriteTxn, prepares: dict[PartitionId, Send], now: int = T0 + 10) -> Send:
    """P1 votes no, the others yes; returns the decide call, sent once the last vote is in."""
    reason = OpOutcome(code=ReasonCode.CONDITION_FAILED, message="version is 4")
    reply = PrepareReply(txn_id=TXN, accepted=False, outcomes=(reason,))
    assert txn.step_reply(prepares[P1].call_id, reply, now) == []
    assert txn.step_reply(prepares[P2].call_id, yes(P2), now) == []
    return only_send(txn.step_reply(prepares[P3].call_id, yes(P3), now))


# --- happy path -----------------------------------------------------------------------------


def test_happy_path_exact_sends() -> None:
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0)
    assert txn.next_deadline_us is None
    effects = txn.step_start(T0)
    assert state_of(txn) is WriteState.PREPARING
    record = LedgerRecord(txn_id=TXN, ts=TS, state=TxnState.STAGING, participants=(P1, P2, P3))
    # One prepare per partition, anchor first; only the anchor's carries the ledger record.
    assert [s.request for s in sends(effects)] == [
        PrepareRequest(partition=P2, txn_id=TXN, ts=TS, ops=SLICES[P2], anchor=P2, ledger=record),
        PrepareRequest(partition=P1, txn_id=TXN, ts=TS, ops=SLICES[P1], anchor=P2),
        PrepareRequest(partition=P3, txn_id=TXN, ts=TS, ops=SLICES[P3], anchor=P2),
    ]
    assert {s.deadline_us for s in sends(effects)} == {T0 + PREPARE_DEADLINE_MS * 1000}
    assert len({s.call_id for s in sends(effects)}) == 3
    prepares = {p: to(effects, p) for p in (P1, P2, P3)}

    # All yes: parallel commit, in one round. The anchor's decide (its record and its own
    # slice) and the others' commits leave together.
    assert txn.step_reply(prepares[P1].call_id, yes(P1), T0 + 10) == []
    assert txn.step_reply(prepares[P2].call_id, yes(P2), T0 + 10) == []
    effects = txn.step_reply(prepares[P3].call_id, yes(P3), T0 + 10)
    assert state_of(txn) is WriteState.COMMITTING
    assert finishes(effects) == []
    assert [s.request for s in sends(effects)] == [
        DecideRequest(partition=ANCHOR, txn_id=TXN, decision=TxnState.COMMITTED),
        *(CommitRequest(partition=p, txn_id=TXN) for p in OTHERS),
    ]
    assert {s.deadline_us for s in sends(effects)} == {T0 + 10 + RPC_TIMEOUT_MS * 1000}
    decide = to(effects, ANCHOR)
    commits = {p: to(effects, p) for p in OTHERS}
    assert txn.step_reply(decide.call_id, ledger(TxnState.COMMITTED), T0 + 20) == []

    # The answer waits for every other participant (read-your-writes), then complete goes out.
    assert txn.step_reply(commits[P1].call_id, CommitReply(txn_id=TXN, applied=1), T0 + 30) == []
    assert state_of(txn) is WriteState.COMMITTING
    effects = txn.step_reply(commits[P3].call_id, CommitReply(txn_id=TXN, applied=1), T0 + 40)
    (complete,) = sends(effects)
    assert complete.request == CompleteRequest(partition=ANCHOR, txn_id=TXN)
    assert finishes(effects) == [TxnResult(committed=True, txn_id=TXN, ts=TS)]
    assert effects[0] == complete  # completion is sent before the answer is released
    assert txn.done
    assert txn.result == TxnResult(committed=True, txn_id=TXN, ts=TS)
    assert txn.next_deadline_us is None
    # The complete call's answer (or anything else late) is ignored.
    assert txn.step_reply(complete.call_id, ledger(TxnState.COMMITTED), T0 + 50) == []
    assert txn.step_tick(T0 + 10**9) == []


def test_call_ids_are_unique_across_the_whole_transaction() -> None:
    txn, prepares = start()
    calls = all_yes_calls(txn, prepares)
    ids = [s.call_id for s in prepares.values()] + [s.call_id for s in calls.values()]
    assert len(ids) == len(set(ids))


def test_the_answer_waits_for_the_anchor_even_when_every_other_commit_is_acked() -> None:
    txn, prepares = start()
    calls = all_yes_calls(txn, prepares)
    ack = CommitReply(txn_id=TXN, applied=1)
    assert txn.step_reply(calls[P1].call_id, ack, T0 + 20) == []
    assert txn.step_reply(calls[P3].call_id, ack, T0 + 21) == []
    assert state_of(txn) is WriteState.COMMITTING  # the anchor has not applied its slice yet
    effects = txn.step_reply(calls[ANCHOR].call_id, ledger(TxnState.COMMITTED), T0 + 30)
    assert [s.request for s in sends(effects)] == [CompleteRequest(partition=ANCHOR, txn_id=TXN)]
    assert finishes(effects) == [TxnResult(committed=True, txn_id=TXN, ts=TS)]
    assert txn.done


# --- prepare rejected, failed, timed out ----------------------------------------------------


def test_reject_cancels_with_reasons_in_request_order() -> None:
    txn, prepares = start()
    assert txn.step_reply(prepares[P3].call_id, yes(P3), T0 + 5) == []
    reason = OpOutcome(code=ReasonCode.CONDITION_FAILED, message="version is 4")
    conflict = OpOutcome(code=ReasonCode.TRANSACTION_CONFLICT, message="intent of t9")
    anchor_no = PrepareReply(txn_id=TXN, accepted=False, outcomes=(reason, conflict))
    # Not decided at the first "no": P1's vote may carry its op's own reason.
    assert txn.step_reply(prepares[P2].call_id, anchor_no, T0 + 10) == []
    p1_reason = OpOutcome(code=ReasonCode.CONDITION_FAILED, message="exists is false")
    p1_no = PrepareReply(txn_id=TXN, accepted=False, outcomes=(p1_reason,))
    decide = only_send(txn.step_reply(prepares[P1].call_id, p1_no, T0 + 11))
    expected = (reason, p1_reason, conflict, OK)
    assert decide.request == DecideRequest(
        partition=ANCHOR, txn_id=TXN, decision=TxnState.CANCELLED, outcomes=expected
    )
    effects = txn.step_reply(decide.call_id, ledger(TxnState.CANCELLED), T0 + 20)
    assert txn.state is WriteState.CANCELLING
    # A cancel is answered right away; the anchor cleared its own intents with the decision,
    # so cancels go to the other participants only.
    assert finishes(effects) == [
        TxnResult(
            committed=False,
            txn_id=TXN,
            ts=TS,
            outcomes=expected,
            error=ErrorCode.TransactionCanceled,
        )
    ]
    assert [s.request for s in sends(effects)] == [
        CancelRequest(partition=p, txn_id=TXN) for p in OTHERS
    ]
    cancels = {p: to(effects, p) for p in OTHERS}
    assert txn.step_reply(cancels[P1].call_id, CancelReply(txn_id=TXN, cleared=1), T0) == []
    assert txn.state is WriteState.CANCELLING  # still waiting for P3's acknowledgement
    effects = txn.step_reply(cancels[P3].call_id, CancelReply(txn_id=TXN, cleared=0), T0 + 30)
    assert [s.request for s in sends(effects)] == [CompleteRequest(partition=ANCHOR, txn_id=TXN)]
    assert finishes(effects) == []  # answered exactly once
    assert txn.done


def test_reject_without_reasons_gets_conflict_reasons() -> None:
    txn, prepares = start()
    reply = PrepareReply(txn_id=TXN, accepted=False)
    assert txn.step_reply(prepares[P2].call_id, reply, T0 + 10) == []
    assert txn.step_reply(prepares[P1].call_id, yes(P1), T0 + 10) == []
    decide = only_send(txn.step_reply(prepares[P3].call_id, yes(P3), T0 + 10))
    assert isinstance(decide.request, DecideRequest)
    codes = [o.code for o in decide.request.outcomes]
    conflict, none = ReasonCode.TRANSACTION_CONFLICT, ReasonCode.NONE
    assert codes == [conflict, none, conflict, none]


def test_prepare_timeout_via_tick_cancels_with_no_answer_reasons() -> None:
    txn, prepares = start()
    deadline = T0 + PREPARE_DEADLINE_MS * 1000
    assert txn.step_reply(prepares[P1].call_id, yes(P1), T0 + 5) == []
    assert txn.step_reply(prepares[P2].call_id, yes(P2), T0 + 6) == []
    assert txn.next_deadline_us == deadline
    assert txn.step_tick(deadline - 1) == []
    decide = only_send(txn.step_tick(deadline))
    no_answer = OpOutcome(code=ReasonCode.TRANSACTION_CONFLICT, message=NO_ANSWER)
    assert decide.request == DecideRequest(
        partition=ANCHOR,
        txn_id=TXN,
        decision=TxnState.CANCELLED,
        outcomes=(OK, OK, OK, no_answer),
    )
    assert txn.step_reply(prepares[P3].call_id, yes(P3), deadline + 1) == []  # too late


def test_prepare_failure_cancels_once_the_other_votes_are_in() -> None:
    txn, prepares = start()
    assert txn.step_failed(prepares[P1].call_id, ErrorCode.Unavailable, T0 + 3) == []
    assert txn.step_reply(prepares[P2].call_id, yes(P2), T0 + 4) == []
    decide = only_send(txn.step_reply(prepares[P3].call_id, yes(P3), T0 + 5))
    assert isinstance(decide.request, DecideRequest)
    assert decide.request.decision is TxnState.CANCELLED
    assert decide.request.outcomes[1].message == NO_ANSWER


def test_prepare_refusal_error_cancels() -> None:
    txn, prepares = start()
    reply = PrepareReply(txn_id=TXN, accepted=False, error=ErrorCode.ClockSkew)
    assert txn.step_reply(prepares[P3].call_id, reply, T0 + 3) == []
    assert txn.step_reply(prepares[P1].call_id, yes(P1), T0 + 4) == []
    decide = only_send(txn.step_reply(prepares[P2].call_id, yes(P2), T0 + 5))
    assert isinstance(decide.request, DecideRequest)
    assert decide.request.decision is TxnState.CANCELLED
    assert "ClockSkew" in decide.request.outcomes[3].message


# --- decide -----------------------------------------------------------------------------------


def test_a_cancelled_anchor_after_all_yes_claims_nothing() -> None:
    """Rule 5a makes it impossible (recovery cancels only on a durable refusal, and every
    participant voted yes); if the anchor ever answers CANCELLED, commits have gone out already,
    so the answer is OutcomeUnknown, never "cancelled", and nothing more is sent."""
    txn, prepares = start()
    decide = all_yes(txn, prepares)
    effects = txn.step_reply(decide.call_id, ledger(TxnState.CANCELLED), T0 + 20)
    assert finishes(effects) == [
        TxnResult(committed=False, txn_id=TXN, ts=TS, error=ErrorCode.OutcomeUnknown)
    ]
    assert sends(effects) == []
    assert txn.cas_lost and txn.done


def test_decision_committed_by_another_is_followed() -> None:
    txn, prepares = start()
    decide = reject_p1(txn, prepares)
    effects = txn.step_reply(decide.call_id, ledger(TxnState.COMMITTED), T0 + 20)
    assert txn.state is WriteState.COMMITTING
    assert finishes(effects) == []
    assert [s.request for s in sends(effects)] == [
        CommitRequest(partition=p, txn_id=TXN) for p in OTHERS
    ]
    commits = {p: to(effects, p) for p in OTHERS}
    ack = CommitReply(txn_id=TXN, applied=0)
    assert txn.step_reply(commits[P1].call_id, ack, T0) == []
    effects = txn.step_reply(commits[P3].call_id, ack, T0)
    assert finishes(effects) == [TxnResult(committed=True, txn_id=TXN, ts=TS)]
    assert txn.done


def test_decide_retries_then_outcome_unknown() -> None:
    txn, prepares = start()
    decide = all_yes(txn, prepares)
    now = T0 + 10
    for attempt in range(1, DECISION_ATTEMPTS_MAX):
        now += 1000
        assert txn.step_failed(decide.call_id, ErrorCode.Unavailable, now) == []
        retry_at = now + RESEND_INTERVAL_MS * 1000
        assert txn.next_deadline_us == retry_at
        assert txn.step_tick(retry_at - 1) == []
        retry = only_send(txn.step_tick(retry_at))
        assert retry.request == decide.request, attempt
        assert retry.call_id != decide.call_id
        # A late answer to an abandoned attempt is ignored.
        assert txn.step_reply(decide.call_id, ledger(TxnState.COMMITTED), retry_at) == []
        decide, now = retry, retry_at
    effects = txn.step_failed(decide.call_id, ErrorCode.Unavailable, now + 1)
    assert finishes(effects) == [
        TxnResult(committed=False, txn_id=TXN, ts=TS, error=ErrorCode.OutcomeUnknown)
    ]
    assert sends(effects) == []
    assert txn.done


def test_decide_timeout_via_tick_is_retried() -> None:
    txn, prepares = start()
    calls = all_yes_calls(txn, prepares)
    ack = CommitReply(txn_id=TXN, applied=1)
    for p in OTHERS:  # the others applied; only the anchor's answer is missing
        assert txn.step_reply(calls[p].call_id, ack, T0 + 11) == []
    decide = calls[ANCHOR]
    assert txn.next_deadline_us == decide.deadline_us
    assert txn.step_tick(decide.deadline_us) == []
    retry = only_send(txn.step_tick(decide.deadline_us + RESEND_INTERVAL_MS * 1000))
    assert retry.request == decide.request


def test_decide_without_record_is_outcome_unknown() -> None:
    txn, prepares = start()
    decide = all_yes(txn, prepares)
    effects = txn.step_reply(decide.call_id, LedgerReply(txn_id=TXN, record=None), T0 + 20)
    assert [r.error for r in finishes(effects)] == [ErrorCode.OutcomeUnknown]
    assert txn.done


# --- commit and cancel delivery -------------------------------------------------------------


def test_commit_resent_after_failure() -> None:
    txn, commits = committing()
    ack = CommitReply(txn_id=TXN, applied=1)
    assert txn.step_reply(commits[P1].call_id, ack, T0 + 30) == []
    assert txn.step_failed(commits[P3].call_id, ErrorCode.Unavailable, T0 + 40) == []
    resend_at = T0 + 40 + RESEND_INTERVAL_MS * 1000
    assert txn.step_tick(resend_at - 1) == []
    again = only_send(txn.step_tick(resend_at))
    assert again.request == CommitRequest(partition=P3, txn_id=TXN)
    assert again.call_id != commits[P3].call_id
    assert txn.step_reply(commits[P3].call_id, ack, resend_at) == []  # old attempt: ignored
    assert state_of(txn) is WriteState.COMMITTING  # the old attempt's ack did not count
    effects = txn.step_reply(again.call_id, ack, resend_at + 1)
    assert [r.committed for r in finishes(effects)] == [True]
    assert txn.done


def test_commit_timeout_via_tick_is_resent() -> None:
    txn, commits = committing()
    ack = CommitReply(txn_id=TXN, applied=1)
    assert txn.step_reply(commits[P1].call_id, ack, T0 + 30) == []
    deadline = commits[P3].deadline_us
    assert txn.next_deadline_us == deadline
    assert txn.step_tick(deadline) == []
    again = only_send(txn.step_tick(deadline + RESEND_INTERVAL_MS * 1000))
    assert again.request == CommitRequest(partition=P3, txn_id=TXN)


def test_wrong_reply_is_not_an_ack() -> None:
    txn, commits = committing()
    bogus = CancelReply(txn_id=TXN, cleared=0)
    assert txn.step_reply(commits[P1].call_id, bogus, T0 + 30) == []
    again = only_send(txn.step_tick(T0 + 30 + RESEND_INTERVAL_MS * 1000))
    assert again.request == CommitRequest(partition=P1, txn_id=TXN)


def test_finish_deadline_while_committing_is_outcome_unknown() -> None:
    txn, commits = committing()
    ack = CommitReply(txn_id=TXN, applied=1)
    assert txn.step_reply(commits[P1].call_id, ack, T0 + 30) == []
    now = T0 + 30
    deadline = T0 + FINISH_DEADLINE_MS * 1000
    resends = 0
    effects: list[WriteEffect] = []
    while now < deadline:  # P3 never answers: re-sent until the deadline
        next_at = txn.next_deadline_us
        assert next_at is not None and next_at > now
        now = min(next_at, deadline)
        effects = txn.step_tick(now)
        for send in sends(effects):
            assert send.request == CommitRequest(partition=P3, txn_id=TXN)  # never the anchor
            resends += 1
    assert resends > 0
    assert finishes(effects) == [
        TxnResult(committed=False, txn_id=TXN, ts=TS, error=ErrorCode.OutcomeUnknown)
    ]
    assert sends(effects) == []  # recovery completes it, not us
    assert txn.done


def test_finish_deadline_while_cancelling_just_stops() -> None:
    txn, prepares = start()
    decide = reject_p1(txn, prepares)
    effects = txn.step_reply(decide.call_id, ledger(TxnState.CANCELLED), T0 + 20)
    assert len(finishes(effects)) == 1
    deadline = T0 + FINISH_DEADLINE_MS * 1000
    assert txn.step_tick(deadline) == []
    assert txn.done


@pytest.mark.parametrize("reply_state", [TxnState.PREPARING, TxnState.STAGING])
def test_undecided_record_after_decide_is_retried(reply_state: TxnState) -> None:
    txn, prepares = start()
    decide = all_yes(txn, prepares)
    assert txn.step_reply(decide.call_id, ledger(reply_state), T0 + 20) == []
    retry = only_send(txn.step_tick(T0 + 20 + RESEND_INTERVAL_MS * 1000))
    assert retry.request == decide.request


@pytest.mark.parametrize("reply_state", [TxnState.PREPARING, TxnState.STAGING])
def test_undecided_record_after_a_cancel_decide_is_retried(reply_state: TxnState) -> None:
    txn, prepares = start()
    decide = reject_p1(txn, prepares)
    assert txn.step_reply(decide.call_id, ledger(reply_state), T0 + 20) == []
    retry = only_send(txn.step_tick(T0 + 20 + RESEND_INTERVAL_MS * 1000))
    assert retry.request == decide.request


# --- the anchor's slice is resolved by its decide -------------------------------------------


def test_the_only_other_participants_ack_answers_a_commit() -> None:
    """Two partitions: the anchor applies its slice at decide, so one ack completes it."""
    ops = (Op(kind=OpKind.PUT, key="b:1", value=1), Op(kind=OpKind.PUT, key="a:1", value=2))
    txn = WriteTxn(TXN, TS, ops, partition_of, T0)
    prepares = {s.request.partition: s for s in sends(txn.step_start(T0))}
    assert list(prepares) == [P2, P1]
    one_yes = PrepareReply(txn_id=TXN, accepted=True, outcomes=(OK,))
    assert txn.step_reply(prepares[P1].call_id, one_yes, T0 + 5) == []
    calls = sends(txn.step_reply(prepares[P2].call_id, one_yes, T0 + 10))
    decide, commit = calls
    assert decide.request == DecideRequest(partition=P2, txn_id=TXN, decision=TxnState.COMMITTED)
    assert commit.request == CommitRequest(partition=P1, txn_id=TXN)
    record = LedgerRecord(txn_id=TXN, ts=TS, state=TxnState.COMMITTED, participants=(P1, P2))
    reply = LedgerReply(txn_id=TXN, record=record)
    assert txn.step_reply(decide.call_id, reply, T0 + 20) == []
    assert state_of(txn) is WriteState.COMMITTING
    effects = txn.step_reply(commit.call_id, CommitReply(txn_id=TXN, applied=1), T0 + 30)
    assert [s.request for s in sends(effects)] == [CompleteRequest(partition=P2, txn_id=TXN)]
    assert finishes(effects) == [TxnResult(committed=True, txn_id=TXN, ts=TS)]
    assert effects[0] == sends(effects)[0]  # completion is sent before the answer is released
    assert txn.done


HOME = PartitionId(9)  # a token's home partition, holding none of the keys


def home_anchored() -> tuple[WriteTxn, dict[PartitionId, Send]]:
    """A tokened transaction anchored at HOME, every vote yes; returns the parallel commit's
    calls by partition (HOME's is the decide)."""
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0, token="tok-1", token_home=lambda _: HOME)
    assert txn.anchor == HOME and txn.participants == (P1, P2, P3, HOME)
    prepares = {s.request.partition: s for s in sends(txn.step_start(T0))}
    assert list(prepares) == [HOME, P1, P2, P3]
    home = prepares[HOME].request
    assert isinstance(home, PrepareRequest)
    assert home.ops == () and home.ledger is not None  # the home carries only the ledger record
    ledger_only_yes = PrepareReply(txn_id=TXN, accepted=True, outcomes=())
    assert txn.step_reply(prepares[HOME].call_id, ledger_only_yes, T0 + 5) == []
    assert txn.step_reply(prepares[P1].call_id, yes(P1), T0 + 6) == []
    assert txn.step_reply(prepares[P2].call_id, yes(P2), T0 + 7) == []
    effects = txn.step_reply(prepares[P3].call_id, yes(P3), T0 + 10)
    return txn, {s.request.partition: s for s in sends(effects)}


def home_ledger(state: TxnState) -> LedgerReply:
    record = LedgerRecord(
        txn_id=TXN, ts=TS, state=state, participants=(P1, P2, P3, HOME), token="tok-1"
    )
    return LedgerReply(txn_id=TXN, record=record)


def test_a_ledger_only_token_home_anchor_gets_no_commit_and_the_key_holders_all_do() -> None:
    txn, calls = home_anchored()
    decide = calls.pop(HOME)
    assert decide.request == DecideRequest(partition=HOME, txn_id=TXN, decision=TxnState.COMMITTED)
    # Every key-holding partition is a non-anchor participant here: all of them get a commit.
    assert [s.request for s in calls.values()] == [
        CommitRequest(partition=p, txn_id=TXN) for p in (P1, P2, P3)
    ]
    assert txn.step_reply(decide.call_id, home_ledger(TxnState.COMMITTED), T0 + 20) == []
    commits = calls
    assert txn.step_reply(commits[P2].call_id, CommitReply(txn_id=TXN, applied=2), T0 + 30) == []
    assert txn.step_reply(commits[P1].call_id, CommitReply(txn_id=TXN, applied=1), T0 + 31) == []
    assert state_of(txn) is WriteState.COMMITTING
    effects = txn.step_reply(commits[P3].call_id, CommitReply(txn_id=TXN, applied=1), T0 + 32)
    assert [s.request for s in sends(effects)] == [CompleteRequest(partition=HOME, txn_id=TXN)]
    assert finishes(effects) == [TxnResult(committed=True, txn_id=TXN, ts=TS)]
    assert txn.done


def test_a_ledger_only_token_home_anchor_gets_no_cancel_and_the_key_holders_all_do() -> None:
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0, token="tok-1", token_home=lambda _: HOME)
    prepares = {s.request.partition: s for s in sends(txn.step_start(T0))}
    ledger_only_yes = PrepareReply(txn_id=TXN, accepted=True, outcomes=())
    assert txn.step_reply(prepares[HOME].call_id, ledger_only_yes, T0 + 5) == []
    assert txn.step_reply(prepares[P1].call_id, yes(P1), T0 + 6) == []
    assert txn.step_reply(prepares[P2].call_id, yes(P2), T0 + 7) == []
    decide = only_send(txn.step_failed(prepares[P3].call_id, ErrorCode.Unavailable, T0 + 10))
    assert isinstance(decide.request, DecideRequest)
    assert decide.request.decision is TxnState.CANCELLED
    effects = txn.step_reply(decide.call_id, home_ledger(TxnState.CANCELLED), T0 + 20)
    no_answer = OpOutcome(code=ReasonCode.TRANSACTION_CONFLICT, message=NO_ANSWER)
    assert finishes(effects) == [
        TxnResult(
            committed=False,
            txn_id=TXN,
            ts=TS,
            outcomes=(OK, OK, OK, no_answer),
            error=ErrorCode.TransactionCanceled,
        )
    ]
    assert [s.request for s in sends(effects)] == [
        CancelRequest(partition=p, txn_id=TXN) for p in (P1, P2, P3)
    ]
    cancels = {p: to(effects, p) for p in (P1, P2, P3)}
    for p in (P1, P2):
        assert txn.step_reply(cancels[p].call_id, CancelReply(txn_id=TXN, cleared=1), T0 + 30) == []
    effects = txn.step_reply(cancels[P3].call_id, CancelReply(txn_id=TXN, cleared=1), T0 + 31)
    assert [s.request for s in sends(effects)] == [CompleteRequest(partition=HOME, txn_id=TXN)]
    assert finishes(effects) == []  # answered exactly once, earlier
    assert txn.done
