"""The storage node process: partitions on SQLite, served over msgpack RPC, with background work.

Theory of operation
-------------------
:class:`NodeService` is the thin asyncio shell around the partition cores (DESIGN sections 2, 5,
7, 8). It owns the partitions the cluster map gives its node id, one
:class:`~kvstore.storage_node.shell.PartitionShell` (core + SQLite file + group-commit loop) each.

A request arrives as an RPC call (``kvstore.rpc``), is decoded strictly (``kvstore.codec``), and is
checked for ownership (``WrongOwner`` with the map epoch) and admission (at most
``PARTITION_QUEUE_MAX`` requests in progress per partition, else a retryable ``Overloaded``). The
core runs it synchronously; the reply leaves only once every write it could depend on is durable
(``PartitionShell.durable``). Replies carry the node's hybrid clock (the RPC layer stamps them).

Background work runs every ``MAINTAIN_INTERVAL_MS``: each core's bounded ``maintain`` (cancel
PREPARING records past their deadline, expire ledger records and idempotency tokens, fold
tombstones into the watermark), then, once those writes are durable, one
:class:`~kvstore.storage_node.resolver.IntentResolution` per stale transaction and one
:class:`~kvstore.coordinator.recovery.Recovery` per decided record not yet acknowledged by every
participant; at most one of each per transaction at a time and ``BACKGROUND_ACTORS_MAX`` in all.
Requests to partitions this node owns go through :meth:`NodeService.serve` directly; others go
over RPC to their owners. After ``kill -9`` a restart reopens the files and the same loop finishes
whatever was in flight: nothing needs an operator.

HTTP: ``GET /rpc`` (WebSocket; protocol version and cluster secret checked in the handshake),
``GET /health`` (no credential: liveness, nothing secret) and ``GET /metrics`` (Prometheus
text), which needs an API bearer token of any role, exactly as a coordinator's ``/metrics`` does:
the node reads the cluster's API token file (:class:`~kvstore.api.tokens.TokenStore`, re-read
when it changes). It reads it leniently: a missing file, or one it cannot read (logged), means
every scrape is 401, never a node that refuses to serve its data. Only in a process started for
chaos runs (``KVSTORE_CHAOS_CONTROL=1``, :mod:`kvstore.chaos_control`): ``GET``/``POST /chaos``
(cluster secret), and the node's wall time, its RPC pool and its cores' mutants follow the control.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from kvstore import limits
from kvstore.api.responses import error_response
from kvstore.api.tokens import Role, TokenStore
from kvstore.chaos_control import enabled_from_env
from kvstore.codec import decode_request, encode_reply
from kvstore.config import ClusterConfig
from kvstore.coordinator.driver import ActorRunner
from kvstore.coordinator.recovery import Recovery
from kvstore.coordinator.results import RecoveryResult
from kvstore.errors import KvError, Overloaded, ValidationError, WrongOwner
from kvstore.logs import log_event
from kvstore.messages import CompleteRequest, LedgerRecord, Reply, Request, WriteRequest
from kvstore.rpc import RpcPool, RpcServer
from kvstore.storage_node.core import PartitionCore, StaleIntent
from kvstore.storage_node.metrics import CONTENT_TYPE, NodeMetrics
from kvstore.storage_node.resolver import IntentResolution
from kvstore.storage_node.shell import PartitionShell
from kvstore.storage_node.sqlite_store import SqliteStore
from kvstore.timestamps import HybridClock, PhysicalClock, random_origin, system_clock_us
from kvstore.transport import PartitionTransport
from kvstore.types import TIMESTAMP_ZERO, PartitionId, TxnId

__all__ = ["NodeService"]

_log = logging.getLogger("kvstore.storage_node")


class NodeService:
    """One storage node; see the module docstring."""

    def __init__(self, config: ClusterConfig, node_id: str) -> None:
        self.config = config
        self.spec = config.node(node_id)
        self.node_id = self.spec.node_id
        self.cluster_map = config.cluster_map
        self.secret = config.secret()
        # Test-only faults (None unless started for chaos): the wall clock every reading of time
        # goes through, blocked peers, and mutants of the cores.
        self.chaos = enabled_from_env()
        self._now_us: PhysicalClock = system_clock_us
        self._partition_config = config.partition_config
        if self.chaos is not None:
            self._now_us = self.chaos.physical_clock_us
            self._partition_config = replace(config.partition_config, mutants=self.chaos.mutants)
        self.clock = HybridClock(  # fresh origin every start
            self._now_us, random_origin(), mutants=self._partition_config.mutants
        )
        self.metrics = NodeMetrics(self.node_id)
        self.tokens = TokenStore(config.api_tokens_file, strict=False)  # for /metrics only
        self.shells: dict[PartitionId, PartitionShell] = {}
        self.fatal = asyncio.Event()
        self._lock_file: IO[str] | None = None
        self._pool = RpcPool(
            self.secret,
            on_clock=self.clock.observe,
            logger=_log,
            blocked=self.chaos.refuses if self.chaos is not None else None,
        )
        if self.chaos is not None:
            self.chaos.on_block(self._pool.disconnect)
        self._transport = PartitionTransport(
            self.cluster_map,
            self._pool,
            local=self.serve,
            local_partitions=self.cluster_map.partitions_of(self.node_id),
        )
        self._runner = ActorRunner(self._transport, self._now_us)
        self._resolving: set[tuple[PartitionId, TxnId]] = set()
        self._driving: set[TxnId] = set()
        self._rpc = RpcServer(
            handler=self.handle_rpc,
            secret=self.secret,
            clock=self.clock.now,
            on_event=self._on_rpc_event,
            logger=_log,
        )
        self._runner_web: web.AppRunner | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._started_s = time.monotonic()
        self._flush_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flush")

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the partitions, then listen on the node's address."""
        self._open_partitions()
        app = web.Application()
        app.router.add_get("/rpc", self._rpc.handle)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics_page)
        if self.chaos is not None:
            peers = [spec.address for spec in self.config.nodes.values()]
            self.chaos.mount(app, self.secret, peers)
        self._runner_web = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner_web.setup()
        host, _, port = self.spec.address.rpartition(":")
        site = web.TCPSite(self._runner_web, host, int(port), reuse_address=True)
        await site.start()
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain_loop())
        log_event(
            _log,
            "node.started",
            node=self.node_id,
            address=self.spec.address,
            epoch=self.cluster_map.epoch,
            partitions=sorted(self.shells),
            pid=os.getpid(),
        )
        if self.chaos is not None:
            log_event(
                _log,
                "chaos.enabled",
                logging.WARNING,
                node=self.node_id,
                mutants=[m.value for m in self.chaos.mutants],
            )

    async def stop(self) -> None:
        """Stop serving, let buffered writes reach disk, close everything."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        await self._runner.close()
        await self._rpc.close()
        if self._runner_web is not None:
            await self._runner_web.cleanup()
        for shell in self.shells.values():
            with contextlib.suppress(Exception):
                waiter = shell.durable()  # writes that did not force a flush (completions)
                if waiter is not None:
                    await waiter
                await shell.idle()
            shell.store.close()
        self._flush_executor.shutdown(wait=True)
        await self._pool.close()
        if self._lock_file is not None:
            self._lock_file.close()
        log_event(_log, "node.stopped", node=self.node_id)

    def _open_partitions(self) -> None:
        data_dir = self.spec.data_dir
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_file = _lock_data_dir(data_dir)
        for pid in self.cluster_map.partitions_of(self.node_id):
            store = SqliteStore.open(data_dir / f"p{pid:04d}.db")
            core = PartitionCore(pid, store, self._partition_config)
            self.shells[pid] = PartitionShell(
                pid,
                core,
                store,
                metrics=self.metrics,
                on_fatal=self._on_fatal,
                flush_executor=self._flush_executor,
            )
        self.metrics.track_partitions(
            {pid: shell.queue_depth for pid, shell in self.shells.items()},
            {pid: shell.store.intent_count for pid, shell in self.shells.items()},
        )

    def _on_fatal(self, error: BaseException) -> None:
        log_event(_log, "node.fatal", logging.CRITICAL, node=self.node_id, error=repr(error))
        self.fatal.set()

    # --- requests ------------------------------------------------------------------------

    async def handle_rpc(self, method: str, body: object, timeout_ms: int) -> object:
        """The RPC handler: decode, serve, encode; counts every answer by method and code."""
        label = self.metrics.method_label(method)
        started = time.perf_counter()
        try:
            if method == "stats":
                out: object = self.stats()
            elif method == "inspect":
                out = self.inspect(body)
            else:
                request = decode_request(method, body)
                out = encode_reply(await self.serve(request, timeout_ms))
        except KvError as error:
            self.metrics.requests.labels(label, error.code.name).inc()
            raise
        except Exception:
            self.metrics.requests.labels(label, "InternalError").inc()
            raise
        self.metrics.answered(label, time.perf_counter() - started)
        return out

    async def serve(self, request: Request, timeout_ms: int = limits.RPC_TIMEOUT_MS) -> Reply:
        """Run one request on its partition and return the reply once it is safe to release."""
        del timeout_ms  # the caller's deadline; the durability wait is bounded by one flush
        shell = self.shells.get(request.partition)
        if shell is None:
            raise self._wrong_owner(request.partition)
        if shell.in_progress >= limits.PARTITION_QUEUE_MAX:
            raise Overloaded(
                f"partition {request.partition} has {shell.in_progress} requests in progress",
                details={"partition": request.partition},
            )
        shell.in_progress += 1
        try:
            node_ts = self.clock.now() if isinstance(request, WriteRequest) else TIMESTAMP_ZERO
            step = shell.core.handle(request, self._now_us(), node_ts)
            if type(request) is CompleteRequest:
                # Advisory (the coordinator does not wait for the answer, and a lost completion
                # only means recovery re-sends commits, which are idempotent): the row rides
                # with the partition's next flush, at the latest the next maintenance tick's,
                # instead of forcing an fsync of its own.
                return step.reply
            waiter = shell.durable()
            if waiter is not None:
                await waiter
            return step.reply
        finally:
            shell.in_progress -= 1

    def _wrong_owner(self, pid: int) -> KvError:
        try:
            owner: str | None = self.cluster_map.owner_of(PartitionId(pid))
        except ValidationError:
            owner = None
        return WrongOwner(
            f"node {self.node_id} does not own partition {pid}",
            details={"epoch": self.cluster_map.epoch, "partition": pid, "owner": owner},
        )

    def stats(self) -> dict[str, object]:
        partitions = {
            str(pid): {
                "items": shell.store.item_count(),
                "intents": shell.store.intent_count(),
                "open_ledger_records": len(
                    shell.store.open_ledger_records(limits.GC_ITEMS_PER_TICK_MAX)
                ),
                "in_progress": shell.in_progress,
            }
            for pid, shell in self.shells.items()
        }
        return {
            "node": self.node_id,
            "epoch": self.cluster_map.epoch,
            "uptime_s": round(time.monotonic() - self._started_s, 3),
            "background_actors": self._runner.running,
            "partitions": partitions,
        }

    def inspect(self, body: object) -> dict[str, object]:
        """One partition in detail, for operators (``kvctl inspect``/``recover``): its counts,
        its oldest intents and its open ledger records, at most ``limit`` (1..INSPECT_ROWS_MAX)
        of each. Body: ``{"partition": P, "limit": N}``."""
        if not isinstance(body, dict) or set(body) - {"partition", "limit"}:
            raise ValidationError("body", "must be {partition, limit?}")
        pid, limit = body.get("partition"), body.get("limit", limits.INSPECT_ROWS_MAX)
        if type(pid) is not int or type(limit) is not int:
            raise ValidationError("partition", "partition and limit must be integers")
        if not 1 <= limit <= limits.INSPECT_ROWS_MAX:
            raise ValidationError("limit", f"must be 1..{limits.INSPECT_ROWS_MAX}")
        shell = self.shells.get(PartitionId(pid))
        if shell is None:
            raise self._wrong_owner(PartitionId(pid))
        store, now_us = shell.store, self._now_us()
        intents = store.intents_created_before(now_us + 1, limit)
        records = store.open_ledger_records(limit)
        return {
            "node": self.node_id,
            "partition": pid,
            "items": store.item_count(),
            "intents": store.intent_count(),
            "oldest_intents": [
                {
                    "key": intent.key,
                    "txn_id": intent.txn_id,
                    "anchor": intent.anchor,
                    "age_ms": (now_us - intent.created_us) // 1000,
                }
                for intent in intents
            ],
            "open_ledger_records": [
                {
                    "txn_id": record.txn_id,
                    "state": record.state.value,
                    "participants": list(record.participants),
                    "age_ms": (now_us - record.created_us) // 1000,
                    "past_deadline": now_us > record.deadline_us,
                }
                for record in records
            ],
        }

    def _on_rpc_event(self, event: str) -> None:
        self.metrics.rpc_events.labels(event).inc()

    # --- HTTP pages ----------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        del request
        status = "failed" if self.fatal.is_set() else "ok"
        body = {
            "status": status,
            "role": "node",
            "node": self.node_id,
            "epoch": self.cluster_map.epoch,
            "partitions": sorted(self.shells),
            "pid": os.getpid(),
        }
        return web.json_response(body, status=200 if status == "ok" else 503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        try:
            self.tokens.authorize(request.headers.get("Authorization"), Role.METRICS)
        except KvError as error:
            return error_response(error)
        self.metrics.background_actors.set(self._runner.running)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # --- background ----------------------------------------------------------------------

    async def _maintain_loop(self) -> None:
        interval_s = limits.MAINTAIN_INTERVAL_MS / 1000
        while True:
            await asyncio.sleep(interval_s)  # the tick period, not a synchronization
            for pid, shell in self.shells.items():
                try:
                    await self._maintain(pid, shell)
                except KvError as error:
                    log_event(
                        _log, "maintain.failed", logging.WARNING, partition=pid, error=str(error)
                    )

    async def _maintain(self, pid: PartitionId, shell: PartitionShell) -> None:
        work = shell.core.maintain(self._now_us())
        waiter = shell.durable()
        if waiter is not None:
            await waiter  # background sends go out only after the writes they follow are durable
        for stale in work.stale_intents:
            self._resolve(pid, stale)
        for record in work.records_to_drive:
            self._drive(pid, record)

    def _room_for_actor(self) -> bool:
        return self._runner.running < limits.BACKGROUND_ACTORS_MAX

    def _resolve(self, pid: PartitionId, stale: StaleIntent) -> None:
        key = (pid, stale.txn_id)
        if key in self._resolving or not self._room_for_actor():
            return
        self._resolving.add(key)
        done = self._runner.run(IntentResolution(stale.txn_id, stale.anchor, pid))

        def finished(future: asyncio.Future[Any]) -> None:
            self._resolving.discard(key)
            outcome = "error" if future.cancelled() or future.exception() else future.result()
            self.metrics.stale_intents_resolved.labels(outcome).inc()
            log_event(
                _log,
                "intent.resolved",
                logging.INFO if outcome in ("commit", "cancel") else logging.DEBUG,
                txn_id=stale.txn_id,
                partition=pid,
                anchor=stale.anchor,
                outcome=outcome,
            )

        done.add_done_callback(finished)

    def _drive(self, pid: PartitionId, record: LedgerRecord) -> None:
        txn_id = record.txn_id
        if txn_id in self._driving or not self._room_for_actor():
            return
        self._driving.add(txn_id)
        done = self._runner.run(Recovery(record, pid, self._now_us()))

        def finished(future: asyncio.Future[Any]) -> None:
            self._driving.discard(txn_id)
            result: RecoveryResult | None = None
            if not future.cancelled() and future.exception() is None:
                result = future.result()
            label = "error" if result is None else ("completed" if result.completed else "pending")
            self.metrics.records_driven.labels(label).inc()
            log_event(
                _log,
                "ledger.driven",
                logging.INFO if label == "completed" else logging.DEBUG,
                txn_id=txn_id,
                partition=pid,
                state=record.state.value,
                result=label,
            )

        done.add_done_callback(finished)


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data directory: two live nodes on one directory would
    interleave writes to the same SQLite files and break every guarantee."""
    lock = (data_dir / "LOCK").open("a", encoding="utf-8")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ValidationError("data_dir", f"{data_dir} is in use by another running node") from None
    return lock
