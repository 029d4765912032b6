"""Public API benchmark: a real cluster (3 nodes, 1 coordinator) driven over HTTP JSON.

Run: ``.venv/bin/python bench/api_bench.py [--clients 32] [--duration 10]
[--workloads get,put,transfer,read2] [--json]``

Theory of operation
-------------------
Starts a local cluster of real processes on free loopback ports (the integration tests'
``LocalNodes``: 3 storage nodes, 16 partitions, 1 coordinator, durable as configured by default)
in a temporary directory, loads 10,000 accounts ``{"balance": 1000}``, then runs each workload
for ``--duration`` seconds with ``--clients`` concurrent callers on one aiohttp session:

* ``get``: ``GET /v1/kv/{key}`` of random accounts;
* ``put``: durable ``PUT /v1/kv/{key}`` of random accounts;
* ``transfer``: ``POST /v1/txn`` moving 1..10 between two random accounts, with a condition that
  forbids a negative balance (a cancelled transfer counts as an abort, not an error);
* ``read2``: ``POST /v1/read`` of two random accounts.

It prints operations/s, p50 and p99 latency and aborts per workload. Everything runs on one
machine: on 2 cores the client shares the CPU with the cluster, so figures are a floor. The
cluster is stopped and its files removed at the end, whatever happens. Bounded: a fixed number of
accounts, clients and seconds; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.cluster import LocalNodes

ACCOUNTS = 10_000
LOAD_BATCH = 100


def account(index: int) -> str:
    return f"acct/{index:05d}"


async def load(session: aiohttp.ClientSession, base: str) -> None:
    for start in range(0, ACCOUNTS, LOAD_BATCH):
        ops = [
            {"op": "put", "key": account(i), "value": {"balance": 1000}}
            for i in range(start, start + LOAD_BATCH)
        ]
        async with session.post(f"{base}/v1/txn", json={"ops": ops}) as reply:
            assert reply.status == 200, await reply.text()


async def one(session: aiohttp.ClientSession, base: str, workload: str, rng: random.Random) -> str:
    """One operation; returns "ok", "abort" or "error"."""
    a = rng.randrange(ACCOUNTS)
    if workload == "get":
        request = session.get(f"{base}/v1/kv/acct%2F{a:05d}")
    elif workload == "put":
        body = {"value": {"balance": rng.randrange(1000)}}
        request = session.put(f"{base}/v1/kv/acct%2F{a:05d}", json=body)
    elif workload == "read2":
        b = (a + 1 + rng.randrange(ACCOUNTS - 1)) % ACCOUNTS
        request = session.post(f"{base}/v1/read", json={"keys": [account(a), account(b)]})
    else:
        b = (a + 1 + rng.randrange(ACCOUNTS - 1)) % ACCOUNTS
        amount = rng.randint(1, 10)
        ops = [
            {
                "op": "update",
                "key": account(a),
                "add": {"balance": -amount},
                "if": {"path": "balance", "ge": amount},
            },
            {"op": "update", "key": account(b), "add": {"balance": amount}},
        ]
        request = session.post(f"{base}/v1/txn", json={"ops": ops})
    async with request as reply:
        await reply.read()
        if reply.status == 200:
            return "ok"
        return "abort" if reply.status == 409 else "error"


async def run_workload(
    session: aiohttp.ClientSession, base: str, workload: str, clients: int, duration_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"ok": 0, "abort": 0, "error": 0}
    end = time.monotonic() + duration_s

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < end:
            started = time.perf_counter()
            outcome = await one(session, base, workload, rng)
            latencies.append(time.perf_counter() - started)
            counts[outcome] += 1

    started = time.monotonic()
    await asyncio.gather(*(client(seed) for seed in range(clients)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "workload": workload,
        "ops_per_s": round((counts["ok"] + counts["abort"]) / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        **counts,
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="kv-api-bench-") as root:
        cluster = LocalNodes(
            Path(root), ("n1", "n2", "n3"), partitions=16, timing={}, coordinator_ids=("c1",)
        )
        try:
            cluster.start_all()
            base = cluster.api("c1")
            headers = {"Authorization": f"Bearer {cluster.tokens['admin']}"}
            connector = aiohttp.TCPConnector(limit=args.clients)
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
                await load(session, base)
                results = []
                for workload in args.workloads.split(","):
                    result = await run_workload(
                        session, base, workload, args.clients, args.duration
                    )
                    results.append(result)
                    if not args.json:
                        print(
                            f"{workload:>9}: {result['ops_per_s']:>6} ops/s  "
                            f"p50 {result['p50_ms']:>7} ms  p99 {result['p99_ms']:>7} ms  "
                            f"aborts {result['abort']}  errors {result['error']}",
                            flush=True,
                        )
                return results
        finally:
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workloads", default="get,put,transfer,read2")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.clients <= 1024 or not 0 < args.duration <= 600:
        parser.error("--clients must be 1..1024 and --duration 0..600 seconds")
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
