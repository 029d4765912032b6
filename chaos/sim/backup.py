"""A simulated operator taking consistent online backups mid-run, as ``kvctl backup create`` does.

Theory of operation
-------------------
A backup at ``T`` is one very large read-only transaction at ``T`` (docs/backup.md, "The rule").
Production's driver (:func:`kvstore.backup.create.create_backup`) asks partition 0's first page
without a timestamp, and the node's co-located coordinator picks ``T`` from its clock
(``Coordinator.now()``) and runs the page (``Coordinator.snapshot_page``: the coordinator
library's single-call core :func:`~kvstore.coordinator.singleton.new_snapshot_page`); then every
other partition's first page at once (floors and pins early; every first page is one item long),
then the remaining pages with at most ``BACKUP_PAGES_IN_FLIGHT_MAX`` in flight. A coordinator
refuses a page whose ``T`` is further ahead of its own clock than the clock skew allowed
(``ValidationError``, :func:`~kvstore.coordinator.singleton.check_page_at`). A refused page is
asked again while its error is retryable, with capped exponential backoff and full jitter (50 ms
doubling to 1 s) for at most ``BACKUP_PAGE_RETRY_MS``; ``SnapshotTooOld`` or any other error
ends the backup. That driver is asyncio code on the wall clock and the global random generator,
so the simulator cannot run it as it is; :class:`BackupOperator` does the same steps on the
simulated cluster, through the pieces the clients use:

* each page is a ``new_snapshot_page`` core run by a coordinator host's production
  :class:`~kvstore.runtime.actors.ActorDriver` (:meth:`~chaos.sim.hosts.CoordinatorHost.
  snapshot_page`, behind the same admission check), through a random live coordinator, like
  any client call; a coordinator that crashes with the page in flight loses it (a read: asked
  again). ``T`` is :meth:`~chaos.sim.hosts.CoordinatorHost.now` of the coordinator that takes
  partition 0's first page (each attempt of that page picks it afresh, as production's does);
* each page's retries are an :class:`~kvstore.client.retry.Attempts` (the SDK's retry state)
  set to the driver's policy: 50 ms doubling to 1 s, full jitter, within
  ``BACKUP_PAGE_RETRY_MS``, on a retry budget of the operator's own wide enough never to
  refuse; a retryable error (``TransactionConflict`` while an intent at or below ``T`` is
  pending, ``Unavailable``, ``Overloaded``, ``WrongOwner``, ``OutcomeUnknown`` ...) is retried,
  anything else (``SnapshotTooOld``), or the time spent, fails the whole backup;
* the first page of each partition is one item long, as production's; the size of the others is
  drawn per backup (1, 2 or ``BACKUP_PAGE_ITEMS``), so that partitions of a few keys still take
  several pages, and the node's pin of ``T`` between pages is exercised.

A backup that fails is recorded as failed and proves nothing; one that completes is checked by
:mod:`chaos.sim.backup_check` against the history (see :meth:`chaos.sim.simulation.Simulation.
check`): a failed check is an anomaly of the run like any other.

Which runs take backups (:func:`plan_backups`): seeds of :data:`BACKUP_WORKLOADS` (their
checkers know the state as of any ``T``), a share ``SimConfig.backup_share`` of them, 1 to
``SimConfig.backups_max`` backups each, started when the clients have started a random share
(10% to 90%) of the fault phase's operations. Such a run also draws the nodes' version-history
settings (:class:`BackupPlan`): production's, or a window of 20 or 300 ms, pins of 300 ms,
32 versions per partition, so that collection, pins, the version bound and ``SnapshotTooOld``
come into play in runs of a few seconds. Every draw comes from a generator of its own
(``backup/<seed>``), so seeds that take no backup run exactly as before; a seed that does
changes from its first backup on (the pages travel through the network and raise read floors).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chaos.sim.backup_check import BackupImage
from chaos.sim.hosts import CoordinatorHost
from kvstore.client.retry import Attempts, RetryBudget, RetryPolicy
from kvstore.coordinator.singleton import CallResult
from kvstore.errors import ErrorCode, KvError, error_from_code
from kvstore.limits import (
    BACKUP_PAGE_ITEMS,
    BACKUP_PAGE_RETRY_MS,
    BACKUP_PAGES_IN_FLIGHT_MAX,
    SNAPSHOT_PIN_MS,
    SNAPSHOT_VERSIONS_MAX,
    SNAPSHOT_WINDOW_MS,
)
from kvstore.messages import ItemView, ScanReply
from kvstore.types import PartitionId, Timestamp

if TYPE_CHECKING:
    from chaos.sim.simulation import Simulation

__all__ = [
    "BACKUP_WORKLOADS",
    "BACKUP_RETRY_POLICY",
    "BackupPlan",
    "BackupRun",
    "BackupOperator",
    "plan_backups",
]

BACKUP_WORKLOADS: tuple[str, ...] = ("list-append", "rw-register", "bank")
# kvstore.backup.create's retries: full jitter below 50 ms doubling to 1 s, until
# BACKUP_PAGE_RETRY_MS; no attempt bound (one the deadline always reaches first) and no budget.
BACKUP_RETRY_POLICY = RetryPolicy(
    attempts_max=100_000,
    backoff_base_s=0.05,
    backoff_cap_s=1.0,
    budget_floor=1_000_000,
    attempt_min_s=0.0,
)
PAGE_LIMITS = (1, 2, BACKUP_PAGE_ITEMS)
OPENING_PAGE_ITEMS = 1  # kvstore.backup.create's _OPENING_ITEMS: floor and pin, all at once
OPERATOR_LINK_US = 100  # operator <-> coordinator, fault-free (as the clients')
FIRST_PARTITION = PartitionId(0)


@dataclass(frozen=True)
class BackupPlan:
    """A run's backups: when each starts (after how many operations started, sorted; empty:
    none), and the nodes' version-history settings (production's unless the run drew smaller
    ones)."""

    starts: tuple[int, ...] = ()
    window_ms: int = SNAPSHOT_WINDOW_MS
    pin_ms: int = SNAPSHOT_PIN_MS
    versions_max: int = SNAPSHOT_VERSIONS_MAX


def plan_backups(
    rng: random.Random, workload: str, ops_max: int, share: float, backups_max: int
) -> BackupPlan:
    """Draw a run's :class:`BackupPlan` from its backup generator ``rng``."""
    if workload not in BACKUP_WORKLOADS or backups_max < 1 or rng.random() >= share:
        return BackupPlan()
    count = rng.randint(1, backups_max)
    low, high = max(1, ops_max // 10), max(1, ops_max * 9 // 10)
    return BackupPlan(
        starts=tuple(sorted(rng.randint(low, high) for _ in range(count))),
        window_ms=rng.choice((20, 300, SNAPSHOT_WINDOW_MS)),
        pin_ms=rng.choice((300, SNAPSHOT_PIN_MS)),
        versions_max=rng.choice((32, SNAPSHOT_VERSIONS_MAX)),
    )


@dataclass
class BackupRun:
    """One backup: its timestamp, its outcome, the items it collected."""

    number: int
    started_us: int
    coordinator: str = ""  # the one that picked ``at``
    at: Timestamp | None = None
    page_limit: int = BACKUP_PAGE_ITEMS
    outcome: str = "running"  # running | ok | failed
    error: str | None = None
    ended_us: int | None = None
    items: dict[str, ItemView] = field(default_factory=dict)
    partitions_done: int = 0
    pages: int = 0
    retries: int = 0
    overlaps: int = 0  # keys returned by two pages: a paging bug, reported as an anomaly
    in_flight: int = 0  # later pages asked and not yet answered
    waiting: deque[Callable[[], None]] = field(default_factory=deque)  # later pages queued

    @property
    def running(self) -> bool:
        return self.outcome == "running"

    def describe(self) -> str:
        at = "-" if self.at is None else str(self.at)
        took_ms = "-" if self.ended_us is None else f"{(self.ended_us - self.started_us) / 1e3:g}"
        error = "" if self.error is None else f" ({self.error})"
        return (
            f"backup {self.number} at {at} via {self.coordinator or '-'}: {self.outcome}{error}, "
            f"{len(self.items)} items, {self.pages} pages of <= {self.page_limit}, "
            f"{self.retries} retries, {took_ms} ms"
        )

    def image(self, value_of: Callable[[ItemView], Any]) -> BackupImage:
        """The completed backup as the checker reads it (``value_of``: the workload's value)."""
        assert self.at is not None
        return BackupImage(
            number=self.number,
            at=tuple(self.at),
            values={key: value_of(item) for key, item in sorted(self.items.items())},
            item_ts={key: tuple(item.ts) for key, item in sorted(self.items.items())},
        )


@dataclass
class _Page:
    """One page of a backup being asked, with its retry state."""

    run: BackupRun
    pid: PartitionId
    start: str
    attempts: Attempts
    slot: bool = False  # holds one of the BACKUP_PAGES_IN_FLIGHT_MAX slots of later pages


class BackupOperator:
    """Takes the run's backups (see the module); each run is appended to ``sim.backups``."""

    def __init__(self, sim: Simulation, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.budget = RetryBudget(BACKUP_RETRY_POLICY, self._clock_s)

    def _clock_s(self) -> float:
        return self.sim.loop.now_us / 1e6

    def _attempts(self) -> Attempts:
        timeout_s = BACKUP_PAGE_RETRY_MS / 1000
        return Attempts(BACKUP_RETRY_POLICY, self.budget, self._clock_s, self.rng, timeout_s)

    def _partitions(self) -> tuple[PartitionId, ...]:
        return self.sim.coordinators[0].partitions

    def start(self) -> None:
        """Partition 0's first page, whose coordinator picks ``T``; the rest follows it."""
        sim = self.sim
        run = BackupRun(
            number=len(sim.backups),
            started_us=sim.loop.now_us,
            page_limit=self.rng.choice(PAGE_LIMITS),
        )
        sim.backups.append(run)
        sim.count("backup started")
        sim.trace.add(sim.loop.now_us, f"backup {run.number} starts")
        self._page(_Page(run, FIRST_PARTITION, "", self._attempts()))

    def _started(self, run: BackupRun) -> None:
        """``T`` is known: every other partition's first page at once."""
        sim = self.sim
        sim.trace.add(sim.loop.now_us, f"backup {run.number} at {run.at} via {run.coordinator}")
        for pid in self._partitions():
            if pid != FIRST_PARTITION:
                self._page(_Page(run, pid, "", self._attempts()))

    def _coordinator(self) -> CoordinatorHost:
        sim = self.sim
        return self.rng.choice([c for c in sim.coordinators if c.up] or sim.coordinators)

    def _later_page(self, run: BackupRun, pid: PartitionId, start: str) -> None:
        """A partition's next page, once fewer than ``BACKUP_PAGES_IN_FLIGHT_MAX`` are out."""

        def ask() -> None:
            run.in_flight += 1
            self._page(_Page(run, pid, start, self._attempts(), slot=True))

        if run.in_flight < BACKUP_PAGES_IN_FLIGHT_MAX:
            ask()
        else:
            run.waiting.append(ask)

    def _release(self, run: BackupRun) -> None:
        run.in_flight -= 1
        if run.waiting and run.running:
            run.waiting.popleft()()

    def _page(self, page: _Page) -> None:
        sim = self.sim
        run = page.run
        if not run.running:
            return
        coordinator = self._coordinator()

        def answered(at: Timestamp | None, result: CallResult[ScanReply] | KvError) -> None:
            self._answered(page, coordinator, at, result)

        def submit() -> None:
            if not coordinator.up:
                answered(None, error_from_code(ErrorCode.Unavailable, "connection refused"))
                return
            at = run.at if run.at is not None else coordinator.now()  # the first page's pick

            def deliver(result: CallResult[ScanReply]) -> None:
                sim.loop.after(OPERATOR_LINK_US, lambda: answered(at, result))

            def lost() -> None:  # the coordinator died with the page in flight: a read
                answered(at, error_from_code(ErrorCode.Unavailable, "connection lost"))

            sim.count("backup page")
            try:
                limit = run.page_limit if page.start else OPENING_PAGE_ITEMS
                coordinator.snapshot_page(
                    page.pid, deliver, lost, start=page.start, at=at, limit=limit
                )
            except KvError as refused:  # admission: nothing was sent
                answered(at, refused)

        sim.loop.after(OPERATOR_LINK_US, submit)

    def _answered(
        self,
        page: _Page,
        coordinator: CoordinatorHost,
        at: Timestamp | None,
        result: CallResult[ScanReply] | KvError,
    ) -> None:
        run, pid = page.run, page.pid
        if not run.running:
            return
        sim = self.sim
        error: KvError | None
        if isinstance(result, KvError):
            error = result
        elif result.error is not None or result.reply is None:
            code = result.error or ErrorCode.InternalError
            error = error_from_code(code, code.value.summary)
        else:
            error = None
        if error is not None:
            delay_s = page.attempts.retry_delay_s(error)
            if delay_s is None:
                self._fail(run, f"p{pid}: {error.code.name}")
                return
            run.retries += 1
            sim.count(f"backup retry {error.code.name}")
            sim.loop.after(int(delay_s * 1e6), lambda: self._page(page))
            return
        assert isinstance(result, CallResult) and result.reply is not None and at is not None
        if page.slot:
            self._release(run)
        reply = result.reply
        run.pages += 1
        for item in reply.items:
            if item.key in run.items:
                run.overlaps += 1
            run.items[item.key] = item
        if run.at is None:  # partition 0's first page: the backup is at its timestamp
            run.at = at
            run.coordinator = coordinator.name
            self._started(run)
        if reply.next_start is not None:
            self._later_page(run, pid, reply.next_start)
            return
        run.partitions_done += 1
        if run.partitions_done == len(self._partitions()):
            run.outcome = "ok"
            run.ended_us = sim.loop.now_us
            sim.count("backup ok")
            sim.trace.add(sim.loop.now_us, run.describe())

    def _fail(self, run: BackupRun, why: str) -> None:
        sim = self.sim
        run.outcome = "failed"
        run.error = why
        run.ended_us = sim.loop.now_us
        run.waiting.clear()
        sim.count("backup failed")
        sim.trace.add(sim.loop.now_us, run.describe())
