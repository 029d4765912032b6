"""``python -m chaos run``: a real cluster, concurrent clients, faults, a checked history.

Theory of operation
-------------------
One run, all on 127.0.0.1 and bounded in count and time:

1. **Cluster**: a fresh local cluster (:mod:`kvstore.localcluster`) of 3 storage nodes and 2
   coordinators in ``<out>/cluster``, with short recovery deadlines (``RUN_TIMING``) so that a
   run settles in seconds, started with the chaos control on (``KVSTORE_CHAOS_CONTROL=1``) and
   any mutants named in ``KVSTORE_MUTANTS`` (the test-the-tests mode). With a
   ``replication_factor`` above 1 the cluster is replicated instead: 3 nodes, every partition on
   that many of them, a private etcd, and no standalone coordinator (a replicated cluster refuses
   them; every node serves the API, so the clients talk to the nodes). After the run the etcd
   member's data (a preallocated 64 MB WAL) is removed; its log stays with the others.
2. **Load**: ``clients`` workers run the workload's scripts (:mod:`chaos.sim.workloads`, the
   simulator's own) against a random gateway over HTTP (:mod:`chaos.http_client`): a
   coordinator, or a storage node, which coordinates with its own partitions as function calls, for
   ``duration`` seconds, recording every operation in a :class:`~chaos.history.History`. With
   ``every_kind`` (the default) the scripts are the simulator's full mix: besides read-only,
   blind and interactive transactions, list-append and register also issue singleton writes
   (node timestamps), singleton gets and scan pages on the same keys, and interactive
   transactions and bank transfers cancelled by conflicts are run again (``Rerun``, the SDK's
   ``run``, with its backoff). Every write transaction carries an idempotency token (as the
   SDK's do); an ambiguous answer, or ``TransactionInProgress`` (the same token still running
   elsewhere), is retried with the same token, at most ``TOKEN_RETRIES_MAX`` times, on another
   gateway; what stays unknown is ``info``. A singleton write has no token: an ambiguous
   answer is ``info`` at once, and the client then reads the key (a ``get``, up to
   ``FOLLOW_UP_GETS_MAX`` tries) so that the write, if it applied, is seen with its timestamp.
   A failure keeps its error code and a cancellation its per-op reasons. The runner counts
   operations per kind (the steps a script took) for the summary. The steps go through a
   :class:`Transport`: the public HTTP API (``client="http"``, the default), or the DynamoDB
   endpoint through boto3 (``client="dynamodb"``, :mod:`chaos.dynamodb_client`; the bank
   workload only): same scripts, same retries with the same token (its
   ``ClientRequestToken``), same history; its table and initial items are made through boto3
   before any fault, and the leader nemeses aim at the partitions of its items.
3. **Faults**: meanwhile the :class:`~chaos.nemesis.Nemesis` injects the chosen faults.
4. **Heal and settle**: every fault is healed, then the run waits (bounded by
   ``SETTLE_TIMEOUT_S``) until no node holds an intent or an open ledger record: recovery must
   finish on its own. Not settling is a failure.
5. **Final reads** through the same scripts, then **resolution**: every write's token is looked
   up in the cluster's own ledger (``GET /v1/txn/{token}``). A committed ``info`` write gets its
   commit timestamp, so the timestamp-order replay can place it (as the simulator does with its
   omniscient view); an ``ok`` write that did not commit (or committed as another transaction)
   and a ``fail`` write that committed are anomalies. A transport whose answers carry no commit
   ts or txn id (DynamoDB's: ``Transport.stamps`` false) records its ``ok`` writes without them;
   each gets both from the committed record of its own (last) token, and without one it is
   ``ok-not-committed``. Writes without a token (singletons) are
   resolved from what the clients read: every item read (read transaction, get, scan) shows the
   timestamp of its last write, and a value identifies its write (register values and
   list-append elements are unique; a list's last element is its last append), so an ``info``
   write seen this way gets that timestamp, an ``ok`` write seen at another timestamp is a
   ``read-ts-mismatch`` and a ``fail`` write seen at all is ``fail-but-read``. What stays
   unknown is named in the checker notes. Then the cluster is stopped.
6. **Failover** (replicated runs): for every leader fault, the partitions its target led and
   the longest time each went without an acknowledged write (:mod:`chaos.failover`), printed
   before the verdict and written to the report; a restart that failed
   (:attr:`~chaos.nemesis.Nemesis.problems`) fails the run.
7. **Check**: the resolved history goes through the checkers of :mod:`chaos.checkers` under
   strict serializability, gets and scans as single-key reads checked for serializability only
   (:func:`~chaos.sim.workloads.unanchor_reads`, as the simulator does; the checked history is
   saved as ``history-checked.jsonl`` when it differs); set: every acknowledged insert is in the
   final read. The report
   (history as JSON Lines, cluster logs, checker results, an HTML page) is written to ``out``;
   the last line printed is the verdict, and the exit status is 0 only when every checker
   passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp

from chaos import http_client
from chaos.checkers import sets
from chaos.checkers.result import Anomaly, CheckResult
from chaos.checkers.suite import check_all
from chaos.failover import Unavailability, failover_text, longest_by_kind, unavailability
from chaos.history import History, Op
from chaos.nemesis import Nemesis
from chaos.report import failure_split, failures_text, verdict_line, write_report
from chaos.sim.workloads import (
    Completion,
    Get,
    Put,
    Read,
    Rerun,
    ScanKeys,
    Script,
    Workload,
    Write,
    make_workload,
    unanchor_reads,
)
from kvstore.client.retry import RetryPolicy
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.coordinator.scan import ScanResult
from kvstore.coordinator.singleton import CallResult
from kvstore.errors import ErrorCode
from kvstore.limits import SDK_RUN_ATTEMPTS_MAX
from kvstore.localcluster import LocalCluster
from kvstore.messages import GetReply, ItemView, WriteReply
from kvstore.ops import Op as KvOp
from kvstore.types import Timestamp

if TYPE_CHECKING:
    from chaos.dynamodb_client import DynamoTransport

_ZERO_TS: Final = Timestamp(0, 0, 0)

__all__ = [
    "RunConfig",
    "Transport",
    "op_kind",
    "written",
    "run",
    "WORKLOADS",
    "CLIENTS",
    "DYNAMODB_WORKLOADS",
    "RUN_TIMING",
    "RUN_CLIENTS_MAX",
    "RUN_DURATION_S_MAX",
]

WORKLOADS: Final = ("list-append", "bank", "register", "set")
CLIENTS: Final = ("http", "dynamodb")  # the public HTTP API; the DynamoDB endpoint via boto3
DYNAMODB_WORKLOADS: Final = ("bank",)  # what the DynamoDB client can send (chaos.dynamodb_client)
MODEL: Final = "strict-serializable"
KEYS: Final = 8
BANK_TOTAL: Final = 1_000
TOKEN_RETRIES_MAX: Final = 5
FOLLOW_UP_GETS_MAX: Final = 10  # gets of a key after an info singleton write to it
FOLLOW_UP_PAUSE_S: Final = 0.3
OBSERVED: Final = ("list-append", "rw-register")  # workloads whose reads identify writes
RESOLVE_CALLS_MAX: Final = 16  # token lookups in flight while resolving the history
SETTLE_TIMEOUT_S: Final = 30.0
OPS_PER_CLIENT_MAX: Final = 100_000
RUN_CLIENTS_MAX: Final = 64
RUN_DURATION_S_MAX: Final = 3_600.0
RUN_NODES: Final = 3
RUN_COORDINATORS: Final = 2  # unreplicated runs only
RUN_PARTITIONS: Final = 8
RUN_TIMING: Final = {
    "intent_stale_ms": 1_000,
    "ledger_decision_deadline_ms": 3_000,
    "tombstone_retention_ms": 5_000,
}
CHAOS_ENV: Final = {"KVSTORE_CHAOS_CONTROL": "1"}


@dataclass(frozen=True)
class RunConfig:
    workload: str
    nemeses: tuple[str, ...]
    duration_s: float
    seed: int
    clients: int
    out: Path
    every_kind: bool = True  # singletons, gets, scans and re-runs too (see the module)
    replication_factor: int = 1  # above 1: a replicated cluster (see the module)
    client: str = "http"  # one of CLIENTS: how the load reaches the cluster (see the module)


class Transport(Protocol):
    """How the scripts' steps reach the cluster: :class:`chaos.http_client.HttpTransport` or
    :class:`chaos.dynamodb_client.DynamoTransport`."""

    @property
    def stamps(self) -> bool:
        """Whether a committed write's answer carries its commit ts and txn id (else the
        ledger lookup of its token gives them)."""
        ...

    def ledger_token(self, token: str) -> str:
        """The token the store's ledger knows a write by, from the one it was sent with."""
        ...

    async def write(self, url: str, ops: Sequence[KvOp], token: str | None) -> TxnResult: ...

    async def read(self, url: str, keys: Sequence[str]) -> ReadResult: ...

    async def get(self, url: str, key: str) -> CallResult[GetReply]: ...

    async def singleton_write(self, url: str, op: KvOp) -> CallResult[WriteReply]: ...

    async def scan(self, url: str, start: str, end: str | None, limit: int) -> ScanResult: ...


