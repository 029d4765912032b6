"""Recovery of decided transactions, and what storage nodes do with stale intents."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.coordinator import finishes, sends

from kvstore.coordinator.effects import Send
from kvstore.coordinator.recovery import Recovery, RecoveryEffect, resolve_intent_action
from kvstore.coordinator.results import RecoveryResult
from kvstore.coordinator.state import RecoveryState
from kvstore.errors import ErrorCode
from kvstore.limits import FINISH_DEADLINE_MS, RESEND_INTERVAL_MS
from kvstore.messages import (
    CancelReply,
    CancelRequest,
    CommitReply,
    CommitRequest,
    CompleteRequest,
    DecideRequest,
    LedgerLookupRequest,
    LedgerRecord,
    LedgerReply,
    PreventRequest,
    TxnState,
)
from kvstore.storage_node.resolver import MarkSettle
from kvstore.types import PartitionId, Timestamp, TxnId

T0 = 1_000_000_000
TXN = TxnId("1" * 32)
P1, P2, P3 = PartitionId(1), PartitionId(2), PartitionId(3)


def record(state: TxnState, completed: bool = False) -> LedgerRecord:
    return LedgerRecord(
        txn_id=TXN,
        ts=Timestamp(T0, 0, 1),
        state=state,
        participants=(P1, P2, P3),
        completed_us=T0 if completed else None,
    )


def test_committed_record_is_committed_everywhere_then_completed() -> None:
    recovery = Recovery(record(TxnState.COMMITTED), P2, T0)
    effects = recovery.step_start(T0)
    assert recovery.state is RecoveryState.DRIVING
    assert [s.request for s in sends(effects)] == [
        CommitRequest(partition=p, txn_id=TXN) for p in (P1, P2, P3)
    ]
    commits = {s.request.partition: s for s in sends(effects)}
    ack = CommitReply(txn_id=TXN, applied=0)
    assert recovery.step_reply(commits[P1].call_id, ack, T0 + 1) == []
    assert recovery.step_failed(commits[P2].call_id, ErrorCode.Unavailable, T0 + 2) == []
    assert recovery.step_reply(commits[P3].call_id, ack, T0 + 3) == []
    resend_at = T0 + 2 + RESEND_INTERVAL_MS * 1000
    assert recovery.next_deadline_us == resend_at
    (again,) = sends(recovery.step_tick(resend_at))
    assert again.request == CommitRequest(partition=P2, txn_id=TXN)
    effects = recovery.step_reply(again.call_id, ack, resend_at + 1)
    assert [s.request for s in sends(effects)] == [CompleteRequest(partition=P2, txn_id=TXN)]
    assert finishes(effects) == [
        RecoveryResult(txn_id=TXN, state=TxnState.COMMITTED, completed=True)
    ]
    assert recovery.done
    assert recovery.next_deadline_us is None


def test_cancelled_record_is_cancelled_everywhere() -> None:
    recovery = Recovery(record(TxnState.CANCELLED), P2, T0)
    effects = recovery.step_start(T0)
    assert [s.request for s in sends(effects)] == [
        CancelRequest(partition=p, txn_id=TXN) for p in (P1, P2, P3)
    ]
    for send in sends(effects):
        effects = recovery.step_reply(send.call_id, CancelReply(txn_id=TXN, cleared=1), T0 + 1)
    assert [r.completed for r in finishes(effects)] == [True]


def test_undecided_record_needs_nothing() -> None:
    recovery = Recovery(record(TxnState.PREPARING), P2, T0)
    effects = recovery.step_start(T0)
    assert sends(effects) == []
    assert finishes(effects) == [
        RecoveryResult(txn_id=TXN, state=TxnState.PREPARING, completed=False)
    ]
    assert recovery.done


def test_completed_record_needs_nothing() -> None:
    recovery = Recovery(record(TxnState.COMMITTED, completed=True), P2, T0)
    effects = recovery.step_start(T0)
    assert sends(effects) == []
    assert [r.completed for r in finishes(effects)] == [True]


def test_gives_up_at_the_deadline() -> None:
    recovery = Recovery(record(TxnState.COMMITTED), P2, T0)
    recovery.step_start(T0)
    deadline = T0 + FINISH_DEADLINE_MS * 1000
    now, resent = T0, 0
    effects: list[RecoveryEffect] = []
    while not recovery.done:  # nobody ever answers
        next_at = recovery.next_deadline_us
        assert next_at is not None and now < next_at <= deadline
        now = next_at
        effects = recovery.step_tick(now)
        resent += len(sends(effects))
    assert now == deadline
    assert resent > 3
    assert finishes(effects) == [
        RecoveryResult(
            txn_id=TXN, state=TxnState.COMMITTED, completed=False, error=ErrorCode.OutcomeUnknown
        )
    ]


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (TxnState.COMMITTED, "commit"),
        (TxnState.CANCELLED, "cancel"),
        (TxnState.PREPARING, "wait"),
        (TxnState.STAGING, "wait"),
        (None, "cancel"),
    ],
)
def test_resolve_intent_action(state: TxnState | None, action: str) -> None:
    answer = None if state is None else record(state)
    assert resolve_intent_action(answer) == action


# --- STAGING: ask every other participant, then decide (rule 5a) ------------------------------


def prevent_answer(state: TxnState) -> LedgerReply:
    return LedgerReply(txn_id=TXN, record=replace(record(state), participants=()))


def probing() -> tuple[Recovery, dict[PartitionId, Send]]:
    recovery = Recovery(record(TxnState.STAGING), P2, T0)
    effects = recovery.step_start(T0)
    assert recovery.state is RecoveryState.PROBING
    assert finishes(effects) == []
    assert [s.request for s in sends(effects)] == [
        PreventRequest(partition=p, txn_id=TXN, anchor=P2) for p in (P1, P3)
    ]
    return recovery, {s.request.partition: s for s in sends(effects)}


def test_staging_with_every_participant_holding_or_applied_is_committed() -> None:
    recovery, asks = probing()
    assert recovery.step_reply(asks[P1].call_id, prevent_answer(TxnState.COMMITTED), T0 + 1) == []
    effects = recovery.step_reply(asks[P3].call_id, prevent_answer(TxnState.STAGING), T0 + 2)
    (decide,) = sends(effects)
    assert decide.request == DecideRequest(partition=P2, txn_id=TXN, decision=TxnState.COMMITTED)
    effects = recovery.step_reply(
        decide.call_id, LedgerReply(txn_id=TXN, record=record(TxnState.COMMITTED)), T0 + 3
    )
    assert recovery.state is RecoveryState.DRIVING
    assert [s.request for s in sends(effects)] == [
        CommitRequest(partition=p, txn_id=TXN) for p in (P1, P2, P3)
    ]


def test_staging_with_a_refusal_is_cancelled_without_waiting_for_the_rest() -> None:
    recovery, asks = probing()
    effects = recovery.step_reply(asks[P3].call_id, prevent_answer(TxnState.CANCELLED), T0 + 1)
    (decide,) = sends(effects)
    assert decide.request == DecideRequest(partition=P2, txn_id=TXN, decision=TxnState.CANCELLED)
    # P1's answer, late, changes nothing.
    assert recovery.step_reply(asks[P1].call_id, prevent_answer(TxnState.STAGING), T0 + 2) == []
    effects = recovery.step_reply(
        decide.call_id, LedgerReply(txn_id=TXN, record=record(TxnState.CANCELLED)), T0 + 3
    )
    assert [s.request for s in sends(effects)] == [
        CancelRequest(partition=p, txn_id=TXN) for p in (P1, P2, P3)
    ]


def test_staging_adopts_whatever_the_compare_and_set_returns() -> None:
    """The coordinator may decide first: its decision is the one delivered."""
    recovery, asks = probing()
    for p in (P1, P3):
        effects = recovery.step_reply(asks[p].call_id, prevent_answer(TxnState.STAGING), T0 + 1)
    (decide,) = sends(effects)
    effects = recovery.step_reply(
        decide.call_id, LedgerReply(txn_id=TXN, record=record(TxnState.CANCELLED)), T0 + 2
    )
    assert recovery.record.state is TxnState.CANCELLED
    assert {type(s.request) for s in sends(effects)} == {CancelRequest}


def test_staging_probe_failures_and_useless_answers_are_asked_again() -> None:
    recovery, asks = probing()
    assert recovery.step_failed(asks[P1].call_id, ErrorCode.Unavailable, T0 + 1) == []
    useless = LedgerReply(txn_id=TXN, record=None)
    assert recovery.step_reply(asks[P3].call_id, useless, T0 + 2) == []
    assert recovery.next_deadline_us == T0 + 1 + RESEND_INTERVAL_MS * 1000
    again = sends(recovery.step_tick(T0 + 2 + RESEND_INTERVAL_MS * 1000))
    assert sorted(s.request.partition for s in again) == [P1, P3]
    assert all(isinstance(s.request, PreventRequest) for s in again)


def test_staging_decide_is_retried_until_the_record_is_decided() -> None:
    recovery, asks = probing()
    for p in (P1, P3):
        effects = recovery.step_reply(asks[p].call_id, prevent_answer(TxnState.STAGING), T0 + 1)
    (decide,) = sends(effects)
    undecided = LedgerReply(txn_id=TXN, record=record(TxnState.STAGING))
    assert recovery.step_reply(decide.call_id, undecided, T0 + 2) == []
    (again,) = sends(recovery.step_tick(T0 + 2 + RESEND_INTERVAL_MS * 1000))
    assert again.request == decide.request


def test_staging_gives_up_at_the_deadline_undecided() -> None:
    recovery, _ = probing()
    deadline = T0 + FINISH_DEADLINE_MS * 1000
    effects = recovery.step_tick(deadline)
    assert finishes(effects) == [
        RecoveryResult(
            txn_id=TXN, state=TxnState.STAGING, completed=False, error=ErrorCode.OutcomeUnknown
        )
    ]
    assert recovery.done


def test_staging_with_no_other_participant_is_committed_at_once() -> None:
    only_anchor = replace(record(TxnState.STAGING), participants=(P2,))
    recovery = Recovery(only_anchor, P2, T0)
    (decide,) = sends(recovery.step_start(T0))
    assert decide.request == DecideRequest(partition=P2, txn_id=TXN, decision=TxnState.COMMITTED)


# --- settling a participant's mark ----------------------------------------------------------------


def test_a_mark_is_forgotten_once_its_anchor_record_is_decided_or_gone() -> None:
    for answer in (record(TxnState.COMMITTED), record(TxnState.CANCELLED), None):
        settle = MarkSettle(TXN, P2, P1)
        (lookup,) = sends(settle.step_start(T0))
        assert lookup.request == LedgerLookupRequest(partition=P2, txn_id=TXN)
        (complete,) = sends(
            settle.step_reply(lookup.call_id, LedgerReply(txn_id=TXN, record=answer), T0)
        )
        assert complete.request == CompleteRequest(partition=P1, txn_id=TXN)
        done = settle.step_reply(complete.call_id, LedgerReply(txn_id=TXN, record=None), T0)
        assert finishes(done) == ["forgotten"] and settle.done


@pytest.mark.parametrize("state", [TxnState.STAGING, TxnState.PREPARING])
def test_a_mark_is_kept_while_its_anchor_record_is_undecided(state: TxnState) -> None:
    settle = MarkSettle(TXN, P2, P1)
    (lookup,) = sends(settle.step_start(T0))
    effects = settle.step_reply(lookup.call_id, LedgerReply(txn_id=TXN, record=record(state)), T0)
    assert sends(effects) == [] and finishes(effects) == ["wait"]


def test_a_mark_settle_that_cannot_reach_the_anchor_keeps_the_mark() -> None:
    settle = MarkSettle(TXN, P2, P1)
    (lookup,) = sends(settle.step_start(T0))
    effects = settle.step_failed(lookup.call_id, ErrorCode.Unavailable, T0)
    assert sends(effects) == [] and finishes(effects) == ["unreachable"]
