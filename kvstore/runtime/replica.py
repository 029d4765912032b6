"""A node's replication: leading, following and electing, for the node runtime.

Theory of operation
-------------------
In a replicated cluster every partition has a replica set and one leader (the live placement,
:mod:`kvstore.replication.placement`, kept in the control plane). :class:`Replicator` is the part
of a :class:`~kvstore.runtime.node.NodeRuntime` that carries the rules of
:mod:`kvstore.replication.rules` out; it runs wherever the runtime runs (production, the
simulator, tests), over the runtime's scheduler and sender and a
:class:`~kvstore.replication.control.ControlPlane`.

**Leading.** Before each group commit the runtime calls :meth:`stamp`: every partition this node
leads with unflushed writes gets its next position (leadership epoch, seq + 1) written into its
meta row, so the position travels inside the batch. :meth:`shipped` logs each led partition's
batch and ships it to the followers (at most one call in flight per follower and partition;
more batches ride the next call); the runtime answers the requests that waited on the flush only
when :meth:`wait` says every led partition of it is durable on a majority (rule 2). A follower
that answers with a position the leader's log does not continue gets the batches it lacks, or a
snapshot (:func:`~kvstore.replication.rules.catch_up_from`).

**Serving.** A led partition serves (:meth:`refusal` is ``None``) only while its lease holds
(renewed by each map read that shows this leadership), after the takeover wait, and once its
first batch under the new epoch (the barrier) is durable on a majority. A replica that does not
lead answers ``WrongOwner`` naming the leader and epoch.

**Following.** :meth:`handle` takes ``ReplicateRequest`` (rule 1; rows applied through the
partition's store view, so they land in the node's open batch and flush with its group commit;
the answer leaves after that flush) and ``PositionRequest`` (an election's poll: the promise is
made durable before the answer, rule 3).

**Ticks** (every ``REPL_TICK_MS``): beat this node's liveness key (its value is the node's
``host:port``, so the list of live nodes is also where a node added after the others started is
found: :attr:`Replicator.addresses`), read the map (renewing leases, taking up or giving up
leaderships), list the live nodes. For each partition whose leader is not
live, the first live replica in the set's order runs an election: poll every replica, choose
among a majority (rule 4), compare-and-set the map. A node that finds itself leader at boot (it
restarted inside the liveness TTL) elects too: it never resumes an epoch it led before, since
its unflushed batches may differ from what followers hold under the same positions.

**Giving up a leadership** fails the answers still waiting for its majority with
``OutcomeUnknown`` (their writes may survive on the new leader: callers ask again with their
token, as after a timeout), and so does every answer still waiting that was stepped on that
partition during the leadership, wherever it waits (the runtime's ``leadership_ended``): it may
have read rows no majority holds. Writes still unstamped in the open batch belong to no
history: they are dropped (``discard_open_writes``), so the copy keeps exactly the batches of its
position and may even win the next election. A copy the node leaves (removed from the replica
set) is emptied and *poisoned* (seq ``-1``): only a snapshot brings it back.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from kvstore import limits
from kvstore.errors import ErrorCode, KvError, OutcomeUnknown, Unavailable, WrongOwner
from kvstore.logs import log_event
from kvstore.messages import (
    PositionReply,
    PositionRequest,
    ReplicateReply,
    ReplicateRequest,
    Reply,
    Request,
    ShippedBatch,
    Snapshot,
)
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants
from kvstore.replication.control import ControlPlane, Versioned
from kvstore.replication.placement import Placement, initial_placement, map_key, node_key
from kvstore.replication.rows import apply_batch, install_snapshot, take_snapshot
from kvstore.replication.rules import (
    Position,
    Verdict,
    catch_up_from,
    choose_leader,
    follower_verdict,
    lease_deadline_us,
    majority,
    majority_seq,
    takeover_wait_us,
)
from kvstore.runtime.actors import Answer, Sender
from kvstore.runtime.scheduler import Scheduler, Timer
from kvstore.storage_node.overlay import NodeBatch
from kvstore.storage_node.store import NodeStore, PartitionMeta
from kvstore.types import NodeId, PartitionId

__all__ = ["ReplicationConfig", "Replicator", "Audit", "POISONED_SEQ"]

_log = logging.getLogger("kvstore.replication")
_US_PER_MS = 1000
_FAR_US = 1 << 62
POISONED_SEQ = -1
"""The seq of a replica whose rows left the leader's history: only a snapshot repairs it."""

