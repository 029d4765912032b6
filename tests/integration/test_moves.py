"""Online moves in a replicated cluster of real processes with a real etcd: `kvctl node add`,
`kvctl partition move` under a transaction load, `kvctl node remove`.

Goal: a node added to a running cluster (replication factor 3 on 3 nodes) gets a partition's
replica while transactions on that partition keep committing, and nothing acknowledged is lost;
removing one of the original nodes (the moved partition's leader) moves every replica it held
and stops it; in the end every acknowledged write reads back, every partition has three
replicas (none on the removed node) and a serving leader, and the cluster file names the nodes
that are left. Bad moves are refused with usage errors before anything changes.

Method: one cluster shared by the module's tests (``LocalCluster.create(..., replication_factor=3)``
and ``up``); every change goes through kvctl as a subprocess (``--json``), run from the same
event loop as the load. The load is two writers on the moved partition: each step is one
transaction putting a fresh key of the partition and adding 1 to the writer's counter, retried
with the same idempotency token until acknowledged (retryable errors are counted and printed).
Commits acknowledged while ``partition move`` ran are counted and printed (the figure depends on
the machine; the test asserts only that some happened); the load also runs through ``node
remove`` of the moved partition's leader (an original node), so it also meets an election.
Every acknowledged key is read back after the move and at the end, and each counter must equal
its acknowledged steps. The load is bounded by its own deadline and by a step count.

Without etcd the module skips, or fails under CI=true (``support.etcd.require_etcd``). The
fixture stops every process and etcd however the tests end (``down``, then SIGKILL of any pid
left in ``run/``: the added node's included, its pid file is there too) and removes the
directory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.etcd import partition_rows, replicated_cluster
from support.kvctl import COMMAND_TIMEOUT_S, KVCTL, clean_env, run_kvctl

import kvstore
from kvstore.config import load_cluster
from kvstore.errors import ErrorCode, KvError
from kvstore.localcluster import LocalCluster

NODES = 3
PARTITIONS = 4
FACTOR = 3
MOVED = 1  # the partition moved onto the new node under load
WRITERS = 2
LOAD_TIMEOUT_S = 120.0  # the load's own bound; it ends once the changes are done
STEPS_MAX = 100_000  # and never takes more steps than this
COMMITS_BEFORE = 10  # each writer's acknowledged steps before the move starts
RETRY_PAUSE_S = 0.02  # between a writer's attempts at one step (the SDK backs off inside too)
SETTLE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("moves") / "kv"
    with replicated_cluster(root, nodes=NODES, partitions=PARTITIONS, factor=FACTOR) as made:
        yield made


async def kvctl(*args: str) -> tuple[int, Any, str]:
    """kvctl as a subprocess on this event loop: exit status, its JSON document, stderr."""
    process = await asyncio.create_subprocess_exec(
        *KVCTL,
        *args,
        "--json",
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    document = json.loads(out) if out.strip() else None
    return process.returncode, document, err.decode()


@dataclass
class Writer:
    """One writer on the partition: each step puts a fresh key (acked: key -> step) and adds 1
    to the writer's counter, in one transaction."""

    name: str
    partition: int
    partition_of: Callable[[str], int]
    acked: dict[str, int] = field(default_factory=dict)
    commits: list[float] = field(default_factory=list)  # monotonic times of acknowledgements
    errors: dict[str, int] = field(default_factory=dict)
    refused: list[float] = field(default_factory=list)  # monotonic times of retried errors

    @property
    def counter_key(self) -> str:
        return next(self._keys("counter"))

    def _keys(self, kind: str) -> Iterator[str]:
        candidates = (f"{self.name}/{kind}/{n}" for n in range(1 << 30))
        return (key for key in candidates if self.partition_of(key) == self.partition)

    def committed_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.commits if start <= at <= end)

    async def run(self, kv: kvstore.Client, done: asyncio.Event, deadline: float) -> None:
        counter = self.counter_key
        for step, key in zip(range(STEPS_MAX), self._keys("item"), strict=False):
            if done.is_set() or time.monotonic() >= deadline:
                return
            ops = [kvstore.Put(key, step), kvstore.Update(counter, add={"n": 1})]
            token: str | None = None
            while time.monotonic() < deadline:
                try:
                    await kv.transact(ops, token=token)
                except KvError as error:
                    assert error.code is not ErrorCode.TransactionCanceled, error
                    assert error.retryable, error
                    token = str(error.details.get("token", token))  # the same step, once
                    self.errors[error.code.name] = self.errors.get(error.code.name, 0) + 1
                    self.refused.append(time.monotonic())
                    await asyncio.sleep(RETRY_PAUSE_S)  # a retry's pause, not a wait for state
                    continue
                self.acked[key] = step
                self.commits.append(time.monotonic())
                break


async def read_back(cluster: LocalCluster, writers: list[Writer], *, loaded: bool) -> None:
    """Every acknowledged step is there, and each counter counts exactly those (``loaded``:
    the writers still run, so a counter may also count a step not yet acknowledged)."""
    async with kvstore.connect(cluster=cluster.root, mode="native") as kv:
        for writer in writers:
            acked = dict(writer.acked)
            for key, step in acked.items():
                item = await kv.get(key)
                assert item is not None and item.value == step, (writer.name, key)
            counter = await kv.get(writer.counter_key)
            assert counter is not None and isinstance(counter.value, dict)
            if loaded:
                assert counter.value["n"] >= len(acked)
            else:
                assert counter.value == {"n": len(acked)}


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the load did not get there in time"
        await asyncio.sleep(0.01)  # polling the load's progress, bounded by the deadline


