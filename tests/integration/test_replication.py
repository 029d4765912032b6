"""A replicated cluster of real processes with a real etcd: 3 nodes, replication factor 3.

Goal: a replicated local cluster serves the SDK (native mode) and the HTTP API; when the node
leading some partitions is killed with SIGKILL under a write load, no acknowledged write is lost,
writes resume on the new leaders, and what callers see meanwhile are the catalogue's retryable
errors naming no internal address; the killed node, restarted, catches up with the leaders;
``up`` and ``down`` (etcd included) are idempotent and leave nothing running.

Method: one cluster (``LocalCluster.create(..., replication_factor=3)``, its private etcd started
by ``up``) shared by the module's tests. The load is one writer per partition the victim leads:
each step is a one-partition transaction (put a fresh key of that partition to the step number,
add 1 to the partition's counter),
retried with the same idempotency token until it is acknowledged, as an application would after
an ambiguous answer. Every acknowledged write is read back afterwards, and each counter must
equal its acknowledged steps (the token makes a retried step apply once). The longest gap between
two acknowledged commits of a partition is its unavailability window: printed, never asserted
(it depends on the machine). Meanwhile an HTTP reader asks a surviving node for each counter.
Catch-up is read from ``cluster status`` (the nodes' replicator status): every replica's
position equals its leader's, polled with a deadline.

Without etcd the module skips, or fails under CI=true (``support.etcd.require_etcd``). The
fixture stops every process and etcd however the tests end (``down``, then SIGKILL of any pid
left in ``run/``) and removes the cluster directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from support.etcd import partition_rows, replicated_cluster
from support.kvctl import run_kvctl

import kvstore
from kvstore.errors import ErrorCode, KvError
from kvstore.localcluster import (
    ETCD_ID,
    LocalCluster,
    process_command_line,
)

NODES = 3
PARTITIONS = 4
FACTOR = 3
SETTLE_TIMEOUT_S = 30.0  # a guard: failover takes about liveness TTL + lease (~4 s)
COMMITS_BEFORE_KILL = 20
COMMITS_AFTER_KILL = 20
LOAD_TIMEOUT_S = 30.0  # the load's own bound: it ends sooner once enough commits came back
RETRY_PAUSE_S = 0.02  # between a writer's attempts at one step (the SDK backs off inside too)
HTTP_TIMEOUT_S = 10.0
HTTP_PROBE_PAUSE_S = 0.05  # between the HTTP reader's requests
LOOPBACK = "127.0.0.1"  # no error a caller sees may name an internal address


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("replicated") / "kv"
    with replicated_cluster(root, nodes=NODES, partitions=PARTITIONS, factor=FACTOR) as made:
        yield made


def keys_on(cluster: LocalCluster, pid: int, count: int, prefix: str) -> list[str]:
    partition_of = cluster.config.cluster_map.partitions.partition_of
    found = [key for key in (f"{prefix}{n}" for n in range(10_000)) if partition_of(key) == pid]
    assert len(found) >= count
    return found[:count]


def http(cluster: LocalCluster, node: str, method: str, key: str, body: object = None) -> Any:
    url = f"http://{cluster.config.node(node).address}/v1/kv/{urllib.parse.quote(key, safe='')}"
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {cluster.admin_token()}"},
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as reply:
        return json.load(reply)


def test_sdk_and_http_read_and_write(cluster: LocalCluster) -> None:
    rows = partition_rows(cluster)
    assert sorted(rows) == list(range(PARTITIONS))
    assert all(row.serving and len(row.replicas) == FACTOR for row in rows.values())
    keys = [key for pid in range(PARTITIONS) for key in keys_on(cluster, pid, 2, "a")]

    async def through_sdk() -> None:
        async with kvstore.connect(cluster=cluster.root, mode="native") as kv:
            for n, key in enumerate(keys):
                await kv.put(key, {"n": n})
            await kv.transact([kvstore.Update(keys[0], add={"n": 10})])
            item = await kv.get(keys[0])
            assert item is not None and item.value == {"n": 10}

    asyncio.run(through_sdk())
    # Every node serves the API; a node that leads no partition of a key coordinates it.
    for index, key in enumerate(keys):
        node = f"n{index % NODES + 1}"
        expected = {"n": 10} if index == 0 else {"n": index}
        assert http(cluster, node, "GET", key)["value"] == expected
        http(cluster, node, "PUT", key, {"value": {"http": index}})

    async def read_back() -> None:
        async with kvstore.connect(cluster=cluster.root, mode="native") as kv:
            for index, key in enumerate(keys):
                item = await kv.get(key)
                assert item is not None and item.value == {"http": index}

    asyncio.run(read_back())


@dataclass
class Writer:
    """One partition's load: each step puts a fresh key of the partition (acked: key -> step)
    and adds 1 to the partition's counter, in one transaction."""

    partition: int
    partition_of: Callable[[str], int]
    counter_key: str
    acked: dict[str, int] = field(default_factory=dict)
    commits: list[float] = field(default_factory=list)  # monotonic times of acknowledgements
    errors: dict[str, int] = field(default_factory=dict)
    shown: list[str] = field(default_factory=list)  # the errors' texts, checked for addresses

    def acked_after(self, since: float) -> int:
        return sum(1 for at in self.commits if at > since)

    def longest_gap_s(self) -> float:
        return max((b - a for a, b in zip(self.commits, self.commits[1:], strict=False)), default=0)

    def keys(self) -> Iterator[str]:
        """Fresh keys of the partition, in order."""
        candidates = (f"w{self.partition}/{n}" for n in range(1 << 30))
        return (key for key in candidates if self.partition_of(key) == self.partition)

    async def run(self, kv: kvstore.Client, done: asyncio.Event, deadline: float) -> None:
        for step, key in enumerate(self.keys()):
            if done.is_set() or time.monotonic() >= deadline:
                return
            ops = [kvstore.Put(key, step), kvstore.Update(self.counter_key, add={"n": 1})]
            token: str | None = None
            while time.monotonic() < deadline:
                try:
                    await kv.transact(ops, token=token)
                except KvError as error:
                    assert error.code is not ErrorCode.TransactionCanceled, error
                    assert error.retryable, error
                    token = str(error.details.get("token", token))  # the same step, once
                    self.errors[error.code.name] = self.errors.get(error.code.name, 0) + 1
                    self.shown.append(json.dumps(error.to_json()))
                    await asyncio.sleep(RETRY_PAUSE_S)  # a retry's pause, not a wait for state
                    continue
                self.acked[key] = step
                self.commits.append(time.monotonic())
                break