Respond = Callable[[Reply | KvError], None]


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """What a node needs to replicate: the cluster's nodes (in ``cluster.toml`` order), the
    partition count, the replication factor and the control plane's key prefix; ``address``
    (``host:port``, production's) is what this node's liveness key holds, so that nodes added
    after the others started are reachable (see :attr:`Replicator.addresses`)."""

    nodes: tuple[NodeId, ...]
    partitions: int
    replication_factor: int
    prefix: str
    address: str = ""
    lease_ms: int = limits.REPL_LEASE_MS
    lease_margin_ms: int = limits.REPL_LEASE_MARGIN_MS
    tick_ms: int = limits.REPL_TICK_MS
    liveness_ttl_ms: int = limits.REPL_LIVENESS_TTL_MS

    def first_placement(self) -> Placement:
        return initial_placement(self.nodes, self.partitions, self.replication_factor)


@dataclass(slots=True)
class _Led:
    """A leadership of this node: epoch, timing and what each follower holds."""

    @property
    def targets(self) -> tuple[NodeId, ...]:
        return self.followers + self.learners

    epoch: int
    followers: tuple[NodeId, ...]  # the voting replicas but this one
    learners: tuple[NodeId, ...]  # shipped to, never counted
    serving_from_us: int
    lease_until_us: int
    barrier_seq: int = 0  # the first seq stamped under this epoch
    own_durable: int = 0  # the highest seq of this partition durable here
    acked: dict[str, int] = field(default_factory=dict)  # follower -> durable seq in our history
    known: dict[str, Position] = field(default_factory=dict)  # follower -> last told position
    busy: set[str] = field(default_factory=set)  # followers with a call in flight
    snapshot_after_us: dict[str, int] = field(default_factory=dict)  # retry bound (lease clock)
    # How many times each target joined the partition during this leadership: an answer to a
    # call sent before it left and joined again says nothing of the copy it holds now.
    joined: dict[str, int] = field(default_factory=dict)
    # The replica set in force: the map epoch that set it, and the first seq stamped under it
    # (0: none yet); it is *committed* once that seq is durable on a majority of it.
    config_epoch: int = 0
    config_seq: int = 0
    committed_config_epoch: int = 0


@dataclass(slots=True)
class _Gate:
    seqs: dict[PartitionId, tuple[int, int]]  # pid -> (leadership epoch, seq)
    done: Callable[[KvError | None], None]


class Audit(Protocol):
    """What an omniscient observer (the simulator) hears from every replicator: each batch a
    leader acknowledged (durable on a majority) and each leadership's start, with the position
    the new leader holds. Production has none."""

    def acknowledged(self, node: NodeId, pid: PartitionId, position: Position) -> None: ...
    def leads(self, node: NodeId, pid: PartitionId, epoch: int, position: Position) -> None: ...


