"""Online backups and restores against real clusters (docs/backup.md).

Goal: a backup taken while clients write at full speed holds exactly the transactions committed
at or before its timestamp, in every partition, and restores into a fresh cluster (with another
partition count) as such: a bank's balances sum to its total there, and list-append lists are
exactly the appends of the transactions known committed at or before ``T`` (plus, perhaps, ones
whose outcome is unknown), checked by the simulator's backup check (chaos/sim/backup_check.py)
on the client's history. A backup during which a node is SIGKILLed and restarted either
completes consistently or fails with a clear error and leaves no file. Two clusters restored
from one backup never issue the same timestamp or transaction id.

Method: storage nodes are real processes on 127.0.0.1 (``LocalNodes``); the load is the SDK in
native mode from this process (bounded: a fixed number of tasks, stopped by an event); kvctl
runs as a subprocess, as an operator runs it. Every cluster is killed on the way out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from support.api import PRODUCTION_TIMING
from support.cluster import LocalNodes
from support.etcd import replicated_cluster
from support.kvctl import KVCTL, clean_env

import kvstore
from chaos.history import History
from chaos.sim.backup_check import BackupImage, check_bank, check_list_append
from kvstore.client import Client
from kvstore.errors import KvError, OutcomeUnknown, Unavailable
from kvstore.types import Timestamp, timestamp_from_text

ACCOUNTS = [f"acct-{i}" for i in range(20)]
BALANCE = 100
LISTS = [f"list-{i}" for i in range(8)]
LOAD_TASKS = 8
LOAD_AFTER_BACKUP_S = 1.0
HANG_GUARD_S = 120.0  # only against a command that never ends: never a measurement


def _cluster(root: Path, partitions: int, nodes: tuple[str, ...] = ("n1", "n2")) -> LocalNodes:
    cluster = LocalNodes(root, nodes, partitions=partitions, timing=PRODUCTION_TIMING)
    try:
        cluster.start_all()
    except BaseException:
        cluster.close()
        raise
    return cluster


@pytest.fixture
def source(tmp_path: Path) -> Iterator[LocalNodes]:
    cluster = _cluster(tmp_path / "source", partitions=8)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[LocalNodes]:
    cluster = _cluster(tmp_path / "target", partitions=4, nodes=("n1",))
    try:
        yield cluster
    finally:
        cluster.close()


async def kvctl(*args: str) -> tuple[int, str, str]:
    """kvctl as a subprocess, without blocking the load running on this loop."""
    process = await asyncio.create_subprocess_exec(
        *KVCTL,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), HANG_GUARD_S)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def backup_under(
    load: Callable[[asyncio.Event], Awaitable[None]],
    config: Path,
    out: Path,
    during: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, str, str]:
    """Run ``load`` (``LOAD_TASKS`` copies), run ``kvctl backup create`` into ``out`` in the
    middle (and ``during`` meanwhile), stop the load a little after; kvctl's exit status and
    output."""
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(load(stop)) for _ in range(LOAD_TASKS)]
    try:
        await asyncio.sleep(1.0)  # the load is running at full speed
        backup = asyncio.ensure_future(
            kvctl("backup", "create", "--config", str(config), "--out", str(out), "--json")
        )
        try:
            if during is not None:
                await during()
            done = await backup
        finally:
            backup.cancel()
        await asyncio.sleep(LOAD_AFTER_BACKUP_S)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return done


async def backed_up(
    load: Callable[[asyncio.Event], Awaitable[None]], config: Path, out: Path
) -> dict[str, Any]:
    """``backup_under`` that must succeed: the backup's JSON summary."""
    code, stdout, stderr = await backup_under(load, config, out)
    assert code == 0, stderr
    summary: dict[str, Any] = json.loads(stdout)
    return summary


