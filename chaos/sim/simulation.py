"""One simulated run: a cluster of real cores, clients, a nemesis, then heal, final reads, checks.

Theory of operation
-------------------
:func:`run_seed` builds everything from one ``random.Random(seed)``: the fault profile (swarm
draw), the cluster (``nodes`` storage nodes owning ``partitions`` partitions round-robin, and
``coordinators`` coordinators), the workload and its clients. The run has three phases:

1. **fault phase** (at most ``fault_phase_ms`` of virtual time; it ends early once all
   ``ops_max`` operations were answered, since faults would then only hit an idle cluster):
   clients (:mod:`chaos.sim.client`) issue operations of every kind while the nemesis crashes
   and restarts nodes and coordinators, cuts links, and moves clocks, and the network drops,
   duplicates and delays messages per the profile. Three node crashes in four are *armed*: the
   node dies right after it next answers a request while it holds writes not yet durable (see
   :meth:`Simulation.crash_node`). Half the seeds also *clone* coordinators (see
   :meth:`Simulation.clone_coordinator`), and half take *online backups* at random moments
   (:mod:`chaos.sim.backup`: pages of every partition as of one timestamp);
2. **heal phase**: every fault is lifted (quiet network, links healed, processes restarted, clocks
   set right), clients finish what is in flight, and the cluster runs until it has *settled*: no
   actor running, no intent left, every decided ledger record acknowledged by its participants.
   A cluster that has not settled after ``heal_phase_ms_max`` is a failure ("stuck"): an
   undecided transaction is a liveness bug;
3. **final reads** of every key, one read-only and one checked (placed at a timestamp).

The history then goes through every checker of the workload (strict serializability, plus the
timestamp-order replay), gets and scan pages as single-key reads checked for serializability
only (:func:`~chaos.sim.workloads.unanchor_reads`). The simulator is omniscient where the
history is not: each ``info`` write transaction's fate is looked up in its anchor's ledger, and
each singleton write's in what the nodes applied (a node reports every singleton write it
answered as applied), so the replay can place the ones that committed; an ``ok`` write that did
not commit, or a ``fail`` one that did, is reported. Each completed backup is checked against
that history (:mod:`chaos.sim.backup_check`: the store exactly as of its timestamp). Any
exception raised by a core is a failure of the run, with its traceback.
"""

from __future__ import annotations

import dataclasses
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.checkers.result import Anomaly, CheckResult
from chaos.checkers.suite import check_all
from chaos.history import History
from chaos.sim.backup import BackupOperator, BackupRun, plan_backups
from chaos.sim.backup_check import check_backup
from chaos.sim.client import Client
from chaos.sim.config import FaultProfile, SimConfig
from chaos.sim.hosts import CoordinatorHost, Host, NodeHost
from chaos.sim.loop import EventLoop, Trace
from chaos.sim.network import Network
from chaos.sim.replication_audit import SAMPLE_US as AUDIT_SAMPLE_US
from chaos.sim.replication_audit import ReplicationAudit
from chaos.sim.workloads import Workload, make_workload, stale_own_gets, unanchor_reads
from kvstore.messages import LedgerRecord, TxnState, WriteReply, WriteRequest
from kvstore.ops import Op as KvOp
from kvstore.partitioning import PartitionMap
from kvstore.replication.control import ControlPlane, MemoryControlPlane, Versioned
from kvstore.replication.placement import Placement, node_key
from kvstore.runtime.replica import ReplicationConfig
from kvstore.storage_node.core import PartitionConfig
from kvstore.types import ORIGIN_MAX, NodeId, PartitionId, Timestamp, TxnId

__all__ = ["Client", "SimResult", "Simulation", "run_seed", "MODEL"]

MODEL = "strict-serializable"
_MS = 1000
SETTLE_CHECK_US = 100 * _MS
ARMED_CRASH_MAX_MS = 200  # an armed node crash happens within this, answer or not
LEDGER_KEPT_MS = 24 * 3600 * 1000  # longer than any run: the omniscient lookup needs every record


@dataclass
class SimResult:
    seed: int
    config: SimConfig
    profile: FaultProfile
    history: History
    check: CheckResult | None
    digest: str
    error: str | None
    trace: Trace
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.check is not None and self.check.valid

    def anomalies(self) -> list[Anomaly]:
        return [] if self.check is None else self.check.anomalies

    def summary(self) -> str:
        if self.error is not None:
            return self.error.splitlines()[0] if self.error else "error"
        kinds = sorted({a.kind for a in self.anomalies()})
        return "ok" if self.ok else "anomalies: " + ", ".join(kinds)


