"""The write-transaction coordinator: two-phase commit over partitions, as a pure state machine.

Theory of operation
-------------------
:class:`WriteTxn` runs one write transaction (DESIGN section 6). It is sans-I/O: the shell feeds
it events (``step_start``, ``step_reply``, ``step_failed``, ``step_tick``) with the current time and
carries out the returned effects (:class:`~kvstore.coordinator.effects.Send`,
:class:`~kvstore.coordinator.effects.Finish`) in order. Its states and legal moves are the table
``WRITE_TRANSITIONS`` in :mod:`kvstore.coordinator.state`.

* Validation happens in the constructor, before any effect exists (rule 1).
* **One partition** (EXECUTING): one ``ExecuteRequest``. Its reply is the answer. A call that
  may have run (``OutcomeUnknown`` from the shell, or the call's deadline) answers
  ``OutcomeUnknown``; a definite refusal (``Overloaded``, ``DiskFull``, ``WrongOwner``, a
  connection refused ...) ran nothing and is answered as itself, as a singleton's is.
* **Several partitions of one node** (EXECUTING too): when the shell passes ``node_of`` (each
  partition's owner) and every participant, the anchor included, has the same owner, one
  ``NodeExecuteRequest`` goes to that node, which prepares, decides and applies every slice in
  one pass of its runtime and one fsync (the one-round rule, extended to one node). It is
  answered exactly as a one-partition execute is (an ``ExecuteReply`` with each op's reason in
  request order, as 2PC would give them; refusals and ambiguous failures alike). The owner map
  is only an optimisation: a node that no longer owns every partition refuses the whole request
  with ``WrongOwner``, having run nothing.
* **Several partitions** (PREPARING): one ``PrepareRequest`` per participant, in parallel; the
  anchor's (partition of the first op) carries the new STAGING ``LedgerRecord``. All votes yes ->
  the transaction is committed (DESIGN section 6, rule 5a: a STAGING record whose participants
  all hold their intents durably is COMMITTED), so **parallel commit**: COMMITTING at once, with
  ``DecideRequest`` COMMITTED to the anchor (its record and its own slice in one durable step,
  re-sent like any decide) and a :class:`~kvstore.coordinator.fanout.Fanout` of commits to the
  others, all in one round. A no, refusal, failed call or the prepare deadline -> decide
  CANCELLED once every vote is in (or failed), with each op's reason from its own partition, in
  request order.
* **DECIDING** (cancels only): ``DecideRequest`` is a compare-and-set on the anchor's record. The
  record it
  returns is final, whoever wrote it (we may lose to recovery): COMMITTED -> COMMITTING,
  CANCELLED -> CANCELLING. Failed calls are retried every ``RESEND_INTERVAL_MS``, at most
  ``DECISION_ATTEMPTS_MAX`` attempts in all, then ``OutcomeUnknown`` (recovery finishes it).
* **COMMITTING / CANCELLING**: the anchor resolves its own intents with the decision (its
  ``decide`` commits or clears them in the same durable step), so a
  :class:`~kvstore.coordinator.fanout.Fanout` delivers the decision to every other participant.
  A commit is answered only once the anchor answered COMMITTED and every other participant
  acknowledged, so the client can read its own write (rule 6); a cancel is answered at once.
  When all acknowledged, a single ``CompleteRequest`` goes to the anchor (its answer does not
  matter). Past
  ``FINISH_DEADLINE_MS`` from creation it stops waiting (commit -> ``OutcomeUnknown``).
* **Idempotency token** (rule 2): with ``token_home`` (the service always passes it) a tokened
  transaction is anchored at its token's home partition, not its first key's, so every submission
  of one token, whatever its ops, meets the same ledger and token records; the home holds only the
  ledger record when none of the keys live there (one more participant, no one-round path). The
  anchor may answer that the token was already used. Different
  content -> ``IdempotencyMismatch`` at once. Same content -> a
  :class:`~kvstore.coordinator.follow.Follow` reports the original transaction's outcome. Either
  way our own attempt is then cancelled like any other (decide CANCELLED, cancels); FOLLOWING is
  the state where only the follow is left.

The client's answer is emitted exactly once (``result`` keeps it); ``done`` says that the object
needs no more events. Call ids are unique per object; replies to unknown ids are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvstore.coordinator.calls import Call, Calls, Purpose
from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.fanout import Fanout
from kvstore.coordinator.follow import Follow
from kvstore.coordinator.layout import KeyLayout
from kvstore.coordinator.results import TxnResult
from kvstore.coordinator.state import WRITE_TRANSITIONS, StateMachine, WriteState
from kvstore.errors import ErrorCode, InternalError
from kvstore.limits import (
    DECISION_ATTEMPTS_MAX,
    FINISH_DEADLINE_MS,
    PREPARE_DEADLINE_MS,
    RESEND_INTERVAL_MS,
    RPC_TIMEOUT_MS,
    TXN_OPS_MAX_DEFAULT,
)
from kvstore.messages import (
    CompleteRequest,
    DecideRequest,
    ExecuteReply,
    ExecuteRequest,
    LedgerRecord,
    LedgerReply,
    NodeExecuteRequest,
    OpOutcome,
    PrepareReply,
    PrepareRequest,
    ReasonCode,
    Reply,
    TokenHit,
    TxnState,
)
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants
from kvstore.ops import Op, txn_fingerprint, validate_token, validate_txn_ops
from kvstore.types import PartitionId, Timestamp, TxnId

__all__ = ["WriteTxn", "new_write_txn", "WriteEffect", "NO_ANSWER"]

WriteEffect = Send | Finish[TxnResult]

_US_PER_MS = 1000
_OK = OpOutcome()
NO_ANSWER = "participant did not answer"


def _conflict(message: str) -> OpOutcome:
    return OpOutcome(code=ReasonCode.TRANSACTION_CONFLICT, message=message)


class WriteTxn:
    """One write transaction's coordinator: feed it events, carry out its effects."""

    def __init__(
        self,
        txn_id: TxnId,
        ts: Timestamp,
        ops: Sequence[Op],
        partition_of: Callable[[str], PartitionId],
        now_us: int,
        *,
        token: str | None = None,
        txn_ops_max: int = TXN_OPS_MAX_DEFAULT,
        token_home: Callable[[str], PartitionId] | None = None,
        node_of: Callable[[PartitionId], str] | None = None,
        mutants: Mutants = NO_MUTANTS,
    ) -> None:
        validate_txn_ops(ops, txn_ops_max=txn_ops_max)
        self._answer_early = Mutant.ANSWER_BEFORE_APPLIED in mutants
        if token is not None:
            validate_token(token)
        self.txn_id = txn_id
        self.ts = ts
        self.ops = tuple(ops)
        self.token = token
        self._fingerprint = txn_fingerprint(self.ops) if token is not None else None
        anchor = token_home(token) if token is not None and token_home is not None else None
        self._layout = KeyLayout([op.key for op in self.ops], partition_of, anchor)
        participants = self._layout.participants
        self.one_node = (  # several partitions, one owner: one request to that node
            node_of is not None
            and len(participants) > 1
            and len({node_of(partition) for partition in participants}) == 1
        )
        self._finish_deadline_us = now_us + FINISH_DEADLINE_MS * _US_PER_MS
        self._machine = StateMachine(WriteState.INIT, WRITE_TRANSITIONS, f"write txn {txn_id}")
        self._calls = Calls()
        self._outcomes: list[OpOutcome] = [_OK] * len(self.ops)  # reasons, request order
        self._yes: set[PartitionId] = set()
        self._wanted: TxnState | None = None  # the decision we asked the ledger for
        self._decide_attempts = 0
        self._decide_due_us: int | None = None
        self._fanout: Fanout | None = None
        self._follow: Follow | None = None
        self._answer_is_ours = True  # False once a repeated token decides the answer
        self._anchor_answered = False  # the anchor voted (so it checked our token)
        self._refusal_waiting = False  # refused, but waiting for the remaining votes
        self._anchor_committed = False  # the anchor's record is COMMITTED, its slice applied
        self.cas_lost = False  # the ledger record had been decided otherwise (by recovery)
        self.result: TxnResult | None = None

    # --- observers ------------------------------------------------------------------------

    @property
    def state(self) -> WriteState:
        return self._machine.state

    @property
    def done(self) -> bool:
        return self._machine.state is WriteState.DONE

    @property
    def anchor(self) -> PartitionId:
        return self._layout.anchor

    @property
    def participants(self) -> tuple[PartitionId, ...]:
        return self._layout.participants

    @property
    def next_deadline_us(self) -> int | None:
        """When the shell should call ``step_tick`` next (None: only replies matter, or done)."""
        state = self._machine.state
        if state in (WriteState.INIT, WriteState.DONE):
            return None
        times = [self._calls.next_deadline_us, self._decide_due_us]
        if state in (WriteState.COMMITTING, WriteState.CANCELLING):
            times.append(self._finish_deadline_us)
            if self._fanout is not None:
                times.append(self._fanout.next_deadline_us)
        if self._follow is not None:
            times.append(self._follow.next_deadline_us)
        return min((t for t in times if t is not None), default=None)

    # --- events ---------------------------------------------------------------------------

    def step_start(self, now_us: int) -> list[WriteEffect]:
        with self._machine.guard():
            anchor = self._layout.anchor
            if self._layout.single or self.one_node:
                self._machine.move(WriteState.EXECUTING)
                request: ExecuteRequest | NodeExecuteRequest
                if self.one_node:
                    request = NodeExecuteRequest(
                        partition=anchor,
                        txn_id=self.txn_id,
                        ts=self.ts,
                        ops=self.ops,
                        placement=self._layout.placement,
                        token=self.token,
                        fingerprint=self._fingerprint,
                    )
                else:
                    request = ExecuteRequest(
                        partition=anchor,
                        txn_id=self.txn_id,
                        ts=self.ts,
                        ops=self.ops,
                        token=self.token,
                        fingerprint=self._fingerprint,
                    )
                deadline_us = now_us + PREPARE_DEADLINE_MS * _US_PER_MS
                return [self._calls.send(Purpose.EXECUTE, anchor, request, deadline_us)]
            self._machine.move(WriteState.PREPARING)
            ledger = LedgerRecord(
                txn_id=self.txn_id,
                ts=self.ts,
                state=TxnState.STAGING,
                participants=self._layout.participants,
                token=self.token,
                fingerprint=self._fingerprint,
            )
            deadline_us = now_us + PREPARE_DEADLINE_MS * _US_PER_MS
            effects: list[WriteEffect] = []
            for partition in self._layout.partitions:
                prepare = PrepareRequest(
                    partition=partition,
                    txn_id=self.txn_id,
                    ts=self.ts,
                    ops=self._layout.pick(partition, self.ops),
                    anchor=anchor,
                    ledger=ledger if partition == anchor else None,
                )
                effects.append(self._calls.send(Purpose.PREPARE, partition, prepare, deadline_us))
            return effects

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[WriteEffect]:
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is None:
                return []
            return self._on_reply(call, reply, now_us)

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[WriteEffect]:
        """The call failed: ``OutcomeUnknown`` if it may have run, else a definite refusal. Only
        a one-partition execute tells the two apart; every other phase handles a failure as
        "maybe applied" (a prepare or decide is safe to cancel or re-send either way)."""
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is None:
                return []
            if call.purpose is Purpose.EXECUTE and not error.ambiguous:
                return self._answer_and_end(self._error(error))
            return self._on_failed(call, now_us)

    def step_tick(self, now_us: int) -> list[WriteEffect]:
        with self._machine.guard():
            effects: list[WriteEffect] = []
            while (call := self._calls.take_expired(now_us)) is not None:
                effects += self._on_failed(call, now_us)
            state = self._machine.state
            if state is WriteState.DECIDING and self._due(self._decide_due_us, now_us):
                effects.append(self._send_decide(now_us))
            elif state in (WriteState.COMMITTING, WriteState.CANCELLING):
                if self._due(self._decide_due_us, now_us):  # parallel commit: the anchor's
                    effects.append(self._send_decide(now_us))
                if now_us >= self._finish_deadline_us:
                    effects += self._give_up()
                else:
                    effects += self._need_fanout().tick(now_us)
            if self._follow is not None:
                effects += self._follow.tick(now_us)
                effects += self._after_follow()
            return effects

    # --- dispatch -------------------------------------------------------------------------

    def _on_reply(self, call: Call, reply: Reply, now_us: int) -> list[WriteEffect]:
        purpose = call.purpose
        if purpose is Purpose.EXECUTE:
            return self._on_executed(reply, now_us)
        if purpose is Purpose.PREPARE:
            return self._on_vote(call.partition, reply, now_us)
        if purpose is Purpose.DECIDE:
            if self._machine.state is WriteState.COMMITTING:
                return self._on_anchor_committed(reply, now_us)
            return self._on_decided(reply, now_us)
        if purpose in (Purpose.COMMIT, Purpose.CANCEL):
            self._need_fanout().on_reply(call, reply, now_us)
            return self._after_fanout(now_us)
        if purpose is Purpose.LOOKUP:
            self._need_follow().on_reply(call, reply, now_us)
            return self._after_follow()
        raise InternalError(f"write txn {self.txn_id}: unexpected {purpose} call")

    def _on_failed(self, call: Call, now_us: int) -> list[WriteEffect]:
        purpose = call.purpose
        if purpose is Purpose.EXECUTE:
            return self._answer_and_end(self._error(ErrorCode.OutcomeUnknown))
        if purpose is Purpose.PREPARE:
            self._refused(call.partition, (), NO_ANSWER)
            return self._cancel(now_us)
        if purpose is Purpose.DECIDE:
            return self._decide_failed(now_us)
        if purpose in (Purpose.COMMIT, Purpose.CANCEL):
            self._need_fanout().on_failed(call, now_us)
            return []
        if purpose is Purpose.LOOKUP:
            self._need_follow().on_failed(now_us)
            return []
        raise InternalError(f"write txn {self.txn_id}: unexpected {purpose} call")

    # --- one partition ----------------------------------------------------------------------

    def _on_executed(self, reply: Reply, now_us: int) -> list[WriteEffect]:
        if not isinstance(reply, ExecuteReply) or reply.txn_id != self.txn_id:
            return self._answer_and_end(self._error(ErrorCode.OutcomeUnknown))
        if reply.token_hit is not None:  # nothing of ours was applied
            effects = self._on_token_hit(reply.token_hit, now_us)
            return effects + self._end_own()
        if reply.committed and reply.error is None:
            return self._answer_and_end(self._committed())
        outcomes = reply.outcomes if len(reply.outcomes) == len(self.ops) else ()
        if reply.error is not None:
            return self._answer_and_end(self._error(reply.error, outcomes))
        if not outcomes or all(o.code is ReasonCode.NONE for o in outcomes):
            outcomes = (_conflict("the partition rejected the transaction"),) * len(self.ops)
        return self._answer_and_end(self._error(ErrorCode.TransactionCanceled, outcomes))

    # --- prepare ----------------------------------------------------------------------------

    def _on_vote(self, partition: PartitionId, reply: Reply, now_us: int) -> list[WriteEffect]:
        if partition == self._layout.anchor:
            self._anchor_answered = isinstance(reply, PrepareReply)
        if not isinstance(reply, PrepareReply) or reply.txn_id != self.txn_id:
            self._refused(partition, (), NO_ANSWER)
            return self._cancel(now_us)
        if partition == self._layout.anchor and reply.token_hit is not None:
            effects = self._on_token_hit(reply.token_hit, now_us)
            return effects + self._decide(TxnState.CANCELLED, now_us)
        if reply.error is not None:
            self._refused(partition, reply.outcomes, f"partition refused: {reply.error.name}")
            return self._cancel(now_us)
        if not reply.accepted:
            self._refused(partition, reply.outcomes, "the partition rejected the transaction")
            return self._cancel(now_us)
        self._yes.add(partition)
        if self._refusal_waiting:  # refused before; decide once the last vote is in
            return self._cancel(now_us)
        if len(self._yes) == len(self._layout.partitions):
            return self._commit_parallel(now_us)
        return []

    def _cancel(self, now_us: int) -> list[WriteEffect]:
        """Decide CANCELLED, but not before every vote is in (each bounded by its deadline).

        Every op's reason comes from its own partition's vote. Deciding at the first "no" would
        report ``None`` for ops on partitions that had not voted yet, even when their condition
        failed too, and a client would retry a transaction that can never commit because the only
        reason it saw was a conflict (found by the API contract tests).

        The anchor's vote also says whether our token was used before. If it was, by a
        transaction with our content, the answer is that transaction's outcome, not our refusal:
        a client retrying after an ambiguous answer must learn that its first attempt committed
        (simulator seed 122 found a retry told "cancelled" after its first attempt committed).
        """
        if self._calls.outstanding(Purpose.PREPARE) > 0:
            self._refusal_waiting = True
            return []
        return self._decide(TxnState.CANCELLED, now_us)

    def _refused(self, partition: PartitionId, outcomes: Sequence[OpOutcome], message: str) -> None:
        """Record a partition's reasons; invent one per op when it gave none.

        A partition holding only the ledger record (a token's home) has no op to blame: its
        refusal becomes the reason of every op that has none yet.
        """
        if not self._layout.indices(partition):
            self._outcomes = [
                _conflict(message) if o.code is ReasonCode.NONE else o for o in self._outcomes
            ]
            return
        informative = any(o.code is not ReasonCode.NONE for o in outcomes)
        if not (informative and self._layout.place(partition, outcomes, self._outcomes)):
            reasons = [_conflict(message)] * len(self._layout.indices(partition))
            self._layout.place(partition, reasons, self._outcomes)

    def _on_token_hit(self, hit: TokenHit, now_us: int) -> list[WriteEffect]:
        """The anchor says our token was used before: the answer is no longer ours to give."""
        message = f"idempotency token already used by transaction {hit.txn_id}"
        self._refused(self._layout.anchor, (), message)
        effects: list[WriteEffect] = []
        if hit.same_content:
            self._follow = Follow(
                self._calls,
                original=hit.txn_id,
                anchor=self._layout.anchor,
                op_count=len(self.ops),
                fallback_ts=self.ts,
                deadline_us=self._finish_deadline_us,
            )
            effects += self._follow.start(now_us)
        else:
            effects += self._answer(self._error(ErrorCode.IdempotencyMismatch))
        self._answer_is_ours = False
        return effects

    # --- decide -----------------------------------------------------------------------------

    def _decide(self, decision: TxnState, now_us: int) -> list[WriteEffect]:
        self._calls.forget(Purpose.PREPARE)  # later votes are ignored
        self._machine.move(WriteState.DECIDING)
        self._wanted = decision
        return [self._send_decide(now_us)]

    def _send_decide(self, now_us: int) -> Send:
        if self._wanted is None:
            raise InternalError(f"write txn {self.txn_id}: deciding without a decision")
        self._decide_attempts += 1
        self._decide_due_us = None
        outcomes = tuple(self._outcomes) if self._wanted is TxnState.CANCELLED else ()
        request = DecideRequest(
            partition=self._layout.anchor,
            txn_id=self.txn_id,
            decision=self._wanted,
            outcomes=outcomes,
        )
        deadline_us = now_us + RPC_TIMEOUT_MS * _US_PER_MS
        return self._calls.send(Purpose.DECIDE, self._layout.anchor, request, deadline_us)

    def _on_decided(self, reply: Reply, now_us: int) -> list[WriteEffect]:
        if not isinstance(reply, LedgerReply) or reply.txn_id != self.txn_id:
            return self._decide_failed(now_us)
        record = reply.record
        if record is None:  # only a COMMITTED decision needs an existing record
            return self._answer_and_end(self._error(ErrorCode.OutcomeUnknown))
        if record.txn_id != self.txn_id or not record.state.decided:
            return self._decide_failed(now_us)
        self._decide_due_us = None
        self.cas_lost = record.state is not self._wanted
        self._anchor_committed = record.state is TxnState.COMMITTED
        # The anchor resolved its own intents with the decision (rule: decide resolves the
        # anchor's slice), so the decision goes to the other participants only.
        anchor = self._layout.anchor
        others = [p for p in self._layout.participants if p != anchor]
        fanout = Fanout(self._calls, self.txn_id, record.state, others)
        self._fanout = fanout
        if record.state is TxnState.COMMITTED:
            self._machine.move(WriteState.COMMITTING)
            return [*fanout.start(now_us), *self._after_fanout(now_us)]
        self._machine.move(WriteState.CANCELLING)
        outcomes = tuple(self._outcomes)
        error = ErrorCode.TransactionCanceled
        if self.token is not None and not self._anchor_answered and not record.participants:
            # The anchor never took our prepare (the record is a placeholder), so it never told
            # us whether the token was used before: a first attempt may have committed.
            error = ErrorCode.OutcomeUnknown
        effects = self._answer(self._error(error, outcomes))
        return effects + fanout.start(now_us) + self._after_fanout(now_us)

    def _decide_failed(self, now_us: int) -> list[WriteEffect]:
        if self._decide_attempts >= DECISION_ATTEMPTS_MAX:
            return self._answer_and_end(self._error(ErrorCode.OutcomeUnknown))
        self._decide_due_us = now_us + RESEND_INTERVAL_MS * _US_PER_MS
        return []

    # --- parallel commit (rule 5a) -------------------------------------------------------------

    def _commit_parallel(self, now_us: int) -> list[WriteEffect]:
        """Every participant voted yes, so its intents are durable: the transaction is committed
        by rule 5a, and both halves of the commit go out at once: ``DecideRequest`` COMMITTED to
        the anchor (its record leaves STAGING and its own slice is applied, in one durable step)
        and ``CommitRequest`` to every other participant. The client is answered once the anchor
        answered COMMITTED and every other participant acknowledged (rule 6)."""
        self._calls.forget(Purpose.PREPARE)  # later votes are ignored
        self._machine.move(WriteState.COMMITTING)
        self._wanted = TxnState.COMMITTED
        anchor = self._layout.anchor
        others = [p for p in self._layout.participants if p != anchor]
        fanout = Fanout(self._calls, self.txn_id, TxnState.COMMITTED, others)
        self._fanout = fanout
        effects: list[WriteEffect] = [self._send_decide(now_us), *fanout.start(now_us)]
        if self._answer_early:  # ANSWER_BEFORE_APPLIED: at the implicit commit, as CockroachDB
            effects += self._answer(self._committed())
        return effects + self._after_fanout(now_us)

    def _on_anchor_committed(self, reply: Reply, now_us: int) -> list[WriteEffect]:
        if not isinstance(reply, LedgerReply) or reply.txn_id != self.txn_id:
            return self._decide_failed(now_us)
        record = reply.record
        if record is None or record.txn_id != self.txn_id:  # the anchor lost its record
            return self._answer_and_end(self._error(ErrorCode.OutcomeUnknown))
        if not record.state.decided:
            return self._decide_failed(now_us)
        self._decide_due_us = None
        if record.state is not TxnState.COMMITTED:
            # Rule 5a makes this impossible: every participant voted yes, and recovery cancels
            # only on a durable refusal. Commits went out already; claim nothing.
            self.cas_lost = True
            return self._answer_and_end(self._error(ErrorCode.OutcomeUnknown))
        self._anchor_committed = True
        return self._after_fanout(now_us)

    # --- commit / cancel ----------------------------------------------------------------------

    def _after_fanout(self, now_us: int) -> list[WriteEffect]:
        fanout = self._need_fanout()
        committing = fanout.decision is TxnState.COMMITTED
        if not fanout.done or (committing and not self._anchor_committed):
            return []
        complete = CompleteRequest(partition=self._layout.anchor, txn_id=self.txn_id)
        effects: list[WriteEffect] = [
            self._calls.send_untracked(complete, now_us + RPC_TIMEOUT_MS * _US_PER_MS)
        ]
        if fanout.decision is TxnState.COMMITTED:
            return effects + self._answer_and_end(self._committed())
        return effects + self._end_own()

    def _give_up(self) -> list[WriteEffect]:
        """The finish deadline passed with participants still unacknowledged."""
        self._need_fanout().stop()
        if self._machine.state is WriteState.COMMITTING:
            return self._answer_and_end(self._error(ErrorCode.OutcomeUnknown))
        return self._end_own()

    # --- follow -----------------------------------------------------------------------------

    def _after_follow(self) -> list[WriteEffect]:
        follow = self._follow
        if follow is None or follow.result is None:
            return []
        effects: list[WriteEffect] = []
        if self.result is None:
            self.result = follow.result
            effects.append(Finish(follow.result))
        if self._machine.state is WriteState.FOLLOWING:
            self._end_all()
        return effects

    # --- answers and endings ----------------------------------------------------------------

    def _committed(self) -> TxnResult:
        return TxnResult(committed=True, txn_id=self.txn_id, ts=self.ts)

    def _error(self, error: ErrorCode, outcomes: tuple[OpOutcome, ...] = ()) -> TxnResult:
        return TxnResult(
            committed=False, txn_id=self.txn_id, ts=self.ts, outcomes=outcomes, error=error
        )

    def _answer(self, result: TxnResult) -> list[WriteEffect]:
        """Give the client ``result`` unless it was answered already or a follow answers."""
        if not self._answer_is_ours or self.result is not None:
            return []
        self.result = result
        return [Finish(result)]

    def _answer_and_end(self, result: TxnResult) -> list[WriteEffect]:
        return self._answer(result) + self._end_own()

    def _end_own(self) -> list[WriteEffect]:
        """Our own transaction needs nothing more; wait only for a follow still running."""
        self._calls.forget(Purpose.EXECUTE, Purpose.DECIDE, Purpose.COMMIT, Purpose.CANCEL)
        self._decide_due_us = None
        if self._fanout is not None:
            self._fanout.stop()
        if self._follow is not None and not self._follow.done:
            self._machine.move(WriteState.FOLLOWING)
        else:
            self._end_all()
        return []

    def _end_all(self) -> None:
        self._calls.forget()
        self._machine.move(WriteState.DONE)

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _due(at_us: int | None, now_us: int) -> bool:
        return at_us is not None and now_us >= at_us

    def _need_fanout(self) -> Fanout:
        if self._fanout is None:
            raise InternalError(f"write txn {self.txn_id}: no fan-out in {self.state.name}")
        return self._fanout

    def _need_follow(self) -> Follow:
        if self._follow is None:
            raise InternalError(f"write txn {self.txn_id}: no follow in {self.state.name}")
        return self._follow


def new_write_txn(
    txn_id: TxnId,
    ts: Timestamp,
    ops: Sequence[Op],
    partition_of: Callable[[str], PartitionId],
    now_us: int,
    *,
    token: str | None = None,
    txn_ops_max: int = TXN_OPS_MAX_DEFAULT,
    node_of: Callable[[PartitionId], str] | None = None,
    mutants: Mutants = NO_MUTANTS,
) -> WriteTxn:
    """A client's write transaction as every runtime builds it (the coordinator library and
    the simulator alike): a tokened one is anchored on its token's home partition, so every
    submission of one token meets the same token record, whatever its keys; with ``node_of``
    (each partition's owner), one whose partitions share an owner runs in one request."""
    return WriteTxn(
        txn_id,
        ts,
        ops,
        partition_of,
        now_us,
        token=token,
        txn_ops_max=txn_ops_max,
        token_home=partition_of,
        node_of=node_of,
        mutants=mutants,
    )
