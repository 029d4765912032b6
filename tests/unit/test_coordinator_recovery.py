"""Recovery of decided transactions, and what storage nodes do with stale intents."""

from __future__ import annotations

import pytest
from support.coordinator import finishes, sends

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
    LedgerRecord,
    TxnState,
)
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
        (None, "cancel"),
    ],
)
def test_resolve_intent_action(state: TxnState | None, action: str) -> None:
    answer = None if state is None else record(state)
    assert resolve_intent_action(answer) == action
