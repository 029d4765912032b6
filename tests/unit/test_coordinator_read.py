"""Read-only transaction coordinator: read rounds until two consecutive rounds agree, and
snapshot reads (``at``): one round as of ``at`` without a pending entry.

Keys ``a:*`` live on partition 1, ``b:*`` on 2. Each test answers rounds by hand from a small
table of (exists, version, pending) per key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from support.coordinator import finishes, partition_of, sends

from kvstore.coordinator.effects import Send
from kvstore.coordinator.read import ReadEffect, ReadTxn, check_snapshot_at
from kvstore.coordinator.results import ReadResult
from kvstore.coordinator.state import ReadState
from kvstore.errors import ErrorCode, InternalError, SnapshotTooOld, ValidationError
from kvstore.limits import READ_KEYS_MAX, READ_ROUNDS_MAX, RPC_TIMEOUT_MS, SNAPSHOT_WINDOW_MS
from kvstore.messages import ReadEntry, ReadReply, ReadRequest
from kvstore.types import PartitionId, Timestamp

T0 = 1_000_000_000
P1, P2 = PartitionId(1), PartitionId(2)
KEYS = ("b:1", "a:1", "b:2")

State = tuple[bool, int, bool]  # exists, version, pending
CLEAN: Mapping[str, State] = {
    "b:1": (True, 3, False),
    "a:1": (False, 7, False),
    "b:2": (True, 1, False),
}


def entry(key: str, state: State) -> ReadEntry:
    exists, version, pending = state
    value = f"{key}@{version}" if exists else None
    return ReadEntry(
        key=key,
        exists=exists,
        value=value,
        version=version,
        ts=Timestamp(version, 0, 1),
        pending=pending,
    )


def answer(
    txn: ReadTxn, round_sends: Sequence[Send], table: Mapping[str, State], now: int = T0
) -> list[ReadEffect]:
    """Answer every read of one round from ``table``; returns the last reply's effects."""
    effects: list[ReadEffect] = []
    for send in round_sends:
        assert isinstance(send.request, ReadRequest)
        entries = tuple(entry(k, table[k]) for k in send.request.keys)
        effects = txn.step_reply(send.call_id, ReadReply(entries=entries), now)
    return effects


def changed(
    key: str, *, exists: bool | None = None, version: int | None = None, pending: bool = False
) -> dict[str, State]:
    """``CLEAN`` with one key's state changed."""
    old_exists, old_version, _ = CLEAN[key]
    state = (
        old_exists if exists is None else exists,
        old_version if version is None else version,
        pending,
    )
    return {**CLEAN, key: state}


def test_two_agreeing_rounds_succeed_in_request_order() -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    round1 = sends(txn.step_start(T0))
    assert [s.request for s in round1] == [
        ReadRequest(partition=P2, keys=("b:1", "b:2")),
        ReadRequest(partition=P1, keys=("a:1",)),
    ]
    assert {s.deadline_us for s in round1} == {T0 + RPC_TIMEOUT_MS * 1000}
    # A round completes only when every partition answered.
    first = round1[0]
    entries = tuple(entry(k, CLEAN[k]) for k in ("b:2", "b:1"))  # any order is fine
    assert txn.step_reply(first.call_id, ReadReply(entries=entries), T0) == []
    round2 = sends(
        txn.step_reply(round1[1].call_id, ReadReply(entries=(entry("a:1", CLEAN["a:1"]),)), T0)
    )
    assert [s.request for s in round2] == [s.request for s in round1]
    effects = answer(txn, round2, CLEAN)
    assert finishes(effects) == [
        ReadResult(items=tuple(entry(k, CLEAN[k]) for k in KEYS), rounds=2)
    ]
    assert txn.done
    assert txn.next_deadline_us is None


def test_one_partition_is_answered_after_one_clean_round() -> None:
    txn = ReadTxn(("b:2", "b:1"), partition_of, T0)
    (send,) = sends(txn.step_start(T0))
    assert send.request == ReadRequest(partition=P2, keys=("b:2", "b:1"))
    entries = tuple(entry(k, CLEAN[k]) for k in ("b:1", "b:2"))
    effects = txn.step_reply(send.call_id, ReadReply(entries=entries), T0)
    assert sends(effects) == []
    assert finishes(effects) == [
        ReadResult(items=(entry("b:2", CLEAN["b:2"]), entry("b:1", CLEAN["b:1"])), rounds=1)
    ]
    assert txn.done


