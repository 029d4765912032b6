"""Run an operation again after a conflict on a pending intent, following a short jittered pause.

Theory of operation
-------------------
An intent usually lives for one commit round trip (a cancelled transaction's intents are cleared
just after its client was answered), so a read that met intents in every round, or a singleton
write refused by one (nothing applied), is worth running again a moment later (DESIGN section
6 rule 9). :class:`Retrying` is a core around the attempts of one such operation, with the same
event interface as the cores it runs:

* ``make(now_us)`` builds an attempt (a fresh core). The first is built in the constructor, so a
  validation error is raised before any effect exists.
* The current attempt's effects pass through, except that call ids are shifted: each attempt's
  ids (positive, from its own core) are offset past every id given out before, so a late reply
  to an abandoned attempt can never reach the next one (it maps to no id of the current
  attempt and is ignored, as a core ignores ids it does not know).
* When the attempt answers (``Finish``) with a result ``retry_if`` accepts and fewer than
  ``retries_max`` re-runs were made, the answer is kept back: the attempt is abandoned and the
  next one starts after a pause of ``jitter() * base_ms * 2**retries`` milliseconds (full jitter),
  a deadline the shell's tick acts on. Any other answer is the client's, and the core is done
  when its attempt is.

The pause's randomness is an input: ``jitter`` returns a draw in ``[0, 1)`` from the shell's
generator (``random.random`` in production, the run's seeded generator in the simulator). The
core reads no clock and draws nothing of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.state import RETRY_TRANSITIONS, RetryState, StateMachine
from kvstore.errors import ErrorCode
from kvstore.limits import CONFLICT_BACKOFF_BASE_MS, CONFLICT_RETRIES_MAX
from kvstore.messages import Reply

__all__ = ["Attempt", "Retrying", "Jitter"]

R = TypeVar("R")
_US_PER_MS = 1000

Jitter = Callable[[], float]
"""A uniform draw in ``[0, 1)`` from the shell's random generator."""


class Attempt(Protocol):
    """What :class:`Retrying` needs of the cores it runs (the actor event interface)."""

    @property
    def done(self) -> bool: ...
    @property
    def state(self) -> enum.Enum: ...
    @property
    def next_deadline_us(self) -> int | None: ...
    def step_start(self, now_us: int) -> list[Any]: ...
    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[Any]: ...
    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[Any]: ...
    def step_tick(self, now_us: int) -> list[Any]: ...


class Retrying(Generic[R]):
    """Attempts of one operation, re-run after a jittered pause while ``retry_if`` says so."""

    def __init__(
        self,
        make: Callable[[int], Attempt],
        retry_if: Callable[[R], bool],
        jitter: Jitter,
        now_us: int,
        *,
        retries_max: int = CONFLICT_RETRIES_MAX,
        base_ms: int = CONFLICT_BACKOFF_BASE_MS,
        name: str = "retrying",
    ) -> None:
        self._make = make
        self._retry_if = retry_if
        self._jitter = jitter
        self._retries_max = retries_max
        self._base_us = base_ms * _US_PER_MS
        self._machine = StateMachine(RetryState.INIT, RETRY_TRANSITIONS, name)
        self._attempt = make(now_us)  # validates before any effect
        self._base_id = 0  # our call id = the attempt's id + this attempt's base
        self._top_id = 0  # the highest call id given out so far
        self._resume_us: int | None = None
        self.retries = 0
        self.result: R | None = None

    # --- observers ------------------------------------------------------------------------

    @property
    def state(self) -> RetryState:
        return self._machine.state

    @property
    def attempt(self) -> Attempt:
        """The current (or last) attempt."""
        return self._attempt

    @property
    def done(self) -> bool:
        return self._machine.state is RetryState.DONE

    @property
    def next_deadline_us(self) -> int | None:
        state = self._machine.state
        if state is RetryState.PAUSED:
            return self._resume_us
        if state is RetryState.RUNNING:
            return self._attempt.next_deadline_us
        return None

    # --- events ---------------------------------------------------------------------------

    def step_start(self, now_us: int) -> list[Any]:
        with self._machine.guard():
            self._machine.move(RetryState.RUNNING)
            return self._pass(self._attempt.step_start(now_us), now_us)

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[Any]:
        with self._machine.guard():
            inner = call_id - self._base_id
            if inner <= 0 or self._machine.state is not RetryState.RUNNING:
                return []
            return self._pass(self._attempt.step_reply(inner, reply, now_us), now_us)

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[Any]:
        with self._machine.guard():
            inner = call_id - self._base_id
            if inner <= 0 or self._machine.state is not RetryState.RUNNING:
                return []
            return self._pass(self._attempt.step_failed(inner, error, now_us), now_us)

    def step_tick(self, now_us: int) -> list[Any]:
        with self._machine.guard():
            state = self._machine.state
            if state is RetryState.PAUSED:
                if self._resume_us is None or now_us < self._resume_us:
                    return []
                self._resume_us = None
                self._attempt = self._make(now_us)
                self._machine.move(RetryState.RUNNING)
                return self._pass(self._attempt.step_start(now_us), now_us)
            if state is RetryState.RUNNING:
                return self._pass(self._attempt.step_tick(now_us), now_us)
            return []

    # --- helpers ----------------------------------------------------------------------------

    def _pass(self, effects: list[Any], now_us: int) -> list[Any]:
        """The attempt's effects with our call ids; its answer kept back when retried."""
        out: list[Any] = []
        base = self._base_id
        for effect in effects:
            if isinstance(effect, Send):
                call_id = base + effect.call_id
                self._top_id = max(self._top_id, call_id)
                out.append(
                    Send(call_id=call_id, request=effect.request, deadline_us=effect.deadline_us)
                )
            elif isinstance(effect, Finish):
                if self.retries < self._retries_max and self._retry_if(effect.result):
                    self._pause(now_us)
                    return out  # the abandoned attempt's later effects do not matter
                self.result = effect.result
                out.append(effect)
            else:
                out.append(effect)
        if self._machine.state is RetryState.RUNNING and self._attempt.done:
            self._machine.move(RetryState.DONE)
        return out

    def _pause(self, now_us: int) -> None:
        self._base_id = self._top_id  # the abandoned attempt's ids now map to nothing
        ceiling_us = self._base_us * 2**self.retries
        self.retries += 1
        self._resume_us = now_us + int(self._jitter() * ceiling_us)
        self._machine.move(RetryState.PAUSED)