class Simulation:
    """A cluster of cores on virtual time, with clients and a nemesis, built from one seed."""

    def __init__(self, seed: int, config: SimConfig, *, verbose: bool = False) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        # The clone fault's own generator: seeds that do not clone run as they did before it.
        self.clone_rng = random.Random(f"clone/{seed}")
        self.profile = (
            FaultProfile.draw(self.rng, self.clone_rng) if config.faults else FaultProfile()
        )
        if config.replication_factor > 1 and config.faults:
            # Nodes stay down long enough for their liveness keys to expire: failovers.
            replication_rng = random.Random(f"replication/{seed}")

            def sometimes(mean_ms: tuple[int, ...]) -> int:
                return replication_rng.choice(mean_ms) if replication_rng.random() < 0.6 else 0

            self.profile = dataclasses.replace(
                self.profile,
                node_down_ms_max=replication_rng.choice((1_000, 4_000, 8_000)),
                pause_ms=sometimes((2_000, 5_000)),
                pause_ms_max=replication_rng.choice((800, 3_000, 6_000)),
                isolate_ms=sometimes((3_000, 6_000)),
                isolate_ms_max=replication_rng.choice((1_000, 4_000, 7_000)),
                expire_ms=sometimes((1_000, 4_000)),
                move_ms=sometimes((1_000, 3_000)),
                depose_ms=sometimes((1_000, 3_000)),
            )
        self.loop = EventLoop()
        self.trace = Trace(keep=verbose)
        self.net = Network(self.loop, self.rng, self.trace, self.profile)
        self.pmap = PartitionMap(config.partitions)
        self.history = History()
        keys = config.accounts if config.workload == "bank" else config.keys
        self.workload: Workload = make_workload(
            config.workload, keys, config.bank_total, every_kind=True
        )
        self.writes: dict[int, list[tuple[TxnId, PartitionId]]] = {}  # invoke -> attempts
        self.singletons: dict[int, KvOp] = {}  # invoke -> its singleton write's op
        self.applied: dict[int, Timestamp] = {}  # id(op) -> the ts a node applied it at
        # Invokes completed ok by a token lookup of a committed record not yet completed.
        self.unapplied_lookups: set[int] = set()
        self.ops_started = 0
        self.stopping = False
        self.moving = False  # a move in progress (one at a time, as the map requires)
        self.voting_epochs: dict[PartitionId, int] = {}  # the operator's last voting change
        self._next_process = 0
        # Online backups mid-run (chaos.sim.backup), drawn from a generator of their own.
        self.backup_rng = random.Random(f"backup/{seed}")
        self.backup_plan = plan_backups(
            self.backup_rng,
            config.workload,
            config.ops_max,
            config.backup_share,
            config.backups_max,
        )
        self._backup_starts = list(self.backup_plan.starts)
        partition_config = PartitionConfig(
            snapshot_window_ms=self.backup_plan.window_ms,
            snapshot_pin_ms=self.backup_plan.pin_ms,
            snapshot_versions_max=self.backup_plan.versions_max,
            intent_stale_ms=self.profile.intent_stale_ms,
            ledger_decision_deadline_ms=self.profile.decision_deadline_ms,
            tombstone_retention_ms=self.profile.tombstone_retention_ms,
            ledger_retention_ms=LEDGER_KEPT_MS,
            idempotency_window_ms=LEDGER_KEPT_MS,
            mutants=config.mutants,
        )
        self.nodes: list[NodeHost] = []
        self.control: SimControlPlane | None = None
        replication: ReplicationConfig | None = None
        self.audit: ReplicationAudit | None = None
        if config.replication_factor > 1:
            self.control = SimControlPlane(self.loop, self.net)
            self.audit = ReplicationAudit(lambda: self.loop.now_us)
            replication = ReplicationConfig(
                nodes=tuple(NodeId(f"n{i}") for i in range(config.nodes)),
                partitions=config.partitions,
                replication_factor=config.replication_factor,
                prefix=REPLICATION_PREFIX,
            )
        for i in range(config.nodes):
            owned = [PartitionId(p) for p in range(config.partitions) if p % config.nodes == i]
            if replication is not None:  # every partition: moves may bring any of them here
                owned = [PartitionId(p) for p in range(config.partitions)]
            node = NodeHost(
                f"n{i}",
                self.loop,
                self.net,
                self.trace,
                origin=1_000 + i,
                resolution_us=self.profile.clock_resolution_us,
                partitions=owned,
                config=partition_config,
                fsync_us=self.profile.fsync_us,
                on_applied=self._applied,
                replication=replication,
                control=None if self.control is None else self.control.client(f"n{i}"),
                audit=self.audit,
            )
            self.nodes.append(node)
            for pid in owned:
                self.net.owner[pid] = node.name
        if replication is not None:  # the first map's leaders, until the control plane has one
            for index, part in enumerate(replication.first_placement().partitions):
                self.net.owner[PartitionId(index)] = part.leader
        self.coordinators = [
            CoordinatorHost(
                f"c{i}",
                self.loop,
                self.net,
                self.trace,
                origin=2_000 + i,
                resolution_us=self.profile.clock_resolution_us,
                pmap=self.pmap,
                mutants=config.mutants,
                rng=self.rng,
                admission_max=self.profile.admission_max,
                count=self.count,
                replicated=replication is not None,
            )
            for i in range(config.coordinators)
        ]
        self.hosts: list[Host] = [*self.nodes, *self.coordinators]
        self.clients = [Client(self, self.new_process()) for _ in range(config.clients)]
        self.backups: list[BackupRun] = []
        self.operator = BackupOperator(self, self.backup_rng)
        self._setup()

    def new_process(self) -> int:
        process = self._next_process
        self._next_process += 1
        return process

    def op_started(self) -> None:
        """A client started an operation: the planned backups whose moment came start now."""
        while self._backup_starts and self.ops_started >= self._backup_starts[0]:
            self._backup_starts.pop(0)
            self.loop.after(0, self.operator.start)

    def _applied(self, request: WriteRequest, reply: WriteReply) -> None:
        if reply.ts is not None:
            self.applied[id(request.op)] = reply.ts

    def count(self, what: str) -> None:
        self.net.count(what)

    def _setup(self) -> None:
        for op in self.workload.setup_ops():
            pid = self.pmap.partition_of(op.key)
            first = next(n for n in self.nodes if pid in n.store.partitions)
            ts = first.clock.now()
            # Every copy the same rows at position (0, 0), before any replication (in a
            # replicated run every node keeps a copy of every partition, held or not).
            for node in self.nodes:
                if pid in node.store.partitions:
                    assert node.runtime is not None
                    node.runtime.cores[pid].write(WriteRequest(partition=pid, op=op), ts)
                    node.store.commit()

    # --- the nemesis -------------------------------------------------------------------------

    def _every(self, mean_ms: int, action: str) -> None:
        if mean_ms <= 0:
            return

        def fire() -> None:
            if self.stopping:
                return
            getattr(self, action)()
            self._every_next(mean_ms, fire)

        self._every_next(mean_ms, fire)

    def _every_next(self, mean_ms: int, fire: Any) -> None:
        self.loop.after(1 + int(self.rng.expovariate(1.0 / (mean_ms * _MS))), fire)

    def _load_done(self) -> bool:
        """Every operation of the fault phase was started and answered: faults from now on
        would only hit an idle cluster."""
        return self.ops_started >= self.config.ops_max and not any(c.busy for c in self.clients)

    def _fault_crash(self, hosts: list[Any], down_ms_max: int) -> None:
        host = self.rng.choice(hosts)
        if host.up:
            self._crash(host, down_ms_max)

    def _crash(self, host: Host, down_ms_max: int, how: str = "") -> None:
        if not host.up:
            return
        self.count(f"crash {type(host).__name__}{how}")
        host.crash()
        incarnation = host.incarnation

        def restart() -> None:
            if not host.up and host.incarnation == incarnation:
                host.restart()

        self.loop.after(self.rng.randint(1, down_ms_max) * _MS, restart)

    def crash_node(self) -> None:
        """Crash a node now, or (three times in four) just after it next answers a request while
        it holds writes not yet durable (within ``ARMED_CRASH_MAX_MS``, else anyway).

        The second kind is where durability bugs show: a correct node has made the answered
        request's writes durable before answering, so only the unanswered writes die with it,
        while a node that answered early (``REPLY_BEFORE_FLUSH``) or with the wrong flush
        (``ACK_WITH_EARLIER_FLUSH``) loses writes a client was told about. At a random instant
        a lightly loaded node is mostly idle and such a crash is rare."""
        node = self.rng.choice(self.nodes)
        if not node.up:
            return
        down_ms_max = self.profile.node_down_ms_max
        if self.rng.random() < 0.25:
            self._crash(node, down_ms_max)
            return
        incarnation = node.incarnation

        def crash() -> None:
            if node.incarnation == incarnation:
                self._crash(node, down_ms_max, " after an answer")

        node.arm_crash(crash)

        def anyway() -> None:
            if node.disarm_crash():
                crash()

        self.loop.after(ARMED_CRASH_MAX_MS * _MS, anyway)

    def crash_coordinator(self) -> None:
        self._fault_crash(self.coordinators, self.profile.coordinator_down_ms_max)

    def clone_coordinator(self) -> None:
        """A coordinator's memory image goes on in two processes, in one of two ways (half and
        half): a fork (the coordinator goes on; a second one is replaced by its child, a copy of
        its memory with the same wall clock) or a snapshot restored twice (the coordinator and
        a second one both boot from it, their wall clock set back by the time since the
        snapshot, up to 300 ms). Each process booted from the image runs production's clone
        path (:meth:`~chaos.sim.hosts.CoordinatorHost.restore`), which must give it an origin
        of its own; otherwise two processes issue equal timestamps, which
        :mod:`chaos.checkers.unique_ts` reports once two of them commit. Work in flight on a
        process booted from the image is lost, as in a crash (a forked child does not run its
        parent's other threads). Everything is drawn from ``clone_rng``."""
        rng = self.clone_rng
        source = rng.choice(self.coordinators)
        if not source.up or len(self.coordinators) < 2:
            return
        twin = rng.choice([c for c in self.coordinators if c is not source])
        fork = rng.random() < 0.5
        origin, last = source.clock.origin, source.clock.last
        offset_us = source.offset_us - (0 if fork else rng.choice((0, 30 * _MS, 300 * _MS)))
        how = "fork" if fork else "restore twice"
        self.count(f"clone CoordinatorHost ({how})")
        self.trace.add(self.loop.now_us, f"clone {source.name} onto {twin.name} ({how})")

        def draw_origin() -> int:
            return rng.randint(1 << 40, ORIGIN_MAX)

        for copy in (twin,) if fork else (source, twin):
            copy.offset_us = offset_us
            copy.restore(origin, last, draw_origin)

    def _clones(self) -> None:
        """``clone_coordinator`` about every ``clone_ms``, timed by ``clone_rng``."""
        mean_us = self.profile.clone_ms * _MS
        if mean_us <= 0:
            return

        def fire() -> None:
            if self.stopping:
                return
            self.clone_coordinator()
            self.loop.after(1 + int(self.clone_rng.expovariate(1.0 / mean_us)), fire)

        self.loop.after(1 + int(self.clone_rng.expovariate(1.0 / mean_us)), fire)

    def partition(self) -> None:
        names = [h.name for h in self.hosts]
        if self.control is not None:  # a node cut from etcd: a leader that keeps serving
            names.append(CONTROL_HOST)
        a, b = self.rng.sample(names, 2)
        link = self.net.link(a, b)
        self.count("partition")
        self.trace.add(self.loop.now_us, f"cut {a}<->{b}")
        self.net.cut.add(link)
        cut_ms = self.rng.randint(100, max(100, self.profile.cut_ms_max))
        self.loop.after(cut_ms * _MS, lambda: self.net.cut.discard(link))

    def pause_node(self) -> None:
        """SIGSTOP a node for a while: it runs nothing (timers, messages and control-plane
        answers wait), while time, and its lease clock, go on."""
        node = self.rng.choice(self.nodes)
        pause_ms = self.rng.randint(100, max(100, self.profile.pause_ms_max))
        if not node.up or node.paused_until_us > self.loop.now_us:
            return
        self.count("pause")
        self.trace.add(self.loop.now_us, f"pause {node.name} for {pause_ms}ms")
        node.paused_until_us = self.loop.now_us + pause_ms * _MS
        if self.control is not None and self.rng.random() < 0.5:
            # and etcd forgets it at once (a revoked lease): its partitions are taken over
            # while it still holds their leases and has batches to ship
            self.control.expire(node_key(REPLICATION_PREFIX, node.name))

    def isolate_node(self) -> None:
        """Cut a node from every other node and from the control plane (clients still reach
        it): a leader that others replace while it still has clients."""
        node = self.rng.choice(self.nodes)
        cut_ms = self.rng.randint(500, max(500, self.profile.isolate_ms_max))
        links = {self.net.link(node.name, other.name) for other in self.nodes if other is not node}
        links.add(self.net.link(node.name, CONTROL_HOST))
        links -= self.net.cut
        self.count("isolate")
        self.trace.add(self.loop.now_us, f"isolate {node.name} for {cut_ms}ms")
        self.net.cut |= links
        if self.control is not None and self.rng.random() < 0.5:
            # etcd drops its liveness key at once: successors are elected while it still holds
            # its leases and serves the clients that reach it
            self.control.expire(node_key(REPLICATION_PREFIX, node.name))
        self.loop.after(cut_ms * _MS, lambda: self.net.cut.difference_update(links))

    def _sample_leaders(self) -> None:
        """Rule 5, sampled: no partition served by two running nodes at once."""
        assert self.audit is not None
        now_us = self.loop.now_us
        serving: list[tuple[PartitionId, list[str]]] = []
        for index in range(self.config.partitions):
            pid = PartitionId(index)
            nodes = [
                n.name
                for n in self.nodes
                if n.up
                and n.paused_until_us <= now_us
                and n.runtime is not None
                and n.runtime.replicator is not None
                and n.runtime.replicator.refusal(pid) is None
            ]
            serving.append((pid, nodes))
        self.audit.check_serving(serving)
        if not self.stopping:
            self.loop.after(AUDIT_SAMPLE_US, self._sample_leaders)

    def move_partition(self) -> None:
        """An operator moves one replica of a partition to a node that holds none, the way
        ``kvctl partition move`` does: add it as a learner, promote it once it has caught up
        with the leader, then remove one of the old replicas (the leader, sometimes). Each step
        is one compare-and-set of the map; a step that loses a race is tried again."""
        assert self.control is not None
        if self.moving:
            return
        pid = PartitionId(self.rng.randrange(self.config.partitions))
        self.moving = True
        self.count("move")
        self.trace.add(self.loop.now_us, f"move a replica of p{pid}")
        self._move_step(pid, None, 0)

    def _move_step(self, pid: PartitionId, target: str | None, tries: int) -> None:
        """One look of the move operator: each voting change waits until the partition's
        leader has committed the set before (docs/replication.md, rule 11)."""
        assert self.control is not None
        if self.stopping or tries > MOVE_STEPS_MAX:
            self.moving = False
            return

        def again() -> None:
            self.loop.after(MOVE_TICK_US, lambda: self._move_step(pid, target, tries + 1))

        def read(found: Versioned | None, error: str | None) -> None:
            if found is None:
                again()
                return
            placement = Placement.decode(found.value)
            part = placement.of(pid)
            voting_epoch = self.voting_epochs.get(pid, 0)
            if target is None:
                spare = [n.name for n in self.nodes if n.name not in part.holders]
                if not spare or not self._config_committed(pid, voting_epoch):
                    self.moving = bool(spare) and tries < MOVE_STEPS_MAX
                    if self.moving:
                        again()
                    return
                chosen = self.rng.choice(spare)
                self._move_write(pid, chosen, placement.with_learner(pid, NodeId(chosen)), found)
            elif target in part.learners:
                if not self._caught_up(pid, part.leader, target):
                    again()
                    return
                self._move_write(pid, target, placement.promoted(pid, NodeId(target)), found)
            elif target in part.replicas and len(part.replicas) > self.config.replication_factor:
                if not self._config_committed(pid, voting_epoch):
                    again()
                    return
                leaving = self.rng.choice([n for n in part.replicas if n != target])
                self._move_write(pid, None, placement.without(pid, NodeId(leaving)), found)
            else:
                self.moving = False

        self.control.read(f"{REPLICATION_PREFIX}/map", read)

    def _move_write(
        self, pid: PartitionId, target: str | None, new: Placement, found: Versioned
    ) -> None:
        assert self.control is not None

        def written(ok: bool | None, error: str | None) -> None:
            outcome = "ok" if ok else "lost"
            self.trace.add(self.loop.now_us, f"move p{pid}: map {new.epoch} {outcome}")
            if ok and new.of(pid).replicas != Placement.decode(found.value).of(pid).replicas:
                self.voting_epochs[pid] = new.epoch  # a voting change: the next waits for it
                self.count("move step")
            if target is None and ok:
                self.moving = False
                return
            self.loop.after(MOVE_TICK_US, lambda: self._move_step(pid, target, 0))

        key = f"{REPLICATION_PREFIX}/map"
        self.control.write_if(key, new.encode(), found.mod_revision, written)

    def _config_committed(self, pid: PartitionId, epoch: int) -> bool:
        """The partition's leader has committed the replica set of map ``epoch`` or later
        (the operator reads the leader's status page; the simulator, its runtime)."""
        for node in self.nodes:
            replicator = None if node.runtime is None else node.runtime.replicator
            if replicator is None or not node.up or not replicator.leads(pid):
                continue
            entry = next(e for e in replicator.status() if e["partition"] == pid)
            committed = entry.get("config_epoch")
            if isinstance(committed, int) and committed >= epoch:
                return True
        return False

    def _caught_up(self, pid: PartitionId, leader: str, learner: str) -> bool:
        """The learner durably holds what the leader durably holds (the operator reads the
        nodes' status pages; the simulator, their disks)."""
        stores = {n.name: n.store for n in self.nodes if n.up}
        if leader not in stores or learner not in stores:
            return False
        lead = stores[leader].durable_rows[pid].meta
        learnt = stores[learner].durable_rows[pid].meta
        return (learnt.epoch, learnt.seq) >= (lead.epoch, lead.seq)

    def depose_leader(self) -> None:
        """Cut a partition's leader from the replica that will run the election and have etcd
        drop the leader's liveness key (a revoked lease): a successor is elected while the old
        leader still serves, reads the map late, and can still reach its other follower."""
        assert self.control is not None
        placement = self.control.placement()
        if placement is None:
            return
        pid = PartitionId(self.rng.randrange(self.config.partitions))
        part = placement.of(pid)
        others = [n for n in part.replicas if n != part.leader]
        if not others:
            return
        leader, elector = part.leader, others[0]
        link = self.net.link(leader, elector)
        cut_ms = self.rng.randint(300, 2_000)
        self.count("depose")
        self.trace.add(self.loop.now_us, f"depose {leader} (p{pid}): cut from {elector} {cut_ms}ms")
        self.net.cut.add(link)
        self.loop.after(cut_ms * _MS, lambda: self.net.cut.discard(link))
        self.control.expire(node_key(REPLICATION_PREFIX, leader))

    def expire_liveness(self) -> None:
        """The control plane drops a live node's liveness key (its next beat restores it)."""
        assert self.control is not None
        node = self.rng.choice(self.nodes)
        self.count("expire liveness")
        self.trace.add(self.loop.now_us, f"expire liveness of {node.name}")
        self.control.expire(node_key(REPLICATION_PREFIX, node.name))

    def move_clock(self) -> None:
        host = self.rng.choice(self.hosts)
        bound_us = self.profile.clock_offset_max_ms * _MS
        host.offset_us = self.rng.randint(-bound_us, bound_us)
        self.count("clock")
        self.trace.add(self.loop.now_us, f"clock {host.name} offset {host.offset_us}us")

    # --- phases ------------------------------------------------------------------------------

    def run(self) -> None:
        for client in self.clients:
            self.loop.after(self.rng.randint(0, 5 * _MS), client.begin)
        profile = self.profile
        self._every(profile.crash_node_ms, "crash_node")
        self._every(profile.crash_coordinator_ms, "crash_coordinator")
        self._every(profile.partition_ms, "partition")
        self._every(profile.clock_ms, "move_clock")
        self._every(profile.pause_ms, "pause_node")
        self._every(profile.isolate_ms, "isolate_node")
        self._every(profile.expire_ms, "expire_liveness")
        self._every(profile.move_ms, "move_partition")
        self._every(profile.depose_ms, "depose_leader")
        if self.audit is not None:
            self.loop.after(AUDIT_SAMPLE_US, self._sample_leaders)
        self._clones()
        self.loop.run_until(self.config.fault_phase_ms * _MS, stop=self._load_done)
        self._heal()
        deadline_us = self.loop.now_us + self.config.heal_phase_ms_max * _MS
        self._settle(deadline_us)
        self._final_reads(deadline_us)

    def settle_and_check(self) -> CheckResult:
        """Heal, wait until settled, run the final reads and check (for step-driven tests)."""
        self._heal()
        deadline_us = self.loop.now_us + self.config.heal_phase_ms_max * _MS
        self._settle(deadline_us)
        self._final_reads(deadline_us)
        return self.check()

    def _settle(self, deadline_us: int) -> None:
        while not self._settled():
            if self.loop.now_us >= deadline_us:
                raise Stuck(f"stuck: the cluster did not settle ({self._pending()})")
            self.loop.run_until(self.loop.now_us + SETTLE_CHECK_US)

    def _heal(self) -> None:
        self.trace.add(self.loop.now_us, "heal")
        self.stopping = True
        self.net.quiet = True
        self.net.cut.clear()
        for host in self.hosts:
            host.offset_us = 0
            if not host.up:
                host.restart()

    def _settled(self) -> bool:
        return (
            not any(c.busy for c in self.clients)
            and not any(b.running for b in self.backups)
            and not any(h.busy for h in self.hosts)
            and all(n.settled() for n in self.nodes)
        )

    def _pending(self) -> str:
        clients = sum(c.busy for c in self.clients)
        actors = {h.name: h.busy for h in self.hosts if h.busy}
        nodes = {n.name: n.pending() for n in self.nodes if not n.settled()}
        backups = sum(b.running for b in self.backups)
        return f"busy clients={clients} backups={backups} actors={actors} nodes={nodes}"

    def _final_reads(self, deadline_us: int) -> None:
        reader = Client(self, self.new_process())
        reader.final = True
        for f, value, script in self.workload.final_scripts():
            reader.run(f, value, script)
            while reader.busy:
                if self.loop.now_us >= deadline_us:
                    raise Stuck("stuck: the final reads did not finish")
                self.loop.run_until(self.loop.now_us + SETTLE_CHECK_US)

    # --- omniscience ---------------------------------------------------------------------------

    def ledger_record(self, txn_id: TxnId, anchor: PartitionId) -> LedgerRecord | None:
        owner = self.net.owner[anchor]  # the leader, in a replicated run
        node = next(n for n in self.nodes if n.name == owner)
        return node.store.partition(anchor).get_ledger(txn_id)

    def resolved_history(self) -> tuple[History, list[Anomaly]]:
        """The history with committed ``info`` writes given their ts, gets and scans as
        single-key reads (:func:`~chaos.sim.workloads.unanchor_reads`), and outcome mismatches."""
        ops = list(self.history.ops)
        wrong: list[Anomaly] = []
        completions = {inv.index: done for inv, done in self.history.pairs()}
        for index, op in self.singletons.items():
            done = completions.get(index)
            if done is None:
                continue
            applied = self.applied.get(id(op))
            where = f"op {done.index} (singleton {op.kind.value} of {op.key!r})"
            if done.type == "info" and applied is not None:
                ops[done.index] = dataclasses.replace(done, ts=tuple(applied))
            elif done.type == "ok" and (applied is None or tuple(applied) != done.ts):
                wrong.append(Anomaly("ok-not-committed", f"{where} answered ok", (done,)))
            elif done.type == "fail" and applied is not None:
                wrong.append(Anomaly("fail-but-committed", f"{where} answered fail", (done,)))
        for index, attempts in self.writes.items():
            done = completions.get(index)
            if done is None:
                continue
            records = [self.ledger_record(txn_id, anchor) for txn_id, anchor in attempts]
            committed = [r for r in records if r is not None and r.state is TxnState.COMMITTED]
            where = f"op {done.index} (attempts {[t for t, _ in attempts]})"
            if len(committed) > 1:
                wrong.append(
                    Anomaly("committed-twice", f"{where}: one token, two commits", (done,))
                )
            if done.type == "info" and committed:
                ops[done.index] = dataclasses.replace(done, ts=tuple(committed[0].ts))
            elif done.type == "ok" and not any(r.txn_id == done.txn_id for r in committed):
                wrong.append(Anomaly("ok-not-committed", f"{where} answered ok", (done,)))
            elif done.type == "fail" and committed:
                wrong.append(Anomaly("fail-but-committed", f"{where} answered fail", (done,)))
        resolved = History.from_ops(ops)
        unapplied = frozenset(
            completions[index].index for index in self.unapplied_lookups if index in completions
        )
        wrong += stale_own_gets(resolved, unapplied=unapplied)
        return unanchor_reads(resolved), wrong

    def check(self) -> CheckResult:
        history, wrong = self.resolved_history()
        total = self.config.bank_total if self.config.workload == "bank" else None
        result = check_all(history, self.config.workload, MODEL, total=total)
        if wrong:
            result.anomalies.extend(wrong)
            result.valid = False
        if self.audit is not None and self.audit.anomalies:
            result.anomalies.extend(self.audit.anomalies)
            result.valid = False
        backup_anomalies = self.check_backups(history)
        if backup_anomalies:
            result.anomalies.extend(backup_anomalies)
            result.valid = False
        return result

    def check_backups(self, history: History) -> list[Anomaly]:
        """Each completed backup against the (resolved) history (chaos.sim.backup_check)."""
        found: list[Anomaly] = []
        for run in self.backups:
            if run.outcome != "ok":
                continue
            if run.overlaps:
                found.append(
                    Anomaly(
                        "backup-overlapping-pages", f"{run.describe()}: {run.overlaps} keys twice"
                    )
                )
            found += check_backup(
                run.image(self.workload.item_value),
                history,
                self.config.workload,
                total=self.config.bank_total,
                accounts=self.workload.keys,
            )
        return found

    def stats(self) -> dict[str, Any]:
        types: dict[str, int] = {}
        for _, done in self.history.pairs():
            types[done.type] = types.get(done.type, 0) + 1
        return {
            "ops": types,
            "events": self.loop.events,
            "messages": self.net.sent,
            "dropped": self.net.dropped,
            "virtual_s": round(self.loop.now_us / 1e6, 3),
            "counts": dict(sorted(self.net.counts.items())),  # faults and notable events
            "backups": [run.describe() for run in self.backups],
        }


