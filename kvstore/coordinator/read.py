"""The read-only transaction coordinator: read rounds until two agree, or one snapshot round.

Theory of operation
-------------------
:class:`ReadTxn` implements DESIGN section 6 rule 9 (reference section 3) as a pure state machine
with the same event interface as the write coordinator. A *round* sends one ``ReadRequest`` per
partition in parallel and is complete when every partition answered; the next round starts only
then, so there is an instant between any two rounds. The transaction succeeds when two
consecutive complete rounds agree, for every key, on ``(exists, version)`` and no key had a
pending intent in either round: each key then held the returned value over its whole interval,
so all held together at that instant. Otherwise the latest round becomes the first of the next
pair. When every key lives on one partition, one round with no pending intent is enough: the
partition answers it in one step of its serial order (a single event-loop step, after which the
reply waits only for durability), so it is a snapshot of those keys at that step, exactly what a
singleton get of one key is. This saves a round trip on the one-partition reads that DynamoDB
still reads twice. At most ``READ_ROUNDS_MAX`` rounds are run in all; when no success is
possible within that bound (a pending intent in the latest round needs two more rounds) it
stops early with ``TransactionConflict``. Any failed call ends it with ``Unavailable``: a read
changes nothing, so the client may simply retry. Items are answered in request key order.

Snapshot reads (``at``)
-----------------------
With a timestamp ``at`` (docs/api.md, "Read-only transactions"), every round sends
``ReadRequest(..., at=at)``: each partition answers each key's version *as of* ``at`` from its
version history, and first raises its read floor to ``at``, so no write at or below ``at``
commits there afterwards (:meth:`~kvstore.storage_node.core.PartitionCore.read_at`). What a
partition answers for ``at`` therefore never changes, except through intents at or below ``at``
already prepared before the floor rose: those keys come back ``pending`` (the node first waits
up to ``INTENT_WAIT_MS`` for them), and their outcome decides what ``at`` shows. Intents above
``at`` are not reported: they cannot change the versions as of ``at``, so a snapshot read never
fails because of them. Hence ONE complete round with no ``pending`` entry is the answer, on any
number of partitions: every key's version as of ``at``, a consistent cut in timestamp order
(serializable, as of ``at``; not strictly serializable, since it misses writes acknowledged
after ``at``). There is no two-round comparison. A round with a pending entry is run again,
within the same ``READ_ROUNDS_MAX`` bound, then ``TransactionConflict`` (re-run by
:func:`new_read` like any other conflict). A partition that refuses ``at`` as older than the
versions it keeps (``SnapshotTooOld``: the window, or a restart or a change of leader since)
ends the read with that code: no retry can bring the versions back. The answer carries ``at``.
That ``at`` lies within ``SNAPSHOT_WINDOW_MS`` and not after the coordinator's clock is checked
before a core is built (:func:`check_snapshot_at`, called by the coordinator library's
``read`` and the SDK's in-memory backend): the core takes it as given.

:func:`new_read` is the read every runtime runs (the coordinator library and the simulator): a
``ReadTxn`` that ended in ``TransactionConflict`` is run again, from scratch, after a short
jittered pause (:class:`~kvstore.coordinator.retry.Retrying`, at most ``CONFLICT_RETRIES_MAX``
times): intents usually live one commit round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvstore.coordinator.calls import Call, Calls, Purpose
from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.layout import KeyLayout
from kvstore.coordinator.results import ReadResult
from kvstore.coordinator.retry import Jitter, Retrying
from kvstore.coordinator.state import READ_TRANSITIONS, ReadState, StateMachine
from kvstore.errors import ErrorCode, SnapshotTooOld, ValidationError
from kvstore.limits import READ_KEYS_MAX, READ_ROUNDS_MAX, RPC_TIMEOUT_MS, SNAPSHOT_WINDOW_MS
from kvstore.messages import ReadEntry, ReadReply, ReadRequest, Reply
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants
from kvstore.types import PartitionId, Timestamp
from kvstore.values import validate_key

__all__ = [
    "ReadTxn",
    "ReadEffect",
    "validate_read_keys",
    "check_snapshot_at",
    "new_read",
    "read_conflicted",
]

ReadEffect = Send | Finish[ReadResult]

_US_PER_MS = 1000


def validate_read_keys(keys: Sequence[str], field: str = "keys") -> tuple[str, ...]:
    """1..READ_KEYS_MAX valid, distinct keys."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
        raise ValidationError(field, "must be a list of keys")
    if not keys:
        raise ValidationError(field, "a read transaction needs at least one key")
    if len(keys) > READ_KEYS_MAX:
        raise ValidationError(field, f"{len(keys)} keys; at most {READ_KEYS_MAX} allowed")
    seen: dict[str, int] = {}
    for index, key in enumerate(keys):
        validate_key(key, f"{field}[{index}]", internal=True)
        if key in seen:
            raise ValidationError(
                f"{field}[{index}]", f"key {key!r} already named at position {seen[key]}"
            )
        seen[key] = index
    return tuple(keys)


