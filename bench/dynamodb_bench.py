"""What the DynamoDB endpoint costs: ``kvctl bench``'s workloads through boto3, the native SDK and
PostgreSQL, in one run.

Method: ``kvctl bench``'s transfer, get and put workloads (:mod:`kvstore.bench.workloads`: 10,000
accounts; a transfer moves 1..100 between two random accounts if the balance allows), each for
``--duration`` seconds after ``BENCH_WARMUP_S`` of warm-up with ``--clients`` callers, three ways
in turn, never at once:

* the native SDK against a temporary local cluster (3 nodes, each serving the API and the
  DynamoDB endpoint), as ``kvctl bench`` runs it (:func:`kvstore.bench.store.run`);
* boto3 against the same cluster's DynamoDB endpoint, the accounts being items of a table: a
  transfer is one ``TransactWriteItems`` (an ``ADD`` conditioned on ``balance >= :amount``, an
  ``ADD``; a cancellation for a conflict tried again, one whose condition failed counted as done,
  as pgbench does), a get ``GetItem``, a put ``PutItem``. boto3 runs in ``--clients`` threads
  spread over ``--processes`` processes (one client each: botocore clients are thread-safe, but
  a process's threads share one core's worth of Python), its retries off; its own CPU (signing,
  JSON, parsing) runs on the same two cores as the cluster, as a local application's would;
* PostgreSQL with pgbench, as ``kvctl bench --compare-postgres`` runs it
  (:class:`kvstore.bench.postgres.TempPostgres`).

Printed per workload: operations per second each way, boto3's ratio to PostgreSQL and to the
native SDK, and the cores the boto3 processes used (near 100% per process: the client, not the
store, bounds boto3's rate). The cluster and the PostgreSQL server are stopped and removed
however the run ends.

    .venv/bin/python bench/dynamodb_bench.py --duration 10 --clients 16 --processes 2
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

from kvstore.bench.postgres import TempPostgres, find_binaries
from kvstore.bench.store import load, run, temp_cluster
from kvstore.bench.workloads import AMOUNT_MAX, INITIAL_BALANCE, workload
from kvstore.limits import BENCH_WARMUP_S, DYNAMODB_BATCH_WRITE_ITEMS_MAX

TABLE = "bench-accounts"
WORKLOADS = ("transfer", "get", "put")
ATTEMPTS_MAX = 100  # tries of one transfer cancelled by conflicts


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
    for start in range(0, accounts, DYNAMODB_BATCH_WRITE_ITEMS_MAX):
        batch = [
            {"PutRequest": {"Item": {"id": {"S": str(i)}, "balance": {"N": str(INITIAL_BALANCE)}}}}
            for i in range(start, min(accounts, start + DYNAMODB_BATCH_WRITE_ITEMS_MAX))
        ]
        pending: dict[str, Any] = {TABLE: batch}
        for _ in range(ATTEMPTS_MAX):  # bounded: unprocessed items are sent again
            pending = ddb.batch_write_item(RequestItems=pending)["UnprocessedItems"]
            if not pending:
                break


def _transfer(ddb: Any, rng: random.Random, accounts: int) -> None:
    source, target = rng.sample(range(accounts), 2)
    amount = str(rng.randint(1, AMOUNT_MAX))
    for _ in range(ATTEMPTS_MAX):
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


def _steps(ddb: Any, accounts: int) -> dict[str, Callable[[random.Random], None]]:
    def get(rng: random.Random) -> None:
        ddb.get_item(TableName=TABLE, Key={"id": {"S": str(rng.randrange(accounts))}})

    def put(rng: random.Random) -> None:
        item = {"id": {"S": str(rng.randrange(accounts))}, "balance": {"N": str(INITIAL_BALANCE)}}
        ddb.put_item(TableName=TABLE, Item=item)

    return {"transfer": lambda rng: _transfer(ddb, rng, accounts), "get": get, "put": put}


def _boto3_rate(
    step: Callable[[random.Random], None], clients: int, duration_s: float
) -> tuple[float, float]:
    """Operations per second of ``clients`` threads looping over ``step``, and the share of one
    core this process (boto3 itself) used meanwhile."""
    counts = [0] * clients
    errors: list[BaseException] = []
    measure_from = time.monotonic() + BENCH_WARMUP_S
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1, help="boto3 processes (GIL)")
    args = parser.parse_args()
    accounts = workload("transfer").accounts
    native: dict[str, float] = {}
    boto3_rates: dict[str, tuple[float, float]] = {}
    with temp_cluster() as cluster:
        url, token = cluster.cluster.api_url(), cluster.cluster.admin_token()
        _load_table(_boto3(url, token, 1), accounts)

        async def sdk() -> None:
            async with cluster.connect("native") as kv:
                await load(kv, accounts)
                for name in WORKLOADS:
                    result = await run(
                        kv,
                        workload(name),
                        clients=args.clients,
                        duration_s=args.duration,
                        warmup_s=BENCH_WARMUP_S,
                    )
                    native[name] = result.completed / result.duration_s

        asyncio.run(sdk())
        per_process = max(1, args.clients // args.processes)
        for name in WORKLOADS:
            job = (name, url, token, per_process, float(args.duration), accounts)
            with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
                shares = pool.map(_process_rate, [job] * args.processes)
            boto3_rates[name] = (sum(r for r, _ in shares), sum(c for _, c in shares))
        shape = cluster.shape
    postgres: dict[str, float] = {}
    with TempPostgres(find_binaries(), max_connections=args.clients + 10) as server:
        server.load(accounts)
        for name in WORKLOADS:
            result = server.run(
                workload(name),
                clients=args.clients,
                duration_s=args.duration,
                warmup_s=BENCH_WARMUP_S,
            )
            postgres[name] = result.completed / result.duration_s
    print(
        f"{shape}, {args.clients} clients ({args.processes} boto3 process(es)), "
        f"{args.duration} s per run, {accounts:,} accounts"
    )
    print(
        f"{'workload':<10}{'PostgreSQL/s':>14}{'native SDK/s':>14}{'boto3/s':>10}"
        f"{'boto3/PG':>10}{'boto3/SDK':>11}{'boto3 CPU':>11}"
    )
    for name in WORKLOADS:
        rate, cpu = boto3_rates[name]
        print(
            f"{name:<10}{postgres[name]:>14.0f}{native[name]:>14.0f}{rate:>10.0f}"
            f"{rate / postgres[name]:>10.2f}{rate / native[name]:>11.2f}{cpu:>10.0%}"
        )


if __name__ == "__main__":
    main()
