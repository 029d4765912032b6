"""Scenarios for the partition core: one per timestamp-ordering rule and per gap case of
reference section 2.6. Each reads as a short script of events and expected effects."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.partition import (
    NODE_ORIGIN,
    P0,
    Partition,
    add,
    check,
    codes,
    delete,
    put,
    ts,
)

from kvstore.conditions import Compare, CompareOperator, Exists, VersionEquals
from kvstore.errors import ErrorCode, ValidationError
from kvstore.messages import (
    CompleteRequest,
    DecideRequest,
    LedgerLookupRequest,
    LedgerReply,
    OpOutcome,
    PreventRequest,
    ReasonCode,
    TokenLookupRequest,
    TxnState,
    WriteRequest,
)
from kvstore.storage_node.core import PartitionConfig, Step
from kvstore.types import PartitionId, Timestamp, TxnId

OK = ReasonCode.NONE
CONFLICT = ReasonCode.TRANSACTION_CONFLICT
TOO_OLD = ReasonCode.TIMESTAMP_TOO_OLD
COND = ReasonCode.CONDITION_FAILED


def committed(p: Partition, txn: str, at: Timestamp, *ops: object) -> None:
    reply = p.prepare(txn, at, *ops)  # type: ignore[arg-type]
    assert reply.accepted, reply
    assert p.commit(txn) == len(ops)


# --- prepare / commit / cancel ------------------------------------------------------------


def test_prepare_then_commit_applies_value_version_and_timestamp() -> None:
    p = Partition()
    assert p.prepare("t1", ts(100), put("x", {"a": 1})).accepted
    assert p.get("x") is None, "an intent is invisible to get"
    assert p.commit("t1") == 1
    item = p.get("x")
    assert item is not None
    assert (item.value, item.version, item.ts) == ({"a": 1}, 1, ts(100))


def test_intent_is_invisible_to_reads_conditions_and_scans_but_marks_read_rounds() -> None:
    p = Partition()
    committed(p, "t0", ts(50), put("x", 1))
    assert p.prepare("t1", ts(100), put("x", 2), put("y", 3)).accepted
    (x, y) = p.read("x", "y")
    assert (x.exists, x.value, x.version, x.pending) == (True, 1, 1, True)
    assert (y.exists, y.pending) == (False, True)
    assert [row.key for row in p.store.scan_items("", None, 10)] == ["x"]
    # A condition sees the committed value, not the pending one.
    reply = p.execute("t2", ts(200), check("y", Exists(expected=False)))
    assert codes(reply.outcomes) == [CONFLICT], "the key is held by t1"


def test_prepare_refuses_key_held_by_another_transaction_and_writes_nothing() -> None:
    p = Partition()
    assert p.prepare("t1", ts(100), put("x", 1)).accepted
    before = p.snapshot()
    reply = p.prepare("t2", ts(200), put("x", 2), put("y", 2))
    assert not reply.accepted
    assert codes(reply.outcomes) == [CONFLICT, OK]
    assert p.snapshot() == before, "a rejection changes nothing"


def test_reprepare_of_the_same_transaction_answers_yes_and_changes_nothing() -> None:
    p = Partition()
    assert p.prepare("t1", ts(100), put("x", 1), put("y", 1)).accepted
    before = p.snapshot()
    again = p.prepare("t1", ts(100), put("x", 1), put("y", 1))
    assert again.accepted and codes(again.outcomes) == [OK, OK]
    assert p.snapshot() == before


def test_prepare_needs_ts_above_write_ts() -> None:
    p = Partition()
    committed(p, "t1", ts(100), put("x", 1))
    assert codes(p.prepare("t2", ts(90), put("x", 2)).outcomes) == [TOO_OLD]
    assert codes(p.prepare("t3", ts(100), check("x")).outcomes) == [TOO_OLD]
    assert p.prepare("t4", ts(101), check("x")).accepted


def test_committed_check_raises_read_ts_so_an_earlier_write_is_refused() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", 1))
    committed(p, "t2", ts(100), check("x"))
    row = p.store.get_item("x")
    assert row is not None and row.read_ts == ts(100) and row.write_ts == ts(10)
    assert codes(p.prepare("t3", ts(90), put("x", 2)).outcomes) == [TOO_OLD]
    # Two checks do not conflict: a check only needs ts > write_ts.
    assert p.prepare("t4", ts(90), check("x")).accepted


def test_duplicate_and_stale_commits_are_ignored() -> None:
    p = Partition()
    committed(p, "t1", ts(100), add("n", ("c",), 1))
    assert p.commit("t1") == 0, "duplicate commit"
    assert p.commit("never-prepared") == 0
    item = p.get("n")
    assert item is not None and item.value == {"c": 1} and item.version == 1


def test_commit_applies_only_its_own_intents() -> None:
    p = Partition()
    assert p.prepare("t1", ts(100), put("x", 1)).accepted
    assert p.prepare("t2", ts(110), put("y", 2)).accepted
    assert p.commit("t1") == 1
    assert p.get("y") is None
    assert p.store.get_intent("y") is not None


def test_cancel_clears_only_its_own_intents_and_keeps_timestamps() -> None:
    p = Partition()
    committed(p, "t0", ts(50), put("x", 0))
    assert p.prepare("t1", ts(100), put("x", 1)).accepted
    assert p.prepare("t2", ts(110), put("y", 2)).accepted
    assert p.cancel("t1") == 1
    assert p.cancel("t1") == 0, "duplicate cancel"
    row = p.store.get_item("x")
    assert row is not None and row.write_ts == ts(50) and row.value == 0
    assert p.store.get_intent("y") is not None
    assert p.prepare("t3", ts(60), put("x", 3)).accepted, "timestamps were not raised"


def test_conditions_evaluate_on_committed_value() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("acct", {"balance": 5}))
    low = Compare(path=("balance",), operator=CompareOperator.GE, operand=10)
    reply = p.prepare("t2", ts(20), add("acct", ("balance",), -10, low))
    assert codes(reply.outcomes) == [COND]
    assert reply.outcomes[0].item is None, "the item is returned only on request"
    asked = p.prepare("t3", ts(20), put("acct", 0, low, return_item=True))
    item = asked.outcomes[0].item
    assert item is not None and item.value == {"balance": 5} and item.version == 1


def test_version_condition() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", 1))
    assert codes(p.prepare("t2", ts(20), put("x", 2, VersionEquals(version=2))).outcomes) == [COND]
    assert p.prepare("t3", ts(20), put("x", 2, VersionEquals(version=1))).accepted


def test_invalid_update_is_a_validation_reason_and_changes_nothing() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", {"name": "a"}))
    before = p.snapshot()
    reply = p.prepare("t2", ts(20), add("x", ("name",), 1))
    assert codes(reply.outcomes) == [ReasonCode.VALIDATION_ERROR]
    assert "non-number" in reply.outcomes[0].message
    assert p.snapshot() == before


def test_timestamp_far_ahead_of_node_clock_is_refused() -> None:
    p = Partition(PartitionConfig(max_clock_skew_ms=10))
    p.now_us = 1_000_000
    far = ts(p.now_us + 10_001)
    reply = p.prepare("t1", far, put("x", 1))
    assert not reply.accepted and reply.error is ErrorCode.ClockSkew
    assert p.execute("t2", far, put("x", 1)).error is ErrorCode.ClockSkew
    assert p.prepare("t3", ts(p.now_us + 10_000), put("x", 1)).accepted


def test_a_clock_skew_refusal_of_a_one_round_txn_is_final() -> None:
    """Regression (simulator seed 1855): the client was told ClockSkew, then a duplicate of the
    request arrived after the node's clock had caught up, and the transaction committed."""
    p = Partition(PartitionConfig(max_clock_skew_ms=10))
    p.now_us = 1_000_000
    early = ts(p.now_us + 10_001)
    assert p.execute("t1", early, put("x", 1)).error is ErrorCode.ClockSkew
    p.now_us += 1_000_000  # the clock caught up; the duplicate arrives
    again = p.execute("t1", early, put("x", 1))
    assert not again.committed
    assert p.get("x") is None


