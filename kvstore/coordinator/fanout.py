"""Deliver a decided outcome (commit or cancel) to every participant until each acknowledges.

Theory of operation
-------------------
Once a transaction's ledger record is COMMITTED or CANCELLED, the decision is final and only has
to reach every participant partition (DESIGN section 6 rule 6). :class:`Fanout` sends one
``CommitRequest`` or ``CancelRequest`` per participant in parallel. An acknowledgement
(``CommitReply`` / ``CancelReply`` for our transaction) marks that participant done. A failed or
timed-out call, or a reply that is not an acknowledgement, makes the participant due again
``RESEND_INTERVAL_MS`` later; the owner's tick re-sends it with a fresh call id. Re-sending is
always safe: partitions apply or clear only the intents of this transaction, and a duplicate does
nothing. The fan-out has no deadline of its own; its owner decides when to stop waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.coordinator.calls import Call, Calls, Purpose
from kvstore.coordinator.effects import Send
from kvstore.limits import RESEND_INTERVAL_MS, RPC_TIMEOUT_MS
from kvstore.messages import CancelReply, CancelRequest, CommitReply, CommitRequest, Reply, TxnState
from kvstore.types import PartitionId, TxnId

__all__ = ["Fanout"]

_US_PER_MS = 1000


class Fanout:
    """Commit or cancel ``txn_id`` on every participant, re-sending until acknowledged."""

    def __init__(
        self,
        calls: Calls,
        txn_id: TxnId,
        decision: TxnState,
        participants: Sequence[PartitionId],
    ) -> None:
        if not decision.decided:
            raise ValueError("a fan-out delivers COMMITTED or CANCELLED")
        self._calls = calls
        self._txn_id = txn_id
        self.decision = decision
        self._purpose = Purpose.COMMIT if decision is TxnState.COMMITTED else Purpose.CANCEL
        self._participants = tuple(participants)
        self._unacked: set[PartitionId] = set(self._participants)
        self._due_us: dict[PartitionId, int] = {}  # participant -> when to re-send

    @property
    def purpose(self) -> Purpose:
        return self._purpose

    @property
    def done(self) -> bool:
        """Every participant acknowledged."""
        return not self._unacked

    @property
    def unacked(self) -> frozenset[PartitionId]:
        return frozenset(self._unacked)

    @property
    def next_deadline_us(self) -> int | None:
        """The earliest scheduled re-send (call deadlines are in the shared call book)."""
        return min(self._due_us.values(), default=None)

    def start(self, now_us: int) -> list[Send]:
        return [self._send(partition, now_us) for partition in self._participants]

    def on_reply(self, call: Call, reply: Reply, now_us: int) -> None:
        if self.decision is TxnState.COMMITTED:
            acked = isinstance(reply, CommitReply) and reply.txn_id == self._txn_id
        else:
            acked = isinstance(reply, CancelReply) and reply.txn_id == self._txn_id
        if acked:
            self._unacked.discard(call.partition)
        else:
            self.on_failed(call, now_us)

    def on_failed(self, call: Call, now_us: int) -> None:
        if call.partition in self._unacked:
            self._due_us[call.partition] = now_us + RESEND_INTERVAL_MS * _US_PER_MS

    def tick(self, now_us: int) -> list[Send]:
        """Re-send to every participant whose re-send time has come."""
        due = sorted(p for p, at in self._due_us.items() if at <= now_us)
        return [self._send(partition, now_us) for partition in due]

    def stop(self) -> None:
        """Stop waiting: abandon outstanding calls and scheduled re-sends."""
        self._calls.forget(self._purpose)
        self._due_us.clear()

    def _send(self, partition: PartitionId, now_us: int) -> Send:
        self._due_us.pop(partition, None)
        request: CommitRequest | CancelRequest
        if self.decision is TxnState.COMMITTED:
            request = CommitRequest(partition=partition, txn_id=self._txn_id)
        else:
            request = CancelRequest(partition=partition, txn_id=self._txn_id)
        return self._calls.send(
            self._purpose, partition, request, now_us + RPC_TIMEOUT_MS * _US_PER_MS
        )
