"""The storage node process: partitions on SQLite, served over msgpack RPC, with background work.

Theory of operation
-------------------
Process wiring around the one node runtime (DESIGN sections 2, 2a, 7, 8): the node's partitions
live in one SQLite database (:class:`~kvstore.storage_node.sqlite_store.SqliteNodeStore`;
per-partition files of older versions are imported into it at the first start), served by a
:class:`~kvstore.runtime.node.NodeRuntime` on the asyncio loop with production's disk
(:class:`~kvstore.runtime.disk.ThreadDisk`) and a sender over the RPC pool. Ownership,
admission, group commit, durability gating, maintenance and background actors are all the
runtime's: this module only decodes RPC calls into requests (``kvstore.codec``), awaits the
runtime's answer, counts it, and serves the HTTP pages. Every method of the codec takes that one
path, the replication calls (``replicate``, ``position``) included: decoded on the trusted path
(every RPC caller holds the cluster secret) and handed to ``NodeRuntime.submit``. Replies carry
the node's hybrid clock (the RPC layer stamps them). After ``kill -9`` a restart reopens the
database and the runtime's maintenance finishes whatever was in flight: nothing needs an
operator.

Every node is also a gateway (:mod:`~kvstore.storage_node.gateway`): it runs the coordinator
library, serves the public API (``/v1/...``, :mod:`kvstore.api.app`) on its own address, and
answers the SDK's native calls (:mod:`kvstore.native`) on its RPC connection.

**Replicated clusters** (``[replication]`` with ``factor > 1`` in the cluster file): the node
opens its store with every partition (a move may bring any of them here), and its
runtime replicates those the live map gives it (:mod:`kvstore.runtime.replica`) over an
:class:`~kvstore.replication.etcd.EtcdControlPlane` on the file's endpoints, timing leases on
``CLOCK_BOOTTIME`` (a monotonic clock that keeps counting through suspend). Routing follows the
live map: each time the replicator adopts a new placement (``on_placement``), the node builds a
:class:`~kvstore.partitioning.ClusterMap` whose owners are the current leaders, at the
placement's epoch (older maps are ignored), and hands it to the transport of its runtime's
background work and to its gateway (whose coordinator then re-runs refused operations, see
:mod:`kvstore.coordinator.engine`); the gateway calls a partition local only while this node
leads it. A replica that does not lead answers ``WrongOwner`` naming the leader and epoch (node
ids only, never addresses). Addresses are the cluster file's, as read at start; a node it does
not name (one added later, ``kvctl node add``) is reached at the address it publishes in its
liveness key: the replicator lists the live nodes every tick, and when what they publish changes
(``on_addresses``) the node routes by its current map again with those addresses added.
``/health`` lists the partitions this node serves as leader (``serving``) and the ``stats`` RPC
adds the replicator's status (role, epoch, position, and where this node leads the followers'
and learners' acknowledged seqs and lag and the committed voting set's epoch), which ``kvctl
cluster status`` shows and ``kvctl partition move`` waits on. Stopping closes the control-plane
client after the runtime.

HTTP: ``GET /rpc`` (WebSocket; protocol version and cluster secret checked in the handshake),
``GET /health`` (no credential: liveness, nothing secret) and ``GET /metrics`` (Prometheus text: the
node's and its coordinator's), which needs an API bearer token of any role, as every API call does:
the node reads the cluster's API token file (:class:`~kvstore.api.tokens.TokenStore`, re-read when
it changes). It reads it leniently: a missing file, or one it cannot read (logged), means every API
call and scrape is 401, never a node that refuses to serve its data. Only in a process started for
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
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO

from aiohttp import web

from kvstore import limits, native
from kvstore.api.app import AUTO_DECOMPRESS, build_app
from kvstore.api.responses import error_response
from kvstore.api.tokens import Role, TokenStore
from kvstore.chaos_control import enabled_from_env
from kvstore.codec import decode_request, encode_reply
from kvstore.config import ClusterConfig
from kvstore.errors import KvError, Unavailable, ValidationError, WrongOwner
from kvstore.limits import API_LISTEN_BACKLOG
from kvstore.logs import log_event
from kvstore.messages import Reply, Request
from kvstore.partitioning import ClusterMap
from kvstore.replication.etcd import EtcdControlPlane
from kvstore.replication.placement import Placement
from kvstore.rpc import Respond, RpcPool, RpcServer
from kvstore.runtime.admission import LagGate
from kvstore.runtime.aio import LoopLagProbe, TransportSender
from kvstore.runtime.disk import ThreadDisk
from kvstore.runtime.node import NodeRuntime
from kvstore.runtime.replica import ReplicationConfig, Replicator
from kvstore.runtime.scheduler import AsyncioScheduler
from kvstore.storage_node.gateway import NodeGateway
from kvstore.storage_node.metrics import CONTENT_TYPE, NodeMetrics
from kvstore.storage_node.sqlite_store import SqliteNodeStore
from kvstore.timestamps import HybridClock, PhysicalClock, random_origin, system_clock_us
from kvstore.transport import PartitionTransport, submitted
from kvstore.types import NodeId, PartitionId

__all__ = ["NodeService", "lease_clock_us", "leaders_map"]

_log = logging.getLogger("kvstore.storage_node")
_NS_PER_US = 1000


def lease_clock_us() -> int:
    """Microseconds of ``CLOCK_BOOTTIME``: monotonic, not slewed by NTP, and counting through
    suspend, so a lease never outlives a pause (docs/replication.md, section 4)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _NS_PER_US