# --- absent keys, tombstones and watermarks (gaps 3 and 4) -----------------------------------


def test_check_of_absent_key_leaves_a_timestamp_behind() -> None:
    """Gap 3: T1 (ts=100) checks 'x absent'; a later T2 (ts=90) must not create x."""
    p = Partition()
    committed(p, "t1", ts(100), check("x", Exists(expected=False)))
    assert p.get("x") is None
    assert codes(p.prepare("t2", ts(90), put("x", 1)).outcomes) == [TOO_OLD]
    assert p.prepare("t3", ts(101), put("x", 1)).accepted


def test_delete_of_absent_key_leaves_a_timestamp_behind() -> None:
    p = Partition()
    committed(p, "t1", ts(100), delete("x"))
    assert codes(p.prepare("t2", ts(90), put("x", 1)).outcomes) == [TOO_OLD]


def test_versions_strictly_increase_across_delete_and_recreate() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", 1))
    committed(p, "t2", ts(20), delete("x"))
    (gone,) = p.read("x")
    assert (gone.exists, gone.version) == (False, 2), "the delete is a new version"
    committed(p, "t3", ts(30), put("x", 3))
    item = p.get("x")
    assert item is not None and item.version == 3


def test_read_round_sees_create_and_delete_between_rounds_of_an_absent_key() -> None:
    p = Partition()
    (first,) = p.read("x")
    committed(p, "t1", ts(10), put("x", 1))
    committed(p, "t2", ts(20), delete("x"))
    (second,) = p.read("x")
    assert not first.exists and not second.exists
    assert second.version > first.version


