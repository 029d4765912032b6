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
   ``duration`` seconds, recording every operation in a :class:`~chaos.history.History`. An
   ambiguous answer to a write with an idempotency token is retried with the same token (at most
   ``TOKEN_RETRIES_MAX`` times, on the other coordinator); what stays ambiguous is ``info``.
3. **Faults**: meanwhile the :class:`~chaos.nemesis.Nemesis` injects the chosen faults.
4. **Heal and settle**: every fault is healed, then the run waits (bounded by
   ``SETTLE_TIMEOUT_S``) until no node holds an intent or an open ledger record: recovery must
   finish on its own. Not settling is a failure.
5. **Final reads** through the same scripts, then the cluster is stopped.
6. **Check**: the history goes through the checkers of :mod:`chaos.checkers` under strict
   serializability (set: every acknowledged insert is in the final read). The report (history as
   JSON Lines, cluster logs, checker results, an HTML page) is written to ``out``; the last line
   printed is the verdict, and the exit status is 0 only when every checker passed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from chaos import http_client
from chaos.checkers.result import CheckResult
from chaos.checkers.suite import check_all
from chaos.history import History, Op
from chaos.nemesis import Nemesis
from chaos.report import verdict_line, write_report
from chaos.sim.workloads import Completion, Read, Script, Workload, Write, make_workload
from kvstore.localcluster import LocalCluster

__all__ = ["RunConfig", "run", "WORKLOADS", "RUN_TIMING", "RUN_CLIENTS_MAX", "RUN_DURATION_S_MAX"]

WORKLOADS: Final = ("list-append", "bank", "register", "set")
MODEL: Final = "strict-serializable"
KEYS: Final = 8
BANK_TOTAL: Final = 1_000
TOKEN_RETRIES_MAX: Final = 5
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

    def fresh_process(self) -> int:
        self._next_process += 1
        return self._next_process

    async def run_script(
        self, session: aiohttp.ClientSession, process: int, f: str, value: Any, script: Script
    ) -> str:
        """Run one operation; returns its completion type."""
        invoke = self.history.invoke(process, f, value)
        rng = random.Random(self.rng.random())
        completion = await self._drive(session, script, rng)
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
        self, session: aiohttp.ClientSession, script: Script, rng: random.Random
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
                answer = await self._write(session, url, step, rng)

    async def _write(
        self, session: aiohttp.ClientSession, url: str, step: Write, rng: random.Random
    ) -> Any:
        result = await http_client.write(session, url, step.ops, step.token)
        retries = 0
        while (
            step.token is not None
            and result.error is not None
            and result.error.ambiguous
            and retries < TOKEN_RETRIES_MAX
        ):
            retries += 1
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            others = [u for u in self.urls if u != url] or self.urls
            result = await http_client.write(session, rng.choice(others), step.ops, step.token)
        return result

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


def _check(workload: Workload, history: History) -> CheckResult:
    if workload.name == "set":
        from chaos.checkers import sets  # noqa: PLC0415 - only the set workload needs it

        return sets.check(history)
    name = "rw-register" if workload.name == "rw-register" else workload.name
    total = BANK_TOTAL if workload.name == "bank" else None
    return check_all(history, name, MODEL, total=total)


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
    finally:
        await asyncio.to_thread(cluster.down)
    result = _check(workload, runner.history)
    runner.history.save(out / "history.jsonl")
    counts = _counts(runner.history.ops)
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
        history=runner.history,
        result=result,
        faults=nemesis.windows,
        summary=summary,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    ok = result.valid is True and settled
    line = verdict_line(config.workload, runner.history, result)
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


def run(config: RunConfig) -> int:
    """Run once; 0 when every checker passed and the cluster settled."""
    return asyncio.run(_run(config))
