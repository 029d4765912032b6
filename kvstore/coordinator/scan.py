"""One page of a scan as a core: ask every partition, merge in key order, keep ``limit`` items.

Theory of operation
-------------------
Keys are spread over partitions by hash, so any partition may hold the next key of a range
(DESIGN section 7). :class:`Scan` asks every partition for its first ``limit + 1`` committed
items with ``lower <= key < end`` (``lower``: the range start, or the cursor ``after`` when it is
further), at most ``fanout_max`` calls in flight at once (the next partition is asked as soon as
one answers), merges the pages in key order, drops keys not past ``after`` and keeps ``limit``.
The page's cursor is its last key when more may follow (a partition had more, or the merge was
cut), ``None`` when the range is exhausted. An empty range finishes at once, with no call.

A page is *not* a snapshot across partitions: each partition answers its part at its own instant
(items are committed data, intents are invisible). Each item, and each key of the range shown
absent, is what its partition held at one instant between the start and the end of the page.

Any failed call (a refusal, a failure, the deadline) fails the page with that code, reported
once every call has ended: the first failure in partition order, naming its partition. A read
changes nothing, so the caller may simply ask again.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.state import CALL_TRANSITIONS, CallState, StateMachine
from kvstore.errors import ErrorCode, ValidationError
from kvstore.limits import FANOUT_CALLS_MAX, RPC_TIMEOUT_MS, SCAN_PAGE_ITEMS_MAX
from kvstore.messages import ItemView, Reply, ScanReply, ScanRequest
from kvstore.types import Key, PartitionId

__all__ = ["Scan", "ScanPage", "ScanResult", "ScanEffect"]

_US_PER_MS = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanPage:
    items: tuple[ItemView, ...]
    after: Key | None  # the last key of this page when more may follow; None when exhausted


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanResult:
    """The page, or the error code of the first failed call and its partition."""

    page: ScanPage | None = None
    error: ErrorCode | None = None
    partition: PartitionId | None = None


ScanEffect = Send | Finish[ScanResult]


class Scan:
    """One scan page over ``partitions``; feed it events, carry out its effects."""

    def __init__(
        self,
        partitions: Sequence[PartitionId],
        *,
        start: Key = "",
        end: Key | None = None,
        limit: int,
        after: Key | None = None,
        fanout_max: int = FANOUT_CALLS_MAX,
    ) -> None:
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= SCAN_PAGE_ITEMS_MAX
        ):
            raise ValidationError("limit", f"must be an integer in 1..{SCAN_PAGE_ITEMS_MAX}")
        self._partitions = tuple(partitions)
        self._lower = after if after is not None and after > start else start
        self._end = end
        self._after = after
        self._limit = limit
        self._per_partition = min(limit + 1, SCAN_PAGE_ITEMS_MAX)
        self._fanout_max = max(1, fanout_max)
        self._machine = StateMachine(CallState.INIT, CALL_TRANSITIONS, "scan")
        self._next = 0  # index of the next partition to ask
        self._calls: dict[int, tuple[int, int]] = {}  # call id -> (partition index, deadline)
        self._replies: list[ScanReply | None] = [None] * len(self._partitions)
        self._errors: dict[int, ErrorCode] = {}  # partition index -> failure
        self.result: ScanResult | None = None

    @property
    def state(self) -> CallState:
        return self._machine.state

    @property
    def done(self) -> bool:
        return self._machine.state is CallState.DONE

    @property
    def next_deadline_us(self) -> int | None:
        return min((deadline for _, deadline in self._calls.values()), default=None)

    def step_start(self, now_us: int) -> list[ScanEffect]:
        with self._machine.guard():
            if not self._partitions or (self._end is not None and self._lower >= self._end):
                return self._finish(ScanResult(page=ScanPage(items=(), after=None)))
            self._machine.move(CallState.CALLING)
            return self._ask(now_us)

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[ScanEffect]:
        with self._machine.guard():
            call = self._calls.pop(call_id, None)
            if call is None:
                return []
            if isinstance(reply, ScanReply):
                self._replies[call[0]] = reply
            else:
                self._errors[call[0]] = ErrorCode.ProtocolViolation
            return self._progress(now_us)

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[ScanEffect]:
        with self._machine.guard():
            call = self._calls.pop(call_id, None)
            if call is None:
                return []
            self._errors[call[0]] = error
            return self._progress(now_us)

    def step_tick(self, now_us: int) -> list[ScanEffect]:
        with self._machine.guard():
            expired = [cid for cid, (_, deadline) in self._calls.items() if deadline <= now_us]
            if not expired:
                return []
            for call_id in expired:
                index, _ = self._calls.pop(call_id)
                self._errors[index] = ErrorCode.OutcomeUnknown  # sent, never answered
            return self._progress(now_us)

    # --- helpers ----------------------------------------------------------------------------

    def _ask(self, now_us: int) -> list[ScanEffect]:
        effects: list[ScanEffect] = []
        deadline_us = now_us + RPC_TIMEOUT_MS * _US_PER_MS
        while self._next < len(self._partitions) and len(self._calls) < self._fanout_max:
            index = self._next
            self._next += 1
            call_id = index + 1
            self._calls[call_id] = (index, deadline_us)
            request = ScanRequest(
                partition=self._partitions[index],
                start=self._lower,
                end=self._end,
                limit=self._per_partition,
            )
            effects.append(Send(call_id=call_id, request=request, deadline_us=deadline_us))
        return effects

    def _progress(self, now_us: int) -> list[ScanEffect]:
        effects = self._ask(now_us)
        if self._calls:
            return effects
        if self._errors:
            index = min(self._errors)
            return self._finish(
                ScanResult(error=self._errors[index], partition=self._partitions[index])
            )
        replies = [reply for reply in self._replies if reply is not None]
        merged = heapq.merge(*(reply.items for reply in replies), key=lambda item: item.key)
        after = self._after
        items = [item for item in merged if after is None or item.key > after]
        more = len(items) > self._limit or any(reply.next_start is not None for reply in replies)
        page = tuple(items[: self._limit])
        return self._finish(
            ScanResult(page=ScanPage(items=page, after=page[-1].key if more and page else None))
        )

    def _finish(self, result: ScanResult) -> list[ScanEffect]:
        self._calls.clear()
        self._machine.move(CallState.DONE)
        self.result = result
        return [Finish(result)]