def op_kind(steps: Sequence[type]) -> str:
    """What an operation was, from the steps its script took (for the per-kind counts)."""
    if Put in steps:
        return "singleton-write"
    if Get in steps:
        return "get"
    if ScanKeys in steps:
        return "scan"
    if Write in steps:
        return "interactive-txn" if Read in steps else "write-txn"
    return "read-txn"


def _identity(value: Any) -> Any:
    """The unique written value a read value shows last: a register's value, a list's last
    element (None: nothing identifiable)."""
    if isinstance(value, list):
        return value[-1] if value else None
    return value if isinstance(value, int | str) else None


def written(op: Op) -> list[tuple[str, Any]]:
    """``(key, unique value)`` of every write micro-op of a ``txn`` op (deletes have none)."""
    if op.f != "txn" or not isinstance(op.value, list):
        return []
    return [
        (k, v)
        for f, k, v in op.value
        if f in ("append", "w") and isinstance(v, int | str) and isinstance(k, str)
    ]


class _Runner:
    def __init__(
        self,
        config: RunConfig,
        cluster: LocalCluster,
        workload: Workload,
        transport: Transport | None = None,
    ) -> None:
        """``transport``: how steps are sent (None: the HTTP API over the session each call
        is given)."""
        self.config = config
        self.cluster = cluster
        self.workload = workload
        self.transport: Transport | None = None
        self.stamps = True
        if transport is not None:
            self.use(transport)
        self.history = History()
        self.rng = random.Random(config.seed)
        self._next_process = config.clients
        self._next_token = 0
        self.tokens: dict[int, list[str]] = {}  # invoke index -> its write attempts' tokens
        self.singletons: dict[int, KvOp] = {}  # invoke index -> its singleton write
        self.kinds: dict[str, Counter[str]] = {}  # op kind -> completion type -> count
        self.seen: dict[tuple[str, Any], tuple[int, ...]] = {}  # (key, value) -> item ts read
        self.seen_twice: list[Anomaly] = []
        self.until = 0.0  # the load's end (time.monotonic()): no re-runs after it
        self.unresolved = 0  # info writes neither the ledger nor the reads could place

    def use(self, transport: Transport) -> None:
        """Send every step through ``transport`` from now on."""
        self.transport = transport
        self.stamps = transport.stamps

    @property
    def urls(self) -> list[str]:
        """Every process serves the API: nodes coordinate too (their own partitions by function
        call), so the load goes through both kinds of gateway. Read afresh: the
        ``replace-node`` nemesis adds and removes nodes during the run."""
        return [spec.url for spec in self.cluster.processes()]

    def fresh_process(self) -> int:
        self._next_process += 1
        return self._next_process

    async def run_script(
        self, session: aiohttp.ClientSession, process: int, f: str, value: Any, script: Script
    ) -> tuple[str, Op]:
        """Run one operation; returns its kind and its completion."""
        invoke = self.history.invoke(process, f, value)
        rng = random.Random(self.rng.random())
        completion, steps, last = await self._drive(session, script, rng, invoke.index)
        reasons = None
        if (  # the failure is that write's: keep its per-op reasons
            last is not None
            and last.outcomes
            and completion.type != "ok"
            and last.error is not None
            and completion.error == last.error.name
        ):
            reasons = [outcome.code.value for outcome in last.outcomes]
        done = self.history.complete(
            invoke,
            completion.type,  # type: ignore[arg-type]
            completion.value,
            # No ts from a transport whose answers carry none (resolve takes it from the ledger)
            ts=completion.ts if self.stamps else None,
            txn_id=completion.txn_id or None,  # "": the answer named no transaction
            error=completion.error,
            reasons=reasons,
        )
        kind = op_kind(steps)
        self.kinds.setdefault(kind, Counter())[done.type] += 1
        return kind, done

    async def _drive(
        self,
        session: aiohttp.ClientSession,
        script: Script,
        rng: random.Random,
        index: int,
    ) -> tuple[Completion, list[type], Any]:
        """Run ``script`` to its completion; also the kinds of its steps and the answer to its
        last write transaction (whose per-op reasons the history keeps)."""
        answer: Any = None
        steps: list[type] = []
        written_last: TxnResult | None = None  # the last write transaction's answer
        reruns = 0
        transport = self.transport or http_client.HttpTransport(session)
        while True:
            try:
                step = script.send(answer)
            except StopIteration as done:
                result: Completion = done.value
                return result, steps, written_last
            steps.append(type(step))
            url = rng.choice(self.urls)
            if isinstance(step, Read):
                answer = await transport.read(url, step.keys)
            elif isinstance(step, Write):
                token = step.token
                if token is None:
                    self._next_token += 1
                    token = f"run{self.config.seed}-{self._next_token}"
                self.tokens.setdefault(index, []).append(transport.ledger_token(token))
                answer = await self._write(transport, url, step.ops, token, rng)
            elif isinstance(step, Get):
                answer = await transport.get(url, step.key)
            elif isinstance(step, Put):
                self.singletons[index] = step.op
                answer = await transport.singleton_write(url, step.op)
            elif isinstance(step, ScanKeys):
                answer = await transport.scan(url, step.start, step.end, step.limit)
            elif isinstance(step, Rerun):  # the SDK's run: again after a backoff, bounded
                reruns += 1
                answer = reruns < SDK_RUN_ATTEMPTS_MAX and time.monotonic() < self.until
                if answer:
                    await asyncio.sleep(RetryPolicy().backoff_s(reruns - 1, rng))
            else:  # pragma: no cover - every step kind is handled above
                raise TypeError(f"unknown step {step!r}")
            if isinstance(answer, TxnResult):
                written_last = answer
            self._observe(answer)

    def _observe(self, answer: Any) -> None:
        """Remember the timestamp of every item read, by the value that identifies its last
        write (see the module); the same value seen at two timestamps is an anomaly."""
        if self.workload.name not in OBSERVED:
            return
        items: list[ItemView] = []
        if isinstance(answer, ReadResult):
            items = [
                ItemView(key=e.key, value=e.value, version=e.version, ts=e.ts)
                for e in answer.items
                if e.exists
            ]
        elif isinstance(answer, CallResult) and isinstance(answer.reply, GetReply):
            items = [answer.reply.item] if answer.reply.item is not None else []
        elif isinstance(answer, ScanResult) and answer.page is not None:
            items = list(answer.page.items)
        for item in items:
            identity = _identity(self.workload.item_value(item))
            if identity is None or item.ts == _ZERO_TS:
                continue
            ts = tuple(item.ts)
            before = self.seen.setdefault((item.key, identity), ts)
            if before != ts:
                self.seen_twice.append(
                    Anomaly(
                        "read-ts-mismatch",
                        f"{item.key!r} showing {identity!r} as its last write was read at ts "
                        f"{before} and at ts {ts}",
                        (),
                    )
                )

    async def _write(
        self,
        transport: Transport,
        url: str,
        ops: Sequence[KvOp],
        token: str,
        rng: random.Random,
    ) -> TxnResult:
        result = await transport.write(url, ops, token)
        retried = False
        for _ in range(TOKEN_RETRIES_MAX):
            if result.error is None or not _unknown(result.error):
                break
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            others = [u for u in self.urls if u != url] or self.urls
            result = await transport.write(rng.choice(others), ops, token)
            retried = True
        if result.error is ErrorCode.TransactionInProgress or (
            # A retry refused without running (Unavailable, Overloaded, ...) says nothing of
            # the earlier, ambiguous attempt: the outcome stays unknown. A cancellation is the
            # token's recorded answer and stands.
            retried
            and result.error is not None
            and result.error is not ErrorCode.TransactionCanceled
            and result.error is not ErrorCode.IdempotencyMismatch
        ):
            result = dataclasses.replace(result, error=ErrorCode.OutcomeUnknown)
        return result

    async def resolve(self, session: aiohttp.ClientSession) -> tuple[History, list[Anomaly]]:
        """The history with committed ``info`` writes given their commit ts, and the writes
        whose recorded answer the ledger (or what was read) contradicts (see the module)."""
        completions = {invoke.index: done for invoke, done in self.history.pairs()}
        slots = asyncio.Semaphore(RESOLVE_CALLS_MAX)

        async def outcome(token: str) -> dict[str, Any] | None:
            async with slots:
                return await http_client.txn_outcome(session, self.urls[0], token)

        pairs = [(i, t) for i in self.tokens if i in completions for t in self.tokens[i]]
        records = await asyncio.gather(*(outcome(token) for _, token in pairs))
        by_index: dict[int, list[tuple[str, dict[str, Any] | None]]] = {}
        for (index, token), record in zip(pairs, records, strict=True):
            by_index.setdefault(index, []).append((token, record))
        ops = list(self.history.ops)
        wrong: list[Anomaly] = list(self.seen_twice)
        for index, attempts in by_index.items():
            done = completions[index]
            committed = [
                (token, r)
                for token, r in attempts
                if r is not None and r.get("state") == "COMMITTED"
            ]
            where = f"op {done.index} (tokens {[token for token, _ in attempts]})"
            if len(committed) > 1:
                wrong.append(
                    Anomaly("committed-twice", f"{where}: two attempts committed", (done,))
                )
            record = committed[-1][1] if committed else None
            last = record is not None and committed[-1][0] == attempts[-1][0]
            if record is not None and (
                done.type == "info"
                # an answer without ts and txn id (DynamoDB's): the ledger's, if its own token
                or (done.type == "ok" and last and not self.stamps and done.txn_id is None)
            ):
                ops[done.index] = dataclasses.replace(
                    done, ts=tuple(http_client.parse_ts(record.get("ts"))), txn_id=record["txn_id"]
                )
            elif done.type == "ok" and not (
                record is not None and last and record.get("txn_id") == done.txn_id
            ):
                wrong.append(Anomaly("ok-not-committed", f"{where} answered ok", (done,)))
            elif done.type == "fail" and committed:
                wrong.append(Anomaly("fail-but-committed", f"{where} answered fail", (done,)))
        wrong += self._resolve_by_reads(ops, completions)
        return History.from_ops(ops), wrong

    def _resolve_by_reads(self, ops: list[Op], completions: dict[int, Op]) -> list[Anomaly]:
        """Place ``info`` writes still without ts by the item timestamps read (see the module),
        and check every write against them; fills ``self.unresolved``."""
        wrong: list[Anomaly] = []
        self.unresolved = 0
        if self.workload.name not in OBSERVED:
            return wrong
        for invoked, done in completions.items():
            current = ops[done.index]
            pairs = written(current)
            seen = {self.seen[p] for p in pairs if p in self.seen}
            where = f"op {done.index} ({', '.join(f'{k}={v}' for k, v in pairs)})"
            if current.type == "ok" and current.ts is not None and seen - {current.ts}:
                wrong.append(
                    Anomaly(
                        "read-ts-mismatch",
                        f"{where} committed at ts {current.ts}, read as the last write at ts "
                        f"{sorted(seen)}",
                        (current,),
                    )
                )
            elif current.type == "fail" and seen:
                wrong.append(Anomaly("fail-but-read", f"{where} answered fail, read", (current,)))
            elif current.type == "info" and current.ts is None:
                if len(seen) == 1:
                    ops[done.index] = dataclasses.replace(current, ts=next(iter(seen)))
                elif len(seen) > 1:
                    wrong.append(
                        Anomaly(
                            "read-ts-mismatch", f"{where} read at ts {sorted(seen)}", (current,)
                        )
                    )
                elif pairs or invoked in self.singletons:
                    self.unresolved += 1
        return wrong

    async def client(self, session: aiohttp.ClientSession, index: int, until: float) -> None:
        process = index
        rng = random.Random(self.rng.random())
        for _ in range(OPS_PER_CLIENT_MAX):
            if time.monotonic() >= until:
                return
            f, value, script = self.workload.script(rng)
            kind, done = await self.run_script(session, process, f, value, script)
            if done.type == "info":
                process = self.fresh_process()
                if kind == "singleton-write":
                    await self._follow_up(session, process, done)

    async def _follow_up(self, session: aiohttp.ClientSession, process: int, done: Op) -> None:
        """Read the key of an ``info`` singleton write until a get answers, so that the write,
        if it applied, is seen with its timestamp before others overwrite it."""
        key = next((k for _, k, _ in done.value), None) if isinstance(done.value, list) else None
        if not isinstance(key, str):
            return
        for _ in range(FOLLOW_UP_GETS_MAX):
            f, value, script = self.workload._get(key)  # the simulator's own get script
            _, read = await self.run_script(session, process, f, value, script)
            if read.type == "ok":
                return
            await asyncio.sleep(FOLLOW_UP_PAUSE_S)

    async def finals(self, session: aiohttp.ClientSession) -> None:
        for f, value, script in self.workload.final_scripts():
            await self.run_script(session, self.fresh_process(), f, value, script)


