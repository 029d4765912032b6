"""Hybrid logical clocks, transaction ids and the clock-skew guard (DESIGN section 4).

Theory of operation
-------------------
:class:`HybridClock` issues :class:`~kvstore.types.Timestamp` readings
``(physical_us, logical, origin)``. Each ``now()`` is strictly greater than every timestamp the
clock issued or observed before: the physical part is ``max(wall, last.physical_us)``, the logical
part restarts at 0 when the physical part advances and is ``last.logical + 1`` otherwise. So the
clock never goes backwards, even when the wall clock does. ``observe(ts)`` is the HLC receive rule:
it raises ``last`` to ``ts`` so that the next ``now()`` is above ``ts``. The origin, a random
64-bit id, breaks ties, so two clocks with different origins never issue equal timestamps.

The class is pure: it reads time only through the injected ``physical_clock`` and uses only the
origin it is given, so protocol cores and the simulator can drive it with virtual clocks.

Clone safety: :func:`process_clock` is the per-process clock on the system clock with an origin
from ``os.urandom``. A forked child draws a new origin (``os.register_at_fork``) and keeps its
last timestamp, so parent and child keep issuing distinct, non-decreasing timestamps.
:func:`new_txn_id` reads 128 bits straight from ``os.urandom`` for every id and keeps no
per-process state, so a clone can never repeat one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final, TypeAlias

from kvstore.errors import ValidationError
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants
from kvstore.types import ORIGIN_MAX, TIMESTAMP_ZERO, Timestamp, TxnId

__all__ = [
    "PhysicalClock",
    "system_clock_us",
    "HybridClock",
    "process_clock",
    "new_txn_id",
    "random_origin",
    "check_skew",
]

PhysicalClock: TypeAlias = Callable[[], int]
"""A source of wall-clock time in microseconds."""

_TXN_ID_BYTES: Final = 16


def system_clock_us() -> int:
    """The system wall clock in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def random_origin() -> int:
    """A random clock origin in ``1..ORIGIN_MAX`` drawn from ``os.urandom`` (never 0)."""
    while True:
        origin = int.from_bytes(os.urandom(8), "big")
        if origin != 0:
            return origin


def check_skew(ts: Timestamp, now_us: int, max_skew_ms: int) -> bool:
    """True when ``ts`` is at most ``max_skew_ms`` ahead of the local clock ``now_us``."""
    return ts.physical_us <= now_us + max_skew_ms * 1000


def _check_origin(origin: int) -> int:
    if isinstance(origin, bool) or not isinstance(origin, int) or not 1 <= origin <= ORIGIN_MAX:
        raise ValidationError("origin", f"must be an integer in 1..{ORIGIN_MAX}, got {origin!r}")
    return origin


class HybridClock:
    """A hybrid logical clock over an injected physical clock. Safe to share between threads."""

    __slots__ = ("_clock", "_last", "_lock", "_origin", "_stamp")

    def __init__(
        self,
        physical_clock: PhysicalClock,
        origin: int,
        *,
        last: Timestamp = TIMESTAMP_ZERO,
        mutants: Mutants = NO_MUTANTS,
    ) -> None:
        """``last`` seeds the clock (a restart may pass its persisted high-water mark)."""
        self._clock = physical_clock
        self._origin = _check_origin(origin)
        self._stamp = 1 if Mutant.NO_TS_TIE_BREAK in mutants else None  # the mutant's origin
        self._last = last
        self._lock = threading.Lock()

    @property
    def origin(self) -> int:
        """The tie-break id stamped on every timestamp this clock issues."""
        return self._origin

    @property
    def last(self) -> Timestamp:
        """The greatest timestamp issued or observed so far."""
        return self._last

    def now(self) -> Timestamp:
        """A timestamp strictly greater than every one issued or observed before."""
        wall = self._clock()
        with self._lock:
            last = self._last
            origin = self._origin if self._stamp is None else self._stamp
            if wall > last.physical_us:
                ts = Timestamp(wall, 0, origin)
            else:
                ts = Timestamp(last.physical_us, last.logical + 1, origin)
            self._last = ts
            return ts

    def observe(self, ts: Timestamp) -> None:
        """HLC receive rule: advance so that the next :meth:`now` is greater than ``ts``."""
        with self._lock:
            if ts > self._last:
                self._last = Timestamp(*ts)

    def reset_origin(self, origin: int) -> None:
        """Switch to a new origin, keeping ``last`` (used for clone safety after a fork)."""
        origin = _check_origin(origin)
        with self._lock:
            self._origin = origin

    def _after_fork_in_child(self, origin: int) -> None:
        # The lock may have been held by a parent thread that does not exist in the child.
        self._lock = threading.Lock()
        self.reset_origin(origin)

    def __repr__(self) -> str:
        return f"HybridClock(origin={self._origin:016x}, last={self._last})"


_process_clock: HybridClock | None = None
_process_clock_lock = threading.Lock()


def process_clock() -> HybridClock:
    """This process's clock: system time, random origin; redrawn origin in a forked child."""
    global _process_clock  # noqa: PLW0603 - a per-process singleton by design.
    clock = _process_clock
    if clock is not None:
        return clock
    with _process_clock_lock:
        if _process_clock is None:
            _process_clock = HybridClock(system_clock_us, random_origin())
        return _process_clock


def new_txn_id() -> TxnId:
    """A fresh transaction id: 32 lowercase hex digits, 128 bits read from ``os.urandom``."""
    return TxnId(os.urandom(_TXN_ID_BYTES).hex())


def _after_fork_in_child() -> None:
    global _process_clock_lock  # noqa: PLW0603 - rebuilt: a parent thread may have held it.
    _process_clock_lock = threading.Lock()
    clock = _process_clock
    if clock is not None:
        old = clock.origin
        origin = random_origin()
        while origin == old:
            origin = random_origin()
        clock._after_fork_in_child(origin)


os.register_at_fork(after_in_child=_after_fork_in_child)
