"""The SDK's retry policy: which errors, how long to wait, how often, and how much in all.

Theory of operation
-------------------
Retries are decided here and carried out by the client (which sleeps and calls again). Nothing
here sleeps, reads a clock or draws a random number of its own: the clock (monotonic seconds)
and the random generator are injected, so the unit tests drive every rule with a fake clock and
a seeded generator, with no sleeps.

One SDK call (a get, a transaction, a page of a scan) gets an :class:`Attempts`: its deadline is
``timeout_s`` after it starts, and :meth:`Attempts.retry_delay_s` answers, for an error, either
the pause before the next attempt or None (raise the error). It answers None when

1. the error is not retryable (``KvError.retryable``: the catalogue's flag, refined by
   ``details["retryable"]``), or
2. ``attempts_max`` attempts were made, or
3. the pause would end past the deadline, or less than ``attempt_min_s`` before it (an
   attempt that starts with too little time runs out of it and reports an outcome it does not
   know; the refusal it follows is the truer answer), or
4. the client-wide :class:`RetryBudget` is empty.

The pause is capped exponential backoff with full jitter (uniform in
``[0, min(cap, base * 2**retry))``), so clients that failed together do not retry together. A
server's ``Retry-After`` (carried as ``details["retry_after_s"]``, at most
``RETRY_AFTER_MAX_S``) is waited first and the jittered backoff on top of it: clients refused
together by an overloaded server do not come back together one Retry-After later, and when the
server asks for more time than the call has left, the refusal is raised at once (rule 3) with
its ``retry_after_s``, for the caller to wait.

The budget keeps a brief overload from turning into a retry storm: over a sliding window, the
client may retry at most ``ratio`` times as often as it makes calls, plus a small floor per
window so a quiet client can still retry. It is a token bucket in effect: each call deposits
``ratio`` of a token, each retry spends one, deposits and spends expire after the window. The
window is counted in slots (``SDK_RETRY_BUDGET_SLOTS``) so memory stays bounded. The budget is
spent last, only once every other rule allows the retry.

The budget is for failed calls: overload, unavailability, timeouts, ambiguous outcomes, the
signals a struggling cluster gives. A transaction that lost a conflict got a definite, cheap
answer from a healthy cluster, and running it again on fresh reads is how contended work makes
progress at all: charging those re-runs to a 10% budget would turn ordinary contention (16
writers on one hot key conflict about half the time) into errors. So
:meth:`kvstore.client.client.Client.run` re-runs conflicts with ``spend_budget=False``, bounded
by its own attempts, its deadline and the same backoff, which makes every contender slow down
as it keeps losing. The calls inside each run (reads, the commit) still spend the budget when
they fail.

Which errors a given call may retry beyond rule 1 (a singleton put must not be repeated after an
ambiguous outcome; a transaction may, with its idempotency token) is the caller's filter, not
this module's. This is a few dozen lines rather than a dependency (``stamina``, ``tenacity``):
the budget shared across calls and the ``Retry-After`` floor are not what those libraries do,
and an injected clock makes the policy testable without patching.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kvstore.errors import KvError, ValidationError
from kvstore.limits import (
    RETRY_AFTER_MAX_S,
    SDK_ATTEMPT_MIN_MS,
    SDK_ATTEMPTS_MAX,
    SDK_BACKOFF_BASE_MS,
    SDK_BACKOFF_CAP_MS,
    SDK_RETRY_BUDGET_FLOOR,
    SDK_RETRY_BUDGET_PERCENT,
    SDK_RETRY_BUDGET_SLOTS,
    SDK_RETRY_BUDGET_WINDOW_MS,
)

__all__ = ["Clock", "RetryPolicy", "RetryBudget", "Attempts", "validate_timeout_s"]

Clock = Callable[[], float]
"""Monotonic seconds (``time.monotonic`` in production, a fake in tests)."""


def validate_timeout_s(timeout_s: float, field: str = "timeout_s") -> float:
    """A call's time limit: a positive, finite number of seconds."""
    _positive(timeout_s, field)
    return float(timeout_s)


