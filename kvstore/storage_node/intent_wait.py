"""When a request stopped by other transactions' pending intents may wait for them to clear.

Theory of operation
-------------------
Under timestamp ordering a request that meets another transaction's pending intent cannot be
accepted now (DESIGN section 5), but it often could be a moment later: the intent lives one
commit round trip. Refusing at once costs the client a whole new transaction (new timestamp,
new prepares) and, under contention, most of them fail the same way. So the node runtime
(:mod:`kvstore.runtime.intent_waits`) may *park* such a request and step it again, afresh, when
the blocking transactions' intents on that partition are cleared (their commit, cancel or
resolution), or when ``INTENT_WAIT_MS`` has passed, whichever comes first. The re-step runs
every check again at the new time (timestamps, conditions, limits, durability before the
reply): waiting changes *when* a request is decided, never *how*.

The rule (:func:`may_wait`), for a request that would be refused **only** because of other
transactions' intents (every other check passes on the committed state):

* A request that holds nothing while it waits (a read round, a singleton write, which gets its
  timestamp when it is finally stepped) may wait for any intent: nobody ever waits for it.
* A transaction's prepare or one-round execute, which may hold intents on other partitions while
  it waits here, waits only when **every** blocking intent's timestamp is lower than its own.
  Once such a blocker commits, the key's ``write_ts`` (or ``read_ts``) is the blocker's, still
  below ours, so the wait can end in an acceptance; a blocker above us would leave the key above
  our timestamp, and we would be refused with ``TimestampTooOld`` anyway, so we refuse at once.
  Every waits-for edge then goes from a higher timestamp to a lower one: there is no cycle, so
  no deadlock, and the bound is only a backstop (a blocker whose coordinator died stays until
  stale-intent resolution, ``INTENT_STALE_MS``).

Nobody waits for an intent already older than the wait bound: a healthy transaction's intent
lives one commit round trip, so an old one belongs to a slow or orphaned transaction (its
coordinator gone, left to stale-intent resolution), and waiting for it only held requests (and
their own intents) longer; in the simulator's fault runs it doubled the operations whose outcome
the client never learned, as their coordinators crashed meanwhile.

Which transactions block a request is decided by the pure partition core
(:meth:`~kvstore.storage_node.core.PartitionCore.blockers`, a read-only question asked before
the step, so nothing is written for a request that then waits); this module holds the rule alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvstore.types import Timestamp

__all__ = ["may_wait"]


def may_wait(waiter_ts: Timestamp | None, blocker_ts: Iterable[Timestamp]) -> bool:
    """True when a request at ``waiter_ts`` may wait for intents at ``blocker_ts``.

    ``waiter_ts`` is None for a request that holds nothing while it waits (a read round, a
    singleton write). There must be at least one blocker.
    """
    stamps = tuple(blocker_ts)
    if not stamps:
        return False
    return waiter_ts is None or all(ts < waiter_ts for ts in stamps)