CONTROL_HOST = "etcd"  # the control plane's name in the network's cuts
REPLICATION_PREFIX = "/kvstore/sim"
MOVE_TICK_US = 100 * _MS  # how often the move operator looks again
MOVE_STEPS_MAX = 100  # looks per step of a move before it gives up


class SimControlPlane(MemoryControlPlane):
    """The simulator's etcd: the in-memory model on virtual time; every map it accepts also
    routes the simulated network's partition requests to the new leaders. Each node reaches
    it through :meth:`client`, which fails while the nemesis cuts that node from it."""

    def __init__(self, loop: EventLoop, net: Network) -> None:
        super().__init__(loop.after, lambda: loop.now_us)
        self._net = net
        self._loop = loop

    def client(self, host: str) -> ControlPlane:
        return _HostControl(self, self._loop, self._net, host)

    def expire(self, key: str) -> None:
        """Drop ``key`` now, whatever its lease says."""
        self._keys.pop(key, None)

    def placement(self) -> Placement | None:
        """The map as it stands (the nemesis's omniscience)."""
        entry = self._keys.get(f"{REPLICATION_PREFIX}/map")
        return None if entry is None else Placement.decode(entry[0])

    def write_if(
        self,
        key: str,
        value: bytes,
        mod_revision: int,
        done: Callable[[bool | None, str | None], None],
    ) -> None:
        before = self.revision
        super().write_if(key, value, mod_revision, done)
        if self.revision != before and key.endswith("/map"):
            placement = Placement.decode(value)
            for pid, part in enumerate(placement.partitions):
                self._net.owner[PartitionId(pid)] = part.leader


