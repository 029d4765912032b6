"""One simulated run: a cluster of real cores, clients, a nemesis, then heal, final reads, checks.

Theory of operation
-------------------
:func:`run_seed` builds everything from one ``random.Random(seed)``: the fault profile (swarm
draw), the cluster (``nodes`` storage nodes owning ``partitions`` partitions round-robin, and
``coordinators`` coordinators), the workload and its clients. The run has three phases:

1. **fault phase** (``fault_phase_ms`` of virtual time): clients issue operations (at most
   ``ops_max`` in all) while the nemesis crashes and restarts nodes and coordinators, cuts links,
   and moves clocks, and the network drops, duplicates and delays messages per the profile;
2. **heal phase**: every fault is lifted (quiet network, links healed, processes restarted, clocks
   set right), clients finish what is in flight, and the cluster runs until it has *settled*: no
   actor running, no intent left, every decided ledger record acknowledged by its participants.
   A cluster that has not settled after ``heal_phase_ms_max`` is a failure ("stuck"): an
   undecided transaction is a liveness bug;
3. **final reads** of every key, one read-only and one checked (placed at a timestamp).

The history then goes through every checker of the workload (strict serializability, plus the
timestamp-order replay). The simulator is omniscient where the history is not: each ``info``
write's fate is looked up in its anchor's ledger, so the replay can place the ones that committed,
and an ``ok`` write whose record is not COMMITTED, or a ``fail`` one whose record is, is reported.
Any exception raised by a core is a failure of the run, with its traceback.
"""

from __future__ import annotations

import dataclasses
import random
import traceback
from dataclasses import dataclass, field
from typing import Any

from chaos.checkers.result import Anomaly, CheckResult
from chaos.checkers.suite import check_all
from chaos.history import History, Op
from chaos.sim.config import FaultProfile, SimConfig
from chaos.sim.hosts import CoordinatorHost, Host, NodeHost
from chaos.sim.loop import EventLoop, Trace
from chaos.sim.network import Network
from chaos.sim.workloads import Completion, Script, Workload, Write, make_workload
from kvstore.coordinator.results import TxnResult
from kvstore.errors import ErrorCode
from kvstore.messages import LedgerRecord, TxnState, WriteRequest
from kvstore.partitioning import PartitionMap
from kvstore.storage_node.core import PartitionConfig
from kvstore.types import PartitionId, TxnId

__all__ = ["SimResult", "Simulation", "run_seed", "MODEL"]

MODEL = "strict-serializable"
_MS = 1000
CLIENT_LINK_US = 100  # client <-> coordinator, fault-free
SETTLE_CHECK_US = 100 * _MS
REFUSED_BACKOFF_US = 200 * _MS
RETRY_BACKOFF_US = 300 * _MS
TOKEN_ATTEMPTS_MAX = 4  # a tokened write is sent at most this often before it is left info


def _retry_with_token(error: ErrorCode) -> bool:
    """Ambiguous (3xxx), or the token's first attempt is still in flight."""
    return error.number // 1000 == 3 or error is ErrorCode.TransactionInProgress


LEDGER_KEPT_MS = 24 * 3600 * 1000  # longer than any run: the omniscient lookup needs every record


@dataclass
class SimResult:
    seed: int
    config: SimConfig
    profile: FaultProfile
    history: History
    check: CheckResult | None
    digest: str
    error: str | None
    trace: Trace
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.check is not None and self.check.valid

    def anomalies(self) -> list[Anomaly]:
        return [] if self.check is None else self.check.anomalies

    def summary(self) -> str:
        if self.error is not None:
            return self.error.splitlines()[0] if self.error else "error"
        kinds = sorted({a.kind for a in self.anomalies()})
        return "ok" if self.ok else "anomalies: " + ", ".join(kinds)


