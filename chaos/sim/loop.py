"""Virtual time for the simulator: one event heap, one clock, one trace.

Theory of operation
-------------------
Everything that happens in a simulated run is a callback scheduled at a virtual time in
microseconds. :class:`EventLoop` pops them in ``(time_us, seq)`` order, where ``seq`` is the order
of scheduling, so two runs that schedule the same callbacks in the same order execute identically:
determinism needs only that every random draw comes from the run's one ``random.Random`` and that
nothing iterates over hash-ordered collections of strings. Virtual time jumps from event to event,
so a run covering a minute of cluster time takes as long as its events take to compute.

:class:`Trace` is the run's flight recorder: every notable event is one line, folded into a
BLAKE2b digest (the same seed must give the same digest) and, in verbose mode, kept for printing.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable

__all__ = ["EventLoop", "Trace", "EVENTS_MAX"]

EVENTS_MAX = 2_000_000  # a run that needs more events than this is reported as stuck


class Trace:
    """Digest of every traced line, and the lines themselves when ``keep`` is set."""

    def __init__(self, keep: bool = False, lines_max: int = 200_000) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.keep = keep
        self.lines: list[str] = []
        self._lines_max = lines_max
        self.count = 0

    def add(self, now_us: int, line: str) -> None:
        self._hash.update(f"{now_us} {line}\n".encode())
        self.count += 1
        if self.keep and len(self.lines) < self._lines_max:
            self.lines.append(f"{now_us / 1e6:10.6f} {line}")

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


class EventLoop:
    """A heap of ``(time_us, seq, callback)``; :meth:`run_until` advances virtual time."""

    def __init__(self) -> None:
        self.now_us = 0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.events = 0

    def at(self, time_us: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` at ``time_us`` (never earlier than now)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(time_us, self.now_us), self._seq, callback))

    def after(self, delay_us: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` ``delay_us`` from now (``at``, inlined: the hottest call)."""
        self._seq += 1
        heapq.heappush(self._heap, (self.now_us + max(0, delay_us), self._seq, callback))

    def run_until(self, end_us: int, stop: Callable[[], bool] | None = None) -> bool:
        """Run events up to ``end_us``; return True if ``stop()`` became true first."""
        while self._heap and self._heap[0][0] <= end_us:
            if stop is not None and stop():
                return True
            time_us, _, callback = heapq.heappop(self._heap)
            self.now_us = time_us
            self.events += 1
            if self.events > EVENTS_MAX:
                raise RuntimeError(f"simulation exceeded {EVENTS_MAX} events")
            callback()
        self.now_us = max(self.now_us, end_us)
        return stop is not None and stop()

    @property
    def idle(self) -> bool:
        return not self._heap