def test_tombstone_gc_folds_into_watermark_which_never_goes_down() -> None:
    """Gap 4: after GC, a late duplicate prepare of the committed delete is still refused."""
    p = Partition(PartitionConfig(tombstone_retention_ms=1))
    committed(p, "t1", ts(10), put("x", 1))
    committed(p, "t2", ts(100), delete("x"))
    p.now_us = 10_000
    assert p.core.maintain(p.now_us).wrote
    assert p.store.get_item("x") is None
    meta = p.store.get_meta()
    assert meta.max_delete_ts == ts(100) and meta.max_deleted_version == 2
    assert codes(p.prepare("t2", ts(100), delete("x")).outcomes) == [TOO_OLD]
    # A re-create starts above the folded version and timestamp.
    reply = p.write(put("x", 5), node_clock_us=50)
    assert reply.ts is not None and reply.ts > ts(100) and reply.version == 3


def test_watermark_keeps_the_max_when_older_tombstones_fold_later() -> None:
    p = Partition(PartitionConfig(tombstone_retention_ms=1))
    committed(p, "a", ts(500), delete("k1"))
    p.now_us = 100_000
    p.core.maintain(p.now_us)
    committed(p, "b", ts(600), put("k2", 1))
    committed(p, "c", ts(700), delete("k2"))
    p.now_us = 200_000
    p.core.maintain(p.now_us)
    assert p.store.get_meta().max_delete_ts == ts(700)
    assert p.store.get_meta().max_deleted_version == 2


# --- singleton operations -------------------------------------------------------------------


def test_get_is_never_blocked_and_returns_the_last_committed_value() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", "old"))
    assert p.prepare("t2", ts(20), put("x", "new")).accepted
    item = p.get("x")
    assert item is not None and item.value == "old"


def test_singleton_write_on_a_key_with_an_intent_is_a_conflict() -> None:
    p = Partition()
    assert p.prepare("t1", ts(20), put("x", 1)).accepted
    reply = p.write(put("x", 2), node_clock_us=1_000)
    assert reply.outcome.code is CONFLICT and reply.ts is None


def test_singleton_write_stamps_above_the_key_floor_when_the_node_clock_is_behind() -> None:
    p = Partition()
    committed(p, "t1", ts(5_000, origin=7), put("x", 1))
    reply = p.write(put("x", 2), node_clock_us=100)
    assert reply.ts == Timestamp(5_000, 0, NODE_ORIGIN), "smallest timestamp above the floor"
    ahead = p.write(put("x", 3), node_clock_us=9_000)
    assert ahead.ts == Timestamp(9_000, 0, NODE_ORIGIN)
    assert ahead.version == 3


def test_singleton_delete_reports_whether_the_item_existed() -> None:
    p = Partition()
    assert not p.write(delete("x"), node_clock_us=10).existed
    p.write(put("x", 1), node_clock_us=20)
    reply = p.write(delete("x"), node_clock_us=30)
    assert reply.existed and reply.outcome.code is OK
    assert p.get("x") is None


def test_singleton_conditional_write_failure_changes_nothing() -> None:
    p = Partition()
    before = p.snapshot()
    reply = p.write(put("x", 1, Exists(expected=True)), node_clock_us=10)
    assert reply.outcome.code is COND
    assert p.snapshot() == before


def test_singleton_check_is_refused() -> None:
    p = Partition()
    with pytest.raises(ValidationError):
        p.core.write(WriteRequest(partition=P0, op=check("x")), ts(10))


# --- one-round transactions and tokens --------------------------------------------------------


def test_execute_commits_all_or_nothing() -> None:
    p = Partition()
    ok = p.execute("t1", ts(10), put("a", 1), put("b", 2))
    assert ok.committed and ok.outcomes == ()
    bad = p.execute("t2", ts(20), put("a", 10), put("b", 20, Exists(expected=False)))
    assert not bad.committed and codes(bad.outcomes) == [OK, COND]
    a, b = p.get("a"), p.get("b")
    assert a is not None and a.value == 1 and b is not None and b.value == 2


def test_duplicate_execute_answers_the_recorded_outcome_without_running_again() -> None:
    p = Partition()
    assert p.execute("t1", ts(10), add("n", (), 1)).committed
    again = p.execute("t1", ts(10), add("n", (), 1))
    assert again.committed
    item = p.get("n")
    assert item is not None and item.value == 1 and item.version == 1
    refused = p.execute("t2", ts(20), put("n", 0, Exists(expected=False)))
    assert not refused.committed
    committed(p, "t3", ts(30), delete("n"))
    replay = p.execute("t2", ts(20), put("n", 0, Exists(expected=False)))
    assert not replay.committed, "a duplicate of a cancelled request must not commit later"


