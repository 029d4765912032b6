"""``python -m chaos run``: a real cluster, concurrent clients, faults, a checked history.

Theory of operation
-------------------
One run, all on 127.0.0.1 and bounded in count and time:

1. **Cluster**: a fresh local cluster (:mod:`kvstore.localcluster`) of 3 storage nodes and 2
   coordinators in ``<out>/cluster``, with short recovery deadlines (``RUN_TIMING``) so that a
   run settles in seconds, started with the chaos control on (``KVSTORE_CHAOS_CONTROL=1``) and
   any mutants named in ``KVSTORE_MUTANTS`` (the test-the-tests mode).
2. **Load**: ``clients`` workers run the workload's scripts (:mod:`chaos.sim.workloads`, the
   simulator's own) against a random coordinator over HTTP (:mod:`chaos.http_client`), for
   ``duration`` seconds, recording every operation in a :class:`~chaos.history.History`. Every
   write carries an idempotency token (as the SDK's do); an ambiguous answer, or
   ``TransactionInProgress`` (the same token still running elsewhere), is retried with the same
   token, at most ``TOKEN_RETRIES_MAX`` times, on the other coordinator; what stays unknown is
   ``info``.
3. **Faults**: meanwhile the :class:`~chaos.nemesis.Nemesis` injects the chosen faults.
4. **Heal and settle**: every fault is healed, then the run waits (bounded by
   ``SETTLE_TIMEOUT_S``) until no node holds an intent or an open ledger record: recovery must
   finish on its own. Not settling is a failure.
5. **Final reads** through the same scripts, then **resolution**: every write's token is looked
   up in the cluster's own ledger (``GET /v1/txn/{token}``). A committed ``info`` write gets its
   commit timestamp, so the timestamp-order replay can place it (as the simulator does with its
   omniscient view); an ``ok`` write that did not commit (or committed as another transaction)
   and a ``fail`` write that committed are anomalies. Then the cluster is stopped.
6. **Check**: the resolved history goes through the checkers of :mod:`chaos.checkers` under
   strict serializability (set: every acknowledged insert is in the final read). The report
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from chaos import http_client
from chaos.checkers import sets
from chaos.checkers.result import Anomaly, CheckResult
from chaos.checkers.suite import check_all
from chaos.history import History, Op
from chaos.nemesis import Nemesis
from chaos.report import verdict_line, write_report
from chaos.sim.workloads import Completion, Read, Script, Workload, Write, make_workload
from kvstore.coordinator.results import TxnResult
from kvstore.errors import ErrorCode
from kvstore.localcluster import LocalCluster
from kvstore.ops import Op as KvOp

__all__ = ["RunConfig", "run", "WORKLOADS", "RUN_TIMING", "RUN_CLIENTS_MAX", "RUN_DURATION_S_MAX"]

WORKLOADS: Final = ("list-append", "bank", "register", "set")
MODEL: Final = "strict-serializable"
KEYS: Final = 8
BANK_TOTAL: Final = 1_000
TOKEN_RETRIES_MAX: Final = 5
RESOLVE_CALLS_MAX: Final = 16  # token lookups in flight while resolving the history
SETTLE_TIMEOUT_S: Final = 30.0
OPS_PER_CLIENT_MAX: Final = 100_000
RUN_CLIENTS_MAX: Final = 64
RUN_DURATION_S_MAX: Final = 3_600.0
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


class _Runner:
    def __init__(self, config: RunConfig, cluster: LocalCluster, workload: Workload) -> None:
        self.config = config
        self.cluster = cluster
        self.workload = workload
        self.history = History()
        self.rng = random.Random(config.seed)
        self.urls = [spec.url for spec in cluster.processes() if spec.role == "coordinator"]
        self._next_process = config.clients
        self._next_token = 0
        self.tokens: dict[int, str] = {}  # invoke index -> the token of its write step

    def fresh_process(self) -> int:
        self._next_process += 1
        return self._next_process

    async def run_script(
        self, session: aiohttp.ClientSession, process: int, f: str, value: Any, script: Script
    ) -> str:
        """Run one operation; returns its completion type."""
        invoke = self.history.invoke(process, f, value)
        rng = random.Random(self.rng.random())
        completion = await self._drive(session, script, rng, invoke.index)
        self.history.complete(
            invoke,
            completion.type,  # type: ignore[arg-type]
            completion.value,
            ts=completion.ts,
            txn_id=completion.txn_id,
            error=completion.error,
        )
        return completion.type

    async def _drive(
        self, session: aiohttp.ClientSession, script: Script, rng: random.Random, index: int
    ) -> Completion:
        answer: Any = None
        while True:
            try:
                step = script.send(answer)
            except StopIteration as done:
                result: Completion = done.value
                return result
            url = rng.choice(self.urls)
            if isinstance(step, Read):
                answer = await http_client.read(session, url, step.keys)
            elif isinstance(step, Write):
                token = step.token
                if token is None:
                    self._next_token += 1
                    token = f"run{self.config.seed}-{self._next_token}"
                self.tokens[index] = token
                answer = await self._write(session, url, step.ops, token, rng)

    async def _write(
        self,
        session: aiohttp.ClientSession,
        url: str,
        ops: Sequence[KvOp],
        token: str,
        rng: random.Random,
    ) -> TxnResult:
        result = await http_client.write(session, url, ops, token)
        for _ in range(TOKEN_RETRIES_MAX):
            if result.error is None or not _unknown(result.error):
                break
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            others = [u for u in self.urls if u != url] or self.urls
            result = await http_client.write(session, rng.choice(others), ops, token)
        if result.error is ErrorCode.TransactionInProgress:  # still unknown: record it as such
            result = dataclasses.replace(result, error=ErrorCode.OutcomeUnknown)
        return result

    async def resolve(self, session: aiohttp.ClientSession) -> tuple[History, list[Anomaly]]:
        """The history with committed ``info`` writes given their commit ts, and the writes
        whose recorded answer the ledger contradicts (see the module docstring)."""
        completions = {invoke.index: done for invoke, done in self.history.pairs()}
        slots = asyncio.Semaphore(RESOLVE_CALLS_MAX)

        async def outcome(token: str) -> dict[str, Any] | None:
            async with slots:
                return await http_client.txn_outcome(session, self.urls[0], token)

        indexes = [i for i in self.tokens if i in completions]
        records = await asyncio.gather(*(outcome(self.tokens[i]) for i in indexes))
        ops = list(self.history.ops)
        wrong: list[Anomaly] = []
        for index, record in zip(indexes, records, strict=True):
            done = completions[index]
            committed = record is not None and record.get("state") == "COMMITTED"
            where = f"op {done.index} (token {self.tokens[index]})"
            if done.type == "info" and committed and record is not None:
                ops[done.index] = dataclasses.replace(
                    done, ts=tuple(http_client.parse_ts(record.get("ts"))), txn_id=record["txn_id"]
                )
            elif done.type == "ok" and not (
                committed and record is not None and record.get("txn_id") == done.txn_id
            ):
                wrong.append(Anomaly("ok-not-committed", f"{where} answered ok", (done,)))
            elif done.type == "fail" and committed:
                wrong.append(Anomaly("fail-but-committed", f"{where} answered fail", (done,)))
        return History.from_ops(ops), wrong

    async def client(self, session: aiohttp.ClientSession, index: int, until: float) -> None:
        process = index
        rng = random.Random(self.rng.random())
        for _ in range(OPS_PER_CLIENT_MAX):
            if time.monotonic() >= until:
                return
            f, value, script = self.workload.script(rng)
            if await self.run_script(session, process, f, value, script) == "info":
                process = self.fresh_process()

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


def _check(workload: Workload, history: History, wrong: list[Anomaly]) -> CheckResult:
    if workload.name == "set":
        result = sets.check(history)
    else:
        total = BANK_TOTAL if workload.name == "bank" else None
        result = check_all(history, workload.name, MODEL, total=total)
    if wrong:
        result.anomalies.extend(wrong)
        result.valid = False
    return result


async def _run(config: RunConfig) -> int:
    out = config.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cluster = LocalCluster.create(out / "cluster", nodes=3, coordinators=2, partitions=8)
    timing = "".join(f"{name} = {value}\n" for name, value in RUN_TIMING.items())
    with (out / "cluster" / "cluster.toml").open("a", encoding="utf-8") as file:
        file.write(f"\n[timing]\n{timing}")
    cluster = LocalCluster.open(out / "cluster")
    os.environ.update(CHAOS_ENV)
    name = "rw-register" if config.workload == "register" else config.workload
    workload = make_workload(name, KEYS, BANK_TOTAL)
    runner = _Runner(config, cluster, workload)
    nemesis = Nemesis(
        cluster, config.nemeses, random.Random(config.seed + 1), cluster.config.secret()
    )
    settled = False
    started = time.monotonic()
    try:
        await asyncio.to_thread(cluster.up)
        headers = {"Authorization": f"Bearer {cluster.admin_token()}"}
        connector = aiohttp.TCPConnector(limit=config.clients * 2)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
            await _setup(session, runner.urls[0], workload)
            until = time.monotonic() + config.duration_s
            try:
                await asyncio.gather(
                    nemesis.run(until),
                    *(runner.client(session, i, until) for i in range(config.clients)),
                )
            finally:
                await nemesis.heal()
            settled = await _settled(cluster)
            await runner.finals(session)
            resolved, wrong = await runner.resolve(session)
    finally:
        await asyncio.to_thread(cluster.down)
    result = _check(workload, resolved, wrong)
    resolved.save(out / "history.jsonl")
    counts = _counts(resolved.ops)
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
        **counts,
    }
    write_report(
        out,
        title=f"kvstore chaos run: {config.workload}, {summary['nemeses']}",
        history=resolved,
        result=result,
        faults=nemesis.windows,
        summary=summary,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    ok = result.valid is True and settled
    line = verdict_line(config.workload, resolved, result)
    if not settled:
        line += f" — did not settle within {SETTLE_TIMEOUT_S:g} s (intents or open records left)"
    print(line, flush=True)
    return 0 if ok else 1


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