async def _setup(session: aiohttp.ClientSession, url: str, workload: Workload) -> None:
    ops = workload.setup_ops()
    if ops:
        result = await http_client.write(session, url, ops, None)
        if not result.committed:
            raise RuntimeError(f"setup transaction failed: {result.error}")


async def _settled(cluster: LocalCluster) -> bool:
    """No intent and no open ledger record on any node, within ``SETTLE_TIMEOUT_S``."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        statuses = await cluster.status_async(rates=False)
        nodes = [s for s in statuses if s.role == "node"]
        if all(s.healthy for s in nodes) and all(
            (s.intents or 0) == 0 and all(p.open_ledger_records == 0 for p in (s.partitions or ()))
            for s in nodes
        ):
            return True
        await asyncio.sleep(0.2)  # polling the nodes' own counts, bounded by the deadline
    return False


def _unknown(error: ErrorCode) -> bool:
    """An answer that leaves the write's outcome open: retry it with the same token."""
    return error.ambiguous or error is ErrorCode.TransactionInProgress


def _check(
    workload: Workload, history: History, wrong: list[Anomaly], unresolved: int = 0
) -> CheckResult:
    """Check ``history`` as the simulator does (``history`` already unanchored)."""
    if workload.name == "set":
        result = sets.check(history)
    else:
        total = BANK_TOTAL if workload.name == "bank" else None
        result = check_all(history, workload.name, MODEL, total=total)
    if unresolved:
        result.notes.append(
            f"{unresolved} info writes got no ts (no committed token record, never read as "
            "the last write): if any applied, the ts-order replay cannot place it"
        )
    if wrong:
        result.anomalies.extend(wrong)
        result.valid = False
    return result


