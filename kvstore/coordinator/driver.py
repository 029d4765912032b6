"""Run a sans-I/O actor core (write, read, recovery, intent resolution) on asyncio.

Theory of operation
-------------------
The cores in ``kvstore.coordinator`` and ``kvstore.storage_node.resolver`` share one event
interface: ``step_start``, ``step_reply(call_id, reply)``, ``step_failed(call_id, code)`` and
``step_tick``, each returning effects (``Send``, ``Finish``). :class:`ActorRunner` is the thin shell
that carries those effects out, in order: a ``Send`` becomes one call through a
:class:`Transport` (a task, so calls run in parallel), whose answer comes back to the core as an
event; a ``Finish`` resolves the future :meth:`ActorRunner.run` returned. The core may keep going
after ``Finish`` (cancels retried after the client was answered): the runner keeps feeding it until
``done``. The runner calls ``step_tick`` at the core's ``next_deadline_us`` and at least every
``tick_ms`` (so a clock that jumps, as a test's fake clock does, is noticed within a tick); with
the deadlines of calls, re-sends and decisions in the core, a transaction that gets its replies
in time is never ticked at all (a fixed 10 ms tick cost a timer and a core step per 10 ms of
every transaction's life, measured in docs/bench.md). A call still in flight when
its core is done is left to finish (cores send fire-and-forget messages such as the final
``CompleteRequest`` right before finishing; each call is bounded by its deadline). Every actor and
call is a task the runner tracks, so :meth:`ActorRunner.close` stops them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from kvstore.coordinator.effects import Finish, Send
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import Reply, Request

__all__ = ["Actor", "Transport", "ActorRunner", "TICK_MS"]

TICK_MS = 100
_log = logging.getLogger("kvstore.actors")
_US_PER_MS = 1000
_US_PER_S = 1_000_000


class Actor(Protocol):
    @property
    def done(self) -> bool: ...
    def step_start(self, now_us: int) -> list[Any]: ...
    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[Any]: ...
    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[Any]: ...
    def step_tick(self, now_us: int) -> list[Any]: ...
    @property
    def next_deadline_us(self) -> int | None: ...


class Transport(Protocol):
    """Delivers one request to the partition it names and returns the reply."""

    async def call(self, request: Request, timeout_ms: int) -> Reply: ...


_Event = tuple[int, Reply | None, ErrorCode | None]


class ActorRunner:
    """Runs actors against a transport; ``now_us`` is the caller's physical clock."""

    def __init__(
        self, transport: Transport, now_us: Callable[[], int], *, tick_ms: int = TICK_MS
    ) -> None:
        self._transport = transport
        self._now_us = now_us
        self._tick_s = tick_ms / 1000
        self._actors: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        """Actors not yet done."""
        return len(self._actors)

    def run(self, actor: Actor) -> asyncio.Future[Any]:
        """Start ``actor``; the future resolves with its ``Finish`` result."""
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(self._drive(actor, result))
        self._actors.add(task)
        task.add_done_callback(self._actors.discard)
        return result

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the running actors to finish; returns how many still
        run (a commit in flight reaches its participants instead of being cut off)."""
        if self._actors:
            await asyncio.wait(list(self._actors), timeout=timeout_s)
        return len(self._actors)

    async def close(self) -> None:
        tasks = [*self._actors, *self._calls]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(self, actor: Actor, result: asyncio.Future[Any]) -> None:
        inbox: asyncio.Queue[_Event] = asyncio.Queue()

        def carry(effects: list[Any]) -> None:
            for effect in effects:
                if isinstance(effect, Send):
                    call = asyncio.get_running_loop().create_task(self._call(effect, inbox))
                    self._calls.add(call)
                    call.add_done_callback(self._calls.discard)
                elif isinstance(effect, Finish) and not result.done():
                    result.set_result(effect.result)

        try:
            carry(actor.step_start(self._now_us()))
            while not actor.done:
                wait_s = self._tick_s
                deadline_us = actor.next_deadline_us
                if deadline_us is not None:
                    wait_s = min(wait_s, max(0, deadline_us - self._now_us()) / _US_PER_S)
                try:
                    async with asyncio.timeout(wait_s):
                        call_id, reply, error = await inbox.get()
                except TimeoutError:
                    carry(actor.step_tick(self._now_us()))
                    continue
                if reply is not None:
                    carry(actor.step_reply(call_id, reply, self._now_us()))
                else:
                    carry(
                        actor.step_failed(call_id, error or ErrorCode.Unavailable, self._now_us())
                    )
        except asyncio.CancelledError:
            result.cancel()
            raise
        except Exception as error:  # a core bug: fail the caller instead of hanging it
            _log.exception("actor %s failed", type(actor).__name__)
            if not result.done():
                result.set_exception(error)
        finally:
            if not result.done():  # done without Finish would be a core bug; never hang a caller
                result.set_exception(KvError("actor finished without an answer"))

    async def _call(self, send: Send, inbox: asyncio.Queue[_Event]) -> None:
        timeout_ms = max(1, (send.deadline_us - self._now_us()) // _US_PER_MS)
        try:
            reply = await self._transport.call(send.request, timeout_ms)
        except KvError as error:
            inbox.put_nowait((send.call_id, None, error.code))
        else:
            inbox.put_nowait((send.call_id, reply, None))
