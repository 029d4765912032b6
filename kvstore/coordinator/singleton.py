"""Singleton operations as cores: one call to the owning partition (get, write, token lookup).

Theory of operation
-------------------
A singleton is one request to the partition that owns its key (DESIGN section 5, "singleton
ops"): :class:`OneCall` sends it and finishes with a :class:`CallResult`, the reply (of the
expected type, else ``ProtocolViolation``) or the error code of a failed call. A call that may
have run (the shell says ``OutcomeUnknown``: it timed out or the connection broke after sending;
or the core's own deadline passed with no answer) ends with ``OutcomeUnknown``; any other code is
a definite refusal (connection refused, ``Overloaded``, ``WrongOwner`` ...): nothing ran.

The constructors are what every runtime builds (the coordinator library and the simulator):

* :func:`new_get` and :func:`new_token_lookup`: one call each (validation first).
* :func:`new_singleton_write`: a put, delete or update at the owner's timestamp (never a
  ``check``: that only makes sense inside a transaction). A write refused by a pending intent
  applied nothing, so it runs again after a jittered pause (:class:`~kvstore.coordinator.retry.
  Retrying`, at most ``CONFLICT_RETRIES_MAX`` times); any other answer is final.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.retry import Jitter, Retrying
from kvstore.coordinator.state import CALL_TRANSITIONS, CallState, StateMachine
from kvstore.errors import ErrorCode, ValidationError
from kvstore.limits import MAX_CLOCK_SKEW_MS, RPC_TIMEOUT_MS
from kvstore.messages import (
    GetReply,
    GetRequest,
    ReasonCode,
    Reply,
    Request,
    RestoreReply,
    RestoreRequest,
    ScanReply,
    ScanRequest,
    TokenLookupReply,
    TokenLookupRequest,
    WriteReply,
    WriteRequest,
)
from kvstore.ops import Op, OpKind, validate_token
from kvstore.types import PartitionId, Timestamp
from kvstore.values import validate_key

__all__ = [
    "CallResult",
    "OneCall",
    "new_get",
    "new_token_lookup",
    "new_singleton_write",
    "new_snapshot_page",
    "new_partition_page",
    "check_page_at",
    "write_conflicted",
]

ReplyT = TypeVar("ReplyT")
_US_PER_MS = 1000
_CALL_ID = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CallResult(Generic[ReplyT]):
    """One call's answer: ``reply``, or ``error`` (``OutcomeUnknown``: it may have run)."""

    partition: PartitionId
    reply: ReplyT | None = None
    error: ErrorCode | None = None


class OneCall(Generic[ReplyT]):
    """One request, one answer; feed it events, carry out its effects."""

    def __init__(
        self,
        request: Request,
        expect: type[ReplyT],
        *,
        timeout_ms: int = RPC_TIMEOUT_MS,
        name: str = "call",
    ) -> None:
        self.request = request
        self._expect = expect
        self._timeout_us = timeout_ms * _US_PER_MS
        self._machine = StateMachine(CallState.INIT, CALL_TRANSITIONS, name)
        self._deadline_us: int | None = None
        self.result: CallResult[ReplyT] | None = None

    @property
    def state(self) -> CallState:
        return self._machine.state

    @property
    def done(self) -> bool:
        return self._machine.state is CallState.DONE

    @property
    def next_deadline_us(self) -> int | None:
        return self._deadline_us if self._machine.state is CallState.CALLING else None

    def step_start(self, now_us: int) -> list[Send | Finish[CallResult[ReplyT]]]:
        with self._machine.guard():
            self._machine.move(CallState.CALLING)
            self._deadline_us = now_us + self._timeout_us
            return [Send(call_id=_CALL_ID, request=self.request, deadline_us=self._deadline_us)]

    def step_reply(
        self, call_id: int, reply: Reply, now_us: int
    ) -> list[Send | Finish[CallResult[ReplyT]]]:
        with self._machine.guard():
            if call_id != _CALL_ID or self._machine.state is not CallState.CALLING:
                return []
            if isinstance(reply, self._expect):
                return self._end(CallResult(partition=self.request.partition, reply=reply))
            return self._failed(ErrorCode.ProtocolViolation)

    def step_failed(
        self, call_id: int, error: ErrorCode, now_us: int
    ) -> list[Send | Finish[CallResult[ReplyT]]]:
        with self._machine.guard():
            if call_id != _CALL_ID or self._machine.state is not CallState.CALLING:
                return []
            return self._failed(error)

    def step_tick(self, now_us: int) -> list[Send | Finish[CallResult[ReplyT]]]:
        with self._machine.guard():
            if self._machine.state is not CallState.CALLING:
                return []
            if self._deadline_us is not None and now_us >= self._deadline_us:
                return self._failed(ErrorCode.OutcomeUnknown)  # sent, never answered
            return []

    def _failed(self, error: ErrorCode) -> list[Send | Finish[CallResult[ReplyT]]]:
        return self._end(CallResult(partition=self.request.partition, error=error))

    def _end(self, result: CallResult[ReplyT]) -> list[Send | Finish[CallResult[ReplyT]]]:
        self._machine.move(CallState.DONE)
        self.result = result
        return [Finish(result)]


