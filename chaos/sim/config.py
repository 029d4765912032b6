"""What a simulated run looks like: cluster shape, workload, phases and the fault profile.

Theory of operation
-------------------
:class:`SimConfig` is the fixed part (chosen by the caller). :class:`FaultProfile` is drawn from
the run's random generator at the start of each run, *swarm testing* style: each fault kind is
switched on or off and given its own intensity per seed, so some runs drop many messages and never
crash, others crash often on a quiet network. Uniform mixtures of every fault at once tend to hide
the bugs that need one fault to dominate (a read overlapping a slow commit, say).

The intensities are chosen so that a typical seed still does a lot (hundreds of committed
operations): message loss stays rare (on TCP a lost message is a broken connection, and each
silent loss costs a one-second deadline), crashed processes restart within a second, and
fsyncs take realistic times (0.5 to 8 ms) so that a crash can land between an answer and the
flush it depends on. Some runs also shorten the ledger's decision deadline (a crashed
coordinator's keys are then freed sooner; safety never depends on it, the decision is a
compare-and-set) or give the coordinators a small admission limit (``Overloaded`` refusals).

Clones (``clone_ms``): half the seeds clone a coordinator now and then, by a fork or by its
memory image restored twice (:meth:`~chaos.sim.simulation.Simulation.clone_coordinator`).
Whether a seed clones, and everything about its clones, comes from a generator of its own
(``clone_rng`` of :meth:`FaultProfile.draw`), so adding the fault left the runs of seeds that do
not clone exactly as they were (the regression seeds of ``tests/chaos/test_sim.py`` replay the
same schedules).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvstore.limits import COORDINATOR_TXNS_IN_FLIGHT_MAX
from kvstore.mutants import NO_MUTANTS, Mutants

__all__ = ["WORKLOADS", "SimConfig", "FaultProfile"]

WORKLOADS: tuple[str, ...] = ("list-append", "rw-register", "bank")

_MS = 1000


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """The caller's choices for one run (everything else comes from the seed)."""

    workload: str = "list-append"
    nodes: int = 3
    partitions: int = 6
    coordinators: int = 3
    clients: int = 8
    keys: int = 12  # list-append / rw-register keys
    accounts: int = 10  # bank accounts
    ops_max: int = 300  # client operations in the fault phase, all clients together
    fault_phase_ms: int = 10_000
    heal_phase_ms_max: int = 120_000  # after this the run is reported as stuck
    mutants: Mutants = NO_MUTANTS
    faults: bool = True  # False: a quiet network, for baseline tests
    bank_total: int = 1_000
    # Replicas per partition (1: no replication, no control plane). The sweep replicates the
    # seeds of one residue class (chaos.sim.sweep), so the others keep their schedules.
    replication_factor: int = 1
    # Online backups mid-run (chaos.sim.backup): the share of the seeds (of its backup workloads)
    # that take them, and at most how many each takes (drawn from the seed's backup generator).
    backup_share: float = 0.5
    backups_max: int = 2

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; expected one of {WORKLOADS}")
        if not 0 <= self.backup_share <= 1 or self.backups_max < 0:
            raise ValueError("backup_share must be in 0..1 and backups_max at least 0")


