"""Moving a partition's replica to another node, online: the operator's procedure.

Theory of operation
-------------------
A replica set changes one step at a time, each step one compare-and-set of the map
(:mod:`kvstore.replication.placement`), and the replicator (:mod:`kvstore.runtime.replica`)
carries each out: a *learner* gets a snapshot, then the batch stream, and counts in no
majority; a promotion makes it a voter; a removal takes a replica out (the leader included:
the others then elect one). :meth:`MoveOperator.move_replica` chains the steps of a move, as the
simulator's operator does (``chaos/sim/simulation.py``, ``move_partition``):

1. **add learner**: ``with_learner(pid, to)``;
2. **catch up**: wait until the leader's acknowledged seq of the learner (its status' ``acked``)
   reaches the leader's position seq as first read while waiting (under load the leader moves on;
   the learner is then a few batches behind, as any follower may be);
3. **promote**: ``promoted(pid, to)``, once the voting set in force is committed;
4. **remove**: ``without(pid, leaving)``, once the promotion is committed;
5. **settle**: wait until the partition's leader (a new one, elected by the rest, when the
   leader itself left) serves and has committed the set without ``leaving``.

**Rule 11 (docs/replication.md).** After a voting change (a promotion, a removal) no other
voting change of the partition may be made until its leader has committed the new set (a batch
stamped under it durable on a majority of it; a new leader's barrier commits its set too). The
leaders' status says it: ``config_epoch``, the map epoch of the voting set last committed, and
``config_in_force``, that of the set it counts majorities in. Before every voting change, and to
finish, the operator waits until the map's leader leads the partition at the map's partition
epoch, sees the map's replica set, and reports ``config_epoch >= config_in_force`` (and at least
the epoch of the operator's own last voting change). Checking the set in force, not only the
epoch of a change this process made, keeps a move started after an interrupted one safe too.

**The map is the state.** Each round reads the map and does what the partition's entry calls
for (``to`` not a holder: add it; a learner: catch up, promote; a voter while ``leaving`` is
one: remove it; ``leaving`` gone: settle), so running the same move again resumes an
interrupted one, and a step whose write failed after it took effect is not made twice. A
compare-and-set that loses to another change (the map key's revision moved: another
partition's election, say) is re-read and, if the partition's entry is still the one the step
was computed from, applied again to the newer map; otherwise the round starts over from the
newer map (a new leader, for instance, whose set must be committed first). Rounds are bounded
(``steps_max``), and so is every wait, each with its own deadline; a wait that runs out is
``Unavailable`` naming the partition, the step and what was last seen, and leaves the map as it
was (resumable). Bad input is ``ValidationError`` (before anything is written); a partition that
is in another move's middle (a learner that is not ``to``, more voters than the replication
factor) is ``ConditionFailed``. One move at a time per partition in a process (an asyncio lock);
``kvctl`` also holds a lock file per partition across processes.

**Which replica leaves** (no ``from_node``): never ``to``; a replica whose node has no liveness
key first; then a follower rather than the leader (removing the leader costs a failover of the
partition, about two seconds without a leader); then the node holding the most replicas; ties go
to the later one in the set's order.

**Reading the leaders' status.** :class:`StatusSource` gives a node's replicator status (the
``replication`` list of its ``stats`` RPC): :class:`RpcStatusSource` asks over the internal RPC
with the cluster secret, at the cluster file's address or else at the one the node publishes in
its liveness key (``<prefix>/nodes/<id>``: a node added later).

**The control plane** is the runtime's callback interface
(:class:`~kvstore.replication.control.ControlPlane`), each call wrapped in an asyncio future
bounded by ``CONTROL_CALL_TIMEOUT_MS`` (the etcd implementation bounds its own calls the same
way); an error is ``Unavailable`` for a write and "nothing seen yet" inside a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from kvstore.errors import ConditionFailed, KvError, Unavailable, ValidationError
from kvstore.limits import (
    CONTROL_CALL_TIMEOUT_MS,
    MOVE_CATCH_UP_TIMEOUT_MS,
    MOVE_COMMIT_TIMEOUT_MS,
    MOVE_POLL_MS,
    MOVE_STATUS_TIMEOUT_MS,
    MOVE_STEPS_MAX,
)
from kvstore.replication.control import ControlPlane, Versioned
from kvstore.replication.placement import Placement, map_key, node_key
from kvstore.rpc import RpcPool
from kvstore.types import NodeId, PartitionId

__all__ = [
    "LeaderView",
    "MoveStep",
    "MoveReport",
    "MoveTimeouts",
    "MoveOperator",
    "StatusSource",
    "RpcStatusSource",
]

T = TypeVar("T")

_quiet = logging.getLogger("kvstore.replication.operator.rpc")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False  # a node that is down while the operator polls is an answer, not noise


class StatusSource(Protocol):
    """A node's replicator status entries (``Replicator.status()``), or None when it did not
    answer. ``published`` is the address the node publishes in its liveness key, if any."""

    async def replication(
        self, node: NodeId, published: str | None
    ) -> Sequence[Mapping[str, object]] | None: ...


class RpcStatusSource:
    """:class:`StatusSource` over the nodes' ``stats`` RPC (cluster secret), at the address
    ``addresses`` gives (the cluster file's), else at the published one."""

    def __init__(
        self,
        secret: str,
        addresses: Mapping[NodeId, str],
        *,
        timeout_ms: int = MOVE_STATUS_TIMEOUT_MS,
    ) -> None:
        self._addresses = dict(addresses)
        self._timeout_ms = timeout_ms
        self._pool = RpcPool(secret, logger=_quiet)

    async def replication(
        self, node: NodeId, published: str | None
    ) -> Sequence[Mapping[str, object]] | None:
        address = self._addresses.get(node, published)
        if address is None:
            return None
        try:
            body = await self._pool.client(address).call("stats", {}, self._timeout_ms)
        except KvError:
            return None
        found = body.get("replication") if isinstance(body, dict) else None
        if not isinstance(found, list):
            return None
        return [entry for entry in found if isinstance(entry, dict)]

    async def close(self) -> None:
        await self._pool.close()


@dataclass(frozen=True, slots=True)
class LeaderView:
    """What a partition's leader says of it (one entry of its status)."""

    node: NodeId
    epoch: int  # the leadership's
    replicas: tuple[NodeId, ...]
    learners: tuple[NodeId, ...]
    position_seq: int
    acked: Mapping[str, int]  # follower or learner -> durable seq it acknowledged
    config_epoch: int  # the voting set last committed
    config_in_force: int  # the voting set majorities are counted in
    serving: bool

    @property
    def committed(self) -> bool:
        return self.config_epoch >= self.config_in_force


@dataclass(frozen=True, slots=True)
class MoveTimeouts:
    """The bounds of a move's waits and rounds (``kvstore.limits`` by default)."""

    catch_up_ms: int = MOVE_CATCH_UP_TIMEOUT_MS
    commit_ms: int = MOVE_COMMIT_TIMEOUT_MS
    poll_ms: int = MOVE_POLL_MS
    steps_max: int = MOVE_STEPS_MAX


@dataclass(frozen=True, slots=True)
class MoveStep:
    """One thing a move did: a map change (with the map epoch it made) or a wait that ended."""

    step: str
    detail: str
    map_epoch: int | None
    at_s: float  # since the move started

    def to_json(self) -> dict[str, object]:
        return {
            "step": self.step,
            "detail": self.detail,
            "map_epoch": self.map_epoch,
            "at_s": round(self.at_s, 3),
        }


@dataclass(slots=True)
class MoveReport:
    """What :meth:`MoveOperator.move_replica` did."""

    partition: int
    to_node: str
    from_node: str
    steps: list[MoveStep] = field(default_factory=list)
    replicas: tuple[str, ...] = ()  # at the end
    leader: str = ""  # at the end
    elapsed_s: float = 0.0

    @property
    def changed(self) -> bool:
        return any(step.map_epoch is not None for step in self.steps)

    def to_json(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "to": self.to_node,
            "from": self.from_node,
            "replicas": list(self.replicas),
            "leader": self.leader,
            "elapsed_s": round(self.elapsed_s, 3),
            "steps": [step.to_json() for step in self.steps],
        }


class MoveOperator:
    """Moves replicas through the control plane and the leaders' status; see the module."""

    def __init__(
        self,
        control: ControlPlane,
        prefix: str,
        statuses: StatusSource,
        *,
        replication_factor: int,
        timeouts: MoveTimeouts | None = None,
        note: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``note`` hears one line per step as it happens (kvctl prints them)."""
        self._control = control
        self._prefix = prefix
        self._statuses = statuses
        self._factor = replication_factor
        self._timeouts = timeouts or MoveTimeouts()
        self._note = note
        self._clock = clock
        self._locks: dict[PartitionId, asyncio.Lock] = {}

    # --- the control plane as coroutines ---------------------------------------------------

    async def _ask(self, start: Callable[[Callable[[T | None, str | None], None]], None]) -> T:
        """One control-plane call: its result, or ``Unavailable`` with its error text."""
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(result: T | None, error: str | None) -> None:
            if answer.done():
                return
            if error is not None or result is None:
                answer.set_exception(Unavailable(f"etcd: {error or 'no answer'}"))
            else:
                answer.set_result(result)

        start(done)
        try:
            async with asyncio.timeout(2 * CONTROL_CALL_TIMEOUT_MS / 1000):
                return await answer
        except TimeoutError:
            raise Unavailable("etcd: no answer in time") from None

    async def read_map(self) -> tuple[Placement, int]:
        """The live map and its revision (``Unavailable`` when etcd does not answer)."""
        key = map_key(self._prefix)
        answer: asyncio.Future[Versioned | None] = asyncio.get_running_loop().create_future()

        def done(found: Versioned | None, error: str | None) -> None:
            if answer.done():
                return
            if error is not None:
                answer.set_exception(Unavailable(f"etcd: {error}"))
            else:
                answer.set_result(found)

        self._control.read(key, done)
        try:
            async with asyncio.timeout(2 * CONTROL_CALL_TIMEOUT_MS / 1000):
                found = await answer
        except TimeoutError:
            raise Unavailable("etcd: no answer in time") from None
        if found is None:
            raise Unavailable(f"no cluster map in etcd at {key} yet (the nodes write it)")
        return Placement.decode(found.value), found.mod_revision

    async def live_nodes(self) -> dict[NodeId, str]:
        """Every node with a liveness key, with what it publishes there (its address)."""
        prefix = node_key(self._prefix)
        listed: dict[str, bytes] = await self._ask(lambda done: self._control.list(prefix, done))
        return {
            NodeId(key[len(prefix) :]): value.decode("utf-8", "replace")
            for key, value in listed.items()
        }

    async def _write(self, new: Placement, revision: int) -> bool:
        written: bool = await self._ask(
            lambda done: self._control.write_if(
                map_key(self._prefix),
                new.encode(),
                revision,
                done,
            )
        )
        return written

    # --- a move ----------------------------------------------------------------------------

    async def move_replica(
        self, pid: int, to_node: str, from_node: str | None = None
    ) -> MoveReport:
        """Move a replica of partition ``pid`` to ``to_node`` (from ``from_node``, else one
        chosen as the module says); see the module for the steps and the errors."""
        lock = self._locks.setdefault(PartitionId(pid), asyncio.Lock())
        if lock.locked():
            raise ConditionFailed(f"partition {pid} is being moved already")
        async with lock:
            return await _Move(self, PartitionId(pid), NodeId(to_node), from_node).run()

    async def drop_learner(self, pid: int, node: str) -> None:
        """Take ``node`` out of partition ``pid``'s learners (what an interrupted move onto it
        left; not a voting change, so nothing to wait for), retried while the map changes."""
        partition = PartitionId(pid)
        for _ in range(self._timeouts.steps_max):
            placement, revision = await self.read_map()
            if node not in placement.of(partition).learners:
                return
            new = placement.without(partition, NodeId(node))
            with contextlib.suppress(Unavailable):  # a lost answer: the re-read says
                if await self._write(new, revision):
                    self.note(f"partition {pid}: learner {node} dropped (map epoch {new.epoch})")
                    return
        raise Unavailable(
            f"partition {pid}: could not drop the learner {node}: the map kept changing",
            details={"partition": pid, "step": "drop learner"},
        )

    async def leader_view(self, placement: Placement, pid: PartitionId) -> LeaderView | None:
        """What the map's leader of ``pid`` says of it, if it leads it at the map's epoch."""
        part = placement.of(pid)
        if part.leader not in part.replicas:
            return None  # removed: the rest are electing a successor
        try:
            live = await self.live_nodes()
        except Unavailable:
            live = {}
        entries = await self._statuses.replication(part.leader, live.get(part.leader))
        for entry in entries or ():
            if entry.get("partition") == pid:
                return _leader_view(part.leader, entry, part.epoch)
        return None

    def note(self, line: str) -> None:
        if self._note is not None:
            self._note(line)


class _Move:
    """One :meth:`MoveOperator.move_replica` call."""

    def __init__(
        self, operator: MoveOperator, pid: PartitionId, to_node: NodeId, from_node: str | None
    ) -> None:
        self.op = operator
        self.pid = pid
        self.to = to_node
        self.given_from = None if from_node is None else NodeId(from_node)
        self.leaving = self.given_from or NodeId("")
        self.started = operator._clock()
        self.voted_epoch = 0  # the map epoch of this move's last voting change
        self.report = MoveReport(partition=pid, to_node=to_node, from_node="")

    def _done(self, step: str, detail: str, map_epoch: int | None = None) -> None:
        at = self.op._clock() - self.started
        self.report.steps.append(MoveStep(step, detail, map_epoch, at))
        epoch = "" if map_epoch is None else f" (map epoch {map_epoch})"
        self.op.note(f"partition {self.pid}: {detail}{epoch} [{at:.1f} s]")

    def _unavailable(self, step: str, why: str, **details: object) -> Unavailable:
        return Unavailable(
            f"moving partition {self.pid} to {self.to}, step {step!r}: {why}; the map is left "
            "as it is: run the same move again to resume it",
            details={"partition": self.pid, "step": step, "to": self.to, **details},
        )

    async def run(self) -> MoveReport:
        placement, _ = await self.op.read_map()
        if not 0 <= self.pid < len(placement.partitions):
            raise ValidationError(
                "partition", f"no partition {self.pid} (0..{len(placement.partitions) - 1})"
            )
        live = await self.op.live_nodes()
        self._check(placement, live)
        self.report.from_node = self.leaving
        for _ in range(self.op._timeouts.steps_max):
            placement, revision = await self.op.read_map()
            part = placement.of(self.pid)
            if self.to in part.replicas and self.leaving not in part.replicas:
                view, _, _ = await self._wait_committed(placement, revision, "settle", serving=True)
                self._done("settle", f"{view.node} serves with replicas {' '.join(view.replicas)}")
                self.report.replicas = view.replicas
                self.report.leader = view.node
                self.report.elapsed_s = self.op._clock() - self.started
                return self.report
            if self.to not in part.holders:
                self._no_other_move(placement)
                await self._change(
                    "add learner",
                    placement,
                    revision,
                    lambda p: p.with_learner(self.pid, self.to),
                    f"{self.to} added as a learner",
                )
            elif self.to in part.learners:
                placement, revision = await self._wait_caught_up(placement, revision)
                # Rule 11: the set in force is committed; the promotion is made on the very map
                # that showed it (a change since fails the compare-and-set).
                _, placement, revision = await self._wait_committed(placement, revision, "promote")
                await self._change(
                    "promote",
                    placement,
                    revision,
                    lambda p: p.promoted(self.pid, self.to),
                    f"{self.to} promoted into the voting set",
                    voting=True,
                )
            else:
                _, placement, revision = await self._wait_committed(placement, revision, "remove")
                was_leader = placement.of(self.pid).leader == self.leaving
                await self._change(
                    "remove",
                    placement,
                    revision,
                    lambda p: p.without(self.pid, self.leaving),
                    f"{self.leaving} removed"
                    + (" (it led: the others elect a leader)" if was_leader else ""),
                    voting=True,
                )
        raise self._unavailable(
            "map",
            f"the partition's entry kept changing under the move ({self.op._timeouts.steps_max} "
            "rounds)",
        )

    # --- checks before anything is written -------------------------------------------------

    def _check(self, placement: Placement, live: Mapping[NodeId, str]) -> None:
        part = placement.of(self.pid)
        given = self.given_from
        if given is not None and given == self.to:
            raise ValidationError("--from", f"{self.to} is the node the replica moves to")
        if self.to not in part.holders and self.to not in live:
            raise ValidationError(
                "--to",
                f"node {self.to} is not live (no liveness key in etcd): start it first "
                "(`kvctl node add` makes and starts a new node)",
                details={"live": sorted(live)},
            )
        if given is not None and given not in part.replicas and self.to not in part.replicas:
            raise ValidationError(
                "--from",
                f"{given} holds no replica of partition {self.pid} "
                f"(replicas: {' '.join(part.replicas)})",
            )
        if (
            self.to in part.replicas
            and len(part.replicas) <= self.op._factor
            and (given is None or given in part.replicas)
        ):
            raise ValidationError(
                "--to",
                f"{self.to} is already a replica of partition {self.pid} "
                f"(replicas: {' '.join(part.replicas)})",
            )
        self._no_other_move(placement)
        if given is None:
            self.leaving = self._choose_leaving(placement, live)

    def _no_other_move(self, placement: Placement) -> None:
        part = placement.of(self.pid)
        others = [node for node in part.learners if node != self.to]
        extra = len(part.replicas) > self.op._factor and self.to not in part.replicas
        if others or extra:
            hint = (
                f"finish it: kvctl partition move {self.pid} --to {others[0]}"
                if others
                else "finish it with `kvctl partition move` naming its target"
            )
            raise ConditionFailed(
                f"partition {self.pid} is in the middle of another move (replicas "
                f"{' '.join(part.replicas)}, learners {' '.join(part.learners) or '-'}); {hint}",
                details={"partition": self.pid, "learners": list(part.learners)},
            )

    def _choose_leaving(self, placement: Placement, live: Mapping[NodeId, str]) -> NodeId:
        part = placement.of(self.pid)
        candidates = [node for node in part.replicas if node != self.to]
        load = {node: len(placement.replicated_on(node)) for node in candidates}
        order = {node: index for index, node in enumerate(part.replicas)}
        return max(
            candidates,
            key=lambda node: (node not in live, node != part.leader, load[node], order[node]),
        )

    # --- changes ---------------------------------------------------------------------------

    async def _change(
        self,
        step: str,
        placement: Placement,
        revision: int,
        make: Callable[[Placement], Placement],
        detail: str,
        *,
        voting: bool = False,
    ) -> None:
        """One compare-and-set; on a conflict, applied again to the newer map while the
        partition's entry is unchanged. Returns when written or when the entry changed (the
        caller's next round reads what happened)."""
        basis = placement.of(self.pid)
        for _ in range(self.op._timeouts.steps_max):
            try:
                new = make(placement)
            except ValueError:
                return  # the entry no longer allows it: the next round decides again
            try:
                written = await self.op._write(new, revision)
            except Unavailable:
                written = False  # it may have taken effect: the re-read below says
            if written:
                if voting:
                    self.voted_epoch = new.epoch
                self._done(step, detail, new.epoch)
                return
            placement, revision = await self.op.read_map()
            fresh = placement.of(self.pid)
            if fresh == new.of(self.pid) and fresh != basis:
                if voting:  # our write took effect after all (its answer was lost)
                    self.voted_epoch = max(self.voted_epoch, placement.epoch)
                self._done(step, detail, placement.epoch)
                return
            if fresh != basis:
                return  # someone else changed the partition: decide again from the new map
        raise self._unavailable(step, "the map kept changing under the compare-and-set")

    # --- waits -----------------------------------------------------------------------------

    async def _wait_caught_up(self, placement: Placement, revision: int) -> tuple[Placement, int]:
        """Until the leader's acknowledged seq of the learner reaches the leader's position
        seq as first read (reset when the leadership changes); the map last read."""
        step = "catch up"
        deadline = self.op._clock() + self.op._timeouts.catch_up_ms / 1000
        target: int | None = None
        basis: tuple[str, int] | None = None
        seen = "no status from the leader yet"
        while True:
            part = placement.of(self.pid)
            if self.to not in part.learners:
                return placement, revision  # promoted or removed elsewhere: decide again
            view = await self._view(placement)
            if view is not None:
                if basis != (view.node, view.epoch):
                    basis, target = (view.node, view.epoch), view.position_seq
                acked = view.acked.get(self.to)
                seen = f"leader {view.node} at seq {view.position_seq}, {self.to} acked {acked}"
                if acked is not None and target is not None and acked >= target:
                    self._done(step, f"{self.to} caught up ({seen})")
                    return placement, revision
            if self.op._clock() >= deadline:
                raise self._unavailable(
                    step,
                    f"{self.to} did not catch up within "
                    f"{self.op._timeouts.catch_up_ms / 1000:g} s ({seen})",
                )
            await asyncio.sleep(self.op._timeouts.poll_ms / 1000)  # status polling, bounded
            placement, revision = await self._fresh(placement, revision)

    async def _wait_committed(
        self, placement: Placement, revision: int, step: str, *, serving: bool = False
    ) -> tuple[LeaderView, Placement, int]:
        """Until the map's leader leads the partition at the map's epoch, sees the map's set,
        and has committed it (and this move's last voting change); ``serving`` too. The view,
        and the map (with its revision) it was checked against."""
        deadline = self.op._clock() + self.op._timeouts.commit_ms / 1000
        seen = "no status from the leader yet"
        while True:
            part = placement.of(self.pid)
            view = await self._view(placement)
            if part.leader not in part.replicas:
                seen = f"{part.leader} left the voting set; no new leader in the map yet"
            elif view is None:
                seen = f"no status of the partition from its leader {part.leader}"
            else:
                seen = (
                    f"leader {view.node} committed the set of map epoch {view.config_epoch}, "
                    f"in force {view.config_in_force}, serving {view.serving}"
                )
                if (
                    view.replicas == part.replicas
                    and view.committed
                    and view.config_epoch >= self.voted_epoch
                    and (view.serving or not serving)
                ):
                    return view, placement, revision
            if self.op._clock() >= deadline:
                raise self._unavailable(
                    step,
                    "the partition's leader did not commit its replica set within "
                    f"{self.op._timeouts.commit_ms / 1000:g} s ({seen})",
                )
            await asyncio.sleep(self.op._timeouts.poll_ms / 1000)  # status polling, bounded
            placement, revision = await self._fresh(placement, revision)

    async def _view(self, placement: Placement) -> LeaderView | None:
        return await self.op.leader_view(placement, self.pid)

    async def _fresh(self, placement: Placement, revision: int) -> tuple[Placement, int]:
        """The map again (the one before when etcd does not answer: the wait goes on)."""
        try:
            fresh, fresh_revision = await self.op.read_map()
        except Unavailable:
            return placement, revision
        if fresh.epoch < placement.epoch:
            return placement, revision
        return fresh, fresh_revision


def _leader_view(node: NodeId, entry: Mapping[str, object], epoch: int) -> LeaderView | None:
    """The entry as a leader's view, if ``node`` leads the partition at ``epoch`` by it."""
    config_epoch = entry.get("config_epoch")
    position = entry.get("position")
    if (
        entry.get("leader") != node
        or entry.get("epoch") != epoch
        or not _is_count(config_epoch)
        or not isinstance(position, list)
        or len(position) != 2
        or not all(isinstance(value, int) for value in position)
    ):
        return None
    assert isinstance(config_epoch, int)
    in_force = entry.get("config_in_force", 0)
    acked = entry.get("acked")
    return LeaderView(
        node=node,
        epoch=epoch,
        replicas=_nodes(entry.get("replicas")),
        learners=_nodes(entry.get("learners")),
        position_seq=int(position[1]),
        acked=(
            {str(k): v for k, v in acked.items() if isinstance(v, int)}
            if isinstance(acked, dict)
            else {}
        ),
        config_epoch=config_epoch,
        config_in_force=in_force if isinstance(in_force, int) else 0,
        serving=entry.get("serving") is True,
    )


def _nodes(raw: object) -> tuple[NodeId, ...]:
    return tuple(NodeId(str(node)) for node in raw) if isinstance(raw, list) else ()


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
