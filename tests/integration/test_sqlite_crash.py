"""``kill -9`` of a process writing a ``SqliteNodeStore`` loses no acknowledged write and no job
survives in part.

A child process writes batches of items over two partitions of one node store in a loop, the way
a node's runtime does: it begins a flush job (one for both partitions), runs it on a flush thread
while it keeps writing into the next open batch, ends the job and only then prints the keys the
job made durable (its acknowledgements). The test reads acknowledgements until it has ``N``, waits
a moment, sends SIGKILL, and reopens the store: every acknowledged key holds its value, every
batch is either whole or absent in both partitions, the batches present are a prefix of those
written, and SQLite's integrity check passes.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from kvstore.storage_node.sqlite_store import NODE_DB, SqliteNodeStore
from kvstore.types import PartitionId

PARTS = (PartitionId(0), PartitionId(1))
DEADLINE_S = 60.0

CHILD = r"""
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvstore.storage_node.sqlite_store import SqliteNodeStore
from kvstore.storage_node.store import ItemRow
from kvstore.types import PartitionId, Timestamp

store = SqliteNodeStore.open(Path(sys.argv[1]), (PartitionId(0), PartitionId(1)))
flusher = ThreadPoolExecutor(max_workers=1)
seq = 0
batch = 0


def write_batch():
    global seq, batch
    batch += 1
    size = 1 + batch % 13
    keys = []
    for _ in range(size):
        seq += 1
        key = f"k{seq:09d}"
        value = {"seq": seq, "batch": batch, "size": size, "pad": "x" * 64}
        store.partition(PartitionId(seq % 2)).put_item(
            ItemRow(
                key=key,
                exists=True,
                value=value,
                version=1,
                write_ts=Timestamp(seq, 0, 1),
                read_ts=Timestamp(0, 0, 0),
            )
        )
        keys.append(key)
    last = ItemRow(
        key="last", exists=True, value=batch, version=batch, write_ts=Timestamp(seq, 1, 1),
        read_ts=Timestamp(0, 0, 0),
    )
    for pid in (0, 1):
        store.partition(PartitionId(pid)).put_item(last)
    return keys


pending = write_batch()
while True:
    job = store.begin_flush()
    future = flusher.submit(job.run)
    following = write_batch()  # the next batch gathers while this one is on its way to disk
    future.result()
    store.end_flush(job)
    sys.stdout.write("".join(key + "\n" for key in pending))
    sys.stdout.flush()
    pending = following
"""


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_and_kill(data_dir: Path, acks_before_kill: int, delay_s: float, log: Path) -> list[str]:
    """Run the writer, kill it after ``acks_before_kill`` acknowledgements and ``delay_s``;
    return every acknowledged key (complete lines only)."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    pump.start()
    acked: list[str] = []
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(acked) < acks_before_kill:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"the writer exited early ({proc.wait()}): {log.read_text()}")
            acked.append(line)
        time.sleep(delay_s)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=DEADLINE_S)
        pump.join(timeout=DEADLINE_S)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    while (line := lines.get_nowait()) is not None:
        acked.append(line)  # printed before the kill: acknowledged too
    return [line[:-1] for line in acked if line.endswith("\n")]


@pytest.mark.parametrize(
    ("acks", "delay_s"),
    [(1, 0.0), (17, 0.0013), (60, 0.004), (250, 0.0), (400, 0.0171)],
)
def test_kill_9_loses_no_acknowledged_write(tmp_path: Path, acks: int, delay_s: float) -> None:
    acked = run_and_kill(tmp_path, acks, delay_s, tmp_path / "child.log")
    assert len(acked) >= acks
    with SqliteNodeStore.open(tmp_path, PARTS) as store:
        batches: dict[int, list[int]] = {}
        for pid in PARTS:
            for row in store.partition(pid).scan_items("k", "l", 1 << 30):
                assert isinstance(row.value, dict)
                assert row.key == f"k{row.value['seq']:09d}"
                assert row.value["seq"] % 2 == pid
                batches.setdefault(int(row.value["batch"]), []).append(int(row.value["size"]))
        for key in acked:
            row = store.partition(PARTS[int(key[1:]) % 2]).get_item(key)
            assert row is not None, f"acknowledged {key} was lost"
            assert isinstance(row.value, dict)
            assert row.value["seq"] == int(key[1:])
            assert row.value["pad"] == "x" * 64
        for number, sizes in batches.items():
            assert len(sizes) == sizes[0], f"batch {number} is partial"
        assert sorted(batches) == list(range(1, len(batches) + 1)), "batches form a prefix"
        for pid in PARTS:
            last = store.partition(pid).get_item("last")
            assert last is not None and last.value == max(batches)
    conn = sqlite3.connect(tmp_path / NODE_DB)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