async def assert_bank_restored(target: LocalNodes, backup: Path) -> None:
    """``backup`` verifies, restores into ``target``, and the balances there sum to the total."""
    code, _, stderr = await kvctl("backup", "verify", str(backup))
    assert code == 0, stderr
    await restore_into(target, backup)
    async with kvstore.connect(cluster=target.config_path, mode="native") as kv:
        items = await kv.read(ACCOUNTS)
    balances = {item.key: item.value for item in items if item is not None}
    image = BackupImage(number=1, at=(0, 0, 0), values=balances)
    assert check_bank(image, BALANCE * len(ACCOUNTS), ACCOUNTS) == []


def transfer_load(kv: Client, counted: list[int]) -> Callable[[asyncio.Event], Awaitable[None]]:
    """Bank transfers between random accounts until the event is set (one task's loop)."""

    async def transfers_until(stop: asyncio.Event) -> None:
        rng = random.Random()
        while not stop.is_set():
            a, b = rng.sample(ACCOUNTS, 2)
            amount = rng.randint(1, 10)
            try:
                await kv.transact(
                    [
                        kvstore.Update(a, add={"": -amount}, if_=kvstore.ge("", amount)),
                        kvstore.Update(b, add={"": amount}),
                    ]
                )
                counted[0] += 1
            except KvError:
                continue  # a refusal changes nothing; an unknown outcome keeps the total

    return transfers_until


async def restore_into(cluster: LocalNodes, backup: Path) -> None:
    code, _, stderr = await kvctl(
        "backup", "restore", str(backup), "--config", str(cluster.config_path), "--json"
    )
    assert code == 0, stderr


@pytest.mark.asyncio
async def test_a_bank_backed_up_under_load_restores_to_its_total(
    source: LocalNodes, target: LocalNodes, tmp_path: Path
) -> None:
    async with kvstore.connect(cluster=source.config_path, mode="native") as kv:
        for account in ACCOUNTS:
            await kv.put(account, BALANCE)
        transfers = [0]
        backup = tmp_path / "bank.kvbackup"
        summary = await backed_up(transfer_load(kv, transfers), source.config_path, backup)
    assert transfers[0] > 0 and summary["items"] == len(ACCOUNTS)
    await assert_bank_restored(target, backup)


@pytest.mark.asyncio
async def test_a_list_append_backup_holds_exactly_what_committed_up_to_its_timestamp(
    source: LocalNodes, target: LocalNodes, tmp_path: Path
) -> None:
    history = History()
    processes = itertools.count()
    counter = itertools.count(1)
    async with kvstore.connect(cluster=source.config_path, mode="native") as kv:

        async def appends_until(stop: asyncio.Event) -> None:
            rng = random.Random()
            process = next(processes)
            while not stop.is_set():
                appends = {key: next(counter) for key in rng.sample(LISTS, rng.randint(1, 3))}
                ops = [kvstore.Update(key, append={"": [value]}) for key, value in appends.items()]
                invoke = history.invoke(
                    process, "txn", [["append", key, value] for key, value in appends.items()]
                )
                try:
                    committed = await kv.transact(ops)
                except (OutcomeUnknown, Unavailable) as unknown:
                    history.complete(invoke, "info", error=unknown.code.name)
                    process = next(processes)  # an info completion retires its process
                except KvError as refused:
                    history.complete(invoke, "fail", error=refused.code.name)
                else:
                    ts = timestamp_from_text(committed.ts)
                    assert ts is not None
                    history.complete(invoke, "ok", ts=ts, txn_id=committed.txn_id)

        backup = tmp_path / "lists.kvbackup"
        summary = await backed_up(appends_until, source.config_path, backup)
    at = timestamp_from_text(summary["at"])
    assert at is not None
    later = [op for op in history.ops if op.type == "ok" and op.ts is not None and op.ts > at]
    assert later  # the load went on committing above T while the backup ran
    await restore_into(target, backup)
    async with kvstore.connect(cluster=target.config_path, mode="native") as kv:
        items = [item for item in await kv.read(LISTS) if item is not None]
    image = BackupImage(
        number=1,
        at=tuple(at),
        values={item.key: item.value for item in items},
        item_ts={item.key: tuple(timestamp_from_text(item.ts) or ()) for item in items},
    )
    assert check_list_append(image, history) == []