def test_token_reuse_is_detected_with_same_or_other_content() -> None:
    p = Partition()
    assert p.execute("t1", ts(10), put("a", 1), token="tok", fp="F1").committed
    same = p.execute("t2", ts(20), put("a", 1), token="tok", fp="F1")
    assert same.token_hit is not None and same.token_hit.txn_id == "t1"
    assert same.token_hit.same_content and not same.committed
    other = p.execute("t3", ts(30), put("a", 2), token="tok", fp="F2")
    assert other.token_hit is not None and not other.token_hit.same_content
    found = p.core.lookup_token(TokenLookupRequest(partition=P0, token="tok")).reply.record
    assert found is not None and found.txn_id == "t1" and found.state is TxnState.COMMITTED


def test_a_clock_skew_refusal_takes_the_token_from_an_attempt_still_in_flight() -> None:
    """Regression (simulator seed 708): a retry overtook its slow first attempt and was refused
    for clock skew; the first attempt then arrived and committed, though the client had been
    told the operation failed. The refusal must take the token so the first attempt cannot."""
    p = Partition(PartitionConfig(max_clock_skew_ms=10))
    p.now_us = 1_000_000
    retry = p.execute("t2", ts(p.now_us + 10_001), put("a", 1), token="tok", fp="F1")
    assert retry.error is ErrorCode.ClockSkew
    late_first = p.execute("t1", ts(10), put("a", 1), token="tok", fp="F1")
    assert not late_first.committed
    assert late_first.token_hit is not None and late_first.token_hit.txn_id == "t2"
    assert p.get("a") is None


def test_an_anchor_clock_skew_refusal_is_final_but_spares_a_staging_record() -> None:
    p = Partition(PartitionConfig(max_clock_skew_ms=10))
    p.now_us = 1_000_000
    far = ts(p.now_us + 10_001)
    assert p.prepare("t1", far, put("x", 1), anchor=True, token="tok").error is ErrorCode.ClockSkew
    record = p.core.store.get_ledger(TxnId("t1"))
    assert record is not None and record.state is TxnState.CANCELLED
    found = p.core.lookup_token(TokenLookupRequest(partition=P0, token="tok")).reply.record
    assert found is not None and found.txn_id == "t1"
    # A duplicate of an accepted prepare, refused after this clock jumped back, decides nothing.
    assert p.prepare("t2", ts(p.now_us), put("y", 1), anchor=True).accepted
    p.now_us = 0
    assert p.prepare("t2", ts(1_000_000), put("y", 1), anchor=True).error is ErrorCode.ClockSkew
    kept = p.core.store.get_ledger(TxnId("t2"))
    assert kept is not None and kept.state is TxnState.STAGING


def test_a_used_token_is_reported_even_when_the_retry_was_already_cancelled() -> None:
    """Regression (simulator seed 7291): the retry's prepare reached the anchor after a
    participant's stale-intent resolution had inserted a CANCELLED record for it; the anchor
    answered "already cancelled" and hid that the first attempt with the token had committed."""
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True, token="tok").accepted
    p.core.decide(DecideRequest(partition=P0, txn_id=TxnId("t1"), decision=TxnState.COMMITTED), 0)
    resolve = LedgerLookupRequest(partition=P0, txn_id=TxnId("t2"), resolve=True)
    assert p.core.lookup_ledger(resolve, p.now_us).reply.record is not None
    retry = p.prepare("t2", ts(20), put("x", 1), anchor=True, token="tok")
    assert retry.token_hit is not None and retry.token_hit.txn_id == "t1"


def test_a_used_token_is_reported_even_when_the_retry_is_too_far_ahead() -> None:
    """Regression (simulator seed 94): the first attempt committed, its reply was lost, and the
    retry with the same token came from a clock running ahead: it was refused with ClockSkew
    (a definite failure) instead of being pointed at the committed first attempt."""
    p = Partition(PartitionConfig(max_clock_skew_ms=10))
    p.now_us = 1_000_000
    assert p.execute("t1", ts(10), put("a", 1), token="tok", fp="F1").committed
    retry = p.execute("t2", ts(p.now_us + 10_001), put("a", 1), token="tok", fp="F1")
    assert retry.error is None
    assert retry.token_hit is not None and retry.token_hit.txn_id == "t1"


# --- ledger records ---------------------------------------------------------------------------


def decide(p: Partition, txn: str, state: TxnState) -> TxnState | None:
    req = DecideRequest(partition=P0, txn_id=TxnId(txn), decision=state)
    record = p.core.decide(req, p.now_us).reply.record
    return None if record is None else record.state


