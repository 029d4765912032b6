"""The coordinator as a library: transactions, reads, singletons and scans against storage nodes.

Theory of operation
-------------------
:class:`Coordinator` is the whole client side of the protocol (DESIGN sections 2 and 6) with no
HTTP in it. The coordinator service wraps one behind the public API; the SDK embeds one in
"direct" mode to talk to storage nodes itself. It owns an HLC (observing every reply's clock, so
its timestamps follow the nodes'), an RPC pool authenticated with the cluster secret, a
:class:`~kvstore.transport.PartitionTransport` routing by partition owner, and an
:class:`~kvstore.runtime.aio.ActorRunner` that carries out the pure cores' effects.

* :meth:`transact` runs a :class:`~kvstore.coordinator.core.WriteTxn` (validation in its
  constructor, before any message; one round on one partition; 2PC otherwise) and returns the
  committed :class:`~kvstore.coordinator.results.TxnResult`, or raises the typed error with the
  per-op reasons (:func:`~kvstore.coordinator.answers.txn_error`).
* :meth:`read` runs a :class:`~kvstore.coordinator.read.ReadTxn` (read rounds until two agree).
* :meth:`get` and :meth:`write` are singletons routed to the owning partition. A write whose
  call failed after it was sent may have been applied: that is ``OutcomeUnknown``, never a
  plain failure.
* A read that met pending intents in every round, and a singleton write refused by a pending
  intent (nothing applied), are tried again up to ``CONFLICT_RETRIES_MAX`` times after a short
  jittered pause: intents usually live one commit round trip (a cancelled transaction's intents
  are cleared just after its client was answered).
* :meth:`scan` asks every partition for its first ``limit + 1`` keys of the range past the
  cursor, merges the pages in key order and keeps ``limit``: keys are spread over partitions by
  hash, so any partition may hold the next key.
* :meth:`txn_record` finds the ledger record of the transaction that used an idempotency token,
  on the token's home partition: a tokened transaction is anchored there (``token_home``), so
  every submission of one token meets the same token record, whatever its keys.

A caller that stops waiting (an HTTP client hanging up) does not stop a transaction: the core
keeps running to its end, so a commit still reaches every participant. Admission is bounded:
more than ``COORDINATOR_TXNS_IN_FLIGHT_MAX`` transactions at once get ``Overloaded``.

Each core runs inside an :class:`_Observed` wrapper that times the core's states (the phases of
the metrics), counts messages re-sent to a partition, and notes ledger races lost to recovery.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kvstore.codec import method_of
from kvstore.config import ClusterConfig
from kvstore.coordinator.answers import item_to_json, txn_error
from kvstore.coordinator.core import WriteTxn, new_write_txn
from kvstore.coordinator.effects import Send
from kvstore.coordinator.metrics import CoordinatorMetrics, participants_label
from kvstore.coordinator.read import ReadTxn
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.errors import (
    ConditionFailed,
    ErrorCode,
    KvError,
    OutcomeUnknown,
    Overloaded,
    ProtocolViolation,
    TimestampTooOld,
    TransactionConflict,
    Unavailable,
    ValidationError,
    error_from_code,
)
from kvstore.limits import (
    CLOSE_DRAIN_MS,
    CONFLICT_BACKOFF_BASE_MS,
    CONFLICT_RETRIES_MAX,
    COORDINATOR_TXNS_IN_FLIGHT_MAX,
    FANOUT_CALLS_MAX,
    RPC_TIMEOUT_MS,
    SCAN_PAGE_ITEMS_MAX,
    TXN_OPS_MAX_DEFAULT,
)
from kvstore.logs import log_event
from kvstore.messages import (
    GetReply,
    GetRequest,
    ItemView,
    LedgerRecord,
    ReadEntry,
    ReasonCode,
    Reply,
    Request,
    ScanReply,
    ScanRequest,
    TokenLookupReply,
    TokenLookupRequest,
    WriteReply,
    WriteRequest,
)
from kvstore.mutants import NO_MUTANTS, Mutants
from kvstore.ops import Op, OpKind, validate_token
from kvstore.partitioning import ClusterMap
from kvstore.rpc import RpcPool
from kvstore.runtime.aio import ActorRunner, Transport
from kvstore.timestamps import (
    HybridClock,
    PhysicalClock,
    new_txn_id,
    random_origin,
    system_clock_us,
)
from kvstore.transport import PartitionTransport
from kvstore.types import Key, PartitionId
from kvstore.values import validate_key

__all__ = ["Coordinator", "ScanPage"]

_log = logging.getLogger("kvstore.coordinator")
_US_PER_S = 1_000_000
R = TypeVar("R")
# Refusals between our own processes (a wrong cluster secret, a stale map, a malformed frame):
# the client's request is fine, the cluster is not reachable as it should be.
_INTERNAL_FAULTS = frozenset(
    {
        ErrorCode.Unauthorized,
        ErrorCode.Forbidden,
        ErrorCode.ProtocolViolation,
        ErrorCode.WrongOwner,
        ErrorCode.InternalError,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanPage:
    items: tuple[ItemView, ...]
    after: Key | None  # the last key of this page when more may follow; None when exhausted


async def _conflict_pause(attempt: int) -> None:
    """Full jitter below ``CONFLICT_BACKOFF_BASE_MS * 2**attempt``."""
    await asyncio.sleep(random.uniform(0, CONFLICT_BACKOFF_BASE_MS * 2**attempt) / 1000)


class _Observed:
    """An actor core with its phases timed and its re-sent messages counted (see the module)."""

    def __init__(self, core: WriteTxn | ReadTxn, metrics: CoordinatorMetrics, now_us: int) -> None:
        self.core = core
        self._metrics = metrics
        self._state = core.state
        self._since_us = now_us
        self._sent: set[tuple[str, PartitionId]] = set()
        self._cas_lost = False

    @property
    def done(self) -> bool:
        return self.core.done

    @property
    def next_deadline_us(self) -> int | None:
        return self.core.next_deadline_us

    def step_start(self, now_us: int) -> list[Any]:
        return self._after(self.core.step_start(now_us), now_us)

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[Any]:
        return self._after(self.core.step_reply(call_id, reply, now_us), now_us)

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[Any]:
        return self._after(self.core.step_failed(call_id, error, now_us), now_us)

    def step_tick(self, now_us: int) -> list[Any]:
        return self._after(self.core.step_tick(now_us), now_us)

    def _after(self, effects: list[Any], now_us: int) -> list[Any]:
        state = self.core.state
        if state is not self._state:
            if self._state.name != "INIT":
                seconds = max(0, now_us - self._since_us) / _US_PER_S
                self._metrics.phase_seconds.labels(self._state.name).observe(seconds)
            self._state, self._since_us = state, now_us
        for effect in effects:
            if isinstance(effect, Send):
                sent = (method_of(effect.request), effect.request.partition)
                if sent in self._sent:
                    self._metrics.retries.labels(sent[0]).inc()
                self._sent.add(sent)
        if isinstance(self.core, WriteTxn) and self.core.cas_lost and not self._cas_lost:
            self._cas_lost = True
            self._metrics.cas_lost.inc()
            log_event(_log, "txn.cas_lost", logging.INFO, txn_id=self.core.txn_id)
        return effects


class Coordinator:
    """Runs transactions against the storage nodes of one cluster map; see the module."""

    def __init__(
        self,
        cluster_map: ClusterMap,
        secret: str,
        *,
        txn_ops_max: int = TXN_OPS_MAX_DEFAULT,
        metrics: CoordinatorMetrics | None = None,
        clock: HybridClock | None = None,
        transport: Transport | None = None,
        txns_in_flight_max: int = COORDINATOR_TXNS_IN_FLIGHT_MAX,
        physical_clock: PhysicalClock = system_clock_us,
        mutants: Mutants = NO_MUTANTS,
        pool: RpcPool | None = None,
    ) -> None:
        """``physical_clock`` is the wall time the cores and the default ``clock`` read;
        ``mutants`` and an injected ``pool`` (which this object then closes) serve chaos runs."""
        self.cluster_map = cluster_map
        self.txn_ops_max = txn_ops_max
        self.metrics = metrics if metrics is not None else CoordinatorMetrics()
        self.clock = (
            clock
            if clock is not None
            else HybridClock(physical_clock, random_origin(), mutants=mutants)
        )
        self._now_us = physical_clock
        self._mutants = mutants
        self._pool = (
            pool if pool is not None else RpcPool(secret, on_clock=self.clock.observe, logger=_log)
        )
        self._transport: Transport = (
            transport if transport is not None else PartitionTransport(cluster_map, self._pool)
        )
        self._runner = ActorRunner(self._transport, physical_clock)
        self._partition_of = cluster_map.partitions.partition_of
        self._in_flight_max = txns_in_flight_max

    @classmethod
    def from_config(cls, config: ClusterConfig, **kwargs: Any) -> Coordinator:
        """A coordinator for the cluster a cluster file describes (reads its secret)."""
        return cls(config.cluster_map, config.secret(), txn_ops_max=config.txn_ops_max, **kwargs)

    @property
    def running(self) -> int:
        """Cores still running (including those whose caller was already answered)."""
        return self._runner.running

    async def close(self, *, drain_s: float = CLOSE_DRAIN_MS / 1000) -> None:
        """Let running transactions finish (up to ``drain_s``), then stop the rest: what is cut
        off is finished by recovery on the nodes, after the ledger's decision deadline."""
        await self._runner.drain(drain_s)
        await self._runner.close()
        await self._pool.close()

    # --- transactions ---------------------------------------------------------------------

    async def transact(self, ops: Sequence[Op], *, token: str | None = None) -> TxnResult:
        """Run one write transaction; the committed result, or the typed error."""
        started_us = system_clock_us()
        now_us = self._now_us()
        txn = new_write_txn(
            new_txn_id(),
            self.clock.now(),
            ops,
            self._partition_of,
            now_us,
            token=token,
            txn_ops_max=self.txn_ops_max,
        )
        result: TxnResult = await self._run(_Observed(txn, self.metrics, now_us))
        seconds = max(0, system_clock_us() - started_us) / _US_PER_S
        outcome = (
            "committed" if result.committed else (result.error or ErrorCode.InternalError).name
        )
        self.metrics.txns.labels(outcome, participants_label(len(txn.participants))).inc()
        self.metrics.txn_seconds.labels("write").observe(seconds)
        if result.txn_id != txn.txn_id:
            self.metrics.follows.inc()
        level = logging.WARNING if result.error is ErrorCode.OutcomeUnknown else logging.DEBUG
        log_event(
            _log,
            "txn.answered",
            level,
            txn_id=txn.txn_id,
            outcome=outcome,
            participants=len(txn.participants),
            answered_txn_id=result.txn_id,
            ms=round(seconds * 1000, 3),
        )
        if result.committed:
            return result
        raise txn_error(result, keys=[op.key for op in ops])

    async def read(self, keys: Sequence[Key]) -> tuple[ReadEntry, ...]:
        """A read-only transaction: the entries of ``keys`` at one instant, in request order.

        A read that met pending intents in every round is run again, at most
        ``CONFLICT_RETRIES_MAX`` times after a short jittered pause: an intent usually lives for
        one commit round trip (often the leftover of a transaction just answered "cancelled").
        """
        now_us = system_clock_us()
        for attempt in range(CONFLICT_RETRIES_MAX + 1):
            txn = ReadTxn(keys, self._partition_of, self._now_us(), mutants=self._mutants)
            result: ReadResult = await self._run(_Observed(txn, self.metrics, self._now_us()))
            self.metrics.read_rounds.observe(result.rounds)
            if result.error is not ErrorCode.TransactionConflict or attempt == CONFLICT_RETRIES_MAX:
                break
            self.metrics.retries.labels("read_txn").inc()
            await _conflict_pause(attempt)
        self.metrics.txn_seconds.labels("read").observe(
            max(0, system_clock_us() - now_us) / _US_PER_S
        )
        self.metrics.reads.labels("ok" if result.error is None else result.error.name).inc()
        if result.error is not None:
            details: dict[str, object] = {"rounds": result.rounds}
            if result.error is ErrorCode.TransactionConflict:
                message = f"no stable snapshot after {result.rounds} read rounds; retry"
            elif result.partition is None:
                message = "a partition did not answer the read; retry"
            else:
                node = self.cluster_map.owner_of(result.partition)
                message = f"partition {result.partition} on node {node} did not answer the read"
                details.update(partition=result.partition, node=node)
            raise error_from_code(result.error, message, details=details)
        return result.items

    async def _run(self, actor: _Observed) -> Any:
        # Counts cores still running after their caller stopped waiting, too.
        if self._runner.running >= self._in_flight_max:
            raise Overloaded(
                f"{self._runner.running} transactions in flight; back off and retry",
                details={"limit": self._in_flight_max},
            )
        # Shielded: a caller that stops waiting must not stop the transaction.
        return await asyncio.shield(self._runner.run(actor))

    # --- singletons -----------------------------------------------------------------------

    async def get(self, key: Key) -> ItemView | None:
        """The committed item at ``key``, or None."""
        validate_key(key)
        request = GetRequest(partition=self._partition_of(key), key=key)
        reply = await self._call(request, GetReply, "get")
        return reply.item

    async def write(self, op: Op) -> WriteReply:
        """A singleton put, delete or update at the owning node's timestamp.

        Raises ``ConditionFailed`` (with ``item`` when the op asked for it),
        ``TransactionConflict`` (a transaction holds the key), ``ValidationError`` (the result
        would break a limit), or ``OutcomeUnknown`` when the call failed after it was sent.
        """
        if op.kind is OpKind.CHECK:
            raise ValidationError("op", "a check is only allowed inside a transaction")
        request = WriteRequest(partition=self._partition_of(op.key), op=op)
        for attempt in range(CONFLICT_RETRIES_MAX + 1):
            try:
                reply = await self._call(request, WriteReply, op.kind.value)
            except KvError as error:
                if error.details.get("sent") is True:
                    raise OutcomeUnknown(
                        f"the {op.kind.value} of {op.key!r} may or may not have been applied: "
                        f"{error.message}",
                        details={"key": op.key},
                    ) from None
                raise
            # A pending intent refused the write and nothing was applied: it usually resolves
            # within one commit round trip, so try again after a short pause (bounded).
            conflict = reply.outcome.code is ReasonCode.TRANSACTION_CONFLICT
            if not conflict or attempt == CONFLICT_RETRIES_MAX:
                break
            self.metrics.retries.labels("write").inc()
            await _conflict_pause(attempt)
        outcome = reply.outcome
        if outcome.code is ReasonCode.NONE:
            return reply
        self.metrics.singletons.labels(op.kind.value, outcome.code.value).inc()
        details: dict[str, object] = {"key": op.key}
        if outcome.code is ReasonCode.CONDITION_FAILED:
            if outcome.item is not None:
                details["item"] = item_to_json(outcome.item)
            raise ConditionFailed(outcome.message or "the condition did not hold", details=details)
        if outcome.code is ReasonCode.TRANSACTION_CONFLICT:
            raise TransactionConflict(
                outcome.message or "a transaction holds the key", details=details
            )
        if outcome.code is ReasonCode.TIMESTAMP_TOO_OLD:
            raise TimestampTooOld(outcome.message or "the key was written later", details=details)
        raise ValidationError("op", outcome.message or "the operation cannot apply")

    # --- scans and token lookups ------------------------------------------------------------

    async def scan(
        self, *, start: Key = "", end: Key | None = None, limit: int, after: Key | None = None
    ) -> ScanPage:
        """At most ``limit`` items with ``start <= key < end`` and ``key > after``, in order."""
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= SCAN_PAGE_ITEMS_MAX
        ):
            raise ValidationError("limit", f"must be an integer in 1..{SCAN_PAGE_ITEMS_MAX}")
        lower = after if after is not None and after > start else start
        if end is not None and lower >= end:
            return ScanPage(items=(), after=None)
        per_partition = min(limit + 1, SCAN_PAGE_ITEMS_MAX)
        replies = await self._fan_out(
            lambda pid: self._call(
                ScanRequest(partition=pid, start=lower, end=end, limit=per_partition),
                ScanReply,
                "scan",
            )
        )
        merged = heapq.merge(*(reply.items for reply in replies), key=lambda item: item.key)
        items = [item for item in merged if after is None or item.key > after]
        more = len(items) > limit or any(reply.next_start is not None for reply in replies)
        page = tuple(items[:limit])
        return ScanPage(items=page, after=page[-1].key if more and page else None)

    async def txn_record(self, token: str) -> LedgerRecord | None:
        """The ledger record of the transaction that used idempotency ``token``, if known."""
        validate_token(token)
        request = TokenLookupRequest(partition=self._partition_of(token), token=token)
        reply = await self._call(request, TokenLookupReply, "token")
        return reply.record

    # --- plumbing -------------------------------------------------------------------------

    async def _fan_out(self, call: Callable[[PartitionId], Awaitable[R]]) -> list[R]:
        """``call`` for every partition (a scan page), at most ``FANOUT_CALLS_MAX`` at a time;
        the first error (in partition order) is raised after all calls ended."""

        slots = asyncio.Semaphore(FANOUT_CALLS_MAX)

        async def bounded(pid: PartitionId) -> R:
            async with slots:
                return await call(pid)

        partitions = [PartitionId(p) for p in self.cluster_map.partitions.partitions()]
        results = await asyncio.gather(
            *(bounded(pid) for pid in partitions), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if not isinstance(r, BaseException)]

    async def _call(self, request: Request, reply_type: type[R], label: str) -> R:
        try:
            reply = await self._transport.call(request, RPC_TIMEOUT_MS)
        except KvError as error:
            self.metrics.singletons.labels(label, error.code.name).inc()
            if error.code in _INTERNAL_FAULTS:  # the caller's request is not what is wrong
                raise Unavailable(
                    f"partition {request.partition} on node "
                    f"{self.cluster_map.owner_of(request.partition)}: "
                    f"{error.message}",
                    details={**error.details, "cause": error.code.name},
                ) from None
            raise
        if not isinstance(reply, reply_type):
            self.metrics.singletons.labels(label, ErrorCode.ProtocolViolation.name).inc()
            raise ProtocolViolation(f"expected {reply_type.__name__}, got {type(reply).__name__}")
        self.metrics.singletons.labels(label, "ok").inc()
        return reply