def test_one_partition_with_a_pending_intent_reads_again() -> None:
    txn = ReadTxn(("b:1",), partition_of, T0)
    (send,) = sends(txn.step_start(T0))
    pending = changed("b:1", pending=True)
    (again,) = sends(
        txn.step_reply(send.call_id, ReadReply(entries=(entry("b:1", pending["b:1"]),)), T0)
    )
    effects = txn.step_reply(again.call_id, ReadReply(entries=(entry("b:1", CLEAN["b:1"]),)), T0)
    (result,) = finishes(effects)
    assert result.error is None and result.rounds == 2
    assert result.items == (entry("b:1", CLEAN["b:1"]),)


def test_version_change_between_rounds_reads_again() -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    round2 = sends(answer(txn, sends(txn.step_start(T0)), CLEAN))
    moved = changed("a:1", exists=True, version=8)
    round3 = sends(answer(txn, round2, moved))
    assert len(round3) == 2
    (result,) = finishes(answer(txn, round3, moved))
    assert result.rounds == 3
    assert result.items[1] == entry("a:1", moved["a:1"])


def test_existence_change_with_same_version_reads_again() -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    round2 = sends(answer(txn, sends(txn.step_start(T0)), CLEAN))
    assert sends(answer(txn, round2, changed("a:1", exists=True))) != []


def test_pending_in_second_round_needs_two_more_rounds() -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    round2 = sends(answer(txn, sends(txn.step_start(T0)), CLEAN))
    round3 = sends(answer(txn, round2, changed("b:2", pending=True)))
    round4 = sends(answer(txn, round3, CLEAN))
    (result,) = finishes(answer(txn, round4, CLEAN))
    assert result.error is None
    assert result.rounds == 4 <= READ_ROUNDS_MAX


def test_rounds_are_bounded() -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    effects = txn.step_start(T0)
    for version in range(1, READ_ROUNDS_MAX + 1):
        assert finishes(effects) == []
        effects = answer(txn, sends(effects), changed("b:1", version=100 + version))
    assert finishes(effects) == [
        ReadResult(error=ErrorCode.TransactionConflict, rounds=READ_ROUNDS_MAX)
    ]
    assert sends(effects) == []
    assert txn.done


def test_pending_in_the_second_to_last_round_gives_up_early() -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    effects = txn.step_start(T0)
    for version in range(1, READ_ROUNDS_MAX - 1):  # every round changed b:1
        effects = answer(txn, sends(effects), changed("b:1", version=100 + version))
    effects = answer(txn, sends(effects), changed("b:1", version=4, pending=True))
    last = READ_ROUNDS_MAX - 1
    assert finishes(effects) == [ReadResult(error=ErrorCode.TransactionConflict, rounds=last)]


@pytest.mark.parametrize("how", ["failed", "timeout", "malformed"])
def test_failures_answer_unavailable(how: str) -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    round1 = sends(txn.step_start(T0))
    if how == "failed":
        effects = txn.step_failed(round1[0].call_id, ErrorCode.Unavailable, T0 + 1)
    elif how == "timeout":
        assert txn.next_deadline_us == round1[0].deadline_us
        assert txn.step_tick(round1[0].deadline_us - 1) == []
        effects = txn.step_tick(round1[0].deadline_us)
    else:
        bad = ReadReply(entries=(entry("b:1", CLEAN["b:1"]),))  # b:2 missing
        effects = txn.step_reply(round1[0].call_id, bad, T0 + 1)
    # The result names the partition that did not answer (the engine's message names its node).
    failed = round1[0].request.partition
    assert finishes(effects) == [
        ReadResult(error=ErrorCode.Unavailable, rounds=1, partition=failed)
    ]
    assert txn.state is ReadState.DONE
    assert answer(txn, round1[1:], CLEAN) == []  # late replies are ignored


@pytest.mark.parametrize(
    "keys",
    [
        (),
        ("a:1", "a:1"),
        ("",),
        "a:1",
        ("x" * 1025,),
        tuple(f"a:{i}" for i in range(READ_KEYS_MAX + 1)),
    ],
)
def test_invalid_keys_are_refused(keys: Sequence[str]) -> None:
    with pytest.raises(ValidationError):
        ReadTxn(keys, partition_of, T0)


