"""Messages between coordinators and partitions, as frozen values.

Theory of operation
-------------------
Every internal call names one partition and carries one request dataclass; the partition core
answers with one reply dataclass. The coordinator core emits requests as effects and consumes
replies as events; the storage node service decodes requests off the wire and hands them to the
partition core. Keeping them as values (never raw dicts) lets both cores be tested against each
other in memory, and lets the codec live in one place at the edge.

Write transaction, multi-partition (DESIGN section 6):
  ``PrepareRequest`` to every participant (the anchor's carries the new STAGING
  ``LedgerRecord``). All yes: ``DecideRequest`` COMMITTED to the anchor and ``CommitRequest`` to
  every other participant at once (parallel commit, rule 5a). A no: ``DecideRequest`` CANCELLED,
  then ``CancelRequest`` to the others. Each until acknowledged, then ``CompleteRequest``.
  Recovery of a STAGING record asks every other participant ``PreventRequest``.
Write transaction, one partition: ``ExecuteRequest`` (prepare and apply in one round).
Write transaction, several partitions of one node: ``NodeExecuteRequest`` to that node (every
slice prepared, decided and applied in one pass of its runtime), answered by an ``ExecuteReply``.
Read-only transaction: ``ReadRequest`` rounds. Singletons: ``GetRequest``, ``WriteRequest``.
Scans: ``ScanRequest`` pages, one partition at a time.
Recovery: ``LedgerLookupRequest`` (optionally resolving an absent or expired record to
CANCELLED), ``TokenLookupRequest``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore.errors import ErrorCode
from kvstore.ops import Op
from kvstore.types import Key, NodeId, PartitionId, Timestamp, TxnId, Value

if TYPE_CHECKING:  # the store modules import this one
    from kvstore.storage_node.overlay import PartitionBatch
    from kvstore.storage_node.store import Intent, ItemRow, PartitionMeta, TokenRow

__all__ = [
    "ReasonCode",
    "ItemView",
    "OpOutcome",
    "TxnState",
    "LedgerRecord",
    "TokenHit",
    "PrepareRequest",
    "PrepareReply",
    "ExecuteRequest",
    "ExecuteReply",
    "NodeExecuteRequest",
    "CommitRequest",
    "CommitReply",
    "CancelRequest",
    "CancelReply",
    "PreventRequest",
    "DecideRequest",
    "LedgerLookupRequest",
    "CompleteRequest",
    "LedgerReply",
    "TokenLookupRequest",
    "TokenLookupReply",
    "ReadRequest",
    "ReadEntry",
    "ReadReply",
    "GetRequest",
    "GetReply",
    "WriteRequest",
    "WriteReply",
    "ScanRequest",
    "ScanReply",
    "RestoreRequest",
    "RestoreReply",
    "ShippedBatch",
    "Snapshot",
    "ReplicateRequest",
    "ReplicateReply",
    "PositionRequest",
    "PositionReply",
    "Request",
    "Reply",
]


class ReasonCode(enum.StrEnum):
    """Why one operation of a cancelled transaction failed (``None`` when it did not)."""

    NONE = "None"
    CONDITION_FAILED = "ConditionFailed"
    TRANSACTION_CONFLICT = "TransactionConflict"
    TIMESTAMP_TOO_OLD = "TimestampTooOld"
    VALIDATION_ERROR = "ValidationError"

    @property
    def retryable(self) -> bool:
        """As the error catalogue says for the code of the same name."""
        return self is not ReasonCode.NONE and ErrorCode[self.value].retryable


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemView:
    """A committed item as readers see it: ``ts`` is the commit timestamp of its last write."""

    key: Key
    value: Value
    version: int
    ts: Timestamp


@dataclass(frozen=True, slots=True, kw_only=True)
class OpOutcome:
    code: ReasonCode = ReasonCode.NONE
    message: str = ""
    item: ItemView | None = None  # the current item, on ConditionFailed when asked for


class TxnState(enum.StrEnum):
    """The ledger record's state. Undecided (STAGING, or PREPARING in records of earlier
    releases) -> COMMITTED | CANCELLED, once, by compare-and-set (DESIGN section 6, rule 5a)."""

    PREPARING = "PREPARING"  # written by releases before parallel commit; still honoured
    STAGING = "STAGING"  # the anchor prepared; decided by the votes (rule 5a)
    COMMITTED = "COMMITTED"
    CANCELLED = "CANCELLED"

    @property
    def decided(self) -> bool:
        return self is TxnState.COMMITTED or self is TxnState.CANCELLED


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerRecord:
    """A transaction's durable record on its anchor partition: the single source of truth."""

    txn_id: TxnId
    ts: Timestamp
    state: TxnState
    participants: tuple[PartitionId, ...]
    created_us: int = 0  # set by the anchor partition from its own clock
    deadline_us: int = 0  # undecided past this may be recovered by anyone; set by the anchor
    token: str | None = None
    fingerprint: str | None = None
    outcomes: tuple[OpOutcome, ...] = ()  # per-op reasons of a cancelled transaction
    completed_us: int | None = None  # every participant acknowledged the decision


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenHit:
    """The idempotency token was already used, by ``txn_id``."""

    txn_id: TxnId
    same_content: bool


