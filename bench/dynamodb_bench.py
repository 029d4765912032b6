"""What the DynamoDB endpoint costs: the same work through boto3 and through the native SDK.

Method: one temporary local cluster (3 nodes, each serving the API and the DynamoDB endpoint).
``--accounts`` accounts are loaded both ways: as the SDK's bank accounts and as items of a
DynamoDB table. Then, each for ``--duration`` seconds after a one-second warm-up and with
``--clients`` concurrent callers:

* ``transfer``: move 1..10 between two random accounts, the debit conditioned on the balance.
  Native: ``kvctl bench``'s transfer workload (:mod:`kvstore.bench.store`). boto3: one
  ``TransactWriteItems`` (an ``ADD`` with ``balance >= :amount``, an ``ADD``), a cancellation
  for a conflict tried again, one whose condition failed counted as done (as pgbench does);
* ``get``: ``GetItem`` of a random account (native: ``kv.get``);
* ``put``: ``PutItem`` of a random account (native: ``kv.put``).

boto3 runs in ``--clients`` threads spread over ``--processes`` processes (one client each:
botocore clients are thread-safe, but a process's threads share one core's worth of Python),
with its retries off; its own CPU (signing, JSON, parsing) runs on the same two cores as the
cluster, as a local application's would. Printed: operations per second each way, the ratio,
and the cores the boto3 processes used (near 100% per process: the client, not the store,
bounds boto3's rate). The cluster is stopped and removed however the run ends.

    .venv/bin/python bench/dynamodb_bench.py --duration 10 --clients 16 [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from kvstore.bench.store import load, run, temp_cluster
from kvstore.bench.workloads import INITIAL_BALANCE, account_key, workload
from kvstore.client import Client

TABLE = "bench-accounts"
WARMUP_S = 1.0
LOAD_BATCH = 25  # BatchWriteItem's limit


def _boto3(url: str, token: str, clients: int) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="admin",
        aws_secret_access_key=token,
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=clients + 2),
    )


def _load_table(ddb: Any, accounts: int) -> None:
    ddb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for start in range(0, accounts, LOAD_BATCH):
        batch = [
            {"PutRequest": {"Item": {"id": {"S": str(i)}, "balance": {"N": str(INITIAL_BALANCE)}}}}
            for i in range(start, min(accounts, start + LOAD_BATCH))
        ]
        pending: dict[str, Any] = {TABLE: batch}
        for _ in range(100):  # bounded: unprocessed items are sent again
            pending = ddb.batch_write_item(RequestItems=pending)["UnprocessedItems"]
            if not pending:
                break


def _transfer(ddb: Any, rng: random.Random, accounts: int) -> None:
    source, target = rng.sample(range(accounts), 2)
    amount = str(rng.randint(1, 10))
    for _ in range(100):  # bounded: conflicts are tried again
        try:
            ddb.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": TABLE,
                            "Key": {"id": {"S": str(source)}},
                            "UpdateExpression": "ADD balance :minus",
                            "ConditionExpression": "balance >= :amount",
                            "ExpressionAttributeValues": {
                                ":minus": {"N": f"-{amount}"},
                                ":amount": {"N": amount},
                            },
                        }
                    },
                    {
                        "Update": {
                            "TableName": TABLE,
                            "Key": {"id": {"S": str(target)}},
                            "UpdateExpression": "ADD balance :plus",
                            "ExpressionAttributeValues": {":plus": {"N": amount}},
                        }
                    },
                ]
            )
            return
        except ClientError as error:
            reasons = {r["Code"] for r in error.response.get("CancellationReasons", [])}
            if "ConditionalCheckFailed" in reasons:
                return  # done: the balance refused the move
            if error.response["Error"]["Code"] not in (
                "TransactionCanceledException",
                "ThrottlingException",
                "TransactionConflictException",
            ):
                raise


def _boto3_rate(
    step: Callable[[random.Random], None], clients: int, duration_s: float
) -> tuple[float, float]:
    """Operations per second of ``clients`` threads looping over ``step``, and the share of one
    core this process (boto3 itself) used meanwhile."""
    counts = [0] * clients
    errors: list[BaseException] = []
    start = time.monotonic()
    measure_from = start + WARMUP_S
    stop_at = measure_from + duration_s

    def worker(index: int) -> None:
        rng = random.Random(index)
        try:
            while (now := time.monotonic()) < stop_at:
                step(rng)
                if now >= measure_from:
                    counts[index] += 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    cpu_before, wall_before = time.process_time(), time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    cpu_share = (time.process_time() - cpu_before) / (time.monotonic() - wall_before)
    return sum(counts) / duration_s, cpu_share


def _process_rate(job: tuple[str, str, str, int, float, int]) -> tuple[float, float]:
    """One boto3 process's share: ``clients`` threads on its own client."""
    name, url, token, clients, duration_s, accounts = job
    ddb = _boto3(url, token, clients)
    return _boto3_rate(_steps(ddb, accounts)[name], clients, duration_s)


