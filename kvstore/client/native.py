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

A failure to reach the node is ``Unavailable`` with ``details["sent"]`` as the RPC layer sets
it (False: nothing reached the node; True: the call went out and no answer came, so it may have
been applied). The node's typed errors arrive as themselves.

After ``os.fork()`` (:mod:`kvstore.client.forks`) the child abandons the inherited connections
and opens its own on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kvstore import native
from kvstore.client.backend import ScanPage
from kvstore.client.forks import ProcessOwner, abandon
from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.codec import encode_op
from kvstore.config import ClusterConfig
from kvstore.errors import ProtocolViolation
from kvstore.ops import Op
from kvstore.rpc import RpcPool
from kvstore.rpc.frames import TIMEOUT_MS_MAX

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

    def _drop_inherited(self) -> None:
        abandon(self._pool)
        self._pool = RpcPool(self._secret, logger=_log)

    @property
    def txn_ops_max(self) -> int:
        return self.config.txn_ops_max

    def _home(self, key: str) -> str:
        """The address of the node owning ``key``'s partition."""
        cluster_map = self._map
        return cluster_map.address_of(
            cluster_map.owner_of(cluster_map.partitions.partition_of(key))
        )

    async def _call(self, route: str, method: str, body: object, timeout_s: float) -> object:
        self._owner.adopt(self._drop_inherited)
        timeout_ms = max(1, min(TIMEOUT_MS_MAX, int(timeout_s * _MS_PER_S)))
        return await self._pool.client(self._home(route)).call(method, body, timeout_ms)

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

    async def read(self, keys: Sequence[str], timeout_s: float) -> list[Item | None]:
        raw = await self._call(keys[0], native.READ, {"keys": list(keys)}, timeout_s)
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
