"""Run actor cores (transactions, recoveries, intent resolutions) on any scheduler and sender.

Theory of operation
-------------------
The actor cores share one event interface: ``step_start``, ``step_reply(call_id, reply)``,
``step_failed(call_id, code)`` and ``step_tick``, each returning effects (``Send``, ``Finish``),
and ``next_deadline_us``, the earliest time the core wants a tick. :class:`ActorDriver` carries
those effects out, in list order, with no task or future per actor or per call:

* a ``Send`` goes to the :class:`Sender` with a callback; the answer (a reply, or the error code
  of a call that failed or timed out) comes back to the core as an event. A callback of an actor
  that is gone (done, dropped, or its driver stopped) is ignored.
* a ``Finish`` calls the ``on_finish`` given to :meth:`ActorDriver.start`, once. The core may keep
  going after it (cancels retried after the client was answered); it is fed until ``done``.
* each running actor has at most one timer, due at ``min(next_deadline_us, now + tick)``: a
  transaction that gets its replies in time is never ticked, and a clock that jumps (a test's,
  or the nemesis's) is noticed within ``tick_us``. A timer due later than a new deadline is
  replaced; one due earlier is kept (an early tick is harmless: cores act on their deadlines).

Answers that arrive while a core is stepping (a sender that answers synchronously) are queued
and fed after the step, so a core never re-enters itself. A core that raises is a bug: the driver
drops it and calls ``on_error`` (production fails the caller instead of hanging it), or re-raises
when there is none (the simulator stops on the bug).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from kvstore.coordinator.effects import Finish, Send
from kvstore.errors import ErrorCode, InternalError
from kvstore.limits import ACTOR_TICK_MS
from kvstore.messages import Reply, Request
from kvstore.runtime.scheduler import Scheduler, Timer

__all__ = ["Actor", "Sender", "Answer", "ActorDriver"]

_US_PER_MS = 1000

Answer = Callable[[Reply | None, ErrorCode | None], None]
"""A call's outcome: ``(reply, None)``, or ``(None, code)`` when it failed or timed out."""


class Actor(Protocol):
    @property
    def done(self) -> bool: ...
    def step_start(self, now_us: int) -> list[Any]: ...
    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[Any]: ...
    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[Any]: ...
    def step_tick(self, now_us: int) -> list[Any]: ...
    @property
    def next_deadline_us(self) -> int | None: ...


class Sender(Protocol):
    """Delivers one request to the partition it names; calls ``answer`` exactly once, or never
    when the environment loses the message silently (the core's deadline then fires)."""

    def send(self, request: Request, deadline_us: int, answer: Answer) -> None: ...


class _Running:
    __slots__ = ("actor", "finished", "on_error", "on_finish", "timer", "timer_due_us")

    def __init__(
        self,
        actor: Actor,
        on_finish: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        self.actor = actor
        self.on_finish = on_finish
        self.on_error = on_error
        self.finished = False
        self.timer: Timer | None = None
        self.timer_due_us = 0


class ActorDriver:
    """Runs actors over ``sender`` on ``scheduler``; see the module docstring."""

    def __init__(
        self,
        scheduler: Scheduler,
        sender: Sender,
        *,
        tick_ms: int = ACTOR_TICK_MS,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """``on_idle`` is called whenever the last running actor goes away."""
        self._scheduler = scheduler
        self._on_idle = on_idle
        self._sender = sender
        self._tick_us = tick_ms * _US_PER_MS
        self._actors: dict[int, _Running] = {}
        self._next_id = 0
        self._stepping = False
        self._queued: deque[tuple[int, Callable[[int], list[Any]]]] = deque()
        self.stopped = False

    @property
    def running(self) -> int:
        """Actors not yet done."""
        return len(self._actors)

    def start(
        self,
        actor: Actor,
        on_finish: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> int:
        """Start ``actor``; ``on_finish`` gets its ``Finish`` result. Returns its id."""
        self._next_id += 1
        actor_id = self._next_id
        self._actors[actor_id] = _Running(actor, on_finish, on_error)
        self._step(actor_id, actor.step_start)
        return actor_id

    def drop(self, actor_id: int) -> None:
        """Forget one actor (its process crashed): no more events, no answer."""
        running = self._actors.pop(actor_id, None)
        if running is None:
            return
        if running.timer is not None:
            running.timer.cancel()
        if not self._actors and self._on_idle is not None:
            self._on_idle()

    def stop(self) -> None:
        """Forget every actor (shutdown or crash); later answers are ignored."""
        self.stopped = True
        for actor_id in list(self._actors):
            self.drop(actor_id)

    # --- events ---------------------------------------------------------------------------

    def _step(self, actor_id: int, step: Callable[[int], list[Any]]) -> None:
        if self._stepping:  # an answer that arrived during a step: feed it after the step
            self._queued.append((actor_id, step))
            return
        self._stepping = True
        try:
            self._run_step(actor_id, step)
            while self._queued:
                self._run_step(*self._queued.popleft())
        finally:
            self._stepping = False
            self._queued.clear()  # only left over when a step raised

    def _run_step(self, actor_id: int, step: Callable[[int], list[Any]]) -> None:
        running = self._actors.get(actor_id)
        if running is None:
            return
        try:
            effects = step(self._scheduler.now_us())
        except Exception as error:
            self.drop(actor_id)
            if running.on_error is None:
                raise
            if not running.finished:
                running.finished = True
                running.on_error(error)
            return
        for effect in effects:
            if type(effect) is Send:
                self._sender.send(
                    effect.request, effect.deadline_us, self._answer(actor_id, effect)
                )
            elif isinstance(effect, Finish) and not running.finished:
                running.finished = True
                running.on_finish(effect.result)
        if running.actor.done:
            self.drop(actor_id)
            if not running.finished:  # a core bug: never leave a caller hanging
                running.finished = True
                failure = InternalError(f"{type(running.actor).__name__} ended without an answer")
                if running.on_error is None:
                    raise failure
                running.on_error(failure)
        else:
            self._arm_timer(actor_id, running)

    def _answer(self, actor_id: int, send: Send) -> Answer:
        call_id = send.call_id

        def answer(reply: Reply | None, error: ErrorCode | None) -> None:
            if actor_id not in self._actors:
                return
            if reply is not None:
                self._step(
                    actor_id,
                    lambda now_us: self._actors[actor_id].actor.step_reply(call_id, reply, now_us),
                )
            else:
                code = error or ErrorCode.Unavailable
                self._step(
                    actor_id,
                    lambda now_us: self._actors[actor_id].actor.step_failed(call_id, code, now_us),
                )

        return answer

    def _arm_timer(self, actor_id: int, running: _Running) -> None:
        now_us = self._scheduler.now_us()
        due_us = now_us + self._tick_us
        deadline_us = running.actor.next_deadline_us
        if deadline_us is not None and deadline_us < due_us:
            due_us = max(now_us, deadline_us)
        if running.timer is not None:
            if running.timer_due_us <= due_us:
                return  # the armed timer fires first; an early tick is harmless
            running.timer.cancel()
        running.timer_due_us = due_us
        running.timer = self._scheduler.call_later(due_us - now_us, lambda: self._tick(actor_id))

    def _tick(self, actor_id: int) -> None:
        running = self._actors.get(actor_id)
        if running is None:
            return
        running.timer = None
        self._step(actor_id, running.actor.step_tick)
