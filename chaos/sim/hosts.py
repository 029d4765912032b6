"""Simulated processes: storage nodes and coordinators, each running the production cores.

Theory of operation
-------------------
A :class:`Host` is one process. It has a name, a local clock (virtual time plus an offset the
nemesis moves), an *incarnation* that grows at every crash, and the actor cores it runs (write and
read transactions, recoveries, intent resolutions), all with the same event interface. The host
is the thin shell the services will be: it feeds the cores their events and carries out their
effects in order (``Send`` through the :class:`~chaos.sim.network.Network`, ``Finish`` to the
callback that started the actor), and ticks them every ``TICK_US`` while any is running.

:class:`NodeHost` owns partitions: one :class:`~kvstore.storage_node.core.PartitionCore` per
partition over a :class:`~kvstore.storage_node.store.MemoryStore` whose committed part is the
disk. It applies the durability rule of the real node: writes are group-committed by a flush
``fsync_us`` after the first unflushed write, and *every* reply and every background send waits
for the flush that covers the writes before it. A crash discards unflushed writes, queued replies,
the cores' memory and every actor; a restart builds fresh cores over the surviving stores. Its
maintenance tick runs ``maintain`` on each partition and starts (at most one per transaction)
intent resolutions and recoveries.

:class:`CoordinatorHost` runs client transactions. A crash loses every actor; the clients whose
requests were in flight are told the connection was lost.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from chaos.sim.loop import EventLoop, Trace
from chaos.sim.network import Envelope, Network
from kvstore.coordinator.core import WriteTxn
from kvstore.coordinator.driver import Actor
from kvstore.coordinator.effects import Finish, Send
from kvstore.coordinator.read import ReadTxn
from kvstore.coordinator.recovery import Recovery
from kvstore.errors import ErrorCode
from kvstore.messages import Reply, WriteRequest
from kvstore.mutants import Mutants
from kvstore.ops import Op
from kvstore.partitioning import PartitionMap
from kvstore.storage_node.core import PartitionConfig, PartitionCore
from kvstore.storage_node.resolver import IntentResolution
from kvstore.storage_node.store import MemoryStore
from kvstore.timestamps import HybridClock
from kvstore.types import TIMESTAMP_ZERO, PartitionId, TxnId

__all__ = ["Actor", "Host", "NodeHost", "CoordinatorHost", "EPOCH_US", "TICK_US"]

EPOCH_US = 1_800_000_000_000_000  # virtual time 0 on every local clock (a 2027 wall clock)
TICK_US = 10_000
MAINTAIN_US = 200_000
ORIGIN_STRIDE = 1 << 16  # origins of one host's incarnations, far apart from other hosts'
LEDGER_SCAN_MAX = 100_000


class Host:
    """A process: clock, incarnation, running actors."""

    def __init__(
        self, name: str, loop: EventLoop, net: Network, trace: Trace, resolution_us: int = 1
    ) -> None:
        self.name = name
        self.resolution_us = resolution_us
        self.loop = loop
        self.net = net
        self.trace = trace
        self.up = True
        self.incarnation = 0
        self.origin = 0  # set by the subclass
        self.offset_us = 0
        self._actors: dict[int, tuple[Actor, Callable[[Any], None]]] = {}
        self._next_actor = 0
        self._tick_scheduled = False
        net.hosts[name] = self

    def origin_now(self) -> int:
        """This incarnation's clock origin: a restarted process draws a new one, as
        ``process_clock`` does, or its fresh clock could reissue a timestamp (seed 8056)."""
        return self.origin + ORIGIN_STRIDE * self.incarnation

    def local_now(self) -> int:
        now_us = EPOCH_US + self.loop.now_us + self.offset_us
        return now_us - now_us % self.resolution_us

    @property
    def busy(self) -> int:
        return len(self._actors)

    def start(self, actor: Actor, on_finish: Callable[[Any], None]) -> int:
        self._next_actor += 1
        actor_id = self._next_actor
        self._actors[actor_id] = (actor, on_finish)
        self._carry(actor_id, actor.step_start(self.local_now()))
        self._schedule_tick()
        return actor_id

    def receive(self, envelope: Envelope, send_reply: Callable[[Reply], None]) -> None:
        raise NotImplementedError(f"{self.name} serves no partitions")

    def on_reply(self, envelope: Envelope, reply: Reply) -> None:
        if self._current(envelope):
            actor = self._actors[envelope.actor_id][0]
            self._carry(
                envelope.actor_id, actor.step_reply(envelope.call_id, reply, self.local_now())
            )

    def on_failed(self, envelope: Envelope) -> None:
        if self._current(envelope):
            actor = self._actors[envelope.actor_id][0]
            effects = actor.step_failed(envelope.call_id, ErrorCode.Unavailable, self.local_now())
            self._carry(envelope.actor_id, effects)

    def crash(self) -> None:
        self.trace.add(self.loop.now_us, f"crash {self.name} ({self.busy} actors lost)")
        self.up = False
        self.incarnation += 1
        self._actors.clear()

    def restart(self) -> None:
        self.trace.add(self.loop.now_us, f"restart {self.name}")
        self.up = True

    def _current(self, envelope: Envelope) -> bool:
        return (
            self.up
            and envelope.incarnation == self.incarnation
            and envelope.actor_id in self._actors
        )

    def _carry(self, actor_id: int, effects: list[Any]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                envelope = Envelope(
                    self.name, self.incarnation, actor_id, effect.call_id, effect.request
                )
                self._send(envelope)
            elif isinstance(effect, Finish):
                entry = self._actors.get(actor_id)
                if entry is not None:
                    entry[1](effect.result)
        entry = self._actors.get(actor_id)
        if entry is not None and entry[0].done:
            del self._actors[actor_id]

    def _send(self, envelope: Envelope) -> None:
        self.net.send_request(envelope)

    def _schedule_tick(self) -> None:
        if not self._tick_scheduled and self._actors:
            self._tick_scheduled = True
            incarnation = self.incarnation
            self.loop.after(TICK_US, lambda: self._tick(incarnation))

    def _tick(self, incarnation: int) -> None:
        self._tick_scheduled = False
        if not self.up or incarnation != self.incarnation:
            return
        for actor_id in list(self._actors):
            entry = self._actors.get(actor_id)
            if entry is not None:
                self._carry(actor_id, entry[0].step_tick(self.local_now()))
        self._schedule_tick()


class NodeHost(Host):
    """A storage node: partitions on durable stores, group commit, background maintenance."""

    def __init__(
        self,
        name: str,
        loop: EventLoop,
        net: Network,
        trace: Trace,
        *,
        origin: int,
        resolution_us: int,
        partitions: list[PartitionId],
        config: PartitionConfig,
        fsync_us: int,
    ) -> None:
        super().__init__(name, loop, net, trace, resolution_us)
        self.origin = origin
        self.config = config
        self.fsync_us = fsync_us
        self.stores = {pid: MemoryStore() for pid in partitions}
        self.cores: dict[PartitionId, PartitionCore] = {}
        self._after_flush: list[Callable[[], None]] = []
        self._dirty = False
        self._resolving: dict[tuple[PartitionId, TxnId], int] = {}
        self._driving: dict[TxnId, int] = {}
        self._boot()

    def _boot(self) -> None:
        self.cores = {
            pid: PartitionCore(pid, store, self.config) for pid, store in self.stores.items()
        }
        self.clock = HybridClock(self.local_now, self.origin_now())
        incarnation = self.incarnation
        self.loop.after(MAINTAIN_US, lambda: self._maintain(incarnation))

    def crash(self) -> None:
        super().crash()
        for store in self.stores.values():
            store.crash()
        self.cores = {}
        self._after_flush = []
        self._dirty = False
        self._resolving = {}
        self._driving = {}

    def restart(self) -> None:
        super().restart()
        self._boot()

    # --- requests ------------------------------------------------------------------------

    def receive(self, envelope: Envelope, send_reply: Callable[[Reply], None]) -> None:
        request = envelope.request
        core = self.cores[request.partition]
        node_ts = self.clock.now() if isinstance(request, WriteRequest) else TIMESTAMP_ZERO
        step = core.handle(request, self.local_now(), node_ts)
        self._after_writes(step.wrote, lambda: send_reply(step.reply))

    def _after_writes(self, wrote: bool, then: Callable[[], None]) -> None:
        """Run ``then`` once every write so far is durable (at once when nothing is pending)."""
        if wrote and not self._dirty:
            self._dirty = True
            incarnation = self.incarnation
            self.loop.after(self.fsync_us, lambda: self._flush(incarnation))
        if self._dirty:
            self._after_flush.append(then)
        else:
            then()

    def _flush(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        for store in self.stores.values():
            store.commit()
        self._dirty = False
        waiting, self._after_flush = self._after_flush, []
        for then in waiting:
            then()

    def settled(self) -> bool:
        """No unflushed write, no intent, every ledger record decided and acknowledged."""
        return self.up and not self._dirty and not self.pending()

    def pending(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for store in self.stores.values():
            intents = store.intent_count()
            open_records = len(store.open_ledger_records(LEDGER_SCAN_MAX))
            if intents:
                out["intents"] = out.get("intents", 0) + intents
            if open_records:
                out["open_records"] = out.get("open_records", 0) + open_records
        return out

    # --- background ----------------------------------------------------------------------

    def _maintain(self, incarnation: int) -> None:
        if not self.up or incarnation != self.incarnation:
            return
        for pid, core in self.cores.items():
            work = core.maintain(self.local_now())
            for stale in work.stale_intents:
                key = (pid, stale.txn_id)
                if key not in self._resolving:
                    resolution = IntentResolution(stale.txn_id, stale.anchor, pid)
                    self._resolving[key] = 0
                    self._after_writes(work.wrote, self._starter(resolution, key))
            for record in work.records_to_drive:
                if record.txn_id not in self._driving:
                    self._driving[record.txn_id] = 0
                    recovery = Recovery(record, pid, self.local_now())
                    self._after_writes(work.wrote, self._recovery_starter(recovery))
            self._after_writes(work.wrote, lambda: None)
        self.loop.after(MAINTAIN_US, lambda: self._maintain(incarnation))

    def _starter(
        self, resolution: IntentResolution, key: tuple[PartitionId, TxnId]
    ) -> Callable[[], None]:
        def start() -> None:
            self.trace.add(self.loop.now_us, f"{self.name} resolves {key[1]} on p{key[0]}")
            self.start(resolution, lambda outcome: self._forget_resolution(key))

        return start

    def _forget_resolution(self, key: tuple[PartitionId, TxnId]) -> None:
        self._resolving.pop(key, None)

    def _forget_recovery(self, txn_id: TxnId) -> None:
        self._driving.pop(txn_id, None)

    def _recovery_starter(self, recovery: Recovery) -> Callable[[], None]:
        txn_id = recovery.record.txn_id

        def start() -> None:
            self.trace.add(self.loop.now_us, f"{self.name} drives {txn_id}")
            self.start(recovery, lambda result: self._forget_recovery(txn_id))

        return start


class CoordinatorHost(Host):
    """A coordinator: runs write and read transactions for clients."""

    def __init__(
        self,
        name: str,
        loop: EventLoop,
        net: Network,
        trace: Trace,
        *,
        origin: int,
        resolution_us: int,
        pmap: PartitionMap,
        mutants: Mutants,
        rng: random.Random,
    ) -> None:
        super().__init__(name, loop, net, trace, resolution_us)
        self.origin = origin
        self.pmap = pmap
        self.mutants = mutants
        self.rng = rng
        self._sessions: dict[int, Callable[[], None]] = {}
        self._next_session = 0
        self._boot()

    def _boot(self) -> None:
        self.clock = HybridClock(self.local_now, self.origin_now(), mutants=self.mutants)

    def restart(self) -> None:
        super().restart()
        self._boot()

    def crash(self) -> None:
        super().crash()
        lost, self._sessions = self._sessions, {}
        for session in sorted(lost):
            self.loop.after(1, lost[session])

    def new_txn_id(self) -> TxnId:
        return TxnId(f"{self.name}-{self.incarnation}-{self.rng.getrandbits(48):012x}")

    def write(
        self,
        txn_id: TxnId,
        ops: list[Op],
        on_result: Callable[[Any], None],
        on_lost: Callable[[], None],
        token: str | None = None,
    ) -> None:
        now_us = self.local_now()
        txn = WriteTxn(
            txn_id,
            self.clock.now(),
            ops,
            self.pmap.partition_of,
            now_us,
            token=token,
            token_home=self.pmap.partition_of,
        )
        self._run(txn, on_result, on_lost)

    def read(
        self, keys: list[str], on_result: Callable[[Any], None], on_lost: Callable[[], None]
    ) -> None:
        txn = ReadTxn(keys, self.pmap.partition_of, self.local_now(), mutants=self.mutants)
        self._run(txn, on_result, on_lost)

    def _run(
        self, actor: Actor, on_result: Callable[[Any], None], on_lost: Callable[[], None]
    ) -> None:
        self._next_session += 1
        session = self._next_session
        self._sessions[session] = on_lost

        def finish(result: Any) -> None:
            if self._sessions.pop(session, None) is not None:
                on_result(result)

        self.start(actor, finish)
