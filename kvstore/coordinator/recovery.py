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
* STAGING (past its deadline: the anchor's ``maintain`` hands it over) -> decide it by rule 5a
  of DESIGN section 6 first. A ``PreventRequest`` goes to every participant other than the anchor
  (whose own slice is held: the record is STAGING only if its prepare was accepted), re-sent
  every ``RESEND_INTERVAL_MS`` after a failure. Each answer is final: STAGING (holds its intents)
  or COMMITTED (applied them) is a standing yes; CANCELLED is a durable refusal. The first
  refusal -> ``DecideRequest`` CANCELLED; every participant a yes -> ``DecideRequest`` COMMITTED.
  The record the anchor returns (a compare-and-set: the coordinator may have won) is then driven
  as below.
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

from kvstore.coordinator.calls import Call, Calls, Purpose
from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.fanout import Fanout
from kvstore.coordinator.results import RecoveryResult
from kvstore.coordinator.state import RECOVERY_TRANSITIONS, RecoveryState, StateMachine
from kvstore.errors import ErrorCode
from kvstore.limits import FINISH_DEADLINE_MS, RESEND_INTERVAL_MS, RPC_TIMEOUT_MS
from kvstore.messages import (
    CompleteRequest,
    DecideRequest,
    LedgerRecord,
    LedgerReply,
    PreventRequest,
    Reply,
    TxnState,
)
from kvstore.types import PartitionId

__all__ = ["Recovery", "RecoveryEffect", "IntentAction", "resolve_intent_action"]

RecoveryEffect = Send | Finish[RecoveryResult]
IntentAction = Literal["commit", "cancel", "wait"]

_US_PER_MS = 1000


def resolve_intent_action(record: LedgerRecord | None) -> IntentAction:
    """What to do with a stale intent given its anchor's ledger record.

    COMMITTED -> "commit", CANCELLED -> "cancel", PREPARING or STAGING -> "wait" (still
    undecided; ask again later: past its deadline the anchor cancels a PREPARING record and
    recovers a STAGING one by rule 5a).

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


def _standing_yes(record: LedgerRecord | None) -> bool | None:
    """A ``PreventRequest``'s answer: True (holds or applied), False (refused), None (no use)."""
    if record is None:
        return None
    if record.state is TxnState.STAGING or record.state is TxnState.COMMITTED:
        return True
    if record.state is TxnState.CANCELLED:
        return False
    return None


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
        self._pending: set[PartitionId] = set()  # STAGING: participants yet to answer
        self._due_us: dict[PartitionId, int] = {}  # STAGING: when to ask again
        self._decision: TxnState | None = None  # STAGING: what we asked the anchor to write
        self._decide_due_us: int | None = None
        self.result: RecoveryResult | None = None

    @property
    def state(self) -> RecoveryState:
        return self._machine.state

    @property
    def done(self) -> bool:
        return self._machine.state is RecoveryState.DONE

    @property
    def next_deadline_us(self) -> int | None:
        state = self._machine.state
        if state is RecoveryState.PROBING:
            times = [self._deadline_us, self._calls.next_deadline_us, self._decide_due_us]
            times += self._due_us.values()
            return min(t for t in times if t is not None)
        if state is not RecoveryState.DRIVING or self._fanout is None:
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
            if record.state is TxnState.STAGING:
                self._machine.move(RecoveryState.PROBING)
                self._pending = {p for p in record.participants if p != self.anchor}
                effects = [self._prevent(p, now_us) for p in sorted(self._pending)]
                return effects + self._after_probe(now_us)
            return self._drive(now_us)

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[RecoveryEffect]:
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is None:
                return []
            if call.purpose is Purpose.LOOKUP:  # a participant's answer to PreventRequest
                if not isinstance(reply, LedgerReply) or reply.txn_id != self.record.txn_id:
                    return self._probe_failed(call.partition, now_us)
                yes = _standing_yes(reply.record)
                if yes is None:
                    return self._probe_failed(call.partition, now_us)
                self._pending.discard(call.partition)
                if not yes and self._decision is None:
                    return self._decide(TxnState.CANCELLED, now_us)
                return self._after_probe(now_us)
            if call.purpose is Purpose.DECIDE:
                return self._on_decided(reply, now_us)
            if self._fanout is None:
                return []
            self._fanout.on_reply(call, reply, now_us)
            return self._after_ack(now_us)

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[RecoveryEffect]:
        del error
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is None:
                return []
            return self._on_call_failed(call, now_us)

    def step_tick(self, now_us: int) -> list[RecoveryEffect]:
        with self._machine.guard():
            state = self._machine.state
            if state not in (RecoveryState.DRIVING, RecoveryState.PROBING):
                return []
            if now_us >= self._deadline_us:
                return self._end(completed=False, error=ErrorCode.OutcomeUnknown)
            effects: list[RecoveryEffect] = []
            while (call := self._calls.take_expired(now_us)) is not None:
                effects += self._on_call_failed(call, now_us)
            if self._machine.state is RecoveryState.PROBING:
                for partition, due_us in sorted(self._due_us.items()):
                    if now_us >= due_us:
                        effects.append(self._prevent(partition, now_us))
                if self._decide_due_us is not None and now_us >= self._decide_due_us:
                    effects.append(self._send_decide(now_us))
                return effects
            if self._fanout is not None:
                effects += self._fanout.tick(now_us)
            return effects

    # --- STAGING: ask every participant, then decide (rule 5a) -----------------------------

    def _prevent(self, partition: PartitionId, now_us: int) -> Send:
        self._due_us.pop(partition, None)
        request = PreventRequest(partition=partition, txn_id=self.record.txn_id, anchor=self.anchor)
        deadline_us = now_us + RPC_TIMEOUT_MS * _US_PER_MS
        return self._calls.send(Purpose.LOOKUP, partition, request, deadline_us)

    def _on_call_failed(self, call: Call, now_us: int) -> list[RecoveryEffect]:
        if call.purpose is Purpose.LOOKUP:
            return self._probe_failed(call.partition, now_us)
        if call.purpose is Purpose.DECIDE:
            self._decide_due_us = now_us + RESEND_INTERVAL_MS * _US_PER_MS
            return []
        if self._fanout is not None:
            self._fanout.on_failed(call, now_us)
        return []

    def _probe_failed(self, partition: PartitionId, now_us: int) -> list[RecoveryEffect]:
        if self._decision is None and partition in self._pending:
            self._due_us[partition] = now_us + RESEND_INTERVAL_MS * _US_PER_MS
        return []

    def _after_probe(self, now_us: int) -> list[RecoveryEffect]:
        if self._pending or self._decision is not None:
            return []
        return self._decide(TxnState.COMMITTED, now_us)

    def _decide(self, decision: TxnState, now_us: int) -> list[RecoveryEffect]:
        self._decision = decision
        self._due_us.clear()
        self._calls.forget(Purpose.LOOKUP)
        return [self._send_decide(now_us)]

    def _send_decide(self, now_us: int) -> Send:
        assert self._decision is not None
        self._decide_due_us = None
        request = DecideRequest(
            partition=self.anchor, txn_id=self.record.txn_id, decision=self._decision
        )
        deadline_us = now_us + RPC_TIMEOUT_MS * _US_PER_MS
        return self._calls.send(Purpose.DECIDE, self.anchor, request, deadline_us)

    def _on_decided(self, reply: Reply, now_us: int) -> list[RecoveryEffect]:
        record = reply.record if isinstance(reply, LedgerReply) else None
        if record is None or record.txn_id != self.record.txn_id or not record.state.decided:
            self._decide_due_us = now_us + RESEND_INTERVAL_MS * _US_PER_MS
            return []
        self.record = record
        return self._drive(now_us)

    # --- decided: deliver it -----------------------------------------------------------------

    def _drive(self, now_us: int) -> list[RecoveryEffect]:
        record = self.record
        self._machine.move(RecoveryState.DRIVING)
        self._fanout = Fanout(self._calls, record.txn_id, record.state, record.participants)
        return [*self._fanout.start(now_us), *self._after_ack(now_us)]

    def _after_ack(self, now_us: int) -> list[RecoveryEffect]:
        """Once every participant acknowledged: mark the record complete, and finish."""
        if self._fanout is None or not self._fanout.done:
            return []
        complete = CompleteRequest(partition=self.anchor, txn_id=self.record.txn_id)
        send = self._calls.send_untracked(complete, now_us + RPC_TIMEOUT_MS * _US_PER_MS)
        return [send, *self._end(completed=True)]

    def _end(self, *, completed: bool, error: ErrorCode | None = None) -> list[RecoveryEffect]:
        self._calls.forget()
        self._machine.move(RecoveryState.DONE)
        self.result = RecoveryResult(
            txn_id=self.record.txn_id, state=self.record.state, completed=completed, error=error
        )
        return [Finish(self.result)]
