"""What a backup costs: client throughput before and during ``kvctl backup create``, and its
speed and memory (docs/backup.md, "Performance").

Method: a local cluster (``kvctl cluster up``: 3 nodes, 16 partitions, in a temporary
directory) is loaded with ``--items`` items by restoring a generated backup file (the restore's
speed is printed too); then ``--tasks`` SDK clients (native mode) run bank transfers for
``--duration`` seconds, counted per second; after a third of it, ``kvctl backup create`` runs
under ``/usr/bin/time -v`` (its peak RSS). Printed: transfers/s before the backup (median of
the seconds before it), during it (every second it ran), the ratio, the backup's items/s and
peak RSS. The cluster is stopped and the directory removed however the run ends.

    .venv/bin/python bench/backup_bench.py --items 1000000 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kvstore
from kvstore.backup.file import BackupWriter
from kvstore.errors import KvError
from kvstore.messages import ItemView
from kvstore.timestamps import HybridClock, random_origin, system_clock_us

KVCTL = (sys.executable, "-m", "kvstore.cli.kvctl")
ACCOUNTS = [f"acct-{i:04d}" for i in range(1000)]
BATCH = 10_000


def generate(path: Path, items: int) -> None:
    """A backup file of ``items`` small items (plus the bank's accounts) as of now."""
    at = HybridClock(system_clock_us, random_origin()).now()
    writer = BackupWriter.create(path, at=at, cluster="bench", partitions=1, partition_map={})
    writer.add(0, [ItemView(key=a, value=100, version=1, ts=at) for a in ACCOUNTS])
    for start in range(0, items, BATCH):
        writer.add(
            0,
            [
                ItemView(key=f"item-{i:08d}", value={"n": i, "pad": "x" * 40}, version=1, ts=at)
                for i in range(start, min(items, start + BATCH))
            ],
        )
    writer.finish(deleted_version=0)


async def transfers(config: Path, duration_s: float, tasks: int, counts: list[int]) -> None:
    """Bank transfers from ``tasks`` clients for ``duration_s``, counted per second."""
    started = time.monotonic()
    async with kvstore.connect(cluster=config, mode="native") as kv:

        async def one() -> None:
            rng = random.Random()
            while (elapsed := time.monotonic() - started) < duration_s:
                a, b = rng.sample(ACCOUNTS, 2)
                try:
                    await kv.transact(
                        [
                            kvstore.Update(a, add={"": -1}, if_=kvstore.ge("", 1)),
                            kvstore.Update(b, add={"": 1}),
                        ]
                    )
                except KvError:
                    continue
                second = int(elapsed)
                if second < len(counts):
                    counts[second] += 1

        await asyncio.gather(*(one() for _ in range(tasks)))


async def backup(root: Path, config: Path, delay_s: float) -> tuple[float, float, int, int]:
    """``kvctl backup create`` after ``delay_s``: (start, end) seconds, items, peak RSS KiB."""
    await asyncio.sleep(delay_s)
    out = root / "taken.kvbackup"
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/time", "-v", *KVCTL, "backup", "create", "--config", str(config),
        "--out", str(out), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    ended = time.monotonic()
    if process.returncode != 0:
        raise SystemExit(f"backup failed: {stderr.decode()[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr.decode())
    cpu = re.findall(r"(User|System) time \(seconds\): ([0-9.]+)", stderr.decode())
    print(f"kvctl backup create CPU: {cpu}")
    return started, ended, json.loads(stdout)["items"], int(rss.group(1)) if rss else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--tasks", type=int, default=16)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kv-backup-bench-"))
    cluster = root / "cluster"
    try:
        subprocess.run(
            [*KVCTL, "cluster", "up", "--dir", str(cluster), "--nodes", "3"],
            check=True, capture_output=True,
        )  # fmt: skip
        config = cluster / "cluster.toml"
        seed = root / "seed.kvbackup"
        generate(seed, args.items)
        began = time.monotonic()
        subprocess.run(
            [*KVCTL, "backup", "restore", str(seed), "--config", str(config)],
            check=True, capture_output=True,
        )  # fmt: skip
        restore_s = time.monotonic() - began
        counts = [0] * int(args.duration)

        async def run() -> tuple[float, float, int, int]:
            load_start = time.monotonic()
            load = asyncio.ensure_future(transfers(config, args.duration, args.tasks, counts))
            taken = await backup(root, config, args.duration / 3)
            await load
            return taken[0] - load_start, taken[1] - load_start, taken[2], taken[3]

        start_s, end_s, items, rss_kib = asyncio.run(run())
        before = counts[1 : int(start_s)]
        during = counts[int(start_s) + 1 : int(end_s)] or counts[int(start_s) : int(end_s) + 1]
        base, under = statistics.median(before), statistics.median(during)
        print(f"restore of {args.items + len(ACCOUNTS)} items: {restore_s:.1f} s")
        print(
            f"backup: {items} items in {end_s - start_s:.1f} s"
            f" ({items / (end_s - start_s):.0f} items/s), kvctl peak RSS {rss_kib / 1024:.0f} MB"
        )
        print(
            f"transfers/s before: {base:.0f}, during the backup: {under:.0f}"
            f" (ratio {under / base:.2f}); per second: {counts}"
        )
    finally:
        subprocess.run(
            [*KVCTL, "cluster", "down", "--dir", str(cluster)], check=False, capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