class _HostControl:
    """One node's access to the simulated control plane (see :class:`SimControlPlane`)."""

    def __init__(self, plane: SimControlPlane, loop: EventLoop, net: Network, host: str) -> None:
        self._plane = plane
        self._loop = loop
        self._net = net
        self._host = host

    def _cut(self, done: Callable[[Any, str | None], None]) -> bool:
        if not self._net.is_cut(self._host, CONTROL_HOST):
            return False
        self._loop.after(1_000, lambda: done(None, "cut from the control plane"))
        return True

    def _later(self, done: Callable[[Any, str | None], None]) -> Callable[[Any, str | None], None]:
        """``done`` as this host gets it: not while it is paused, never when it has crashed
        since, and not when the link was cut meanwhile (the answer is lost)."""
        host = self._net.hosts[self._host]
        incarnation = host.incarnation

        def deliver(result: Any, error: str | None) -> None:
            if not host.up or host.incarnation != incarnation:
                return
            if host.paused_until_us > self._loop.now_us:
                self._loop.at(host.paused_until_us, lambda: deliver(result, error))
                return
            if error is None and self._net.is_cut(self._host, CONTROL_HOST):
                done(None, "cut from the control plane")
                return
            done(result, error)

        return deliver

    def read(self, key: str, done: Callable[[Versioned | None, str | None], None]) -> None:
        if not self._cut(done):
            self._plane.read(key, self._later(done))

    def write_if(
        self,
        key: str,
        value: bytes,
        mod_revision: int,
        done: Callable[[bool | None, str | None], None],
    ) -> None:
        if not self._cut(done):
            self._plane.write_if(key, value, mod_revision, self._later(done))

    def beat(
        self, key: str, value: bytes, ttl_ms: int, done: Callable[[bool | None, str | None], None]
    ) -> None:
        if not self._cut(done):
            self._plane.beat(key, value, ttl_ms, self._later(done))

    def list(
        self, prefix: str, done: Callable[[dict[str, bytes] | None, str | None], None]
    ) -> None:
        if not self._cut(done):
            self._plane.list(prefix, self._later(done))

    def close(self) -> None:
        pass


class Stuck(Exception):
    """The cluster did not settle in the heal phase: a liveness failure."""


def run_seed(seed: int, config: SimConfig | None = None, *, verbose: bool = False) -> SimResult:
    """Run one seed to the end and check its history."""
    config = config or SimConfig()
    sim = Simulation(seed, config, verbose=verbose)
    error: str | None = None
    check: CheckResult | None = None
    try:
        sim.run()
    except Stuck as stuck:
        error = str(stuck)
    except Exception:  # a core raised: that is a finding, reported with its traceback
        error = "exception: " + traceback.format_exc()
    sim.history.close(time_ns=sim.loop.now_us * 1000)
    if error is None:
        check = sim.check()
    sim.trace.add(sim.loop.now_us, f"end {error or (check.valid if check else None)}")
    return SimResult(
        seed=seed,
        config=config,
        profile=sim.profile,
        history=sim.history,
        check=check,
        digest=sim.trace.digest,
        error=error,
        trace=sim.trace,
        stats=sim.stats(),
    )
