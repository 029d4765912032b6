"""The read-only transaction coordinator: repeated read rounds until two agree (writes nothing).

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
from kvstore.errors import ErrorCode, ValidationError
from kvstore.limits import READ_KEYS_MAX, READ_ROUNDS_MAX, RPC_TIMEOUT_MS
from kvstore.messages import ReadEntry, ReadReply, ReadRequest, Reply
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants
from kvstore.types import PartitionId
from kvstore.values import validate_key

__all__ = ["ReadTxn", "ReadEffect", "validate_read_keys", "new_read", "read_conflicted"]

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
        validate_key(key, f"{field}[{index}]")
        if key in seen:
            raise ValidationError(
                f"{field}[{index}]", f"key {key!r} already named at position {seen[key]}"
            )
        seen[key] = index
    return tuple(keys)


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
        mutants: Mutants = NO_MUTANTS,
    ) -> None:
        self.keys = validate_read_keys(keys)
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
        del error, now_us  # whatever went wrong, the read can be retried from scratch
        with self._machine.guard():
            call = self._calls.take(call_id)
            if call is None:
                return []
            return self._unavailable(call)

    def step_tick(self, now_us: int) -> list[ReadEffect]:
        with self._machine.guard():
            call = self._calls.take_expired(now_us)
            if call is None:
                return []
            return self._unavailable(call)

    def _unavailable(self, call: Call) -> list[ReadEffect]:
        """End with ``Unavailable``, naming the partition that did not answer."""
        return self._end(
            ReadResult(error=ErrorCode.Unavailable, rounds=self._rounds, partition=call.partition)
        )

    def _round(self, now_us: int) -> list[ReadEffect]:
        self._machine.move(ReadState.READING)
        self._rounds += 1
        self._current = [None] * len(self.keys)
        self._waiting = set(self._layout.partitions)
        deadline_us = now_us + RPC_TIMEOUT_MS * _US_PER_MS
        effects: list[ReadEffect] = []
        for partition in self._layout.partitions:
            request = ReadRequest(partition=partition, keys=self._layout.pick(partition, self.keys))
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
        if self._one_round:  # the mutant trusts a single round
            return self._end(ReadResult(items=latest, rounds=self._rounds))
        if self._previous is not None and _stable(self._previous, latest):
            return self._end(ReadResult(items=latest, rounds=self._rounds))
        if len(self._layout.partitions) == 1 and not any(entry.pending for entry in latest):
            # One partition answers a round in one step of its serial order: the round is
            # already a snapshot of every key, so a second round would add nothing.
            return self._end(ReadResult(items=latest, rounds=self._rounds))
        rounds_needed = 2 if any(entry.pending for entry in latest) else 1
        if self._rounds + rounds_needed > READ_ROUNDS_MAX:
            return self._end(ReadResult(error=ErrorCode.TransactionConflict, rounds=self._rounds))
        self._previous = latest
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
    mutants: Mutants = NO_MUTANTS,
) -> Retrying[ReadResult]:
    """A client's read-only transaction, run again after conflicts (see the module)."""
    checked = validate_read_keys(keys)
    return Retrying(
        lambda at_us: ReadTxn(checked, partition_of, at_us, mutants=mutants),
        read_conflicted,
        jitter,
        now_us,
        name="read txn",
    )
