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
  constructor, before any message; one round on one partition, or on several partitions that
  the map gives to one node; 2PC otherwise) and returns the
  committed :class:`~kvstore.coordinator.results.TxnResult`, or raises the typed error with the
  per-op reasons (:func:`~kvstore.coordinator.answers.txn_error`).
* :meth:`read` runs a :class:`~kvstore.coordinator.read.ReadTxn` (read rounds until two agree),
  or with ``at`` a snapshot read as of that timestamp (one round at ``at``). ``at`` is checked
  here, the one place every door (the API, the native protocol, the SDK's direct mode) passes
  through: after this coordinator's clock is ``ValidationError`` (a future ``at`` would raise
  the partitions' read floors above the time every coordinator writes at), older than
  ``SNAPSHOT_WINDOW_MS`` by this process's wall clock is ``SnapshotTooOld``.
* :meth:`get`, :meth:`write` and :meth:`txn_record` are singletons routed to the owning
  partition (:mod:`~kvstore.coordinator.singleton`). A write whose call failed after it was sent
  may have been applied: that is ``OutcomeUnknown``, never a plain failure.
* A read that met pending intents in every round, and a singleton write refused by a pending
  intent (nothing applied), are run again up to ``CONFLICT_RETRIES_MAX`` times after a short
  jittered pause, inside their cores (:mod:`~kvstore.coordinator.retry`; the jitter is drawn
  here, from ``random``).
* :meth:`scan` runs one :class:`~kvstore.coordinator.scan.Scan` page: every partition asked
  for its first ``limit + 1`` keys past the cursor, merged in key order.
* **Following the leaders.** In a replicated cluster the node that embeds the coordinator
  hands it each new map of the partitions' current leaders (:meth:`follow`; its transport is
  re-pointed by the node). An operation refused before anything ran (the answer is the refusal
  itself: ``WrongOwner``, or ``Unavailable`` such as a leader's "changing leader") is run again,
  with a fresh core, when the map moved while it ran, at most ``COORDINATOR_REROUTES_MAX``
  times; refused with ``WrongOwner`` while the map did not move, it first waits up to
  ``COORDINATOR_REROUTE_WAIT_MS`` for it to move (the refusing replica read a newer map than
  ours). A coordinator that never follows answers refusals at once, as before; so does one
  whose map stays put (the caller, the SDK, retries with its own backoff).
* :meth:`txn_record` finds the ledger record of the transaction that used an idempotency token,
  on the token's home partition: a tokened transaction is anchored there (``token_home``), so
  every submission of one token meets the same token record, whatever its keys.

Every operation is a pure core run by the :class:`~kvstore.runtime.aio.ActorRunner`; the
simulator runs the same cores, built by the same constructors. The runner's transport is
wrapped so that a call that failed after it was sent (``details["sent"]``) reaches the core as
``OutcomeUnknown`` (it may have run), any other failure as its own code (nothing ran).

A caller that stops waiting (an HTTP client hanging up) does not stop a transaction: the core
keeps running to its end, so a commit still reaches every participant. Admission is bounded:
more than ``COORDINATOR_TXNS_IN_FLIGHT_MAX`` cores at once (every kind) get ``Overloaded``
(:func:`~kvstore.runtime.admission.admit`, shared with the simulator).

Each core runs inside an :class:`_Observed` wrapper that times the core's states (the phases of
the metrics), counts messages re-sent to a partition, and notes ledger races lost to recovery.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from kvstore.codec import method_of
from kvstore.config import ClusterConfig
from kvstore.coordinator.answers import item_to_json, txn_error
from kvstore.coordinator.core import WriteTxn, new_write_txn
from kvstore.coordinator.effects import Send
from kvstore.coordinator.metrics import CoordinatorMetrics, participants_label
from kvstore.coordinator.read import check_snapshot_at, new_read, validate_read_keys
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.coordinator.retry import Attempt, Retrying
from kvstore.coordinator.scan import Scan, ScanPage, ScanResult
from kvstore.coordinator.singleton import (
    CallResult,
    check_page_at,
    new_get,
    new_partition_page,
    new_restore,
    new_singleton_write,
    new_snapshot_page,
    new_token_lookup,
)
from kvstore.coordinator.state import RetryState
from kvstore.errors import (
    ConditionFailed,
    ErrorCode,
    KvError,
    OutcomeUnknown,
    Overloaded,
    TimestampTooOld,
    TransactionConflict,
    Unavailable,
    ValidationError,
    error_from_code,
)
from kvstore.limits import (
    CLOSE_DRAIN_MS,
    COORDINATOR_REROUTE_WAIT_MS,
    COORDINATOR_REROUTES_MAX,
    COORDINATOR_TXNS_IN_FLIGHT_MAX,
    TXN_OPS_MAX_DEFAULT,
)
from kvstore.logs import log_event
from kvstore.messages import (
    GetReply,
    ItemView,
    LedgerRecord,
    ReadEntry,
    ReasonCode,
    Reply,
    Request,
    RestoreReply,
    RestoreRequest,
    ScanReply,
    TokenLookupReply,
    WriteReply,
)
from kvstore.mutants import NO_MUTANTS, Mutants
from kvstore.ops import Op
from kvstore.partitioning import ClusterMap
from kvstore.rpc import RpcPool
from kvstore.runtime.admission import LagGate, admit
from kvstore.runtime.aio import ActorRunner, LoopLagProbe, Transport
from kvstore.timestamps import (
    HybridClock,
    PhysicalClock,
    new_txn_id,
    random_origin,
    system_clock_us,
)
from kvstore.transport import PartitionTransport
from kvstore.types import Key, PartitionId, Timestamp
from kvstore.values import PUBLIC_KEY_MIN

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


