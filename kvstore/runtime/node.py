"""One storage node's runtime: its partition cores, one group commit, and background work.

Theory of operation
-------------------
:class:`NodeRuntime` is the only shell around the partition cores (DESIGN sections 2a, 5, 8).
Production's node process, the simulator's node hosts and the test network each build one,
giving it a :class:`~kvstore.storage_node.store.NodeStore` (SQLite, or memory), a
:class:`~kvstore.runtime.disk.Disk`, a :class:`~kvstore.runtime.scheduler.Scheduler` and a
:class:`~kvstore.runtime.actors.Sender` for requests to partitions it does not own.

**Requests.** :meth:`NodeRuntime.submit` runs one request synchronously: ownership (the
``wrong_owner`` error), admission (:mod:`~kvstore.runtime.admission`: at most
``PARTITION_QUEUE_MAX`` requests in progress per partition and ``NODE_REQUESTS_IN_PROGRESS_MAX``
per node, and, for requests that start new work (reads, prepares, executes, singleton writes),
none while the ``gate`` says the process is behind; else a retryable ``Overloaded``; the second
phase of admitted transactions always runs, so work in flight drains), then the core's step.
Its writes land in the node's one open batch. The answer goes to ``respond`` once it is safe to
release:

* the open batch has writes -> after the flush that will carry it;
* else a flush is in flight -> after it (the step may have read rows it holds);
* else at once.

**One-node transactions** (not in a replicated node, where each partition replicates on its own
and one fsync no longer makes them atomic: refused with ``ValidationError``, and coordinators
never send them there). A ``NodeExecuteRequest`` names several partitions of this node (the
coordinator sends one when it finds every participant here). It is admitted on all of them or
refused as a whole (``wrong_owner`` for the first one not owned here; ``Overloaded`` if any
partition's bound or the node's is reached; ``DiskFull`` while stalled); a refusal ran nothing.
Admitted, it is one step of the anchor's core (``PartitionCore.execute_node``: every slice voted,
then all applied or none, with the decided, completed ledger record), so no other request sees
it half done, and its rows all land in the one open batch: prepare, decision and apply reach the
disk in one fsync, and the answer waits for that flush like any other. It counts as in progress
on each of its partitions, and once on the node, until answered.

A prepare, execute, singleton write or read round stopped only by other transactions' intents
that it may wait for (:meth:`~kvstore.storage_node.core.PartitionCore.blockers`, the rule of
:mod:`~kvstore.storage_node.intent_wait`) is first *parked* (:mod:`~kvstore.runtime.intent_waits`,
counted in progress): a commit, cancel or decide step that clears a blocker's intents wakes it,
and it goes through the step above afresh (or is parked again, keeping its first deadline);
at ``intent_wait_ms`` it is stepped anyway, and with ``INTENT_WAITERS_MAX`` parked it is not
parked at all.

A ``CompleteRequest`` is the exception: it is advisory (the coordinator does not wait for it, and
a lost completion only means recovery re-sends commits, which are idempotent), so it is answered
at once and its row rides with the next flush, at the latest the next maintenance tick's.

**Group commit, one per node.** The first request that leaves the open batch dirty schedules a
flush (``call_soon``: every request of the current frame joins it). The flush moves the batch of
every partition into one job and hands it to the disk; requests that arrive meanwhile gather in
the next batch, which is flushed as soon as the job ends if anything waits on it. Under load
each fsync thus carries many requests of many partitions.

**A full disk** (:func:`~kvstore.runtime.disk.is_disk_full`: ``SQLITE_FULL``, ``ENOSPC``,
``EDQUOT``) stalls the node instead of failing it. The job stays in flight, overlay included (the
store rolled its transaction back, so nothing of it is on disk, and nothing of it was answered),
and is run again after ``DISK_FULL_RETRY_MIN_MS``, then at doubling intervals of at most
``DISK_FULL_RETRY_MAX_MS``, until it commits; only then are its waiters (and those of the open
batch, flushed next) answered. A retry writes the same rows again, so a commit that failed after
reaching the disk cannot apply anything twice. Meanwhile requests that may write (prepare,
execute, commit, cancel, decide, singleton writes, completions, resolving ledger lookups) are
refused at admission with a retryable ``DiskFull`` naming the node and the cause, and
maintenance pauses; reads run: one whose step saw only durable rows (the overlay's
``unflushed_reads`` count did not move) is answered at once, one that saw unflushed rows waits
for them like any reply. Stopping a stalled node drops the stalled job: it was never answered.

Any other failed flush cannot be retried safely (after a failed fsync the kernel may have dropped
the dirty pages): its waiters and every later request get ``InternalError`` and ``on_fatal`` is
called; the process stops and recovers from disk on restart, where only acknowledged writes are
guaranteed.

**Background work**, every ``MAINTAIN_INTERVAL_MS``: each core's bounded ``maintain`` (cancel
PREPARING records past their deadline, expire ledger records and tokens, fold tombstones), then,
once those writes are durable, one :class:`~kvstore.storage_node.resolver.IntentResolution` per
stale transaction, one :class:`~kvstore.coordinator.recovery.Recovery` per decided record not
acknowledged by every participant or STAGING record past its deadline, and one
:class:`~kvstore.storage_node.resolver.MarkSettle` per applied mark past the retention: at most
one of each per transaction at a time and ``BACKGROUND_ACTORS_MAX`` in all, run by this
runtime's :class:`ActorDriver`. Their requests to partitions of this node are submitted here
directly (same path, durability wait included); the rest go through the sender.

**Replication** (a replicated cluster, :mod:`kvstore.runtime.replica`): the node holds a replica
of each partition of its store and leads some of them. A request for a partition it does not
serve is refused before anything runs (``WrongOwner`` naming the leader, or a retryable
``Unavailable`` while the partition changes leader), and maintenance runs on served partitions
only. Each flush is stamped and shipped by the replicator, and its answers (with every read that
waits on it) are released, in flush order, once its led partitions are durable on a majority,
not at the local fsync; a follower's own acknowledgements need only the local fsync
(``when_local_durable``). Answers whose writes belonged to a leadership that ended before they
reached a majority get ``OutcomeUnknown``.

Mutants of the runtime itself (chaos runs only, ``kvstore.mutants``): ``REPLY_BEFORE_FLUSH``
applies the completion rule to every request (answered at once, its rows left to the next
maintenance tick's flush); ``ACK_WITH_EARLIER_FLUSH`` releases answers waiting on the open batch
when the flush *in flight* ends, one flush before their own writes are durable.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from kvstore import limits
from kvstore.coordinator.recovery import Recovery
from kvstore.coordinator.results import RecoveryResult
from kvstore.errors import (
    DiskFull,
    InternalError,
    KvError,
    Overloaded,
    TransactionConflict,
    ValidationError,
)
from kvstore.logs import log_event
from kvstore.messages import (
    CancelRequest,
    CommitRequest,
    CompleteRequest,
    DecideRequest,
    ExecuteRequest,
    GetRequest,
    LedgerLookupRequest,
    LedgerRecord,
    NodeExecuteRequest,
    PositionRequest,
    PrepareRequest,
    PreventRequest,
    ReadRequest,
    ReplicateRequest,
    Reply,
    Request,
    RestoreRequest,
    ScanRequest,
    TokenLookupRequest,
    WriteReply,
    WriteRequest,
)
from kvstore.mutants import Mutant
from kvstore.replication.control import ControlPlane
from kvstore.runtime.actors import ActorDriver, Answer, Sender
from kvstore.runtime.admission import LagGate, admit
from kvstore.runtime.disk import Disk, disk_full_cause, is_disk_full
from kvstore.runtime.intent_waits import IntentWaits, Parked
from kvstore.runtime.replica import Audit, ReplicationConfig, Replicator
from kvstore.runtime.scheduler import Scheduler, Timer
from kvstore.storage_node.core import PartitionConfig, PartitionCore, StaleIntent
from kvstore.storage_node.metrics import NodeMetrics
from kvstore.storage_node.resolver import IntentResolution, MarkSettle
from kvstore.storage_node.store import FlushJob, NodeStore
from kvstore.timestamps import HybridClock
from kvstore.types import TIMESTAMP_ZERO, NodeId, PartitionId, Timestamp, TxnId

__all__ = ["NodeRuntime", "Respond"]

_log = logging.getLogger("kvstore.storage_node")
_US_PER_MS = 1000

Respond = Callable[[Reply | KvError], None]
"""Where a request's answer goes: the reply, or the typed error."""

