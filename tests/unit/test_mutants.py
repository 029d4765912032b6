"""Deliberate protocol bugs (``kvstore.mutants``): arming is guarded; each mutant breaks a rule.

The safety tests show that a mutant cannot be armed by accident. Then one test per mutant runs
the same smallest script of requests on a correct core and on a core with that mutant armed,
and asserts both sides: the correct core keeps the rule, the mutant breaks it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from support.coordinator import finishes, partition_of, sends
from support.partition import P0, Partition, add, check, codes, delete, put, ts
from support.runtime import P1, START_US, Node

from kvstore.conditions import Exists
from kvstore.coordinator.core import WriteTxn
from kvstore.coordinator.read import ReadTxn
from kvstore.coordinator.results import ReadResult
from kvstore.dynamodb.request_exprs import PUT_ITEM, RequestExpressions
from kvstore.messages import (
    CommitRequest,
    ExecuteReply,
    ExecuteRequest,
    NodeExecuteRequest,
    OpOutcome,
    PrepareReply,
    PrepareRequest,
    PreventRequest,
    ReadEntry,
    ReadReply,
    ReadRequest,
    ReasonCode,
    TxnState,
)
from kvstore.mutants import (
    ARMING_ENV,
    ARMING_VALUE,
    NO_MUTANTS,
    Mutant,
    Mutants,
    MutantsNotAllowed,
)
from kvstore.replication.rules import (
    Position,
    Verdict,
    choose_leader,
    follower_verdict,
    majority_seq,
    takeover_wait_us,
)
from kvstore.storage_node.core import PartitionConfig
from kvstore.timestamps import HybridClock, redraw_origins
from kvstore.types import TIMESTAMP_ZERO, PartitionId, Timestamp, TxnId, Value

ROOT = Path(__file__).resolve().parents[2]
OK = ReasonCode.NONE
TOO_OLD = ReasonCode.TIMESTAMP_TOO_OLD

Arm = Callable[..., Mutants]

# Every mutant must have a test below showing the behaviour it breaks (see test_every_mutant_...).
SHOWN: dict[Mutant, str] = {}
TestFn = Callable[..., None]


def shows(mutant: Mutant) -> Callable[[TestFn], TestFn]:
    def register(test: TestFn) -> TestFn:
        assert mutant not in SHOWN, f"{mutant} already shown by {SHOWN[mutant]}"
        SHOWN[mutant] = test.__name__
        return test

    return register


@pytest.fixture
def unarmed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ARMING_ENV, raising=False)


@pytest.fixture
def arm(monkeypatch: pytest.MonkeyPatch) -> Arm:
    """``Mutants.arm`` with the chaos harness's environment set for this test only."""
    monkeypatch.setenv(ARMING_ENV, ARMING_VALUE)
    return Mutants.arm


def partition(mutants: Mutants, **config: int) -> Partition:
    return Partition(PartitionConfig(mutants=mutants, **config))


# --- safety: a mutant is never armed by accident ----------------------------------------------


def test_no_mutants_is_falsy_empty_and_the_default_everywhere() -> None:
    assert not NO_MUTANTS
    assert list(NO_MUTANTS) == []
    assert all(m not in NO_MUTANTS for m in Mutant)
    assert PartitionConfig().mutants is NO_MUTANTS
    assert Partition().core.config.mutants is NO_MUTANTS


@pytest.mark.usefixtures("unarmed_env")
@pytest.mark.parametrize("mutant", list(Mutant), ids=lambda m: m.value)
def test_arming_without_the_environment_raises(mutant: Mutant) -> None:
    with pytest.raises(MutantsNotAllowed, match=ARMING_ENV):
        Mutants.arm(mutant)


@pytest.mark.parametrize(
    "value", ["", "1", "true", ARMING_VALUE.upper(), ARMING_VALUE + " "], ids=repr
)
def test_arming_with_a_wrong_environment_value_raises(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ARMING_ENV, value)
    with pytest.raises(MutantsNotAllowed):
        Mutants.arm(Mutant.PRESUME_ABORT)


