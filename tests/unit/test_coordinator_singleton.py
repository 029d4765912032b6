"""Singleton cores: one call (get, token lookup), and a singleton write re-run after conflicts.

Keys ``a:*`` live on partition 1, ``b:*`` on 2 (tests/support/coordinator.py).
"""

from __future__ import annotations

import pytest
from support.coordinator import finishes, partition_of, sends

from kvstore.coordinator.singleton import (
    CallResult,
    OneCall,
    check_page_at,
    new_get,
    new_singleton_write,
    new_token_lookup,
)
from kvstore.coordinator.state import CallState, RetryState
from kvstore.errors import ErrorCode, ValidationError
from kvstore.limits import (
    CONFLICT_BACKOFF_BASE_MS,
    CONFLICT_RETRIES_MAX,
    MAX_CLOCK_SKEW_MS,
    RPC_TIMEOUT_MS,
)
from kvstore.messages import (
    GetReply,
    GetRequest,
    ItemView,
    OpOutcome,
    ReadReply,
    ReasonCode,
    TokenLookupReply,
    TokenLookupRequest,
    WriteReply,
    WriteRequest,
)
from kvstore.ops import Op, OpKind
from kvstore.timestamps import HybridClock
from kvstore.types import PartitionId, Timestamp

T0 = 1_000_000_000
P1, P2 = PartitionId(1), PartitionId(2)
ITEM = ItemView(key="a:1", value={"v": 1}, version=3, ts=Timestamp(5, 0, 1))
PUT = Op(kind=OpKind.PUT, key="b:1", value={"v": 2})
CONFLICT = WriteReply(outcome=OpOutcome(code=ReasonCode.TRANSACTION_CONFLICT, message="pending"))
APPLIED = WriteReply(outcome=OpOutcome(), version=4, ts=Timestamp(9, 0, 2))


def half() -> float:
    return 0.5


# --- one call ---------------------------------------------------------------------------------


def test_a_get_asks_the_owner_once_and_answers_its_reply() -> None:
    core = new_get("a:1", partition_of)
    [send] = sends(core.step_start(T0))
    assert send.request == GetRequest(partition=P1, key="a:1")
    assert send.deadline_us == T0 + RPC_TIMEOUT_MS * 1000
    assert core.state is CallState.CALLING and core.next_deadline_us == send.deadline_us
    effects = core.step_reply(send.call_id, GetReply(item=ITEM), T0 + 10)
    assert finishes(effects) == [CallResult(partition=P1, reply=GetReply(item=ITEM))]
    assert core.done and core.next_deadline_us is None


def test_a_reply_of_the_wrong_type_is_a_protocol_violation() -> None:
    core = new_get("a:1", partition_of)
    [send] = sends(core.step_start(T0))
    effects = core.step_reply(send.call_id, ReadReply(entries=()), T0)
    assert finishes(effects) == [CallResult(partition=P1, error=ErrorCode.ProtocolViolation)]


def test_a_failed_call_keeps_its_code_and_the_deadline_means_outcome_unknown() -> None:
    refused = new_get("a:1", partition_of)
    [send] = sends(refused.step_start(T0))
    effects = refused.step_failed(send.call_id, ErrorCode.Unavailable, T0)
    assert finishes(effects) == [CallResult(partition=P1, error=ErrorCode.Unavailable)]

    lost = new_get("a:1", partition_of)
    [send] = sends(lost.step_start(T0))
    assert lost.step_tick(send.deadline_us - 1) == []
    effects = lost.step_tick(send.deadline_us)
    assert finishes(effects) == [CallResult(partition=P1, error=ErrorCode.OutcomeUnknown)]
    assert lost.done


def test_unknown_ids_and_late_answers_are_ignored() -> None:
    core = new_get("a:1", partition_of)
    [send] = sends(core.step_start(T0))
    assert core.step_reply(send.call_id + 1, GetReply(item=None), T0) == []
    assert finishes(core.step_reply(send.call_id, GetReply(item=None), T0))
    assert core.step_reply(send.call_id, GetReply(item=ITEM), T0) == []
    assert core.step_failed(send.call_id, ErrorCode.Unavailable, T0) == []
    assert core.step_tick(T0 + 10 * RPC_TIMEOUT_MS * 1000) == []


def test_a_token_lookup_goes_to_the_tokens_home() -> None:
    core = new_token_lookup("b-token", partition_of)
    [send] = sends(core.step_start(T0))
    assert send.request == TokenLookupRequest(partition=P2, token="b-token")
    effects = core.step_reply(send.call_id, TokenLookupReply(token="b-token", record=None), T0)
    [result] = finishes(effects)
    assert isinstance(result, CallResult) and result.reply is not None