class Client:
    """One simulated client: runs scripts one at a time through random coordinators."""

    def __init__(self, sim: Simulation, process: int) -> None:
        self.sim = sim
        self.process = process
        self.busy = False
        self.final = False  # final reads: always through the first coordinator
        self.auto = True  # begin the next operation after a pause (off when a test drives)

    def begin(self) -> None:
        sim = self.sim
        if self.busy or sim.stopping or sim.ops_started >= sim.config.ops_max:
            return
        sim.ops_started += 1
        f, value, script = sim.workload.script(sim.rng)
        self.run(f, value, script)

    def run(self, f: str, value: Any, script: Script) -> None:
        sim = self.sim
        self.busy = True
        invoke = sim.history.invoke(self.process, f, value, time_ns=sim.loop.now_us * 1000)
        sim.trace.add(sim.loop.now_us, f"client {self.process} invoke {f} {value}")
        self._step(invoke, script, None)

    def _step(self, invoke: Op, script: Script, answer: Any) -> None:
        try:
            step = script.send(answer)
        except StopIteration as stop:
            self._complete(invoke, stop.value)
            return
        sim = self.sim
        if isinstance(step, Write):
            self._submit_write(invoke, script, step, 1)
            return
        coordinator = self._coordinator()

        def deliver(result: Any) -> None:
            sim.loop.after(CLIENT_LINK_US, lambda: self._step(invoke, script, result))

        def lost() -> None:  # the connection broke: a read changed nothing
            script.close()
            self._complete(invoke, Completion("fail", invoke.value, error="connection lost"))

        def submit() -> None:
            if not coordinator.up:  # refused: nothing was sent
                script.close()
                self._complete(invoke, Completion("fail", invoke.value, error="refused"))
            else:
                coordinator.read(step.keys, deliver, lost)

        sim.loop.after(CLIENT_LINK_US, submit)

    def _coordinator(self) -> CoordinatorHost:
        """Final reads use the first coordinator; others pick a live one (clients fail over)."""
        sim = self.sim
        if self.final:
            return sim.coordinators[0]
        return sim.rng.choice([c for c in sim.coordinators if c.up] or sim.coordinators)

    def _submit_write(self, invoke: Op, script: Script, step: Write, attempt: int) -> None:
        """Send a write; with a token, retry an ambiguous answer (as the SDK will)."""
        sim = self.sim
        coordinator = self._coordinator()

        def retry_or(answer: Completion | TxnResult) -> None:
            if step.token is not None and attempt < TOKEN_ATTEMPTS_MAX:
                sim.trace.add(sim.loop.now_us, f"client {self.process} retries {step.token}")
                delay_us = sim.rng.randint(RETRY_BACKOFF_US // 2, RETRY_BACKOFF_US)
                sim.loop.after(
                    delay_us, lambda: self._submit_write(invoke, script, step, attempt + 1)
                )
            elif isinstance(answer, Completion):
                script.close()
                self._complete(invoke, answer)
            else:
                self._step(invoke, script, answer)

        def deliver(result: TxnResult) -> None:
            def answer() -> None:
                if result.error is not None and _retry_with_token(result.error):
                    retry_or(result)
                else:
                    self._step(invoke, script, result)

            sim.loop.after(CLIENT_LINK_US, answer)

        def lost() -> None:  # the connection broke with the request in flight
            retry_or(Completion("info", invoke.value, error="connection lost"))

        def submit() -> None:
            if not coordinator.up:
                if attempt == 1:  # refused: nothing was sent
                    script.close()
                    self._complete(invoke, Completion("fail", invoke.value, error="refused"))
                else:  # an earlier attempt may have committed
                    retry_or(Completion("info", invoke.value, error="refused on retry"))
                return
            txn_id = coordinator.new_txn_id()
            # Where the ledger record lives: the token's home when there is one (WriteTxn's
            # token_home), else the first key's partition.
            anchor = sim.pmap.partition_of(step.token or step.ops[0].key)
            sim.writes.setdefault(invoke.index, []).append((txn_id, anchor))
            coordinator.write(txn_id, step.ops, deliver, lost, step.token)

        sim.loop.after(CLIENT_LINK_US, submit)

    def _complete(self, invoke: Op, done: Completion) -> None:
        sim = self.sim
        attempts = sim.writes.get(invoke.index)
        txn_id = done.txn_id or (attempts[-1][0] if attempts else None)
        op = sim.history.complete(
            invoke,
            done.type,  # type: ignore[arg-type]
            done.value,
            time_ns=sim.loop.now_us * 1000,
            ts=done.ts,
            txn_id=txn_id,
            error=done.error,
        )
        detail = f"ts={op.ts} " if op.ts is not None else ""
        detail += f"error={op.error} " if op.error is not None else ""
        sim.trace.add(
            sim.loop.now_us, f"client {self.process} {op.type} {op.f} {txn_id} {detail}{op.value}"
        )
        self.busy = False
        if done.type == "info":
            self.process = sim.new_process()
        if self.auto and not self.final:
            pause_us = 1 + int(sim.rng.expovariate(1.0 / sim.profile.think_us))
            if done.error == "refused":  # every coordinator is down: back off
                pause_us += sim.rng.randint(REFUSED_BACKOFF_US // 2, REFUSED_BACKOFF_US)
            sim.loop.after(pause_us, self.begin)


class Simulation:
    """A cluster of cores on virtual time, with clients and a nemesis, built from one seed."""

    def __init__(self, seed: int, config: SimConfig, *, verbose: bool = False) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.profile = FaultProfile.draw(self.rng) if config.faults else FaultProfile()
        self.loop = EventLoop()
        self.trace = Trace(keep=verbose)
        self.net = Network(self.loop, self.rng, self.trace, self.profile)
        self.pmap = PartitionMap(config.partitions)
        self.history = History()
        self.workload: Workload = make_workload(config.workload, config.keys, config.bank_total)
        self.writes: dict[int, list[tuple[TxnId, PartitionId]]] = {}  # invoke -> attempts
        self.ops_started = 0
        self.stopping = False
        self._next_process = 0
        self.counts: dict[str, int] = {}
        partition_config = PartitionConfig(
            intent_stale_ms=self.profile.intent_stale_ms,
            tombstone_retention_ms=self.profile.tombstone_retention_ms,
            ledger_retention_ms=LEDGER_KEPT_MS,
            idempotency_window_ms=LEDGER_KEPT_MS,
            mutants=config.mutants,
        )
        self.nodes: list[NodeHost] = []
        for i in range(config.nodes):
            owned = [PartitionId(p) for p in range(config.partitions) if p % config.nodes == i]
            node = NodeHost(
                f"n{i}",
                self.loop,
                self.net,
                self.trace,
                origin=1_000 + i,
                resolution_us=self.profile.clock_resolution_us,
                partitions=owned,
                config=partition_config,
                fsync_us=self.profile.fsync_us,
            )
            self.nodes.append(node)
            for pid in owned:
                self.net.owner[pid] = node.name
        self.coordinators = [
            CoordinatorHost(
                f"c{i}",
                self.loop,
                self.net,
                self.trace,
                origin=2_000 + i,
                resolution_us=self.profile.clock_resolution_us,
                pmap=self.pmap,
                mutants=config.mutants,
                rng=self.rng,
            )
            for i in range(config.coordinators)
        ]
        self.hosts: list[Host] = [*self.nodes, *self.coordinators]
        self.clients = [Client(self, self.new_process()) for _ in range(config.clients)]
        self._setup()

    def new_process(self) -> int:
        process = self._next_process
        self._next_process += 1
        return process

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _setup(self) -> None:
        for op in self.workload.setup_ops():
            pid = self.pmap.partition_of(op.key)
            node = next(n for n in self.nodes if pid in n.store.partitions)
            assert node.runtime is not None
            node.runtime.cores[pid].write(WriteRequest(partition=pid, op=op), node.clock.now())
            node.store.commit()

    # --- the nemesis -------------------------------------------------------------------------

    def _every(self, mean_ms: int, action: str) -> None:
        if mean_ms <= 0:
            return

        def fire() -> None:
            if self.stopping:
                return
            getattr(self, action)()
            self._every_next(mean_ms, fire)

        self._every_next(mean_ms, fire)

    def _every_next(self, mean_ms: int, fire: Any) -> None:
        self.loop.after(1 + int(self.rng.expovariate(1.0 / (mean_ms * _MS))), fire)

    def _fault_crash(self, hosts: list[Any], down_ms_max: int) -> None:
        host = self.rng.choice(hosts)
        if not host.up:
            return
        self.count(f"crash {type(host).__name__}")
        host.crash()
        incarnation = host.incarnation

        def restart() -> None:
            if not host.up and host.incarnation == incarnation:
                host.restart()

        self.loop.after(self.rng.randint(1, down_ms_max) * _MS, restart)

    def crash_node(self) -> None:
        self._fault_crash(self.nodes, 3_000)

    def crash_coordinator(self) -> None:
        self._fault_crash(self.coordinators, 1_000)

    def partition(self) -> None:
        names = [h.name for h in self.hosts]
        a, b = self.rng.sample(names, 2)
        link = self.net.link(a, b)
        self.count("partition")
        self.trace.add(self.loop.now_us, f"cut {a}<->{b}")
        self.net.cut.add(link)
        self.loop.after(self.rng.randint(100, 4_000) * _MS, lambda: self.net.cut.discard(link))

    def move_clock(self) -> None:
        host = self.rng.choice(self.hosts)
        bound_us = self.profile.clock_offset_max_ms * _MS
        host.offset_us = self.rng.randint(-bound_us, bound_us)
        self.count("clock")
        self.trace.add(self.loop.now_us, f"clock {host.name} offset {host.offset_us}us")

    # --- phases ------------------------------------------------------------------------------

    def run(self) -> None:
        for client in self.clients:
            self.loop.after(self.rng.randint(0, 5 * _MS), client.begin)
        profile = self.profile
        self._every(profile.crash_node_ms, "crash_node")
        self._every(profile.crash_coordinator_ms, "crash_coordinator")
        self._every(profile.partition_ms, "partition")
        self._every(profile.clock_ms, "move_clock")
        self.loop.run_until(self.config.fault_phase_ms * _MS)
        self._heal()
        deadline_us = self.loop.now_us + self.config.heal_phase_ms_max * _MS
        self._settle(deadline_us)
        self._final_reads(deadline_us)

    def settle_and_check(self) -> CheckResult:
        """Heal, wait until settled, run the final reads and check (for step-driven tests)."""
        self._heal()
        deadline_us = self.loop.now_us + self.config.heal_phase_ms_max * _MS
        self._settle(deadline_us)
        self._final_reads(deadline_us)
        return self.check()

    def _settle(self, deadline_us: int) -> None:
        while not self._settled():
            if self.loop.now_us >= deadline_us:
                raise Stuck(f"stuck: the cluster did not settle ({self._pending()})")
            self.loop.run_until(self.loop.now_us + SETTLE_CHECK_US)

    def _heal(self) -> None:
        self.trace.add(self.loop.now_us, "heal")
        self.stopping = True
        self.net.quiet = True
        self.net.cut.clear()
        for host in self.hosts:
            host.offset_us = 0
            if not host.up:
                host.restart()

    def _settled(self) -> bool:
        return (
            not any(c.busy for c in self.clients)
            and not any(h.busy for h in self.hosts)
            and all(n.settled() for n in self.nodes)
        )

    def _pending(self) -> str:
        clients = sum(c.busy for c in self.clients)
        actors = {h.name: h.busy for h in self.hosts if h.busy}
        nodes = {n.name: n.pending() for n in self.nodes if not n.settled()}
        return f"busy clients={clients} actors={actors} nodes={nodes}"

    def _final_reads(self, deadline_us: int) -> None:
        reader = Client(self, self.new_process())
        reader.final = True
        for f, value, script in self.workload.final_scripts():
            reader.run(f, value, script)
            while reader.busy:
                if self.loop.now_us >= deadline_us:
                    raise Stuck("stuck: the final reads did not finish")
                self.loop.run_until(self.loop.now_us + SETTLE_CHECK_US)

    # --- omniscience ---------------------------------------------------------------------------

    def ledger_record(self, txn_id: TxnId, anchor: PartitionId) -> LedgerRecord | None:
        node = next(n for n in self.nodes if anchor in n.store.partitions)
        return node.store.partition(anchor).get_ledger(txn_id)

    def resolved_history(self) -> tuple[History, list[Anomaly]]:
        """The history with committed ``info`` writes given their ts, and outcome mismatches."""
        ops = list(self.history.ops)
        wrong: list[Anomaly] = []
        completions = {inv.index: done for inv, done in self.history.pairs()}
        for index, attempts in self.writes.items():
            done = completions.get(index)
            if done is None:
                continue
            records = [self.ledger_record(txn_id, anchor) for txn_id, anchor in attempts]
            committed = [r for r in records if r is not None and r.state is TxnState.COMMITTED]
            where = f"op {done.index} (attempts {[t for t, _ in attempts]})"
            if len(committed) > 1:
                wrong.append(
                    Anomaly("committed-twice", f"{where}: one token, two commits", (done,))
                )
            if done.type == "info" and committed:
                ops[done.index] = dataclasses.replace(done, ts=tuple(committed[0].ts))
            elif done.type == "ok" and not any(r.txn_id == done.txn_id for r in committed):
                wrong.append(Anomaly("ok-not-committed", f"{where} answered ok", (done,)))
            elif done.type == "fail" and committed:
                wrong.append(Anomaly("fail-but-committed", f"{where} answered fail", (done,)))
        return History.from_ops(ops), wrong

    def check(self) -> CheckResult:
        history, wrong = self.resolved_history()
        total = self.config.bank_total if self.config.workload == "bank" else None
        result = check_all(history, self.config.workload, MODEL, total=total)
        if wrong:
            result.anomalies.extend(wrong)
            result.valid = False
        return result

    def stats(self) -> dict[str, Any]:
        types: dict[str, int] = {}
        for _, done in self.history.pairs():
            types[done.type] = types.get(done.type, 0) + 1
        return {
            "ops": types,
            "events": self.loop.events,
            "messages": self.net.sent,
            "dropped": self.net.dropped,
            "virtual_s": round(self.loop.now_us / 1e6, 3),
            "faults": dict(sorted(self.counts.items())),
        }


class Stuck(Exception):
    """The cluster did not settle in the heal phase: a liveness failure."""


def run_seed(seed: int, config: SimConfig | None = None, *, verbose: bool = False) -> SimResult:
    """Run one seed to the end and check its history."""
    config = config or SimConfig()
    sim = Simulation(seed, config, verbose=verbose)
    error: str | None = None
    check: CheckResult | None = None
    try:
        sim.run()
    except Stuck as stuck:
        error = str(stuck)
    except Exception:  # a core raised: that is a finding, reported with its traceback
        error = "exception: " + traceback.format_exc()
    sim.history.close(time_ns=sim.loop.now_us * 1000)
    if error is None:
        check = sim.check()
    sim.trace.add(sim.loop.now_us, f"end {error or (check.valid if check else None)}")
    return SimResult(
        seed=seed,
        config=config,
        profile=sim.profile,
        history=sim.history,
        check=check,
        digest=sim.trace.digest,
        error=error,
        trace=sim.trace,
        stats=sim.stats(),
    )
