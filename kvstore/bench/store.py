"""The store's side of ``kvctl bench``: a temporary local cluster driven through the SDK.

Theory of operation
-------------------
:class:`TempCluster` creates a local cluster (:class:`~kvstore.localcluster.LocalCluster`:
by default 3 storage nodes, each serving the API and coordinating, no standalone coordinator,
the default partitions and durability) in a temporary directory, starts it, and on exit stops
every process and removes the directory, whatever happened. :attr:`TempCluster.shape` says
what ran ("3 nodes", "3 nodes, 1 coordinator").

:func:`run` loads the accounts, then runs ``clients`` concurrent callers on one SDK client (one
event loop) for a warm-up and then the measured window. Each caller loops over its workload's
step (:mod:`kvstore.bench.workloads`), timing each transaction from its first attempt to its
answer. The client is made with one attempt per call: the caller does its own retries so that it
can count them, the way pgbench counts its own. A transaction cancelled only for retryable
reasons (a conflict), or refused as retryable (``Unavailable``, ``Overloaded``, a read's
conflict), is tried again at once (after a jittered pause that grows from 1 ms) up to
``BENCH_TXN_ATTEMPTS_MAX`` attempts; an unknown outcome is tried again with the same
idempotency token, so it never applies twice. A transfer whose balance condition refused it is
a completed transaction that moved nothing, as in PostgreSQL.

``mode`` picks the SDK mode: ``native`` (the default, the fastest) sends each call as msgpack
RPC to the node holding its data, which coordinates; ``direct`` embeds a coordinator in the
benchmark's process; ``gateway`` goes through the HTTP API (of the coordinator process when
there is one, else of the first node).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kvstore.bench.results import RunResult, summarize
from kvstore.bench.workloads import AMOUNT_MAX, INITIAL_BALANCE, Workload, account_key
from kvstore.client import Client, RetryPolicy, connect
from kvstore.errors import ErrorCode, KvError, ValidationError
from kvstore.limits import (
    BENCH_LOAD_BATCH_ITEMS,
    BENCH_PROGRESS_INTERVAL_MS,
    BENCH_RETRY_PAUSE_BASE_MS,
    BENCH_RETRY_PAUSE_CAP_MS,
    BENCH_SERVER_START_TIMEOUT_MS,
    BENCH_TXN_ATTEMPTS_MAX,
)
from kvstore.localcluster import LocalCluster

__all__ = ["MODES", "TempCluster", "temp_cluster", "load", "run", "total_balance"]

MODES: Final = ("native", "direct", "gateway")
_PAUSE_BASE_S: Final = BENCH_RETRY_PAUSE_BASE_MS / 1000
_PAUSE_CAP_S: Final = BENCH_RETRY_PAUSE_CAP_MS / 1000
_PROGRESS_INTERVAL_S: Final = BENCH_PROGRESS_INTERVAL_MS / 1000
_ONE_ATTEMPT: Final = RetryPolicy(attempts_max=1)


@dataclass
class TempCluster:
    """A running temporary cluster: its directory and the :class:`LocalCluster`."""

    root: Path
    cluster: LocalCluster

    @property
    def shape(self) -> str:
        """What runs, e.g. "3 nodes" or "3 nodes, 1 coordinator"."""
        config = self.cluster.config
        parts = [f"{len(config.nodes)} node{'s' if len(config.nodes) != 1 else ''}"]
        if config.replication.replicated:
            parts.append(f"replication factor {config.replication.factor}")
        if config.coordinators:
            count = len(config.coordinators)
            parts.append(f"{count} coordinator{'s' if count != 1 else ''}")
        return ", ".join(parts)

    def connect(self, mode: str) -> Client:
        """An SDK client in ``mode`` that makes one attempt per call."""
        if mode == "native":
            return connect(cluster=self.root, mode="native", retry=_ONE_ATTEMPT)
        if mode == "direct":
            return connect(cluster=self.root, mode="direct", retry=_ONE_ATTEMPT)
        if mode == "gateway":
            cluster = self.cluster
            return connect(cluster.api_url(), cluster.admin_token(), retry=_ONE_ATTEMPT)
        raise ValidationError("mode", f"must be one of {', '.join(MODES)}")


@contextmanager
def temp_cluster(
    *, nodes: int = 3, coordinators: int = 0, replication_factor: int = 1
) -> Iterator[TempCluster]:
    """A fresh local cluster in a temporary directory (with its private etcd when replicated),
    stopped and removed on exit."""
    parent = Path(tempfile.mkdtemp(prefix="kvstore-bench-"))
    try:
        cluster = LocalCluster.create(
            parent / "cluster",
            nodes=nodes,
            coordinators=coordinators,
            replication_factor=replication_factor,
        )
        try:
            cluster.up(ready_timeout_ms=BENCH_SERVER_START_TIMEOUT_MS)
            yield TempCluster(cluster.root, cluster)
        finally:
            cluster.down()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


async def load(kv: Client, accounts: int) -> None:
    """Put every account at ``{"balance": INITIAL_BALANCE}``, a batch per transaction."""
    for start in range(0, accounts, BENCH_LOAD_BATCH_ITEMS):
        ops = [
            {"op": "put", "key": account_key(i), "value": {"balance": INITIAL_BALANCE}}
            for i in range(start, min(accounts, start + BENCH_LOAD_BATCH_ITEMS))
        ]
        await kv.transact(ops)


async def total_balance(kv: Client, accounts: int) -> int:
    """The sum of every account's balance, read a batch at a time (money is conserved when it
    equals ``accounts * INITIAL_BALANCE``)."""
    total = 0
    for start in range(0, accounts, BENCH_LOAD_BATCH_ITEMS):
        keys = [account_key(i) for i in range(start, min(accounts, start + BENCH_LOAD_BATCH_ITEMS))]
        for item in await kv.read(keys):
            if item is not None and isinstance(item.value, dict):
                balance = item.value.get("balance")
                total += balance if isinstance(balance, int) else 0
    return total


@dataclass
class _Tally:
    measuring: bool = False
    latencies_us: list[int] = field(default_factory=list)
    condition_failed: int = 0
    retried: int = 0
    retries: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class _Caller:
    """One concurrent caller: draws a step and runs it to its answer, retrying as pgbench does."""

    def __init__(self, kv: Client, workload: Workload, rng: random.Random, tally: _Tally) -> None:
        self.kv = kv
        self.workload = workload
        self.rng = rng
        self.tally = tally

    def _two_accounts(self) -> tuple[str, str]:
        n = self.workload.accounts
        a = self.rng.randrange(n)
        b = (a + 1 + self.rng.randrange(n - 1)) % n
        return account_key(a), account_key(b)

    async def step(self) -> None:
        kind = self.workload.kind
        rng = self.rng
        if kind == "get":
            key = account_key(rng.randrange(self.workload.accounts))
            await self._attempts(lambda _token: self.kv.get(key))
        elif kind == "put":
            key = account_key(rng.randrange(self.workload.accounts))
            value = {"balance": rng.randrange(INITIAL_BALANCE * 2)}
            await self._attempts(lambda _token: self.kv.put(key, value))
        elif kind == "read2":
            keys = list(self._two_accounts())
            await self._attempts(lambda _token: self.kv.read(keys))
        elif kind == "txn1":
            key = account_key(rng.randrange(self.workload.accounts))
            ops = [
                {"op": "put", "key": key, "value": {"balance": rng.randrange(INITIAL_BALANCE * 2)}}
            ]
            await self._attempts(lambda token: self.kv.transact(ops, token=token))
        elif kind == "read1":
            key = account_key(rng.randrange(self.workload.accounts))
            await self._attempts(lambda _token: self.kv.read([key]))
        else:
            source, target = self._two_accounts()
            amount = rng.randint(1, AMOUNT_MAX)
            ops = [
                {
                    "op": "update",
                    "key": source,
                    "add": {"balance": -amount},
                    "if": {"path": "balance", "ge": amount},
                },
                {"op": "update", "key": target, "add": {"balance": amount}},
            ]
            await self._attempts(lambda token: self.kv.transact(ops, token=token))

    async def _attempts(self, attempt: Callable[[str | None], Awaitable[object]]) -> None:
        tally = self.tally
        started_ns = time.perf_counter_ns()
        token: str | None = None  # kept across attempts only when the outcome is unknown
        retries = 0
        while True:
            try:
                await attempt(token)
                break
            except KvError as error:
                if error.code is ErrorCode.TransactionCanceled and not error.retryable:
                    if tally.measuring:
                        tally.condition_failed += 1
                    break
                if not error.retryable or retries + 1 >= BENCH_TXN_ATTEMPTS_MAX:
                    if tally.measuring:
                        tally.failed += 1
                        tally.errors[error.code.name] = tally.errors.get(error.code.name, 0) + 1
                    return
                unknown = error.code in (ErrorCode.OutcomeUnknown, ErrorCode.TransactionInProgress)
                found = error.details.get("token")
                token = found if unknown and isinstance(found, str) else None
                retries += 1
                pause_s = min(_PAUSE_CAP_S, _PAUSE_BASE_S * 2 ** min(retries, 16))
                await asyncio.sleep(self.rng.uniform(0, pause_s))
        if tally.measuring:
            tally.latencies_us.append((time.perf_counter_ns() - started_ns) // 1000)
            if retries:
                tally.retried += 1
                tally.retries += retries


async def run(
    kv: Client,
    workload: Workload,
    *,
    clients: int,
    duration_s: float,
    warmup_s: float,
    seed: int | None = None,
    progress: Callable[[float], None] | None = None,
    detail: dict[str, str] | None = None,
) -> RunResult:
    """Run ``workload`` with ``clients`` callers: ``warmup_s`` uncounted, then ``duration_s``
    measured. Every caller finishes its transaction in flight before the result is taken."""
    tally = _Tally()
    master = random.Random(seed)
    callers = [
        _Caller(kv, workload, random.Random(master.getrandbits(64)), tally) for _ in range(clients)
    ]
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup_s
    stop_at = measure_from + duration_s
    window: list[float] = []

    async def caller_loop(caller: _Caller) -> None:
        while loop.time() < stop_at:
            await caller.step()

    async def clock() -> None:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        tally.measuring = True
        window.append(loop.time())
        while (now := loop.time()) < stop_at:
            if progress is not None:
                progress(min(1.0, (now - measure_from) / duration_s))
            await asyncio.sleep(min(_PROGRESS_INTERVAL_S, max(0.0, stop_at - now)))
        tally.measuring = False
        window.append(loop.time())
        if progress is not None:
            progress(1.0)

    async with asyncio.TaskGroup() as group:
        group.create_task(clock())
        for caller in callers:
            group.create_task(caller_loop(caller))
    measured_s = window[1] - window[0]
    details = dict(detail or {})
    if tally.errors:
        details["errors"] = ", ".join(f"{name} {n}" for name, n in sorted(tally.errors.items()))
    return summarize(
        "kvstore",
        workload.name,
        clients,
        measured_s,
        tally.latencies_us,
        condition_failed=tally.condition_failed,
        retried=tally.retried,
        retries=tally.retries,
        failed=tally.failed,
        detail=details,
    )