def lookup(p: Partition, txn: str, *, resolve: bool) -> TxnState | None:
    req = LedgerLookupRequest(partition=P0, txn_id=TxnId(txn), resolve=resolve)
    record = p.core.lookup_ledger(req, p.now_us).reply.record
    return None if record is None else record.state


def test_anchor_prepare_creates_the_record_and_the_decision_is_made_once() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True).accepted
    assert lookup(p, "t1", resolve=False) is TxnState.STAGING
    assert decide(p, "t1", TxnState.COMMITTED) is TxnState.COMMITTED
    assert decide(p, "t1", TxnState.CANCELLED) is TxnState.COMMITTED, "the CAS winner is final"


def test_anchor_records_even_a_no_vote_so_the_token_is_claimed() -> None:
    """The anchor's refusal is final: its record is CANCELLED at once (with its own reasons),
    and the coordinator's decide, knowing every op's reason, replaces them."""
    p = Partition()
    committed(p, "t0", ts(50), put("x", 0))
    reply = p.prepare("t1", ts(10), put("x", 1), anchor=True, token="tok")
    assert not reply.accepted
    record = p.store.get_ledger(TxnId("t1"))
    assert record is not None and record.state is TxnState.CANCELLED
    assert codes(record.outcomes) == [TOO_OLD] and record.completed_us is None
    assert p.store.get_intent("x") is None
    found = p.core.lookup_token(TokenLookupRequest(partition=P0, token="tok")).reply.record
    assert found is not None and found.txn_id == "t1"
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True).outcomes[0].code is CONFLICT
    every = (OpOutcome(code=TOO_OLD, message="x"), OpOutcome(code=COND, message="y"))
    req = DecideRequest(
        partition=P0, txn_id=TxnId("t1"), decision=TxnState.CANCELLED, outcomes=every
    )
    step = p.core.decide(req, p.now_us)
    assert step.wrote and step.reply.record is not None
    assert step.reply.record.outcomes == every


def test_commit_decision_needs_the_record_and_cancel_inserts_it() -> None:
    p = Partition()
    assert decide(p, "ghost", TxnState.COMMITTED) is None
    assert decide(p, "ghost", TxnState.CANCELLED) is TxnState.CANCELLED


def test_resolving_lookup_cancels_absent_records_and_blocks_a_late_anchor_prepare() -> None:
    p = Partition()
    assert lookup(p, "t1", resolve=False) is None
    assert lookup(p, "t1", resolve=True) is TxnState.CANCELLED
    late = p.prepare("t1", ts(10), put("x", 1), anchor=True)
    assert not late.accepted
    assert p.store.get_intent("x") is None


def as_legacy_preparing(p: Partition, txn: str) -> None:
    """Turn ``txn``'s STAGING record into the PREPARING record an earlier release wrote."""
    record = p.store.get_ledger(TxnId(txn))
    assert record is not None and record.state is TxnState.STAGING
    p.store.put_ledger(replace(record, state=TxnState.PREPARING))


def test_a_staging_record_is_never_cancelled_by_a_resolver_even_past_its_deadline() -> None:
    """Rule 5a: only the votes decide a STAGING record; past its deadline the anchor's
    maintenance hands it to recovery, which asks every participant."""
    p = Partition(PartitionConfig(ledger_decision_deadline_ms=5))
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True).accepted
    assert lookup(p, "t1", resolve=True) is TxnState.STAGING
    p.now_us += 5_000
    assert lookup(p, "t1", resolve=True) is TxnState.STAGING
    assert [r.txn_id for r in p.core.maintain(p.now_us).records_to_drive] == ["t1"]
    assert lookup(p, "t1", resolve=False) is TxnState.STAGING


def test_expired_preparing_record_may_be_cancelled_by_a_resolver_only_after_deadline() -> None:
    p = Partition(PartitionConfig(ledger_decision_deadline_ms=5))
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True).accepted
    as_legacy_preparing(p, "t1")
    assert lookup(p, "t1", resolve=True) is TxnState.PREPARING
    p.now_us += 5_000
    assert lookup(p, "t1", resolve=True) is TxnState.CANCELLED
    assert decide(p, "t1", TxnState.COMMITTED) is TxnState.CANCELLED


def test_committed_anchor_answers_a_duplicate_prepare_yes_without_new_intents() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True).accepted
    decide(p, "t1", TxnState.COMMITTED)
    p.commit("t1")
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True).accepted
    assert p.store.get_intent("x") is None


def decide_step(p: Partition, txn: str, state: TxnState) -> Step[LedgerReply]:
    req = DecideRequest(partition=P0, txn_id=TxnId(txn), decision=state)
    return p.core.decide(req, p.now_us)


def item(p: Partition, key: str) -> tuple[object, int, Timestamp]:
    view = p.get(key)
    assert view is not None, key
    return (view.value, view.version, view.ts)


