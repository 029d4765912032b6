"""Conflict retries around a core: a read-only transaction run again after meeting intents."""

from __future__ import annotations

import pytest
from support.coordinator import finishes, partition_of, sends

from kvstore.coordinator.read import new_read
from kvstore.coordinator.results import ReadResult
from kvstore.coordinator.state import ReadState, RetryState
from kvstore.errors import ErrorCode, ValidationError
from kvstore.limits import CONFLICT_BACKOFF_BASE_MS, CONFLICT_RETRIES_MAX, READ_ROUNDS_MAX
from kvstore.messages import ReadEntry, ReadReply, ReadRequest
from kvstore.types import Timestamp

T0 = 1_000_000_000


def entry(key: str, pending: bool) -> ReadEntry:
    return ReadEntry(
        key=key, exists=True, value=1, version=1, ts=Timestamp(1, 0, 1), pending=pending
    )


def answer(core: object, effects: list[object], pending: bool, now: int) -> list[object]:
    out: list[object] = []
    for send in sends(effects):
        assert isinstance(send.request, ReadRequest)
        reply = ReadReply(entries=tuple(entry(k, pending) for k in send.request.keys))
        out += core.step_reply(send.call_id, reply, now)  # type: ignore[attr-defined]
    return out


def test_a_read_that_met_intents_runs_again_after_a_pause() -> None:
    core = new_read(["a:1"], partition_of, T0, lambda: 1.0)
    effects = core.step_start(T0)
    assert core.state is RetryState.RUNNING and core.attempt.state is ReadState.READING
    for _ in range(READ_ROUNDS_MAX):  # every round sees the intent: the attempt gives up
        effects = answer(core, effects, pending=True, now=T0)
        if not sends(effects):
            break
    assert finishes(effects) == []  # the conflict is kept back: a retry follows
    assert core.state is RetryState.PAUSED and core.retries == 1
    assert core.next_deadline_us == T0 + CONFLICT_BACKOFF_BASE_MS * 1000
    effects = core.step_tick(T0 + CONFLICT_BACKOFF_BASE_MS * 1000)
    assert len(sends(effects)) == 1
    [result] = finishes(answer(core, effects, pending=False, now=T0 + 10_000))
    assert isinstance(result, ReadResult) and result.error is None
    assert core.done


def test_the_conflict_is_answered_once_retries_are_spent() -> None:
    core = new_read(["a:1"], partition_of, T0, lambda: 0.0)
    effects = core.step_start(T0)
    answers: list[object] = []
    for _ in range(100):
        effects = answer(core, effects, pending=True, now=T0)
        answers += finishes(effects)
        if not sends(effects):
            if core.done:
                break
            effects = core.step_tick(T0)
    assert core.retries == CONFLICT_RETRIES_MAX and core.done
    [result] = answers
    assert isinstance(result, ReadResult) and result.error is not None


def test_keys_are_validated_before_any_effect() -> None:
    with pytest.raises(ValidationError):
        new_read([], partition_of, T0, lambda: 0.0)


def test_a_snapshot_read_is_retried_as_of_the_same_at_and_never_after_snapshot_too_old() -> None:
    at = Timestamp(T0 - 5, 0, 1)
    core = new_read(["a:1"], partition_of, T0, lambda: 0.0, at=at)
    effects = core.step_start(T0)
    for _ in range(READ_ROUNDS_MAX):
        assert all(s.request.at == at for s in sends(effects))  # type: ignore[union-attr]
        effects = answer(core, effects, pending=True, now=T0)
    assert core.state is RetryState.PAUSED  # a conflict: run again
    effects = core.step_tick(T0)
    (send,) = sends(effects)
    assert isinstance(send.request, ReadRequest) and send.request.at == at
    effects = core.step_failed(send.call_id, ErrorCode.SnapshotTooOld, T0)
    [result] = finishes(effects)
    assert isinstance(result, ReadResult) and result.error is ErrorCode.SnapshotTooOld
    assert core.done and core.retries == 1  # final: not retried