def _steps(ddb: Any, accounts: int) -> dict[str, Callable[[random.Random], None]]:
    def get(rng: random.Random) -> None:
        ddb.get_item(TableName=TABLE, Key={"id": {"S": str(rng.randrange(accounts))}})

    def put(rng: random.Random) -> None:
        item = {"id": {"S": str(rng.randrange(accounts))}, "balance": {"N": str(INITIAL_BALANCE)}}
        ddb.put_item(TableName=TABLE, Item=item)

    return {"transfer": lambda rng: _transfer(ddb, rng, accounts), "get": get, "put": put}


async def _native_rate(
    kv: Client, name: str, clients: int, duration_s: float, accounts: int
) -> float:
    if name == "transfer":
        result = await run(
            kv, workload("transfer"), clients=clients, duration_s=duration_s, warmup_s=WARMUP_S
        )
        return result.completed / result.duration_s
    counts = [0] * clients
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + WARMUP_S
    stop_at = measure_from + duration_s

    async def caller(index: int) -> None:
        rng = random.Random(index)
        while (now := loop.time()) < stop_at:
            key = account_key(rng.randrange(accounts))
            if name == "get":
                await kv.get(key)
            else:
                await kv.put(key, {"balance": INITIAL_BALANCE})
            if now >= measure_from:
                counts[index] += 1

    await asyncio.gather(*(caller(i) for i in range(clients)))
    return sum(counts) / duration_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=1, help="boto3 processes (GIL)")
    args = parser.parse_args()
    with temp_cluster() as cluster:
        ddb = _boto3(cluster.cluster.api_url(), cluster.cluster.admin_token(), args.clients)
        _load_table(ddb, args.accounts)

        async def native(name: str) -> float:
            async with cluster.connect("native") as kv:
                if name == "transfer":
                    await load(kv, args.accounts)
                return await _native_rate(kv, name, args.clients, args.duration, args.accounts)

        print(
            f"{cluster.shape}, {args.clients} clients in {args.processes} boto3 process(es), "
            f"{args.duration:g} s per run"
        )
        print(f"{'workload':<10}{'native SDK/s':>14}{'boto3/s':>12}{'ratio':>8}{'boto3 CPU':>11}")
        url, token = cluster.cluster.api_url(), cluster.cluster.admin_token()
        per_process = max(1, args.clients // args.processes)
        for name in ("transfer", "get", "put"):
            native_rate = asyncio.run(native(name))
            job = (name, url, token, per_process, args.duration, args.accounts)
            with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
                shares = pool.map(_process_rate, [job] * args.processes)
            boto3_rate = sum(rate for rate, _ in shares)
            cpu_share = sum(cpu for _, cpu in shares)
            ratio = boto3_rate / native_rate if native_rate else float("nan")
            print(
                f"{name:<10}{native_rate:>14.0f}{boto3_rate:>12.0f}{ratio:>8.2f}{cpu_share:>10.0%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