# --- write transactions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareRequest:
    partition: PartitionId
    txn_id: TxnId
    ts: Timestamp
    ops: tuple[Op, ...]
    anchor: PartitionId  # where the ledger record lives: stale intents are resolved there
    ledger: LedgerRecord | None = None  # present exactly on the anchor partition's prepare


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareReply:
    txn_id: TxnId
    accepted: bool
    outcomes: tuple[OpOutcome, ...] = ()  # one per op of the request, in order
    error: ErrorCode | None = None  # a whole-request refusal (ClockSkew, ledger already decided)
    token_hit: TokenHit | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecuteRequest:
    """A transaction whose ops all live on one partition: checked and applied in one round."""

    partition: PartitionId
    txn_id: TxnId
    ts: Timestamp
    ops: tuple[Op, ...]
    token: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecuteReply:
    txn_id: TxnId
    committed: bool
    outcomes: tuple[OpOutcome, ...] = ()
    error: ErrorCode | None = None
    token_hit: TokenHit | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeExecuteRequest:
    """A transaction whose partitions are all owned by one node: checked and applied in one pass
    of that node's runtime (one durable step). ``partition`` is the anchor (the home of the
    ledger record, and what routes the request to the node); ``placement`` names each op's
    partition, in request order. Answered by an ``ExecuteReply`` whose outcomes follow ``ops``."""

    partition: PartitionId
    txn_id: TxnId
    ts: Timestamp
    ops: tuple[Op, ...]
    placement: tuple[PartitionId, ...]
    token: str | None = None
    fingerprint: str | None = None

    @property
    def partitions(self) -> tuple[PartitionId, ...]:
        """Every partition involved, the anchor first, then ascending (the runtime's order)."""
        return (self.partition, *sorted(set(self.placement) - {self.partition}))


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRequest:
    partition: PartitionId
    txn_id: TxnId


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitReply:
    txn_id: TxnId
    applied: int  # intents of txn_id applied now (0 for a duplicate or stale commit)


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequest:
    partition: PartitionId
    txn_id: TxnId


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelReply:
    txn_id: TxnId
    cleared: int


