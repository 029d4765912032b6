"""Direct mode: one attempt of each SDK call through an embedded coordinator library.

Theory of operation
-------------------
:class:`CoordinatorBackend` is one attempt of each SDK call on a coordinator library object in
this process, answered in the SDK's terms. Two hold one: :class:`DirectBackend` (below), and
every storage node, which runs the calls clients send it in native mode
(:mod:`kvstore.native`) on its co-located coordinator through the same object, so the two
modes cannot answer differently.

:class:`DirectBackend` embeds :class:`~kvstore.coordinator.engine.Coordinator` (DESIGN section
2): the SDK runs transactions against the storage nodes itself, over the internal RPC with the
cluster secret, saving the hop through a coordinator process. The library already raises the
catalogue's typed errors; this module only renders its answers in the public API's terms
(:mod:`kvstore.coordinator.answers`, so items, reasons and recorded outcomes look exactly as they
do over HTTP) and bounds each attempt by its time: an attempt that runs out of time is
``Unavailable`` with ``sent=True``, since messages may have reached the nodes. (A write
transaction keeps running to its end inside the library even then; a retry with the same token
meets its outcome.)

Scan cursors here are the last key returned: opaque to callers, who only see items.

After ``os.fork()`` (:mod:`kvstore.client.forks`): the child's first call finds the embedded
coordinator made by another process, abandons it unclosed (its connections are the parent's) and
builds a fresh one on the same clock, whose origin the fork hook of :mod:`kvstore.timestamps` has
already re-drawn; the new coordinator connects to the nodes on first use, on the child's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from kvstore.api.requests import prefix_end
from kvstore.client.backend import ScanPage
from kvstore.client.forks import ProcessOwner, abandon
from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.config import ClusterConfig
from kvstore.coordinator.answers import entry_to_json, item_to_json, record_to_json, ts_to_json
from kvstore.coordinator.engine import Coordinator
from kvstore.errors import ProtocolViolation, Unavailable
from kvstore.messages import ItemView
from kvstore.ops import Op
from kvstore.types import Timestamp

__all__ = ["CoordinatorBackend", "DirectBackend"]

T = TypeVar("T")


def _item(view: ItemView) -> Item:
    obj = item_to_json(view)
    return Item(key=view.key, value=obj["value"], version=view.version, ts=ts_to_json(view.ts))


class CoordinatorBackend:
    """The SDK's calls on the coordinator library object ``coordinator`` (see the module)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    @property
    def coordinator(self) -> Coordinator:
        return self._coordinator

    @property
    def txn_ops_max(self) -> int:
        return self._coordinator.txn_ops_max

    async def _bounded(self, call: Awaitable[T], timeout_s: float) -> T:
        try:
            async with asyncio.timeout(timeout_s):
                return await call
        except TimeoutError:
            raise Unavailable(
                f"no answer from the storage nodes within {timeout_s:.3f} s",
                details={"sent": True},
            ) from None

    async def partition_count(self, timeout_s: float) -> int:
        del timeout_s
        return self.coordinator.cluster_map.partitions.partition_count

    async def get(self, key: str, timeout_s: float) -> Item | None:
        view = await self._bounded(self.coordinator.get(key), timeout_s)
        return _item(view) if view is not None else None

    async def put(self, op: Op, timeout_s: float) -> Written:
        reply = await self._bounded(self.coordinator.write(op), timeout_s)
        if reply.ts is None:
            raise ProtocolViolation("a put was answered without a timestamp")
        return Written(version=reply.version, ts=ts_to_json(reply.ts))

    async def delete(self, op: Op, timeout_s: float) -> Deleted:
        reply = await self._bounded(self.coordinator.write(op), timeout_s)
        return Deleted(
            deleted=reply.existed, ts=ts_to_json(reply.ts) if reply.ts is not None else None
        )

    async def transact(self, ops: Sequence[Op], token: str, timeout_s: float) -> Committed:
        result = await self._bounded(self.coordinator.transact(ops, token=token), timeout_s)
        return Committed(txn_id=result.txn_id, ts=ts_to_json(result.ts))

    async def read(
        self, keys: Sequence[str], timeout_s: float, at: Timestamp | None = None
    ) -> list[Item | None]:
        entries = await self._bounded(self.coordinator.read(keys, at=at), timeout_s)
        items: list[Item | None] = []
        for entry in entries:
            value = entry_to_json(entry).get("value")
            ts = ts_to_json(entry.ts)
            exists = entry.exists
            items.append(Item(entry.key, value, entry.version, ts) if exists else None)
        return items

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
        lower, upper = start or "", end or None
        if prefix:  # the intersection of the prefix's range with [start, end), as the API does
            lower = max(lower, prefix)
            bound = prefix_end(prefix)
            if bound is not None:
                upper = bound if upper is None else min(upper, bound)
        page = await self._bounded(
            self.coordinator.scan(start=lower, end=upper, limit=limit, after=cursor), timeout_s
        )
        return ScanPage(items=tuple(_item(view) for view in page.items), cursor=page.after)

    async def txn_outcome(self, token: str, timeout_s: float) -> dict[str, object] | None:
        record = await self._bounded(self.coordinator.txn_record(token), timeout_s)
        return dict(record_to_json(token, record)) if record is not None else None

    async def close(self) -> None:
        await self.coordinator.close()


class DirectBackend(CoordinatorBackend):
    """An embedded coordinator for the cluster ``config`` describes (see the module)."""

    def __init__(self, config: ClusterConfig) -> None:
        super().__init__(Coordinator.from_config(config))
        self.config = config
        self._owner = ProcessOwner()

    def _drop_inherited(self) -> None:
        inherited = self._coordinator
        abandon(inherited)
        self._coordinator = Coordinator.from_config(self.config, clock=inherited.clock)

    @property
    def coordinator(self) -> Coordinator:
        """This process's embedded coordinator (its ``metrics`` are this client's transactions);
        a forked child gets its own (see the module)."""
        self._owner.adopt(self._drop_inherited)
        return self._coordinator
