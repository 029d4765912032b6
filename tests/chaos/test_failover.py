"""The failover figures (chaos/failover.py) on synthetic histories: which writes count, for which
partitions, and the longest gap each leader fault caused; plus the nemesis names of replicated
runs. Pure: no cluster, no event loop."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from chaos.checkers.result import CheckResult
from chaos.failover import (
    acknowledged_writes,
    failover_text,
    longest_by_kind,
    unavailability,
    written_keys,
)
from chaos.history import History, Op, OpType
from chaos.nemesis import NEMESES, REPLICATED_NEMESES, Nemesis, parse_nemeses
from chaos.report import FaultWindow, report_text, results_json
from kvstore.localcluster import LocalCluster, ProcessSpec, ProcessStatus, ReplicaView

S = 1_000_000_000
PARTITION = {"a": 0, "b": 1, "c": 2, "acct0": 0, "acct1": 1, "set/7": 2}


def partition_of(key: str) -> int:
    return PARTITION[key]


class Timeline:
    """Operations completing at chosen instants (seconds), given in any order; each is
    invoked and completed at its instant. :attr:`history` puts them in time order."""

    def __init__(self) -> None:
        self.ops: list[tuple[float, str, Any, OpType]] = []

    def op(self, at_s: float, f: str, value: Any, type_: OpType = "ok") -> None:
        self.ops.append((at_s, f, value, type_))

    def appends(self, key: str, *times_s: float) -> None:
        for at in times_s:
            self.op(at, "txn", [["append", key, int(at * 1000)]])

    @property
    def history(self) -> History:
        history = History()
        for process, (at, f, value, type_) in enumerate(sorted(self.ops, key=lambda o: o[0])):
            done_ns = int(at * S)
            invoke = history.invoke(process, f, value, time_ns=done_ns)
            history.complete(invoke, type_, value, time_ns=done_ns)
        return history


def ok(f: str, value: Any) -> Op:
    return Op(index=1, type="ok", process=1, time_ns=S, f=f, value=value)


def test_written_keys_per_workload() -> None:
    mixed = [["r", "a", [1]], ["append", "b", 2], ["w", "c", None]]
    assert written_keys(ok("txn", mixed)) == ["b", "c"]
    assert written_keys(ok("txn", [["r", "a", [1]]])) == []
    transfer = {"from": "acct0", "to": "acct1", "amount": 5}
    assert written_keys(ok("transfer", transfer)) == ["acct0", "acct1"]
    assert written_keys(ok("add", 7)) == ["set/7"]
    assert written_keys(ok("read", {"acct0": 1})) == []


def test_only_acknowledged_writes_count_for_each_partition_they_wrote() -> None:
    t = Timeline()
    t.op(1, "txn", [["append", "a", 1], ["append", "b", 2]])
    t.op(2, "txn", [["append", "a", 3]], "fail")
    t.op(3, "txn", [["append", "b", 4]], "info")
    t.op(4, "txn", [["r", "c", [9]]])  # a read is no commit
    assert acknowledged_writes(t.history, partition_of) == {0: [1 * S], 1: [1 * S]}


def test_the_longest_gap_overlapping_a_leader_fault_per_partition() -> None:
    t = Timeline()
    t.appends("a", 1.0, 1.5, 2.0, 6.5, 7.0)  # partition 0: out from 2.0 to 6.5
    t.appends("b", 1.0, 2.1, 3.0, 4.0, 5.0, 6.0)  # partition 1: never out for long
    t.op(3.0, "txn", [["append", "c", 1]], "fail")  # partition 2: nothing acknowledged
    fault = FaultWindow(int(2.2 * S), int(4.0 * S), "kill-leader", "n1", (0, 1, 2))
    other = FaultWindow(int(7.5 * S), int(8 * S), "kill", "n2")  # not measured: no partitions
    [measured] = unavailability(
        t.history, [fault, other], partition_of, start_ns=0, end_ns=10 * S, keyed={0, 1, 2}
    )
    gaps = {gap.partition: gap for gap in measured.gaps}
    assert (gaps[0].start_ns, gaps[0].end_ns, gaps[0].recovered) == (2 * S, int(6.5 * S), True)
    # Counted from the fault's start (the quiet 0.2 s before it is not the fault's doing).
    assert gaps[0].seconds == pytest.approx(4.3) and gaps[0].gap_seconds == pytest.approx(4.5)
    assert gaps[1].seconds == pytest.approx(1.0)  # 3.0 to 4.0 (and 2.1 to 3.0) overlap it
    # No write of partition 2 was ever acknowledged: out from the load's start to its end.
    assert (gaps[2].start_ns, gaps[2].end_ns, gaps[2].recovered) == (0, 10 * S, False)
    assert gaps[2].seconds == pytest.approx(7.8)
    assert measured.longest is gaps[2]
    assert longest_by_kind([measured]) == {"kill-leader": 7.8}
    text = failover_text([measured], 0)
    assert "longest 7.80 s (p2" in text and "no write acknowledged again" in text


def test_partitions_the_workload_never_writes_are_unmeasured() -> None:
    t = Timeline()
    t.appends("a", 1.0, 4.0)
    fault = FaultWindow(2 * S, 3 * S, "pause-leader", "n2", (0, 5))
    [measured] = unavailability(
        t.history, [fault], partition_of, start_ns=0, end_ns=5 * S, keyed={0}
    )
    assert [g.partition for g in measured.gaps] == [0] and measured.unmeasured == (5,)
    assert measured.longest is not None and measured.longest.seconds == pytest.approx(2.0)
    nothing = FaultWindow(2 * S, 3 * S, "kill-leader", "n3", (5,))
    [empty] = unavailability(
        t.history, [nothing], partition_of, start_ns=0, end_ns=5 * S, keyed={0}
    )
    assert empty.longest is None and "none written by the workload" in failover_text([empty], 0)


def test_one_outage_is_counted_for_the_first_fault_it_overlaps() -> None:
    t = Timeline()
    t.appends("a", 1.0, 6.0, 6.2, 6.4, 9.0, 9.1)
    first = FaultWindow(2 * S, 3 * S, "partition-leader", "n1", (0,))
    second = FaultWindow(4 * S, 5 * S, "kill-etcd", "etcd", (0,))  # while 1.0..6.0 lasts
    third = FaultWindow(7 * S, 8 * S, "pause-leader", "n1", (0,))
    measured = unavailability(
        t.history, [third, second, first], partition_of, start_ns=0, end_ns=10 * S
    )
    assert [m.fault.kind for m in measured] == ["partition-leader", "kill-etcd", "pause-leader"]
    assert measured[0].longest is not None and measured[0].longest.seconds == pytest.approx(4.0)
    assert measured[1].longest is None and measured[1].gaps[0].earlier
    assert measured[2].longest is not None and measured[2].longest.seconds == pytest.approx(2.0)
    assert measured[2].longest.gap_seconds == pytest.approx(2.6)
    assert longest_by_kind(measured) == {"partition-leader": 4.0, "pause-leader": 2.0}
    assert "still out since an earlier fault" in failover_text(measured, 0)


def test_the_report_carries_the_failover_figures() -> None:
    t = Timeline()
    t.appends("a", 1.0, 3.5)
    fault = FaultWindow(2 * S, 3 * S, "kill-leader", "n1", (0,))
    measured = unavailability(t.history, [fault], partition_of, start_ns=0, end_ns=4 * S)
    result = CheckResult(valid=True, anomalies=[], model="strict-serializable", checker="test")
    data = results_json(
        title="t", history=t.history, result=result, faults=[fault], summary={}, failover=measured
    )
    assert data["faults"][0]["partitions"] == [0] and "wall_start" not in data["faults"][0]
    opened = FaultWindow(0, 1, "kill", "n1", wall_start_s=1_800_000_000.5).to_json()
    assert opened["wall_start"] == "2027-01-15T08:00:00.500Z" and "partitions" not in opened
    assert data["failover"][0]["longest_s"] == 1.5 and data["failover"][0]["recovered"]
    assert data["failover"][0]["gaps"][0]["gap_s"] == 2.5
    text = report_text(
        title="t", history=t.history, result=result, faults=[fault], summary={}, failover=measured
    )
    assert "kill-leader" in text and "longest 1.50 s (p0)" in text


def test_replicated_nemeses_need_a_replicated_run() -> None:
    assert parse_nemeses("all") == NEMESES
    assert parse_nemeses("all", replicated=True) == (*NEMESES, *REPLICATED_NEMESES)
    assert parse_nemeses("kill-leader,pause", replicated=True) == ("kill-leader", "pause")
    for kind in REPLICATED_NEMESES:
        with pytest.raises(ValueError, match="--replication-factor"):
            parse_nemeses(f"kill,{kind}")
    with pytest.raises(ValueError, match="unknown nemesis"):
        parse_nemeses("kill-follower", replicated=True)


class _Replicated:
    """A replicated cluster as the leader nemeses see it: nodes and their replicators' views."""

    replicated = True

    def __init__(self, leaders: dict[int, tuple[str, bool]]) -> None:
        self.leaders = leaders  # partition -> (leader, serving)
        self.etcd = lambda: SimpleNamespace(client_url="http://127.0.0.1:2379")

    def processes(self) -> list[ProcessSpec]:
        return [ProcessSpec("node", f"n{i}", f"127.0.0.1:{9000 + i}") for i in (1, 2, 3)]

    def process(self, process_id: str) -> ProcessSpec:
        return next(p for p in self.processes() if p.process_id == process_id)

    async def status_async(self, *, rates: bool) -> list[ProcessStatus]:
        nodes = ("n1", "n2", "n3")
        return [
            ProcessStatus(
                role="node",
                process_id=node,
                address="127.0.0.1:1",
                pid=1,
                health="ok",
                log=Path("log"),
                replication=tuple(
                    ReplicaView(
                        partition=p,
                        node=node,
                        leader=leader,
                        replicas=nodes,
                        epoch=3,
                        position=(3, 1),
                        serving=serving if node == leader else None,
                    )
                    for p, (leader, serving) in self.leaders.items()
                ),
            )
            for node in nodes
        ]


@pytest.mark.asyncio
async def test_leader_faults_aim_at_a_serving_leader_of_a_written_partition() -> None:
    fake = _Replicated({0: ("n1", True), 1: ("n2", True), 2: ("n1", True), 3: ("n3", False)})
    cluster = cast(LocalCluster, fake)
    for seed in range(10):
        nemesis = Nemesis(cluster, ("kill-leader",), random.Random(seed), "s", partitions={2, 3})
        target = await nemesis._target("kill-leader")
        # Partition 3's leader does not serve and 0, 1 hold no key: only 2's leader, n1, fits;
        # the fault hits every partition n1 leads, and a cut would sever it from n2 and n3.
        assert target is not None and target.process_id == "n1"
        assert nemesis._hit == (0, 2)
        assert [p.process_id for p in nemesis._cut] == ["n2", "n3"]
    nobody = Nemesis(cluster, ("pause-leader",), random.Random(1), "s", partitions={3})
    assert await nobody._target("pause-leader") is None
    etcd = Nemesis(cluster, ("kill-etcd",), random.Random(1), "s")
    target = await etcd._target("kill-etcd")
    assert target is not None and target.process_id == "etcd" and etcd._hit == (0, 1, 2, 3)
