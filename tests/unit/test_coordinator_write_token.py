"""Write coordinator, repeated idempotency token on a multi-partition transaction.

The anchor (partition 2) answers the prepare with a token hit. Our own attempt is then cancelled
like any other (decide CANCELLED, which also clears the anchor's own intents, then a cancel to the
other participant, partition 1); the client's answer is either
``IdempotencyMismatch`` at once, or the outcome of the original transaction, followed through
its ledger record until it is decided and completed.
"""

from __future__ import annotations

from collections.abc import Sequence

from support.coordinator import finishes, partition_of, sends

from kvstore.coordinator.core import WriteEffect, WriteTxn
from kvstore.coordinator.effects import Send
from kvstore.coordinator.results import TxnResult
from kvstore.coordinator.state import WriteState
from kvstore.errors import ErrorCode
from kvstore.limits import FINISH_DEADLINE_MS, RESEND_INTERVAL_MS
from kvstore.messages import (
    CancelReply,
    CancelRequest,
    CompleteRequest,
    DecideRequest,
    ExecuteRequest,
    LedgerLookupRequest,
    LedgerRecord,
    LedgerReply,
    OpOutcome,
    PrepareReply,
    PrepareRequest,
    ReasonCode,
    TokenHit,
    TxnState,
)
from kvstore.ops import Op, OpKind
from kvstore.types import PartitionId, Timestamp, TxnId

T0 = 1_000_000_000
TXN = TxnId("1" * 32)
ORIGINAL = TxnId("0" * 32)
TS = Timestamp(T0, 0, 7)
ORIGINAL_TS = Timestamp(T0 - 3_000_000, 0, 9)
P1, P2 = PartitionId(1), PartitionId(2)
ANCHOR = P2
OPS = (Op(kind=OpKind.PUT, key="b:1", value=1), Op(kind=OpKind.PUT, key="a:1", value=2))
INTERVAL_US = RESEND_INTERVAL_MS * 1000


def of_type(effects: Sequence[WriteEffect], kind: type) -> list[Send]:
    return [s for s in sends(effects) if isinstance(s.request, kind)]


def own(state: TxnState) -> LedgerReply:
    record = LedgerRecord(txn_id=TXN, ts=TS, state=state, participants=(P1, P2))
    return LedgerReply(txn_id=TXN, record=record)


def original(state: TxnState, completed: bool, outcomes: tuple[OpOutcome, ...] = ()) -> LedgerReply:
    record = LedgerRecord(
        txn_id=ORIGINAL,
        ts=ORIGINAL_TS,
        state=state,
        participants=(P1, P2),
        outcomes=outcomes,
        completed_us=T0 if completed else None,
    )
    return LedgerReply(txn_id=ORIGINAL, record=record)


def token_hit(same_content: bool) -> tuple[WriteTxn, list[WriteEffect], dict[PartitionId, Send]]:
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0, token="tok-1")
    started = txn.step_start(T0)
    prepares = {s.request.partition: s for s in sends(started)}
    hit = TokenHit(txn_id=ORIGINAL, same_content=same_content)
    reply = PrepareReply(txn_id=TXN, accepted=False, token_hit=hit)
    return txn, txn.step_reply(prepares[ANCHOR].call_id, reply, T0 + 10), prepares


def cancel_own(txn: WriteTxn, decide: Send, now: int) -> list[WriteEffect]:
    """Our CANCELLED decision lands (the anchor cleared its own intents with it) and the only
    other participant, P1, acknowledges the cancel; completion waits for that acknowledgement."""
    effects = txn.step_reply(decide.call_id, own(TxnState.CANCELLED), now)
    (cancel,) = of_type(effects, CancelRequest)
    assert cancel.request == CancelRequest(partition=P1, txn_id=TXN)  # never the anchor
    assert of_type(effects, CompleteRequest) == []
    out = list(effects)
    out += txn.step_reply(cancel.call_id, CancelReply(txn_id=TXN, cleared=0), now)
    return out


def test_token_with_other_content_is_a_mismatch_and_our_attempt_is_cancelled() -> None:
    txn, effects, _ = token_hit(same_content=False)
    assert finishes(effects) == [
        TxnResult(committed=False, txn_id=TXN, ts=TS, error=ErrorCode.IdempotencyMismatch)
    ]
    (decide,) = of_type(effects, DecideRequest)
    assert isinstance(decide.request, DecideRequest)
    assert decide.request.decision is TxnState.CANCELLED
    assert decide.request.txn_id == TXN
    assert decide.request.outcomes[0].code is ReasonCode.TRANSACTION_CONFLICT
    assert decide.request.outcomes[1] == OpOutcome()
    effects = cancel_own(txn, decide, T0 + 20)
    assert finishes(effects) == []  # the answer went out once, earlier
    assert [s.request for s in of_type(effects, CompleteRequest)] == [
        CompleteRequest(partition=ANCHOR, txn_id=TXN)
    ]
    assert txn.done


