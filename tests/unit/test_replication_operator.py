"""The move operator (kvstore/replication/operator.py) against the simulator's etcd and a model of
the partitions' leaders.

Goal: a move adds a learner, waits for it to catch up, promotes it and removes a replica, each
voting change made only once the leader has committed the set before (rule 11); a lost
compare-and-set is applied again to the newer map; removing the leader waits for a successor;
a wait that runs out is ``Unavailable`` naming its step and leaves a map the same move resumes
from; bad requests are refused before anything is written.

Method: :class:`MemoryControlPlane` on the running asyncio loop (a 100 us latency) holds the map
and the liveness keys. :class:`Leaders` stands for the nodes: every few milliseconds it reads the
map and, per partition, plays the leader's status as the replicator reports it: a set it has
not seen is "in force" from that map's epoch and committed ``commit_ticks`` later; a learner's
acknowledged seq reaches the position ``catch_up_ticks`` after it appears (the position grows
by one every tick: a write load); a leader removed from the set is replaced (elected) by the
first remaining replica. A wrapper around the control plane checks every voting change the
operator writes against that model (rule 11) and can make writes lose a race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from kvstore.errors import ConditionFailed, Unavailable, ValidationError
from kvstore.replication.control import MemoryControlPlane, Versioned
from kvstore.replication.operator import MoveOperator, MoveReport, MoveTimeouts
from kvstore.replication.placement import Placement, initial_placement, map_key, node_key
from kvstore.types import NodeId, PartitionId

PREFIX = "/kvstore/test"
NODES = tuple(NodeId(f"n{i}") for i in range(1, 5))
TICK_S = 0.003
FAST = MoveTimeouts(catch_up_ms=2_000, commit_ms=2_000, poll_ms=2, steps_max=16)
T = TypeVar("T")


@dataclass
class _Partition:
    replicas: tuple[NodeId, ...] = ()
    leader: str = ""
    in_force: int = 0
    committed: int = 0
    since_tick: int = 0
    learners_seen: dict[NodeId, int] = field(default_factory=dict)  # learner -> tick first seen


class Leaders:
    """The partitions' leaders as the operator sees them (see the module docstring)."""

    def __init__(
        self, plane: MemoryControlPlane, *, commit_ticks: int = 3, catch_up_ticks: int = 5
    ) -> None:
        self.plane = plane
        self.commit_ticks = commit_ticks
        self.catch_up_ticks = catch_up_ticks
        self.tick = 0
        self.placement: Placement | None = None
        self.parts: dict[int, _Partition] = {}
        self.violations: list[str] = []
        self.silent = False  # no status at all (a leader that does not answer)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            found = await call(lambda done: self.plane.read(map_key(PREFIX), done))
            if isinstance(found, Versioned):
                self.observe(Placement.decode(found.value), found.mod_revision)
            self.tick += 1
            await asyncio.sleep(TICK_S)  # the model's tick, not a wait for state

    def observe(self, placement: Placement, revision: int) -> None:
        self.placement = placement
        for pid, part in enumerate(placement.partitions):
            state = self.parts.setdefault(pid, _Partition())
            if part.leader not in part.replicas:  # an election by the first remaining replica
                new = placement.with_leader(PartitionId(pid), part.replicas[0])
                self.plane.write_if(map_key(PREFIX), new.encode(), revision, _ignore)
                return
            if (part.replicas, part.leader) != (state.replicas, state.leader):
                state.replicas, state.leader = part.replicas, part.leader
                state.in_force, state.since_tick = placement.epoch, self.tick
            if self.tick - state.since_tick >= self.commit_ticks:
                state.committed = state.in_force
            for learner in part.learners:
                state.learners_seen.setdefault(learner, self.tick)

    def status(self, node: NodeId) -> list[dict[str, object]] | None:
        if self.silent or self.placement is None:
            return None
        out: list[dict[str, object]] = []
        for pid, part in enumerate(self.placement.partitions):
            state = self.parts.get(pid)
            if state is None or part.leader != node or state.leader != node:
                continue
            acked = {n: self.tick for n in part.followers}
            for learner in part.learners:
                seen = state.learners_seen.get(learner, self.tick)
                acked[learner] = self.tick if self.tick - seen >= self.catch_up_ticks else 0
            out.append(
                {
                    "partition": pid,
                    "leader": node,
                    "replicas": list(state.replicas),
                    "learners": list(part.learners),
                    "epoch": part.epoch,
                    "position": [part.epoch, self.tick],
                    "serving": True,
                    "config_epoch": state.committed,
                    "config_in_force": state.in_force,
                    "acked": acked,
                }
            )
        return out

    def check_voting_change(self, old: Placement, new: Placement) -> None:
        """Rule 11, from the model's side: a voting change only on a committed set."""
        for pid, (before, after) in enumerate(zip(old.partitions, new.partitions, strict=True)):
            if before.replicas == after.replicas:
                continue
            state = self.parts.get(pid)
            if state is None or state.replicas != before.replicas:
                self.violations.append(f"p{pid}: a voting change on a set its leader never saw")
            elif state.committed < state.in_force:
                self.violations.append(f"p{pid}: a voting change before the set was committed")


