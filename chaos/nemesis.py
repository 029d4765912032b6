"""Faults for real runs: kill, pause, partition and clock, on a schedule drawn from the seed;
in replicated clusters also faults aimed at partition leaders and at etcd.

Theory of operation
-------------------
A :class:`Nemesis` acts on the processes of a local cluster (:mod:`kvstore.localcluster`):

* ``kill``: SIGKILL a node or a coordinator; at the end of the window it is started again from
  the same data directory (``LocalCluster.up`` starts exactly what is not running).
* ``pause``: SIGSTOP, then SIGCONT at the end of the window.
* ``partition``: cut the links between one process and a random half of the others, both ways,
  through the processes' chaos control (``POST /chaos`` with the ``blocked`` peers: every call a
  process makes to a blocked peer fails, and calls in flight lose their replies); clients keep
  talking to every coordinator. Healing clears every table.
* ``clock``: move one process's clock by up to ``CLOCK_BUMP_MS_MAX`` either way, or strobe it
  (several quick changes), through the same control; healing sets every offset back to 0.

Replicated clusters only (``REPLICATED_NEMESES``; :func:`parse_nemeses` refuses them for an
unreplicated run, where they mean nothing). Each first asks the nodes who leads what (their
replicators' status through :meth:`LocalCluster.status_async`, folded by
:func:`~kvstore.localcluster.replication_summary`), picks a random partition among those the
workload writes (``partitions``; all when not given) and aims at its leader; the window records
every partition that node led, for the failover figures (:mod:`chaos.failover`):

* ``kill-leader``: SIGKILL the partition's leader; restarted at the end of the window, like
  ``kill`` (``LocalCluster.up`` also waits until every partition has a serving leader again).
* ``pause-leader``: SIGSTOP the leader for ``LEADER_WINDOW_S`` (2-4 s, past its 1 s lease and
  usually its 2 s liveness key: a successor is elected and waits the old lease out), SIGCONT.
* ``partition-leader``: cut the leader from its followers, both ways, through the chaos control;
  clients (HTTP) and etcd (not an RPC peer) still reach it. Same window lengths.
* ``move``: move a replica of the partition to a node that holds none (``kvctl partition
  move``: a learner, caught up, promoted, an old replica removed, the leader's sometimes; the
  runner then runs one node more than the replication factor), under the load; the window
  lasts the move. A move that cannot finish (its bounded waits) fails the run.
* ``replace-node``: ``kvctl node add`` a node, then ``kvctl node remove`` a node that holds
  replicas (every replica it holds moved elsewhere, one move at a time, then the process stopped
  and dropped from the cluster file), under the load; the window lasts both. The removed node's
  clients meet a refused connection from then on (a definite failure, nothing ran).
* ``kill-etcd``: SIGKILL the cluster's private etcd (one member) for ``ETCD_WINDOW_S``, then
  start it again from its data (``LocalCluster.up``). No failover can happen meanwhile and,
  after one lease, no leader serves: a liveness test (nothing may be lost, and service must come
  back). Its window records every partition.

The control exists only in processes started with ``KVSTORE_CHAOS_CONTROL=1`` and answers only
to the cluster secret. The schedule is a loop bounded by the run's end: wait a random gap, pick a
kind and a target, open the window, wait its random length, close it; no window opens with less
than the shortest window length (``WINDOW_S[0]``) left before the run's end, so no window is cut
short and the report's failure buckets (no wider than the shortest window) stay readable (a
kind with longer windows also needs its own shortest left, and a replicated kind
``FAILOVER_LOAD_S`` more, so that the failover it causes happens under load). In a replicated
cluster the gap before the next fault begins only once every partition has a serving leader
again (``LocalCluster.wait_serving``), so that two faults' outages do not run into each other
and each fault's failover is measured on its own. Every window is recorded as a
:class:`~chaos.report.FaultWindow` for the report. :meth:`Nemesis.heal` ends whatever is open
and returns every process to health; it is called whatever happens. A restart that fails (a
process that does not come back, partitions without a serving leader within
``LOCAL_LEADERS_TIMEOUT_MS``) ends the schedule and is kept in :attr:`Nemesis.problems`, which
fails the run: the store did not recover from the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

import aiohttp

from chaos.report import FaultWindow
from kvstore.errors import KvError
from kvstore.localcluster import ETCD_ID, LocalCluster, ProcessSpec, replication_summary

__all__ = ["NEMESES", "REPLICATED_NEMESES", "Nemesis", "parse_nemeses"]

NEMESES: Final = ("kill", "pause", "partition", "clock")
REPLICATED_NEMESES: Final = (
    "kill-leader",
    "pause-leader",
    "partition-leader",
    "kill-etcd",
    "move",
    "replace-node",
)
GAP_S: Final = (1.0, 3.0)  # between two faults
WINDOW_S: Final = (0.5, 3.0)  # how long one fault lasts
LEADER_WINDOW_S: Final = (2.0, 4.0)  # pause-leader, partition-leader: past the 1 s lease
ETCD_WINDOW_S: Final = (1.0, 4.0)  # kill-etcd: shorter and longer than a lease
MOVE_WINDOW_S: Final = (0.1, 0.3)  # move: after the move itself (its own length) ended
WINDOWS_S: Final[dict[str, tuple[float, float]]] = {
    "pause-leader": LEADER_WINDOW_S,
    "partition-leader": LEADER_WINDOW_S,
    "kill-etcd": ETCD_WINDOW_S,
    "move": MOVE_WINDOW_S,
    "replace-node": MOVE_WINDOW_S,
}
NO_LEADER_RETRY_S: Final = 0.5  # no serving leader found: look again after this
# A replicated fault opens only with its shortest window plus this much load left, so that the
# failover it causes (about 4 s, docs/replication.md) ends under load and can be measured.
FAILOVER_LOAD_S: Final = 6.0
CLOCK_BUMP_MS_MAX: Final = 400  # below the nodes' 500 ms skew bound, so mostly a soft fault
CLOCK_STROBES: Final = 5
CONTROL_TIMEOUT_S: Final = 2.0


def parse_nemeses(text: str, *, replicated: bool = False) -> tuple[str, ...]:
    """``kill,partition`` or ``all`` (or ``none``) as a tuple of fault kinds. ``all`` is every
    kind that applies: the four of ``NEMESES``, and in a ``replicated`` run those of
    ``REPLICATED_NEMESES`` too; naming one of those for an unreplicated run is refused."""
    if text in ("", "none"):
        return ()
    if text == "all":
        return (*NEMESES, *REPLICATED_NEMESES) if replicated else NEMESES
    kinds = tuple(part.strip() for part in text.split(","))
    unknown = [kind for kind in kinds if kind not in (*NEMESES, *REPLICATED_NEMESES)]
    if unknown:
        raise ValueError(
            f"unknown nemesis {unknown[0]!r}; expected "
            f"{', '.join((*NEMESES, *REPLICATED_NEMESES))} or all"
        )
    needs = [kind for kind in kinds if kind in REPLICATED_NEMESES]
    if needs and not replicated:
        raise ValueError(
            f"nemesis {needs[0]!r} needs a replicated cluster (--replication-factor 2 or more): "
            "an unreplicated cluster has no leaders and no etcd"
        )
    return kinds


class Nemesis:
    def __init__(
        self,
        cluster: LocalCluster,
        kinds: Sequence[str],
        rng: random.Random,
        secret: str,
        *,
        partitions: Collection[int] | None = None,
    ) -> None:
        """``partitions``: those the leader faults aim at (the workload's; None: any)."""
        self.cluster = cluster
        self.kinds = tuple(kinds)
        self.rng = rng
        self.secret = secret
        self.partitions = None if partitions is None else frozenset(partitions)
        self.windows: list[FaultWindow] = []
        self.counts: dict[str, int] = {}
        self.problems: list[str] = []  # restarts that failed: the run fails
        self._paused: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._hit: tuple[int, ...] = ()  # the open leader fault's partitions
        self._cut: tuple[ProcessSpec, ...] = ()  # partition-leader: the leader's followers
        self._move: tuple[int, str] = (0, "")  # move: the partition and where it goes

    # --- the schedule -----------------------------------------------------------------------

    async def run(self, until_monotonic: float) -> None:
        """Inject faults until ``until_monotonic`` (``time.monotonic()``), one at a time."""
        if not self.kinds:
            return
        while time.monotonic() < until_monotonic and not self.problems:
            await asyncio.sleep(self.rng.uniform(*GAP_S))
            if until_monotonic - time.monotonic() < WINDOW_S[0]:
                return
            kind = self.rng.choice(self.kinds)
            window_s = WINDOWS_S.get(kind, WINDOW_S)
            needed = window_s[0] + (FAILOVER_LOAD_S if kind in REPLICATED_NEMESES else 0.0)
            if until_monotonic - time.monotonic() < needed:
                return
            target = await self._target(kind)
            if target is None:  # no serving leader right now (a failover under way)
                await asyncio.sleep(NO_LEADER_RETRY_S)
                continue
            length_s = min(
                self.rng.uniform(*window_s), max(0.0, until_monotonic - time.monotonic())
            )
            started, wall = time.monotonic_ns(), time.time()
            await self._open(kind, target)
            try:
                await asyncio.sleep(length_s)
            finally:
                await self._close(kind, target)
            self.windows.append(
                FaultWindow(started, time.monotonic_ns(), kind, target.process_id, self._hit, wall)
            )
            self._hit, self._cut = (), ()
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if self.cluster.replicated:  # the next fault meets a cluster that serves again
                await self._serving(f"{kind} {target.process_id}")

    async def _target(self, kind: str) -> ProcessSpec | None:
        """The process ``kind`` aims at: a random one for the classic kinds; for the leader
        kinds the leader of a random partition (None when none serves), and etcd for
        ``kill-etcd``. Sets the partitions the fault hits and, to cut, the leader's
        followers."""
        if kind not in REPLICATED_NEMESES:
            return self.rng.choice(self.cluster.processes())
        rows = replication_summary(await self.cluster.status_async(rates=False))
        if kind == "kill-etcd":
            self._hit = tuple(sorted(row.partition for row in rows)) or tuple(
                range(self.cluster.config.cluster_map.partitions.partition_count)
            )
            address = self.cluster.etcd().client_url.removeprefix("http://")
            return ProcessSpec("etcd", ETCD_ID, address)
        nodes = {spec.process_id for spec in self.cluster.processes()}
        if kind == "move":
            return self._move_target(rows, nodes)
        if kind == "replace-node":
            holders = sorted({node for row in rows for node in row.replicas} & nodes)
            if not holders:
                return None
            victim = self.rng.choice(holders)
            self._hit = tuple(sorted(row.partition for row in rows if victim in row.replicas))
            return self.cluster.process(victim)
        serving = sorted(
            row.partition
            for row in rows
            if row.serving
            and row.leader in nodes
            and (self.partitions is None or row.partition in self.partitions)
        )
        if not serving:
            return None
        chosen = self.rng.choice(serving)
        leader = next(row.leader for row in rows if row.partition == chosen)
        led = [row for row in rows if row.leader == leader]
        self._hit = tuple(sorted(row.partition for row in led))
        followers = sorted({node for row in led for node in row.replicas} & nodes - {leader})
        self._cut = tuple(self.cluster.process(node) for node in followers)
        return self.cluster.process(leader)

    def _move_target(self, rows: Sequence[Any], nodes: set[str]) -> ProcessSpec | None:
        """A partition the workload writes and a node holding no copy of it."""
        choices = [
            (row.partition, node)
            for row in rows
            if row.serving and (self.partitions is None or row.partition in self.partitions)
            for node in sorted(nodes - set(row.replicas) - set(row.learners))
        ]
        if not choices:
            return None
        pid, node = self.rng.choice(choices)
        self._hit = (pid,)
        self._move = (pid, node)
        return self.cluster.process(node)

    async def _open(self, kind: str, target: ProcessSpec) -> None:
        if kind == "replace-node":
            try:
                await _to_thread_to_its_end(self.cluster.add_node)
                await _to_thread_to_its_end(lambda: self.cluster.remove_node(target.process_id))
            except KvError as error:
                self.problems.append(f"replacing {target.process_id}: {error}")
            return
        if kind == "move":
            partition, node = self._move
            try:
                await _to_thread_to_its_end(lambda: self.cluster.move_partition(partition, node))
            except KvError as error:
                self.problems.append(f"move of p{partition} to {node}: {error}")
            return
        if kind in ("kill", "kill-leader"):
            pid = self.cluster.running().get(target.process_id)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        elif kind in ("pause", "pause-leader"):
            pid = self.cluster.running().get(target.process_id)
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                self._paused.add(target.process_id)
        elif kind == "partition-leader":
            await self._control(target, {"blocked": [p.address for p in self._cut]})
            for peer in self._cut:
                await self._control(peer, {"blocked": [target.address]})
        elif kind == "kill-etcd":
            pid = self.cluster.etcd_running()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        elif kind == "partition":
            others = [p for p in self.cluster.processes() if p.process_id != target.process_id]
            cut = self.rng.sample(others, max(1, len(others) // 2))
            await self._control(target, {"blocked": [p.address for p in cut]})
            for peer in cut:
                await self._control(peer, {"blocked": [target.address]})
        elif kind == "clock":
            if self.rng.random() < 0.5:
                offset = self.rng.randint(-CLOCK_BUMP_MS_MAX, CLOCK_BUMP_MS_MAX)
                await self._control(target, {"clock_offset_ms": offset})
            else:
                for _ in range(CLOCK_STROBES):
                    offset = self.rng.randint(-CLOCK_BUMP_MS_MAX, CLOCK_BUMP_MS_MAX)
                    await self._control(target, {"clock_offset_ms": offset})
                    await asyncio.sleep(0.05)

    async def _close(self, kind: str, target: ProcessSpec) -> None:
        if kind in ("kill", "kill-leader", "kill-etcd"):
            await self._up(f"{kind} {target.process_id}")
        elif kind in ("pause", "pause-leader"):
            self._resume(target.process_id)
        elif kind in ("partition", "partition-leader"):
            for process in self.cluster.processes():
                await self._control(process, {"blocked": []})
        elif kind == "clock":
            await self._control(target, {"clock_offset_ms": 0})

    async def _serving(self, after: str) -> None:
        """Wait until every partition has a serving leader (a failover the fault started has
        ended), so that one fault's outage does not run into the next one's; a timeout is kept
        in ``problems``."""
        try:
            await _to_thread_to_its_end(self.cluster.wait_serving)
        except KvError as error:
            self.problems.append(f"after {after}: {error}")

    async def _up(self, after: str) -> None:
        """Start what is not running and wait until the cluster serves; a failure is kept in
        ``problems`` (and ends the schedule) rather than raised."""
        try:
            await _to_thread_to_its_end(self.cluster.up)
        except (KvError, OSError) as error:
            self.problems.append(f"after {after}: the cluster did not come back: {error}")

    # --- healing ----------------------------------------------------------------------------

    async def heal(self) -> None:
        """Resume, restart and reset everything; safe to call at any time, more than once."""
        for process_id in list(self._paused):
            self._resume(process_id)
        await self._up("the heal")
        if {"partition", "partition-leader", "clock"} & set(self.kinds):
            for process in self.cluster.processes():
                await self._control(process, {"blocked": [], "clock_offset_ms": 0})
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _resume(self, process_id: str) -> None:
        self._paused.discard(process_id)
        pid = self.cluster.running().get(process_id)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    async def _control(self, process: ProcessSpec, body: dict[str, Any]) -> None:
        """``POST /chaos`` on one process; a process that is down or paused is skipped (its
        table is reset when it restarts, or at the heal)."""
        if process.process_id in self._paused:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.secret}"}
            )
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT_S):
                async with self._session.post(f"{process.url}/chaos", json=body) as reply:
                    await reply.read()
        except (TimeoutError, aiohttp.ClientError):
            pass


async def _to_thread_to_its_end(call: Callable[[], object]) -> None:
    """``call()`` in a worker thread. Cancelled (a run stopped by a signal), it still waits for
    the thread to end before the cancellation goes on: a thread cannot be stopped, and the
    heal and ``LocalCluster.down`` that follow must not run beside an ``up`` that could spawn
    a process after ``down`` looked (that process would be left running)."""
    work = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise
