"""The runtime's asyncio side: a sender over a transport, and actors awaited as futures.

Theory of operation
-------------------
:class:`TransportSender` is production's :class:`~kvstore.runtime.actors.Sender`: each request
becomes one call of a :class:`Transport` (``kvstore.transport.PartitionTransport``: the owner's
RPC connection), bounded by the core's deadline. While the owner's connection is open the call
is started without a coroutine (``start``: the reply's future calls back); otherwise (first
call, reconnects, backoff) it runs as a task of ``call``. A
typed failure is answered with its error code. Every call task is tracked so :meth:`close` stops
them.

:class:`ActorRunner` runs actor cores for async callers (the coordinator library, ``kvctl
recover``): :meth:`ActorRunner.run` starts a core on an :class:`~kvstore.runtime.actors.
ActorDriver` and returns a future of its ``Finish`` result (a core that raises fails the future
instead of hanging it). A core may go on after its answer (retried cancels and the final
completion); :meth:`drain` waits for those, :meth:`close` stops everything.

:class:`LoopLagProbe` measures how late the event loop runs a timer due every ``period_ms``
(one timer per process, not per call) and hands each sample to a callback: the coordinator's
admission gate (:class:`~kvstore.runtime.admission.LagGate`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from kvstore.errors import KvError
from kvstore.limits import ACTOR_TICK_MS, LOOP_LAG_PROBE_MS
from kvstore.messages import Reply, Request
from kvstore.runtime.actors import Actor, ActorDriver, Answer
from kvstore.runtime.scheduler import AsyncioScheduler
from kvstore.timestamps import PhysicalClock

__all__ = ["Transport", "TransportSender", "ActorRunner", "LoopLagProbe"]

_log = logging.getLogger("kvstore.actors")
_US_PER_MS = 1000


class Transport(Protocol):
    """Delivers one request to the partition it names and returns the reply."""

    async def call(self, request: Request, timeout_ms: int) -> Reply: ...


class StartingTransport(Transport, Protocol):
    """A transport that can also start a call without a coroutine (see ``PartitionTransport``)."""

    def start(
        self, request: Request, timeout_ms: int, answer: Callable[[Reply | KvError], None]
    ) -> bool: ...


class TransportSender:
    """A ``Sender`` over an async ``Transport``; see the module docstring."""

    def __init__(self, transport: Transport | StartingTransport, now_us: PhysicalClock) -> None:
        self._transport = transport
        self._start = getattr(transport, "start", None)
        self._now_us = now_us
        self._calls: set[asyncio.Task[None]] = set()

    def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        timeout_ms = max(1, (deadline_us - self._now_us()) // _US_PER_MS)
        if self._start is not None:

            def answered(outcome: Reply | KvError) -> None:
                if isinstance(outcome, KvError):
                    answer(None, outcome.code)
                else:
                    answer(outcome, None)

            if self._start(request, timeout_ms, answered):
                return  # on the open connection, no task: the reply's callback answers
        call = asyncio.get_running_loop().create_task(self._call(request, timeout_ms, answer))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _call(self, request: Request, timeout_ms: int, answer: Answer) -> None:
        try:
            reply = await self._transport.call(request, timeout_ms)
        except KvError as error:
            answer(None, error.code)
        else:
            answer(reply, None)

    async def close(self) -> None:
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


class ActorRunner:
    """Runs actors against a transport for async callers; ``now_us`` is the physical clock."""

    def __init__(
        self, transport: Transport, now_us: PhysicalClock, *, tick_ms: int = ACTOR_TICK_MS
    ) -> None:
        self.sender = TransportSender(transport, now_us)
        self._idle = asyncio.Event()
        self._idle.set()
        self._waiting: set[asyncio.Future[Any]] = set()  # callers not answered yet
        self.driver = ActorDriver(
            AsyncioScheduler(now_us), self.sender, tick_ms=tick_ms, on_idle=self._idle.set
        )

    @property
    def running(self) -> int:
        """Actors not yet done (including those whose caller was already answered)."""
        return self.driver.running

    def run(self, actor: Actor) -> asyncio.Future[Any]:
        """Start ``actor``; the future resolves with its ``Finish`` result."""
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.add(result)
        result.add_done_callback(self._waiting.discard)

        def finish(value: Any) -> None:
            if not result.done():
                result.set_result(value)

        def fail(error: BaseException) -> None:
            _log.error("actor %s failed", type(actor).__name__, exc_info=error)
            if not result.done():
                result.set_exception(error)

        self._idle.clear()
        self.driver.start(actor, finish, fail)
        if self.driver.running == 0:
            self._idle.set()
        return result

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the running actors to finish; returns how many still
        run (a commit in flight reaches its participants instead of being cut off)."""
        if self.driver.running:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                pass
        return self.driver.running

    async def close(self) -> None:
        """Stop every actor; callers still waiting get ``CancelledError``."""
        self.driver.stop()
        self._idle.set()
        for waiting in list(self._waiting):
            waiting.cancel()
        await self.sender.close()


class LoopLagProbe:
    """Samples the running loop's lateness: ``on_sample(now_ms, lag_ms)`` every ``period_ms``."""

    def __init__(
        self, on_sample: Callable[[float, float], None], *, period_ms: int = LOOP_LAG_PROBE_MS
    ) -> None:
        self._on_sample = on_sample
        self._period_s = period_ms / 1000
        self._timer: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        """Start sampling on the running loop (again after :meth:`stop`; no-op if running)."""
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._schedule(loop, loop.time() + self._period_s)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, loop: asyncio.AbstractEventLoop, due_s: float) -> None:
        self._timer = loop.call_at(due_s, self._fire, loop, due_s)

    def _fire(self, loop: asyncio.AbstractEventLoop, due_s: float) -> None:
        now_s = loop.time()
        self._on_sample(now_s * 1000, max(0.0, now_s - due_s) * 1000)
        self._schedule(loop, now_s + self._period_s)
