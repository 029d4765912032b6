"""Every node is a gateway: the coordinator library inside a storage node process.

Theory of operation
-------------------
DESIGN section 2: a storage node also runs the coordinator library and serves the public API,
so a transaction whose partitions all live on the node never leaves the process. A
:class:`NodeGateway` holds that library object (:class:`~kvstore.coordinator.engine.Coordinator`)
built on the node's own pieces:

* its transport is a :class:`~kvstore.transport.ColocatedTransport`: requests for partitions
  this node owns (and replication requests naming it) are function calls into the node's
  runtime (``NodeRuntime.submit``: the same admission, the same group commit and durability
  wait as a request from a peer, without encoding or a socket); the rest go over the node's RPC
  pool, one connection per peer shared with the runtime's own background work;
* its hybrid clock is the node's (one clock per process), its wall time and mutants the node's
  (chaos runs), and its loop-lag gate the node's (one probe per process);
* its metrics are a coordinator's, labelled with the node's id, served at ``GET /v1/metrics``.

It serves two ways in. The public HTTP API (:func:`~kvstore.api.app.build_app`, ``role="node"``)
on the node's own address, beside ``/rpc``, ``/health`` and ``/metrics``; and the native
protocol (:mod:`kvstore.native`): one RPC method per SDK call on the node's authenticated RPC
connection. A native call runs through the same
:class:`~kvstore.client.direct.CoordinatorBackend` as the SDK's direct mode, as a task of its
own, bounded by the caller's deadline; the answer goes back packed by :mod:`kvstore.native`.
Admission is the library's (``COORDINATOR_TXNS_IN_FLIGHT_MAX`` cores, the loop-lag gate), so an
overloaded node answers ``Overloaded`` before any work.

In a replicated cluster the node hands the gateway each new map of the partitions' leaders
(:meth:`NodeGateway.follow`): its transport routes by it and its coordinator re-runs operations
refused while the leaders moved. A native call whose *home* partition (the one the SDK routed it
by: its key's, a transaction's token's, a read's first key's; a scan has none) is led by another
node is refused at once with that replica's ``WrongOwner`` naming the leader (``redirect``),
before anything runs, so the SDK sends it there: calls land on the leader of their partition and
one-partition transactions stay local to it. (Refusals for partitions this node leads but does
not serve yet, during a takeover, come from the runtime as usual.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from kvstore import native
from kvstore.client.direct import CoordinatorBackend
from kvstore.codec import decode_request, encode_reply, encode_timestamp
from kvstore.config import ClusterConfig
from kvstore.coordinator.engine import Coordinator
from kvstore.coordinator.metrics import CoordinatorMetrics
from kvstore.errors import InternalError, KvError, Unavailable, ValidationError
from kvstore.messages import RestoreRequest, ScanRequest
from kvstore.mutants import Mutants
from kvstore.partitioning import ClusterMap
from kvstore.rpc import Respond, RpcPool
from kvstore.runtime.admission import LagGate
from kvstore.timestamps import HybridClock, PhysicalClock
from kvstore.transport import ColocatedTransport, PartitionTransport, Submit
from kvstore.types import NodeId, PartitionId

__all__ = ["NodeGateway"]

_log = logging.getLogger("kvstore.storage_node")
_MS_PER_S = 1000
T = TypeVar("T")


class NodeGateway:
    """The coordinator library of one storage node; see the module docstring."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        *,
        pool: RpcPool,
        owns: Callable[[PartitionId], bool],
        submit: Submit,
        clock: HybridClock,
        physical_clock: PhysicalClock,
        mutants: Mutants,
        lag_gate: LagGate,
        cluster_map: ClusterMap | None = None,
        redirect: Callable[[PartitionId], KvError | None] | None = None,
    ) -> None:
        """``cluster_map`` routes from the start (default: the cluster file's); ``redirect``
        gives the refusal for a native call whose home partition another node leads."""
        cluster_map = config.cluster_map if cluster_map is None else cluster_map
        self.metrics = CoordinatorMetrics(node_id)
        self._remote = PartitionTransport(cluster_map, pool)
        self._redirect = redirect
        self._partition_of = cluster_map.partitions.partition_of
        transport = ColocatedTransport(self._remote, owns, submit, NodeId(node_id))
        self.coordinator = Coordinator(
            cluster_map,
            config.secret(),
            txn_ops_max=config.txn_ops_max,
            metrics=self.metrics,
            clock=clock,
            transport=transport,
            physical_clock=physical_clock,
            mutants=mutants,
            lag_gate=lag_gate,
        )
        if redirect is not None:  # a replicated node: its map moves, refusals may wait for it
            self.coordinator.follow(cluster_map)
        self._calls = _Unbounded(self.coordinator)
        self._tasks: set[asyncio.Task[object]] = set()

    def follow(self, cluster_map: ClusterMap) -> None:
        """Route by ``cluster_map`` (the current leaders) from now on (one of the same epoch
        may know more node addresses: the transport takes it)."""
        if cluster_map.epoch >= self._remote.cluster_map.epoch:
            self._remote.cluster_map = cluster_map
        self.coordinator.follow(cluster_map)

    def _home(self, route: str) -> None:
        """Refuse a native call routed by ``route`` whose partition another node leads."""
        self._home_partition(self._partition_of(route))

    async def close(self) -> None:
        """Let running transactions finish (bounded, see ``Coordinator.close``), then stop."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.coordinator.close()

    def handle_native(self, method: str, body: object, timeout_ms: int, respond: Respond) -> None:
        """Run one native call (``method`` in ``native.METHODS``); ``respond`` gets the packed
        answer or the typed error. Checks the body at once (nothing runs on a bad one)."""
        call = self._native_call(method, body, timeout_ms / _MS_PER_S)
        task = asyncio.get_running_loop().create_task(call)
        self._tasks.add(task)

        def ended(done: asyncio.Task[object]) -> None:
            self._tasks.discard(task)
            if done.cancelled():  # the node is stopping; the call's core runs on (drained)
                respond(Unavailable("the node stopped before answering", details={"sent": True}))
                return
            error = done.exception()
            if error is None:
                respond(done.result())
            elif isinstance(error, KvError):
                respond(error)
            else:
                _log.error("native %s failed", method, exc_info=error)
                respond(InternalError("an internal error; see the node's log"))

        task.add_done_callback(ended)

    def _native_call(
        self, method: str, body: object, timeout_s: float
    ) -> Coroutine[Any, Any, object]:
        calls = self._calls
        if method == native.GET:
            key = native.body_key(native.body_object(body, frozenset({"key"})))
            self._home(key)
            return _packed(calls.get(key, timeout_s), native.encode_item)
        if method == native.PUT:
            op = native.body_op(native.body_object(body, frozenset({"op"})))
            self._home(op.key)
            return _packed(calls.put(op, timeout_s), native.encode_written)
        if method == native.DELETE:
            op = native.body_op(native.body_object(body, frozenset({"op"})))
            self._home(op.key)
            return _packed(calls.delete(op, timeout_s), native.encode_deleted)
        if method == native.TRANSACT:
            obj = native.body_object(body, frozenset({"ops", "token"}))
            ops, token = native.body_ops(obj), native.body_token(obj)
            self._home(token)
            return _packed(calls.transact(ops, token, timeout_s), native.encode_committed)
        if method == native.READ:
            obj = native.body_object(body, frozenset({"keys", "at"}))
            keys, at = native.body_keys(obj), native.body_at(obj)
            self._home(keys[0])
            return _packed(calls.read(keys, timeout_s, at), _encode_items)
        if method == native.SCAN:
            args = native.body_scan(
                native.body_object(body, frozenset({"prefix", "start", "end", "limit", "cursor"}))
            )
            page = calls.scan(
                prefix=args.prefix,
                start=args.start,
                end=args.end,
                limit=args.limit,
                cursor=args.cursor,
                timeout_s=timeout_s,
            )
            return _packed(page, native.encode_scan_page)
        if method == native.TXN_OUTCOME:
            token = native.body_token(native.body_object(body, frozenset({"token"})))
            self._home(token)
            return _packed(calls.txn_outcome(token, timeout_s), _same)
        if method == native.BACKUP_PAGE:
            return self._backup_page(body)
        if method == native.PARTITION_PAGE:
            wanted = decode_request("scan", body)
            if not isinstance(wanted, ScanRequest) or wanted.at is not None:
                raise ValidationError("at", "a partition page is read now, without at")
            self._home_partition(wanted.partition)
            return _packed(
                self.coordinator.partition_page(
                    wanted.partition,
                    start=wanted.start,
                    end=wanted.end,
                    limit=wanted.limit,
                    reverse=wanted.reverse,
                    bytes_max=wanted.bytes_max,
                ),
                encode_reply,
            )
        if method == native.RESTORE:
            restore = decode_request("restore", body)
            assert isinstance(restore, RestoreRequest)
            self._home_partition(restore.partition)
            return _packed(self.coordinator.restore(restore), encode_reply)
        raise InternalError(f"no native method {method!r}")  # callers check METHODS first

    def _backup_page(self, body: object) -> Coroutine[Any, Any, object]:
        """A backup's page: ``{"at": ts, "page": scan reply}``; without ``at`` the node's clock
        picks it (the backup's first page)."""
        if isinstance(body, dict) and body.get("at") is None:
            body = {**body, "at": encode_timestamp(self.coordinator.now())}
        request = decode_request("scan", body)
        assert isinstance(request, ScanRequest) and request.at is not None
        self._home_partition(request.partition)
        at = request.at

        async def page() -> object:
            reply = await self.coordinator.snapshot_page(
                request.partition, start=request.start, at=at, limit=request.limit
            )
            return {"at": encode_timestamp(at), "page": encode_reply(reply)}

        return page()

    def _home_partition(self, pid: PartitionId) -> None:
        """Refuse a call for partition ``pid`` that another node leads (as ``_home``)."""
        if self._redirect is not None:
            refusal = self._redirect(pid)
            if refusal is not None:
                raise refusal


class _Unbounded(CoordinatorBackend):
    """The SDK's calls with no timer of their own: the caller's RPC deadline bounds its wait,
    and every core bounds its own work (a native call's answer after that is dropped)."""

    async def _bounded(self, call: Awaitable[T], timeout_s: float) -> T:
        del timeout_s
        return await call


async def _packed(call: Coroutine[Any, Any, Any], pack: Callable[[Any], object]) -> object:
    return pack(await call)


def _encode_items(items: list[Any]) -> object:
    return [native.encode_item(item) for item in items]


def _same(value: object) -> object:
    return value