@pytest.mark.usefixtures("unarmed_env")
def test_direct_construction_checks_the_environment_too() -> None:
    assert Mutants() == NO_MUTANTS
    with pytest.raises(MutantsNotAllowed):
        Mutants(frozenset({Mutant.SKIP_READ_TS_CHECK}))


def test_mutants_cannot_be_changed_after_construction() -> None:
    with pytest.raises(AttributeError):
        NO_MUTANTS._armed = frozenset({Mutant.PRESUME_ABORT})  # type: ignore[misc]
    assert not NO_MUTANTS


@pytest.mark.usefixtures("unarmed_env")
def test_arming_nothing_needs_no_environment() -> None:
    none = Mutants.arm()
    assert not none
    assert none == NO_MUTANTS and hash(none) == hash(NO_MUTANTS)


def test_arming_with_the_environment_works(arm: Arm) -> None:
    armed = arm(Mutant.WATERMARK_DOWN_ON_DELETE, Mutant.DOUBLE_APPLY_COMMIT)
    assert armed
    assert Mutant.WATERMARK_DOWN_ON_DELETE in armed
    assert Mutant.DOUBLE_APPLY_COMMIT in armed
    assert Mutant.PRESUME_ABORT not in armed
    assert list(armed) == [Mutant.DOUBLE_APPLY_COMMIT, Mutant.WATERMARK_DOWN_ON_DELETE]
    assert armed == arm(Mutant.DOUBLE_APPLY_COMMIT, Mutant.WATERMARK_DOWN_ON_DELETE)
    assert armed != NO_MUTANTS
    assert "double-apply-commit" in repr(armed)


def test_the_environment_alone_arms_nothing(arm: Arm) -> None:
    del arm  # the environment is set, but nothing asked for a mutant
    assert PartitionConfig().mutants is NO_MUTANTS
    assert not Mutants.arm()


def test_no_production_module_can_arm_a_mutant() -> None:
    """Only ``kvstore/mutants.py`` may hold the arming value, and only it and the chaos control
    (which needs the chaos switch, the names and the arming value: three variables) call ``arm``."""
    arm_call = re.compile(r"\.arm\s*\(")
    mutants_py = ROOT / "kvstore" / "mutants.py"
    own = mutants_py.read_text()
    # The patterns do find what they look for, so the check below is not vacuous.
    assert ARMING_VALUE in own and arm_call.search("Mutants.arm(Mutant.X)")
    offenders: list[str] = []
    sources = sorted((ROOT / "kvstore").rglob("*.py"))
    assert len(sources) > 10, "the source tree was not found"
    for path in sources:
        if path == mutants_py:
            continue
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        if ARMING_VALUE in text:
            offenders.append(f"{rel}: mentions {ARMING_VALUE!r}")
        if arm_call.search(text) and rel != "kvstore/chaos_control.py":
            offenders.append(f"{rel}: calls .arm(")
    assert offenders == []


# --- one test per mutant: the correct core keeps the rule, the mutant breaks it ---------------


@shows(Mutant.SKIP_READ_TS_CHECK)
def test_skip_read_ts_check_accepts_a_write_below_read_ts(arm: Arm) -> None:
    def script(mutants: Mutants) -> list[ReasonCode]:
        p = partition(mutants)
        assert p.prepare("t1", ts(10), put("x", 1)).accepted and p.commit("t1") == 1
        assert p.prepare("t2", ts(100), check("x")).accepted and p.commit("t2") == 1
        # A write at 90 would change what t2 (at 100) already checked.
        return codes(p.prepare("t3", ts(90), put("x", 2)).outcomes)

    assert script(NO_MUTANTS) == [TOO_OLD]
    assert script(arm(Mutant.SKIP_READ_TS_CHECK)) == [OK]