def new_get(key: str, partition_of: Callable[[str], PartitionId]) -> OneCall[GetReply]:
    """A get: the committed item at ``key`` (never blocked by an intent)."""
    validate_key(key, internal=True)
    return OneCall(GetRequest(partition=partition_of(key), key=key), GetReply, name="get")


def new_token_lookup(
    token: str, partition_of: Callable[[str], PartitionId]
) -> OneCall[TokenLookupReply]:
    """The ledger record of the transaction that used ``token``, asked of the token's home."""
    validate_token(token)
    request = TokenLookupRequest(partition=partition_of(token), token=token)
    return OneCall(request, TokenLookupReply, name="token lookup")


def check_page_at(at: Timestamp, now: Timestamp) -> None:
    """Refuse a backup page's ``at`` further ahead of ``now``, a fresh reading of the serving
    coordinator's hybrid clock, than the clock skew allowed (``ValidationError``): it would
    raise the partition's read floor above the timestamps its writers are about to use. (A
    backup's pages go to every partition's node, whose clocks may trail the one that chose
    ``at`` by up to that skew.) The hybrid clock, not the wall clock: ``at`` is a hybrid
    reading (``Coordinator.now()``), and a hybrid clock runs ahead of its wall clock once it has
    seen a faster node's timestamps; against the wall clock a backup's own ``at`` was refused by
    the coordinator that had just read it (the simulator, seeds with clock offsets)."""
    if at.physical_us > now.physical_us + MAX_CLOCK_SKEW_MS * _US_PER_MS:
        raise ValidationError(
            "at", f"is in the future: {at} is ahead of this node's clock; back up as of now"
        )


def new_snapshot_page(
    partition: PartitionId, start: str, at: Timestamp, limit: int
) -> OneCall[ScanReply]:
    """One page of partition ``partition`` as of ``at`` from ``start`` (a backup's; the node
    pins ``at`` and raises its read floor to it, docs/backup.md)."""
    request = ScanRequest(partition=partition, start=start, end=None, limit=limit, at=at)
    return OneCall(request, ScanReply, name="snapshot page")


def new_partition_page(
    partition: PartitionId,
    start: str,
    end: str | None,
    limit: int,
    *,
    reverse: bool,
    bytes_max: int = 0,
) -> OneCall[ScanReply]:
    """One page of committed items of one partition with ``start <= key < end``, in key order
    or (``reverse``) descending, cut at ``bytes_max`` when positive (the DynamoDB endpoint's
    queries, scans and table listing)."""
    request = ScanRequest(
        partition=partition,
        start=start,
        end=end,
        limit=limit,
        reverse=reverse,
        bytes_max=bytes_max,
    )
    return OneCall(request, ScanReply, name="partition page")


def new_restore(request: RestoreRequest) -> OneCall[RestoreReply]:
    """Rows of a backup written into their partition (a restore's; docs/backup.md)."""
    return OneCall(request, RestoreReply, name="restore")


def write_conflicted(result: CallResult[WriteReply]) -> bool:
    """A pending intent refused the write (nothing was applied)."""
    reply = result.reply
    return reply is not None and reply.outcome.code is ReasonCode.TRANSACTION_CONFLICT


def new_singleton_write(
    op: Op,
    partition_of: Callable[[str], PartitionId],
    now_us: int,
    jitter: Jitter,
) -> Retrying[CallResult[WriteReply]]:
    """A put, delete or update at the owning node's timestamp, re-run after conflicts."""
    if op.kind is OpKind.CHECK:
        raise ValidationError("op", "a check is only allowed inside a transaction")
    request = WriteRequest(partition=partition_of(op.key), op=op)
    name = f"singleton {op.kind.value}"
    return Retrying(
        lambda _: OneCall(request, WriteReply, name=name),
        write_conflicted,
        jitter,
        now_us,
        name=name,
    )