def test_token_with_same_content_follows_the_original() -> None:
    txn, effects, prepares = token_hit(same_content=True)
    assert finishes(effects) == []
    (lookup,) = of_type(effects, LedgerLookupRequest)
    assert lookup.request == LedgerLookupRequest(partition=ANCHOR, txn_id=ORIGINAL)
    (decide,) = of_type(effects, DecideRequest)
    # The other participant's late vote is ignored.
    late = PrepareReply(txn_id=TXN, accepted=True, outcomes=(OpOutcome(),))
    assert txn.step_reply(prepares[P1].call_id, late, T0 + 11) == []
    # The original is still in flight.
    assert txn.step_reply(lookup.call_id, original(TxnState.PREPARING, False), T0 + 12) == []
    # Our own attempt is cancelled meanwhile, without answering the client.
    effects = cancel_own(txn, decide, T0 + 20)
    assert finishes(effects) == []
    assert len(of_type(effects, CompleteRequest)) == 1
    assert txn.state is WriteState.FOLLOWING
    assert not txn.done
    # Poll again after one interval; decided and completed -> the original's answer.
    (lookup,) = sends(txn.step_tick(T0 + 12 + INTERVAL_US))
    effects = txn.step_reply(lookup.call_id, original(TxnState.COMMITTED, True), T0 + 30)
    assert finishes(effects) == [TxnResult(committed=True, txn_id=ORIGINAL, ts=ORIGINAL_TS)]
    assert txn.done


def test_followed_answer_may_come_before_our_own_cleanup_ends() -> None:
    txn, effects, _ = token_hit(same_content=True)
    (lookup,) = of_type(effects, LedgerLookupRequest)
    (decide,) = of_type(effects, DecideRequest)
    reasons = (OpOutcome(code=ReasonCode.CONDITION_FAILED), OpOutcome())
    reply = original(TxnState.CANCELLED, True, reasons)
    assert finishes(txn.step_reply(lookup.call_id, reply, T0 + 12)) == [
        TxnResult(
            committed=False,
            txn_id=ORIGINAL,
            ts=ORIGINAL_TS,
            outcomes=reasons,
            error=ErrorCode.TransactionCanceled,
        )
    ]
    assert txn.state is WriteState.DECIDING
    effects = cancel_own(txn, decide, T0 + 20)
    assert finishes(effects) == []
    assert txn.done


def test_follow_gives_up_with_transaction_in_progress() -> None:
    txn, effects, _ = token_hit(same_content=True)
    (lookup,) = of_type(effects, LedgerLookupRequest)
    (decide,) = of_type(effects, DecideRequest)
    cancel_own(txn, decide, T0 + 20)
    assert txn.step_failed(lookup.call_id, ErrorCode.Unavailable, T0 + 30) == []
    deadline = T0 + FINISH_DEADLINE_MS * 1000
    now = T0 + 30
    lookups = 0
    while not txn.done:
        next_at = txn.next_deadline_us
        assert next_at is not None and now < next_at <= deadline
        now = next_at
        effects = txn.step_tick(now)
        for send in sends(effects):
            lookups += 1
            txn.step_reply(send.call_id, original(TxnState.COMMITTED, False), now)
    assert now == deadline
    assert lookups > 10
    assert finishes(effects) == [
        TxnResult(
            committed=False, txn_id=ORIGINAL, ts=ORIGINAL_TS, error=ErrorCode.TransactionInProgress
        )
    ]


def test_follow_without_record_is_outcome_unknown() -> None:
    txn, effects, _ = token_hit(same_content=True)
    (lookup,) = of_type(effects, LedgerLookupRequest)
    reply = LedgerReply(txn_id=ORIGINAL, record=None)
    assert [r.error for r in finishes(txn.step_reply(lookup.call_id, reply, T0 + 12))] == [
        ErrorCode.OutcomeUnknown
    ]


def test_original_cancelled_by_recovery_gets_conflict_reasons() -> None:
    txn, effects, _ = token_hit(same_content=True)
    (lookup,) = of_type(effects, LedgerLookupRequest)
    (result,) = finishes(
        txn.step_reply(lookup.call_id, original(TxnState.CANCELLED, True), T0 + 12)
    )
    assert [o.code for o in result.outcomes] == [ReasonCode.TRANSACTION_CONFLICT] * 2
    assert result.error is ErrorCode.TransactionCanceled


# --- a refusal from another partition must not hide the anchor's token check -----------------

REFUSED = PrepareReply(
    txn_id=TXN,
    accepted=False,
    outcomes=(OpOutcome(code=ReasonCode.TRANSACTION_CONFLICT, message="pending"),),
)