def test_leader_killed_under_load_loses_nothing_and_catches_up(cluster: LocalCluster) -> None:
    rows = partition_rows(cluster)
    victim = rows[0].leader
    led = sorted(pid for pid, row in rows.items() if row.leader == victim)
    partition_of = cluster.config.cluster_map.partitions.partition_of
    writers = [
        Writer(pid, partition_of, counter_key=keys_on(cluster, pid, 1, "counter")[0]) for pid in led
    ]
    victim_pid = cluster.running()[victim]
    survivor = next(node for node in cluster.config.nodes if node != victim)
    killed_at = 0.0
    answers: list[tuple[float, int, str]] = []  # the HTTP reader's: when, status, body

    async def read_over_http(done: asyncio.Event, deadline: float) -> None:
        token = cluster.admin_token()
        base = f"http://{cluster.config.node(survivor).address}/v1/kv/"
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not done.is_set() and time.monotonic() < deadline:
                for writer in writers:
                    url = base + urllib.parse.quote(writer.counter_key, safe="")
                    headers = {"Authorization": f"Bearer {token}"}
                    async with session.get(url, headers=headers) as reply:
                        answers.append((time.monotonic(), reply.status, await reply.text()))
                await asyncio.sleep(HTTP_PROBE_PAUSE_S)  # a reader's pace, not a wait for state

    async def load_and_kill() -> None:
        nonlocal killed_at
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        async with kvstore.connect(cluster=cluster.root, mode="native") as kv:
            done = asyncio.Event()
            tasks = [asyncio.create_task(w.run(kv, done, deadline)) for w in writers]
            tasks.append(asyncio.create_task(read_over_http(done, deadline)))
            try:
                await _until(lambda: all(len(w.acked) >= COMMITS_BEFORE_KILL for w in writers))
                os.kill(victim_pid, signal.SIGKILL)
                killed_at = time.monotonic()
                await _until(
                    lambda: all(w.acked_after(killed_at) >= COMMITS_AFTER_KILL for w in writers)
                )
            finally:
                done.set()
                await asyncio.gather(*tasks)

    asyncio.run(load_and_kill())
    for writer in writers:
        gap = writer.longest_gap_s()
        print(
            f"partition {writer.partition} (leader {victim} killed): longest window without a "
            f"commit {gap * 1000:.0f} ms; {len(writer.acked)} steps acknowledged; retried "
            f"errors {writer.errors}"
        )
        assert writer.acked_after(killed_at) >= COMMITS_AFTER_KILL  # writes resumed
        for shown in writer.shown:
            assert LOOPBACK not in shown, shown
    refused = [body for _, status, body in answers if status not in (200, 404)]  # 404: not yet
    print(f"HTTP reader on {survivor}: {len(answers)} answers, {len(refused)} refused")
    for body in refused:
        error = json.loads(body)["error"]
        assert error["code"] in ErrorCode.__members__ and error["retryable"] is True, body
        assert LOOPBACK not in body, body
    assert any(at > killed_at and status == 200 for at, status, _ in answers)  # reads resumed

    new_rows = partition_rows(cluster)
    for pid in led:
        assert new_rows[pid].leader != victim and new_rows[pid].serving

    async def read_back() -> None:
        async with kvstore.connect(cluster=cluster.root, mode="native") as kv:
            for writer in writers:
                for key, step in writer.acked.items():
                    item = await kv.get(key)
                    assert item is not None and item.value == step, (writer.partition, key)
                counter = await kv.get(writer.counter_key)
                assert counter is not None and counter.value == {"n": len(writer.acked)}

    asyncio.run(read_back())

    # The victim comes back as a follower and catches up with every leader.
    cluster.up()
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        rows = partition_rows(cluster)
        behind = {
            pid: dict(row.positions)
            for pid, row in rows.items()
            if len(row.positions) < FACTOR
            or any(pos != row.positions.get(row.leader) for pos in row.positions.values())
        }
        if not behind:
            break
        assert time.monotonic() < deadline, f"replicas still behind their leader: {behind}"
        time.sleep(0.2)  # status polling, bounded by the deadline
    for pid in led:
        assert victim in rows[pid].positions