def check_snapshot_at(
    at: Timestamp, now: Timestamp, now_us: int, *, window_ms: int = SNAPSHOT_WINDOW_MS
) -> None:
    """Refuse a snapshot read's ``at`` after ``now`` (the coordinator's clock, a fresh reading):
    ``ValidationError``, since a future ``at`` would raise the partitions' read floors above the
    timestamps writers are about to use; or older than ``window_ms`` before the wall clock
    ``now_us``: ``SnapshotTooOld``, since the partitions keep replaced versions that long."""
    if at > now:
        raise ValidationError(
            "at",
            f"is in the future: {at} is after this coordinator's clock ({now}); read at a "
            "timestamp the store returned (a commit's or an item's ts)",
            details={"now": str(now)},
        )
    if at.physical_us < now_us - window_ms * _US_PER_MS:
        age_ms = (now_us - at.physical_us) // _US_PER_MS
        raise SnapshotTooOld(
            f"at {at} is {age_ms} ms old; a read at a timestamp reaches back at most "
            f"{window_ms} ms (the snapshot window)",
            details={"at": str(at), "window_ms": window_ms},
        )


def _stable(first: Sequence[ReadEntry], second: Sequence[ReadEntry]) -> bool:
    return all(
        not a.pending and not b.pending and a.exists == b.exists and a.version == b.version
        for a, b in zip(first, second, strict=True)
    )