# --- ledger -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DecideRequest:
    """Compare-and-set the anchor's record from PREPARING to ``decision``.

    A CANCELLED decision on an absent record inserts it (so a late prepare cannot revive the
    transaction); a COMMITTED decision needs the record to exist.
    """

    partition: PartitionId
    txn_id: TxnId
    decision: TxnState
    outcomes: tuple[OpOutcome, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerLookupRequest:
    """Read a record; with ``resolve``, an absent record or an expired PREPARING one becomes
    CANCELLED first (the stale-intent resolution of DESIGN section 5)."""

    partition: PartitionId
    txn_id: TxnId
    resolve: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PreventRequest:
    """Recovery of a STAGING record asks a participant (not the anchor) where ``txn_id`` stands,
    and makes the answer final: it answers with a ``LedgerReply`` whose record's state is
    STAGING (it holds the transaction's intents: its yes vote stands), COMMITTED (it applied
    them) or CANCELLED (it never prepared the transaction and now never will: the refusal is
    durable before the reply). ``anchor`` is the transaction's anchor: a participant keeps its
    refusal until that record is known decided."""

    partition: PartitionId
    txn_id: TxnId
    anchor: PartitionId


@dataclass(frozen=True, slots=True, kw_only=True)
class CompleteRequest:
    """Every participant acknowledged the decision; the record may expire after retention."""

    partition: PartitionId
    txn_id: TxnId


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerReply:
    txn_id: TxnId
    record: LedgerRecord | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenLookupRequest:
    partition: PartitionId
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenLookupReply:
    token: str
    record: LedgerRecord | None


# --- reads and singletons -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRequest:
    """A read round, or with ``at`` a snapshot read: each key as of timestamp ``at``
    (docs/backup.md: the partition's read floor rises to ``at`` and intents above it are
    ignored; ``pending`` then means an intent at or below ``at``)."""

    partition: PartitionId
    keys: tuple[Key, ...]
    at: Timestamp | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadEntry:
    """One key of a read round. For an absent key ``version`` is its deleted-key version."""

    key: Key
    exists: bool
    value: Value
    version: int
    ts: Timestamp
    pending: bool  # another transaction's intent is on the key


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadReply:
    entries: tuple[ReadEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GetRequest:
    partition: PartitionId
    key: Key


@dataclass(frozen=True, slots=True, kw_only=True)
class GetReply:
    item: ItemView | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteRequest:
    """A singleton put, delete or update, stamped by the node's own clock."""

    partition: PartitionId
    op: Op


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteReply:
    outcome: OpOutcome
    existed: bool = False  # the item existed before the write (for delete's answer)
    version: int = 0
    ts: Timestamp | None = None
    # With the op's ``return_previous``: the item's value before the write (None when absent).
    previous: Value = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanRequest:
    """One page of committed items with ``start <= key < end`` (``end=None``: no upper bound),
    in key order (``reverse``: descending, and ``next_start`` is then the exclusive ``end`` of
    the next page). Intents are invisible, as to ``get``."""

    partition: PartitionId
    start: Key
    end: Key | None
    limit: int
    at: Timestamp | None = None  # a snapshot page as of ``at`` (a backup's), like ReadRequest's
    reverse: bool = False  # not with ``at``
    # When positive: fewer items than ``limit`` once their keys and encoded values pass this many
    # bytes (at least one item), so a page of large items fits in one message.
    bytes_max: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanReply:
    items: tuple[ItemView, ...]
    next_start: Key | None  # where the next page starts; None when the range is exhausted
    # With ``at``: the partition's deleted-key version floor (a restore keeps versions growing).
    deleted_version: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreRequest:
    """Rows of a backup written into one partition as they were (version and commit timestamp
    kept); the partition's read floor rises to ``floor`` (the backup's timestamp) and its
    deleted-key version to ``deleted_version``, so nothing below them can be written again."""

    partition: PartitionId
    items: tuple[ItemView, ...]
    floor: Timestamp
    deleted_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreReply:
    restored: int  # rows written


# --- replication (kvstore.replication, docs/replication.md): addressed to a node, not an owner ---


@dataclass(frozen=True, slots=True, kw_only=True)
class ShippedBatch:
    """One write batch of a partition at its position (``epoch``, ``seq``)."""

    epoch: int
    seq: int
    rows: PartitionBatch


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Every row of a partition as of position (``meta.epoch``, ``meta.seq``), possibly with
    some rows of the next batch (batches hold whole rows, so applying that batch again after
    the snapshot ends at the same state)."""

    items: tuple[ItemRow, ...]
    intents: tuple[Intent, ...]
    ledger: tuple[LedgerRecord, ...]
    tokens: tuple[TokenRow, ...]
    meta: PartitionMeta


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicateRequest:
    """From the leader of ``partition`` (leadership ``leader_epoch``) to the replica ``node``:
    ``batches`` follow the batch at (``prev_epoch``, ``prev_seq``); or, with ``snapshot``,
    replace the replica's rows. No batches and no snapshot: a probe (and a heartbeat)."""

    partition: PartitionId
    node: NodeId
    leader: NodeId
    leader_epoch: int
    prev_epoch: int
    prev_seq: int
    batches: tuple[ShippedBatch, ...]
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicateReply:
    """The replica's verdict and its position after it (durable when the reply leaves)."""

    accepted: bool
    epoch: int
    seq: int
    promised: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionRequest:
    """An election's poll: the replica ``node`` of ``partition`` promises ``epoch`` (refuses
    batches of older leaderships from now on) and answers its position once that is durable."""

    partition: PartitionId
    node: NodeId
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionReply:
    epoch: int
    seq: int
    promised: int


Request = (
    PrepareRequest
    | ExecuteRequest
    | NodeExecuteRequest
    | CommitRequest
    | CancelRequest
    | DecideRequest
    | LedgerLookupRequest
    | CompleteRequest
    | PreventRequest
    | TokenLookupRequest
    | ReadRequest
    | GetRequest
    | WriteRequest
    | ScanRequest
    | RestoreRequest
    | ReplicateRequest
    | PositionRequest
)
Reply = (
    PrepareReply
    | ExecuteReply
    | CommitReply
    | CancelReply
    | LedgerReply
    | TokenLookupReply
    | ReadReply
    | GetReply
    | WriteReply
    | ScanReply
    | RestoreReply
    | ReplicateReply
    | PositionReply
)
