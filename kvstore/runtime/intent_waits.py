"""The node runtime's parked requests: those waiting for other transactions' intents to clear.

Theory of operation
-------------------
The rule of who may wait is :mod:`kvstore.storage_node.intent_wait`'s; this is the table that
holds the waiters (DESIGN section 8: every queue bounded). :class:`IntentWaits` keeps at most
``INTENT_WAITERS_MAX`` parked requests per node, each with the transactions blocking it on its
partition and a deadline ``INTENT_WAIT_MS`` after it was first parked. A parked request leaves
the table exactly once, through ``wake``, called by the scheduler (``call_soon``, never inside
the step that cleared its blocker):

* ``cleared(partition, txn_id)``, after a step that removed ``txn_id``'s intents there (commit,
  cancel, decide), wakes every request that waited for it (``timed_out=False``) in ``rank``
  order: the runtime ranks reads first (they change nothing), then transactions by timestamp
  (the lowest takes the key and the others, above it, may wait for it in turn, where the
  highest first would leave every lower one too old), then singleton writes (their timestamp,
  drawn when they are stepped, is above every waiting transaction's);
* its deadline wakes it with ``timed_out=True``.

A parked request of a transaction that has since *ended* on its partition (a commit, cancel or
decide of that same transaction stepped there) is never stepped: ``withdraw`` takes it out and
the runtime refuses it (its ``refuse``). A prepare woken after its own transaction's cancel would
otherwise leave intents that nobody clears but stale-intent resolution (the coordinator has moved
on): seconds of conflicts for every reader of those keys. (Concurrent submissions of one token
did exactly that: the repeats, parked behind the first, were cancelled while parked.)

What a woken request does is the runtime's (:meth:`~kvstore.runtime.node.NodeRuntime.submit`):
it is stepped afresh, or parked again with its first deadline when other intents it may wait for
still stop it. Timers are the runtime's :class:`~kvstore.runtime.scheduler.Scheduler`'s, so the
simulator replays every wait exactly. ``stop`` forgets every waiter (the process is going away,
or crashing in the simulator; their callers' deadlines answer them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore import limits
from kvstore.messages import Request
from kvstore.runtime.scheduler import Scheduler, Timer
from kvstore.types import PartitionId, Timestamp, TxnId

__all__ = ["Parked", "IntentWaits"]

_US_PER_MS = 1000


@dataclass(eq=False, slots=True, kw_only=True)
class Parked:
    """One parked request; ``resume`` is the runtime's, called once when it is woken."""

    partition: PartitionId
    request: Request
    resume: Callable[[Parked, bool], None]  # (itself, timed_out)
    deadline_us: int
    rank: tuple[int, Timestamp]  # the order in which the waiters of one blocker are woken
    refuse: Callable[[], None]  # the runtime's answer to a request withdrawn (see the module)
    txn_id: TxnId | None = None  # the waiting request's own transaction, if it has one
    withdrawn: bool = False  # refused by ``withdraw``: never resumed
    blockers: tuple[TxnId, ...] = ()
    timer: Timer | None = field(default=None)


class IntentWaits:
    """At most ``waiters_max`` parked requests, each woken once (see the module)."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        waiters_max: int = limits.INTENT_WAITERS_MAX,
        wait_ms: int = limits.INTENT_WAIT_MS,
    ) -> None:
        self._scheduler = scheduler
        self._waiters_max = waiters_max
        self.wait_us = wait_ms * _US_PER_MS
        self._by_blocker: dict[tuple[PartitionId, TxnId], list[Parked]] = {}
        self._by_waiter: dict[tuple[PartitionId, TxnId], list[Parked]] = {}
        self.count = 0

    @property
    def has_room(self) -> bool:
        return self.count < self._waiters_max

    def park(self, parked: Parked, blockers: tuple[TxnId, ...]) -> None:
        """Hold ``parked`` until one of ``blockers`` clears on its partition or its deadline."""
        assert blockers and self.has_room
        parked.blockers = blockers
        for txn_id in blockers:
            self._by_blocker.setdefault((parked.partition, txn_id), []).append(parked)
        if parked.txn_id is not None:
            self._by_waiter.setdefault((parked.partition, parked.txn_id), []).append(parked)
        self.count += 1
        delay_us = max(0, parked.deadline_us - self._scheduler.now_us())
        parked.timer = self._scheduler.call_later(delay_us, lambda: self._wake(parked, True))

    def cleared(self, partition: PartitionId, txn_id: TxnId) -> None:
        """``txn_id``'s intents on ``partition`` are gone: wake whoever waited for them."""
        waiting = self._by_blocker.pop((partition, txn_id), None)
        for parked in sorted(waiting or (), key=_rank):
            self._unlink(parked)
            self._scheduler.call_soon(self._resumer(parked))

    def withdraw(self, partition: PartitionId, txn_id: TxnId) -> None:
        """``txn_id`` ended on ``partition``: refuse its own parked requests there (see the
        module), at once (they hold nothing and will never be stepped)."""
        for parked in self._by_waiter.pop((partition, txn_id), ()):
            # Parked, or woken and not resumed yet (one frame may carry the blocker's commit
            # and this transaction's cancel): either way it is never stepped.
            self._unlink(parked)
            parked.withdrawn = True
            parked.refuse()

    def stop(self) -> None:
        """Forget every waiter, unanswered."""
        for waiting in self._by_blocker.values():
            for parked in waiting:
                if parked.timer is not None:
                    parked.timer.cancel()
                    parked.timer = None
        self._by_blocker.clear()
        self._by_waiter.clear()
        self.count = 0

    def _wake(self, parked: Parked, timed_out: bool) -> None:
        if parked.timer is None:  # already woken (or forgotten by stop)
            return
        self._unlink(parked)
        self._forget_waiter(parked)
        parked.resume(parked, timed_out)

    def _resumer(self, parked: Parked) -> Callable[[], None]:
        def resume() -> None:
            self._forget_waiter(parked)
            if not parked.withdrawn:
                parked.resume(parked, False)

        return resume

    def _forget_waiter(self, parked: Parked) -> None:
        if parked.txn_id is None:
            return
        key = (parked.partition, parked.txn_id)
        mine = self._by_waiter.get(key)
        if mine is not None and parked in mine:
            mine.remove(parked)
            if not mine:
                del self._by_waiter[key]

    def _unlink(self, parked: Parked) -> None:
        """Take ``parked`` out of the table (once) and cancel its timer."""
        if parked.timer is None:
            return
        parked.timer.cancel()
        parked.timer = None
        self.count -= 1
        for txn_id in parked.blockers:
            key = (parked.partition, txn_id)
            waiting = self._by_blocker.get(key)
            if waiting is None:
                continue
            if parked in waiting:
                waiting.remove(parked)
            if not waiting:
                del self._by_blocker[key]


def _rank(parked: Parked) -> tuple[int, Timestamp]:
    return parked.rank