def anchor_with_pending_t1(p: Partition) -> None:
    """x committed at version 1 by t0; the anchor holds t1's record and t1's intents on x and y;
    t2 (another transaction) holds an intent on z."""
    committed(p, "t0", ts(50), put("x", 0))
    assert p.prepare("t1", ts(100), put("x", 1), put("y", 2), anchor=True).accepted
    assert p.prepare("t2", ts(110), put("z", 3)).accepted


def test_decide_committed_applies_the_anchors_own_intents_as_a_commit_would() -> None:
    p = Partition()
    anchor_with_pending_t1(p)
    step = decide_step(p, "t1", TxnState.COMMITTED)
    assert step.wrote
    assert step.reply.record is not None and step.reply.record.state is TxnState.COMMITTED
    assert item(p, "x") == (1, 2, ts(100)), "version bumped, write_ts raised"
    assert item(p, "y") == (2, 1, ts(100))
    assert p.store.intents_of(TxnId("t1")) == []
    assert p.commit("t1") == 0, "a later commit finds nothing left to apply"
    assert item(p, "x") == (1, 2, ts(100))


def test_decide_committed_matches_a_commit_exactly() -> None:
    """Same step as ``commit``: the committed rows equal those of a separate commit."""
    by_decide, by_commit = Partition(), Partition()
    for p in (by_decide, by_commit):
        anchor_with_pending_t1(p)
    decide_step(by_decide, "t1", TxnState.COMMITTED)
    assert by_commit.commit("t1") == 2
    for key in ("x", "y"):
        assert by_decide.store.get_item(key) == by_commit.store.get_item(key), key


def test_decide_cancelled_clears_the_anchors_own_intents_without_applying_them() -> None:
    p = Partition()
    anchor_with_pending_t1(p)
    outcomes = (OpOutcome(code=COND, message="no"), OpOutcome())
    req = DecideRequest(
        partition=P0, txn_id=TxnId("t1"), decision=TxnState.CANCELLED, outcomes=outcomes
    )
    step = p.core.decide(req, p.now_us)
    assert step.wrote
    record = step.reply.record
    assert record is not None and record.state is TxnState.CANCELLED
    assert record.outcomes == outcomes
    assert p.store.intents_of(TxnId("t1")) == []
    assert item(p, "x") == (0, 1, ts(50)), "the committed value and timestamps are untouched"
    assert p.get("y") is None and p.store.get_item("y") is None
    assert p.cancel("t1") == 0, "a later cancel finds nothing left to clear"
    assert p.prepare("t3", ts(60), put("x", 3)).accepted, "timestamps were not raised"


@pytest.mark.parametrize("decision", [TxnState.COMMITTED, TxnState.CANCELLED])
def test_decide_leaves_other_transactions_intents_alone(decision: TxnState) -> None:
    p = Partition()
    anchor_with_pending_t1(p)
    t2_intent = p.store.get_intent("z")
    decide_step(p, "t1", decision)
    assert p.store.get_intent("z") == t2_intent
    assert [i.key for i in p.store.intents_of(TxnId("t2"))] == ["z"]
    assert p.get("z") is None, "t2 is not applied"
    assert p.commit("t2") == 1
    assert item(p, "z") == (3, 1, ts(110))


@pytest.mark.parametrize("decision", [TxnState.COMMITTED, TxnState.CANCELLED])
def test_a_duplicate_decide_is_idempotent_and_never_applies_twice(decision: TxnState) -> None:
    p = Partition()
    anchor_with_pending_t1(p)
    first = decide_step(p, "t1", decision)
    before = p.snapshot()
    for again in (TxnState.COMMITTED, TxnState.CANCELLED):
        step = decide_step(p, "t1", again)
        assert not step.wrote
        assert step.reply.record == first.reply.record, "the first decision stays final"
        assert p.snapshot() == before
    expected_x = (1, 2, ts(100)) if decision is TxnState.COMMITTED else (0, 1, ts(50))
    assert item(p, "x") == expected_x, "versions did not bump twice"


def test_a_decide_on_a_record_already_cancelled_clears_leftover_intents() -> None:
    """A resolver cancelled the expired record without touching the anchor's intents; a late
    decide (whatever it asks for) follows the final CANCELLED state and clears them."""
    p = Partition(PartitionConfig(ledger_decision_deadline_ms=5))
    anchor_with_pending_t1(p)
    as_legacy_preparing(p, "t1")  # only an earlier release's record expires this way
    p.now_us += 5_000
    assert lookup(p, "t1", resolve=True) is TxnState.CANCELLED
    assert len(p.store.intents_of(TxnId("t1"))) == 2, "the resolver left the intents"
    step = decide_step(p, "t1", TxnState.COMMITTED)
    assert step.reply.record is not None and step.reply.record.state is TxnState.CANCELLED
    assert step.wrote, "clearing the leftover intents is a write"
    assert p.store.intents_of(TxnId("t1")) == []
    assert item(p, "x") == (0, 1, ts(50)) and p.get("y") is None
    before = p.snapshot()
    assert not decide_step(p, "t1", TxnState.CANCELLED).wrote
    assert p.snapshot() == before


