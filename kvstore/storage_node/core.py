"""The partition core: timestamp-ordering rules for one partition, with no I/O.

Theory of operation
-------------------
One :class:`PartitionCore` owns one partition's state through a :class:`PartitionStore`. Each
request method takes a request value (``kvstore.messages``), the node's current physical time
``now_us`` and, for singleton writes, a fresh timestamp from the node's clock; it returns a
:class:`Step`: the reply and whether the step wrote. The shell must make the store durable
(``store.commit()``, group commit) before it releases any reply that depends on a write.

Rules kept here (DESIGN section 5 and the gaps of reference section 2.6):

* Per key: committed value, ``version``, ``write_ts``, ``read_ts``; at most one pending intent,
  stored apart from items so reads, scans and conditions never see it. A key with no row takes
  its floor from the partition watermark (``max_delete_ts``, ``max_deleted_version``).
* prepare accepts a slice only if for every op: no other transaction's intent is on the key;
  ``ts > write_ts`` (and ``ts > read_ts`` for writes); the condition holds on the committed value;
  the result respects the limits. A rejection writes nothing. Re-preparing a transaction that
  already holds its intents answers yes again and changes nothing.
* commit applies only ``txn_id``'s intents (duplicates and stale commits do nothing), sets
  ``write_ts`` to the commit timestamp (writes) or raises ``read_ts`` with ``max`` (checks), bumps
  the version on every change of existence or value, and leaves a tombstone for deleted keys and
  for absent keys that were checked or deleted, so their timestamps survive (gap 3). cancel
  clears only ``txn_id``'s intents.
* A key's floor (``max(write_ts, read_ts)``) and version never decrease: tombstones fold into
  the watermark with ``max`` (gap 4), and new rows start above the floor they replace, as their
  ``read_ts``. Their ``write_ts`` is the commit timestamp even when the watermark rose above it
  while the intent waited (other keys' tombstones folded): the item's ``ts`` and reads as of a
  timestamp (docs/backup.md) show when the write committed.
* Singleton writes get ``max(node clock, successor of the key's floor)``; a key with an intent
  refuses them with ``TransactionConflict``. Singleton gets are never blocked.
* :meth:`PartitionCore.blockers` answers, without writing, whether a request would be refused
  only because of other transactions' intents that it may wait for
  (:mod:`~kvstore.storage_node.intent_wait`); the runtime then parks it and steps it again later,
  when every check above is made afresh.
* Ledger records change state once, PREPARING -> COMMITTED | CANCELLED, by compare-and-set; a
  resolving lookup of an absent record inserts CANCELLED so a late prepare cannot revive it, and an
  expired PREPARING record may be cancelled by anyone.
* One-round (single-partition) transactions always leave a completed ledger record, so a
  duplicated request answers with the recorded outcome instead of running twice.
* One-node transactions (:meth:`PartitionCore.execute_node`, every partition on this node) are
  the one-round rule across the node's partitions: every op voted on its own partition before
  anything is written, then all applied or none, and the anchor's completed record and token
  written in the same step, so the runtime makes them durable in one flush.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from kvstore import limits
from kvstore.conditions import evaluate
from kvstore.dynamodb.payloads import ExpressionCondition
from kvstore.errors import ErrorCode, SnapshotTooOld, TransactionConflict, ValidationError
from kvstore.messages import (
    CancelReply,
    CancelRequest,
    CommitReply,
    CommitRequest,
    CompleteRequest,
    DecideRequest,
    ExecuteReply,
    ExecuteRequest,
    GetReply,
    GetRequest,
    ItemView,
    LedgerLookupRequest,
    LedgerRecord,
    LedgerReply,
    NodeExecuteRequest,
    OpOutcome,
    PrepareReply,
    PrepareRequest,
    PreventRequest,
    ReadEntry,
    ReadReply,
    ReadRequest,
    ReasonCode,
    Reply,
    Request,
    RestoreReply,
    RestoreRequest,
    ScanReply,
    ScanRequest,
    TokenHit,
    TokenLookupReply,
    TokenLookupRequest,
    TxnState,
    WriteReply,
    WriteRequest,
)
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants
from kvstore.ops import Op, OpKind, apply_op
from kvstore.storage_node.history import Version, VersionHistory
from kvstore.storage_node.intent_wait import may_wait
from kvstore.storage_node.store import Intent, ItemRow, PartitionStore, TokenRow
from kvstore.types import TIMESTAMP_ZERO, Key, PartitionId, Timestamp, TxnId, Value
from kvstore.values import value_size_bytes

__all__ = ["PartitionConfig", "Step", "StaleIntent", "Maintenance", "PartitionCore"]

R = TypeVar("R")
_US_PER_MS = 1000
_FAR_US = 1 << 62  # after every intent's creation
_ALL_INTENTS = 1 << 30  # a listing bound above any partition's intents


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionConfig:
    max_clock_skew_ms: int = limits.MAX_CLOCK_SKEW_MS
    intent_stale_ms: int = limits.INTENT_STALE_MS
    intent_wait_ms: int = limits.INTENT_WAIT_MS  # the runtime's bound on parked requests; 0: none
    ledger_decision_deadline_ms: int = limits.LEDGER_DECISION_DEADLINE_MS
    ledger_retention_ms: int = limits.LEDGER_RETENTION_MS
    idempotency_window_ms: int = limits.IDEMPOTENCY_WINDOW_MS
    tombstone_retention_ms: int = limits.TOMBSTONE_RETENTION_MS
    snapshot_window_ms: int = limits.SNAPSHOT_WINDOW_MS
    snapshot_pin_ms: int = limits.SNAPSHOT_PIN_MS
    snapshot_versions_max: int = limits.SNAPSHOT_VERSIONS_MAX  # replaced versions kept
    mutants: Mutants = NO_MUTANTS  # deliberate bugs for the chaos harness; see kvstore.mutants


@dataclass(frozen=True, slots=True)
class Step(Generic[R]):
    """A reply, and whether producing it wrote to the store (commit before replying)."""

    reply: R
    wrote: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleIntent:
    txn_id: TxnId
    anchor: PartitionId


@dataclass(frozen=True, slots=True, kw_only=True)
class Maintenance:
    """Background work found by :meth:`PartitionCore.maintain`, for the shell to carry out."""

    stale_intents: tuple[StaleIntent, ...]  # ask the anchor's ledger, then commit or cancel
    records_to_drive: tuple[LedgerRecord, ...]  # decided (or STAGING past its deadline) here
    wrote: bool
    # marks past the retention: delete once the anchor's record is decided or gone
    marks_to_settle: tuple[StaleIntent, ...] = ()


@dataclass(frozen=True, slots=True)
class _KeyState:
    """A key's committed state, with the partition watermark standing in for a missing row."""

    row: ItemRow | None
    exists: bool
    value: Value
    version: int
    write_ts: Timestamp
    read_ts: Timestamp


