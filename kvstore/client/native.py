"""Native mode: each SDK call as one msgpack RPC to the storage node that holds its data.

Theory of operation
-------------------
:class:`NativeBackend` reads the cluster file (and the cluster secret it names, as direct mode
does) and sends every call over the internal RPC (:mod:`kvstore.rpc`: one persistent,
authenticated, pipelined connection per node) to the node owning the call's home partition:
a key's for singletons; for a transaction, its token's (the SDK draws tokens on the first key's
partition, so that is where the anchor and usually the data are); for a read-only transaction,
its first key's. That node runs the call on its co-located coordinator
(:mod:`kvstore.storage_node.gateway`): partitions it owns by function call, others over its own
RPC connections. The client process does no protocol work: it packs the call
(:mod:`kvstore.native`), waits and unpacks.

Routing is only a matter of speed: any node can coordinate any call, so a stale map (a
partition moved since the cluster file was read) costs a hop, never a wrong answer.

**Replicated clusters** (``[replication]`` factor above 1): a partition's leader moves, and a
node refuses a native call whose home partition another node leads with ``WrongOwner`` naming
the leader (``details["owner"]``, a node id, and ``details["epoch"]``;
:mod:`kvstore.storage_node.gateway`). The backend then routes that partition to the named node
from then on (unless it already knows a later epoch for it; a node the cluster file did not name
when it was read, one added since by ``kvctl node add``, is looked up in the file again, at most
every ``NATIVE_CONFIG_REREAD_MS``) and sends the call there at once,
at most ``NATIVE_REROUTES_MAX`` times per attempt; beyond that the refusal (retryable) goes to
the client's retry policy. A node that cannot be reached at all (the connection failed or was
lost) moves the partition's route to the next replica of its set, for the next attempt: the
policy decides whether there is one. Retryable refusals such as a new leader's "changing
leader" ``Unavailable`` are left to the policy as they are.

A failure to reach the node is ``Unavailable`` with ``details["sent"]`` as the RPC layer sets
it (False: nothing reached the node; True: the call went out and no answer came, so it may have
been applied). The node's typed errors arrive as themselves.

After ``os.fork()`` (:mod:`kvstore.client.forks`) the child abandons the inherited connections
and opens its own on first use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from kvstore import native
from kvstore.client.backend import ScanPage
from kvstore.client.forks import ProcessOwner, abandon
from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.codec import encode_op
from kvstore.config import ClusterConfig, load_cluster
from kvstore.errors import KvError, ProtocolViolation, Unavailable, WrongOwner
from kvstore.limits import NATIVE_CONFIG_REREAD_MS, NATIVE_REROUTES_MAX
from kvstore.ops import Op
from kvstore.partitioning import ClusterMap
from kvstore.replication.placement import initial_placement
from kvstore.rpc import RpcPool
from kvstore.rpc.frames import TIMEOUT_MS_MAX
from kvstore.types import NodeId, PartitionId, Timestamp

__all__ = ["NativeBackend"]

_log = logging.getLogger("kvstore.client")
_MS_PER_S = 1000


class NativeBackend:
    """The SDK's calls to the nodes of the cluster ``config`` describes (see the module)."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._map = config.cluster_map
        self._secret = config.secret()
        self._pool = RpcPool(self._secret, logger=_log)
        self._owner = ProcessOwner()
        # A replicated cluster's replica sets (empty otherwise: a partition has one home).
        self._replicas: tuple[tuple[NodeId, ...], ...] = ()
        spec = config.replication
        if spec.replicated:
            count = self._map.partitions.partition_count
            placement = initial_placement(tuple(config.nodes), count, spec.factor)
            self._replicas = tuple(part.replicas for part in placement.partitions)
        # Partitions routed elsewhere than the map says: pid -> (node, epoch it was named at).
        self._routes: dict[PartitionId, tuple[NodeId, int]] = {}
        self._reread_after = 0.0  # the cluster file is read again for an unknown node after it

    def _drop_inherited(self) -> None:
        abandon(self._pool)
        self._pool = RpcPool(self._secret, logger=_log)

    @property
    def txn_ops_max(self) -> int:
        return self.config.txn_ops_max

    def node_of(self, pid: PartitionId) -> NodeId:
        """The node calls for partition ``pid`` go to (the map's owner until told otherwise)."""
        routed = self._routes.get(pid)
        return self._map.owner_of(pid) if routed is None else routed[0]

    def _follow(self, pid: PartitionId, refused_by: NodeId, refusal: WrongOwner) -> bool:
        """Route ``pid`` to the leader ``refusal`` names; False when it names none to go to."""
        owner, epoch = refusal.details.get("owner"), refusal.details.get("epoch")
        epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
        known = self._routes.get(pid)
        if (
            not isinstance(owner, str)
            or owner == refused_by
            or (known is not None and known[1] > epoch)
            or not self._knows(owner)
        ):
            return False
        self._routes[pid] = (NodeId(owner), epoch)
        return True

    def _knows(self, node: str) -> bool:
        """Whether ``node``'s address is known, reading the cluster file again (at most every
        ``NATIVE_CONFIG_REREAD_MS``) for a node added since (``kvctl node add``)."""
        if node in self._map.nodes:
            return True
        now = time.monotonic()
        if now < self._reread_after:
            return False
        self._reread_after = now + NATIVE_CONFIG_REREAD_MS / _MS_PER_S
        try:
            fresh = load_cluster(self.config.path)
        except (KvError, OSError):
            return False
        added = {
            nid: spec.address for nid, spec in fresh.nodes.items() if nid not in self._map.nodes
        }
        if not added:
            return False
        old = self._map
        self._map = ClusterMap(
            epoch=old.epoch,
            partitions=old.partitions,
            owners=old.owners,
            nodes={**added, **old.nodes},
        )
        return node in self._map.nodes

    def _unreachable(self, pid: PartitionId, node: NodeId) -> None:
        """``node`` did not answer for ``pid``: route it to the next replica of its set (unless
        another call moved the route already)."""
        if not self._replicas or self.node_of(pid) != node:
            return
        replicas = self._replicas[pid]
        at = replicas.index(node) if node in replicas else -1
        known = self._routes.get(pid)
        self._routes[pid] = (replicas[(at + 1) % len(replicas)], 0 if known is None else known[1])

    async def _call(self, route: str, method: str, body: object, timeout_s: float) -> object:
        pid = self._map.partitions.partition_of(route)
        return await self.call_partition(pid, method, body, timeout_s)

    async def call_partition(
        self, pid: PartitionId, method: str, body: object, timeout_s: float
    ) -> object:
        """Send native ``method`` to the node serving partition ``pid`` (following refusals
        that name its leader); kvctl's backups and restores call it directly."""
        self._owner.adopt(self._drop_inherited)
        deadline_s = time.monotonic() + timeout_s
        reroutes = 0
        while True:
            node = self.node_of(pid)
            client = self._pool.client(self._map.address_of(node))
            left_ms = int((deadline_s - time.monotonic()) * _MS_PER_S)
            try:
                return await client.call(method, body, max(1, min(TIMEOUT_MS_MAX, left_ms)))
            except WrongOwner as refused:
                if reroutes >= NATIVE_REROUTES_MAX or not self._follow(pid, node, refused):
                    raise
                reroutes += 1
            except Unavailable:
                if not client.connected:  # the node itself is out of reach, not refusing
                    self._unreachable(pid, node)
                raise

    async def partition_count(self, timeout_s: float) -> int:
        del timeout_s
        return self._map.partitions.partition_count

    async def get(self, key: str, timeout_s: float) -> Item | None:
        return native.decode_item(await self._call(key, native.GET, {"key": key}, timeout_s))

    async def put(self, op: Op, timeout_s: float) -> Written:
        body = native.encode_op_body(op)
        return native.decode_written(await self._call(op.key, native.PUT, body, timeout_s))

    async def delete(self, op: Op, timeout_s: float) -> Deleted:
        body = native.encode_op_body(op)
        return native.decode_deleted(await self._call(op.key, native.DELETE, body, timeout_s))

    async def transact(self, ops: Sequence[Op], token: str, timeout_s: float) -> Committed:
        body = {"ops": [encode_op(op) for op in ops], "token": token}
        return native.decode_committed(await self._call(token, native.TRANSACT, body, timeout_s))

    async def read(
        self, keys: Sequence[str], timeout_s: float, at: Timestamp | None = None
    ) -> list[Item | None]:
        raw = await self._call(keys[0], native.READ, native.encode_read_body(keys, at), timeout_s)
        if not isinstance(raw, list) or len(raw) != len(keys):
            raise ProtocolViolation("malformed read answer from a node")
        return [native.decode_item(item) for item in raw]

    async def scan(
        self,
        *,
        prefix: str | None,
        start: str | None,
        end: str | None,
        limit: int,
        cursor: str | None,
        timeout_s: float,
    ) -> ScanPage:
        body = {"prefix": prefix, "start": start, "end": end, "limit": limit, "cursor": cursor}
        route = cursor or start or prefix or ""  # any node can serve a scan
        return native.decode_scan_page(await self._call(route, native.SCAN, body, timeout_s))

    async def txn_outcome(self, token: str, timeout_s: float) -> dict[str, object] | None:
        raw = await self._call(token, native.TXN_OUTCOME, {"token": token}, timeout_s)
        if raw is not None and not (isinstance(raw, dict) and all(isinstance(k, str) for k in raw)):
            raise ProtocolViolation("malformed transaction outcome from a node")
        return raw

    async def close(self) -> None:
        self._owner.adopt(self._drop_inherited)
        await self._pool.close()