class Replicator:
    """See the module docstring."""

    def __init__(
        self,
        node_id: NodeId,
        store: NodeStore,
        *,
        config: ReplicationConfig,
        control: ControlPlane,
        scheduler: Scheduler,
        sender: Sender,
        lease_clock_us: Callable[[], int],
        local: Callable[[Request, Respond], None],
        when_durable: Callable[[Callable[[], None]], None],
        request_flush: Callable[[], None],
        leadership_ended: Callable[[PartitionId, KvError], None],
        mutants: Mutants = NO_MUTANTS,
        note: Callable[[str], None] | None = None,
        audit: Audit | None = None,
    ) -> None:
        """``local`` submits a request to this node's own runtime; ``when_durable`` calls back
        once every write so far is durable here; ``request_flush`` makes the runtime flush;
        ``leadership_ended`` fails the runtime's answers that depend on a partition."""
        self.node_id = node_id
        self.config = config
        self._store = store
        self._control = control
        self._scheduler = scheduler
        self._sender = sender
        self._clock = lease_clock_us
        self._local = local
        self._when_durable = when_durable
        self._request_flush = request_flush
        self._leadership_ended = leadership_ended
        self._mutants = mutants
        self._note = note
        self._audit = audit
        self.placement: Placement = config.first_placement()
        self._revision = -1  # the map's mod_revision as last read; -1: never read
        self._live: set[str] = set()
        self._led: dict[PartitionId, _Led] = {}
        self._logs: dict[PartitionId, dict[int, ShippedBatch]] = {
            pid: {} for pid in store.partitions
        }
        self._gates: list[_Gate] = []
        self._electing: set[PartitionId] = set()
        self._held_epochs: set[tuple[PartitionId, int]] = set()  # leaderships of this process
        self._dropped: set[PartitionId] = set()  # copies emptied since this process started
        self._boot_map_epoch: int | None = None  # the map epoch at our first read
        self._timer: Timer | None = None
        self.stopped = False
        self.on_placement: Callable[[Placement], None] | None = None
        # The addresses the live nodes publish in their liveness keys (kept once seen: a node
        # whose key lapsed for a moment is still a replica to reach); on_addresses hears of
        # every change.
        self.addresses: dict[NodeId, str] = {}
        self.on_addresses: Callable[[dict[NodeId, str]], None] | None = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._tick()

    def stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pid in list(self._led):  # every leadership ends here (see _unlead)
            self._leadership_ended(pid, _leadership_lost(pid))
        self._fail_gates(set(self._led))
        self._led.clear()

    def _trace(self, line: str) -> None:
        if self._note is not None:
            self._note(f"{self.node_id} {line}")

    def status(self) -> list[dict[str, object]]:
        """Per partition replicated here: role, epoch, position, and, where this node leads,
        what each follower acknowledged (``kvctl cluster status`` shows it)."""
        out: list[dict[str, object]] = []
        for pid in sorted(self._logs):
            part = self.placement.of(pid)
            if self.node_id not in part.holders:
                continue
            meta = self._store.partition(pid).get_meta()
            entry: dict[str, object] = {
                "partition": pid,
                "leader": part.leader,
                "replicas": list(part.replicas),
                "epoch": part.epoch,
                "position": [meta.epoch, meta.seq],
                "promised": meta.promised,
            }
            if part.learners:
                entry["learners"] = list(part.learners)
            led = self._led.get(pid)
            if led is not None:
                entry["serving"] = self.refusal(pid) is None
                entry["config_epoch"] = led.committed_config_epoch
                # The voting set in force is committed once config_epoch reaches its epoch.
                entry["config_in_force"] = led.config_epoch
                entry["acked"] = {node: led.acked.get(node, 0) for node in led.targets}
                entry["lag"] = {
                    node: max(0, meta.seq - led.acked.get(node, 0)) for node in led.targets
                }
            out.append(entry)
        return out

    # --- serving ----------------------------------------------------------------------------

    def leads(self, pid: PartitionId) -> bool:
        return pid in self._led

    def refusal(self, pid: PartitionId) -> KvError | None:
        """``None`` when this node may serve ``pid`` now, else the error to answer."""
        led = self._led.get(pid)
        if led is None:
            part = self.placement.of(pid)
            if part.leader == self.node_id:
                return _failing_over(pid)  # an election or a takeover is under way
            return WrongOwner(
                f"node {self.node_id} does not lead partition {pid}",
                details={"epoch": part.epoch, "partition": pid, "owner": part.leader},
            )
        now_us = self._clock()
        if now_us >= led.lease_until_us or now_us < led.serving_from_us:
            return _failing_over(pid)
        if led.barrier_seq == 0 or self._majority(led) < led.barrier_seq:
            return _failing_over(pid)
        return None

    def _majority(self, led: _Led) -> int:
        return majority_seq(led.own_durable, led.acked, led.followers, self._mutants)

    # --- the flush hooks (leader side) ------------------------------------------------------

    def stamp(self) -> None:
        """Give every led partition with unflushed writes its next position (module doc)."""
        for pid, led in self._led.items():
            if not self._store.open_writes_of(pid):
                continue
            view = self._store.partition(pid)
            meta = view.get_meta()
            seq = max(meta.seq, 0) + 1
            view.put_meta(
                replace(meta, epoch=led.epoch, seq=seq, promised=max(meta.promised, led.epoch))
            )
            if led.barrier_seq == 0:
                led.barrier_seq = seq
            if led.config_seq == 0:
                led.config_seq = seq

    def shipped(self, batch: NodeBatch) -> dict[PartitionId, tuple[int, int]]:
        """Log and ship the led partitions' batches of a flush; what the flush must wait for."""
        seqs: dict[PartitionId, tuple[int, int]] = {}
        for pid, part in batch.items():
            led = self._led.get(pid)
            if led is None or part.meta is None or part.meta.epoch != led.epoch:
                continue
            seq = part.meta.seq
            self._log(pid, ShippedBatch(epoch=led.epoch, seq=seq, rows=part))
            seqs[pid] = (led.epoch, seq)
            for follower in led.targets:
                self._pump(pid, led, follower)
        return seqs

    def local_durable(self, seqs: dict[PartitionId, tuple[int, int]]) -> None:
        """The flush carrying ``seqs`` is durable here."""
        for pid, (epoch, seq) in seqs.items():
            led = self._led.get(pid)
            if led is not None and led.epoch == epoch:
                led.own_durable = max(led.own_durable, seq)
        self._check_gates()

    def wait(
        self, seqs: dict[PartitionId, tuple[int, int]], done: Callable[[KvError | None], None]
    ) -> None:
        """Call ``done(None)`` once every ``seqs`` entry is durable on a majority, or
        ``done(error)`` if its leadership ends first."""
        self._gates.append(_Gate(seqs, done))
        self._check_gates()

    def _check_gates(self) -> None:
        for led in self._led.values():
            if led.committed_config_epoch < led.config_epoch:
                self._note_config(led)
        if not self._gates:
            return
        waiting: list[_Gate] = []
        ended: list[tuple[_Gate, KvError | None]] = []
        for gate in self._gates:
            outcome = self._gate_outcome(gate)
            if isinstance(outcome, _Pending):
                waiting.append(gate)
            else:
                ended.append((gate, outcome))
        self._gates = waiting
        for gate, error in ended:
            if error is None and self._audit is not None:
                for pid, (epoch, seq) in gate.seqs.items():
                    self._audit.acknowledged(self.node_id, pid, Position(epoch, seq))
            gate.done(error)

    def _gate_outcome(self, gate: _Gate) -> KvError | _Pending | None:
        """``None`` when every batch of the gate is durable on a majority, ``_PENDING`` while
        one may still become so, the error once a leadership it waits on has ended."""
        outcome: KvError | _Pending | None = None
        for pid, (epoch, seq) in gate.seqs.items():
            led = self._led.get(pid)
            if led is None or led.epoch != epoch:
                return _leadership_lost(pid)
            if self._majority(led) < seq:
                outcome = _PENDING
        return outcome

    def _fail_gates(self, pids: set[PartitionId]) -> None:
        failed = [g for g in self._gates if any(pid in pids for pid in g.seqs)]
        if not failed:
            return
        self._gates = [g for g in self._gates if g not in failed]
        for gate in failed:
            pid = next(pid for pid in gate.seqs if pid in pids)
            gate.done(_leadership_lost(pid))

    def _log(self, pid: PartitionId, batch: ShippedBatch) -> None:
        log = self._logs[pid]
        log[batch.seq] = batch
        while len(log) > limits.REPL_LOG_BATCHES_MAX:
            del log[next(iter(log))]

    # --- shipping ---------------------------------------------------------------------------

    def _position(self, pid: PartitionId) -> Position:
        meta = self._store.partition(pid).get_meta()
        return Position(meta.epoch, meta.seq)

    def _pump(self, pid: PartitionId, led: _Led, follower: NodeId) -> None:
        """Send ``follower`` what it lacks, if no call to it is in flight (and it is still one
        of the partition's targets: a replica removed meanwhile gets nothing more)."""
        if follower in led.busy or self.stopped or follower not in led.targets:
            return
        mine = self._position(pid)
        known = led.known.get(follower)
        batches: tuple[ShippedBatch, ...] = ()
        snapshot: Snapshot | None = None
        prev = mine
        if known is not None:
            log = self._logs[pid]
            start = catch_up_from(known, {s: b.epoch for s, b in log.items()}, mine)
            if start is None:
                if self._store.open_writes_of(pid):
                    return  # a snapshot holds flushed-or-stamped rows only: at the next flush
                if self._clock() < led.snapshot_after_us.get(follower, 0):
                    return  # the last one failed (too large, lost): not every tick
                snapshot = take_snapshot(self._store.partition(pid))
            elif start <= mine.seq:
                end = min(mine.seq, start + limits.REPL_BATCHES_PER_MESSAGE_MAX - 1)
                batches = tuple(log[s] for s in range(start, end + 1))
                prev = known
            elif led.acked.get(follower, 0) >= mine.seq:
                return  # level and acknowledged: nothing to say until the next tick
        request = ReplicateRequest(
            partition=pid,
            node=follower,
            leader=self.node_id,
            leader_epoch=led.epoch,
            prev_epoch=prev.epoch,
            prev_seq=prev.seq,
            batches=batches,
            snapshot=snapshot,
        )
        led.busy.add(follower)
        epoch = led.epoch
        joined = led.joined.get(follower, 0)
        deadline_us = self._scheduler.now_us() + limits.REPL_CALL_TIMEOUT_MS * _US_PER_MS

        def answered(reply: Reply | None, error: ErrorCode | None) -> None:
            if snapshot is not None and not isinstance(reply, ReplicateReply):
                retry_us = limits.REPL_SNAPSHOT_RETRY_MS * _US_PER_MS
                led.snapshot_after_us[follower] = self._clock() + retry_us
            elif snapshot is not None and isinstance(reply, ReplicateReply) and not reply.accepted:
                # Refused: a new learner whose map does not name it yet (or a replica whose map
                # already dropped it). Not again before its next map read, not in a tight loop.
                retry_us = self.config.tick_ms * _US_PER_MS
                led.snapshot_after_us[follower] = self._clock() + retry_us
            self._replicated(pid, epoch, follower, reply, error, joined=joined)

        self._send(request, deadline_us, answered)

    def _replicated(
        self,
        pid: PartitionId,
        epoch: int,
        follower: NodeId,
        reply: Reply | None,
        error: ErrorCode | None,
        *,
        joined: int,
    ) -> None:
        led = self._led.get(pid)
        if led is None or led.epoch != epoch:
            return
        led.busy.discard(follower)
        if follower not in led.targets:
            return  # removed from the partition while the call was out: nothing more to it
        if led.joined.get(follower, 0) != joined:  # it left and came back meanwhile
            self._pump(pid, led, follower)
            return
        if not isinstance(reply, ReplicateReply):
            led.known.pop(follower, None)  # ask afresh at the next tick
            return
        if reply.promised > led.epoch:  # an election is under way or done: we are deposed
            self._trace(f"p{pid} deposed: {follower} promised epoch {reply.promised}")
            self._unlead(pid)
            return
        led.known[follower] = Position(reply.epoch, reply.seq)
        if reply.accepted:
            led.acked[follower] = max(led.acked.get(follower, 0), reply.seq)
            self._check_gates()
        if self._position(pid) != led.known[follower] or not reply.accepted:
            self._pump(pid, led, follower)

    def _send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        """Send ``request`` (to ourselves by a local submit); ``answer`` runs exactly once:
        with the outcome, or with ``Unavailable`` at ``deadline_us`` (a lost message is never
        answered by the network)."""
        answered = False

        def once(reply: Reply | None, error: ErrorCode | None) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            timer.cancel()
            answer(reply, error)

        timer = self._scheduler.call_later(
            max(0, deadline_us - self._scheduler.now_us()),
            lambda: once(None, ErrorCode.Unavailable),
        )
        if getattr(request, "node", None) == self.node_id:

            def respond(outcome: Reply | KvError) -> None:
                if isinstance(outcome, KvError):
                    once(None, outcome.code)
                else:
                    once(outcome, None)

            self._local(request, respond)
            return
        self._sender.send(request, deadline_us, once)

    # --- the follower side ------------------------------------------------------------------

    def handle(self, request: ReplicateRequest | PositionRequest, respond: Respond) -> None:
        """Answer a replication request addressed to this node (module docstring)."""
        pid = request.partition
        if pid not in self._logs or request.node != self.node_id:
            respond(
                WrongOwner(
                    f"node {self.node_id} holds no replica of partition {pid}",
                    details={"partition": pid, "epoch": self.placement.epoch},
                )
            )
            return
        if type(request) is PositionRequest:
            self._on_position(request, respond)
        else:
            assert type(request) is ReplicateRequest
            self._on_replicate(request, respond)

    def _on_position(self, request: PositionRequest, respond: Respond) -> None:
        pid = request.partition
        view = self._store.partition(pid)
        meta = view.get_meta()
        led = self._led.get(pid)
        if led is not None and led.epoch < request.epoch:
            self._unlead(pid)  # an election for a later epoch: stop leading first
            meta = view.get_meta()
        if request.epoch > meta.promised:
            view.put_meta(replace(meta, promised=request.epoch))
            self._request_flush()
        # What this replica holds now (applied batches may not be durable yet): answered once
        # everything written so far is durable, so the answer never claims a batch a crash
        # could still take away.
        held = view.get_meta()
        reply = PositionReply(epoch=held.epoch, seq=held.seq, promised=held.promised)
        self._when_durable(lambda: respond(reply))

    def _on_replicate(self, request: ReplicateRequest, respond: Respond) -> None:
        pid = request.partition
        view = self._store.partition(pid)
        if self.node_id not in self.placement.of(pid).holders:
            # Not ours (yet, or any more) by the map we last read: take nothing.
            meta = view.get_meta()
            respond(
                ReplicateReply(
                    accepted=False, epoch=meta.epoch, seq=meta.seq, promised=meta.promised
                )
            )
            return
        led = self._led.get(pid)
        if led is not None:
            if led.epoch >= request.leader_epoch:
                meta = view.get_meta()
                respond(
                    ReplicateReply(
                        accepted=False, epoch=meta.epoch, seq=meta.seq, promised=led.epoch
                    )
                )
                return
            self._unlead(pid)  # a later leadership exists
        meta = view.get_meta()
        held = Position(meta.epoch, meta.seq)
        prev = Position(request.prev_epoch, request.prev_seq)
        promise = max(meta.promised, request.leader_epoch)
        verdict = follower_verdict(meta.promised, held, request.leader_epoch, prev, self._mutants)
        if verdict is not Verdict.STALE_EPOCH and request.snapshot is not None:
            install_snapshot(view, request.snapshot, promise)
            self._logs[pid].clear()
            self._request_flush()
        elif verdict is Verdict.ACCEPT:
            for batch in request.batches:
                apply_batch(view, batch.rows)
                view.put_meta(
                    replace(
                        batch.rows.meta or view.get_meta(),
                        epoch=batch.epoch,
                        seq=batch.seq,
                        promised=promise,
                    )
                )
                self._log(pid, batch)
            if promise > meta.promised and not request.batches:
                view.put_meta(replace(meta, promised=promise))
            self._request_flush()
        accepted = verdict is Verdict.ACCEPT or (
            verdict is not Verdict.STALE_EPOCH and request.snapshot is not None
        )

        forgets = Mutant.ACCEPT_OLD_EPOCH in self._mutants  # nor tells the sender of its promise
        after = view.get_meta()  # durable once everything written so far is (as above)

        def answer() -> None:
            promised = view.get_meta().promised
            told = min(promised, request.leader_epoch) if forgets else promised
            respond(
                ReplicateReply(accepted=accepted, epoch=after.epoch, seq=after.seq, promised=told)
            )

        self._when_durable(answer)

    # --- leaderships ------------------------------------------------------------------------

    def _lead(self, pid: PartitionId, epoch: int, confirmed_sent_us: int) -> None:
        part = self.placement.of(pid)
        now_us = self._clock()
        wait_us = takeover_wait_us(self.config.lease_ms, self.config.lease_margin_ms, self._mutants)
        led = _Led(
            epoch=epoch,
            followers=part.followers,
            learners=part.learners,
            serving_from_us=now_us + wait_us,
            lease_until_us=self._lease_until(confirmed_sent_us),
            config_epoch=self.placement.epoch,  # committed with the barrier
        )
        view = self._store.partition(pid)
        meta = view.get_meta()
        led.own_durable = max(meta.seq, 0)
        self._led[pid] = led
        self._held_epochs.add((pid, epoch))
        if self._audit is not None:
            self._audit.leads(self.node_id, pid, epoch, Position(meta.epoch, meta.seq))
        # The barrier: a batch under the new epoch (rule: commit a batch of one's own first).
        view.put_meta(replace(meta, promised=max(meta.promised, epoch)))
        self._request_flush()
        self._trace(f"leads p{pid} at epoch {epoch}")
        log_event(
            _log, "replica.leads", logging.INFO, node=self.node_id, partition=pid, epoch=epoch
        )
        for follower in led.targets:
            self._pump(pid, led, follower)
        # Serving starts at the end of the takeover wait: wake the clients' retries then.
        self._scheduler.call_later(wait_us + 1, self._check_gates)

    def _unlead(self, pid: PartitionId) -> None:
        led = self._led.pop(pid, None)
        if led is None:
            return
        self._trace(f"stops leading p{pid} (epoch {led.epoch})")
        log_event(
            _log, "replica.unleads", logging.INFO, node=self.node_id, partition=pid, epoch=led.epoch
        )
        # Unstamped writes belong to no history: dropped (their answers fail just below). What
        # was stamped stays: it is in the history, acknowledged or not.
        self._store.discard_open_writes(pid)
        # First every answer that depends on the partition (a later gate may already be
        # complete, and failing the gates below releases the ones queued behind them).
        self._leadership_ended(pid, _leadership_lost(pid))
        self._fail_gates({pid})

    def _lease_until(self, sent_us: int) -> int:
        return lease_deadline_us(sent_us, self.config.lease_ms, self.config.lease_margin_ms)

    # --- ticks: liveness, map, elections ----------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self.stopped:
            return
        self._timer = self._scheduler.call_later(self.config.tick_ms * _US_PER_MS, self._tick)
        prefix = self.config.prefix
        alive = self.config.address.encode() or b"1"  # the address: see ``addresses``
        self._control.beat(
            node_key(prefix, self.node_id), alive, self.config.liveness_ttl_ms, _ignore
        )
        sent_us = self._clock()
        self._control.read(
            map_key(prefix), lambda found, error: self._map_read(found, error, sent_us)
        )
        for pid, led in self._led.items():  # heartbeats and catch-up of silent followers
            for follower in led.targets:
                self._pump(pid, led, follower)

    def _map_read(self, found: Versioned | None, error: str | None, sent_us: int) -> None:
        if self.stopped or error is not None:
            return
        if found is None:  # a new cluster: propose the first map (every node proposes the same)
            first = self.config.first_placement()
            self._control.write_if(map_key(self.config.prefix), first.encode(), 0, _ignore)
            return
        try:
            placement = Placement.decode(found.value)
        except KvError as bad:
            log_event(_log, "replica.bad_map", logging.ERROR, node=self.node_id, error=str(bad))
            return
        if placement.epoch < self.placement.epoch:
            return  # an older read answered late (reads overlap): it confirms nothing new
        self._adopt(placement, found.mod_revision, sent_us)
        self._control.list(
            node_key(self.config.prefix),
            self._live_listed,
        )

    def _adopt(self, placement: Placement, revision: int, sent_us: int) -> None:
        """Take the map read at ``sent_us``: leases, leaderships gained and lost, replica sets
        changed."""
        changed = placement != self.placement
        self.placement = placement
        self._revision = revision
        if self._boot_map_epoch is None:
            self._boot_map_epoch = placement.epoch
        boot_epoch = self._boot_map_epoch
        for pid in self._logs:
            part = placement.of(pid)
            led = self._led.get(pid)
            if self.node_id in part.holders:
                self._dropped.discard(pid)  # ours again: a later removal drops it again
            if part.leader != self.node_id or self.node_id not in part.replicas:
                if led is not None:
                    self._unlead(pid)
                if (
                    self.node_id not in part.holders
                    and pid not in self._dropped
                    and self._position(pid) != Position(0, 0)
                ):
                    self._drop_copy(pid)  # we left its replicas (maybe while we were down)
                continue
            if led is not None and led.epoch == part.epoch:
                led.lease_until_us = self._lease_until(sent_us)  # rule 5: renewed
                if (led.followers, led.learners) != (part.followers, part.learners):
                    self._reshape(pid, led, part.followers, part.learners)
            elif led is not None:
                self._unlead(pid)
            elif (
                part.epoch <= boot_epoch
                or self._position(pid).epoch >= part.epoch
                or (pid, part.epoch) in self._held_epochs
            ):
                # A leadership older than this process (an earlier incarnation may have held
                # it, its batches on followers but not here), or one we already held: never
                # resume it, elect a successor.
                self._elect(pid)
            else:
                self._lead(pid, part.epoch, sent_us)
        if changed and self.on_placement is not None:
            self.on_placement(placement)

    def _reshape(
        self,
        pid: PartitionId,
        led: _Led,
        followers: tuple[NodeId, ...],
        learners: tuple[NodeId, ...],
    ) -> None:
        """The replica set changed under this leadership (one change at a time, by the map):
        from now on majorities count the new set. Any majority of the new set meets any of
        the old one, so what was durable stays durable."""
        self._trace(f"p{pid} replicas now {followers} learners {learners}")
        kept = set(followers) | set(learners)
        for gone in set(led.targets) - kept:
            led.acked.pop(gone, None)
            led.known.pop(gone, None)
        for came in kept - set(led.targets):  # a new learner, or one back: nothing known of it
            led.joined[came] = led.joined.get(came, 0) + 1
            led.acked.pop(came, None)
            led.known.pop(came, None)
        if followers != led.followers:  # a new voting set: commit it with a batch of its own
            led.config_epoch, led.config_seq = self.placement.epoch, 0
            view = self._store.partition(pid)
            view.put_meta(view.get_meta())
            self._request_flush()
        led.followers, led.learners = followers, learners
        for target in led.targets:
            self._pump(pid, led, target)
        self._check_gates()

    def _note_config(self, led: _Led) -> None:
        """The voting set in force is committed once a batch stamped under it is durable on a
        majority of it: every batch acknowledged under the previous set is then on a majority
        of this one too (batches reach replicas in order), so the next change may be made
        (rule 11)."""
        if led.config_seq and self._majority(led) >= led.config_seq:
            led.committed_config_epoch = max(led.committed_config_epoch, led.config_epoch)

    def _drop_copy(self, pid: PartitionId) -> None:
        """This node left ``pid``'s replicas: delete its rows, keeping the promise; the copy
        is poisoned, so a later return starts from a snapshot."""
        self._trace(f"drops its copy of p{pid}")
        self._dropped.add(pid)
        view = self._store.partition(pid)
        meta = view.get_meta()
        # The epoch stays: a node never leads again an epoch it held batches of.
        emptied = PartitionMeta(epoch=meta.epoch, seq=POISONED_SEQ)
        empty = Snapshot(items=(), intents=(), ledger=(), tokens=(), meta=emptied)
        install_snapshot(view, empty, meta.promised)
        self._logs[pid].clear()
        self._request_flush()

    def _live_listed(self, live: dict[str, bytes] | None, error: str | None) -> None:
        if self.stopped or live is None or error is not None:
            return
        prefix = node_key(self.config.prefix)
        self._live = {key[len(prefix) :] for key in live}
        self._learn_addresses(prefix, live)
        for pid in self._logs:
            part = self.placement.of(pid)
            if part.leader in self._live and part.leader in part.replicas:
                continue
            alive = [node for node in part.replicas if node in self._live]
            if alive and alive[0] == self.node_id:
                self._elect(pid)

    def _learn_addresses(self, prefix: str, live: dict[str, bytes]) -> None:
        """Keep the ``host:port`` each live node publishes (an older node's ``1`` is none)."""
        learned = dict(self.addresses)
        for key, value in live.items():
            try:
                address = value.decode("ascii")
            except UnicodeDecodeError:
                continue
            host, sep, port = address.rpartition(":")
            if sep and host and port.isdigit() and 0 < int(port) < 65536:
                learned[NodeId(key[len(prefix) :])] = address
        if learned != self.addresses:
            self.addresses = learned
            if self.on_addresses is not None:
                self.on_addresses(dict(learned))

    def _elect(self, pid: PartitionId) -> None:
        """Poll the replicas of ``pid`` and install the best one as leader (rules 3, 4)."""
        if pid in self._electing or self.stopped:
            return
        self._electing.add(pid)
        placement, revision = self.placement, self._revision
        proposed = placement.epoch + 1
        replicas = placement.of(pid).replicas
        positions: dict[str, Position] = {}
        pending = set(replicas)
        self._trace(f"elects p{pid} for epoch {proposed}")

        decided = False

        def decide() -> None:
            nonlocal decided
            if decided:
                return
            decided = True
            timer.cancel()
            chosen = choose_leader(replicas, positions, self._mutants)
            if chosen is None:  # no majority answered: a later tick tries again
                self._electing.discard(pid)
            else:
                self._install(pid, placement, revision, NodeId(chosen))

        graced = False

        def polled(node: NodeId, reply: Reply | None) -> None:
            nonlocal graced
            pending.discard(node)
            if isinstance(reply, PositionReply):
                positions[node] = Position(reply.epoch, reply.seq)
            if not pending:
                decide()
            elif not graced and len(positions) >= majority(len(replicas)):
                # A majority suffices (rule 4); the rest get a short grace, so that the most
                # up-to-date replica usually wins without waiting out an unreachable one.
                graced = True
                self._scheduler.call_later(limits.REPL_ELECTION_GRACE_MS * _US_PER_MS, decide)

        timeout_us = limits.REPL_CALL_TIMEOUT_MS * _US_PER_MS
        timer = self._scheduler.call_later(timeout_us, decide)
        deadline_us = self._scheduler.now_us() + timeout_us
        for node in replicas:
            request = PositionRequest(partition=pid, node=node, epoch=proposed)
            self._send(request, deadline_us, _poll_answer(node, polled))

    def _install(
        self,
        pid: PartitionId,
        placement: Placement,
        revision: int,
        chosen: NodeId,
        attempts: int = limits.REPL_INSTALL_ATTEMPTS_MAX,
    ) -> None:
        """CAS the map to ``chosen`` leading ``pid``; on a conflict, re-read and apply the
        choice to the newer map if ``pid``'s entry is still the one polled."""
        if revision < 0 or self.stopped:
            self._electing.discard(pid)
            return
        polled = placement.of(pid)
        new = placement.with_leader(pid, chosen)
        sent_us = self._clock()

        def reread(found: Versioned | None, error: str | None) -> None:
            if self.stopped or found is None or error is not None or attempts <= 1:
                self._electing.discard(pid)
                return
            try:
                fresh = Placement.decode(found.value)
            except KvError:
                self._electing.discard(pid)
                return
            if fresh.of(pid) == polled:
                self._install(pid, fresh, found.mod_revision, chosen, attempts - 1)
            else:
                self._electing.discard(pid)

        def written(ok: bool | None, error: str | None) -> None:
            if not ok:
                if ok is False:
                    self._control.read(map_key(self.config.prefix), reread)
                else:
                    self._electing.discard(pid)
                return
            self._electing.discard(pid)
            if ok:
                self._trace(f"installs {chosen} as leader of p{pid} at epoch {new.epoch}")
                log_event(
                    _log,
                    "replica.elected",
                    logging.INFO,
                    node=self.node_id,
                    partition=pid,
                    leader=chosen,
                    epoch=new.epoch,
                )
                if self._revision == revision:
                    self._adopt(new, -1, sent_us)  # revision unknown until the next read

        self._control.write_if(map_key(self.config.prefix), new.encode(), revision, written)


def _poll_answer(node: NodeId, polled: Callable[[NodeId, Reply | None], None]) -> Answer:
    def answer(reply: Reply | None, error: ErrorCode | None) -> None:
        del error
        polled(node, reply)

    return answer


class _Pending(enum.Enum):
    PENDING = enum.auto()


_PENDING: Final = _Pending.PENDING


def _leadership_lost(pid: PartitionId) -> OutcomeUnknown:
    return OutcomeUnknown(
        f"partition {pid} changed leader before the write was replicated; it may have been applied",
        details={"partition": pid},
    )


def _ignore(result: object, error: str | None) -> None:
    del result, error


def _failing_over(pid: PartitionId) -> Unavailable:
    return Unavailable(
        f"partition {pid} is changing leader; retry shortly",
        details={"partition": pid, "sent": False},
    )
