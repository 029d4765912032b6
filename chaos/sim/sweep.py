"""Seed sweeps and mutant hunts: the simulator's two batch jobs, run in parallel processes.

Theory of operation
-------------------
A sweep runs seeds ``start .. start+count-1``; seed ``s`` uses workload ``WORKLOADS[s % 3]`` unless
one is forced, so every workload gets a third of any sweep. Seeds are independent, so they run on
a process pool (``jobs`` workers); results come back in seed order and each failure's history and
trace are written under ``out/seed-<s>/`` for replay with ``--seed s --verbose``.

A mutant hunt arms one :class:`~kvstore.mutants.Mutant` at a time and runs seeds (cycling through
the workloads able to expose it) until a run fails or the mutant's seed budget is spent. A mutant
that survives its budget means the harness cannot see that bug: the hunt fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from chaos.sim.backup import BACKUP_WORKLOADS
from chaos.sim.config import WORKLOADS, SimConfig
from chaos.sim.simulation import SimResult, run_seed
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants

__all__ = [
    "SeedOutcome",
    "MUTANT_WORKLOADS",
    "MUTANT_SEED_BUDGET",
    "workload_for",
    "sweep",
    "hunt",
    "save_failure",
]

# Seeds per mutant in the hunt. 160, not 60: with requests waiting for intents, late prepares
# are rarer, and forget-refusal is first caught at seed 117 (list-append).
MUTANT_SEED_BUDGET = 160

# Which workloads can expose each mutant. The bank workload records neither timestamps nor reads
# inside write transactions, so a mutant visible only to the ts-order replay escapes it.
MUTANT_WORKLOADS: dict[Mutant, tuple[str, ...]] = {
    Mutant.SKIP_READ_TS_CHECK: ("list-append", "rw-register"),
    Mutant.READS_SEE_INTENTS: WORKLOADS,
    Mutant.PRESUME_ABORT: WORKLOADS,
    Mutant.NO_TS_TIE_BREAK: ("list-append", "rw-register"),
    Mutant.DOUBLE_APPLY_COMMIT: WORKLOADS,
    Mutant.SKIP_SECOND_READ_ROUND: ("bank", "rw-register", "list-append"),
    Mutant.WATERMARK_DOWN_ON_DELETE: ("rw-register",),  # the only workload that deletes
    Mutant.NODE_EXECUTE_PARTIAL: WORKLOADS,  # a cancelled transaction's writes become visible
    # Updates computed on the value under the intent they waited for: lost updates (appends,
    # transfers, register writes read in the same transaction).
    Mutant.STALE_VOTE_AFTER_WAIT: WORKLOADS,
    # Parallel commit (rule 5a): a transaction applied on some participants only, or a commit
    # answered before a participant applied it (a read right after misses the write).
    Mutant.UNKNOWN_HOLDS: WORKLOADS,
    Mutant.FORGET_REFUSAL: WORKLOADS,
    Mutant.FORGET_APPLIED: WORKLOADS,
    Mutant.ANSWER_BEFORE_APPLIED: WORKLOADS,
    # The node runtime's: acknowledged writes lost by a crash (any workload, with crashes).
    Mutant.REPLY_BEFORE_FLUSH: WORKLOADS,
    Mutant.ACK_WITH_EARLIER_FLUSH: WORKLOADS,
    # The clock's: copies of a cloned coordinator issue equal timestamps (seeds that clone).
    Mutant.NO_FORK_REDRAW: WORKLOADS,
    # Replication's (replicated seeds only): lost acknowledged writes after a failover, or a
    # deposed leader serving next to its successor.
    Mutant.ACK_BEFORE_MAJORITY: WORKLOADS,
    Mutant.ACCEPT_OLD_EPOCH: WORKLOADS,
    Mutant.SERVE_BEFORE_LEASE_END: WORKLOADS,
    Mutant.ELECT_ANY_REPLICA: WORKLOADS,
    # Backups' (docs/backup.md): a write below a backup's timestamp accepted after its page; only
    # the backup check sees it, in the workloads whose runs take backups.
    Mutant.SNAPSHOT_WITHOUT_FLOOR: BACKUP_WORKLOADS,
    # The DynamoDB endpoint's: the simulator sends no DynamoDB requests; real-process runs of the
    # DynamoDB bank workload catch it (chaos.mutant_runs).
    Mutant.DDB_CONDITION_IGNORED: (),
}
REPLICATION_MUTANTS = frozenset(
    {
        Mutant.ACK_BEFORE_MAJORITY,
        Mutant.ACCEPT_OLD_EPOCH,
        Mutant.SERVE_BEFORE_LEASE_END,
        Mutant.ELECT_ANY_REPLICA,
    }
)
REPLICATED_EVERY = 3  # seeds with seed % 3 == 2 run three replicas per partition


def replicated(seed: int) -> bool:
    """Whether the sweep runs ``seed`` as a replicated cluster (a third of the seeds)."""
    return seed % REPLICATED_EVERY == REPLICATED_EVERY - 1


def config_for(seed: int, workload: str, mutants: Mutants = NO_MUTANTS) -> SimConfig:
    """The sweep's configuration of ``seed``."""
    if not replicated(seed):
        return SimConfig(workload=workload, mutants=mutants)
    # Three replicas on four nodes: room for moves.
    return SimConfig(workload=workload, mutants=mutants, replication_factor=3, nodes=4)


