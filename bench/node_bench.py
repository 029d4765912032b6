"""Storage node benchmark: durable puts, one-round transactions and gets over loopback RPC.

Run: ``.venv/bin/python bench/node_bench.py [--clients 64] [--duration 10] [--partitions 16]
[--workloads put,txn,get] [--rss-items 1000000] [--json]``

Theory of operation
-------------------
Starts one real node process (``python -m kvstore.storage_node``) on a free loopback port with its
SQLite files in a temporary directory, durable as configured by default (WAL, synchronous=FULL,
group commit). Load comes from ``--procs`` separate client processes (the node gets a core of its
own on a 2-core box), each running its share of ``--clients`` concurrent callers spread over a few
RPC connections, for ``--duration`` seconds per workload:

* ``put``: singleton durable writes (``write``) of 100-byte values over 10,000 keys;
* ``txn``: one-round single-partition transactions (``execute``) with one put each;
* ``get``: singleton reads of the preloaded keys.

It prints operations/s, p50 and p99 latency per workload. ``--rss-items N`` then loads N items of
100 bytes (batched 100 per ``execute``) and prints the node's resident set size. The node and its
files are removed at the end, whatever happens. Figures go in ``docs/bench.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore.codec import encode_request  # noqa: E402
from kvstore.config import write_cluster_file, write_secret  # noqa: E402
from kvstore.messages import ExecuteRequest, GetRequest, WriteRequest  # noqa: E402
from kvstore.ops import Op, OpKind  # noqa: E402
from kvstore.partitioning import PartitionMap  # noqa: E402
from kvstore.rpc import RpcClient  # noqa: E402
from kvstore.timestamps import (  # noqa: E402
    HybridClock,
    new_txn_id,
    random_origin,
    system_clock_us,
)

CLOCK = HybridClock(system_clock_us, random_origin())  # this process's; a fork re-draws its origin
KEYS = 10_000
VALUE = "x" * 100
CONNECTIONS_PER_PROC = 4
LATENCY_SAMPLES_MAX = 200_000
LOAD_BATCH = 100
NODE_COMMAND = (sys.executable, "-m", "kvstore.storage_node")


@dataclass(frozen=True)
class Load:
    url: str
    secret: str
    workload: str
    partitions: int
    clients: int
    duration_s: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request_for(workload: str, pmap: PartitionMap, i: int) -> tuple[str, dict[str, object]]:
    key = f"key-{i % KEYS:05d}"
    pid = pmap.partition_of(key)
    if workload == "get":
        return "get", encode_request(GetRequest(partition=pid, key=key))
    op = Op(kind=OpKind.PUT, key=key, value=VALUE)
    if workload == "put":
        return "write", encode_request(WriteRequest(partition=pid, op=op))
    request = ExecuteRequest(partition=pid, txn_id=new_txn_id(), ts=CLOCK.now(), ops=(op,))
    return "execute", encode_request(request)


async def drive(load: Load, clients: int, seed: int) -> dict[str, Any]:
    pmap = PartitionMap(load.partitions)
    clock = CLOCK
    conns = [
        RpcClient(load.url, load.secret, on_clock=clock.observe)
        for _ in range(CONNECTIONS_PER_PROC)
    ]
    latencies: list[float] = []
    counts = {"ok": 0, "error": 0}
    deadline = time.monotonic() + load.duration_s

    async def caller(c: int) -> None:
        conn = conns[c % len(conns)]
        i = seed * 1_000_003 + c * 7919
        while time.monotonic() < deadline:
            i += 1
            method, body = request_for(load.workload, pmap, i)
            started = time.perf_counter()
            try:
                await conn.call(method, body, 5_000)
            except Exception:
                counts["error"] += 1
                continue
            counts["ok"] += 1
            if len(latencies) < LATENCY_SAMPLES_MAX:
                latencies.append(time.perf_counter() - started)

    try:
        await conns[0].call("stats", {}, 5_000)  # connect before the clock starts
        started = time.monotonic()
        await asyncio.gather(*(caller(c) for c in range(clients)))
        elapsed = time.monotonic() - started
    finally:
        for conn in conns:
            await conn.close()
    return {"ok": counts["ok"], "error": counts["error"], "elapsed": elapsed, "lat": latencies}


def client_process(load: Load, clients: int, seed: int, out: Any) -> None:
    out.put(uvloop.run(drive(load, clients, seed)))


def run_workload(load: Load, procs: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    clients = load.clients
    shares = [clients // procs + (1 if p < clients % procs else 0) for p in range(procs)]
    workers = [
        ctx.Process(target=client_process, args=(load, share, p, queue))
        for p, share in enumerate(shares)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=load.duration_s + 60) for _ in workers]
    for w in workers:
        w.join(10)
    ok = sum(r["ok"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    lat = sorted(x for r in results for x in r["lat"])
    return {
        "workload": load.workload,
        "ops_per_s": round(ok / elapsed),
        "errors": sum(r["error"] for r in results),
        "p50_ms": round(statistics.median(lat) * 1000, 3) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 3) if lat else None,
    }


async def load_items(url: str, secret: str, partitions: int, items: int) -> None:
    pmap = PartitionMap(partitions)
    conn = RpcClient(url, secret, on_clock=CLOCK.observe)
    by_partition: dict[int, list[Op]] = {}
    pending: set[asyncio.Task[object]] = set()
    try:
        for i in range(items):
            key = f"item-{i:08d}"
            ops = by_partition.setdefault(pmap.partition_of(key), [])
            ops.append(Op(kind=OpKind.PUT, key=key, value=VALUE))
            if len(ops) == LOAD_BATCH:
                pid = pmap.partition_of(key)
                request = ExecuteRequest(
                    partition=pid, txn_id=new_txn_id(), ts=CLOCK.now(), ops=tuple(ops)
                )
                by_partition[pid] = []
                pending.add(asyncio.create_task(conn.call("execute", encode_request(request))))
                if len(pending) >= 32:
                    done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                    for task in done:
                        task.result()
        await asyncio.gather(*pending)
    finally:
        await conn.close()


def wait_healthy(address: str) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://{address}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # readiness polling, bounded
    raise RuntimeError(f"the node at {address} did not become healthy")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--workloads", default="put,txn,get")
    parser.add_argument("--rss-items", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kvbench-") as tmp:
        root = Path(tmp)
        address = f"127.0.0.1:{free_port()}"
        write_cluster_file(root / "cluster.toml", nodes={"n1": address}, partitions=args.partitions)
        secret = write_secret(root / "secret")
        log = (root / "node.log").open("wb")
        node = subprocess.Popen(
            [*NODE_COMMAND, "--config", str(root / "cluster.toml"), "--id", "n1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            wait_healthy(address)
            url = f"ws://{address}/rpc"
            rows = []
            for workload in args.workloads.split(","):
                load = Load(url, secret, workload, args.partitions, args.clients, args.duration)
                row = run_workload(load, args.procs)
                rows.append(row)
                if not args.json:
                    print(
                        f"{workload:>5}: {row['ops_per_s']:>7} ops/s  p50 {row['p50_ms']} ms  "
                        f"p99 {row['p99_ms']} ms  errors {row['errors']}",
                        flush=True,
                    )
            result: dict[str, Any] = {
                "clients": args.clients,
                "partitions": args.partitions,
                "rows": rows,
            }
            if args.rss_items:
                started = time.monotonic()
                asyncio.run(load_items(url, secret, args.partitions, args.rss_items))
                result["rss_items"] = args.rss_items
                result["rss_mb"] = round(rss_mb(node.pid), 1)
                result["load_s"] = round(time.monotonic() - started, 1)
                if not args.json:
                    print(
                        f"rss: {result['rss_mb']} MB with {args.rss_items} items of 100 bytes "
                        f"(loaded in {result['load_s']} s)"
                    )
            if args.json:
                print(json.dumps(result))
        finally:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
            log.close()
            if node.returncode not in (0, -signal.SIGTERM):
                print((root / "node.log").read_text()[-3000:], file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
