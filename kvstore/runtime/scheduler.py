"""The clock and timers a runtime runs on.

Theory of operation
-------------------
A :class:`Scheduler` gives the runtime the physical time (``now_us``, microseconds of the wall
clock the cores read) and two ways to run a callback later: ``call_soon`` (after the current
step, before any timer) and ``call_later`` (after ``delay_us``), which returns a handle that can
be cancelled. Callbacks run one at a time, never concurrently, so the runtime needs no locks.

:class:`AsyncioScheduler` is production's: the running asyncio loop (looked up at each call, so
one may be built before the loop runs) and a physical clock function (the system clock, or the
chaos control's skewed one). The simulator implements the same protocol on its virtual event
loop, and the tests on a clock they move by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from kvstore.timestamps import PhysicalClock

__all__ = ["Timer", "FlagTimer", "Scheduler", "AsyncioScheduler"]

_US_PER_S = 1_000_000


class Timer(Protocol):
    def cancel(self) -> None: ...


class FlagTimer:
    """A timer for schedulers on their own event loops (simulated, hand-moved): the loop checks
    ``cancelled`` when the timer comes due."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler(Protocol):
    def now_us(self) -> int: ...
    def call_soon(self, callback: Callable[[], None]) -> None: ...
    def call_later(self, delay_us: int, callback: Callable[[], None]) -> Timer: ...


class AsyncioScheduler:
    """The running asyncio loop, with ``physical_clock`` as the cores' wall time."""

    def __init__(self, physical_clock: PhysicalClock) -> None:
        self._clock = physical_clock

    def now_us(self) -> int:
        return self._clock()

    def call_soon(self, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_soon(callback)

    def call_later(self, delay_us: int, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0, delay_us) / _US_PER_S, callback)
