"""The states of every coordinator core and the only moves allowed between them.

Theory of operation
-------------------
All transition rules of the coordinator live here, as data: one enum of states per core and one
table ``state -> states it may move to``. Cores change state only through
:meth:`StateMachine.move`, which checks the table. An illegal move is a bug on our side: it raises
:class:`~kvstore.errors.InternalError` and *poisons* the machine, so every later event on the same
core raises too instead of acting on a half-updated object. Events run inside
:meth:`StateMachine.guard`, which also poisons the machine when anything else escapes mid-event.

Write transaction (``WriteState``)::

    INIT       -> EXECUTING (one partition) | PREPARING (several)
    EXECUTING  -> DONE | FOLLOWING (token reused with the same content)
    PREPARING  -> COMMITTING (all yes: parallel commit, the anchor's decide and the others'
                  commits at once) | DECIDING (a no, failure or the deadline: cancel)
    DECIDING   -> COMMITTING | CANCELLING (the ledger's answer)
                | DONE | FOLLOWING (no usable answer: OutcomeUnknown)
    COMMITTING -> DONE (all acknowledged, or the finish deadline)
    CANCELLING -> DONE | FOLLOWING
    FOLLOWING  -> DONE

FOLLOWING means "our own transaction needs nothing more; the client's answer is the outcome of
the earlier transaction that used the same idempotency token". Read transaction (``ReadState``):
INIT -> READING (-> READING for each further round) -> DONE. Recovery (``RecoveryState``):
INIT -> DRIVING -> DONE, or INIT -> DONE when there is nothing to drive; a STAGING record first
goes INIT -> PROBING (asking its participants, then deciding) -> DRIVING.

One call or one fan-out of calls (``CallState``: singleton get and write, token lookup, a scan
page): INIT -> CALLING -> DONE, or INIT -> DONE when there is nothing to ask (an empty scan
range). Conflict retries (``RetryState``, around a read or a singleton write): INIT -> RUNNING
(an attempt) -> PAUSED (the jittered pause before the next attempt) -> RUNNING ... -> DONE.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import TracebackType
from typing import Final, Generic, TypeVar

from kvstore.errors import InternalError

__all__ = [
    "StateMachine",
    "WriteState",
    "WRITE_TRANSITIONS",
    "ReadState",
    "READ_TRANSITIONS",
    "RecoveryState",
    "RECOVERY_TRANSITIONS",
    "CallState",
    "CALL_TRANSITIONS",
    "RetryState",
    "RETRY_TRANSITIONS",
]

S = TypeVar("S", bound=enum.Enum)


class WriteState(enum.Enum):
    INIT = "INIT"
    EXECUTING = "EXECUTING"  # one partition, or one node: one (Node)ExecuteRequest in flight
    PREPARING = "PREPARING"  # collecting votes
    DECIDING = "DECIDING"  # compare-and-set on the anchor's ledger record
    COMMITTING = "COMMITTING"  # COMMITTED: commits until every participant acknowledges
    CANCELLING = "CANCELLING"  # CANCELLED: client answered, cancels until acknowledged
    FOLLOWING = "FOLLOWING"  # waiting for the outcome of the token's original transaction
    DONE = "DONE"


WRITE_TRANSITIONS: Final[Mapping[WriteState, frozenset[WriteState]]] = {
    WriteState.INIT: frozenset({WriteState.EXECUTING, WriteState.PREPARING}),
    WriteState.EXECUTING: frozenset({WriteState.FOLLOWING, WriteState.DONE}),
    WriteState.PREPARING: frozenset({WriteState.DECIDING, WriteState.COMMITTING}),
    WriteState.DECIDING: frozenset(
        {WriteState.COMMITTING, WriteState.CANCELLING, WriteState.FOLLOWING, WriteState.DONE}
    ),
    WriteState.COMMITTING: frozenset({WriteState.DONE}),
    WriteState.CANCELLING: frozenset({WriteState.FOLLOWING, WriteState.DONE}),
    WriteState.FOLLOWING: frozenset({WriteState.DONE}),
    WriteState.DONE: frozenset(),
}


class ReadState(enum.Enum):
    INIT = "INIT"
    READING = "READING"  # one round in flight
    DONE = "DONE"


READ_TRANSITIONS: Final[Mapping[ReadState, frozenset[ReadState]]] = {
    ReadState.INIT: frozenset({ReadState.READING}),
    ReadState.READING: frozenset({ReadState.READING, ReadState.DONE}),
    ReadState.DONE: frozenset(),
}


class RecoveryState(enum.Enum):
    INIT = "INIT"
    PROBING = "PROBING"  # a STAGING record: asking the participants, then deciding (rule 5a)
    DRIVING = "DRIVING"  # commits or cancels until every participant acknowledges
    DONE = "DONE"


RECOVERY_TRANSITIONS: Final[Mapping[RecoveryState, frozenset[RecoveryState]]] = {
    RecoveryState.INIT: frozenset(
        {RecoveryState.PROBING, RecoveryState.DRIVING, RecoveryState.DONE}
    ),
    RecoveryState.PROBING: frozenset({RecoveryState.DRIVING, RecoveryState.DONE}),
    RecoveryState.DRIVING: frozenset({RecoveryState.DONE}),
    RecoveryState.DONE: frozenset(),
}


class CallState(enum.Enum):
    INIT = "INIT"
    CALLING = "CALLING"  # the call (or a scan page's calls) in flight
    DONE = "DONE"


CALL_TRANSITIONS: Final[Mapping[CallState, frozenset[CallState]]] = {
    CallState.INIT: frozenset({CallState.CALLING, CallState.DONE}),
    CallState.CALLING: frozenset({CallState.DONE}),
    CallState.DONE: frozenset(),
}


class RetryState(enum.Enum):
    INIT = "INIT"
    RUNNING = "RUNNING"  # an attempt is running
    PAUSED = "PAUSED"  # the last attempt met a conflict; the next starts at the pause's end
    DONE = "DONE"


RETRY_TRANSITIONS: Final[Mapping[RetryState, frozenset[RetryState]]] = {
    RetryState.INIT: frozenset({RetryState.RUNNING}),
    RetryState.RUNNING: frozenset({RetryState.PAUSED, RetryState.DONE}),
    RetryState.PAUSED: frozenset({RetryState.RUNNING}),
    RetryState.DONE: frozenset(),
}


# Transition tables already found complete, by id; the table itself is kept, so an id can never
# be reused by another table (tables are module constants; tests may build their own).
_CHECKED_TABLES: dict[int, Mapping[object, frozenset[object]]] = {}


class StateMachine(Generic[S]):
    """The current state of one core, moved only along ``table``; poisoned by any bug.

    ``with machine.guard(): ...`` runs one event (see :meth:`guard`). The machine is its own
    guard (``__enter__``/``__exit__``) rather than a generator context manager: cores enter it on
    every event, and a generator costs several times as much per use."""

    def __init__(self, initial: S, table: Mapping[S, frozenset[S]], name: str) -> None:
        if _CHECKED_TABLES.get(id(table)) is not table:  # check each table once
            missing = [state for state in type(initial) if state not in table]
            if missing:
                raise InternalError(f"{name}: no transition entry for {missing}")
            _CHECKED_TABLES[id(table)] = table  # type: ignore[assignment]
        self._state = initial
        self._table = table
        self._name = name
        self._poison: str | None = None

    @property
    def state(self) -> S:
        return self._state

    @property
    def poisoned(self) -> bool:
        return self._poison is not None

    def check(self) -> None:
        """Raise if an earlier event broke this machine."""
        if self._poison is not None:
            raise InternalError(f"{self._name} is unusable after an earlier error: {self._poison}")

    def move(self, to: S) -> None:
        """Move to ``to``; raise and poison the machine when the table does not allow it."""
        self.check()
        if to not in self._table[self._state]:
            self._poison = f"illegal transition {self._state.name} -> {to.name}"
            raise InternalError(f"{self._name}: {self._poison}")
        self._state = to

    def guard(self) -> StateMachine[S]:
        """Run one event: refuse if poisoned, and poison on anything escaping the event."""
        return self

    def __enter__(self) -> None:
        self.check()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None and self._poison is None:
            self._poison = f"{kind.__name__} during an event"