class Statuses:
    def __init__(self, leaders: Leaders) -> None:
        self.leaders = leaders
        self.asked: list[tuple[NodeId, str | None]] = []

    async def replication(
        self, node: NodeId, published: str | None
    ) -> Sequence[Mapping[str, object]] | None:
        self.asked.append((node, published))
        return self.leaders.status(node)


class Checked(MemoryControlPlane):
    """The control plane, with the operator's map writes checked (rule 11) and, when
    ``races`` > 0, that many of them losing to a change made just before (same map content,
    a new revision: what another partition's election looks like to this partition)."""

    leaders: Leaders | None = None
    races = 0
    operator_writes = 0

    def write_if(
        self,
        key: str,
        value: bytes,
        mod_revision: int,
        done: Callable[[bool | None, str | None], None],
    ) -> None:
        entry = self._live(key) if key == map_key(PREFIX) else None
        if entry is not None and done is not _ignore:
            self.operator_writes += 1
            if self.races > 0 and entry[1] == mod_revision:
                self.races -= 1
                super().write_if(key, entry[0], mod_revision, _ignore)  # someone else first
            elif self.leaders is not None and entry[1] == mod_revision:
                self.leaders.check_voting_change(
                    Placement.decode(entry[0]), Placement.decode(value)
                )
        super().write_if(key, value, mod_revision, done)


def _ignore(result: object, error: str | None) -> None:
    del result, error


async def call(start: Callable[[Callable[[Any, str | None], None]], None]) -> Any:
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(result: Any, error: str | None) -> None:
        if not answer.done():
            answer.set_result(result if error is None else None)

    start(done)
    return await answer


@dataclass
class World:
    plane: Checked
    leaders: Leaders
    statuses: Statuses
    operator: MoveOperator
    notes: list[str]

    async def map(self) -> Placement:
        found = await call(lambda done: self.plane.read(map_key(PREFIX), done))
        assert isinstance(found, Versioned)
        return Placement.decode(found.value)


def run_world(
    body: Callable[[World], Coroutine[Any, Any, T]],
    *,
    live: Sequence[NodeId] = NODES,
    commit_ticks: int = 3,
    catch_up_ticks: int = 5,
    timeouts: MoveTimeouts = FAST,
    races: int = 0,
) -> T:
    """Run ``body`` against a fresh world: 4 partitions on n1..n3 (RF 3), ``live`` beating."""

    async def main() -> T:
        loop = asyncio.get_running_loop()
        plane = Checked(
            lambda us, fn: loop.call_later(us / 1e6, fn),
            lambda: int(loop.time() * 1e6),
            latency_us=100,
        )
        plane.races = races
        first = initial_placement(NODES[:3], 4, 3)
        assert await call(lambda done: plane.write_if(map_key(PREFIX), first.encode(), 0, done))
        for index, node in enumerate(live):
            address = f"127.0.0.1:{7001 + index}".encode()
            await call(
                lambda done, n=node, a=address: plane.beat(node_key(PREFIX, n), a, 60_000, done)
            )
        leaders = Leaders(plane, commit_ticks=commit_ticks, catch_up_ticks=catch_up_ticks)
        plane.leaders = leaders
        statuses = Statuses(leaders)
        notes: list[str] = []
        operator = MoveOperator(
            plane, PREFIX, statuses, replication_factor=3, timeouts=timeouts, note=notes.append
        )
        stop = asyncio.Event()
        ticking = asyncio.create_task(leaders.run(stop))
        try:
            return await asyncio.wait_for(
                body(World(plane, leaders, statuses, operator, notes)), timeout=20
            )
        finally:
            stop.set()
            await ticking

    return asyncio.run(main())


def steps(report: MoveReport) -> list[str]:
    return [step.step for step in report.steps]


def test_a_move_adds_catches_up_promotes_removes_a_follower_and_settles() -> None:
    async def body(world: World) -> tuple[MoveReport, Placement, list[str]]:
        report = await world.operator.move_replica(1, "n4")
        return report, await world.map(), world.leaders.violations

    report, placement, violations = run_world(body)
    assert steps(report) == ["add learner", "catch up", "promote", "remove", "settle"]
    part = placement.of(PartitionId(1))
    # p1 is on n2 n3 n1, led by n2: a follower leaves (the later one of equal load: n1).
    assert report.from_node == "n1" and part.leader == "n2" and report.leader == "n2"
    assert part.replicas == ("n2", "n3", "n4") and not part.learners
    assert report.replicas == part.replicas
    epochs = [step.map_epoch for step in report.steps if step.map_epoch is not None]
    assert epochs == sorted(epochs) and len(epochs) == 3
    assert violations == []


