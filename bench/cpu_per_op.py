"""CPU per operation of each process of a local cluster: the "Where the time goes" table of
docs/bench.md.

Run: ``.venv/bin/python bench/cpu_per_op.py [--workloads transfer,put,get,read2,txn1,read1]
[--clients 32] [--duration 6] [--mode native] [--nodes 3]``

Theory of operation
-------------------
Starts a temporary local cluster as ``kvctl bench`` does (:func:`kvstore.bench.store.temp_cluster`:
``--nodes`` storage nodes, 3 by default, each coordinating; with one node every transaction is a
one-node transaction), loads the accounts, and runs each workload with the
benchmark's own driver (:func:`kvstore.bench.store.run`, uvloop, one warm-up second). Around each
measured run it reads the user and system CPU time of every cluster process and of this one from
``/proc/<pid>/stat`` and prints the CPU microseconds per completed operation, per process and in
all, plus the nodes' fsyncs per operation (``kvstore_node_fsyncs_total``). This process holds the
SDK and, in direct mode, the coordinator; in native mode the nodes coordinate. Bounded: a fixed list
of workloads and seconds; the cluster is removed at the end whatever happens. Linux only
(``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import urllib.request

import uvloop

from kvstore.bench import store
from kvstore.bench.procfs import cpu_s
from kvstore.bench.workloads import ACCOUNTS, workload

_FSYNCS = re.compile(r"^kvstore_node_fsyncs_total (\S+)", re.MULTILINE)


def fsyncs(cluster: store.TempCluster) -> float:
    total = 0.0
    auth = {"Authorization": f"Bearer {cluster.cluster.admin_token()}"}  # /metrics needs a token
    for spec in cluster.cluster.processes():
        if spec.role == "node":
            scrape = urllib.request.Request(spec.url + "/metrics", headers=auth)
            with urllib.request.urlopen(scrape, timeout=10) as reply:
                total += sum(float(v) for v in _FSYNCS.findall(reply.read().decode()))
    return total


async def measure(cluster: store.TempCluster, args: argparse.Namespace) -> None:
    pids = dict(cluster.cluster.running())
    pids["client"] = os.getpid()
    async with cluster.connect(args.mode) as kv:
        await store.load(kv, ACCOUNTS)
        for name in args.workloads.split(","):
            before = {who: cpu_s(pid) or 0.0 for who, pid in pids.items()}
            fsyncs_before = fsyncs(cluster)
            result = await store.run(
                kv, workload(name), clients=args.clients, duration_s=args.duration, warmup_s=1
            )
            ops = max(1, result.completed)
            per_op = {
                who: ((cpu_s(pid) or 0.0) - before[who]) * 1e6 / ops for who, pid in pids.items()
            }
            parts = " ".join(f"{who}={us:.0f}" for who, us in per_op.items())
            print(
                f"{name:9} {result.throughput_per_s:>7,.0f}/s p50 {result.p50_ms:6.2f} ms | "
                f"CPU µs/op {sum(per_op.values()):6.0f}: {parts} | "
                f"fsyncs/op {(fsyncs(cluster) - fsyncs_before) / ops:.2f} (warm-up included)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workloads", default="transfer,put,get,read2,txn1,read1")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--mode", choices=store.MODES, default="native")
    parser.add_argument("--nodes", type=int, default=3, help="storage nodes (1: one-node txns)")
    args = parser.parse_args()
    with (
        store.temp_cluster(nodes=args.nodes) as cluster,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as r,
    ):
        r.run(measure(cluster, args))


if __name__ == "__main__":
    main()