async def _run(config: RunConfig) -> int:
    out = config.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    replicated = config.replication_factor > 1
    cluster = LocalCluster.create(
        out / "cluster",
        # A move needs a node holding no copy of the partition: one more than the replicas.
        nodes=max(RUN_NODES, config.replication_factor + 1)
        if "move" in config.nemeses
        else RUN_NODES,
        coordinators=0 if replicated else RUN_COORDINATORS,
        partitions=RUN_PARTITIONS,
        replication_factor=config.replication_factor,
    )
    timing = "".join(f"{name} = {value}\n" for name, value in RUN_TIMING.items())
    with (out / "cluster" / "cluster.toml").open("a", encoding="utf-8") as file:
        file.write(f"\n[timing]\n{timing}")
    cluster = LocalCluster.open(out / "cluster")
    os.environ.update(CHAOS_ENV)
    name = "rw-register" if config.workload == "register" else config.workload
    workload = make_workload(name, KEYS, BANK_TOTAL, every_kind=config.every_kind)
    runner = _Runner(config, cluster, workload)
    partition_of = cluster.config.cluster_map.partitions.partition_of
    store_key: Callable[[str], str] = str  # a workload key's store key (DynamoDB: its item's)
    keyed = None if config.workload == "set" else {partition_of(k) for k in workload.keys}
    nemesis = Nemesis(
        cluster,
        config.nemeses,
        random.Random(config.seed + 1),
        cluster.config.secret(),
        partitions=keyed,
    )
    settled = False
    started = time.monotonic()
    load_ns = (0, 0)  # the load's start and end (time.monotonic_ns())
    dynamo: DynamoTransport | None = None
    try:
        await asyncio.to_thread(cluster.up)
        headers = {"Authorization": f"Bearer {cluster.admin_token()}"}
        connector = aiohttp.TCPConnector(limit=config.clients * 2)
        async with http_client.new_session(headers=headers, connector=connector) as session:
            if config.client == "dynamodb":
                # boto3 is imported only for a DynamoDB run
                from chaos.dynamodb_client import DynamoTransport  # noqa: PLC0415

                dynamo = DynamoTransport(cluster.admin_token(), workers=config.clients + 1)
                await dynamo.setup(runner.urls[0], workload)
                runner.use(dynamo)
                store_key = dynamo.store_key
                keyed = {partition_of(store_key(k)) for k in workload.keys}
                nemesis.partitions = frozenset(keyed)
            else:
                await _setup(session, runner.urls[0], workload)
            until = time.monotonic() + config.duration_s
            runner.until = until
            load_ns = (time.monotonic_ns(), time.monotonic_ns())
            try:
                await asyncio.gather(
                    nemesis.run(until),
                    *(runner.client(session, i, until) for i in range(config.clients)),
                )
                # The operations in flight at the load's end complete before this: their
                # acknowledgements count for the failover figures too.
                load_ns = (load_ns[0], time.monotonic_ns())
            finally:
                await nemesis.heal()
            settled = await _settled(cluster)
            await runner.finals(session)
            resolved, wrong = await runner.resolve(session)
    finally:
        if dynamo is not None:  # its worker threads end within their calls' bounds
            await asyncio.to_thread(dynamo.close)
        await asyncio.to_thread(cluster.down)
        if replicated:  # etcd's data is a 64 MB WAL; its log stays with the others
            shutil.rmtree(cluster.etcd().member_dir, ignore_errors=True)
    checked = unanchor_reads(resolved)
    result = _check(workload, checked, wrong, runner.unresolved)
    resolved.save(out / "history.jsonl")
    if checked is not resolved:
        checked.save(out / "history-checked.jsonl")
    counts = _counts(resolved.ops)
    kinds = {kind: dict(sorted(c.items())) for kind, c in sorted(runner.kinds.items())}
    summary = {
        "workload": config.workload,
        "nemeses": ",".join(config.nemeses) or "none",
        "seed": config.seed,
        "duration_s": config.duration_s,
        "clients": config.clients,
        "elapsed_s": round(time.monotonic() - started, 1),
        "settled": settled,
        "faults": nemesis.counts,
        "mutants": os.environ.get("KVSTORE_CHAOS_MUTANTS", ""),
        "every_kind": config.every_kind,
        "client": config.client,
        **counts,
        "kinds": kinds,
        "failures": failure_split(resolved, nemesis.windows)["by_code"],
    }
    failover: list[Unavailability] = []
    if replicated:
        failover = unavailability(
            resolved,
            nemesis.windows,
            lambda key: partition_of(store_key(key)),
            start_ns=load_ns[0],
            end_ns=load_ns[1],
            keyed=keyed,
        )
        summary["replication_factor"] = config.replication_factor
        summary["unavailability_max_s"] = longest_by_kind(failover)
    if nemesis.problems:
        summary["restart_problems"] = nemesis.problems
    write_report(
        out,
        title=f"kvstore chaos run: {config.workload} ({config.client}), {summary['nemeses']}",
        history=resolved,
        result=result,
        faults=nemesis.windows,
        summary=summary,
        checked=checked,
        failover=failover,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    ok = result.valid is True and settled and not nemesis.problems
    print(_kinds_line(kinds), flush=True)
    print(failures_text(resolved, nemesis.windows, timeline=False), end="", flush=True)
    print(failover_text(failover, load_ns[0]), end="", flush=True)
    for problem in nemesis.problems:
        print(f"nemesis: {problem}", flush=True)
    label = config.workload if config.client == "http" else f"{config.workload} via {config.client}"
    line = verdict_line(label, resolved, result)
    if not settled:
        line += f" — did not settle within {SETTLE_TIMEOUT_S:g} s (intents or open records left)"
    if nemesis.problems:
        line += " — the cluster did not come back after a fault"
    print(line, flush=True)
    return 0 if ok else 1


def _kinds_line(kinds: dict[str, dict[str, int]]) -> str:
    """``ops by kind: get 812 (ok 800, fail 12), ...``."""
    parts = [
        f"{kind} {sum(c.values())} ({', '.join(f'{t} {n}' for t, n in c.items())})"
        for kind, c in kinds.items()
    ]
    return "ops by kind: " + "; ".join(parts)


def _counts(ops: Sequence[Op]) -> dict[str, int]:
    counts = {"ok": 0, "fail": 0, "info": 0}
    for op in ops:
        if op.type in counts:
            counts[op.type] += 1
    return counts


async def _run_stoppable(config: RunConfig) -> int:
    """``_run``, cancelled by SIGTERM or SIGINT so that its cleanup (heal, stop the cluster)
    runs instead of leaving processes behind."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: task.cancel() if task else None)
    try:
        return await _run(config)
    except asyncio.CancelledError:
        print("chaos run: stopped by a signal; the cluster was shut down", flush=True)
        return 130


def run(config: RunConfig) -> int:
    """Run once; 0 when every checker passed and the cluster settled."""
    return asyncio.run(_run_stoppable(config))
