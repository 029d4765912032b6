"""Follow the earlier transaction that used the same idempotency token, and report its outcome.

Theory of operation
-------------------
When the anchor partition says our idempotency token was already used by another transaction with
the same content (DESIGN section 6 rule 2), the client's answer is *that* transaction's outcome.
:class:`Follow` polls the original's ledger record on the anchor (``LedgerLookupRequest`` without
``resolve``: following must never decide anything) every ``RESEND_INTERVAL_MS``, one lookup at a
time, until the record is decided *and* completed (every participant applied the decision, so the
client can read its own write), then yields the recorded outcome under the original ``txn_id`` and
``ts``. It gives up at its deadline with ``TransactionInProgress`` (the client retries later with
the same token). A missing record means the token and its record expired between the two calls:
the outcome is then ``OutcomeUnknown``.
"""

from __future__ import annotations

from kvstore.coordinator.calls import Call, Calls, Purpose
from kvstore.coordinator.effects import Send
from kvstore.coordinator.results import TxnResult
from kvstore.errors import ErrorCode
from kvstore.limits import RESEND_INTERVAL_MS, RPC_TIMEOUT_MS
from kvstore.messages import (
    LedgerLookupRequest,
    LedgerRecord,
    LedgerReply,
    OpOutcome,
    ReasonCode,
    Reply,
    TxnState,
)
from kvstore.types import PartitionId, Timestamp, TxnId

__all__ = ["Follow", "recorded_outcomes"]

_US_PER_MS = 1000


def recorded_outcomes(record: LedgerRecord, op_count: int) -> tuple[OpOutcome, ...]:
    """A cancelled record's per-op reasons, or conflict reasons when it has none to give.

    A record cancelled by recovery (or inserted CANCELLED by a resolving lookup) carries no
    reasons; the client still gets one retryable reason per op.
    """
    if len(record.outcomes) == op_count:
        return record.outcomes
    reason = OpOutcome(code=ReasonCode.TRANSACTION_CONFLICT, message="cancelled by recovery")
    return (reason,) * op_count


class Follow:
    """Poll the original transaction's ledger record until it is decided and completed."""

    def __init__(
        self,
        calls: Calls,
        *,
        original: TxnId,
        anchor: PartitionId,
        op_count: int,
        fallback_ts: Timestamp,
        deadline_us: int,
    ) -> None:
        self._calls = calls
        self.original = original
        self._anchor = anchor
        self._op_count = op_count
        self._ts = fallback_ts  # until a record tells the original's timestamp
        self._deadline_us = deadline_us
        self._due_us: int | None = None
        self.result: TxnResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def next_deadline_us(self) -> int | None:
        if self.done:
            return None
        if self._due_us is None:
            return self._deadline_us
        return min(self._due_us, self._deadline_us)

    def start(self, now_us: int) -> list[Send]:
        return [self._lookup(now_us)]

    def on_reply(self, call: Call, reply: Reply, now_us: int) -> None:
        del call
        if not isinstance(reply, LedgerReply) or reply.txn_id != self.original:
            self.on_failed(now_us)
            return
        record = reply.record
        if record is None:
            self._end(committed=False, error=ErrorCode.OutcomeUnknown)
            return
        self._ts = record.ts
        if not record.state.decided or record.completed_us is None:
            self._due_us = now_us + RESEND_INTERVAL_MS * _US_PER_MS
        elif record.state is TxnState.COMMITTED:
            self._end(committed=True, error=None)
        else:
            outcomes = recorded_outcomes(record, self._op_count)
            self._end(committed=False, error=ErrorCode.TransactionCanceled, outcomes=outcomes)

    def on_failed(self, now_us: int) -> None:
        if not self.done:
            self._due_us = now_us + RESEND_INTERVAL_MS * _US_PER_MS

    def tick(self, now_us: int) -> list[Send]:
        if self.done:
            return []
        if now_us >= self._deadline_us:
            self._end(committed=False, error=ErrorCode.TransactionInProgress)
            return []
        if self._due_us is not None and now_us >= self._due_us:
            return [self._lookup(now_us)]
        return []

    def _lookup(self, now_us: int) -> Send:
        self._due_us = None
        request = LedgerLookupRequest(partition=self._anchor, txn_id=self.original)
        return self._calls.send(
            Purpose.LOOKUP, self._anchor, request, now_us + RPC_TIMEOUT_MS * _US_PER_MS
        )

    def _end(
        self, *, committed: bool, error: ErrorCode | None, outcomes: tuple[OpOutcome, ...] = ()
    ) -> None:
        self._calls.forget(Purpose.LOOKUP)
        self._due_us = None
        self.result = TxnResult(
            committed=committed, txn_id=self.original, ts=self._ts, outcomes=outcomes, error=error
        )