def test_a_decide_on_a_record_already_committed_applies_leftover_intents_once() -> None:
    """A record found COMMITTED while its intents are still here (decided by an earlier step):
    a decide, even one asking for CANCELLED, applies them per the final state, and only once."""
    p = Partition()
    anchor_with_pending_t1(p)
    record = p.store.get_ledger(TxnId("t1"))
    assert record is not None
    p.store.put_ledger(replace(record, state=TxnState.COMMITTED))
    step = decide_step(p, "t1", TxnState.CANCELLED)
    assert step.reply.record is not None and step.reply.record.state is TxnState.COMMITTED
    assert step.wrote, "applying the leftover intents is a write"
    assert p.store.intents_of(TxnId("t1")) == []
    assert item(p, "x") == (1, 2, ts(100)) and item(p, "y") == (2, 1, ts(100))
    before = p.snapshot()
    assert not decide_step(p, "t1", TxnState.COMMITTED).wrote
    assert p.snapshot() == before
    assert item(p, "x") == (1, 2, ts(100)), "versions did not bump twice"


def test_a_commit_decision_without_a_record_touches_no_intent() -> None:
    p = Partition()
    assert p.prepare("t1", ts(100), put("x", 1)).accepted  # a participant, not the anchor
    before = p.snapshot()
    step = decide_step(p, "t1", TxnState.COMMITTED)
    assert step.reply.record is None and not step.wrote
    assert p.snapshot() == before


# --- background work ----------------------------------------------------------------------------


def test_maintain_reports_stale_intents_with_their_anchor() -> None:
    p = Partition(PartitionConfig(intent_stale_ms=1))
    assert p.prepare("t1", ts(10), put("x", 1), put("y", 1)).accepted
    assert p.core.maintain(p.now_us).stale_intents == ()
    p.now_us += 1_001
    stale = p.core.maintain(p.now_us).stale_intents
    assert [(s.txn_id, s.anchor) for s in stale] == [("t1", P0)]


def test_maintain_cancels_expired_records_drives_decided_ones_and_expires_completed() -> None:
    cfg = PartitionConfig(intent_stale_ms=1, ledger_decision_deadline_ms=2, ledger_retention_ms=3)
    p = Partition(cfg)
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True).accepted
    as_legacy_preparing(p, "t1")
    p.now_us += 2_000
    work = p.core.maintain(p.now_us)
    assert [r.txn_id for r in work.records_to_drive] == ["t1"]
    assert lookup(p, "t1", resolve=False) is TxnState.CANCELLED
    p.core.complete(CompleteRequest(partition=P0, txn_id=TxnId("t1")), p.now_us)
    assert p.core.maintain(p.now_us).records_to_drive == ()
    p.now_us += 3_000
    p.core.maintain(p.now_us)
    assert lookup(p, "t1", resolve=False) is None


def test_memory_store_crash_loses_only_uncommitted_writes() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", 1))
    p.store.commit()
    committed(p, "t2", ts(20), put("y", 1))
    p.store.crash()
    assert p.get("x") is not None and p.get("y") is None


def test_a_ledger_only_prepare_creates_the_record_and_is_idempotent() -> None:
    """A token's home partition may hold none of the keys: it prepares only the ledger record."""
    p = Partition()
    assert p.prepare("t1", ts(2_000), anchor=True, token="tok").accepted
    record = p.store.get_ledger(TxnId("t1"))
    assert record is not None and record.state is TxnState.STAGING
    assert p.prepare("t1", ts(2_000), anchor=True, token="tok").accepted  # a duplicate
    assert p.commit("t1") == 0  # nothing to apply here
    hit = p.prepare("t2", ts(3_000), anchor=True, token="tok")
    assert not hit.accepted and hit.token_hit is not None and hit.token_hit.txn_id == "t1"


# --- parallel commit (DESIGN section 6, rule 5a) ----------------------------------------------

P1 = PartitionId(1)  # the anchor of the transactions a plain participant P0 prepares below


def prevent(p: Partition, txn: str) -> Step[LedgerReply]:
    return p.core.prevent(PreventRequest(partition=P0, txn_id=TxnId(txn), anchor=P1), p.now_us)


def test_prevent_on_a_participant_holding_the_intents_is_a_standing_yes() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1), anchored_at=P1).accepted
    before = p.snapshot()
    step = prevent(p, "t1")
    assert not step.wrote and p.snapshot() == before
    assert step.reply.record is not None and step.reply.record.state is TxnState.STAGING
    assert p.commit("t1") == 1, "the intents are untouched"