# Requests that start new work: refused while the process is behind (runtime/admission.py).
_NEW_WORK: frozenset[type[Request]] = frozenset(
    {
        PrepareRequest,
        ExecuteRequest,
        WriteRequest,
        GetRequest,
        ReadRequest,
        ScanRequest,
        TokenLookupRequest,
    }
)

# Requests whose step may write: refused while the disk is full (a resolving ledger lookup too).
_WRITING_REQUESTS: frozenset[type[Request]] = frozenset(
    {
        PrepareRequest,
        ExecuteRequest,
        CommitRequest,
        CancelRequest,
        DecideRequest,
        WriteRequest,
        CompleteRequest,
        PreventRequest,
        RestoreRequest,
    }
)


# Requests that may wait for other transactions' intents to clear (module docstring).
_MAY_WAIT: frozenset[type[Request]] = frozenset(
    {PrepareRequest, ExecuteRequest, WriteRequest, ReadRequest, ScanRequest}
)


def _wake_rank(request: Request) -> tuple[int, Timestamp]:
    """Reads, then transactions by timestamp, then singleton writes (runtime/intent_waits.py)."""
    if isinstance(request, PrepareRequest | ExecuteRequest):
        return (1, request.ts)
    return (2 if type(request) is WriteRequest else 0, TIMESTAMP_ZERO)


