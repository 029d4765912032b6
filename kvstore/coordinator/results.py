"""The answers coordinator cores give: for a write transaction, a read, a recovery.

Theory of operation
-------------------
Each core ends with one :class:`~kvstore.coordinator.effects.Finish` carrying one of these values.
They are plain values; the service turns them into HTTP/SDK answers with the error catalogue.

* :class:`TxnResult`: ``committed`` with ``error`` None; or cancelled with ``error``
  ``TransactionCanceled`` and one :class:`~kvstore.messages.OpOutcome` per op in request order; or
  another error (``OutcomeUnknown``, ``IdempotencyMismatch``, ``TransactionInProgress``,
  ``ClockSkew``...) with outcomes when known. ``txn_id`` and ``ts`` are those of the transaction
  the answer is about: the original one when a repeated idempotency token was followed.
* :class:`ReadResult`: one :class:`~kvstore.messages.ReadEntry` per requested key in request order,
  or an error (``TransactionConflict`` after too many rounds, ``Unavailable``, and for a snapshot
  read ``SnapshotTooOld``); a snapshot read's ``at``, the timestamp its items are as of.
* :class:`RecoveryResult`: whether the decided transaction was driven to completion.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.errors import ErrorCode
from kvstore.messages import OpOutcome, ReadEntry, TxnState
from kvstore.types import PartitionId, Timestamp, TxnId

__all__ = ["TxnResult", "ReadResult", "RecoveryResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnResult:
    committed: bool
    txn_id: TxnId
    ts: Timestamp
    outcomes: tuple[OpOutcome, ...] = ()  # request order; empty when committed
    error: ErrorCode | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadResult:
    items: tuple[ReadEntry, ...] = ()  # request key order; empty on error
    error: ErrorCode | None = None
    rounds: int = 0
    # With Unavailable: the partition that did not answer; with SnapshotTooOld: the one refusing.
    partition: PartitionId | None = None
    at: Timestamp | None = None  # a snapshot read: the timestamp the items are as of


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryResult:
    txn_id: TxnId
    state: TxnState  # the record's state: PREPARING means undecided, nothing was driven
    completed: bool  # every participant acknowledged and CompleteRequest was sent
    error: ErrorCode | None = None  # OutcomeUnknown when it gave up at the deadline