@dataclass(frozen=True, kw_only=True)
class FaultProfile:
    """Per-run fault intensities (swarm testing); all zero for a quiet run."""

    drop_p: float = 0.0  # a message is lost
    dup_p: float = 0.0  # a message arrives twice
    delay_us: int = 500  # mean one-way delay
    slow_p: float = 0.0  # a message takes up to ``slow_us`` (reordering)
    slow_us: int = 0
    fsync_us: int = 300  # group commit: replies wait for the batch's flush
    crash_node_ms: int = 0  # mean time between node crashes (0: never)
    node_down_ms_max: int = 1_000  # a crashed node restarts within this (uniform)
    crash_coordinator_ms: int = 0
    coordinator_down_ms_max: int = 1_000
    clone_ms: int = 0  # mean time between clones of a coordinator's memory image (0: never)
    # Replicated runs only (chaos.sim.simulation): mean times between pauses of a node (a
    # SIGSTOP: it runs nothing, its clock and its leases' clock go on), isolations of a node
    # from the other nodes and the control plane, and early expiries of a liveness key (etcd
    # revoking a lease it should not: etcd-io/etcd#12528); 0: never.
    pause_ms: int = 0
    pause_ms_max: int = 0
    isolate_ms: int = 0
    isolate_ms_max: int = 0
    expire_ms: int = 0
    move_ms: int = 0  # mean time between moves of a partition's replica (one at a time)
    depose_ms: int = 0  # mean time between depositions: a leader cut from its elector, forgotten
    partition_ms: int = 0  # mean time between network partitions
    cut_ms_max: int = 2_000  # a cut link heals within this (uniform, at least 100 ms)
    clock_ms: int = 0  # mean time between clock offset changes
    clock_offset_max_ms: int = 0
    think_us: int = 2_000  # a client's pause between operations (mean)
    clock_resolution_us: int = 1  # local clocks tick in steps of this (coarse clocks tie often)
    intent_stale_ms: int = 5_000
    decision_deadline_ms: int = 25_000  # undecided records older than this are recovered
    tombstone_retention_ms: int = 60_000
    admission_max: int = COORDINATOR_TXNS_IN_FLIGHT_MAX  # cores a coordinator runs at once

    @classmethod
    def draw(cls, rng: random.Random, clone_rng: random.Random | None = None) -> FaultProfile:
        """A swarm draw: each fault on with probability about one half, random intensity; the
        clones from ``clone_rng`` (none without it)."""

        def on(p: float = 0.5) -> bool:
            return rng.random() < p

        slow = on(0.4)
        return cls(
            drop_p=rng.choice((0.001, 0.005, 0.02)) if on(0.4) else 0.0,
            dup_p=rng.choice((0.02, 0.1, 0.3)) if on() else 0.0,
            delay_us=rng.choice((200, 1_000, 3_000)),
            slow_p=rng.choice((0.01, 0.05)) if slow else 0.0,
            slow_us=rng.choice((20 * _MS, 200 * _MS, 1_000 * _MS)) if slow else 0,
            fsync_us=rng.choice((500, 2_000, 8_000)),
            crash_node_ms=rng.choice((500, 1_500)) if on(0.7) else 0,
            node_down_ms_max=rng.choice((100, 1_000)),
            crash_coordinator_ms=rng.choice((1_000, 3_000)) if on() else 0,
            coordinator_down_ms_max=rng.choice((100, 1_000)),
            partition_ms=rng.choice((1_000, 3_000)) if on() else 0,
            cut_ms_max=rng.choice((200, 2_000)),
            clock_ms=rng.choice((300, 1_500)) if on(0.6) else 0,
            clock_offset_max_ms=rng.choice((5, 100, 400, 1_500)),
            think_us=rng.choice((500, 2_000, 10_000)),
            clock_resolution_us=rng.choice((1, 1_000, 15_000)),
            intent_stale_ms=rng.choice((300, 1_000, 5_000)),
            # 300 ms: below the coordinators' prepare deadline, so recovery of STAGING records
            # races live coordinators (rule 5a must not depend on timing).
            decision_deadline_ms=rng.choice((300, 3_000, 8_000, 25_000)),
            tombstone_retention_ms=rng.choice((200, 2_000, 60_000)),
            admission_max=rng.choice((4, 6)) if on(0.2) else COORDINATOR_TXNS_IN_FLIGHT_MAX,
            clone_ms=(
                clone_rng.choice((200, 1_000))
                if clone_rng is not None and clone_rng.random() < 0.5
                else 0
            ),
        )

    def describe(self) -> str:
        parts = [
            f"drop={self.drop_p}",
            f"dup={self.dup_p}",
            f"delay={self.delay_us}us",
            f"slow={self.slow_p}@{self.slow_us}us",
            f"fsync={self.fsync_us}us",
            f"crash_node={self.crash_node_ms}ms/down<={self.node_down_ms_max}ms",
            f"crash_coord={self.crash_coordinator_ms}ms/down<={self.coordinator_down_ms_max}ms",
            f"clone={self.clone_ms}ms",
            f"partition={self.partition_ms}ms/cut<={self.cut_ms_max}ms",
            f"clock={self.clock_ms}ms/{self.clock_offset_max_ms}ms/{self.clock_resolution_us}us",
            f"stale={self.intent_stale_ms}ms",
            f"decision_deadline={self.decision_deadline_ms}ms",
            f"tombstones={self.tombstone_retention_ms}ms",
            f"admission={self.admission_max}",
        ]
        return " ".join(parts)