# Refusals before anything ran that the current leader would not give: run again once the map
# moved (see the module).
_REROUTABLE = frozenset({ErrorCode.WrongOwner, ErrorCode.Unavailable})

_Core = Attempt  # what _Observed needs of a core: the actor interface plus its state


def _phase(core: _Core) -> enum.Enum:
    """The state a core is in; for a running retried operation, its current attempt's."""
    if isinstance(core, Retrying) and core.state is RetryState.RUNNING:
        return core.attempt.state
    return core.state


def _maybe_ran(error: KvError) -> KvError:
    """A call that failed after it was sent (it may have run) is ``OutcomeUnknown``."""
    if error.details.get("sent") is True:
        return OutcomeUnknown(error.message, details=error.details)
    return error


class _SentAware:
    """The transport as the cores need it: a call that failed after it was sent (it may have
    run) fails with ``OutcomeUnknown``; a failure before sending keeps its own code. Both ways
    of calling are kept: ``call`` (a coroutine) and, when the transport has it, ``start`` (no
    coroutine on an open connection)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._start: Callable[..., bool] | None = getattr(transport, "start", None)

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        try:
            return await self._transport.call(request, timeout_ms)
        except KvError as error:
            raise _maybe_ran(error) from None

    def start(
        self, request: Request, timeout_ms: int, answer: Callable[[Reply | KvError], None]
    ) -> bool:
        if self._start is None:
            return False  # the runner then runs ``call`` as a task

        def answered(outcome: Reply | KvError) -> None:
            answer(_maybe_ran(outcome) if isinstance(outcome, KvError) else outcome)

        return self._start(request, timeout_ms, answered)


class _Observed:
    """An actor core with its phases timed and its re-sent messages counted (see the module)."""

    def __init__(self, core: _Core, metrics: CoordinatorMetrics, now_us: int) -> None:
        self.core = core
        self._metrics = metrics
        self._state = _phase(core)
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
        state = _phase(self.core)
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
        refuse_when_behind: bool = False,
        lag_gate: LagGate | None = None,
    ) -> None:
        """``physical_clock`` is the wall time the cores and the default ``clock`` read;
        ``mutants`` and an injected ``pool`` (which this object then closes) serve chaos runs.
        ``refuse_when_behind`` turns on the loop-lag gate (:mod:`~kvstore.runtime.admission`):
        the coordinator process sets it; an embedded coordinator (the SDK's direct mode) shares
        its loop with the application, whose own work must not read as overload. A coordinator
        inside a storage node shares the node's ``lag_gate`` instead (one probe per process)."""
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
        self._runner = ActorRunner(_SentAware(self._transport), physical_clock)
        self._lag_gate = lag_gate if lag_gate is not None else LagGate()
        self._lag_probe = LoopLagProbe(self._lag_gate.observe)
        self._refuse_when_behind = refuse_when_behind and lag_gate is None
        self._partition_of = cluster_map.partitions.partition_of
        self._partitions = tuple(PartitionId(p) for p in cluster_map.partitions.partitions())
        self._in_flight_max = txns_in_flight_max
        self._following = False  # follow() was called: refusals may wait for the map to move
        self._map_moved = asyncio.Event()  # set (and replaced) by each follow()

    @classmethod
    def from_config(cls, config: ClusterConfig, **kwargs: Any) -> Coordinator:
        """A coordinator for the cluster a cluster file describes (reads its secret). Not for
        a replicated cluster: a coordinator outside the nodes (a coordinator process, the SDK's
        direct mode) routes by the cluster file, and nothing tells it where the leaders moved
        (``ValidationError``; the nodes serve the API, the SDK's native mode follows them)."""
        if config.replication.replicated:
            raise ValidationError(
                "replication",
                f"{config.path} is a replicated cluster: a standalone coordinator (a coordinator "
                "process, the SDK's direct mode) does not follow its leaders yet; use the nodes' "
                "API (every node serves it) or the SDK's native or gateway mode",
            )
        return cls(config.cluster_map, config.secret(), txn_ops_max=config.txn_ops_max, **kwargs)

    def follow(self, cluster_map: ClusterMap) -> None:
        """Route by ``cluster_map`` from now on (a replicated node's map of the current leaders;
        the node re-points the transport); a map with an epoch not above the current one is
        ignored. Wakes operations waiting for the map to move (see the module)."""
        self._following = True
        if cluster_map.epoch <= self.cluster_map.epoch:
            return
        self.cluster_map = cluster_map
        moved, self._map_moved = self._map_moved, asyncio.Event()
        moved.set()

    async def _rerouted(
        self, run: Callable[[], Awaitable[R]], refused: Callable[[R], ErrorCode | None]
    ) -> R:
        """``run()`` again while it is refused with a code of ``_REROUTABLE`` (nothing ran) and
        the map moved meanwhile (see the module), at most ``COORDINATOR_REROUTES_MAX`` times."""
        for _ in range(COORDINATOR_REROUTES_MAX):
            epoch, moved = self.cluster_map.epoch, self._map_moved
            result = await run()
            code = refused(result)
            if code not in _REROUTABLE or not await self._moved_since(epoch, moved, code):
                return result
        return await run()

    async def _moved_since(self, epoch: int, moved: asyncio.Event, code: ErrorCode | None) -> bool:
        if self.cluster_map.epoch != epoch:
            return True
        if code is not ErrorCode.WrongOwner or not self._following:
            return False
        try:
            async with asyncio.timeout(COORDINATOR_REROUTE_WAIT_MS / 1000):
                await moved.wait()
        except TimeoutError:
            return False
        return True

    @property
    def running(self) -> int:
        """Cores still running (including those whose caller was already answered)."""
        return self._runner.running

    async def close(self, *, drain_s: float = CLOSE_DRAIN_MS / 1000) -> None:
        """Let running transactions finish (up to ``drain_s``), then stop the rest: what is cut
        off is finished by recovery on the nodes, after the ledger's decision deadline."""
        self._lag_probe.stop()
        await self._runner.drain(drain_s)
        await self._runner.close()
        await self._pool.close()

    # --- transactions ---------------------------------------------------------------------

    async def transact(self, ops: Sequence[Op], *, token: str | None = None) -> TxnResult:
        """Run one write transaction; the committed result, or the typed error."""
        started_us = system_clock_us()
        txn: WriteTxn | None = None

        async def attempt() -> TxnResult:
            nonlocal txn
            now_us = self._now_us()
            txn = new_write_txn(
                new_txn_id(),
                self.clock.now(),
                ops,
                self._partition_of,
                now_us,
                token=token,
                txn_ops_max=self.txn_ops_max,
                # Not in a replicated cluster: each partition replicates on its own, so one
                # node's single fsync no longer makes a several-partition write atomic.
                node_of=None if self._following else self.cluster_map.owner_of,
                mutants=self._mutants,
            )
            answer: TxnResult = await self._run(txn, now_us)
            return answer

        result = await self._rerouted(attempt, _txn_refusal)
        assert txn is not None
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

    async def read(
        self, keys: Sequence[Key], *, at: Timestamp | None = None
    ) -> tuple[ReadEntry, ...]:
        """A read-only transaction: the entries of ``keys`` at one instant, in request order
        (run again after conflicts, see the module); with ``at``, the entries as of that
        timestamp (a snapshot read: ``ValidationError`` after this coordinator's clock,
        ``SnapshotTooOld`` older than ``SNAPSHOT_WINDOW_MS``)."""
        started_us = system_clock_us()
        validate_read_keys(keys)
        if at is not None:
            self.check_snapshot(at)

        async def attempt() -> ReadResult:
            now_us = self._now_us()
            core = new_read(
                keys, self._partition_of, now_us, random.random, at=at, mutants=self._mutants
            )
            answer: ReadResult = await self._run(core, now_us)
            return answer

        result = await self._rerouted(attempt, _error_of)
        self.metrics.read_rounds.observe(result.rounds)
        self.metrics.txn_seconds.labels("read").observe(
            max(0, system_clock_us() - started_us) / _US_PER_S
        )
        self.metrics.reads.labels("ok" if result.error is None else result.error.name).inc()
        if result.error is not None:
            details: dict[str, object] = {"rounds": result.rounds}
            if result.error is ErrorCode.TransactionConflict:
                message = f"no stable snapshot after {result.rounds} read rounds; retry"
            elif result.error is ErrorCode.SnapshotTooOld:
                message = (
                    f"partition {result.partition} no longer keeps the versions as of {at} "
                    "(older than its read window, or it restarted or changed leader since)"
                )
                details.update(partition=result.partition, at=str(at))
            elif result.partition is None:
                message = "a partition did not answer the read; retry"
            else:
                node = self.cluster_map.owner_of(result.partition)
                message = f"partition {result.partition} on node {node} did not answer the read"
                details.update(partition=result.partition, node=node)
            raise error_from_code(result.error, message, details=details)
        return result.items

    def check_snapshot(self, at: Timestamp) -> None:
        """Refuse a snapshot read's ``at`` after this coordinator's clock (``ValidationError``)
        or older than ``SNAPSHOT_WINDOW_MS`` (``SnapshotTooOld``): ``check_snapshot_at``."""
        check_snapshot_at(at, self.clock.now(), self._now_us())

    def admit(self) -> None:
        """Raise ``Overloaded`` when a core started now would be refused (see
        :mod:`~kvstore.runtime.admission`): callers check before doing work of their own
        for a request (the API, before reading its body), so a refusal stays cheap."""
        if self._refuse_when_behind and not self._lag_probe.running:
            self._lag_probe.start()
        try:
            self._lag_gate.admit()
            # Counts cores still running after their caller stopped waiting, too.
            admit(self._runner.running, self._in_flight_max)
        except Overloaded:
            self.metrics.refusals.inc()
            raise

    async def _run(self, core: _Core, now_us: int) -> Any:
        self.admit()
        # A caller that stops waiting cancels only this future, its mailbox: the core runs on
        # in the runner to its end (a commit still reaches every participant).
        return await self._runner.run(_Observed(core, self.metrics, now_us))

    # --- singletons -----------------------------------------------------------------------

    async def get(self, key: Key) -> ItemView | None:
        """The committed item at ``key``, or None."""
        result: CallResult[GetReply] = await self._rerouted(
            lambda: self._run(new_get(key, self._partition_of), self._now_us()), _error_of
        )
        return self._reply(result, "get").item

    async def write(self, op: Op) -> WriteReply:
        """A singleton put, delete or update at the owning node's timestamp.

        Raises ``ConditionFailed`` (with ``item`` when the op asked for it),
        ``TransactionConflict`` (a transaction holds the key), ``ValidationError`` (the result
        would break a limit), or ``OutcomeUnknown`` when the call failed after it was sent.
        """

        async def attempt() -> CallResult[WriteReply]:
            now_us = self._now_us()
            core = new_singleton_write(op, self._partition_of, now_us, random.random)
            answer: CallResult[WriteReply] = await self._run(core, now_us)
            return answer

        result = await self._rerouted(attempt, _error_of)
        if result.error is ErrorCode.OutcomeUnknown:
            self.metrics.singletons.labels(op.kind.value, result.error.name).inc()
            node = self.cluster_map.owner_of(result.partition)
            raise OutcomeUnknown(
                f"the {op.kind.value} of {op.key!r} may or may not have been applied: "
                f"partition {result.partition} on node {node} did not answer",
                details={"key": op.key},
            )
        reply = self._reply(result, op.kind.value)
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
        self,
        *,
        start: Key = "",
        end: Key | None = None,
        limit: int,
        after: Key | None = None,
    ) -> ScanPage:
        """At most ``limit`` items with ``start <= key < end`` and ``key > after``, in order.
        A scan is the public API's: it starts at ``PUBLIC_KEY_MIN``, above the store's own keys
        (kvstore.values), which are read by partition pages (``partition_page``)."""
        start = max(start, PUBLIC_KEY_MIN)
        if end is not None and end <= start:
            return ScanPage(items=(), after=None)
        result: ScanResult = await self._rerouted(
            lambda: self._run(
                Scan(self._partitions, start=start, end=end, limit=limit, after=after),
                self._now_us(),
            ),
            _error_of,
        )
        if result.page is not None:
            self.metrics.singletons.labels("scan", "ok").inc()
            return result.page
        code = result.error or ErrorCode.InternalError
        self.metrics.singletons.labels("scan", code.name).inc()
        raise self._call_error(code, result.partition)

    def partition_of(self, key: Key) -> PartitionId:
        """The partition that holds ``key`` (by its routing key: kvstore.partitioning)."""
        return self._partition_of(key)

    async def partition_page(
        self,
        partition: PartitionId,
        *,
        start: Key,
        end: Key | None,
        limit: int,
        reverse: bool = False,
        bytes_max: int = 0,
    ) -> ScanReply:
        """One page of ``partition``'s committed items with ``start <= key < end``, in key
        order or descending, cut once past ``bytes_max`` when positive; ``next_start``
        continues it (the next page's ``end`` when ``reverse``). The DynamoDB endpoint's
        queries, scans and table listing."""
        result: CallResult[ScanReply] = await self._rerouted(
            lambda: self._run(
                new_partition_page(
                    partition, start, end, limit, reverse=reverse, bytes_max=bytes_max
                ),
                self._now_us(),
            ),
            _error_of,
        )
        return self._reply(result, "partition_page")

    # --- backups and restores (docs/backup.md) ---------------------------------------------

    def now(self) -> Timestamp:
        """A fresh timestamp of this coordinator's clock (a backup's default ``at``)."""
        return self.clock.now()

    async def snapshot_page(
        self, partition: PartitionId, *, start: Key, at: Timestamp, limit: int
    ) -> ScanReply:
        """One page of ``partition`` as of ``at`` (a backup's), routed to its owner or leader.
        An ``at`` further ahead of this clock than the clock skew allowed is refused
        (``ValidationError``, :func:`~kvstore.coordinator.singleton.check_page_at`)."""
        check_page_at(at, self.clock.now())
        result: CallResult[ScanReply] = await self._rerouted(
            lambda: self._run(new_snapshot_page(partition, start, at, limit), self._now_us()),
            _error_of,
        )
        return self._reply(result, "snapshot_page")

    async def restore(self, request: RestoreRequest) -> RestoreReply:
        """Write a backup's rows into their partition (see ``RestoreRequest``)."""
        result: CallResult[RestoreReply] = await self._rerouted(
            lambda: self._run(new_restore(request), self._now_us()), _error_of
        )
        return self._reply(result, "restore")

    async def txn_record(self, token: str) -> LedgerRecord | None:
        """The ledger record of the transaction that used idempotency ``token``, if known."""
        result: CallResult[TokenLookupReply] = await self._rerouted(
            lambda: self._run(new_token_lookup(token, self._partition_of), self._now_us()),
            _error_of,
        )
        return self._reply(result, "token").record

    # --- answers ----------------------------------------------------------------------------

    def _reply(self, result: CallResult[R], label: str) -> R:
        """The call's reply, or its failure raised as the typed error."""
        if result.error is None and result.reply is not None:
            self.metrics.singletons.labels(label, "ok").inc()
            return result.reply
        code = result.error or ErrorCode.InternalError
        self.metrics.singletons.labels(label, code.name).inc()
        raise self._call_error(code, result.partition)

    def _call_error(self, code: ErrorCode, partition: PartitionId | None) -> KvError:
        """The error for a failed call of a read or a refused one (nothing was applied)."""
        where = "a partition"
        details: dict[str, object] = {}
        if partition is not None:
            node = self.cluster_map.owner_of(partition)
            where = f"partition {partition} on node {node}"
            details.update(partition=partition, node=node)
        if code is ErrorCode.OutcomeUnknown:  # a read that was not answered: retry it
            return Unavailable(f"{where} did not answer", details=details)
        if code is ErrorCode.Unavailable:
            return Unavailable(f"{where} is unreachable", details=details)
        if code in _INTERNAL_FAULTS:  # the caller's request is not what is wrong
            return Unavailable(
                f"{where}: {code.value.summary}", details={**details, "cause": code.name}
            )
        return error_from_code(code, f"{where}: {code.value.summary}", details=details)


def _txn_refusal(result: TxnResult) -> ErrorCode | None:
    """The code of a transaction refused before anything ran (no outcome), else None."""
    return None if result.committed or result.outcomes else result.error


def _error_of(result: CallResult[Any] | ReadResult | ScanResult) -> ErrorCode | None:
    return result.error
