"""An in-memory network joining coordinator cores to partition cores, driven step by step.

Messages sit in ``inflight`` until the test delivers, drops, fails or duplicates one, so a test (or
Hypothesis) chooses every interleaving. Partition replies are released only after the store's
``commit()`` (the durability rule of the services). Coordinators may crash: their replies are then
discarded, and only the nodes' recovery (stale intents and undriven ledger records) finishes their
transactions. ``heal()`` delivers everything and runs recovery until no intent is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.recovery import Recovery, resolve_intent_action
from kvstore.errors import ErrorCode
from kvstore.messages import (
    CancelRequest,
    CommitRequest,
    LedgerLookupRequest,
    LedgerRecord,
    Reply,
    Request,
)
from kvstore.storage_node.core import PartitionConfig, PartitionCore
from kvstore.storage_node.store import MemoryStore
from kvstore.types import PartitionId, Timestamp

NODE_ORIGIN_BASE = 1 << 48
HEAL_ROUNDS_MAX = 200
HEAL_TICK_US = 500_000


class Actor(Protocol):
    @property
    def done(self) -> bool: ...
    def step_start(self, now_us: int) -> list[Send | Finish]: ...  # type: ignore[type-arg]
    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[Send | Finish]: ...  # type: ignore[type-arg]
    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[Send | Finish]: ...  # type: ignore[type-arg]
    def step_tick(self, now_us: int) -> list[Send | Finish]: ...  # type: ignore[type-arg]


@dataclass
class Message:
    actor: int
    call_id: int
    request: Request
    reply: Reply | None = None  # None while the request travels; set when the reply travels


@dataclass
class Network:
    partitions: int
    config: PartitionConfig = field(default_factory=PartitionConfig)
    now_us: int = 1_000_000
    inflight: list[Message] = field(default_factory=list)
    actors: dict[int, Actor] = field(default_factory=dict)
    crashed: set[int] = field(default_factory=set)
    results: dict[int, object] = field(default_factory=dict)
    node_seq: int = 0

    def __post_init__(self) -> None:
        self.cores = {
            PartitionId(p): PartitionCore(PartitionId(p), MemoryStore(), self.config)
            for p in range(self.partitions)
        }

    # --- driving ------------------------------------------------------------------------

    def start(self, actor: Actor) -> int:
        actor_id = len(self.actors)
        self.actors[actor_id] = actor
        self._carry_out(actor_id, actor.step_start(self.now_us))
        return actor_id

    def node_ts(self, pid: PartitionId) -> Timestamp:
        self.node_seq += 1
        return Timestamp(self.now_us, self.node_seq, NODE_ORIGIN_BASE + pid)

    def call(self, request: Request) -> Reply:
        """A request handled at once (as a node's own background work would)."""
        core = self.cores[request.partition]
        step = core.handle(request, self.now_us, self.node_ts(request.partition))
        core.store.commit()
        return step.reply

    def deliver(self, index: int) -> None:
        message = self.inflight.pop(index % len(self.inflight))
        if message.reply is None:
            message.reply = self.call(message.request)
            self.inflight.append(message)
            return
        if message.actor in self.crashed:
            return
        actor = self.actors[message.actor]
        self._carry_out(
            message.actor, actor.step_reply(message.call_id, message.reply, self.now_us)
        )

    def drop(self, index: int) -> None:
        """Lose a message silently: the caller finds out by its deadline."""
        self.inflight.pop(index % len(self.inflight))

    def fail(self, index: int) -> None:
        """Lose a message and tell the caller at once (connection refused or reset)."""
        message = self.inflight.pop(index % len(self.inflight))
        if message.actor in self.crashed:
            return
        actor = self.actors[message.actor]
        effects = actor.step_failed(message.call_id, ErrorCode.Unavailable, self.now_us)
        self._carry_out(message.actor, effects)

    def duplicate(self, index: int) -> None:
        message = self.inflight[index % len(self.inflight)]
        self.inflight.append(
            Message(message.actor, message.call_id, message.request, message.reply)
        )

    def crash(self, actor_id: int) -> None:
        self.crashed.add(actor_id)

    def tick(self, dt_us: int) -> None:
        self.now_us += dt_us
        for actor_id, actor in list(self.actors.items()):
            if actor_id not in self.crashed and not actor.done:
                self._carry_out(actor_id, actor.step_tick(self.now_us))

    def _carry_out(self, actor_id: int, effects: list[Send | Finish]) -> None:  # type: ignore[type-arg]
        for effect in effects:
            if isinstance(effect, Send):
                self.inflight.append(Message(actor_id, effect.call_id, effect.request))
            else:
                assert actor_id not in self.results, "a client is answered exactly once"
                self.results[actor_id] = effect.result

    # --- healing --------------------------------------------------------------------------

    def heal(self) -> None:
        """Deliver everything, let time pass, and run node recovery until nothing is pending."""
        for _ in range(HEAL_ROUNDS_MAX):
            while self.inflight:
                self.deliver(0)
            if self._settled():
                return
            self.tick(HEAL_TICK_US)
            self._maintain()
        raise AssertionError("the cluster did not settle: " + self._pending_summary())

    def _settled(self) -> bool:
        live = [a for i, a in self.actors.items() if i not in self.crashed]
        return (
            not self.inflight
            and all(a.done for a in live)
            and all(c.store.intent_count() == 0 for c in self.cores.values())
            and all(self._undriven(c) == [] for c in self.cores.values())
        )

    def _undriven(self, core: PartitionCore) -> list[LedgerRecord]:
        return core.store.open_ledger_records(10_000)

    def _maintain(self) -> None:
        for pid, core in self.cores.items():
            work = core.maintain(self.now_us)
            core.store.commit()
            for stale in work.stale_intents:
                lookup = LedgerLookupRequest(
                    partition=stale.anchor, txn_id=stale.txn_id, resolve=True
                )
                record = self.call(lookup).record  # type: ignore[union-attr]
                action = resolve_intent_action(record)
                if action == "commit":
                    self.call(CommitRequest(partition=pid, txn_id=stale.txn_id))
                elif action == "cancel":
                    self.call(CancelRequest(partition=pid, txn_id=stale.txn_id))
            for record in work.records_to_drive:
                self.start(Recovery(record, pid, self.now_us))

    def _pending_summary(self) -> str:
        intents = {pid: c.store.intent_count() for pid, c in self.cores.items()}
        busy = [i for i, a in self.actors.items() if i not in self.crashed and not a.done]
        return f"intents={intents} busy_actors={busy} inflight={len(self.inflight)}"