def test_late_events_are_ignored_and_restart_raises() -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    round1 = sends(txn.step_start(T0))
    round2 = sends(answer(txn, round1, CLEAN))
    assert txn.step_failed(99, ErrorCode.Unavailable, T0) == []  # unknown id
    assert answer(txn, round1, CLEAN) == []  # answers to round 1 again: old ids
    assert txn.state is ReadState.READING
    assert finishes(answer(txn, round2, CLEAN))[0].rounds == 2
    with pytest.raises(InternalError, match="illegal transition DONE -> READING"):
        txn.step_start(T0)
    with pytest.raises(InternalError, match="unusable"):
        txn.step_tick(T0)


# --- snapshot reads: every round as of ``at`` -----------------------------------------------

AT = Timestamp(T0 - 1_000, 2, 9)


def test_a_snapshot_read_is_answered_by_one_clean_round_across_partitions() -> None:
    txn = ReadTxn(KEYS, partition_of, T0, at=AT)
    round1 = sends(txn.step_start(T0))
    assert [s.request for s in round1] == [
        ReadRequest(partition=P2, keys=("b:1", "b:2"), at=AT),
        ReadRequest(partition=P1, keys=("a:1",), at=AT),
    ]
    effects = answer(txn, round1, CLEAN)
    assert sends(effects) == []  # no second round to compare with: the snapshot is exact
    assert finishes(effects) == [
        ReadResult(items=tuple(entry(k, CLEAN[k]) for k in KEYS), rounds=1, at=AT)
    ]
    assert txn.done


def test_a_snapshot_round_with_an_intent_at_or_below_at_is_read_again() -> None:
    txn = ReadTxn(KEYS, partition_of, T0, at=AT)
    round1 = sends(txn.step_start(T0))
    round2 = sends(answer(txn, round1, changed("b:2", pending=True)))
    assert [s.request for s in round2] == [s.request for s in round1]  # still as of ``at``
    settled = changed("b:2", version=2)  # the pending transaction committed below ``at``
    (result,) = finishes(answer(txn, round2, settled))
    assert result == ReadResult(items=tuple(entry(k, settled[k]) for k in KEYS), rounds=2, at=AT)


def test_a_snapshot_read_pending_in_every_round_conflicts_after_the_bound() -> None:
    txn = ReadTxn(KEYS, partition_of, T0, at=AT)
    effects = txn.step_start(T0)
    for _ in range(READ_ROUNDS_MAX):
        assert finishes(effects) == []
        effects = answer(txn, sends(effects), changed("a:1", pending=True))
    assert finishes(effects) == [
        ReadResult(error=ErrorCode.TransactionConflict, rounds=READ_ROUNDS_MAX, at=AT)
    ]
    assert sends(effects) == [] and txn.done


def test_snapshot_too_old_from_a_partition_ends_the_read_with_that_code() -> None:
    txn = ReadTxn(KEYS, partition_of, T0, at=AT)
    round1 = sends(txn.step_start(T0))
    refused = round1[1].request.partition
    effects = txn.step_failed(round1[1].call_id, ErrorCode.SnapshotTooOld, T0 + 1)
    assert finishes(effects) == [
        ReadResult(error=ErrorCode.SnapshotTooOld, rounds=1, partition=refused, at=AT)
    ]
    assert sends(effects) == [] and txn.done
    assert answer(txn, round1[:1], CLEAN) == []  # the other partition's late reply is ignored


def test_without_at_a_snapshot_refusal_is_just_a_failed_call() -> None:
    txn = ReadTxn(KEYS, partition_of, T0)
    round1 = sends(txn.step_start(T0))
    effects = txn.step_failed(round1[0].call_id, ErrorCode.SnapshotTooOld, T0)
    (result,) = finishes(effects)
    assert isinstance(result, ReadResult) and result.error is ErrorCode.Unavailable


def test_snapshot_reads_accept_at_up_to_the_clock_and_within_the_window() -> None:
    now = Timestamp(T0, 5, 3)
    check_snapshot_at(now, now, T0)
    check_snapshot_at(Timestamp(T0 - SNAPSHOT_WINDOW_MS * 1000, 0, 0), now, T0)
    with pytest.raises(ValidationError, match="at: is in the future") as future:
        check_snapshot_at(Timestamp(T0, 5, 4), now, T0)  # the origin breaks the tie
    assert future.value.field == "at"
    too_old = Timestamp(T0 - SNAPSHOT_WINDOW_MS * 1000 - 1, 0, 0)
    with pytest.raises(SnapshotTooOld, match=f"at most {SNAPSHOT_WINDOW_MS} ms") as old:
        check_snapshot_at(too_old, now, T0)
    assert old.value.details == {"at": str(too_old), "window_ms": SNAPSHOT_WINDOW_MS}
    assert not old.value.retryable
