"""The SDK's retry policy (kvstore.client.retry): backoff, deadline, attempts, budget.

Goal: every rule of the policy holds exactly, with no sleeps. Method: a fake clock the test
moves by hand and seeded random generators; :class:`Attempts` is asked for decisions the way
the client asks, and the answers (a pause, or None to raise) are checked against the rules:
full jitter below ``min(cap, base * 2**retry)``; no retry of a non-retryable error, after
``attempts_max`` attempts, past the deadline, or with the budget empty; ``Retry-After`` as a
floor, capped; the budget allowing ``floor + ratio * calls`` retries per sliding window.
"""

from __future__ import annotations

import random

import pytest

from kvstore.client.retry import Attempts, RetryBudget, RetryPolicy, validate_timeout_s
from kvstore.errors import (
    ConditionFailed,
    KvError,
    Overloaded,
    TransactionCanceled,
    Unavailable,
    ValidationError,
)
from kvstore.limits import RETRY_AFTER_MAX_S, SDK_ATTEMPT_MIN_MS


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


POLICY = RetryPolicy(
    attempts_max=5,
    backoff_base_s=0.01,
    backoff_cap_s=0.1,
    budget_window_s=10.0,
    budget_ratio=0.1,
    budget_floor=10,
)


def attempts_for(
    policy: RetryPolicy = POLICY,
    timeout_s: float = 100.0,
    clock: FakeClock | None = None,
    budget: RetryBudget | None = None,
    seed: int = 1,
) -> Attempts:
    clock = clock if clock is not None else FakeClock()
    budget = budget if budget is not None else RetryBudget(policy, clock)
    return Attempts(policy, budget, clock, random.Random(seed), timeout_s)


def overloaded() -> KvError:
    return Overloaded("queue full")


def test_backoff_is_full_jitter_below_the_capped_exponential() -> None:
    rng = random.Random(7)
    for retry in range(12):
        ceiling_s = min(POLICY.backoff_cap_s, POLICY.backoff_base_s * 2**retry)
        delays = [POLICY.backoff_s(retry, rng) for _ in range(200)]
        assert all(0 <= delay < ceiling_s for delay in delays), retry
        # full jitter spreads over the whole range, not just near the ceiling
        assert min(delays) < ceiling_s * 0.1
        assert max(delays) > ceiling_s * 0.9
    assert POLICY.backoff_s(10_000, rng) <= POLICY.backoff_cap_s  # no overflow for huge counts


def test_only_retryable_errors_are_retried() -> None:
    attempts = attempts_for()
    assert attempts.retry_delay_s(ConditionFailed("no")) is None
    cancelled_by_conflict = TransactionCanceled("c", details={"retryable": True})
    assert attempts.retry_delay_s(TransactionCanceled("c")) is None
    assert attempts.retry_delay_s(cancelled_by_conflict) is not None  # details refine the flag
    assert attempts.retry_delay_s(Unavailable("down", details={"retryable": False})) is None


def test_at_most_attempts_max_attempts() -> None:
    attempts = attempts_for()
    delays = [attempts.retry_delay_s(overloaded()) for _ in range(POLICY.attempts_max + 3)]
    assert all(delay is not None for delay in delays[: POLICY.attempts_max - 1])
    assert delays[POLICY.attempts_max - 1 :] == [None] * 4
    assert attempts.made == POLICY.attempts_max