_NONE = OpOutcome()
_ALREADY_CANCELLED = OpOutcome(
    code=ReasonCode.TRANSACTION_CONFLICT, message="the transaction was already cancelled"
)


class PartitionCore:
    """Timestamp-ordering rules for one partition (see the module docstring)."""

    def __init__(
        self,
        partition: PartitionId,
        store: PartitionStore,
        config: PartitionConfig | None = None,
    ) -> None:
        self.partition = partition
        self.store = store
        self.config = config or PartitionConfig()
        self._mutants = self.config.mutants
        self._applied: dict[TxnId, list[Intent]] = {}  # DOUBLE_APPLY_COMMIT's memory only
        # STALE_VOTE_AFTER_WAIT's memory only: the vote a parked op had when it was parked.
        self._parked_votes: dict[tuple[TxnId, Key], tuple[bool, Value]] = {}
        # Replaced versions, for reads at a timestamp.
        self.history = VersionHistory(self.config.snapshot_versions_max)

    def handle(self, request: Request, now_us: int, node_ts: Timestamp) -> Step[Reply]:
        """Dispatch any request to its method. ``node_ts`` is used only by singleton writes."""
        match request:
            case PrepareRequest():
                return _widen(self.prepare(request, now_us))
            case ExecuteRequest():
                return _widen(self.execute(request, now_us))
            case CommitRequest():
                return _widen(self.commit(request, now_us))
            case CancelRequest():
                return _widen(self.cancel(request))
            case DecideRequest():
                return _widen(self.decide(request, now_us))
            case LedgerLookupRequest():
                return _widen(self.lookup_ledger(request, now_us))
            case CompleteRequest():
                return _widen(self.complete(request, now_us))
            case PreventRequest():
                return _widen(self.prevent(request, now_us))
            case TokenLookupRequest():
                return _widen(self.lookup_token(request))
            case ReadRequest():
                if request.at is not None:
                    return _widen(self.read_at(request, request.at, now_us))
                return _widen(self.read(request))
            case GetRequest():
                return _widen(self.get(request))
            case WriteRequest():
                return _widen(self.write(request, node_ts))
            case ScanRequest():
                if request.at is not None:
                    if request.reverse:
                        raise ValidationError("reverse", "a snapshot page is read forwards")
                    return _widen(self.scan_at(request, request.at, now_us))
                return _widen(self.scan(request))
            case RestoreRequest():
                return _widen(self.restore(request))
        raise ValidationError("request", f"unknown request type {type(request).__name__}")

    def blockers(self, request: Request, now_us: int) -> tuple[TxnId, ...]:
        """The transactions whose pending intents alone stop ``request`` now, when it may wait
        for them (:func:`~kvstore.storage_node.intent_wait.may_wait`); else ``()``: step it at
        once. Writes nothing; the step that follows a wait checks everything again."""
        match request:
            case PrepareRequest():
                if request.ledger is not None and self._anchor_precheck(request) is not None:
                    return ()
                if self._too_far_ahead(request.ts, now_us) or not request.ops:
                    return ()
                if self._holds_intents(request.txn_id, request.ops):
                    return ()
                return self._txn_blockers(request.txn_id, request.ts, request.ops, now_us)
            case ExecuteRequest():
                if self.store.get_ledger(request.txn_id) is not None:
                    return ()
                token, txn_id = request.token, request.txn_id
                if token is not None and self._token_hit(token, txn_id, request.fingerprint):
                    return ()
                if self._too_far_ahead(request.ts, now_us):
                    return ()
                return self._txn_blockers(request.txn_id, request.ts, request.ops, now_us)
            case WriteRequest():
                intent = self.store.get_intent(request.op.key)
                if intent is None or request.op.kind is OpKind.CHECK:
                    return ()
                if not self._young(intent, now_us):
                    return ()
                return (intent.txn_id,)
            case ScanRequest() if request.at is not None:
                return self._read_blockers(request.at, None, now_us)
            case ReadRequest():
                if request.at is None and Mutant.READS_SEE_INTENTS in self._mutants:
                    return ()  # the mutant shows intents rather than waiting for them
                return self._read_blockers(request.at, request.keys, now_us)
        return ()

    def _young(self, intent: Intent, now_us: int) -> bool:
        """Younger than the wait bound: an older intent's transaction is slow or orphaned
        (its coordinator gone; stale-intent resolution clears it), not worth a wait."""
        return now_us - intent.created_us < self.config.intent_wait_ms * _US_PER_MS

    def _txn_blockers(
        self, txn_id: TxnId, ts: Timestamp, ops: tuple[Op, ...], now_us: int
    ) -> tuple[TxnId, ...]:
        """``blockers`` of a prepare or execute: every op passes or meets an intent it may
        wait for and whose commit would leave the key below ``ts``."""
        found: dict[TxnId, Timestamp] = {}
        stale: dict[tuple[TxnId, Key], tuple[bool, Value]] = {}
        for op in ops:
            intent = self.store.get_intent(op.key)
            if intent is None or intent.txn_id == txn_id:
                if self._vote(op, txn_id, ts)[0] is not _NONE:
                    return ()  # refused whatever the intents do
                continue
            state = self._state(op.key)
            if not self._ts_ok(op, ts, state) or not self._young(intent, now_us):
                return ()
            found[intent.txn_id] = intent.ts
            if Mutant.STALE_VOTE_AFTER_WAIT in self._mutants:
                with contextlib.suppress(ValidationError):
                    stale[(txn_id, op.key)] = apply_op(op, exists=state.exists, value=state.value)
        if not may_wait(ts, found.values()):
            return ()
        self._parked_votes.update(stale)
        return tuple(found)

    # --- write transactions -------------------------------------------------------------

    def prepare(self, req: PrepareRequest, now_us: int) -> Step[PrepareReply]:
        if req.ledger is not None:  # before the skew check: a used token answers regardless
            early = self._anchor_precheck(req)
            if early is not None:
                return Step(early, False)
        if self._too_far_ahead(req.ts, now_us):
            refused = PrepareReply(txn_id=req.txn_id, accepted=False, error=ErrorCode.ClockSkew)
            if req.ledger is None:
                return Step(refused, False)
            # On the anchor the refusal is final and takes the token, as in ``execute``.
            wrote = self._refuse_for_good(
                req.txn_id, req.ledger.token, req.ledger.fingerprint, now_us
            )
            return Step(refused, wrote)
        if req.ops and self._holds_intents(req.txn_id, req.ops):
            return Step(
                PrepareReply(txn_id=req.txn_id, accepted=True, outcomes=(_NONE,) * len(req.ops)),
                False,
            )
        if req.ledger is None:
            mark = self.store.get_ledger(req.txn_id)
            if mark is not None and mark.state is TxnState.COMMITTED:  # applied here already
                reply = PrepareReply(
                    txn_id=req.txn_id, accepted=True, outcomes=(_NONE,) * len(req.ops)
                )
                return Step(reply, False)
            if (
                mark is not None
                and mark.state is TxnState.CANCELLED
                and Mutant.FORGET_REFUSAL not in self._mutants
            ):  # refused here for good (rule 5a): a late or duplicated prepare stays refused
                outcomes = (_ALREADY_CANCELLED,) * len(req.ops)
                return Step(
                    PrepareReply(txn_id=req.txn_id, accepted=False, outcomes=outcomes), False
                )
        results = [self._step_vote(op, req.txn_id, req.ts) for op in req.ops]
        accepted = all(outcome is _NONE for outcome, _ in results)
        wrote = False
        if req.ledger is not None:
            outcomes = () if accepted else tuple(outcome for outcome, _ in results)
            wrote = self._create_record(req.ledger, now_us, accepted, outcomes)
        if accepted:
            for op, (_, new_state) in zip(req.ops, results, strict=True):
                assert new_state is not None
                self.store.put_intent(
                    Intent(
                        key=op.key,
                        txn_id=req.txn_id,
                        ts=req.ts,
                        op=op,
                        new_exists=new_state[0],
                        new_value=new_state[1],
                        anchor=req.anchor,
                        created_us=now_us,
                    )
                )
            wrote = True
        outcomes = tuple(outcome for outcome, _ in results)
        return Step(PrepareReply(txn_id=req.txn_id, accepted=accepted, outcomes=outcomes), wrote)

    def execute(self, req: ExecuteRequest, now_us: int) -> Step[ExecuteReply]:
        """Prepare and apply in one round, for transactions living on this partition alone."""
        answered = self._execute_answered(req, now_us)
        if answered is not None:
            return answered
        results = [self._step_vote(op, req.txn_id, req.ts) for op in req.ops]
        committed = all(outcome is _NONE for outcome, _ in results)
        if committed:
            for op, (_, new_state) in zip(req.ops, results, strict=True):
                assert new_state is not None
                self._apply(op.key, op.kind, req.ts, new_state[0], new_state[1])
        outcomes = () if committed else tuple(outcome for outcome, _ in results)
        record = LedgerRecord(
            txn_id=req.txn_id,
            ts=req.ts,
            state=TxnState.COMMITTED if committed else TxnState.CANCELLED,
            participants=(self.partition,),
            created_us=now_us,
            deadline_us=now_us,
            token=req.token,
            fingerprint=req.fingerprint,
            outcomes=outcomes,
            completed_us=now_us,
        )
        self.store.put_ledger(record)
        if req.token is not None:
            self._claim_token(req.token, req.txn_id, req.fingerprint, now_us)
        return Step(self._execute_reply(record), True)

    def execute_node(
        self, req: NodeExecuteRequest, cores: Mapping[PartitionId, PartitionCore], now_us: int
    ) -> Step[ExecuteReply]:
        """``execute`` across partitions of one node, with this core as the anchor.

        ``cores`` holds the core of every partition of ``req.placement`` (the runtime checked
        that the node owns them all). Every op is voted on first, by prepare's rules, on its own
        partition; nothing is written before all votes are in. All yes: every op is applied at
        ``req.ts``. Any no: nothing is applied, and each op keeps its own reason, as its
        partition's prepare would have given it. Either way this core writes the decided ledger
        record, complete at once (no participant is left to tell), and takes the token, so a
        duplicate of the request or a repeat of the token meets the recorded outcome. The steps
        of a prepare, a decide and a commit happen together and the runtime makes them durable
        together; no intent is ever written because nothing runs between them.
        """
        if len(req.placement) != len(req.ops):
            raise ValidationError("placement", "must name one partition per op")
        answered = self._execute_answered(req, now_us)
        if answered is not None:
            return answered
        votes = [
            cores[pid]._vote(op, req.txn_id, req.ts)
            for op, pid in zip(req.ops, req.placement, strict=True)
        ]
        committed = all(outcome is _NONE for outcome, _ in votes)
        refused: set[PartitionId] = set()
        if not committed and Mutant.NODE_EXECUTE_PARTIAL in self._mutants:
            refused = {p for p, (o, _) in zip(req.placement, votes, strict=True) if o is not _NONE}
        if committed or refused:
            for op, pid, (_, new_state) in zip(req.ops, req.placement, votes, strict=True):
                if pid not in refused:
                    assert new_state is not None
                    cores[pid]._apply(op.key, op.kind, req.ts, new_state[0], new_state[1])
        record = LedgerRecord(
            txn_id=req.txn_id,
            ts=req.ts,
            state=TxnState.COMMITTED if committed else TxnState.CANCELLED,
            participants=tuple(sorted(req.partitions)),
            created_us=now_us,
            deadline_us=now_us,
            token=req.token,
            fingerprint=req.fingerprint,
            outcomes=() if committed else tuple(outcome for outcome, _ in votes),
            completed_us=now_us,
        )
        self.store.put_ledger(record)
        if req.token is not None:
            self._claim_token(req.token, req.txn_id, req.fingerprint, now_us)
        return Step(self._execute_reply(record), True)

    def commit(self, req: CommitRequest, now_us: int) -> Step[CommitReply]:
        """Apply ``txn_id``'s intents (commit order is by their timestamps, not by arrival).

        A participant that is not the anchor also leaves an *applied mark* (rule 5a): recovery
        of a STAGING record must still learn that this partition applied the transaction once
        its intents are gone. The mark is kept until the anchor's record is known decided
        (see ``maintain`` and ``complete``)."""
        intents = self.store.intents_of(req.txn_id)
        if not intents and Mutant.DOUBLE_APPLY_COMMIT in self._mutants:
            return self._mutant_reapply(req)
        for intent in intents:
            self._apply(intent.key, intent.op.kind, intent.ts, intent.new_exists, intent.new_value)
            self.store.delete_intent(intent.key)
        if (
            intents
            and intents[0].anchor != self.partition
            and Mutant.FORGET_APPLIED not in self._mutants
            and self.store.get_ledger(req.txn_id) is None
        ):
            self.store.put_ledger(
                LedgerRecord(
                    txn_id=req.txn_id,
                    ts=intents[0].ts,
                    state=TxnState.COMMITTED,
                    participants=(intents[0].anchor,),
                    created_us=now_us,
                    deadline_us=now_us,
                    completed_us=now_us,
                )
            )
        if Mutant.DOUBLE_APPLY_COMMIT in self._mutants:
            self._applied[req.txn_id] = intents
        return Step(CommitReply(txn_id=req.txn_id, applied=len(intents)), bool(intents))

    def _mutant_reapply(self, req: CommitRequest) -> Step[CommitReply]:
        """DOUBLE_APPLY_COMMIT: run a committed transaction's ops again on a duplicate commit."""
        intents = self._applied.get(req.txn_id, [])
        for intent in intents:
            state = self._state(intent.key)
            try:
                exists, value = apply_op(intent.op, exists=state.exists, value=state.value)
            except ValidationError:
                continue
            self._apply(intent.key, intent.op.kind, intent.ts, exists, value)
        return Step(CommitReply(txn_id=req.txn_id, applied=len(intents)), bool(intents))

    def cancel(self, req: CancelRequest) -> Step[CancelReply]:
        intents = self.store.intents_of(req.txn_id)
        for intent in intents:
            self.store.delete_intent(intent.key)
        return Step(CancelReply(txn_id=req.txn_id, cleared=len(intents)), bool(intents))

    def prevent(self, req: PreventRequest, now_us: int) -> Step[LedgerReply]:
        """Where ``txn_id`` stands on this participant, made final (rule 5a): it holds the
        intents (STAGING: the yes vote stands until a decision), it applied them (COMMITTED:
        the applied mark), or it refused (CANCELLED: a refusal mark, written now if the
        transaction was never prepared here, so no later prepare of it can succeed)."""
        intents = self.store.intents_of(req.txn_id)
        if intents:
            holds = LedgerRecord(
                txn_id=req.txn_id, ts=intents[0].ts, state=TxnState.STAGING, participants=()
            )
            return Step(LedgerReply(txn_id=req.txn_id, record=holds), False)
        record = self.store.get_ledger(req.txn_id)
        if record is not None:
            return Step(LedgerReply(txn_id=req.txn_id, record=record), False)
        if Mutant.UNKNOWN_HOLDS in self._mutants:  # "never prepared here" taken for a yes
            holds = LedgerRecord(
                txn_id=req.txn_id, ts=TIMESTAMP_ZERO, state=TxnState.STAGING, participants=()
            )
            return Step(LedgerReply(txn_id=req.txn_id, record=holds), False)
        record = replace(
            self._cancelled_placeholder(req.txn_id, now_us, ()), participants=(req.anchor,)
        )
        self.store.put_ledger(record)
        return Step(LedgerReply(txn_id=req.txn_id, record=record), True)

    # --- ledger -------------------------------------------------------------------------

    def decide(self, req: DecideRequest, now_us: int) -> Step[LedgerReply]:
        """The CAS on the anchor's record; once the record is final, the anchor's own intents
        of the transaction are resolved in the same step (committed or cleared, exactly as a
        commit or cancel would), so the coordinator's fan-out skips the anchor."""
        if not req.decision.decided:
            raise ValidationError("decision", "a decision is COMMITTED or CANCELLED")
        record = self.store.get_ledger(req.txn_id)
        written = True
        if record is None:
            if req.decision is TxnState.COMMITTED:
                return Step(LedgerReply(txn_id=req.txn_id, record=None), False)
            record = self._cancelled_placeholder(req.txn_id, now_us, req.outcomes)
        elif not record.state.decided:
            outcomes = req.outcomes if req.decision is TxnState.CANCELLED else ()
            record = replace(record, state=req.decision, outcomes=outcomes)
        elif (  # the anchor refused at prepare; the coordinator knows every op's reason
            record.state is TxnState.CANCELLED
            and req.decision is TxnState.CANCELLED
            and req.outcomes
            and record.completed_us is None
            and record.outcomes != req.outcomes
        ):
            record = replace(record, outcomes=req.outcomes)
        else:
            written = False
        if written:
            self.store.put_ledger(record)
        if record.state is TxnState.COMMITTED:
            commit = CommitRequest(partition=req.partition, txn_id=req.txn_id)
            applied = self.commit(commit, now_us).wrote
        else:
            applied = self.cancel(CancelRequest(partition=req.partition, txn_id=req.txn_id)).wrote
        return Step(LedgerReply(txn_id=req.txn_id, record=record), written or applied)

    def lookup_ledger(self, req: LedgerLookupRequest, now_us: int) -> Step[LedgerReply]:
        record = self.store.get_ledger(req.txn_id)
        if not req.resolve:
            return Step(LedgerReply(txn_id=req.txn_id, record=record), False)
        if record is None:
            record = self._cancelled_placeholder(req.txn_id, now_us, ())
        elif record.state is TxnState.PREPARING and now_us >= record.deadline_us:
            record = replace(record, state=TxnState.CANCELLED)
        else:
            return Step(LedgerReply(txn_id=req.txn_id, record=record), False)
        self.store.put_ledger(record)
        return Step(LedgerReply(txn_id=req.txn_id, record=record), True)

    def complete(self, req: CompleteRequest, now_us: int) -> Step[LedgerReply]:
        record = self.store.get_ledger(req.txn_id)
        if record is not None and self._is_mark(record):  # its anchor has decided
            self.store.delete_ledger(req.txn_id)
            return Step(LedgerReply(txn_id=req.txn_id, record=None), True)
        if record is None or not record.state.decided or record.completed_us is not None:
            return Step(LedgerReply(txn_id=req.txn_id, record=record), False)
        record = replace(record, completed_us=now_us)
        self.store.put_ledger(record)
        return Step(LedgerReply(txn_id=req.txn_id, record=record), True)

    def lookup_token(self, req: TokenLookupRequest) -> Step[TokenLookupReply]:
        row = self.store.get_token(req.token)
        record = None if row is None else self.store.get_ledger(row.txn_id)
        return Step(TokenLookupReply(token=req.token, record=record), False)

    # --- reads and singletons -----------------------------------------------------------

    def read(self, req: ReadRequest) -> Step[ReadReply]:
        entries = []
        for key in req.keys:
            state = self._state(key)
            intent = self.store.get_intent(key)
            if intent is not None and Mutant.READS_SEE_INTENTS in self._mutants:
                entries.append(_dirty_entry(intent, state.exists, state.version))
                continue
            entries.append(
                ReadEntry(
                    key=key,
                    exists=state.exists,
                    value=state.value,
                    version=state.version,
                    ts=state.write_ts,
                    pending=intent is not None,
                )
            )
        return Step(ReadReply(entries=tuple(entries)), False)

    # --- reads at a timestamp (snapshot reads, backups; docs/backup.md) ----------------------

    def read_at(self, req: ReadRequest, at: Timestamp, now_us: int) -> Step[ReadReply]:
        """Each key as of ``at``; ``pending`` marks a key with an intent at or below ``at``."""
        wrote = self._open_snapshot(at, now_us, pin=False)
        history = self.history
        entries = []
        for key in req.keys:
            intent = self.store.get_intent(key)
            version = history.version_at(key, at, self._current(key))
            entries.append(
                ReadEntry(
                    key=key,
                    exists=version.exists,
                    value=version.value if version.exists else None,
                    version=version.version,
                    ts=version.write_ts,
                    pending=intent is not None and intent.ts <= at,
                )
            )
        return Step(ReadReply(entries=tuple(entries)), wrote)

    def scan_at(self, req: ScanRequest, at: Timestamp, now_us: int) -> Step[ScanReply]:
        """A page of the items as of ``at`` (a backup's), in key order, with ``at`` pinned.
        Refused with the retryable ``TransactionConflict`` while an intent at or below ``at``
        is pending anywhere in the partition (its outcome decides what ``at`` shows)."""
        limit = req.limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit", f"must be a positive integer, got {limit!r}")
        limit = min(limit, limits.SCAN_PAGE_ITEMS_MAX)
        wrote = self._open_snapshot(at, now_us, pin=True)
        if self._pending_at_or_below(at):
            raise TransactionConflict(
                f"partition {self.partition}: a transaction at or below the snapshot is pending",
                details={"partition": self.partition},
            )
        rows = self.store.scan_items(req.start, req.end, limit + 1)
        upper = rows[limit].key if len(rows) > limit else req.end
        current = {row.key: row for row in rows[:limit]}
        history = self.history
        keys = sorted(current.keys() | set(history.keys_between(req.start, upper)))
        next_start = keys[limit] if len(keys) > limit else (upper if len(rows) > limit else None)
        items = []
        for key in keys[:limit]:
            row = current.get(key)
            now = (
                self._current(key)
                if row is None
                else Version(row.exists, row.value, row.version, row.write_ts)
            )
            version = history.version_at(key, at, now)
            if version.exists:
                items.append(
                    ItemView(
                        key=key, value=version.value, version=version.version, ts=version.write_ts
                    )
                )
        deleted = 0
        if next_start is None:  # the partition's last page: its deleted-key version floor
            tombstones = self.store.tombstones(limits.GC_ITEMS_PER_TICK_MAX)
            deleted = max(
                [self.store.get_meta().max_deleted_version] + [row.version for row in tombstones]
            )
        reply = ScanReply(items=tuple(items), next_start=next_start, deleted_version=deleted)
        return Step(reply, wrote)

    def restore(self, req: RestoreRequest) -> Step[RestoreReply]:
        """Write a backup's rows as they were; raise the floors (see the message)."""
        for item in req.items:
            if self.store.get_intent(item.key) is not None:
                raise ValidationError(
                    "items", f"partition {self.partition} has a transaction pending: not restored"
                )
        top = req.floor
        for item in req.items:
            self.store.put_item(
                ItemRow(
                    key=item.key,
                    exists=True,
                    value=item.value,
                    version=item.version,
                    write_ts=item.ts,
                    read_ts=item.ts,
                )
            )
            top = max(top, item.ts)
        meta = self.store.get_meta()
        self.store.put_meta(
            replace(
                meta,
                max_deleted_version=max(meta.max_deleted_version, req.deleted_version),
                read_floor=max(meta.read_floor, top),
                max_write_ts=max(meta.max_write_ts, top),
            )
        )
        return Step(RestoreReply(restored=len(req.items)), True)

    def _open_snapshot(self, at: Timestamp, now_us: int, *, pin: bool) -> bool:
        """Check that ``at`` can be read here and raise the read floor to it (so no write at
        or below ``at`` is accepted from now on); returns whether that wrote."""
        meta = self.store.get_meta()
        history = self.history
        history.resync(meta.max_write_ts)
        if not history.readable(at):
            raise SnapshotTooOld(
                f"partition {self.partition} keeps versions only from a later timestamp"
                " (the read window, or a restart or leader change since)",
                details={"partition": self.partition},
            )
        if pin:
            history.pin(at, now_us + self.config.snapshot_pin_ms * _US_PER_MS)
        if at <= meta.read_floor or Mutant.SNAPSHOT_WITHOUT_FLOOR in self._mutants:
            return False
        self.store.put_meta(replace(meta, read_floor=at))
        return True

    def _pending_at_or_below(self, at: Timestamp) -> bool:
        intents = self.store.intents_created_before(_FAR_US, _ALL_INTENTS)
        return any(intent.ts <= at for intent in intents)

    def forget_history(self) -> None:
        """Start the version history afresh (leadership lost or gained: writes it recorded may
        have been discarded, others applied without it); it resyncs on its next use."""
        self.history = VersionHistory(self.config.snapshot_versions_max)

    def _read_blockers(
        self, at: Timestamp | None, keys: tuple[Key, ...] | None, now_us: int
    ) -> tuple[TxnId, ...]:
        """A read waits for the intents on ``keys`` (``None``: anywhere in the partition): all
        of them, or with ``at`` those at or below it; none if one is too old to wait for."""
        if keys is None:
            intents = self.store.intents_created_before(_FAR_US, _ALL_INTENTS)
        else:
            intents = [i for i in map(self.store.get_intent, keys) if i is not None]
        found: dict[TxnId, None] = {}
        for intent in intents:
            if at is None or intent.ts <= at:
                if not self._young(intent, now_us):
                    return ()
                found[intent.txn_id] = None
        return tuple(found)

    def _current(self, key: Key) -> Version:
        row = self.store.get_item(key)
        if row is None:
            return Version(False, None, self.store.get_meta().max_deleted_version, TIMESTAMP_ZERO)
        return Version(row.exists, row.value, row.version, row.write_ts)

    def get(self, req: GetRequest) -> Step[GetReply]:
        row = self.store.get_item(req.key)
        item = None if row is None or not row.exists else _view(row)
        return Step(GetReply(item=item), False)

    def scan(self, req: ScanRequest) -> Step[ScanReply]:
        """A page of committed items in key order; never blocked by intents, like ``get``."""
        limit = req.limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit", f"must be a positive integer, got {limit!r}")
        limit = min(limit, limits.SCAN_PAGE_ITEMS_MAX)
        rows = self.store.scan_items(req.start, req.end, limit + 1, req.reverse)
        kept = min(limit, len(rows))
        if req.bytes_max:  # at least one item, then as many as fit in the budget
            total = 0
            for index, row in enumerate(rows[:limit]):
                total += len(row.key) + value_size_bytes(row.value)
                if index and total > req.bytes_max:
                    kept = index
                    break
        items = tuple(_view(row) for row in rows[:kept])
        more = len(rows) > kept
        if req.reverse:  # the next page ends (exclusive) after the last item of this one
            next_start = rows[kept - 1].key if more else None
        else:
            next_start = rows[kept].key if more else None
        return Step(ScanReply(items=items, next_start=next_start), False)

    def write(self, req: WriteRequest, node_ts: Timestamp) -> Step[WriteReply]:
        """A singleton put/delete/update at ``max(node_ts, successor of the key's floor)``."""
        op = req.op
        if op.kind is OpKind.CHECK:
            raise ValidationError("op", "a check is only allowed inside a transaction")
        if self.store.get_intent(op.key) is not None:
            conflict = OpOutcome(
                code=ReasonCode.TRANSACTION_CONFLICT, message="a transaction is pending on the key"
            )
            return Step(WriteReply(outcome=conflict), False)
        state = self._state(op.key)
        failed = self._condition_outcome(op, state)
        if failed is not None:
            return Step(
                WriteReply(outcome=failed, existed=state.exists, version=state.version), False
            )
        try:
            new_exists, new_value = apply_op(op, exists=state.exists, value=state.value)
        except ValidationError as error:
            invalid = OpOutcome(code=ReasonCode.VALIDATION_ERROR, message=error.message)
            return Step(WriteReply(outcome=invalid, existed=state.exists), False)
        floor = max(state.write_ts, state.read_ts)
        ts = node_ts if node_ts > floor else floor.successor(node_ts.origin)
        row = self._apply(op.key, op.kind, ts, new_exists, new_value)
        previous = state.value if op.return_previous and state.exists else None
        reply = WriteReply(
            outcome=_NONE, existed=state.exists, version=row.version, ts=ts, previous=previous
        )
        return Step(reply, True)

    # --- background ---------------------------------------------------------------------

    def maintain(self, now_us: int, limit: int = limits.GC_ITEMS_PER_TICK_MAX) -> Maintenance:
        """Bounded background work: stale intents, ledger driving and expiry, tombstone GC."""
        wrote = False
        stale: dict[TxnId, StaleIntent] = {}
        cutoff_us = now_us - self.config.intent_stale_ms * _US_PER_MS
        for intent in self.store.intents_created_before(
            cutoff_us, limits.STALE_INTENTS_PER_TICK_MAX
        ):
            if Mutant.PRESUME_ABORT in self._mutants:  # never ask the anchor: just drop it
                self.store.delete_intent(intent.key)
                wrote = True
                continue
            stale.setdefault(intent.txn_id, StaleIntent(txn_id=intent.txn_id, anchor=intent.anchor))
        to_drive: list[LedgerRecord] = []
        for stored in self.store.open_ledger_records(limit):
            record = stored
            if record.state is TxnState.PREPARING and now_us >= record.deadline_us:
                record = replace(record, state=TxnState.CANCELLED)
                self.store.put_ledger(record)
                wrote = True
            if record.state is TxnState.STAGING:
                if now_us >= record.deadline_us:  # recovery asks the participants (rule 5a)
                    to_drive.append(record)
            elif record.state.decided and record.created_us <= cutoff_us:
                to_drive.append(record)
        retention_us = self.config.ledger_retention_ms * _US_PER_MS
        to_settle: list[StaleIntent] = []
        for record in self.store.ledger_completed_before(now_us - retention_us + 1, limit):
            if self._is_mark(record):  # kept until its anchor's record is decided
                to_settle.append(StaleIntent(txn_id=record.txn_id, anchor=record.participants[0]))
                continue
            self.store.delete_ledger(record.txn_id)
            wrote = True
        window_us = self.config.idempotency_window_ms * _US_PER_MS
        for token in self.store.tokens_created_before(now_us - window_us, limit):
            self.store.delete_token(token.token)
            wrote = True
        wrote = self._collect_tombstones(now_us, limit) or wrote
        self.history.collect(now_us, self.config.snapshot_window_ms)
        return Maintenance(
            stale_intents=tuple(stale.values()),
            records_to_drive=tuple(to_drive),
            marks_to_settle=tuple(to_settle),
            wrote=wrote,
        )

    # --- helpers ------------------------------------------------------------------------

    def _too_far_ahead(self, ts: Timestamp, now_us: int) -> bool:
        return ts.physical_us > now_us + self.config.max_clock_skew_ms * _US_PER_MS

    def _anchor_precheck(self, req: PrepareRequest) -> PrepareReply | None:
        """On the anchor: a reused token or an already-decided record answers at once.

        The token comes first: our own record may be a CANCELLED placeholder that a participant's
        stale-intent resolution inserted before this prepare arrived, and the client must still
        learn that an earlier attempt with its token committed (simulator seed 7291).
        """
        assert req.ledger is not None
        if req.ledger.token is not None:
            hit = self._token_hit(req.ledger.token, req.txn_id, req.ledger.fingerprint)
            if hit is not None:
                return PrepareReply(txn_id=req.txn_id, accepted=False, token_hit=hit)
        record = self.store.get_ledger(req.txn_id)
        if record is not None:
            if record.state is TxnState.COMMITTED:
                return PrepareReply(
                    txn_id=req.txn_id, accepted=True, outcomes=(_NONE,) * len(req.ops)
                )
            if record.state is TxnState.CANCELLED:
                return PrepareReply(
                    txn_id=req.txn_id,
                    accepted=False,
                    outcomes=(_ALREADY_CANCELLED,) * len(req.ops),
                )
        return None

    def _create_record(
        self,
        ledger: LedgerRecord,
        now_us: int,
        accepted: bool,
        outcomes: tuple[OpOutcome, ...],
    ) -> bool:
        """The anchor's prepare creates the record: STAGING when its own slice was accepted
        (its intents are written in the same step), CANCELLED at once when it was refused (the
        anchor's refusal is final; the coordinator's decide adds every op's reason). Returns
        whether it wrote."""
        if self.store.get_ledger(ledger.txn_id) is not None:
            return False
        deadline_us = now_us + self.config.ledger_decision_deadline_ms * _US_PER_MS
        self.store.put_ledger(
            replace(
                ledger,
                state=TxnState.STAGING if accepted else TxnState.CANCELLED,
                created_us=now_us,
                deadline_us=deadline_us,
                outcomes=outcomes,
                completed_us=None,
            )
        )
        if ledger.token is not None:
            self._claim_token(ledger.token, ledger.txn_id, ledger.fingerprint, now_us)
        return True

    def _is_mark(self, record: LedgerRecord) -> bool:
        """A participant's mark (rule 5a): applied (COMMITTED) or refused (CANCELLED), naming
        only its anchor, which is not this partition. A record of this partition as an anchor
        names this partition, and a resolver's CANCELLED placeholder names nobody."""
        return (
            len(record.participants) == 1
            and record.participants[0] != self.partition
            and record.completed_us is not None
        )

    def _refuse_for_good(
        self, txn_id: TxnId, token: str | None, fingerprint: str | None, now_us: int
    ) -> bool:
        """Record a refusal as CANCELLED, and let it take the token if the token is free.

        Without the record, a late duplicate arriving once this clock has caught up would commit
        a transaction its client was told had failed (simulator seed 1855). Without the token, an
        earlier attempt with the same token still in flight would commit after its retry was
        told "failed" (seed 708). A record that exists already (a duplicate prepare of a
        transaction still PREPARING) is left alone: only its coordinator or its deadline decides
        it. Returns whether it wrote.
        """
        if self.store.get_ledger(txn_id) is not None:
            return False
        self.store.put_ledger(self._cancelled_placeholder(txn_id, now_us, ()))
        if token is not None:
            self._claim_token(token, txn_id, fingerprint, now_us)
        return True

    def _claim_token(self, token: str, txn_id: TxnId, fingerprint: str | None, now_us: int) -> None:
        if self.store.get_token(token) is None:
            self.store.put_token(
                TokenRow(
                    token=token, txn_id=txn_id, fingerprint=fingerprint or "", created_us=now_us
                )
            )

    def _execute_answered(
        self, req: ExecuteRequest | NodeExecuteRequest, now_us: int
    ) -> Step[ExecuteReply] | None:
        """The answer a one-step execute (one partition or one node) gets before any vote: a
        duplicate meets its recorded outcome, a used token answers regardless of the clock, a
        timestamp too far ahead is refused for good (one clock: every partition would refuse)."""
        recorded = self.store.get_ledger(req.txn_id)
        if recorded is not None:  # a duplicate of a request already answered
            return Step(self._execute_reply(recorded), False)
        if req.token is not None:  # before the skew check: a used token answers regardless
            hit = self._token_hit(req.token, req.txn_id, req.fingerprint)
            if hit is not None:
                return Step(ExecuteReply(txn_id=req.txn_id, committed=False, token_hit=hit), False)
        if self._too_far_ahead(req.ts, now_us):
            wrote = self._refuse_for_good(req.txn_id, req.token, req.fingerprint, now_us)
            return Step(
                ExecuteReply(txn_id=req.txn_id, committed=False, error=ErrorCode.ClockSkew), wrote
            )
        return None

    def _token_hit(self, token: str, txn_id: TxnId, fingerprint: str | None) -> TokenHit | None:
        row = self.store.get_token(token)
        if row is None or row.txn_id == txn_id:
            return None
        return TokenHit(txn_id=row.txn_id, same_content=row.fingerprint == (fingerprint or ""))

    def _cancelled_placeholder(
        self, txn_id: TxnId, now_us: int, outcomes: tuple[OpOutcome, ...]
    ) -> LedgerRecord:
        """The record a resolver writes for a transaction the anchor never saw."""
        return LedgerRecord(
            txn_id=txn_id,
            ts=TIMESTAMP_ZERO,
            state=TxnState.CANCELLED,
            participants=(),
            created_us=now_us,
            deadline_us=now_us,
            outcomes=outcomes,
            completed_us=now_us,
        )

    def _execute_reply(self, record: LedgerRecord) -> ExecuteReply:
        committed = record.state is TxnState.COMMITTED
        return ExecuteReply(txn_id=record.txn_id, committed=committed, outcomes=record.outcomes)

    def _holds_intents(self, txn_id: TxnId, ops: tuple[Op, ...]) -> bool:
        """True when ``txn_id`` was already prepared here (its slice is all or nothing)."""
        intent = self.store.get_intent(ops[0].key)
        return intent is not None and intent.txn_id == txn_id

    def _step_vote(
        self, op: Op, txn_id: TxnId, ts: Timestamp
    ) -> tuple[OpOutcome, tuple[bool, Value] | None]:
        """``_vote``, unless STALE_VOTE_AFTER_WAIT kept this op's vote from when it parked."""
        if self._parked_votes:
            intent = self.store.get_intent(op.key)
            if intent is None or intent.txn_id == txn_id:
                parked = self._parked_votes.pop((txn_id, op.key), None)
                if parked is not None:
                    return _NONE, parked
        return self._vote(op, txn_id, ts)

    def _vote(
        self, op: Op, txn_id: TxnId, ts: Timestamp
    ) -> tuple[OpOutcome, tuple[bool, Value] | None]:
        """This op's vote at ``ts`` and, when yes, what it would leave on the item."""
        intent = self.store.get_intent(op.key)
        if intent is not None and intent.txn_id != txn_id:
            return (
                OpOutcome(
                    code=ReasonCode.TRANSACTION_CONFLICT,
                    message="another transaction is pending on the key",
                ),
                None,
            )
        state = self._state(op.key)
        if not self._ts_ok(op, ts, state):
            return (
                OpOutcome(
                    code=ReasonCode.TIMESTAMP_TOO_OLD,
                    message="the key was accessed at a later timestamp",
                ),
                None,
            )
        failed = self._condition_outcome(op, state)
        if failed is not None:
            return failed, None
        try:
            new_state = apply_op(op, exists=state.exists, value=state.value)
        except ValidationError as error:
            return OpOutcome(code=ReasonCode.VALIDATION_ERROR, message=error.message), None
        return _NONE, new_state

    def _ts_ok(self, op: Op, ts: Timestamp, state: _KeyState) -> bool:
        """``ts`` is above the key's ``write_ts`` and, for a write, its ``read_ts``."""
        read_ts_ok = ts > state.read_ts or Mutant.SKIP_READ_TS_CHECK in self._mutants
        return ts > state.write_ts and (not op.is_write or read_ts_ok)

    def _condition_outcome(self, op: Op, state: _KeyState) -> OpOutcome | None:
        if evaluate(op.condition, exists=state.exists, value=state.value, version=state.version):
            return None
        if Mutant.DDB_CONDITION_IGNORED in self._mutants and isinstance(
            op.condition, ExpressionCondition
        ):
            return None
        item = None
        if op.return_item and state.row is not None and state.exists:
            item = _view(state.row)
        return OpOutcome(
            code=ReasonCode.CONDITION_FAILED, message="the condition did not hold", item=item
        )

    def _state(self, key: Key) -> _KeyState:
        row = self.store.get_item(key)
        meta = self.store.get_meta()
        if row is not None:  # the read floor is every key's read_ts (docs/backup.md)
            read_ts = max(row.read_ts, meta.read_floor)
            return _KeyState(row, row.exists, row.value, row.version, row.write_ts, read_ts)
        floor = meta.max_delete_ts
        return _KeyState(
            None, False, None, meta.max_deleted_version, floor, max(floor, meta.read_floor)
        )

    def _apply(
        self, key: Key, kind: OpKind, ts: Timestamp, new_exists: bool, new_value: Value
    ) -> ItemRow:
        """Apply a decided op at ``ts``: the only place item rows change for transactions."""
        state = self._state(key)
        if kind is OpKind.CHECK:
            row = ItemRow(
                key=key,
                exists=state.exists,
                value=state.value,
                version=state.version,
                write_ts=state.write_ts,
                read_ts=max(state.read_ts, ts),
            )
        else:
            changed = new_exists or state.exists
            # A key with no row takes the partition watermark as its floor, which other keys'
            # folded tombstones may have raised above ``ts`` while this intent waited for its
            # commit. The row is written at ``ts`` all the same: its commit timestamp, what
            # reads as of a timestamp and the item's ``ts`` must show (the watermark's
            # ``max`` here recorded the write later than it committed: a read as of a
            # timestamp in between missed it). The watermark stays the key's read floor.
            write_ts = ts if state.row is None else max(state.write_ts, ts)
            row = ItemRow(
                key=key,
                exists=new_exists,
                value=new_value if new_exists else None,
                version=state.version + 1 if changed else state.version,
                write_ts=write_ts,
                read_ts=state.read_ts,
            )
        assert row.version >= state.version and row.read_ts >= state.read_ts
        assert row.write_ts >= state.write_ts or state.row is None
        if kind is not OpKind.CHECK:
            self._record_replaced(key, state, row.write_ts)
        if kind is OpKind.DELETE and Mutant.WATERMARK_DOWN_ON_DELETE in self._mutants:
            self.store.delete_item(key)  # no tombstone: the key's floor falls to the watermark
            return row
        self.store.put_item(row)
        return row

    def _record_replaced(self, key: Key, state: _KeyState, ts: Timestamp) -> None:
        """Keep the version a write at ``ts`` replaces, for reads as of earlier timestamps."""
        meta = self.store.get_meta()
        self.history.resync(meta.max_write_ts)  # first forget what writes it missed made wrong
        before = Version(
            state.exists,
            state.value if state.exists else None,
            state.version,
            state.write_ts if state.row is not None else TIMESTAMP_ZERO,
        )
        self.history.record(key, before, ts)
        if ts > meta.max_write_ts:
            self.store.put_meta(replace(meta, max_write_ts=ts))

    def _collect_tombstones(self, now_us: int, limit: int) -> bool:
        """Fold tombstones older than the retention into the partition watermark."""
        cutoff_us = now_us - self.config.tombstone_retention_ms * _US_PER_MS
        meta = self.store.get_meta()
        folded = meta
        for row in self.store.tombstones(limit):
            if max(row.write_ts, row.read_ts).physical_us >= cutoff_us:
                break
            folded = replace(
                folded,
                max_delete_ts=max(folded.max_delete_ts, row.write_ts, row.read_ts),
                max_deleted_version=max(folded.max_deleted_version, row.version),
            )
            self.store.delete_item(row.key)
        if folded == meta:
            return False
        self.store.put_meta(folded)
        return True


def _widen(step: Step[Any]) -> Step[Reply]:
    """``Step`` is invariant in its reply type; every reply here is a ``Reply``."""
    return step


def _dirty_entry(intent: Intent, exists: bool, version: int) -> ReadEntry:
    """READS_SEE_INTENTS: a pending intent shown as if it were committed."""
    changed = intent.op.is_write and (exists or intent.new_exists)
    return ReadEntry(
        key=intent.key,
        exists=intent.new_exists,
        value=intent.new_value,
        version=version + 1 if changed else version,
        ts=intent.ts,
        pending=False,
    )


def _view(row: ItemRow) -> ItemView:
    return ItemView(key=row.key, value=row.value, version=row.version, ts=row.write_ts)