def test_moving_the_leader_away_waits_for_a_successor() -> None:
    async def body(world: World) -> tuple[MoveReport, Placement, list[str]]:
        report = await world.operator.move_replica(0, "n4", "n1")
        return report, await world.map(), world.leaders.violations

    report, placement, violations = run_world(body)
    part = placement.of(PartitionId(0))
    assert "n1" not in part.replicas and part.leader in part.replicas and "n4" in part.replicas
    assert report.leader == part.leader != "n1"
    assert any("it led" in step.detail for step in report.steps)
    assert violations == []


def test_a_lost_compare_and_set_is_applied_again_to_the_newer_map() -> None:
    async def body(world: World) -> tuple[MoveReport, Placement, int]:
        report = await world.operator.move_replica(2, "n4")
        return report, await world.map(), world.plane.operator_writes

    report, placement, writes = run_world(body, races=3)
    assert steps(report) == ["add learner", "catch up", "promote", "remove", "settle"]
    assert "n4" in placement.of(PartitionId(2)).replicas
    assert writes == 6  # the first write lost three races (applied again each time), then two


def test_a_learner_that_does_not_catch_up_is_unavailable_and_the_move_resumes() -> None:
    slow = MoveTimeouts(catch_up_ms=150, commit_ms=2_000, poll_ms=2, steps_max=16)

    async def body(world: World) -> tuple[Unavailable, Placement, MoveReport]:
        with pytest.raises(Unavailable) as stuck:
            await world.operator.move_replica(3, "n4")
        learning = await world.map()
        world.leaders.catch_up_ticks = 0
        return stuck.value, learning, await world.operator.move_replica(3, "n4")

    error, learning, resumed = run_world(body, catch_up_ticks=10_000, timeouts=slow)
    assert error.details["step"] == "catch up" and "run the same move again" in error.message
    assert learning.of(PartitionId(3)).learners == ("n4",)
    assert steps(resumed) == ["catch up", "promote", "remove", "settle"]


def test_a_leader_that_never_commits_is_unavailable_naming_the_step() -> None:
    slow = MoveTimeouts(catch_up_ms=2_000, commit_ms=150, poll_ms=2, steps_max=16)

    async def body(world: World) -> Unavailable:
        with pytest.raises(Unavailable) as stuck:
            await world.operator.move_replica(1, "n4")
        return stuck.value

    error = run_world(body, commit_ticks=10_000, timeouts=slow)
    assert error.details["step"] == "promote" and "did not commit" in error.message


@pytest.mark.parametrize(
    ("pid", "to", "source", "error", "says"),
    [
        (9, "n4", None, ValidationError, "no partition 9"),
        (0, "n5", None, ValidationError, "not live"),
        (0, "n2", None, ValidationError, "already a replica"),
        (0, "n4", "n4", ValidationError, "is the node the replica moves to"),
        (0, "n4", "n9", ValidationError, "holds no replica"),
    ],
)
def test_bad_moves_are_refused_before_anything_is_written(
    pid: int, to: str, source: str | None, error: type[Exception], says: str
) -> None:
    async def body(world: World) -> tuple[Exception, int]:
        with pytest.raises(error) as refused:
            await world.operator.move_replica(pid, to, source)
        return refused.value, world.plane.operator_writes

    refused, writes = run_world(body)
    assert says in str(refused) and writes == 0


def test_a_partition_in_another_move_is_refused() -> None:
    async def body(world: World) -> ConditionFailed:
        found = await call(lambda done: world.plane.read(map_key(PREFIX), done))
        learning = Placement.decode(found.value).with_learner(PartitionId(0), NodeId("n4"))
        assert await call(
            lambda done: world.plane.write_if(
                map_key(PREFIX), learning.encode(), found.mod_revision, done
            )
        )
        with pytest.raises(ConditionFailed) as refused:
            await world.operator.move_replica(0, "n5")
        return refused.value

    refused = run_world(body, live=(*NODES, NodeId("n5")))
    assert "kvctl partition move 0 --to n4" in refused.message


def test_a_dead_replica_leaves_first_and_statuses_are_asked_at_published_addresses() -> None:
    async def body(world: World) -> tuple[MoveReport, list[tuple[NodeId, str | None]]]:
        return await world.operator.move_replica(0, "n4"), world.statuses.asked

    report, asked = run_world(body, live=(NodeId("n1"), NodeId("n2"), NodeId("n4")))
    assert report.from_node == "n3"  # no liveness key: it goes first
    assert (NodeId("n1"), "127.0.0.1:7001") in asked
