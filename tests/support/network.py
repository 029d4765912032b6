"""The production node runtime on a network the test drives message by message.

Every partition lives in one :class:`~kvstore.runtime.node.NodeRuntime` over a
:class:`~kvstore.storage_node.store.MemoryNodeStore`, on a :class:`ManualScheduler` whose clock
only the test moves. Coordinator cores started with :meth:`Network.start` run on a production
:class:`~kvstore.runtime.actors.ActorDriver`; their requests sit in ``inflight`` until the test
delivers, drops, fails or duplicates one, so a test (or Hypothesis) chooses every interleaving.
Partition replies come back only when the runtime releases them (after the group commit that
covers their writes). Coordinators may crash: their replies are then ignored, and only the node's
own recovery (its maintenance tick: stale intents, undriven ledger records) finishes their
transactions. ``heal()`` delivers everything and lets time pass until nothing is pending.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.errors import ErrorCode, KvError, WrongOwner
from kvstore.messages import PrepareRequest, Reply, Request
from kvstore.runtime.actors import Actor, ActorDriver, Answer
from kvstore.runtime.disk import ImmediateDisk
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.scheduler import FlagTimer
from kvstore.storage_node.core import PartitionConfig, PartitionCore
from kvstore.storage_node.store import MemoryNodeStore
from kvstore.timestamps import HybridClock
from kvstore.types import PartitionId

NODE_ORIGIN = 1 << 48
HEAL_ROUNDS_MAX = 200
HEAL_TICK_US = 500_000
SETTLE_STEPS_MAX = 100_000  # callbacks run by one ``settle`` (a guard against a livelock)


class ManualScheduler:
    """Time moves only when the test says so; ``settle`` runs what is ready."""

    def __init__(self, now_us: int) -> None:
        self.now = now_us
        self._ready: list[Callable[[], None]] = []
        self._timers: list[tuple[int, int, Callable[[], None], FlagTimer]] = []
        self._seq = 0

    def now_us(self) -> int:
        return self.now

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._ready.append(callback)

    def call_later(self, delay_us: int, callback: Callable[[], None]) -> FlagTimer:
        timer = FlagTimer()
        self._seq += 1
        heapq.heappush(self._timers, (self.now + max(0, delay_us), self._seq, callback, timer))
        return timer

    def settle(self) -> None:
        for _ in range(SETTLE_STEPS_MAX):
            if not self._ready:
                return
            self._ready.pop(0)()
        raise AssertionError("callbacks kept scheduling callbacks")

    def advance(self, dt_us: int) -> None:
        end = self.now + dt_us
        self.settle()
        while self._timers and self._timers[0][0] <= end:
            due, _, callback, timer = heapq.heappop(self._timers)
            self.now = max(self.now, due)
            if not timer.cancelled:
                callback()
            self.settle()
        self.now = end


@dataclass
class Message:
    request: Request
    answer: Answer
    reply: Reply | KvError | None = None  # None while the request travels; set when it returns


@dataclass
class Network:
    partitions: int
    # No request waits for intents: each scenario picks its interleaving by hand, and a parked
    # request would be answered later than its delivery (waits: tests/unit/test_intent_waits.py).
    config: PartitionConfig = field(default_factory=lambda: PartitionConfig(intent_wait_ms=0))
    start_us: int = 1_000_000
    inflight: list[Message] = field(default_factory=list)
    crashed: set[int] = field(default_factory=set)
    results: dict[int, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scheduler = ManualScheduler(self.start_us)
        self.store = MemoryNodeStore([PartitionId(p) for p in range(self.partitions)])
        self.node = NodeRuntime(
            "n1",
            self.store,
            disk=ImmediateDisk(),
            scheduler=self.scheduler,
            sender=self,  # never used: the node owns every partition
            clock=HybridClock(self.scheduler.now_us, NODE_ORIGIN),
            config=self.config,
            wrong_owner=lambda pid: WrongOwner(f"no partition {pid}"),
        )
        self.node.start()
        self.coordinators = ActorDriver(self.scheduler, _Wire(self))
        self._recorders: dict[int, list[object]] = {}

    @property
    def now_us(self) -> int:
        return self.scheduler.now

    @property
    def cores(self) -> dict[PartitionId, PartitionCore]:
        return self.node.cores

    def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        raise AssertionError(f"the test node owns every partition, not {request.partition}")

    # --- driving ------------------------------------------------------------------------

    def start(self, actor: Actor) -> int:
        answers: list[object] = []  # the id is known only once start returns
        actor_id = self.coordinators.start(actor, answers.append)
        self._recorders[actor_id] = answers
        self.scheduler.settle()
        self._collect()
        return actor_id

    def _collect(self) -> None:
        for actor_id, answers in self._recorders.items():
            for result in answers:
                assert actor_id not in self.results, "a client is answered exactly once"
                self.results[actor_id] = result
            answers.clear()

    def call(self, request: Request) -> Reply:
        """A request handled at once (as a node's own background work would be)."""
        outcome: list[Reply | KvError] = []
        self.node.submit(request, outcome.append)
        self.scheduler.settle()
        assert outcome, "the runtime did not answer"
        if isinstance(outcome[0], KvError):
            raise outcome[0]
        return outcome[0]

    def deliver(self, index: int) -> None:
        message = self.inflight.pop(index % len(self.inflight))
        if message.reply is None:
            outcome: list[Reply | KvError] = []
            self.node.submit(message.request, outcome.append)
            self.scheduler.settle()
            assert outcome, "the runtime did not answer"
            message.reply = outcome[0]
            self.inflight.append(message)
            return
        if isinstance(message.reply, KvError):
            message.answer(None, message.reply.code)
        else:
            message.answer(message.reply, None)
        self.scheduler.settle()
        self._collect()

    def drop(self, index: int) -> None:
        """Lose a message silently: the caller finds out by its deadline."""
        self.inflight.pop(index % len(self.inflight))

    def fail(self, index: int) -> None:
        """Lose a message and tell the caller at once (connection refused or reset)."""
        message = self.inflight.pop(index % len(self.inflight))
        message.answer(None, ErrorCode.Unavailable)
        self.scheduler.settle()
        self._collect()

    def duplicate(self, index: int) -> None:
        message = self.inflight[index % len(self.inflight)]
        self.inflight.append(Message(message.request, message.answer, message.reply))

    def crash(self, actor_id: int) -> None:
        self.crashed.add(actor_id)
        self.coordinators.drop(actor_id)

    def tick(self, dt_us: int) -> None:
        self.scheduler.advance(dt_us)
        self._collect()

    # --- healing --------------------------------------------------------------------------

    def heal(self) -> None:
        """Deliver everything, let time pass, and run node recovery until nothing is pending."""
        for _ in range(HEAL_ROUNDS_MAX):
            while self.inflight:
                self.deliver(0)
            if self._settled():
                return
            self.tick(HEAL_TICK_US)
        raise AssertionError("the cluster did not settle: " + self._pending_summary())

    def _settled(self) -> bool:
        stores = [self.store.partition(pid) for pid in self.store.partitions]
        return (
            not self.inflight
            and self.coordinators.running == 0
            and self.node.actors.running == 0
            and all(store.intent_count() == 0 for store in stores)
            and all(store.open_ledger_records(10_000) == [] for store in stores)
        )

    def _pending_summary(self) -> str:
        intents = {pid: self.store.partition(pid).intent_count() for pid in self.store.partitions}
        return (
            f"intents={intents} coordinators={self.coordinators.running} "
            f"background={self.node.actors.running} inflight={len(self.inflight)}"
        )


class _Wire:
    """The coordinators' sender: every request waits in ``inflight`` for the test."""

    def __init__(self, net: Network) -> None:
        self._net = net

    def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        del deadline_us  # the cores keep their own deadlines
        self._net.inflight.append(Message(request, answer))


def deliver_where(net: Network, match: type, partition: int | None = None, *, reply: bool) -> None:
    """Deliver the first in-flight message of a request type (and partition)."""
    for i, m in enumerate(net.inflight):
        wanted = partition is None or m.request.partition == partition
        if wanted and isinstance(m.request, match) and (m.reply is not None) == reply:
            net.deliver(i)
            return
    raise AssertionError(f"no {match.__name__} in flight: {describe(net.inflight)}")


def describe(inflight: list[Message]) -> list[str]:
    return [f"{type(m.request).__name__}@{m.request.partition}" for m in inflight]


def run_to_prepared(net: Network, txn: Actor) -> int:
    """Both partitions hold the transaction's intents; the decide request is in flight."""
    actor = net.start(txn)
    for _ in range(2):
        deliver_where(net, PrepareRequest, reply=False)
    for _ in range(2):
        deliver_where(net, PrepareRequest, reply=True)
    return actor
