"""The calls a coordinator core has in flight, by call id.

Theory of operation
-------------------
A core allocates a fresh call id for every request it sends, including a re-send of the same
request, so a late reply to an abandoned attempt can never be mistaken for the current one.
:class:`Calls` remembers each outstanding call with its :class:`Purpose`, partition, request and
deadline. A reply or failure first *takes* its call out of the book: an id that is not there
(never issued, already answered, given up on, or sent untracked) is ignored by the core. A phase
that ends *forgets* its calls, which is how "ignore later votes" is done. The book also feeds the
core's ``next_deadline_us``: a call still unanswered at its deadline is treated by the core as
failed on the next tick, so progress never depends on the shell reporting every timeout.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kvstore.coordinator.effects import Send
from kvstore.messages import Request
from kvstore.types import PartitionId

__all__ = ["Purpose", "Call", "Calls"]


class Purpose(enum.Enum):
    EXECUTE = "execute"
    PREPARE = "prepare"
    DECIDE = "decide"
    COMMIT = "commit"
    CANCEL = "cancel"
    LOOKUP = "lookup"
    READ = "read"


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    call_id: int
    purpose: Purpose
    partition: PartitionId
    request: Request
    deadline_us: int


class Calls:
    """Outstanding calls of one core object; ids are unique within it."""

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: dict[int, Call] = {}

    def send(
        self, purpose: Purpose, partition: PartitionId, request: Request, deadline_us: int
    ) -> Send:
        """Record a new call and return the effect that sends it."""
        call_id = self._allocate()
        self._pending[call_id] = Call(
            call_id=call_id,
            purpose=purpose,
            partition=partition,
            request=request,
            deadline_us=deadline_us,
        )
        return Send(call_id=call_id, request=request, deadline_us=deadline_us)

    def send_untracked(self, request: Request, deadline_us: int) -> Send:
        """A fire-and-forget call: its reply or failure will be ignored."""
        return Send(call_id=self._allocate(), request=request, deadline_us=deadline_us)

    def take(self, call_id: int) -> Call | None:
        """Remove and return the call, or ``None`` for an unknown or abandoned id."""
        return self._pending.pop(call_id, None)

    def take_expired(self, now_us: int) -> Call | None:
        """Remove and return one call whose deadline has passed (oldest id first)."""
        for call_id, call in self._pending.items():
            if call.deadline_us <= now_us:
                del self._pending[call_id]
                return call
        return None

    def forget(self, *purposes: Purpose) -> None:
        """Abandon every outstanding call of these purposes (all calls when none given)."""
        for call_id in [
            call_id
            for call_id, call in self._pending.items()
            if not purposes or call.purpose in purposes
        ]:
            del self._pending[call_id]

    def outstanding(self, purpose: Purpose) -> int:
        return sum(1 for call in self._pending.values() if call.purpose is purpose)

    @property
    def next_deadline_us(self) -> int | None:
        return min((call.deadline_us for call in self._pending.values()), default=None)

    def _allocate(self) -> int:
        call_id = self._next_id
        self._next_id += 1
        return call_id