def test_inputs_are_validated_before_any_effect() -> None:
    with pytest.raises(ValidationError):
        new_get("", partition_of)
    with pytest.raises(ValidationError):
        new_token_lookup("", partition_of)
    with pytest.raises(ValidationError):
        new_singleton_write(Op(kind=OpKind.CHECK, key="a:1"), partition_of, T0, half)


def test_one_call_takes_its_timeout() -> None:
    core = OneCall(GetRequest(partition=P1, key="a:1"), GetReply, timeout_ms=5)
    [send] = sends(core.step_start(T0))
    assert send.deadline_us == T0 + 5_000


# --- singleton writes ----------------------------------------------------------------------------


def test_a_write_that_applied_answers_at_once() -> None:
    core = new_singleton_write(PUT, partition_of, T0, half)
    [send] = sends(core.step_start(T0))
    assert send.request == WriteRequest(partition=P2, op=PUT)
    effects = core.step_reply(send.call_id, APPLIED, T0 + 5)
    assert finishes(effects) == [CallResult(partition=P2, reply=APPLIED)]
    assert core.done and core.retries == 0


def test_a_conflict_is_retried_after_a_jittered_pause_with_fresh_call_ids() -> None:
    draws = iter([0.5, 0.25])
    core = new_singleton_write(PUT, partition_of, T0, lambda: next(draws))
    [first] = sends(core.step_start(T0))
    assert core.step_reply(first.call_id, CONFLICT, T0 + 100) == []  # kept back
    assert core.state is RetryState.PAUSED
    pause_us = int(0.5 * CONFLICT_BACKOFF_BASE_MS * 1000)
    assert core.next_deadline_us == T0 + 100 + pause_us
    assert core.step_tick(T0 + 100 + pause_us - 1) == []
    [second] = sends(core.step_tick(T0 + 100 + pause_us))
    assert second.request == first.request and second.call_id != first.call_id
    assert core.state is RetryState.RUNNING
    # A late duplicate answer to the first attempt does not reach the second.
    assert core.step_reply(first.call_id, APPLIED, T0 + 200) == []
    assert core.step_reply(second.call_id, CONFLICT, T0 + 300) == []
    assert core.next_deadline_us == T0 + 300 + int(0.25 * 2 * CONFLICT_BACKOFF_BASE_MS * 1000)
    assert core.retries == 2


def test_the_last_conflict_is_the_answer() -> None:
    core = new_singleton_write(PUT, partition_of, T0, lambda: 0.0)
    [send] = sends(core.step_start(T0))
    for _ in range(CONFLICT_RETRIES_MAX):
        assert core.step_reply(send.call_id, CONFLICT, T0) == []
        [send] = sends(core.step_tick(T0))
    effects = core.step_reply(send.call_id, CONFLICT, T0)
    assert finishes(effects) == [CallResult(partition=P2, reply=CONFLICT)]
    assert core.done and core.retries == CONFLICT_RETRIES_MAX


def test_a_failed_write_is_not_retried() -> None:
    core = new_singleton_write(PUT, partition_of, T0, half)
    [send] = sends(core.step_start(T0))
    effects = core.step_failed(send.call_id, ErrorCode.OutcomeUnknown, T0)
    assert finishes(effects) == [CallResult(partition=P2, error=ErrorCode.OutcomeUnknown)]
    assert core.done and core.retries == 0


# --- a backup page's timestamp (check_page_at) -------------------------------------------------

SKEW_US = MAX_CLOCK_SKEW_MS * 1000


def test_a_backup_page_at_up_to_the_skew_ahead_of_the_clock_is_taken() -> None:
    now = Timestamp(T0, 0, 7)
    check_page_at(now, now)
    check_page_at(Timestamp(T0 + SKEW_US, 99, 1), now)  # another node's clock, ahead within skew
    with pytest.raises(ValidationError, match="in the future"):
        check_page_at(Timestamp(T0 + SKEW_US + 1, 0, 1), now)


def test_a_backup_s_own_timestamp_passes_when_the_hybrid_clock_runs_ahead_of_the_wall() -> None:
    """Regression (simulator, seeds with clock offsets): the coordinator that picks a backup's
    ``at`` (``Coordinator.now()``, its hybrid clock) had seen a node whose clock ran a second
    ahead, so ``at`` was a second past its wall clock; compared with the wall clock, the
    backup's own first page was refused. It is compared with the hybrid clock."""
    wall_us = T0
    clock = HybridClock(lambda: wall_us, origin=7)
    clock.observe(Timestamp(T0 + 2 * SKEW_US, 0, 9))  # a reply from a node running ahead
    at = clock.now()
    assert at.physical_us > wall_us + SKEW_US
    check_page_at(at, clock.now())