def test_a_refusal_waits_for_the_anchor_vote_when_the_txn_has_a_token() -> None:
    """Regression (simulator seed 122): a retry whose first attempt had committed got a
    participant's refusal first, decided at once and told its client "cancelled"."""
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0, token="tok-1")
    prepares = {s.request.partition: s for s in sends(txn.step_start(T0))}
    assert txn.step_reply(prepares[P1].call_id, REFUSED, T0 + 5) == []
    assert txn.state is WriteState.PREPARING
    hit = PrepareReply(
        txn_id=TXN, accepted=False, token_hit=TokenHit(txn_id=ORIGINAL, same_content=True)
    )
    effects = txn.step_reply(prepares[ANCHOR].call_id, hit, T0 + 10)
    assert of_type(effects, DecideRequest) and of_type(effects, LedgerLookupRequest)
    assert finishes(effects) == []
    lookup = of_type(effects, LedgerLookupRequest)[0]
    done = txn.step_reply(lookup.call_id, original(TxnState.COMMITTED, True), T0 + 20)
    [answer] = finishes(done)
    assert isinstance(answer, TxnResult) and answer.committed and answer.txn_id == ORIGINAL


def test_a_refusal_decides_once_the_last_vote_is_in() -> None:
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0)
    prepares = {s.request.partition: s for s in sends(txn.step_start(T0))}
    assert txn.step_reply(prepares[P1].call_id, REFUSED, T0 + 5) == []
    effects = txn.step_failed(prepares[ANCHOR].call_id, ErrorCode.Unavailable, T0 + 6)
    assert of_type(effects, DecideRequest)


def test_a_tokened_cancel_the_anchor_never_voted_on_is_outcome_unknown() -> None:
    """The anchor's call failed and the decision landed on a placeholder record: the token may
    belong to a first attempt that committed, so "cancelled" would be a guess."""
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0, token="tok-1")
    prepares = {s.request.partition: s for s in sends(txn.step_start(T0))}
    assert txn.step_reply(prepares[P1].call_id, REFUSED, T0 + 5) == []
    effects = txn.step_failed(prepares[ANCHOR].call_id, ErrorCode.Unavailable, T0 + 10)
    [decide] = of_type(effects, DecideRequest)
    placeholder = LedgerRecord(txn_id=TXN, ts=TS, state=TxnState.CANCELLED, participants=())
    done = txn.step_reply(decide.call_id, LedgerReply(txn_id=TXN, record=placeholder), T0 + 20)
    [answer] = finishes(done)
    assert isinstance(answer, TxnResult) and answer.error is ErrorCode.OutcomeUnknown


# --- the token's home partition anchors the transaction -----------------------------------

HOME = PartitionId(9)


def test_a_tokened_transaction_is_anchored_at_the_tokens_home_which_holds_only_the_ledger() -> None:
    """Every submission of one token meets the same record, whatever its keys (regression: the
    same token with ops whose first key lived elsewhere used to commit a second time)."""
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0, token="tok-1", token_home=lambda _: HOME)
    assert txn.anchor == HOME and txn.participants == (P1, P2, HOME)
    prepares = {s.request.partition: s.request for s in of_type(txn.step_start(T0), PrepareRequest)}
    assert set(prepares) == {HOME, P1, P2}
    home = prepares[HOME]
    assert home.ops == () and home.ledger is not None and home.ledger.token == "tok-1"
    assert home.ledger.participants == (P1, P2, HOME)
    assert all(p.anchor == HOME and p.ledger is None for pid, p in prepares.items() if pid != HOME)


def test_a_one_partition_transaction_whose_token_lives_elsewhere_runs_two_phase_commit() -> None:
    one = (Op(kind=OpKind.PUT, key="a:1", value=1),)
    elsewhere = WriteTxn(TXN, TS, one, partition_of, T0, token="t", token_home=lambda _: HOME)
    assert {type(s.request) for s in sends(elsewhere.step_start(T0))} == {PrepareRequest}
    at_home = WriteTxn(TXN, TS, one, partition_of, T0, token="t", token_home=lambda _: P1)
    assert [type(s.request) for s in sends(at_home.step_start(T0))] == [ExecuteRequest]


def test_a_refusal_from_the_ledger_only_home_is_every_ops_reason() -> None:
    txn = WriteTxn(TXN, TS, OPS, partition_of, T0, token="tok-1", token_home=lambda _: HOME)
    calls = {s.request.partition: s.call_id for s in sends(txn.step_start(T0))}
    refused = PrepareReply(txn_id=TXN, accepted=False, error=ErrorCode.ClockSkew)
    assert txn.step_reply(calls[HOME], refused, T0) == []  # waits for the other votes
    yes = PrepareReply(txn_id=TXN, accepted=True, outcomes=(OpOutcome(),))
    assert txn.step_reply(calls[P1], yes, T0) == []
    decide = of_type(txn.step_reply(calls[P2], yes, T0), DecideRequest)
    assert len(decide) == 1 and decide[0].request.decision is TxnState.CANCELLED
    assert decide[0].request.partition == HOME
    assert [o.code for o in decide[0].request.outcomes] == [ReasonCode.TRANSACTION_CONFLICT] * 2