class HighestRandom(random.Random):
    """Jitter that always draws the top of its range, so pauses are known exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_no_retry_whose_pause_ends_past_the_deadline() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts_max=10, backoff_base_s=0.3, backoff_cap_s=1.0, attempt_min_s=0)
    attempts = Attempts(policy, RetryBudget(policy, clock), clock, HighestRandom(), 1.0)
    assert attempts.remaining_s() == 1.0
    assert attempts.retry_delay_s(overloaded()) == pytest.approx(0.3)
    clock.now_s += 0.3
    assert attempts.retry_delay_s(overloaded()) == pytest.approx(0.6)  # ends at 0.9 < 1.0
    clock.now_s += 0.6
    assert attempts.retry_delay_s(overloaded()) is None  # 1.0 more would end past the deadline
    assert attempts.made == 3
    clock.now_s += 1.0
    assert attempts.remaining_s() == 0.0


def test_no_retry_left_with_less_than_the_minimum_time_for_an_attempt() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts_max=10, backoff_base_s=0.3, backoff_cap_s=1.0, attempt_min_s=1)
    attempts = Attempts(policy, RetryBudget(policy, clock), clock, HighestRandom(), 1.8)
    assert attempts.retry_delay_s(overloaded()) == pytest.approx(0.3)  # 1.5 s left after it
    clock.now_s += 0.3
    assert attempts.retry_delay_s(overloaded()) is None  # 0.6 more would leave 0.9 s
    assert RetryPolicy().attempt_min_s == SDK_ATTEMPT_MIN_MS / 1000


def test_retry_after_is_waited_then_the_jittered_backoff() -> None:
    attempts = attempts_for()
    delays = []
    for _ in range(3):
        delay = attempts.retry_delay_s(Overloaded("busy", details={"retry_after_s": 0.05}))
        assert delay is not None and 0.05 <= delay < 0.05 + POLICY.backoff_cap_s
        delays.append(delay)
    assert len(set(delays)) == 3  # jittered: clients refused together come back apart
    delay = attempts.retry_delay_s(Overloaded("busy", details={"retry_after_s": 8}))
    assert delay is not None and 8 <= delay < 8 + POLICY.backoff_cap_s
    delay = attempts_for().retry_delay_s(Overloaded("busy", details={"retry_after_s": 3600}))
    assert delay is not None  # a huge Retry-After is capped
    assert RETRY_AFTER_MAX_S <= delay < RETRY_AFTER_MAX_S + POLICY.backoff_cap_s
    short = attempts_for(timeout_s=5.0)
    assert short.retry_delay_s(Overloaded("busy", details={"retry_after_s": 8})) is None


def test_the_budget_allows_its_floor_then_a_tenth_of_the_calls() -> None:
    clock = FakeClock()
    budget = RetryBudget(POLICY, clock)
    assert budget.balance == 10
    spent = 0
    while budget.try_spend():
        spent += 1
    assert spent == 10  # the floor, for a client that made no calls yet
    for _ in range(50):
        budget.deposit()
    assert budget.balance == pytest.approx(5.0)
    assert sum(budget.try_spend() for _ in range(10)) == 5


def test_the_budget_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(POLICY, clock)
    for _ in range(10):
        assert budget.try_spend()
    assert not budget.try_spend()
    clock.now_s += POLICY.budget_window_s / 2
    assert not budget.try_spend()  # the spends are still inside the window
    clock.now_s += POLICY.budget_window_s / 2 + 0.01
    assert budget.try_spend()  # they expired
    clock.now_s += 1e6
    assert budget.balance == POLICY.budget_floor


def test_an_empty_budget_raises_instead_of_retrying_but_is_spent_last() -> None:
    clock = FakeClock()
    budget = RetryBudget(POLICY, clock)
    while budget.try_spend():
        pass
    attempts = attempts_for(clock=clock, budget=budget)  # a new call deposits 0.1
    assert attempts.retry_delay_s(overloaded()) is None
    assert attempts.made == 1
    # A refusal for another reason leaves the budget alone.
    fresh = RetryBudget(POLICY, clock)
    attempts = attempts_for(clock=clock, budget=fresh)
    before = fresh.balance
    assert attempts.retry_delay_s(ConditionFailed("no")) is None
    assert fresh.balance == before


def test_a_conflict_re_run_may_skip_the_budget() -> None:
    clock = FakeClock()
    budget = RetryBudget(POLICY, clock)
    while budget.try_spend():
        pass
    attempts = attempts_for(clock=clock, budget=budget)
    assert attempts.retry_delay_s(overloaded(), spend_budget=False) is not None


def test_many_calls_share_one_budget_so_a_storm_stops() -> None:
    clock = FakeClock()
    budget = RetryBudget(POLICY, clock)
    retried = 0
    for _ in range(1_000):  # every call fails with overload, at the same instant
        attempts = attempts_for(clock=clock, budget=budget)
        while attempts.retry_delay_s(overloaded()) is not None:
            retried += 1
    assert retried == 10 + 100  # the floor plus a tenth of 1000 calls, not 4 x 1000


def test_the_policy_refuses_nonsense() -> None:
    for bad in (
        {"attempts_max": 0},
        {"attempts_max": 1.5},
        {"backoff_base_s": 0},
        {"backoff_base_s": 1.0, "backoff_cap_s": 0.5},
        {"budget_window_s": float("inf")},
        {"budget_ratio": 1.5},
        {"budget_floor": -1},
        {"attempt_min_s": -1},
        {"attempt_min_s": float("inf")},
    ):
        with pytest.raises(ValidationError):
            RetryPolicy(**bad)
    for timeout_s in (0, -1, float("nan"), True):
        with pytest.raises(ValidationError):
            validate_timeout_s(timeout_s)
