"""A node whose disk fills up (issue 17): it stalls instead of exiting. The failed flush stays in
flight and is retried on a bounded backoff; its replies leave only after the retried commit;
writes are refused at admission with the retryable ``DiskFull``; reads of durable rows are
answered at once; the node resumes by itself when space returns.

The runtime runs on a memory node store with a disk the test fails and finishes by hand, and
once on the real SQLite store whose database is capped (``PRAGMA max_page_count``), so SQLite
itself answers ``database or disk is full``.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from support.network import ManualScheduler
from support.partition import put
from support.runtime import P0, P1, START_US, Node, NoSender

from kvstore import limits
from kvstore.errors import DiskFull, ErrorCode, KvError, WrongOwner
from kvstore.messages import (
    CommitRequest,
    CompleteRequest,
    GetReply,
    GetRequest,
    LedgerLookupRequest,
    PrepareRequest,
    ReadReply,
    ReadRequest,
    Reply,
    ScanReply,
    ScanRequest,
    WriteReply,
    WriteRequest,
)
from kvstore.runtime.disk import ImmediateDisk, disk_full_cause, is_disk_full
from kvstore.runtime.node import NodeRuntime
from kvstore.storage_node.core import PartitionConfig
from kvstore.storage_node.sqlite_store import SqliteNodeStore
from kvstore.timestamps import HybridClock
from kvstore.types import Timestamp, TxnId

MIN_US = limits.DISK_FULL_RETRY_MIN_MS * 1000
MAX_US = limits.DISK_FULL_RETRY_MAX_MS * 1000


def sqlite_full() -> sqlite3.OperationalError:
    """What SQLite raises when a write finds no space (built by hand: no errorcode attribute)."""
    return sqlite3.OperationalError("database or disk is full")


@pytest.fixture
def node() -> Node:
    return Node()


def get(node: Node, key: str, pid: int = 0) -> list[Reply | KvError]:
    return node.submit(GetRequest(partition=(P0, P1)[pid], key=key))


def stall(node: Node, error: BaseException | None = None) -> list[Reply | KvError]:
    """A durable ``k0`` on P0, then a put of ``a`` whose flush fails for want of space."""
    acked = node.put(P0, "k0", 10)
    node.finish_flush()
    assert len(acked) == 1
    held = node.put(P0, "a", 1)
    node.disk.fail(error or sqlite_full())
    node.scheduler.settle()
    return held


def test_a_full_disk_holds_the_batch_refuses_writes_serves_reads_and_resumes(node: Node) -> None:
    held = stall(node)
    assert held == [], "a reply left for a write that is not durable"
    assert node.fatal == [] and node.runtime.disk_full is not None
    assert node.runtime.failed is None

    [refused] = node.put(P1, "b", 2)
    assert isinstance(refused, DiskFull) and refused.retryable
    assert refused.code.http_status == 503
    assert refused.details["node"] == "n1" and refused.details["partition"] == P1
    assert "n1" in refused.message and "database or disk is full" in refused.message

    [committed] = get(node, "k0")  # durable: answered at once
    assert isinstance(committed, GetReply) and committed.item is not None
    assert committed.item.value == 10
    [absent] = get(node, "zz", pid=1)
    assert isinstance(absent, GetReply) and absent.item is None
    [scan] = node.submit(ScanRequest(partition=P1, start="", end=None, limit=10))
    assert isinstance(scan, ScanReply) and scan.items == ()
    unflushed = get(node, "a")  # only the held batch has it: it waits for that batch
    assert unflushed == []

    # Retries on a bounded backoff, the same job each time, replies still held.
    node.scheduler.advance(MIN_US - 1)
    assert node.disk.jobs == []
    node.scheduler.advance(1)
    assert len(node.disk.jobs) == 1
    node.disk.fail(sqlite_full())  # still full
    node.scheduler.advance(MAX_US)
    assert len(node.disk.jobs) == 1
    assert held == [] and unflushed == []

    node.disk.finish()  # space is back: the retried commit succeeds
    node.scheduler.settle()
    [reply] = held
    assert isinstance(reply, WriteReply) and reply.version == 1
    [seen] = unflushed
    assert isinstance(seen, GetReply) and seen.item is not None and seen.item.value == 1
    assert node.runtime.disk_full is None

    resumed = node.put(P1, "b", 2)  # writes are admitted again
    node.finish_flush()
    assert len(resumed) == 1 and isinstance(resumed[0], WriteReply)
    assert all(count == 0 for count in node.runtime.in_progress.values())
    durable = node.store.durable_rows
    assert set(durable[P0].items) == {"k0", "a"} and set(durable[P1].items) == {"b"}


def test_replies_are_released_only_by_the_commit_that_carries_them(node: Node) -> None:
    first = node.put(P0, "a", 1)
    second = node.put(P1, "b", 2)  # admitted during the first flush: the next batch
    node.disk.fail(OSError(errno.ENOSPC, "No space left on device"))
    node.scheduler.settle()
    assert first == [] and second == [] and node.fatal == []
    node.scheduler.advance(MIN_US)
    node.disk.finish()  # the retried first job
    node.scheduler.settle()
    assert len(first) == 1 and second == [], "answered with a flush that did not carry it"
    assert len(node.disk.jobs) == 1  # the open batch is flushed next
    node.disk.fail(OSError(errno.EDQUOT, "Disk quota exceeded"))  # full again
    node.scheduler.advance(MAX_US)
    assert second == [] and node.runtime.disk_full is not None
    node.disk.finish()
    node.scheduler.settle()
    assert len(second) == 1 and isinstance(second[0], WriteReply)
    assert node.runtime.disk_full is None


def test_every_request_that_may_write_is_refused_and_reads_are_not(node: Node) -> None:
    stall(node)
    t = TxnId("t1")
    ts = Timestamp(START_US + 1, 0, 1)
    writing = [
        PrepareRequest(partition=P1, txn_id=t, ts=ts, ops=(put("x", 1),), anchor=P1),
        CommitRequest(partition=P1, txn_id=t),
        CompleteRequest(partition=P1, txn_id=t),
        LedgerLookupRequest(partition=P1, txn_id=t, resolve=True),
        WriteRequest(partition=P1, op=put("y", 1)),
    ]
    for request in writing:
        [answer] = node.submit(request)
        assert isinstance(answer, DiskFull), request
    [looked] = node.submit(LedgerLookupRequest(partition=P1, txn_id=t))
    assert not isinstance(looked, KvError)
    [read] = node.submit(ReadRequest(partition=P1, keys=("x", "y")))
    assert isinstance(read, ReadReply) and not any(e.exists for e in read.entries)
    assert not node.store.dirty, "a refused request wrote"


def test_maintenance_pauses_while_the_disk_is_full(node: Node) -> None:
    node.runtime.start()
    stall(node)
    node.scheduler.advance(limits.MAINTAIN_INTERVAL_MS * 1000)
    assert not node.store.dirty
    node.disk.jobs.clear()  # the retry the advance started; the test stops the node instead


def test_stopping_a_stalled_node_stops_its_retries(node: Node) -> None:
    held = stall(node)
    node.runtime.stop()
    node.scheduler.advance(10 * MAX_US)
    assert node.disk.jobs == [] and held == []


def test_other_flush_errors_stay_fatal(node: Node) -> None:
    [failed] = stall(node, OSError(errno.EIO, "Input/output error"))
    assert isinstance(failed, KvError) and failed.code is ErrorCode.InternalError
    assert len(node.fatal) == 1 and node.runtime.disk_full is None


def test_disk_full_errors_are_recognised_by_code_errno_and_cause() -> None:
    assert is_disk_full(sqlite_full())
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    wrapped = RuntimeError("flush failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)
    assert disk_full_cause(wrapped) == "no space left on device"
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(OSError("disk full"))  # no errno: not known to be a full disk
    assert not is_disk_full(sqlite3.OperationalError("disk I/O error"))


def test_a_capped_sqlite_database_stalls_the_node_and_resumes_without_loss(
    tmp_path: Path,
) -> None:
    """SQLite itself refuses the flush (``SQLITE_FULL``); raising the cap is space returning."""
    scheduler = ManualScheduler(START_US)
    store = SqliteNodeStore.open(tmp_path, [P0, P1])
    fatal: list[BaseException] = []
    runtime = NodeRuntime(
        "n1",
        store,
        disk=ImmediateDisk(),
        scheduler=scheduler,
        sender=NoSender(),
        clock=HybridClock(scheduler.now_us, 7),
        config=PartitionConfig(),
        wrong_owner=lambda pid: WrongOwner(f"not {pid}"),
        on_fatal=fatal.append,
    )

    def submit(request: WriteRequest | GetRequest) -> list[Reply | KvError]:
        answers: list[Reply | KvError] = []
        runtime.submit(request, answers.append)
        scheduler.settle()
        return answers

    big = "x" * 200_000  # needs new pages
    assert len(submit(WriteRequest(partition=P0, op=put("k0", 1)))) == 1
    writer = store._writer
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")
    held = submit(WriteRequest(partition=P0, op=put("big", big)))
    assert held == [] and fatal == [] and runtime.disk_full is not None
    assert is_disk_full(runtime.disk_full)
    [refused] = submit(WriteRequest(partition=P1, op=put("b", 2)))
    assert isinstance(refused, DiskFull)
    [read] = submit(GetRequest(partition=P0, key="k0"))
    assert isinstance(read, GetReply) and read.item is not None and read.item.value == 1
    scheduler.advance(MAX_US)
    assert held == [] and runtime.disk_full is not None  # retried, still full

    writer.execute("PRAGMA max_page_count = 1073741823")
    scheduler.advance(MAX_US)
    [reply] = held
    assert isinstance(reply, WriteReply) and runtime.disk_full is None
    assert len(submit(WriteRequest(partition=P1, op=put("b", 2)))) == 1
    store.close()
    with SqliteNodeStore.open(tmp_path, [P0, P1]) as reopened:
        row = reopened.partition(P0).get_item("big")
        assert row is not None and row.value == big
        assert reopened.partition(P1).get_item("b") is not None