def leaders_map(
    placement: Placement, static: ClusterMap, learned: Mapping[NodeId, str] | None = None
) -> ClusterMap:
    """The cluster map routing each partition to its leader in ``placement``, at its epoch
    (partitioning and addresses from ``static``, the cluster file's; the addresses of nodes it
    does not name from ``learned``, the live nodes' liveness keys)."""
    owners = {PartitionId(pid): part.leader for pid, part in enumerate(placement.partitions)}
    nodes = {**(learned or {}), **static.nodes}  # the cluster file wins for the nodes it names
    return ClusterMap(
        epoch=placement.epoch, partitions=static.partitions, owners=owners, nodes=nodes
    )


class NodeService:
    """One storage node; see the module docstring."""

    def __init__(self, config: ClusterConfig, node_id: str) -> None:
        self.config = config
        self.spec = config.node(node_id)
        self.node_id = self.spec.node_id
        self.replication: ReplicationConfig | None = None
        self.cluster_map = config.cluster_map  # a replicated node's: the current leaders
        spec = config.replication
        if spec.replicated:
            self.replication = ReplicationConfig(
                nodes=tuple(config.nodes),
                partitions=config.cluster_map.partitions.partition_count,
                replication_factor=spec.factor,
                prefix=spec.prefix,
                address=self.spec.address,
            )
            self.cluster_map = leaders_map(self.replication.first_placement(), config.cluster_map)
        self._control: EtcdControlPlane | None = None  # built by start(), on the running loop
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
        self.tokens = TokenStore(config.api_tokens_file, strict=False)  # API calls, /metrics
        self.runtime: NodeRuntime | None = None  # built by start(), on the running loop
        self.gateway: NodeGateway | None = None  # the co-located coordinator, built by start()
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
        self._sender: TransportSender | None = None
        self._transport: PartitionTransport | None = None  # the runtime's, for its own requests
        self._disk = ThreadDisk()
        self._rpc = RpcServer(
            handler=self.handle_rpc,
            secret=self.secret,
            clock=self.clock.now,
            on_event=self._on_rpc_event,
            logger=_log,
        )
        self._runner_web: web.AppRunner | None = None
        self._started_s = time.monotonic()
        self._gate = LagGate()  # new work refused while the loop is behind (runtime/admission.py)
        self._lag_probe = LoopLagProbe(self._gate.observe)

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the node's database, start its runtime, then listen on the node's address."""
        runtime = self._open()
        replicator = runtime.replicator
        gateway = self.gateway = NodeGateway(
            self.config,
            self.node_id,
            pool=self._pool,
            owns=runtime.cores.__contains__ if replicator is None else replicator.leads,
            submit=runtime.submit,
            clock=self.clock,
            physical_clock=self._now_us,
            mutants=self._partition_config.mutants,
            lag_gate=self._gate,
            cluster_map=self.cluster_map,
            redirect=None if replicator is None else _redirect(replicator),
        )
        if replicator is not None:
            replicator.on_placement = self._follow
            replicator.on_addresses = self._learned
        app = build_app(
            gateway.coordinator,
            self.tokens,
            self.node_id,
            self.config,
            requests_in_flight_max=self.config.api_requests_in_flight_max,
            role="node",
            own_routes=[
                ("GET", "/rpc", self._rpc.handle),
                ("GET", "/health", self._health),
                ("GET", "/metrics", self._metrics_page),
            ],
        )
        if self.chaos is not None:
            peers = [spec.address for spec in self.config.nodes.values()]
            self.chaos.mount(app, self.secret, peers)
        self._runner_web = web.AppRunner(
            app, access_log=None, handle_signals=False, auto_decompress=AUTO_DECOMPRESS
        )
        await self._runner_web.setup()
        host, _, port = self.spec.address.rpartition(":")
        site = web.TCPSite(
            self._runner_web, host, int(port), reuse_address=True, backlog=API_LISTEN_BACKLOG
        )
        await site.start()
        runtime.start()
        self._lag_probe.start()
        log_event(
            _log,
            "node.started",
            node=self.node_id,
            address=self.spec.address,
            epoch=self.cluster_map.epoch,
            partitions=sorted(runtime.cores),
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
        runtime = self.runtime
        self._lag_probe.stop()
        await self._rpc.close()
        if self._runner_web is not None:
            await self._runner_web.cleanup()
        if self.gateway is not None:  # its running transactions drain while the runtime runs
            await self.gateway.close()
        if runtime is not None:
            runtime.stop()
        if self._control is not None:
            await self._control.aclose()
        if self._sender is not None:
            await self._sender.close()
        if runtime is not None:
            if runtime.failed is None and runtime.disk_full is None:
                with contextlib.suppress(KvError):
                    await self._durable(runtime)  # writes that forced no flush (completions)
            elif runtime.disk_full is not None:  # never answered: dropped, as a crash would
                log_event(_log, "node.stopped_disk_full", logging.WARNING, node=self.node_id)
            self._disk.close()
            runtime.store.close()
        await self._pool.close()
        if self._lock_file is not None:
            self._lock_file.close()
        log_event(_log, "node.stopped", node=self.node_id)

    def _open(self) -> NodeRuntime:
        data_dir = self.spec.data_dir
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_file = _lock_data_dir(data_dir)
        replication = self.replication
        if replication is None:
            owned = self.cluster_map.partitions_of(self.node_id)
        else:
            # Every partition: a move may bring any of them here (docs/replication.md).
            owned = tuple(
                PartitionId(pid) for pid in range(self.cluster_map.partitions.partition_count)
            )
            self._control = EtcdControlPlane(self.config.replication.endpoints)
        store = SqliteNodeStore.open(data_dir, owned)
        if store.migrated_files:
            log_event(
                _log,
                "node.upgraded",
                logging.WARNING,
                node=self.node_id,
                data_dir=str(data_dir),
                imported=sorted(store.migrated_files),
            )
        self._transport = PartitionTransport(self.cluster_map, self._pool)
        self._sender = TransportSender(self._transport, self._now_us)
        runtime = NodeRuntime(
            self.node_id,
            store,
            disk=self._disk,
            scheduler=AsyncioScheduler(self._now_us),
            sender=self._sender,
            clock=self.clock,
            config=self._partition_config,
            wrong_owner=self._wrong_owner,
            metrics=self.metrics,
            on_fatal=self._on_fatal,
            gate=self._gate,
            replication=replication,
            control=self._control,
            lease_clock_us=None if replication is None else lease_clock_us,
        )
        self.runtime = runtime
        self.metrics.track_partitions(
            {pid: _depth(runtime, pid) for pid in runtime.cores},
            {pid: store.partition(pid).intent_count for pid in runtime.cores},
        )
        return runtime

    def _follow(self, placement: Placement, *, same_epoch: bool = False) -> None:
        """Route by the leaders of ``placement`` (the replicator adopted it); see the module.
        ``same_epoch``: also a map of the epoch followed now (it knows more addresses)."""
        if placement.epoch < self.cluster_map.epoch or (
            placement.epoch == self.cluster_map.epoch and not same_epoch
        ):
            return  # an older map, read before the one we follow
        runtime = self.runtime
        learned = runtime.replicator.addresses if runtime and runtime.replicator else None
        try:
            cluster_map = leaders_map(placement, self.config.cluster_map, learned)
        except ValidationError as bad:  # a leader whose address is not known (yet)
            log_event(_log, "node.bad_map", logging.WARNING, node=self.node_id, error=str(bad))
            return
        self.cluster_map = cluster_map
        if self._transport is not None:
            self._transport.cluster_map = cluster_map
        if self.gateway is not None:
            self.gateway.follow(cluster_map)
        log_event(
            _log,
            "node.map",
            node=self.node_id,
            epoch=placement.epoch,
            leads=[
                pid for pid, part in enumerate(placement.partitions) if part.leader == self.node_id
            ],
        )

    def _learned(self, addresses: dict[NodeId, str]) -> None:
        """The live nodes' published addresses changed (a node was added, or restarted on
        another port): route by the map followed now, with them (see the module)."""
        runtime = self.runtime
        if runtime is None or runtime.replicator is None:
            return
        log_event(_log, "node.addresses", node=self.node_id, learned=addresses)
        self._follow(runtime.replicator.placement, same_epoch=True)

    def _on_fatal(self, error: BaseException) -> None:
        log_event(_log, "node.fatal", logging.CRITICAL, node=self.node_id, error=repr(error))
        self.fatal.set()

    @staticmethod
    def _durable(runtime: NodeRuntime) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def durable() -> None:
            if not done.done():
                done.set_result(None)

        def failed(error: KvError) -> None:
            if not done.done():
                done.set_exception(error)

        runtime.when_durable(durable, failed)
        return done

    # --- requests ------------------------------------------------------------------------

    def handle_rpc(self, method: str, body: object, timeout_ms: int, respond: Respond) -> None:
        """The RPC handler, run synchronously for every request of a frame: decode, submit to
        the runtime, encode its answer when it comes; counts every answer by method and code."""
        label = self.metrics.method_label(method)
        started = time.perf_counter()
        metrics = self.metrics
        try:
            if method in native.METHODS:
                gateway = self.gateway
                if gateway is None:
                    raise Unavailable("the node is starting", details={"sent": False})

                def answered_native(outcome: object) -> None:
                    if isinstance(outcome, KvError):
                        metrics.requests.labels(label, outcome.code.name).inc()
                    else:
                        metrics.answered(label, time.perf_counter() - started)
                    respond(outcome)

                gateway.handle_native(method, body, timeout_ms, answered_native)
                return
            if method == "stats":
                out: object = self.stats()
            elif method == "inspect":
                out = self.inspect(body)
            else:
                request = decode_request(method, body, trusted=True)  # peers hold the secret
                runtime = self.runtime
                if runtime is None:
                    raise self._wrong_owner(request.partition)

                def answered(outcome: Reply | KvError) -> None:
                    if isinstance(outcome, KvError):
                        metrics.requests.labels(label, outcome.code.name).inc()
                        respond(outcome)
                        return
                    try:
                        encoded = encode_reply(outcome)
                    except Exception:
                        metrics.requests.labels(label, "InternalError").inc()
                        raise
                    metrics.answered(label, time.perf_counter() - started)
                    respond(encoded)

                runtime.submit(request, answered)
                return
        except KvError as error:
            metrics.requests.labels(label, error.code.name).inc()
            raise
        except Exception:
            metrics.requests.labels(label, "InternalError").inc()
            raise
        metrics.answered(label, time.perf_counter() - started)
        respond(out)

    async def serve(self, request: Request, timeout_ms: int = limits.RPC_TIMEOUT_MS) -> Reply:
        """Run one request on its partition and return the reply once it is safe to release."""
        del timeout_ms  # the caller's deadline; the durability wait is bounded by one flush
        runtime = self.runtime
        if runtime is None:
            raise self._wrong_owner(request.partition)
        return await submitted(runtime.submit, request)

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
        runtime = self.runtime
        assert runtime is not None
        partitions = {}
        for pid in runtime.cores:
            store = runtime.store.partition(pid)
            partitions[str(pid)] = {
                "items": store.item_count(),
                "intents": store.intent_count(),
                "open_ledger_records": len(store.open_ledger_records(limits.GC_ITEMS_PER_TICK_MAX)),
                "in_progress": runtime.in_progress[pid],
            }
        out: dict[str, object] = {
            "node": self.node_id,
            "epoch": self.cluster_map.epoch,
            "uptime_s": round(time.monotonic() - self._started_s, 3),
            "background_actors": runtime.actors.running,
            "partitions": partitions,
        }
        if runtime.replicator is not None:
            out["replication"] = runtime.replicator.status()
        return out

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
        runtime = self.runtime
        if runtime is None or PartitionId(pid) not in runtime.cores:
            raise self._wrong_owner(PartitionId(pid))
        store, now_us = runtime.store.partition(PartitionId(pid)), self._now_us()
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
        runtime = self.runtime
        body = {
            "status": status,
            "role": "node",
            "node": self.node_id,
            # Writes are refused until space is freed; reads are served (kvstore.runtime.node).
            "disk_full": runtime is not None and runtime.disk_full is not None,
            "epoch": self.cluster_map.epoch,
            "partitions": sorted(runtime.cores) if runtime is not None else [],
            "pid": os.getpid(),
        }
        if runtime is not None and runtime.replicator is not None:
            # The partitions this node serves as their leader right now.
            replicator = runtime.replicator
            body["serving"] = [pid for pid in sorted(runtime.cores) if _serves(replicator, pid)]
        return web.json_response(body, status=200 if status == "ok" else 503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        try:
            self.tokens.authorize(request.headers.get("Authorization"), Role.METRICS)
        except KvError as error:
            return error_response(error)
        if self.runtime is not None:
            self.metrics.background_actors.set(self.runtime.actors.running)
            self.metrics.disk_full.set(self.runtime.disk_full is not None)
        body = self.metrics.render()
        if self.gateway is not None:  # the co-located coordinator's (kvstore_coordinator_*)
            body += self.gateway.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _serves(replicator: Replicator, pid: PartitionId) -> bool:
    return replicator.leads(pid) and replicator.refusal(pid) is None


def _redirect(replicator: Replicator) -> Callable[[PartitionId], KvError | None]:
    """The refusal naming the leader, for a partition another node leads (else None)."""

    def redirect(pid: PartitionId) -> KvError | None:
        refusal = replicator.refusal(pid)
        return refusal if isinstance(refusal, WrongOwner) else None

    return redirect


def _depth(runtime: NodeRuntime, pid: PartitionId) -> Callable[[], int]:
    return lambda: runtime.in_progress[pid]


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data directory: two live nodes on one directory would
    interleave writes to the same SQLite files and break every guarantee."""
    fd = os.open(data_dir / "LOCK", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    lock = os.fdopen(fd, "a", encoding="utf-8")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ValidationError("data_dir", f"{data_dir} is in use by another running node") from None
    return lock