@pytest.mark.asyncio
async def test_a_backup_while_a_node_is_killed_is_consistent_or_fails_cleanly(
    source: LocalNodes, target: LocalNodes, tmp_path: Path
) -> None:
    async with kvstore.connect(cluster=source.config_path, mode="native") as kv:
        for account in ACCOUNTS:
            await kv.put(account, BALANCE)
        for start in range(0, 20_000, 500):  # enough rows that the backup takes a while
            await asyncio.gather(*(kv.put(f"filler-{i:06d}", i) for i in range(start, start + 500)))
    backup = tmp_path / "killed.kvbackup"

    async def kill_and_restart() -> None:
        await asyncio.sleep(0.3)
        source.kill("n2")
        source.start("n2")
        await asyncio.to_thread(source.wait_healthy, "n2")

    async with kvstore.connect(cluster=source.config_path, mode="native") as kv:
        load = transfer_load(kv, [0])
        code, out, err = await backup_under(load, source.config_path, backup, kill_and_restart)
    if code != 0:
        assert "backup failed" in err and "Traceback" not in err, err
        assert not backup.exists()
        return
    assert json.loads(out)["items"] == len(ACCOUNTS) + 20_000
    await assert_bank_restored(target, backup)


@pytest.mark.asyncio
async def test_clusters_restored_from_one_backup_never_issue_the_same_timestamp_or_id(
    source: LocalNodes, tmp_path: Path
) -> None:
    async with kvstore.connect(cluster=source.config_path, mode="native") as kv:
        for account in ACCOUNTS:
            await kv.put(account, BALANCE)
    backup = tmp_path / "twice.kvbackup"
    code, stdout, stderr = await kvctl(
        "backup", "create", "--config", str(source.config_path), "--out", str(backup), "--json"
    )
    assert code == 0, stderr
    at = timestamp_from_text(json.loads(stdout)["at"])
    assert at is not None
    issued: list[set[tuple[str, str]]] = []
    for name in ("twin-a", "twin-b"):
        twin = _cluster(tmp_path / name, partitions=4, nodes=("n1",))
        try:
            await restore_into(twin, backup)
            seen: set[tuple[str, str]] = set()
            async with kvstore.connect(cluster=twin.config_path, mode="native") as kv:
                for index in range(50):
                    committed = await kv.transact(
                        [kvstore.Update(ACCOUNTS[index % 20], add={"": 1})]
                    )
                    ts = timestamp_from_text(committed.ts)
                    assert ts is not None and ts > at  # the restored clocks start above T
                    seen |= {("ts", committed.ts), ("txn", committed.txn_id)}
                    written = await kv.put(f"new-{index}", index)
                    seen.add(("ts", written.ts))
            issued.append(seen)
        finally:
            twin.close()
    assert len(issued[0]) >= 100 and not issued[0] & issued[1]


