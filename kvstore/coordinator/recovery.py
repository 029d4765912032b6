"""Recovery: finish a decided transaction whose coordinator went away; resolve stale intents.

Theory of operation
-------------------
DESIGN section 6 rule 8: no transaction may depend on its coordinator surviving. The ledger record
on the anchor partition is the single source of truth, so anyone holding it can finish the job.

:class:`Recovery` takes a record and drives it, with the same event interface as the other cores:

* COMMITTED -> ``CommitRequest`` to every participant, CANCELLED -> ``CancelRequest``, re-sent
  every ``RESEND_INTERVAL_MS`` after a failure until each acknowledges; then one
  ``CompleteRequest`` to the anchor and ``Finish(completed=True)``. Duplicates are harmless:
  partitions apply or clear only this transaction's intents.
* PREPARING -> nothing to send: only the coordinator, or the anchor's own deadline rule (a
  PREPARING record past its deadline is CANCELLED by compare-and-set), may decide it. It finishes
  at once with ``completed=False``; the caller asks again later.
* A record already completed finishes at once with ``completed=True``.
* Bounded: past ``FINISH_DEADLINE_MS`` it gives up with ``OutcomeUnknown`` (a later scan retries).

:func:`resolve_intent_action` is what a storage node does with a stale intent once it has the
anchor's answer to a *resolving* ``LedgerLookupRequest``.
"""

from __future__ import annotations

from typing import Literal

from kvstore.coordinator.calls import Calls, Purpose
from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.fanout import Fanout
from kvstore.coordinator.results import RecoveryResult
from kvstore.coordinator.state import RECOVERY_TRANSITIONS, RecoveryState, StateMachine
from kvstore.errors import ErrorCode
from kvstore.limits import FINISH_DEADLINE_MS, RPC_TIMEOUT_MS
from kvstore.messages import CompleteRequest, LedgerRecord, Reply, TxnState
from kvstore.types import PartitionId

__all__ = ["Recovery", "RecoveryEffect", "IntentAction", "resolve_intent_action"]

RecoveryEffect = Send | Finish[RecoveryResult]
IntentAction = Literal["commit", "cancel", "wait"]

_US_PER_MS = 1000


def resolve_intent_action(record: LedgerRecord | None) -> IntentAction:
    """What to do with a stale intent given its anchor's ledger record.

    COMMITTED -> "commit", CANCELLED -> "cancel", PREPARING -> "wait" (still undecided; ask again
    later, the anchor cancels it once past its deadline).

    ``None`` -> "cancel". Absence is NOT proof of cancellation in general: a record may simply not
    have been created yet (prepares are sent in parallel with the anchor's), or already have
    expired after completion. It is safe here only because ``record`` must be the answer to a
    lookup with ``resolve=True``, which *inserts* a CANCELLED record when none exists; after that
    the transaction can never commit (a COMMITTED decision needs a PREPARING record). So ``None``
    from a resolving lookup cannot happen in a correct anchor; treating it as "cancel" is the
    answer consistent with what the anchor would have written. Never call this with the answer
    of a plain (non-resolving) lookup.
    """
    if record is None:
        return "cancel"
    if record.state is TxnState.COMMITTED:
        return "commit"
    if record.state is TxnState.CANCELLED:
        return "cancel"
    return "wait"


class Recovery:
    """Drive one decided ledger record to completion: feed it events, carry out its effects."""

    def __init__(self, record: LedgerRecord, anchor: PartitionId, now_us: int) -> None:
        self.record = record
        self.anchor = anchor
        self._deadline_us = now_us + FINISH_DEADLINE_MS * _US_PER_MS
        self._machine = StateMachine(
            RecoveryState.INIT, RECOVERY_TRANSITIONS, f"recovery of {record.txn_id}"
        )
        self._calls = Calls()
        self._fanout: Fanout | None = None
        self.result: RecoveryResult | None = None

    @property
    def state(self) -> RecoveryState:
        return self._machine.state

    @property
    def done(self) -> bool:
        return self._machine.state is RecoveryState.DONE

    @property
    def next_deadline_us(self) -> int | None:
        if self._machine.state is not RecoveryState.DRIVING or self._fanout is None:
            return None
        times = [self._deadline_us, self._calls.next_deadline_us, self._fanout.next_deadline_us]
        return min(t for t in times if t is not None)

    def step_start(self, now_us: int) -> list[RecoveryEffect]:
        with self._machine.guard():
            record = self.record
            if record.state is TxnState.PREPARING:
                return self._end(completed=False)
            if record.completed_us is not None:
                return self._end(completed=True)
            self._machine.move(RecoveryState.DRIVING)
            self._fanout = Fanout(self._calls, record.txn_id, record.state, record.participants)
            return [*self._fanout.start(now_us), *self._after_ack(now_us)]

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[RecoveryEffect]:
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is None or self._fanout is None:
                return []
            self._fanout.on_reply(call, reply, now_us)
            return self._after_ack(now_us)

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[RecoveryEffect]:
        del error
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is not None and self._fanout is not None:
                self._fanout.on_failed(call, now_us)
            return []

    def step_tick(self, now_us: int) -> list[RecoveryEffect]:
        with self._machine.guard():
            fanout = self._fanout
            if self._machine.state is not RecoveryState.DRIVING or fanout is None:
                return []
            if now_us >= self._deadline_us:
                return self._end(completed=False, error=ErrorCode.OutcomeUnknown)
            while (call := self._calls.take_expired(now_us)) is not None:
                fanout.on_failed(call, now_us)
            return [*fanout.tick(now_us)]

    def _after_ack(self, now_us: int) -> list[RecoveryEffect]:
        """Once every participant acknowledged: mark the record complete, and finish."""
        if self._fanout is None or not self._fanout.done:
            return []
        complete = CompleteRequest(partition=self.anchor, txn_id=self.record.txn_id)
        send = self._calls.send_untracked(complete, now_us + RPC_TIMEOUT_MS * _US_PER_MS)
        return [send, *self._end(completed=True)]

    def _end(self, *, completed: bool, error: ErrorCode | None = None) -> list[RecoveryEffect]:
        self._calls.forget(Purpose.COMMIT, Purpose.CANCEL)
        self._machine.move(RecoveryState.DONE)
        self.result = RecoveryResult(
            txn_id=self.record.txn_id, state=self.record.state, completed=completed, error=error
        )
        return [Finish(self.result)]
