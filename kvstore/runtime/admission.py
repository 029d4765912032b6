"""Admission: bounded work at once, no new work while behind, beyond that a refusal.

Theory of operation
-------------------
Overload is an answer (DESIGN section 8). Two rules decide whether a process starts new work,
both checked before any work is done for it, so a refusal costs a fraction of a served request;
a third sets how long the refused should wait:

1. :func:`admit`: at most ``limit`` things at once. A coordinator counts its running cores
   (``COORDINATOR_TXNS_IN_FLIGHT_MAX``), including cores that still run after their caller was
   answered (cancels retried, the final completion); the coordinator library and the
   simulator's coordinators (with a small limit of their own) both check it. A storage node's
   :class:`~kvstore.runtime.node.NodeRuntime` counts requests in progress per partition
   (``PARTITION_QUEUE_MAX``) and per node (``NODE_REQUESTS_IN_PROGRESS_MAX``).
2. :class:`LagGate`: CoDel's rule (Nichols and Jacobson, "Controlling Queue Delay") applied to the
   process's event loop. The runtime samples how late a periodic timer fires: the time any ready
   event (a reply from a node, a new request) waits before it is handled. While that lateness
   stays above ``target_ms`` for a whole ``interval_ms`` the loop has a standing queue, and
   starting more work would only make every core in flight later, until the internal calls'
   own deadlines expire and work already done is lost as ``OutcomeUnknown``. So the gate refuses
   new work until one sample is back under the target. A short burst (under one interval) is
   absorbed, as in CoDel. The coordinator process and every storage node run one (an embedded
   coordinator does not: its loop is the application's).

Both raise ``Overloaded``, which the API answers as 503 with ``Retry-After`` and clients retry
after it (plus a jittered backoff) within their retry budget, rather than queue without bound. A
node's refusal reaches the client as it is when nothing else ran (a singleton, a one-partition
execute); a refused prepare cancels its transaction. The gate is a pure state machine over
(time, lateness) samples; :class:`~kvstore.runtime.aio.LoopLagProbe` feeds it in production,
and it is never fed in the simulator, whose loop does not lag.

3. :class:`RetryAfter` sets the ``Retry-After`` of the API's refusals. A refusal is cheap, not
   free (HTTP parsing and an answer, on a coordinator whose CPU is the bottleneck): with
   thousands of clients coming back every second, refusing them costs the work that served
   requests need. So each second it compares the refusals with the requests admitted: more
   refusals than admissions doubles the delay (up to ``RETRY_AFTER_MAX_S``), fewer than half
   halves it (down to ``RETRY_AFTER_S``). Waiting clients then come back about as fast as the
   coordinator can take them, whatever their number.
"""

from __future__ import annotations

from kvstore.errors import Overloaded
from kvstore.limits import (
    LOOP_LAG_INTERVAL_MS,
    LOOP_LAG_TARGET_MS,
    RETRY_AFTER_MAX_S,
    RETRY_AFTER_S,
    RETRY_AFTER_WINDOW_MS,
)

__all__ = ["admit", "LagGate", "RetryAfter"]


def admit(running: int, limit: int, *, what: str = "this coordinator") -> None:
    """Raise ``Overloaded`` when ``running`` things in progress already fill ``limit``."""
    if running >= limit:
        raise Overloaded(
            f"{what} has {running} requests in progress; back off and retry",
            details={"limit": limit},
        )


class LagGate:
    """Refuses new work while the loop's lateness stayed above target for an interval."""

    __slots__ = ("_above_since_ms", "_interval_ms", "_target_ms", "lag_ms", "refusing")

    def __init__(
        self, *, target_ms: float = LOOP_LAG_TARGET_MS, interval_ms: float = LOOP_LAG_INTERVAL_MS
    ) -> None:
        self._target_ms = target_ms
        self._interval_ms = interval_ms
        self._above_since_ms: float | None = None  # first sample of the current run above target
        self.lag_ms = 0.0  # the last sample
        self.refusing = False

    def observe(self, now_ms: float, lag_ms: float) -> None:
        """One sample: at ``now_ms`` a timer fired ``lag_ms`` late."""
        self.lag_ms = lag_ms
        if lag_ms <= self._target_ms:
            self._above_since_ms = None
            self.refusing = False
        elif self._above_since_ms is None:
            self._above_since_ms = now_ms
        elif now_ms - self._above_since_ms >= self._interval_ms:
            self.refusing = True

    def admit(self) -> None:
        """Raise ``Overloaded`` while refusing."""
        if self.refusing:
            raise Overloaded(
                f"the process is {round(self.lag_ms)} ms behind on its work; back off and retry",
                details={"lag_ms": round(self.lag_ms)},
            )


class RetryAfter:
    """The delay refusals ask for, adapted once a window to refusals against admissions."""

    __slots__ = ("_admitted", "_refused", "_window_ms", "_window_start_ms", "seconds")

    def __init__(self, *, window_ms: float = RETRY_AFTER_WINDOW_MS) -> None:
        self._window_ms = window_ms
        self._window_start_ms: float | None = None
        self._admitted = 0
        self._refused = 0
        self.seconds = RETRY_AFTER_S

    def admitted(self, now_ms: float) -> None:
        self._roll(now_ms)
        self._admitted += 1

    def refused(self, now_ms: float) -> int:
        """Count one refusal; the ``Retry-After`` (seconds) it carries."""
        self._roll(now_ms)
        self._refused += 1
        return self.seconds

    def _roll(self, now_ms: float) -> None:
        start = self._window_start_ms
        if start is None:
            self._window_start_ms = now_ms
            return
        if now_ms - start < self._window_ms:
            return
        if now_ms - start >= 2 * self._window_ms:  # a quiet window in between: start over
            self.seconds = RETRY_AFTER_S
        elif self._refused > self._admitted:
            self.seconds = min(RETRY_AFTER_MAX_S, self.seconds * 2)
        elif 2 * self._refused < self._admitted:
            self.seconds = max(RETRY_AFTER_S, self.seconds // 2)
        self._window_start_ms = now_ms
        self._admitted = self._refused = 0