def test_prevent_of_a_transaction_never_prepared_here_refuses_it_for_good() -> None:
    p = Partition()
    step = prevent(p, "t1")
    assert step.wrote, "the refusal is durable before the answer"
    assert step.reply.record is not None and step.reply.record.state is TxnState.CANCELLED
    late = p.prepare("t1", ts(10), put("x", 1), anchored_at=P1)
    assert not late.accepted and codes(late.outcomes) == [CONFLICT]
    assert p.store.get_intent("x") is None
    again = prevent(p, "t1")
    assert not again.wrote and again.reply.record is not None
    assert again.reply.record.state is TxnState.CANCELLED


def test_a_participant_that_applied_leaves_a_mark_that_prevent_reports_as_committed() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1), anchored_at=P1).accepted
    assert p.commit("t1") == 1
    mark = p.store.get_ledger(TxnId("t1"))
    assert mark is not None and mark.state is TxnState.COMMITTED
    assert mark.participants == (P1,) and mark.completed_us is not None
    step = prevent(p, "t1")
    assert not step.wrote
    assert step.reply.record is not None and step.reply.record.state is TxnState.COMMITTED
    # A duplicate prepare of the applied transaction is a yes, and writes nothing.
    before = p.snapshot()
    assert p.prepare("t1", ts(10), put("x", 1), anchored_at=P1).accepted
    assert p.snapshot() == before
    assert p.commit("t1") == 0


def test_the_anchor_itself_leaves_no_applied_mark() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1)).accepted  # its intents name P0, this partition
    assert p.commit("t1") == 1
    assert p.store.get_ledger(TxnId("t1")) is None


def test_an_applied_mark_outlives_the_retention_until_its_anchor_is_known_decided() -> None:
    p = Partition(PartitionConfig(ledger_retention_ms=1))
    assert p.prepare("t1", ts(10), put("x", 1), anchored_at=P1).accepted
    assert p.commit("t1") == 1
    resolve_t2 = LedgerLookupRequest(partition=P0, txn_id=TxnId("t2"), resolve=True)
    p.core.lookup_ledger(resolve_t2, p.now_us)  # an ordinary completed record, for contrast
    p.now_us += 10_000
    work = p.core.maintain(p.now_us)
    assert [(m.txn_id, m.anchor) for m in work.marks_to_settle] == [("t1", P1)]
    assert p.store.get_ledger(TxnId("t2")) is None, "other completed records expire"
    assert p.store.get_ledger(TxnId("t1")) is not None, "the mark waits for its anchor"
    # The settle actor's CompleteRequest, once the anchor's record is decided, deletes it.
    step = p.core.complete(CompleteRequest(partition=P0, txn_id=TxnId("t1")), p.now_us)
    assert step.wrote and step.reply.record is None
    assert p.store.get_ledger(TxnId("t1")) is None
    assert p.core.maintain(p.now_us).marks_to_settle == ()


def test_a_refusal_mark_also_waits_for_its_anchor_past_the_retention() -> None:
    p = Partition(PartitionConfig(ledger_retention_ms=1))
    assert prevent(p, "t1").wrote
    mark = p.store.get_ledger(TxnId("t1"))
    assert mark is not None and mark.state is TxnState.CANCELLED and mark.participants == (P1,)
    p.now_us += 10_000
    work = p.core.maintain(p.now_us)
    assert [(m.txn_id, m.anchor) for m in work.marks_to_settle] == [("t1", P1)]
    assert not p.prepare("t1", ts(10), put("x", 1), anchored_at=P1).accepted, "still refused"
    assert p.core.complete(CompleteRequest(partition=P0, txn_id=TxnId("t1")), p.now_us).wrote
    assert p.store.get_ledger(TxnId("t1")) is None


def test_decide_takes_a_staging_record_either_way_once() -> None:
    for decision in (TxnState.COMMITTED, TxnState.CANCELLED):
        p = Partition()
        assert p.prepare("t1", ts(10), put("x", 1), anchor=True).accepted
        assert decide(p, "t1", decision) is decision
        assert p.store.intents_of(TxnId("t1")) == [], "the anchor's slice is resolved with it"
        assert (p.get("x") is not None) == (decision is TxnState.COMMITTED)
        other = TxnState.CANCELLED if decision is TxnState.COMMITTED else TxnState.COMMITTED
        assert decide(p, "t1", other) is decision


def test_complete_ignores_a_staging_record() -> None:
    p = Partition()
    assert p.prepare("t1", ts(10), put("x", 1), anchor=True).accepted
    step = p.core.complete(CompleteRequest(partition=P0, txn_id=TxnId("t1")), p.now_us)
    assert not step.wrote
    record = p.store.get_ledger(TxnId("t1"))
    assert record is not None and record.completed_us is None
