"""A node runtime on a memory store, a hand-moved scheduler and a disk the test finishes."""

from __future__ import annotations

from kvstore.errors import KvError, WrongOwner
from kvstore.messages import Reply, Request, WriteRequest
from kvstore.mutants import NO_MUTANTS, Mutants
from kvstore.runtime.actors import Answer
from kvstore.runtime.disk import FlushDone
from kvstore.runtime.node import NodeRuntime
from kvstore.storage_node.core import PartitionConfig
from kvstore.storage_node.store import FlushJob, MemoryNodeStore
from kvstore.timestamps import HybridClock
from kvstore.types import PartitionId
from support.network import ManualScheduler
from support.partition import put

P0, P1 = PartitionId(0), PartitionId(1)
START_US = 1_000_000


class HeldDisk:
    """Keeps every job until the test finishes it (or fails it)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[FlushJob, FlushDone]] = []

    def write(self, job: FlushJob, done: FlushDone) -> None:
        self.jobs.append((job, done))

    def finish(self) -> None:
        job, done = self.jobs.pop(0)
        job.run()
        done(None)

    def fail(self, error: BaseException) -> None:
        _, done = self.jobs.pop(0)
        done(error)


class NoSender:
    def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        raise AssertionError("this node owns every partition")


class Node:
    def __init__(self, mutants: Mutants = NO_MUTANTS) -> None:
        self.scheduler = ManualScheduler(START_US)
        self.store = MemoryNodeStore([P0, P1])
        self.disk = HeldDisk()
        self.fatal: list[BaseException] = []
        self.runtime = NodeRuntime(
            "n1",
            self.store,
            disk=self.disk,
            scheduler=self.scheduler,
            sender=NoSender(),
            clock=HybridClock(self.scheduler.now_us, 7),
            config=PartitionConfig(mutants=mutants),
            wrong_owner=lambda pid: WrongOwner(f"not {pid}"),
            on_fatal=self.fatal.append,
        )

    def submit(self, request: Request) -> list[Reply | KvError]:
        """Submit and run what became ready; the list fills when the answer leaves."""
        answers: list[Reply | KvError] = []
        self.runtime.submit(request, answers.append)
        self.scheduler.settle()
        return answers

    def put(self, pid: PartitionId, key: str, value: int = 1) -> list[Reply | KvError]:
        return self.submit(WriteRequest(partition=pid, op=put(key, value)))

    def finish_flush(self) -> None:
        self.disk.finish()
        self.scheduler.settle()
