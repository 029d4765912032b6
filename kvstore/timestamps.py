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

Clone safety
------------
A process copied with its memory (``os.fork``; a VM snapshot restored twice) holds two copies of
every clock with the same origin and the same ``last``: both would issue the same timestamps.
So the origin of a clock belongs to one process, and a copy draws a new one:

* :func:`random_origin` returns a :class:`RandomOrigin` (an ``int`` drawn from ``os.urandom``,
  marked as such). A clock built with one, as every production clock is (the storage node's, the
  coordinator library's, hence the coordinator service's and the SDK's direct mode), joins a
  module-level ``weakref.WeakSet``. One ``os.register_at_fork(after_in_child=...)`` hook calls
  :func:`redraw_origins` on every clock of that set in the child: each gets a fresh origin from
  ``os.urandom`` (never its old one) and a fresh lock (a parent thread may have held the old one
  at the fork), and keeps ``last``, so parent and child go on issuing distinct, non-decreasing
  timestamps. Nothing to do at the call site: a clock cannot be built on a random origin and
  miss the hook.
* A clock built with a plain ``int`` origin (the simulator's and tests' deterministic origins)
  is never touched by the hook. The simulator models a clone by calling :func:`redraw_origins`
  itself on the copies (its "clone" fault), so both paths run the same code, and the
  ``NO_FORK_REDRAW`` mutant (a clock that keeps its origin across a clone) breaks both.
* :func:`new_txn_id` reads 128 bits straight from ``os.urandom`` for every id, as the SDK's
  idempotency tokens do (``secrets``), and keeps no per-process state, so a clone can never
  repeat one.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

from kvstore.errors import ValidationError
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants
from kvstore.types import (
    ORIGIN_MAX,
    TIMESTAMP_ZERO,
    Timestamp,
    TxnId,
    timestamp_from_text,
    timestamp_from_wire,
)

__all__ = [
    "PhysicalClock",
    "system_clock_us",
    "HybridClock",
    "RandomOrigin",
    "new_txn_id",
    "random_origin",
    "redraw_origins",
    "check_skew",
    "parse_timestamp",
]

PhysicalClock: TypeAlias = Callable[[], int]
"""A source of wall-clock time in microseconds."""

_TXN_ID_BYTES: Final = 16


def system_clock_us() -> int:
    """The system wall clock in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


class RandomOrigin(int):
    """An origin drawn at random: a clock built with one draws a new one in a forked child."""

    __slots__ = ()


def random_origin() -> RandomOrigin:
    """A random clock origin in ``1..ORIGIN_MAX`` drawn from ``os.urandom`` (never 0).

    The result is a :class:`RandomOrigin`: a :class:`HybridClock` built with it re-draws its
    origin in a forked child (see the module)."""
    while True:
        origin = int.from_bytes(os.urandom(8), "big")
        if origin != 0:
            return RandomOrigin(origin)


def check_skew(ts: Timestamp, now_us: int, max_skew_ms: int) -> bool:
    """True when ``ts`` is at most ``max_skew_ms`` ahead of the local clock ``now_us``."""
    return ts.physical_us <= now_us + max_skew_ms * 1000


def parse_timestamp(raw: object, field: str = "ts") -> Timestamp:
    """A :class:`~kvstore.types.Timestamp` given as one, or as its text form
    ``"<physical_us>.<logical>.<origin as 16 hex digits>"`` (exactly ``str(ts)``, as the store
    returns timestamps: :func:`~kvstore.types.timestamp_from_text`); ``ValidationError`` naming
    ``field`` for anything else."""
    if isinstance(raw, Timestamp):
        checked = timestamp_from_wire(list(raw))
        if checked is None:
            raise ValidationError(field, "a timestamp's parts must be integers in 0..2**64-1")
        return checked
    parsed = timestamp_from_text(raw)
    if parsed is None:
        shown = repr(raw[:64]) if isinstance(raw, str) else type(raw).__name__
        raise ValidationError(
            field,
            "must be a timestamp as the store returns them, "
            f'"<physical_us>.<logical>.<origin as 16 lowercase hex digits>"; got {shown}',
        )
    return parsed


def _check_origin(origin: int) -> int:
    if isinstance(origin, bool) or not isinstance(origin, int) or not 1 <= origin <= ORIGIN_MAX:
        raise ValidationError("origin", f"must be an integer in 1..{ORIGIN_MAX}, got {origin!r}")
    return int(origin)  # a plain int in timestamps, whatever the caller passed


class HybridClock:
    """A hybrid logical clock over an injected physical clock. Safe to share between threads.

    Built with a :class:`RandomOrigin` (:func:`random_origin`), the clock re-draws its origin in
    a forked child; built with a plain ``int`` it keeps it (deterministic runs)."""

    __slots__ = ("__weakref__", "_clock", "_last", "_lock", "_mutants", "_origin", "_stamp")

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
        self._mutants = mutants
        self._stamp = 1 if Mutant.NO_TS_TIE_BREAK in mutants else None  # the mutant's origin
        self._last = last
        self._lock = threading.Lock()
        if isinstance(origin, RandomOrigin):
            _redrawn_at_fork(self)

    @property
    def origin(self) -> int:
        """The tie-break id stamped on every timestamp this clock issues."""
        return self._origin

    @property
    def last(self) -> Timestamp:
        """The greatest timestamp issued or observed so far."""
        return self._last

    @property
    def redrawn_at_fork(self) -> bool:
        """Whether a forked child's copy of this clock draws a new origin."""
        with _registry_lock:
            return self in _at_fork

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
        """Switch to a new origin, keeping ``last`` (a :class:`RandomOrigin` also makes the
        clock re-draw it in a forked child)."""
        checked = _check_origin(origin)
        with self._lock:
            self._origin = checked
        if isinstance(origin, RandomOrigin):
            _redrawn_at_fork(self)

    def after_clone(self, origin: int) -> None:
        """This clock is now a copy running in a clone of its process (a forked child, a
        restored snapshot): take a fresh lock and ``origin``, keep ``last``.

        Called only where no other thread of the clone can hold the clock (the at-fork hook,
        the simulator): the old lock may be held by a thread that does not exist here."""
        self._lock = threading.Lock()
        if Mutant.NO_FORK_REDRAW in self._mutants:
            return  # the mutant: the copy keeps issuing its original's timestamps
        self.reset_origin(origin)

    def __repr__(self) -> str:
        return f"HybridClock(origin={self._origin:016x}, last={self._last})"


def redraw_origins(clocks: Iterable[HybridClock], draw: Callable[[], int]) -> None:
    """Give each of ``clocks`` (copies in a clone of their process) a new origin from ``draw``,
    never the one it had: the fork hook's work, and the simulator's clone fault's."""
    for clock in clocks:
        origin = draw()
        while origin == clock.origin:
            origin = draw()
        clock.after_clone(origin)


# Clocks on a random origin, re-drawn in a forked child. Weak: a clock dropped is forgotten.
_at_fork: weakref.WeakSet[HybridClock] = weakref.WeakSet()
_registry_lock = threading.Lock()


def _redrawn_at_fork(clock: HybridClock) -> None:
    with _registry_lock:
        _at_fork.add(clock)


def _after_fork_in_child() -> None:
    global _registry_lock  # noqa: PLW0603 - a parent thread may hold it.
    _registry_lock = threading.Lock()
    redraw_origins(list(_at_fork), random_origin)


def new_txn_id() -> TxnId:
    """A fresh transaction id: 32 lowercase hex digits, 128 bits read from ``os.urandom``."""
    return TxnId(os.urandom(_TXN_ID_BYTES).hex())


os.register_at_fork(after_in_child=_after_fork_in_child)