def _may_write(request: Request) -> bool:
    if type(request) is LedgerLookupRequest:
        return request.resolve
    return type(request) in _WRITING_REQUESTS


class NodeRuntime:
    """One storage node's partitions, group commit and background work; see the module."""

    def __init__(
        self,
        node_id: str,
        store: NodeStore,
        *,
        disk: Disk,
        scheduler: Scheduler,
        sender: Sender,
        clock: HybridClock,
        config: PartitionConfig,
        wrong_owner: Callable[[PartitionId], KvError],
        metrics: NodeMetrics | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        note: Callable[[str], None] | None = None,
        gate: LagGate | None = None,
        replication: ReplicationConfig | None = None,
        control: ControlPlane | None = None,
        lease_clock_us: Callable[[], int] | None = None,
        audit: Audit | None = None,
    ) -> None:
        """``note`` receives one line per background actor started (the simulator's trace);
        ``gate`` is fed by production's loop probe (none in the simulator and tests).
        ``replication`` (with its ``control`` plane and a monotonic ``lease_clock_us``) makes
        the node one replica of each of its partitions (:mod:`kvstore.runtime.replica`)."""
        self.node_id = node_id
        self.store = store
        self.clock = clock
        self.cores = {
            pid: PartitionCore(pid, store.partition(pid), config) for pid in store.partitions
        }
        self.in_progress = dict.fromkeys(self.cores, 0)  # admitted, not yet answered
        for pid in store.partitions:  # never stamp at or below a floor or a write on disk
            meta = store.partition(pid).get_meta()
            clock.observe(max(meta.read_floor, meta.max_write_ts))
        self.in_progress_total = 0
        self.gate = gate
        self.failed: BaseException | None = None
        self._disk = disk
        self._scheduler = scheduler
        self._sender = sender
        self._wrong_owner = wrong_owner
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._note = note
        self._early_reply = Mutant.REPLY_BEFORE_FLUSH in config.mutants
        self._ack_early = Mutant.ACK_WITH_EARLIER_FLUSH in config.mutants
        self._open_waiters: list[Callable[[], None]] = []
        self._flight_waiters: list[Callable[[], None]] | None = None
        self._flush_scheduled = False
        self.actors = ActorDriver(scheduler, self)
        self._resolving: set[tuple[PartitionId, TxnId]] = set()
        self._driving: set[TxnId] = set()
        self._settling: set[tuple[PartitionId, TxnId]] = set()
        self._maintain_timer: Timer | None = None
        self.stopped = False
        # A flush that failed for want of space and is being retried (module docstring).
        self.disk_full: BaseException | None = None
        self._disk_full_since_us = 0
        self._disk_full_attempts = 0
        self._retry_timer: Timer | None = None
        self._waits = IntentWaits(scheduler, wait_ms=config.intent_wait_ms)
        # Answers of flushed jobs waiting for a majority of replicas, released in job order.
        self._gated: deque[_Gated] = deque()
        self._job_seqs: dict[PartitionId, tuple[int, int]] = {}
        self.replicator: Replicator | None = None
        if replication is not None:
            assert control is not None and lease_clock_us is not None
            self.replicator = Replicator(
                NodeId(node_id),
                store,
                config=replication,
                control=control,
                scheduler=scheduler,
                sender=sender,
                lease_clock_us=lease_clock_us,
                local=self.submit,
                when_durable=self.when_local_durable,
                request_flush=self._schedule_flush,
                leadership_ended=self.leadership_ended,
                mutants=config.mutants,
                note=note,
                audit=audit,
            )

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the maintenance ticks (and replication's)."""
        self._schedule_maintenance()
        if self.replicator is not None:
            self.replicator.start()

    def stop(self) -> None:
        """Stop background work and forget running actors (writes already made stay queued
        for the next flush: :meth:`when_durable` flushes them)."""
        self.stopped = True
        if self._maintain_timer is not None:
            self._maintain_timer.cancel()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        self._waits.stop()
        self.actors.stop()
        if self.replicator is not None:
            self.replicator.stop()

    @property
    def flushing(self) -> bool:
        """A flush is scheduled or in flight."""
        return self._flush_scheduled or self._flight_waiters is not None

    # --- requests ---------------------------------------------------------------------------

    def submit(self, request: Request, respond: Respond) -> None:
        """Run ``request`` on its partition; ``respond`` gets the answer when it is safe."""
        if type(request) is NodeExecuteRequest:
            self._submit_node_execute(request, respond)
            return
        pid = request.partition
        core = self.cores.get(pid)
        if core is None:
            respond(self._wrong_owner(pid))
            return
        if self.failed is not None:
            respond(InternalError(f"node {self.node_id} failed to flush"))
            return
        replicator = self.replicator
        if replicator is not None:
            if type(request) is ReplicateRequest or type(request) is PositionRequest:
                replicator.handle(request, respond)
                return
            refused = replicator.refusal(pid)
            if refused is not None:
                respond(refused)
                return
        stalled = self.disk_full is not None
        if stalled and _may_write(request):
            respond(self.disk_full_error(pid))
            return
        in_progress = self.in_progress[pid]
        try:
            admit(in_progress, limits.PARTITION_QUEUE_MAX, what=f"partition {pid}")
            admit(self.in_progress_total, limits.NODE_REQUESTS_IN_PROGRESS_MAX, what="the node")
            if self.gate is not None and type(request) in _NEW_WORK:
                self.gate.admit()
        except Overloaded as refused:
            refused.details.update(node=self.node_id, partition=pid)
            respond(refused)
            return
        if not self._park(core, request, respond, None):
            self._step(core, request, respond)

    def _step(self, core: PartitionCore, request: Request, respond: Respond) -> None:
        """Step an admitted request on its core and release the answer when it is safe."""
        pid = request.partition
        if self.replicator is not None:  # a parked request may outlive its leadership
            refused = self.replicator.refusal(pid)
            if refused is not None:
                respond(refused)
                return
        stalled = self.disk_full is not None
        node_ts = self.clock.now() if type(request) is WriteRequest else TIMESTAMP_ZERO
        unflushed_before = self.store.unflushed_reads(pid) if stalled else 0
        try:
            step = core.handle(request, self._scheduler.now_us(), node_ts)
        except KvError as error:
            respond(error)
            return
        reply = step.reply
        if stalled and not step.wrote and self.store.unflushed_reads(pid) == unflushed_before:
            respond(reply)  # a read of durable rows only, while the disk is full: at once
            return
        if type(reply) is WriteReply and reply.ts is not None:
            self.clock.observe(reply.ts)  # a ts above the key's floor: never issue it again
        elif type(request) is RestoreRequest:
            self.clock.observe(request.floor)  # a restored cluster's clocks start above it
        if isinstance(request, CommitRequest | CancelRequest | DecideRequest):
            self._waits.withdraw(pid, request.txn_id)  # its own parked requests: refused
            if step.wrote:
                self._waits.cleared(pid, request.txn_id)  # wake who waited for its intents
        if type(request) is CompleteRequest:
            respond(reply)  # advisory: see the module docstring
            return
        self.in_progress[pid] += 1
        self.in_progress_total += 1

        def release() -> None:
            self.in_progress[pid] -= 1
            self.in_progress_total -= 1
            respond(reply)

        self.when_durable(
            release, failed=lambda error: self._fail_request(pid, respond, error), pids=(pid,)
        )

    def _submit_node_execute(self, request: NodeExecuteRequest, respond: Respond) -> None:
        """A transaction on several partitions of this node, in one step; see the module."""
        pids = request.partitions
        foreign = [pid for pid in pids if pid not in self.cores]
        if foreign:
            respond(self._wrong_owner(foreign[0]))
            return
        if self.failed is not None:
            respond(InternalError(f"node {self.node_id} failed to flush"))
            return
        if self.disk_full is not None:
            respond(self.disk_full_error(request.partition))
            return
        if self.replicator is not None:  # each partition replicates alone: not atomic here
            respond(
                ValidationError(
                    "request", "a several-partition execute is not available in a replicated node"
                )
            )
            return
        try:  # all or nothing: counted on every partition only once admitted on all
            for pid in pids:
                admit(self.in_progress[pid], limits.PARTITION_QUEUE_MAX, what=f"partition {pid}")
            admit(self.in_progress_total, limits.NODE_REQUESTS_IN_PROGRESS_MAX, what="the node")
            if self.gate is not None:
                self.gate.admit()
        except Overloaded as refused:
            refused.details.update(node=self.node_id, partition=request.partition)
            respond(refused)
            return
        anchor = self.cores[request.partition]
        try:
            step = anchor.execute_node(request, self.cores, self._scheduler.now_us())
        except KvError as error:
            respond(error)
            return
        for pid in pids:
            self.in_progress[pid] += 1
        self.in_progress_total += 1

        def answer(outcome: Reply | KvError) -> None:
            for pid in pids:
                self.in_progress[pid] -= 1
            self.in_progress_total -= 1
            respond(outcome)

        reply = step.reply
        self.when_durable(lambda: answer(reply), failed=answer, pids=pids)

    # --- requests waiting for intents (kvstore.runtime.intent_waits) ------------------------

    def _park(
        self, core: PartitionCore, request: Request, respond: Respond, deadline_us: int | None
    ) -> bool:
        """Park ``request`` if only intents it may wait for stop it (then True); a re-park
        keeps its first ``deadline_us``."""
        waits = self._waits
        if (
            self.stopped
            or type(request) not in _MAY_WAIT
            or not waits.wait_us
            or not waits.has_room
        ):
            return False
        now_us = self._scheduler.now_us()
        if deadline_us is not None and now_us >= deadline_us:
            return False
        blockers = core.blockers(request, now_us)
        if not blockers:
            return False
        pid = request.partition
        self.in_progress[pid] += 1
        self.in_progress_total += 1
        if deadline_us is None:
            deadline_us = now_us + self._waits.wait_us

        def resume(parked: Parked, timed_out: bool) -> None:
            self.in_progress[pid] -= 1
            self.in_progress_total -= 1
            if self.stopped:
                return
            if self.failed is not None:
                respond(InternalError(f"node {self.node_id} failed to flush"))
            elif self.disk_full is not None and _may_write(request):
                respond(self.disk_full_error(pid))
            elif timed_out or not self._park(core, request, respond, parked.deadline_us):
                self._step(core, request, respond)

        def refuse() -> None:  # its own transaction ended here while it waited
            self.in_progress[pid] -= 1
            self.in_progress_total -= 1
            respond(
                TransactionConflict(
                    f"the transaction ended on partition {pid} while this request waited",
                    details={"node": self.node_id, "partition": pid},
                )
            )

        parked = Parked(
            partition=pid,
            request=request,
            resume=resume,
            deadline_us=deadline_us,
            rank=_wake_rank(request),
            refuse=refuse,
            txn_id=getattr(request, "txn_id", None),
        )
        self._waits.park(parked, blockers)
        return True

    def _fail_request(self, pid: PartitionId, respond: Respond, error: KvError) -> None:
        self.in_progress[pid] -= 1
        self.in_progress_total -= 1
        respond(error)

    def disk_full_error(self, pid: PartitionId | None = None) -> DiskFull:
        """The refusal of a write while the disk is full: names the node and the cause."""
        error = self.disk_full
        cause = disk_full_cause(error) if error is not None else "no space left on device"
        details: dict[str, object] = {"node": self.node_id, "cause": cause}
        if pid is not None:
            details["partition"] = pid
        return DiskFull(
            f"node {self.node_id} cannot make writes durable ({cause}); writes are refused "
            "until space is freed on its data volume",
            details=details,
        )

    # --- group commit -----------------------------------------------------------------------

    def when_durable(
        self,
        then: Callable[[], None],
        failed: Callable[[KvError], None] | None = None,
        pids: tuple[PartitionId, ...] = (),
    ) -> None:
        """Call ``then`` once every write made so far is durable (at once when it is), or
        ``failed`` if that cannot be promised (a failed flush; in a replicated node, a
        leadership of one of ``pids``, the partitions the answer depends on, that ended
        before its writes reached a majority)."""
        if self._early_reply:  # the mutant: every answer at once, rows at the next tick
            then()
            return
        waiter = then if failed is None else _Waiter(then, failed, pids)
        if self.store.dirty:
            self._open_waiters.append(waiter)
            self._schedule_flush()
        elif self._flight_waiters is not None:
            self._flight_waiters.append(waiter)
        elif self._gated:
            self._gated[-1].waiters.append(waiter)
        else:
            then()

    def when_local_durable(self, then: Callable[[], None]) -> None:
        """Call ``then`` once every write so far is durable on this node, whatever other
        replicas hold (a follower's acknowledgement: waiting for our own leaderships'
        majorities there could deadlock two leaders on each other's acknowledgements)."""
        if self.store.dirty:
            self._open_waiters.append(_Local(then))
            self._schedule_flush()
        elif self._flight_waiters is not None:
            self._flight_waiters.append(_Local(then))
        else:
            then()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._flight_waiters is None:
            self._flush_scheduled = True
            self._scheduler.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.failed is not None or self._flight_waiters is not None:
            return
        waiters, self._open_waiters = self._open_waiters, []
        if self.replicator is not None:
            self.replicator.stamp()
        job = self.store.begin_flush()
        if job is None:
            for waiter in waiters:
                waiter()
            return
        if self.replicator is not None:
            self._job_seqs = self.replicator.shipped(job.batch)
        self._flight_waiters = waiters
        started_s = time.perf_counter()
        writes = job.rows
        self._disk.write(job, lambda error: self._flushed(job, error, started_s, writes))

    def _flushed(
        self, job: FlushJob, error: BaseException | None, started_s: float, writes: int
    ) -> None:
        waiters = self._flight_waiters or []
        if error is not None:
            if is_disk_full(error) and not self.stopped and self.failed is None:
                self._stall(job, error)
            else:
                self._fail(error, waiters)
            return
        if self.disk_full is not None:
            self._resume()
        self.store.end_flush(job)
        self._flight_waiters = None
        if self._ack_early:  # the mutant: the next batch's waiters ride with this flush
            waiters = [*waiters, *self._open_waiters]
            self._open_waiters = []
        metrics = self._metrics
        if metrics is not None:
            metrics.fsyncs.inc()
            metrics.fsync_seconds.observe(time.perf_counter() - started_s)
            metrics.batch_writes.observe(writes)
            metrics.batch_waiters.observe(len(waiters))
        seqs, self._job_seqs = self._job_seqs, {}
        if self.replicator is not None:
            self.replicator.local_durable(seqs)
        if seqs or self._gated:
            self._gate(waiters, seqs)
        else:
            for waiter in waiters:
                waiter()
        if self._open_waiters:
            self._schedule_flush()

    def leadership_ended(self, pid: PartitionId, error: KvError) -> None:
        """Fail every answer still waiting that depends on partition ``pid`` (it was stepped
        under a leadership that just ended, and may have written or read rows of it that no
        majority holds), wherever it waits: open batch, flush in flight, or replication.
        The partition's version history starts afresh (its writes may be discarded)."""
        core = self.cores.get(pid)
        if core is not None:
            core.forget_history()
        lists = [self._open_waiters, *(gated.waiters for gated in self._gated)]
        if self._flight_waiters is not None:
            lists.append(self._flight_waiters)
        for waiters in lists:
            doomed = [w for w in waiters if isinstance(w, _Waiter) and pid in w.pids]
            if not doomed:
                continue
            waiters[:] = [w for w in waiters if not (isinstance(w, _Waiter) and pid in w.pids)]
            for waiter in doomed:
                waiter.failed(error)

    def _gate(
        self, waiters: list[Callable[[], None]], seqs: dict[PartitionId, tuple[int, int]]
    ) -> None:
        """Hold a flushed job's answers until its led partitions are durable on a majority;
        release gated jobs in order (a read may have seen an earlier job's rows)."""
        assert self.replicator is not None
        local = [w for w in waiters if isinstance(w, _Local)]
        for waiter in local:
            waiter()
        gated = _Gated([w for w in waiters if not isinstance(w, _Local)])
        self._gated.append(gated)

        def done(error: KvError | None) -> None:
            gated.done = True
            gated.error = error
            while self._gated and self._gated[0].done:
                self._gated.popleft().release()

        self.replicator.wait(seqs, done)

    def _stall(self, job: FlushJob, error: BaseException) -> None:
        """Keep ``job`` and every waiter; run it again after a bounded backoff."""
        first = self.disk_full is None
        self.disk_full = error
        self._disk_full_attempts += 1
        if first:
            self._disk_full_since_us = self._scheduler.now_us()
            log_event(
                _log,
                "disk.full",
                logging.ERROR,
                node=self.node_id,
                error=repr(error),
                held_replies=len(self._flight_waiters or ()) + len(self._open_waiters),
                rows=job.rows,
            )
        delay_ms = min(
            limits.DISK_FULL_RETRY_MIN_MS * 2 ** min(self._disk_full_attempts - 1, 16),
            limits.DISK_FULL_RETRY_MAX_MS,
        )
        self._retry_timer = self._scheduler.call_later(
            delay_ms * _US_PER_MS, lambda: self._retry_flush(job)
        )

    def _retry_flush(self, job: FlushJob) -> None:
        self._retry_timer = None
        if self.stopped or self.failed is not None:
            return
        started_s = time.perf_counter()
        writes = job.rows
        self._disk.write(job, lambda error: self._flushed(job, error, started_s, writes))

    def _resume(self) -> None:
        log_event(
            _log,
            "disk.writable",
            logging.WARNING,
            node=self.node_id,
            stalled_ms=(self._scheduler.now_us() - self._disk_full_since_us) // _US_PER_MS,
            attempts=self._disk_full_attempts,
        )
        self.disk_full = None
        self._disk_full_attempts = 0

    def _fail(self, error: BaseException, waiters: list[Callable[[], None]]) -> None:
        self.failed = error
        log_event(_log, "flush.failed", logging.CRITICAL, node=self.node_id, error=repr(error))
        failure = InternalError(f"node {self.node_id} failed to flush")
        pending = [*waiters, *self._open_waiters]
        self._open_waiters = []
        self._flight_waiters = None
        for waiter in pending:
            if isinstance(waiter, _Waiter):
                waiter.failed(failure)
        if self._on_fatal is not None:
            self._on_fatal(error)

    # --- the sender of this node's background actors ----------------------------------------

    def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        replicator = self.replicator
        if request.partition not in self.cores or (
            replicator is not None and not replicator.leads(request.partition)
        ):
            self._sender.send(request, deadline_us, answer)
            return

        def respond(outcome: Reply | KvError) -> None:
            if isinstance(outcome, KvError):
                answer(None, outcome.code)
            else:
                answer(outcome, None)

        self.submit(request, respond)

    # --- background -------------------------------------------------------------------------

    def _schedule_maintenance(self) -> None:
        if not self.stopped:
            self._maintain_timer = self._scheduler.call_later(
                limits.MAINTAIN_INTERVAL_MS * _US_PER_MS, self._maintain
            )

    def _maintain(self) -> None:
        self._maintain_timer = None
        if self.stopped:
            return
        if self.failed is None and self.disk_full is None:
            self.maintain_now()
        self._schedule_maintenance()

    def maintain_now(self) -> None:
        """One maintenance pass over every partition (the tick's work; tests call it too)."""
        now_us = self._scheduler.now_us()
        stale: list[tuple[PartitionId, StaleIntent]] = []
        drive: list[tuple[PartitionId, LedgerRecord]] = []
        settle: list[tuple[PartitionId, StaleIntent]] = []
        for pid, core in self.cores.items():
            if self.replicator is not None and self.replicator.refusal(pid) is not None:
                continue  # only a serving leader changes a replicated partition
            work = core.maintain(now_us)
            stale.extend((pid, intent) for intent in work.stale_intents)
            drive.extend((pid, record) for record in work.records_to_drive)
            settle.extend((pid, mark) for mark in work.marks_to_settle)

        def start_actors() -> None:  # background sends only after the writes they follow
            for pid, intent in stale:
                self._resolve(pid, intent)
            for pid, record in drive:
                self._drive(pid, record)
            for pid, mark in settle:
                self._settle(pid, mark)

        # Also flushes what rode along (completions), at the latest here.
        if self.store.dirty:
            self._schedule_flush()
        self.when_durable(start_actors, failed=lambda error: None)

    def _room_for_actor(self) -> bool:
        return not self.stopped and self.actors.running < limits.BACKGROUND_ACTORS_MAX

    def _resolve(self, pid: PartitionId, stale: StaleIntent) -> None:
        key = (pid, stale.txn_id)
        if key in self._resolving or not self._room_for_actor():
            return
        self._resolving.add(key)
        if self._note is not None:
            self._note(f"{self.node_id} resolves {stale.txn_id} on p{pid}")

        def finished(outcome: object) -> None:
            self._resolving.discard(key)
            label = str(outcome)
            if self._metrics is not None:
                self._metrics.stale_intents_resolved.labels(label).inc()
            log_event(
                _log,
                "intent.resolved",
                logging.INFO if label in ("commit", "cancel") else logging.DEBUG,
                txn_id=stale.txn_id,
                partition=pid,
                anchor=stale.anchor,
                outcome=label,
            )

        self.actors.start(
            IntentResolution(stale.txn_id, stale.anchor, pid),
            finished,
            lambda error: finished("error"),
        )

    def _settle(self, pid: PartitionId, mark: StaleIntent) -> None:
        key = (pid, mark.txn_id)
        if key in self._settling or not self._room_for_actor():
            return
        self._settling.add(key)
        if self._note is not None:
            self._note(f"{self.node_id} settles the mark of {mark.txn_id} on p{pid}")

        def finished(outcome: object) -> None:
            del outcome
            self._settling.discard(key)

        self.actors.start(
            MarkSettle(mark.txn_id, mark.anchor, pid), finished, lambda error: finished(None)
        )

    def _drive(self, pid: PartitionId, record: LedgerRecord) -> None:
        txn_id = record.txn_id
        if txn_id in self._driving or not self._room_for_actor():
            return
        self._driving.add(txn_id)
        if self._note is not None:
            self._note(f"{self.node_id} drives {txn_id}")

        def finished(result: RecoveryResult | None) -> None:
            self._driving.discard(txn_id)
            label = "error" if result is None else ("completed" if result.completed else "pending")
            if self._metrics is not None:
                self._metrics.records_driven.labels(label).inc()
            log_event(
                _log,
                "ledger.driven",
                logging.INFO if label == "completed" else logging.DEBUG,
                txn_id=txn_id,
                partition=pid,
                state=record.state.value,
                result=label,
            )

        now_us = self._scheduler.now_us()
        self.actors.start(Recovery(record, pid, now_us), finished, lambda error: finished(None))


class _Local:
    """A waiter that needs only this node's durability (module: replication)."""

    __slots__ = ("_then",)

    def __init__(self, then: Callable[[], None]) -> None:
        self._then = then

    def __call__(self) -> None:
        self._then()


class _Gated:
    """A flushed job's answers waiting for replication, and how that ended."""

    __slots__ = ("done", "error", "waiters")

    def __init__(self, waiters: list[Callable[[], None]]) -> None:
        self.waiters = waiters
        self.done = False
        self.error: KvError | None = None

    def release(self) -> None:
        error = self.error
        for waiter in self.waiters:
            if error is None or not isinstance(waiter, _Waiter):
                waiter()
            else:
                waiter.failed(error)


class _Waiter:
    """A durability waiter that also wants to hear about a failed flush, and the partitions
    whose writes it depends on."""

    __slots__ = ("_then", "failed", "pids")

    def __init__(
        self,
        then: Callable[[], None],
        failed: Callable[[KvError], None],
        pids: tuple[PartitionId, ...] = (),
    ) -> None:
        self._then = then
        self.failed = failed
        self.pids = pids

    def __call__(self) -> None:
        self._then()
