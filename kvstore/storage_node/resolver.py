"""Stale-intent resolution: a node asks the anchor's ledger, then commits or cancels its intents.

Theory of operation
-------------------
An intent older than ``intent_stale_ms`` means its coordinator may be gone. The node that holds it
must not guess (presuming abort loses committed writes; presuming commit applies cancelled ones):
the anchor's ledger record is the only truth. :class:`IntentResolution` is a sans-I/O core with the
coordinator cores' event interface (``step_start``/``step_reply``/``step_failed``/``step_tick``
returning :class:`~kvstore.coordinator.effects.Send` and one
:class:`~kvstore.coordinator.effects.Finish`):

1. send a *resolving* ``LedgerLookupRequest`` to the anchor; that lookup inserts a CANCELLED
   record when none exists, and cancels a PREPARING one past its deadline, so its answer is final
   unless the record is still PREPARING within its deadline;
2. map the record with :func:`~kvstore.coordinator.recovery.resolve_intent_action`: COMMITTED ->
   ``CommitRequest``, CANCELLED -> ``CancelRequest`` to the intent's own partition; PREPARING ->
   finish with ``"wait"`` (the next maintenance tick asks again);
3. finish with the action taken once the partition acknowledged, or ``"unreachable"`` when a call
   failed or passed its deadline (the next tick retries; every step is idempotent).

:class:`MarkSettle` is the same shape for a participant's applied mark past the retention.
"""

from __future__ import annotations

from typing import Literal

from kvstore.coordinator.calls import Calls, Purpose
from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.recovery import resolve_intent_action
from kvstore.errors import ErrorCode
from kvstore.limits import RPC_TIMEOUT_MS
from kvstore.messages import (
    CancelRequest,
    CommitRequest,
    CompleteRequest,
    LedgerLookupRequest,
    LedgerReply,
    Reply,
)
from kvstore.types import PartitionId, TxnId

__all__ = [
    "IntentResolution",
    "ResolutionOutcome",
    "ResolutionEffect",
    "MarkSettle",
    "SettleOutcome",
    "SettleEffect",
]

ResolutionOutcome = Literal["commit", "cancel", "wait", "unreachable"]
ResolutionEffect = Send | Finish[ResolutionOutcome]

_US_PER_MS = 1000


class IntentResolution:
    """Resolve one transaction's stale intents on ``partition`` through ``anchor``'s ledger."""

    def __init__(self, txn_id: TxnId, anchor: PartitionId, partition: PartitionId) -> None:
        self.txn_id = txn_id
        self.anchor = anchor
        self.partition = partition
        self._calls = Calls()
        self.result: ResolutionOutcome | None = None
        self._action: ResolutionOutcome | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def next_deadline_us(self) -> int | None:
        return None if self.done else self._calls.next_deadline_us

    def step_start(self, now_us: int) -> list[ResolutionEffect]:
        lookup = LedgerLookupRequest(partition=self.anchor, txn_id=self.txn_id, resolve=True)
        return [self._calls.send(Purpose.LOOKUP, self.anchor, lookup, self._deadline(now_us))]

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[ResolutionEffect]:
        call = self._calls.take(call_id)
        if call is None or self.done:
            return []
        if call.purpose is not Purpose.LOOKUP:
            assert self._action is not None
            return self._finish(self._action)
        if not isinstance(reply, LedgerReply):
            return self._finish("unreachable")
        action = resolve_intent_action(reply.record)
        if action == "wait":
            return self._finish("wait")
        self._action = action
        request: CommitRequest | CancelRequest
        if action == "commit":
            purpose = Purpose.COMMIT
            request = CommitRequest(partition=self.partition, txn_id=self.txn_id)
        else:
            purpose = Purpose.CANCEL
            request = CancelRequest(partition=self.partition, txn_id=self.txn_id)
        return [self._calls.send(purpose, self.partition, request, self._deadline(now_us))]

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[ResolutionEffect]:
        del error, now_us
        if self._calls.take(call_id) is None or self.done:
            return []
        return self._finish("unreachable")

    def step_tick(self, now_us: int) -> list[ResolutionEffect]:
        if self.done or self._calls.take_expired(now_us) is None:
            return []
        return self._finish("unreachable")

    def _deadline(self, now_us: int) -> int:
        return now_us + RPC_TIMEOUT_MS * _US_PER_MS

    def _finish(self, outcome: ResolutionOutcome) -> list[ResolutionEffect]:
        self._calls.forget()
        self.result = outcome
        return [Finish(outcome)]


SettleOutcome = Literal["forgotten", "wait", "unreachable"]
SettleEffect = Send | Finish[SettleOutcome]


class MarkSettle:
    """Forget ``partition``'s mark of ``txn_id`` once ``anchor``'s record is decided.

    A participant keeps an applied mark (DESIGN section 6, rule 5a) so that recovery of a STAGING
    record can still count its yes once its intents are applied, and a refusal mark so that no
    later prepare turns its no into a yes. Past the ledger retention the
    mark is dropped only after a plain ``LedgerLookupRequest`` to the anchor shows the record
    decided or gone (a STAGING record is never deleted): then a ``CompleteRequest`` to the mark's
    own partition deletes it. A STAGING answer finishes with ``"wait"`` (the next maintenance
    asks again), a failed call with ``"unreachable"``. No clock is trusted: a mark outlives any
    outage of its anchor.
    """

    def __init__(self, txn_id: TxnId, anchor: PartitionId, partition: PartitionId) -> None:
        self.txn_id = txn_id
        self.anchor = anchor
        self.partition = partition
        self._calls = Calls()
        self.result: SettleOutcome | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def next_deadline_us(self) -> int | None:
        return None if self.done else self._calls.next_deadline_us

    def step_start(self, now_us: int) -> list[SettleEffect]:
        lookup = LedgerLookupRequest(partition=self.anchor, txn_id=self.txn_id)
        return [self._calls.send(Purpose.LOOKUP, self.anchor, lookup, _deadline(now_us))]

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[SettleEffect]:
        call = self._calls.take(call_id)
        if call is None or self.done:
            return []
        if call.purpose is not Purpose.LOOKUP:
            return self._finish("forgotten")
        if not isinstance(reply, LedgerReply) or reply.txn_id != self.txn_id:
            return self._finish("unreachable")
        if reply.record is not None and not reply.record.state.decided:
            return self._finish("wait")
        complete = CompleteRequest(partition=self.partition, txn_id=self.txn_id)
        return [self._calls.send(Purpose.COMMIT, self.partition, complete, _deadline(now_us))]

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[SettleEffect]:
        del error, now_us
        if self._calls.take(call_id) is None or self.done:
            return []
        return self._finish("unreachable")

    def step_tick(self, now_us: int) -> list[SettleEffect]:
        if self.done or self._calls.take_expired(now_us) is None:
            return []
        return self._finish("unreachable")

    def _finish(self, outcome: SettleOutcome) -> list[SettleEffect]:
        self._calls.forget()
        self.result = outcome
        return [Finish(outcome)]


def _deadline(now_us: int) -> int:
    return now_us + RPC_TIMEOUT_MS * _US_PER_MS