def test_up_and_down_are_idempotent_and_leave_nothing_running(cluster: LocalCluster) -> None:
    cluster.up()  # whatever an earlier test left down
    again = cluster.up()  # everything runs: nothing is started
    assert again.started == ()
    assert set(again.already_running) == {ETCD_ID, *cluster.config.nodes}
    shown = run_kvctl("cluster", "status", "--dir", str(cluster.root), "--json", "--no-rates")
    assert shown.returncode == 0, shown.stderr
    statuses = {status["id"]: status for status in json.loads(shown.stdout)}
    assert statuses[ETCD_ID]["role"] == "etcd" and statuses[ETCD_ID]["healthy"]
    assert all(len(statuses[node]["replication"]) == PARTITIONS for node in cluster.config.nodes)
    text = run_kvctl("cluster", "status", "--dir", str(cluster.root), "--no-rates")
    assert "LEADER" in text.stdout and "LAG" in text.stdout, text.stdout

    pids = {**cluster.running(), ETCD_ID: cluster.etcd_running()}
    stopped = cluster.down()
    assert set(stopped.terminated) | set(stopped.killed) == set(pids)
    assert all(process_command_line(pid) is None for pid in pids.values() if pid is not None)
    assert not list((cluster.root / "run").glob("*.pid"))
    assert set(cluster.down().not_running) == set(pids)  # again: nothing to stop

    restarted = cluster.up()  # the same cluster, data intact, etcd at the same URL
    assert ETCD_ID in restarted.started

    async def read() -> None:
        async with kvstore.connect(cluster=cluster.root, mode="native") as kv:
            key = keys_on(cluster, 0, 1, "after")[0]
            await kv.put(key, "back")
            item = await kv.get(key)
            assert item is not None and item.value == "back"

    asyncio.run(read())


async def _until(condition: Any, timeout_s: float = LOAD_TIMEOUT_S) -> None:
    """Poll ``condition()`` every few ms until true; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the load did not get there in time"
        await asyncio.sleep(0.01)