@shows(Mutant.SNAPSHOT_WITHOUT_FLOOR)
def test_snapshot_without_floor_lets_a_write_below_a_snapshot_commit(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[list[ReasonCode], object]:
        p = partition(mutants)
        assert p.prepare("t1", ts(10), put("x", 1)).accepted and p.commit("t1") == 1
        assert p.read_at(ts(100), "x")[0].value == 1  # a backup at 100 saw x = 1
        # A write at 90 committing now would make what the snapshot at 100 showed false.
        late = p.prepare("t2", ts(90), put("x", 2))
        if late.accepted:
            p.commit("t2")
        return codes(late.outcomes), p.read_at(ts(100), "x")[0].value

    assert script(NO_MUTANTS) == ([TOO_OLD], 1)
    assert script(arm(Mutant.SNAPSHOT_WITHOUT_FLOOR)) == ([OK], 2)


@shows(Mutant.READS_SEE_INTENTS)
def test_reads_see_intents_returns_a_pending_intent_as_committed(arm: Arm) -> None:
    def script(mutants: Mutants) -> ReadEntry:
        p = partition(mutants)
        assert p.prepare("t1", ts(50), put("x", "old")).accepted and p.commit("t1") == 1
        assert p.prepare("t2", ts(100), put("x", "new")).accepted
        (entry,) = p.read("x")
        return entry

    right = script(NO_MUTANTS)
    assert (right.exists, right.value, right.version, right.ts, right.pending) == (
        True,
        "old",
        1,
        ts(50),
        True,
    )
    wrong = script(arm(Mutant.READS_SEE_INTENTS))
    assert (wrong.exists, wrong.value, wrong.version, wrong.ts, wrong.pending) == (
        True,
        "new",
        2,
        ts(100),
        False,
    )


@shows(Mutant.PRESUME_ABORT)
def test_presume_abort_drops_a_stale_intent_without_asking_the_anchor(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[list[tuple[TxnId, PartitionId]], bool, int, Value]:
        p = partition(mutants, intent_stale_ms=1)
        assert p.prepare("t1", ts(10), put("x", 1)).accepted
        p.now_us += 1_001
        work = p.core.maintain(p.now_us)
        stale = [(s.txn_id, s.anchor) for s in work.stale_intents]
        kept = p.store.get_intent("x") is not None
        applied = p.commit("t1")  # the anchor had decided COMMITTED after all
        item = p.get("x")
        return stale, kept, applied, None if item is None else item.value

    assert script(NO_MUTANTS) == ([("t1", P0)], True, 1, 1)
    assert script(arm(Mutant.PRESUME_ABORT)) == ([], False, 0, None), "a committed write is lost"


@shows(Mutant.DOUBLE_APPLY_COMMIT)
def test_double_apply_commit_applies_a_duplicate_commit_again(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[int, int, object, int]:
        p = partition(mutants)
        assert p.prepare("t1", ts(100), add("n", ("c",), 1)).accepted
        first = p.commit("t1")
        duplicate = p.commit("t1")
        item = p.get("n")
        assert item is not None
        return first, duplicate, item.value, item.version

    assert script(NO_MUTANTS) == (1, 0, {"c": 1}, 1)
    assert script(arm(Mutant.DOUBLE_APPLY_COMMIT)) == (1, 1, {"c": 2}, 2)


@shows(Mutant.WATERMARK_DOWN_ON_DELETE)
def test_watermark_down_on_delete_loses_the_deleted_keys_floor(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[bool, int, Timestamp, bool, list[ReasonCode]]:
        p = partition(mutants)
        assert p.prepare("t1", ts(10), put("x", 1)).accepted and p.commit("t1") == 1
        assert p.prepare("t2", ts(100), delete("x")).accepted and p.commit("t2") == 1
        (gone,) = p.read("x")
        tombstone = p.store.get_item("x") is not None
        late = codes(p.prepare("t3", ts(90), put("x", 3)).outcomes)
        return gone.exists, gone.version, gone.ts, tombstone, late

    assert script(NO_MUTANTS) == (False, 2, ts(100), True, [TOO_OLD])
    wrong = script(arm(Mutant.WATERMARK_DOWN_ON_DELETE))
    assert wrong == (False, 0, TIMESTAMP_ZERO, False, [OK]), "version and timestamp went down"


@shows(Mutant.SKIP_SECOND_READ_ROUND)
def test_skip_second_read_round_answers_after_one_round(arm: Arm) -> None:
    now = 1_000_000_000

    def script(mutants: Mutants) -> tuple[int, int, list[object]]:
        # Two partitions: a read of one partition is answered after one round by design.
        txn = ReadTxn(("a:1", "b:1"), partition_of, now, mutants=mutants)
        effects: list[object] = []
        for send in sends(txn.step_start(now)):
            assert isinstance(send.request, ReadRequest)
            (key,) = send.request.keys
            entry = ReadEntry(key=key, exists=True, value=1, version=1, ts=ts(5), pending=False)
            effects = list(txn.step_reply(send.call_id, ReadReply(entries=(entry,)), now))
        return txn.rounds, len(sends(effects)), finishes(effects)

    assert script(NO_MUTANTS) == (2, 2, []), "a second round is sent"
    rounds, more, done = script(arm(Mutant.SKIP_SECOND_READ_ROUND))
    assert (rounds, more) == (1, 0)
    (result,) = done
    assert isinstance(result, ReadResult) and result.error is None and result.rounds == 1


@shows(Mutant.NO_TS_TIE_BREAK)
def test_no_ts_tie_break_gives_two_clocks_the_same_timestamp(arm: Arm) -> None:
    wall = 5_000

    def script(mutants: Mutants) -> tuple[Timestamp, Timestamp]:
        first = HybridClock(lambda: wall, 7, mutants=mutants)
        second = HybridClock(lambda: wall, 8, mutants=mutants)
        return first.now(), second.now()

    assert script(NO_MUTANTS) == (Timestamp(wall, 0, 7), Timestamp(wall, 0, 8))
    a, b = script(arm(Mutant.NO_TS_TIE_BREAK))
    assert a == b == Timestamp(wall, 0, 1)


@shows(Mutant.REPLY_BEFORE_FLUSH)
def test_reply_before_flush_answers_before_the_write_is_durable(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[int, int]:
        node = Node(mutants)
        answers = node.put(P0, "a")
        return len(answers), len(node.disk.jobs)  # answered?, flushes begun

    assert script(NO_MUTANTS) == (0, 1)
    assert script(arm(Mutant.REPLY_BEFORE_FLUSH)) == (1, 0), "answered, left for the next tick"


@shows(Mutant.ACK_WITH_EARLIER_FLUSH)
def test_ack_with_earlier_flush_answers_with_the_flush_in_flight(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[int, bool]:
        node = Node(mutants)
        node.put(P0, "a")
        second = node.put(P1, "b")  # joins the next batch while the first is in flight
        node.finish_flush()
        return len(second), node.store.dirty

    assert script(NO_MUTANTS) == (0, False)  # waiting on its own flush, now in flight
    assert script(arm(Mutant.ACK_WITH_EARLIER_FLUSH)) == (1, True), "answered, not durable"


@shows(Mutant.NODE_EXECUTE_PARTIAL)
def test_node_execute_partial_applies_the_slices_that_voted_yes(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[bool, bool, bool]:
        node = Node(mutants)
        node.put(P1, "b")
        node.finish_flush()
        request = NodeExecuteRequest(
            partition=P0,
            txn_id=TxnId("t1"),
            ts=node.runtime.clock.now(),
            ops=(put("a", 1), put("b", 2, Exists(expected=False))),
            placement=(P0, P1),
        )
        answers = node.submit(request)
        node.finish_flush()
        [reply] = answers
        assert isinstance(reply, ExecuteReply)
        a_written = node.store.partition(P0).get_item("a") is not None
        return reply.committed, a_written, node.store.partition(P1).get_item("b") is not None

    assert script(NO_MUTANTS) == (False, False, True)
    assert script(arm(Mutant.NODE_EXECUTE_PARTIAL)) == (False, True, True), "a cancelled write"


@shows(Mutant.NO_FORK_REDRAW)
def test_no_fork_redraw_lets_a_cloned_clock_reissue_its_original_s_timestamps(arm: Arm) -> None:
    # The fork hook's own path (redraw_origins); tests/unit/test_clock_fork.py forks for real.
    wall = 5_000

    def script(mutants: Mutants) -> tuple[Timestamp, Timestamp]:
        original = HybridClock(lambda: wall, 7, mutants=mutants)
        original.now()
        clone = HybridClock(lambda: wall, original.origin, last=original.last, mutants=mutants)
        redraw_origins([clone], lambda: 8)
        return original.now(), clone.now()

    assert script(NO_MUTANTS) == (Timestamp(wall, 1, 7), Timestamp(wall, 1, 8))
    a, b = script(arm(Mutant.NO_FORK_REDRAW))
    assert a == b == Timestamp(wall, 1, 7)


@shows(Mutant.STALE_VOTE_AFTER_WAIT)
def test_stale_vote_after_wait_loses_the_update_it_waited_for(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[int, Value]:
        node = Node(mutants)
        bump = (add("x", ("n",), 1),)
        t1, t2 = TxnId("t1"), TxnId("t2")
        node.submit(PrepareRequest(partition=P0, txn_id=t1, ts=ts(START_US), ops=bump, anchor=P0))
        node.finish_flush()
        waiting = node.submit(
            ExecuteRequest(partition=P0, txn_id=t2, ts=ts(START_US + 1), ops=bump)
        )
        parked = len(waiting)
        node.submit(CommitRequest(partition=P0, txn_id=t1))  # wakes t2, stepped again
        while node.disk.jobs:
            node.finish_flush()
        [reply] = waiting
        assert isinstance(reply, ExecuteReply) and reply.committed
        row = node.store.partition(P0).get_item("x")
        assert row is not None
        return parked, row.value

    assert script(NO_MUTANTS) == (0, {"n": 2})
    assert script(arm(Mutant.STALE_VOTE_AFTER_WAIT)) == (0, {"n": 1}), "t1's add lost"


def prevent_state(p: Partition, txn: str) -> TxnState | None:
    request = PreventRequest(partition=P0, txn_id=TxnId(txn), anchor=PartitionId(1))
    record = p.core.prevent(request, p.now_us).reply.record
    return None if record is None else record.state


@shows(Mutant.UNKNOWN_HOLDS)
def test_unknown_holds_counts_a_participant_that_never_prepared_as_a_yes(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[TxnState | None, bool]:
        p = partition(mutants)
        state = prevent_state(p, "t1")  # recovery asks; t1 never reached this partition
        late = p.prepare("t1", ts(10), put("x", 1), anchored_at=PartitionId(1))
        return state, late.accepted

    assert script(NO_MUTANTS) == (TxnState.CANCELLED, False)
    # A standing yes for intents that do not exist: recovery commits what was never prepared.
    assert script(arm(Mutant.UNKNOWN_HOLDS)) == (TxnState.STAGING, True)


@shows(Mutant.FORGET_REFUSAL)
def test_forget_refusal_lets_a_late_prepare_succeed_after_the_refusal(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[TxnState | None, bool]:
        p = partition(mutants)
        state = prevent_state(p, "t1")
        late = p.prepare("t1", ts(10), put("x", 1), anchored_at=PartitionId(1))
        return state, late.accepted

    assert script(NO_MUTANTS) == (TxnState.CANCELLED, False)
    assert script(arm(Mutant.FORGET_REFUSAL)) == (TxnState.CANCELLED, True), "yes after a no"


@shows(Mutant.FORGET_APPLIED)
def test_forget_applied_makes_an_applied_participant_refuse(arm: Arm) -> None:
    def script(mutants: Mutants) -> tuple[int, TxnState | None]:
        p = partition(mutants)
        assert p.prepare("t1", ts(10), put("x", 1), anchored_at=PartitionId(1)).accepted
        applied = p.commit("t1")
        return applied, prevent_state(p, "t1")

    assert script(NO_MUTANTS) == (1, TxnState.COMMITTED)
    # Applied, then refused: recovery of the STAGING record would cancel a transaction applied
    # here.
    assert script(arm(Mutant.FORGET_APPLIED)) == (1, TxnState.CANCELLED)


@shows(Mutant.ANSWER_BEFORE_APPLIED)
def test_answer_before_applied_answers_a_commit_at_the_last_yes(arm: Arm) -> None:
    ops = (put("a:1", 1), put("b:1", 2))

    def script(mutants: Mutants) -> list[bool]:
        txn = WriteTxn(TxnId("t1"), ts(10), ops, partition_of, 0, mutants=mutants)
        prepares = sends(txn.step_start(0))
        answers: list[bool] = []
        for send in prepares:
            yes = PrepareReply(txn_id=TxnId("t1"), accepted=True, outcomes=(OpOutcome(),))
            answers += [r.committed for r in finishes(txn.step_reply(send.call_id, yes, 1))]
        return answers

    assert script(NO_MUTANTS) == []  # answered only once every participant applied
    assert script(arm(Mutant.ANSWER_BEFORE_APPLIED)) == [True], "answered, nothing applied"


@shows(Mutant.ACK_BEFORE_MAJORITY)
def test_ack_before_majority_counts_the_leaders_fsync_alone(arm: Arm) -> None:
    def script(mutants: Mutants) -> int:  # leader holds seq 5, followers acknowledged 2 and 3
        return majority_seq(5, {"b": 2, "c": 3}, ("b", "c"), mutants)

    assert script(NO_MUTANTS) == 3
    assert script(arm(Mutant.ACK_BEFORE_MAJORITY)) == 5, "durable on one replica of three"


@shows(Mutant.ACCEPT_OLD_EPOCH)
def test_accept_old_epoch_takes_a_deposed_leaders_batch(arm: Arm) -> None:
    def script(mutants: Mutants) -> Verdict:  # promised epoch 7; a leader of epoch 4 ships
        return follower_verdict(7, Position(4, 10), 4, Position(4, 10), mutants)

    assert script(NO_MUTANTS) is Verdict.STALE_EPOCH
    assert script(arm(Mutant.ACCEPT_OLD_EPOCH)) is Verdict.ACCEPT


@shows(Mutant.SERVE_BEFORE_LEASE_END)
def test_serve_before_lease_end_skips_the_takeover_wait(arm: Arm) -> None:
    assert takeover_wait_us(1_500, 50, NO_MUTANTS) > 1_500_000
    assert takeover_wait_us(1_500, 50, arm(Mutant.SERVE_BEFORE_LEASE_END)) == 0


@shows(Mutant.ELECT_ANY_REPLICA)
def test_elect_any_replica_picks_one_that_misses_a_batch(arm: Arm) -> None:
    def script(mutants: Mutants) -> str | None:
        return choose_leader(("a", "b", "c"), {"a": Position(3, 9), "b": Position(3, 8)}, mutants)

    assert script(NO_MUTANTS) == "a"
    assert script(arm(Mutant.ELECT_ANY_REPLICA)) == "b", "b misses batch 9"


@shows(Mutant.DDB_CONDITION_IGNORED)
def test_ddb_condition_ignored_lets_a_failed_dynamodb_condition_write(arm: Arm) -> None:
    exprs = RequestExpressions(
        {"ConditionExpression": "balance >= :a", "ExpressionAttributeValues": {":a": {"N": "5"}}},
        PUT_ITEM,
    )
    condition = exprs.condition()

    def script(mutants: Mutants) -> list[ReasonCode]:
        p = partition(mutants)
        assert p.prepare("t1", ts(10), put("x", {"balance": {"N": "3"}})).accepted
        assert p.commit("t1") == 1
        return codes(
            p.prepare("t2", ts(20), put("x", {"balance": {"N": "-2"}}, condition)).outcomes
        )

    assert script(NO_MUTANTS) == [ReasonCode.CONDITION_FAILED]
    assert script(arm(Mutant.DDB_CONDITION_IGNORED)) == [OK]


def test_every_mutant_has_a_test_showing_what_it_breaks() -> None:
    assert set(SHOWN) == set(Mutant), f"missing: {set(Mutant) - set(SHOWN)}"