class ReadTxn:
    """One read-only transaction's coordinator: feed it events, carry out its effects."""

    def __init__(
        self,
        keys: Sequence[str],
        partition_of: Callable[[str], PartitionId],
        now_us: int,
        *,
        at: Timestamp | None = None,
        mutants: Mutants = NO_MUTANTS,
    ) -> None:
        """``at``: a snapshot read as of that timestamp (see the module); None: the latest."""
        self.keys = validate_read_keys(keys)
        self.at = at
        self._one_round = Mutant.SKIP_SECOND_READ_ROUND in mutants
        self.created_us = now_us
        self._layout = KeyLayout(self.keys, partition_of)
        self._machine = StateMachine(ReadState.INIT, READ_TRANSITIONS, "read txn")
        self._calls = Calls()
        self._rounds = 0
        self._previous: tuple[ReadEntry, ...] | None = None
        self._current: list[ReadEntry | None] = []
        self._waiting: set[PartitionId] = set()
        self.result: ReadResult | None = None

    @property
    def state(self) -> ReadState:
        return self._machine.state

    @property
    def done(self) -> bool:
        return self._machine.state is ReadState.DONE

    @property
    def rounds(self) -> int:
        return self._rounds

    @property
    def next_deadline_us(self) -> int | None:
        return self._calls.next_deadline_us

    def step_start(self, now_us: int) -> list[ReadEffect]:
        with self._machine.guard():
            return self._round(now_us)

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[ReadEffect]:
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is None:
                return []
            if not self._take_entries(call, reply):
                return self._unavailable(call)
            if self._waiting:
                return []
            return self._round_complete(now_us)

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[ReadEffect]:
        del now_us
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is None:
                return []
            if error is ErrorCode.SnapshotTooOld and self.at is not None:
                # The partition no longer keeps the versions as of ``at``: final, not retried.
                return self._end(self._result(error=error, partition=call.partition))
            # Whatever else went wrong, the read can be retried from scratch.
            return self._unavailable(call)

    def step_tick(self, now_us: int) -> list[ReadEffect]:
        with self._machine.guard():
            call = self._calls.take_expired(now_us)
            if call is None:
                return []
            return self._unavailable(call)

    def _unavailable(self, call: Call) -> list[ReadEffect]:
        """End with ``Unavailable``, naming the partition that did not answer."""
        return self._end(self._result(error=ErrorCode.Unavailable, partition=call.partition))

    def _result(
        self,
        *,
        items: tuple[ReadEntry, ...] = (),
        error: ErrorCode | None = None,
        partition: PartitionId | None = None,
    ) -> ReadResult:
        return ReadResult(
            items=items, error=error, rounds=self._rounds, partition=partition, at=self.at
        )

    def _round(self, now_us: int) -> list[ReadEffect]:
        self._machine.move(ReadState.READING)
        self._rounds += 1
        self._current = [None] * len(self.keys)
        self._waiting = set(self._layout.partitions)
        deadline_us = now_us + RPC_TIMEOUT_MS * _US_PER_MS
        effects: list[ReadEffect] = []
        for partition in self._layout.partitions:
            keys = self._layout.pick(partition, self.keys)
            request = ReadRequest(partition=partition, keys=keys, at=self.at)
            effects.append(self._calls.send(Purpose.READ, partition, request, deadline_us))
        return effects

    def _take_entries(self, call: Call, reply: Reply) -> bool:
        """Store a partition's entries at their request positions; False if malformed."""
        if not isinstance(reply, ReadReply):
            return False
        wanted = self._layout.pick(call.partition, self.keys)
        by_key = {entry.key: entry for entry in reply.entries}
        if len(reply.entries) != len(wanted) or set(by_key) != set(wanted):
            return False
        self._layout.place(call.partition, [by_key[key] for key in wanted], self._current)
        self._waiting.discard(call.partition)
        return True

    def _round_complete(self, now_us: int) -> list[ReadEffect]:
        latest = tuple(entry for entry in self._current if entry is not None)
        pending = any(entry.pending for entry in latest)
        if self.at is not None:
            return self._snapshot_round_complete(latest, pending, now_us)
        if self._one_round:  # the mutant trusts a single round
            return self._end(self._result(items=latest))
        if self._previous is not None and _stable(self._previous, latest):
            return self._end(self._result(items=latest))
        if len(self._layout.partitions) == 1 and not pending:
            # One partition answers a round in one step of its serial order: the round is
            # already a snapshot of every key, so a second round would add nothing.
            return self._end(self._result(items=latest))
        rounds_needed = 2 if pending else 1
        if self._rounds + rounds_needed > READ_ROUNDS_MAX:
            return self._end(self._result(error=ErrorCode.TransactionConflict))
        self._previous = latest
        return self._round(now_us)

    def _snapshot_round_complete(
        self, latest: tuple[ReadEntry, ...], pending: bool, now_us: int
    ) -> list[ReadEffect]:
        """A read at ``at``: one round without a pending entry is the answer (see the module)."""
        if not pending:
            return self._end(self._result(items=latest))
        if self._rounds + 1 > READ_ROUNDS_MAX:
            return self._end(self._result(error=ErrorCode.TransactionConflict))
        return self._round(now_us)

    def _end(self, result: ReadResult) -> list[ReadEffect]:
        self._calls.forget()
        self._machine.move(ReadState.DONE)
        self.result = result
        return [Finish(result)]


def read_conflicted(result: ReadResult) -> bool:
    """The read met pending intents in every round it could run."""
    return result.error is ErrorCode.TransactionConflict


def new_read(
    keys: Sequence[str],
    partition_of: Callable[[str], PartitionId],
    now_us: int,
    jitter: Jitter,
    *,
    at: Timestamp | None = None,
    mutants: Mutants = NO_MUTANTS,
) -> Retrying[ReadResult]:
    """A client's read-only transaction (as of ``at`` when given), run again after conflicts
    (see the module)."""
    checked = validate_read_keys(keys)
    return Retrying(
        lambda start_us: ReadTxn(checked, partition_of, start_us, at=at, mutants=mutants),
        read_conflicted,
        jitter,
        now_us,
        name="read txn",
    )