def _positive(value: float, field: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValidationError(field, f"must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValidationError(field, f"must be finite, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How one client retries; the defaults are the named SDK limits."""

    attempts_max: int = SDK_ATTEMPTS_MAX
    backoff_base_s: float = SDK_BACKOFF_BASE_MS / 1000
    backoff_cap_s: float = SDK_BACKOFF_CAP_MS / 1000
    budget_window_s: float = SDK_RETRY_BUDGET_WINDOW_MS / 1000
    budget_ratio: float = SDK_RETRY_BUDGET_PERCENT / 100
    budget_floor: int = SDK_RETRY_BUDGET_FLOOR
    attempt_min_s: float = SDK_ATTEMPT_MIN_MS / 1000

    def __post_init__(self) -> None:
        if isinstance(self.attempts_max, bool) or not isinstance(self.attempts_max, int):
            raise ValidationError("attempts_max", "must be an integer")
        if self.attempts_max < 1:
            raise ValidationError("attempts_max", "must be at least 1")
        _positive(self.backoff_base_s, "backoff_base_s")
        _positive(self.backoff_cap_s, "backoff_cap_s")
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValidationError("backoff_cap_s", "must be at least backoff_base_s")
        _positive(self.budget_window_s, "budget_window_s")
        if not 0 <= self.budget_ratio <= 1:
            raise ValidationError("budget_ratio", "must be in 0..1")
        if isinstance(self.budget_floor, bool) or not isinstance(self.budget_floor, int):
            raise ValidationError("budget_floor", "must be an integer")
        if self.budget_floor < 0:
            raise ValidationError("budget_floor", "must not be negative")
        if isinstance(self.attempt_min_s, bool) or not isinstance(self.attempt_min_s, int | float):
            raise ValidationError("attempt_min_s", "must be a number")
        if not 0 <= self.attempt_min_s < float("inf"):
            raise ValidationError("attempt_min_s", "must be a finite number, at least 0")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """The pause before retry number ``retry`` (0 for the first): full jitter below
        ``min(cap, base * 2**retry)``."""
        ceiling_s = self.backoff_cap_s
        if retry < 64:  # 2**64 * base is past any cap; avoids float overflow for huge counts
            ceiling_s = min(ceiling_s, self.backoff_base_s * 2**retry)
        return rng.uniform(0, ceiling_s)


class RetryBudget:
    """Client-wide: retries allowed over a sliding window (see the module)."""

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._slot_s = policy.budget_window_s / SDK_RETRY_BUDGET_SLOTS
        # [slot index, calls, retries], oldest first; at most SDK_RETRY_BUDGET_SLOTS entries.
        self._slots: deque[list[int]] = deque()

    def _current(self) -> list[int]:
        index = math.floor(self._clock() / self._slot_s)
        while self._slots and self._slots[0][0] <= index - SDK_RETRY_BUDGET_SLOTS:
            self._slots.popleft()
        if not self._slots or self._slots[-1][0] < index:
            self._slots.append([index, 0, 0])
        assert len(self._slots) <= SDK_RETRY_BUDGET_SLOTS
        return self._slots[-1]

    @property
    def balance(self) -> float:
        """Retries the budget allows right now (may be fractional or negative)."""
        self._current()
        calls = sum(slot[1] for slot in self._slots)
        retries = sum(slot[2] for slot in self._slots)
        return self._policy.budget_floor + self._policy.budget_ratio * calls - retries

    def deposit(self) -> None:
        """One call started."""
        self._current()[1] += 1

    def try_spend(self) -> bool:
        """Take one retry if the budget has one."""
        if self.balance < 1:
            return False
        self._current()[2] += 1
        return True


class Attempts:
    """The retry state of one SDK call: attempts made and its deadline (see the module)."""

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        clock: Clock,
        rng: random.Random,
        timeout_s: float,
    ) -> None:
        _positive(timeout_s, "timeout_s")
        self._policy = policy
        self._budget = budget
        self._clock = clock
        self._rng = rng
        self.deadline_s = clock() + timeout_s
        self.made = 1  # the first attempt is about to be made
        budget.deposit()

    def remaining_s(self) -> float:
        """Time left before the deadline (at least 0)."""
        return max(0.0, self.deadline_s - self._clock())

    def retry_delay_s(self, error: KvError, *, spend_budget: bool = True) -> float | None:
        """The pause before the next attempt after ``error``, or None to raise it.

        ``spend_budget=False`` (a conflict re-run of an interactive transaction, see
        :meth:`kvstore.client.client.Client.run`) skips rule 4."""
        if not error.retryable or self.made >= self._policy.attempts_max:
            return None
        delay_s = self._policy.backoff_s(self.made - 1, self._rng)
        retry_after_s = error.details.get("retry_after_s")
        if isinstance(retry_after_s, int | float) and not isinstance(retry_after_s, bool):
            delay_s += min(float(retry_after_s), RETRY_AFTER_MAX_S)
        if self._clock() + delay_s + self._policy.attempt_min_s >= self.deadline_s:
            return None  # too little time left for the attempt: it would end ambiguous
        if spend_budget and not self._budget.try_spend():
            return None
        self.made += 1
        return delay_s