@dataclass(frozen=True)
class SeedOutcome:
    """What a sweep reports for one seed (small enough to send between processes)."""

    seed: int
    workload: str
    ok: bool
    summary: str
    digest: str
    stats: dict[str, object]
    saved: str | None = None


def workload_for(seed: int, workloads: tuple[str, ...] = WORKLOADS) -> str:
    return workloads[seed % len(workloads)]


def save_failure(result: SimResult, out: Path) -> Path:
    """Write the history, the anomalies and the trace digest of a failed run."""
    where = out / f"seed-{result.seed}"
    where.mkdir(parents=True, exist_ok=True)
    result.history.save(where / "history.jsonl")
    lines = [
        f"seed {result.seed} workload {result.config.workload}",
        f"profile {result.profile.describe()}",
        f"digest {result.digest}",
        f"stats {result.stats}",
    ]
    if result.error is not None:
        lines.append(result.error)
    lines += [str(a) for a in result.anomalies()]
    (where / "result.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return where


Job = tuple[int, str, tuple[str, ...], str | None]  # seed, workload, mutant names, out dir


def _mutants_for_sweep() -> Mutants:
    """The mutants a plain sweep runs with: none (tests patch this to prove failures surface)."""
    return NO_MUTANTS


def _one(job: Job) -> SeedOutcome:
    seed, workload, mutant_names, out = job
    armed = Mutants.arm(*(Mutant(name) for name in mutant_names))
    mutants = armed if mutant_names else _mutants_for_sweep()
    result = run_seed(seed, config_for(seed, workload, mutants))
    saved = None
    if not result.ok and out is not None:
        saved = str(save_failure(result, Path(out)))
    return SeedOutcome(
        seed, workload, result.ok, result.summary(), result.digest, result.stats, saved
    )


def _pool_map(jobs: list[Job], workers: int) -> Iterator[SeedOutcome]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_one, jobs, chunksize=4)


def sweep(
    start: int,
    count: int,
    *,
    workload: str | None = None,
    out: Path | None = None,
    jobs: int = 1,
) -> Iterator[SeedOutcome]:
    """Run ``count`` seeds from ``start``; yield their outcomes in seed order."""
    work: list[Job] = [
        (seed, workload or workload_for(seed), (), None if out is None else str(out))
        for seed in range(start, start + count)
    ]
    yield from _pool_map(work, jobs)


def hunt(mutant: Mutant, budget: int = MUTANT_SEED_BUDGET, *, jobs: int = 1) -> SeedOutcome | None:
    """Run seeds with ``mutant`` armed until one fails; ``None`` if none did within ``budget``.

    The caller must have allowed arming (``KVSTORE_MUTANTS``); workers inherit its environment.
    """
    workloads = MUTANT_WORKLOADS[mutant]
    batch = max(1, jobs) * 4
    # A replication mutant runs on replicated seeds only: the budget's worth of them.
    candidates = (
        [n * REPLICATED_EVERY + REPLICATED_EVERY - 1 for n in range(budget)]
        if mutant in REPLICATION_MUTANTS
        else list(range(budget))
    )
    for first in range(0, budget, batch):
        seeds = candidates[first : first + batch]
        work: list[Job] = [(s, workload_for(s, workloads), (mutant.value,), None) for s in seeds]
        for outcome in _pool_map(work, jobs):
            if not outcome.ok:
                return outcome
    return None