def test_add_a_node_move_a_partition_onto_it_under_load_then_remove_an_original(
    cluster: LocalCluster,
) -> None:
    root = str(cluster.root)
    partition_of = cluster.config.cluster_map.partitions.partition_of
    writers = [Writer(f"w{i}", MOVED, partition_of) for i in range(WRITERS)]
    timings: dict[str, tuple[float, float]] = {}
    results: dict[str, Any] = {}

    async def scenario() -> None:
        status, added, err = await kvctl("node", "add", "--dir", root)
        assert status == 0, err
        results["added"] = added
        new_node = added["node"]
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        # A client started after the node was added (it reads the cluster file at connect).
        async with kvstore.connect(cluster=cluster.root, mode="native") as kv:
            done = asyncio.Event()
            tasks = [asyncio.create_task(w.run(kv, done, deadline)) for w in writers]
            try:
                await _until(lambda: all(len(w.acked) >= COMMITS_BEFORE for w in writers), 30)
                began = time.monotonic()
                status, moved, err = await kvctl(
                    "partition", "move", str(MOVED), "--to", new_node, "--dir", root
                )
                timings["move"] = (began, time.monotonic())
                assert status == 0, err
                results["move"] = moved
                # Nothing acknowledged was lost by the move.
                await read_back(cluster, writers, loaded=True)
                # An original node: the moved partition's leader, so the load meets an election.
                results["victim"] = victim = moved["leader"]
                began = time.monotonic()
                status, removed, err = await kvctl("node", "remove", victim, "--dir", root)
                timings["remove"] = (began, time.monotonic())
                assert status == 0, err
                results["remove"] = removed
            finally:
                done.set()
                await asyncio.gather(*tasks)

    asyncio.run(scenario())

    new_node = results["added"]["node"]
    assert new_node == "n4"
    move = results["move"]
    assert move["to"] == new_node and move["partition"] == MOVED
    assert [step["step"] for step in move["steps"]] == [
        "add learner",
        "catch up",
        "promote",
        "remove",
        "settle",
    ]
    start, end = timings["move"]
    during_move = sum(w.committed_between(start, end) for w in writers)
    first = min(at for w in writers for at in w.commits)
    refused_in_move = sum(1 for w in writers for at in w.refused if start <= at <= end)
    before_move = sum(w.committed_between(first, start) for w in writers)
    victim = results["victim"]
    assert victim in ("n1", "n2", "n3")
    start_r, end_r = timings["remove"]
    during_remove = sum(w.committed_between(start_r, end_r) for w in writers)
    errors: dict[str, int] = {}
    for writer in writers:
        for code, count in writer.errors.items():
            errors[code] = errors.get(code, 0) + count
    print(
        f"partition {MOVED} moved from {move['from']} to {new_node} in {end - start:.2f} s "
        f"(kvctl, the process's start included; the move itself {move['elapsed_s']:.2f} s): "
        f"{during_move} transactions committed on it meanwhile "
        f"({during_move / (end - start):.0f}/s; before it {before_move / (start - first):.0f}/s), "
        f"{refused_in_move} retried answers meanwhile; "
        f"`node remove {victim}` (its leader) took "
        f"{end_r - start_r:.2f} s "
        f"({len(results['remove']['moves'])} moves), {during_remove} committed meanwhile; "
        f"{sum(len(w.acked) for w in writers)} acknowledged in all; retried errors {errors}"
    )
    for step in move["steps"]:
        print(f"  {step['at_s']:6.2f} s  {step['step']}: {step['detail']}")
    assert during_move > 0  # transactions kept committing while the partition moved

    asyncio.run(read_back(cluster, writers, loaded=False))
    rows = partition_rows(cluster)
    assert sorted(rows) == list(range(PARTITIONS))
    for pid, row in rows.items():
        assert len(row.replicas) == FACTOR and not row.learners, (pid, row)
        assert victim not in row.replicas and row.leader in row.replicas and row.serving, (pid, row)
    assert new_node in rows[MOVED].replicas
    assert set(load_cluster(cluster.config_path).nodes) == {"n1", "n2", "n3", "n4"} - {victim}
    assert victim not in LocalCluster.open(cluster.root).running()
    assert results["remove"]["stopped"] in ("terminated", "killed")


def test_bad_moves_are_usage_errors_and_change_nothing(cluster: LocalCluster) -> None:
    root = str(cluster.root)
    cluster.up()  # whatever the test before left
    nodes = sorted(load_cluster(cluster.config_path).nodes)
    before = {pid: (row.replicas, row.leader) for pid, row in partition_rows(cluster).items()}
    replica = before[0][0][0]
    for args, says in (
        (("partition", "move", "0", "--to", "n9"), "no node 'n9'"),
        (("partition", "move", "0", "--to", replica), "already a replica"),
        (("partition", "move", "99", "--to", replica), "no partition 99"),
        (("node", "remove", nodes[0]), "would leave 2 nodes"),
    ):
        shown = run_kvctl(*args, "--dir", root)
        assert shown.returncode == 2, (args, shown.stdout, shown.stderr)
        assert says in shown.stderr, (args, shown.stderr)
    after = {pid: (row.replicas, row.leader) for pid, row in partition_rows(cluster).items()}
    assert after == before
    assert sorted(load_cluster(cluster.config_path).nodes) == nodes