def test_restore_refuses_a_cluster_not_empty_and_create_a_future_timestamp(
    source: LocalNodes, tmp_path: Path
) -> None:
    backup = tmp_path / "self.kvbackup"
    config = str(source.config_path)
    done = asyncio.run(kvctl("backup", "create", "--config", config, "--out", str(backup)))
    assert done[0] == 0, done[2]

    async def one_put() -> None:
        async with kvstore.connect(cluster=source.config_path, mode="native") as kv:
            await kv.put("present", 1)

    asyncio.run(one_put())
    code, _, stderr = asyncio.run(kvctl("backup", "restore", str(backup), "--config", config))
    assert code != 0 and "not empty" in stderr
    code, _, stderr = asyncio.run(
        kvctl("backup", "restore", str(backup), "--config", config, "--force")
    )
    assert code == 0, stderr
    future = Timestamp(time.time_ns() // 1000 + 3_600_000_000, 0, 1)  # an hour ahead
    refused = tmp_path / "future.kvbackup"
    code, _, stderr = asyncio.run(
        kvctl("backup", "create", "--config", config, "--out", str(refused), "--at", str(future))
    )
    assert code != 0 and "in the future" in stderr and not refused.exists(), stderr


@pytest.mark.asyncio
async def test_a_replicated_cluster_backed_up_under_load_restores_to_its_total(
    tmp_path: Path, target: LocalNodes
) -> None:
    """The same through partition leaders: pages and floors on each leader, replicated to its
    followers (3 nodes, factor 3, a private etcd)."""
    with replicated_cluster(tmp_path / "rf3" / "cluster", nodes=3, partitions=4, factor=3) as rf3:
        config = rf3.config.path
        async with kvstore.connect(cluster=config, mode="native") as kv:
            for account in ACCOUNTS:
                await kv.put(account, BALANCE)
            transfers = [0]
            backup = tmp_path / "rf3.kvbackup"
            await backed_up(transfer_load(kv, transfers), config, backup)
    assert transfers[0] > 0
    await assert_bank_restored(target, backup)


def _dynamodb(cluster: LocalNodes) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=cluster.api("n1"),  # every node serves the API
        region_name="us-east-1",
        aws_access_key_id="admin",
        aws_secret_access_key=cluster.tokens["admin"],
    )


@pytest.mark.asyncio
async def test_dynamodb_tables_come_back_from_a_restore_into_another_partitioning(
    source: LocalNodes, target: LocalNodes, tmp_path: Path
) -> None:
    """DynamoDB tables are keys of the store like any other: a backup holds their catalogue
    and items, and a restore into 4 partitions (from 8) keeps every hash key's items together
    and in sort-key order, so Query, transactions and the table listing work there; a cluster
    holding only DynamoDB tables is not empty to a second restore."""
    ddb = _dynamodb(source)
    ddb.create_table(
        TableName="orders",
        KeySchema=[
            {"AttributeName": "customer", "KeyType": "HASH"},
            {"AttributeName": "at", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "customer", "AttributeType": "S"},
            {"AttributeName": "at", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    for customer in range(10):
        for at in (-5, 0, 3, 12):
            ddb.put_item(
                TableName="orders",
                Item={
                    "customer": {"S": f"c{customer}"},
                    "at": {"N": str(at)},
                    "blob": {"B": bytes([customer, at % 256])},
                },
            )
    backup = tmp_path / "dynamodb.kvbackup"
    code, _, stderr = await kvctl(
        "backup", "create", "--config", str(source.config_path), "--out", str(backup)
    )
    assert code == 0, stderr
    await restore_into(target, backup)
    # The target now holds DynamoDB tables only (no key a public scan sees): not empty.
    code, _, stderr = await kvctl(
        "backup", "restore", str(backup), "--config", str(target.config_path)
    )
    assert code != 0 and "not empty" in stderr, stderr
    restored = _dynamodb(target)
    assert "orders" in restored.list_tables()["TableNames"]
    for customer in range(10):
        page = restored.query(
            TableName="orders",
            KeyConditionExpression="customer = :c AND #at > :low",
            ExpressionAttributeNames={"#at": "at"},
            ExpressionAttributeValues={":c": {"S": f"c{customer}"}, ":low": {"N": "-1"}},
            ScanIndexForward=False,
        )
        assert [item["at"]["N"] for item in page["Items"]] == ["12", "3", "0"]
        assert page["Items"][0]["blob"] == {"B": bytes([customer, 12])}
    restored.transact_write_items(
        TransactItems=[
            {
                "Delete": {
                    "TableName": "orders",
                    "Key": {"customer": {"S": "c0"}, "at": {"N": "-5"}},
                    "ConditionExpression": "attribute_exists(#b)",  # BLOB is a reserved word
                    "ExpressionAttributeNames": {"#b": "blob"},
                }
            }
        ]
    )
