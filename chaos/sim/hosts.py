"""Simulated processes: storage nodes and coordinators, each running the production runtime.

Theory of operation
-------------------
A :class:`Host` is one process: a name, a local clock (virtual time plus an offset the nemesis
moves), and an *incarnation* that grows at every crash. It holds no protocol logic of its own:
it instantiates the production runtime (:mod:`kvstore.runtime`) with simulated parts and nothing
else:

* :class:`SimScheduler`: the host's local clock and the virtual event loop's timers; a callback
  scheduled by an earlier incarnation (or while the host is down) never runs.
* :class:`SimSender`: requests travel as :class:`~chaos.sim.network.Envelope` through the
  :class:`~chaos.sim.network.Network`, which decides their fate.
* :class:`SimDisk`: a flush job completes (``run()``: the batch becomes durable) ``fsync_us``
  after it starts.

:class:`NodeHost` runs one :class:`~kvstore.runtime.node.NodeRuntime` over a
:class:`~kvstore.storage_node.store.MemoryNodeStore` whose durable part is the disk: group
commit, durability gating, completions, maintenance and background actors are production's own
code. A crash drops the runtime, the store's unflushed writes and every actor; a restart builds a
fresh runtime (fresh cores and clock origin) over the surviving store.

:class:`CoordinatorHost` runs client operations on a production
:class:`~kvstore.runtime.actors.ActorDriver`: every kind the coordinator library runs (write and
read transactions, singleton gets and writes, scan pages, token lookups, backup pages), built by
the same constructors (``new_write_txn``, with the network's partition owners, so that
transactions whose partitions share a node run in one request; ``new_read``, ``new_get``,
``new_singleton_write``, ``Scan``, ``new_token_lookup``, ``new_snapshot_page``; a backup's ``at``
is :meth:`CoordinatorHost.now`, as ``Coordinator.now``) with the jitter of conflict retries
drawn from the run's generator, and behind the same admission check
(:func:`~kvstore.runtime.admission.admit`, with the run's own small limit so that refusals
happen). A crash loses every actor; the clients whose requests
were in flight are told the connection was lost.

A clone (:meth:`CoordinatorHost.restore`): the host boots as a copy of another incarnation's
memory image, i.e. with that clock's origin and ``last``, and then runs production's clone path
on it, :func:`~kvstore.timestamps.redraw_origins` (what the ``os.register_at_fork`` hook runs in
a forked child), with an origin drawn from the run's clone generator. So a clock that keeps its
origin across a clone (the ``NO_FORK_REDRAW`` mutant) makes the copies issue equal timestamps
here exactly as it would in production.

Omniscience: a node host reports every singleton write it applied (its reply, released once the
write is durable) to ``on_applied``, so the checker can place a singleton write whose client
never heard back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from chaos.sim.loop import EventLoop, Trace
from chaos.sim.network import Envelope, Network
from kvstore.coordinator.core import new_write_txn
from kvstore.coordinator.read import new_read
from kvstore.coordinator.retry import Retrying
from kvstore.coordinator.scan import Scan
from kvstore.coordinator.singleton import (
    check_page_at,
    new_get,
    new_singleton_write,
    new_snapshot_page,
    new_token_lookup,
)
from kvstore.errors import KvError, WrongOwner
from kvstore.messages import (
    CompleteRequest,
    ReasonCode,
    Reply,
    Request,
    WriteReply,
    WriteRequest,
)
from kvstore.mutants import Mutants
from kvstore.ops import Op
from kvstore.partitioning import PartitionMap
from kvstore.replication.control import ControlPlane
from kvstore.runtime.actors import Actor, ActorDriver, Answer
from kvstore.runtime.admission import admit
from kvstore.runtime.disk import FlushDone
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.replica import Audit, ReplicationConfig
from kvstore.runtime.scheduler import FlagTimer
from kvstore.storage_node.core import PartitionConfig
from kvstore.storage_node.store import FlushJob, MemoryNodeStore
from kvstore.timestamps import HybridClock, redraw_origins
from kvstore.types import PartitionId, Timestamp, TxnId

__all__ = ["Host", "NodeHost", "CoordinatorHost", "EPOCH_US"]

EPOCH_US = 1_800_000_000_000_000  # virtual time 0 on every local clock (a 2027 wall clock)
ORIGIN_STRIDE = 1 << 16  # origins of one host's incarnations, far apart from other hosts'
LEDGER_SCAN_MAX = 100_000


class SimScheduler:
    """One incarnation's view of time: the host's local clock, the loop's timers."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._incarnation = host.incarnation

    def now_us(self) -> int:
        return self._host.local_now()

    def _live(self) -> bool:
        return self._host.up and self._host.incarnation == self._incarnation

    def _held(self, fire: Callable[[], None]) -> bool:
        """While the host is paused, run ``fire`` when it resumes instead (True)."""
        host = self._host
        if host.paused_until_us > host.loop.now_us:
            host.loop.at(host.paused_until_us, fire)
            return True
        return False

    def call_soon(self, callback: Callable[[], None]) -> None:
        def fire() -> None:
            if self._live() and not self._held(fire):
                callback()

        self._host.loop.after(0, fire)

    def call_later(self, delay_us: int, callback: Callable[[], None]) -> FlagTimer:
        timer = FlagTimer()

        def fire() -> None:
            if not timer.cancelled and self._live() and not self._held(fire):
                callback()

        self._host.loop.after(delay_us, fire)
        return timer


class SimSender:
    """Requests as envelopes through the simulated network."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._incarnation = host.incarnation

    def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        del deadline_us  # losses are found by the cores' own deadlines
        envelope = Envelope(self._host.name, self._incarnation, request, answer)
        self._host.net.send_request(envelope)


class SimDisk:
    """A flush job is durable ``fsync_us`` after it starts (if the host is still the same)."""

    def __init__(self, scheduler: SimScheduler, fsync_us: int) -> None:
        self._scheduler = scheduler
        self._fsync_us = fsync_us

    def write(self, job: FlushJob, done: FlushDone) -> None:
        def fsynced() -> None:
            job.run()
            done(None)

        self._scheduler.call_later(self._fsync_us, fsynced)


class Host:
    """A process: clock, incarnation, the envelopes it gets back."""

    clock: HybridClock  # this incarnation's, set by the subclass when it boots

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
        self.paused_until_us = 0  # a paused process runs nothing before this (the nemesis's)
        self.actors: ActorDriver | None = None
        net.hosts[name] = self

    def origin_now(self) -> int:
        """This incarnation's clock origin: a restarted process draws a new one, as every
        production process does at start, or its fresh clock could reissue a timestamp (seed
        8056)."""
        return self.origin + ORIGIN_STRIDE * self.incarnation

    def local_now(self) -> int:
        now_us = EPOCH_US + self.loop.now_us + self.offset_us
        return now_us - now_us % self.resolution_us

    @property
    def busy(self) -> int:
        return 0 if self.actors is None else self.actors.running

    def receive(self, envelope: Envelope, respond: Callable[[Reply | KvError], None]) -> None:
        respond(WrongOwner(f"{self.name} serves no partitions"))

    def answer(
        self,
        envelope: Envelope,
        reply: Reply | None,
        error: KvError | None,
        clock: Timestamp | None,
    ) -> None:
        """An envelope's outcome is back at this host: the HLC receive rule on the responder's
        ``clock`` (None: nobody answered), then the outcome to its actor if still alive."""
        if self.paused_until_us > self.loop.now_us:
            self.loop.at(self.paused_until_us, lambda: self.answer(envelope, reply, error, clock))
            return
        if self.up and envelope.incarnation == self.incarnation:
            if clock is not None:
                if clock > self.clock.last:
                    self.net.count("clock moved by a reply")
                self.clock.observe(clock)
            envelope.answer(reply, None if error is None else error.code)

    def crash(self) -> None:
        self.trace.add(self.loop.now_us, f"crash {self.name} ({self.busy} actors lost)")
        self.up = False
        self.paused_until_us = 0
        self.incarnation += 1
        if self.actors is not None:
            self.actors.stop()
            self.actors = None

    def restart(self) -> None:
        self.trace.add(self.loop.now_us, f"restart {self.name}")
        self.up = True


class NodeHost(Host):
    """A storage node: the production node runtime over a memory store."""

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
        on_applied: Callable[[WriteRequest, WriteReply], None] | None = None,
        replication: ReplicationConfig | None = None,
        control: ControlPlane | None = None,
        audit: Audit | None = None,
    ) -> None:
        super().__init__(name, loop, net, trace, resolution_us)
        self.replication = replication
        self.control = control
        self.audit = audit
        self.origin = origin
        self.config = config
        self.fsync_us = fsync_us
        self.on_applied = on_applied
        self._armed: Callable[[], None] | None = None
        self.store = MemoryNodeStore(partitions)
        self.runtime: NodeRuntime | None = None
        self._boot()

    def _boot(self) -> None:
        scheduler = SimScheduler(self)
        self.clock = HybridClock(self.local_now, self.origin_now())
        self.runtime = NodeRuntime(
            self.name,
            self.store,
            disk=SimDisk(scheduler, self.fsync_us),
            scheduler=scheduler,
            sender=SimSender(self),
            clock=self.clock,
            config=self.config,
            wrong_owner=lambda pid: WrongOwner(f"{self.name} does not own partition {pid}"),
            note=lambda line: self.trace.add(self.loop.now_us, line),
            replication=self.replication,
            control=self.control,
            lease_clock_us=lambda: self.loop.now_us,  # leases: a drift-free monotonic clock
            audit=self.audit,
        )
        self.actors = self.runtime.actors
        self.runtime.start()

    def crash(self) -> None:
        self._armed = None
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None
        super().crash()
        self.store.crash()

    def arm_crash(self, crash: Callable[[], None]) -> None:
        """Call ``crash`` (once) right after this node next answers a request while it still
        holds writes that are not durable: the answer is on the wire, the process dies."""
        self._armed = crash

    def disarm_crash(self) -> bool:
        """Forget an armed crash; True if one was armed."""
        armed, self._armed = self._armed, None
        return armed is not None

    def restart(self) -> None:
        super().restart()
        self._boot()

    def receive(self, envelope: Envelope, respond: Callable[[Reply | KvError], None]) -> None:
        assert self.runtime is not None
        request = envelope.request
        on_applied = self.on_applied
        incarnation = self.incarnation

        def answer(outcome: Reply | KvError) -> None:
            if (
                on_applied is not None
                and type(request) is WriteRequest
                and type(outcome) is WriteReply
                and outcome.outcome.code is ReasonCode.NONE
            ):
                on_applied(request, outcome)
            respond(outcome)
            if (
                self._armed is not None
                and self.incarnation == incarnation
                and self.store.dirty
                and type(request) is not CompleteRequest  # answered at once, by design
            ):
                crash, self._armed = self._armed, None
                self.loop.after(0, crash)  # after this step: its other answers leave too

        self.runtime.submit(request, answer)

    def unflushed(self) -> bool:
        """Up, with writes not yet durable (in the open batch or in a flush in flight)."""
        runtime = self.runtime
        return self.up and runtime is not None and (self.store.dirty or runtime.flushing)

    def settled(self) -> bool:
        """No unflushed write, no intent, every ledger record decided and acknowledged."""
        runtime = self.runtime
        return (
            self.up
            and runtime is not None
            and not self.store.dirty
            and not runtime.flushing
            and not self.pending()
        )

    def pending(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pid in self.store.partitions:
            store = self.store.partition(pid)
            intents = store.intent_count()
            open_records = len(store.open_ledger_records(LEDGER_SCAN_MAX))
            if intents:
                out["intents"] = out.get("intents", 0) + intents
            if open_records:
                out["open_records"] = out.get("open_records", 0) + open_records
        return out


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
        admission_max: int,
        count: Callable[[str], None] = lambda what: None,
        replicated: bool = False,
    ) -> None:
        super().__init__(name, loop, net, trace, resolution_us)
        self.origin = origin
        self.pmap = pmap
        self.partitions = tuple(PartitionId(p) for p in pmap.partitions())
        self.mutants = mutants
        self.rng = rng
        self.admission_max = admission_max
        self.count = count  # notable events, for the run's statistics
        # No one-node transactions in a replicated cluster (see the coordinator engine).
        self.replicated = replicated
        self._sessions: dict[int, Callable[[], None]] = {}
        self._next_session = 0
        self._boot()

    def _boot(self, clock: HybridClock | None = None) -> None:
        self.clock = (
            clock
            if clock is not None
            else HybridClock(self.local_now, self.origin_now(), mutants=self.mutants)
        )
        self.actors = ActorDriver(SimScheduler(self), SimSender(self))

    def restore(self, origin: int, last: Timestamp, draw_origin: Callable[[], int]) -> None:
        """Boot (crashed first if up) from a memory image whose clock had ``origin`` and
        ``last``; then the clone path of production (see the module) gives the copy its own
        origin from ``draw_origin``."""
        if self.up:
            self.crash()
        Host.restart(self)  # up again, without a boot of its own
        clock = HybridClock(self.local_now, origin, last=last, mutants=self.mutants)
        redraw_origins([clock], draw_origin)
        self._boot(clock)

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
        """A write transaction; raises ``Overloaded`` when admission refuses it."""
        self._admit()
        txn = new_write_txn(
            txn_id,
            self.clock.now(),
            ops,
            self.pmap.partition_of,
            self.local_now(),
            token=token,
            node_of=None if self.replicated else self.net.owner.__getitem__,
            mutants=self.mutants,
        )
        if txn.one_node:
            self.count("one-node txn")
        self._run(txn, on_result, on_lost)

    def read(
        self, keys: list[str], on_result: Callable[[Any], None], on_lost: Callable[[], None]
    ) -> None:
        self._admit()
        txn = new_read(
            keys, self.pmap.partition_of, self.local_now(), self.rng.random, mutants=self.mutants
        )
        self._run(txn, on_result, on_lost)

    def get(self, key: str, on_result: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self._admit()
        self._run(new_get(key, self.pmap.partition_of), on_result, on_lost)

    def singleton(
        self, op: Op, on_result: Callable[[Any], None], on_lost: Callable[[], None]
    ) -> None:
        self._admit()
        core = new_singleton_write(op, self.pmap.partition_of, self.local_now(), self.rng.random)
        self._run(core, on_result, on_lost)

    def scan(
        self,
        start: str,
        end: str | None,
        limit: int,
        on_result: Callable[[Any], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._admit()
        self._run(Scan(self.partitions, start=start, end=end, limit=limit), on_result, on_lost)

    def now(self) -> Timestamp:
        """A fresh timestamp of this coordinator's clock: ``Coordinator.now``, a backup's
        ``at``."""
        return self.clock.now()

    def snapshot_page(
        self,
        partition: PartitionId,
        on_result: Callable[[Any], None],
        on_lost: Callable[[], None],
        *,
        start: str,
        at: Timestamp,
        limit: int,
    ) -> None:
        """One backup page of ``partition`` as of ``at`` (``Coordinator.snapshot_page``: an
        ``at`` too far ahead of this host's clock is refused first, then admission)."""
        check_page_at(at, self.clock.now())
        self._admit()
        self._run(new_snapshot_page(partition, start, at, limit), on_result, on_lost)

    def lookup(
        self, token: str, on_result: Callable[[Any], None], on_lost: Callable[[], None]
    ) -> None:
        self._admit()
        self._run(new_token_lookup(token, self.pmap.partition_of), on_result, on_lost)

    def _admit(self) -> None:
        try:
            admit(self.busy, self.admission_max)
        except KvError:
            self.count("admission refused")
            raise

    def _run(
        self, actor: Actor, on_result: Callable[[Any], None], on_lost: Callable[[], None]
    ) -> None:
        self._next_session += 1
        session = self._next_session
        self._sessions[session] = on_lost

        def finish(result: Any) -> None:
            if isinstance(actor, Retrying) and actor.retries:
                self.count("conflict retry")
            if self._sessions.pop(session, None) is not None:
                on_result(result)

        assert self.actors is not None
        self.actors.start(actor, finish)
