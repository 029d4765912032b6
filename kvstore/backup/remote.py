"""The cluster side of backups and restores: native calls to the node serving each partition.

Theory of operation
-------------------
kvctl reads and writes a cluster's partitions through the native protocol (:mod:`kvstore.native`,
the cluster secret), on :class:`~kvstore.client.native.NativeBackend`'s connections and routing:
a call goes to the node the map names for its partition and follows a refusal naming another
leader (replicated clusters), and a node out of reach moves the partition to the next replica
for the next attempt. The node runs each call on its co-located coordinator library
(``Coordinator.snapshot_page``, ``Coordinator.restore``), which routes it to the partition's
owner or leader. Bodies are the internal ``scan`` and ``restore`` requests of
:mod:`kvstore.codec`; this module packs and unpacks them. A restore's target is empty when no
partition answers ``kv.partition_page`` with an item (every key counts, the DynamoDB
endpoint's tables too).
"""

from __future__ import annotations

from kvstore import native
from kvstore.client.native import NativeBackend
from kvstore.codec import decode_reply, decode_timestamp, encode_request
from kvstore.errors import ProtocolViolation
from kvstore.limits import RPC_TIMEOUT_MS
from kvstore.messages import RestoreReply, RestoreRequest, ScanReply, ScanRequest
from kvstore.types import PartitionId, Timestamp

__all__ = ["NativePages", "NativeSink"]

_TIMEOUT_S = RPC_TIMEOUT_MS / 1000


class NativePages:
    """Backup pages over the native protocol (a :class:`~kvstore.backup.create.PageSource`)."""

    def __init__(self, backend: NativeBackend) -> None:
        self._backend = backend

    async def page(
        self, partition: PartitionId, start: str, at: Timestamp | None, limit: int
    ) -> tuple[Timestamp, ScanReply]:
        request = ScanRequest(partition=partition, start=start, end=None, limit=limit, at=at)
        raw = await self._backend.call_partition(
            partition, native.BACKUP_PAGE, encode_request(request), _TIMEOUT_S
        )
        if not isinstance(raw, dict) or set(raw) != {"at", "page"}:
            raise ProtocolViolation("malformed backup page from a node")
        reply = decode_reply("scan", raw["page"])
        if not isinstance(reply, ScanReply):
            raise ProtocolViolation("malformed backup page from a node")
        return decode_timestamp(raw["at"], "at"), reply


class NativeSink:
    """Restore messages over the native protocol (a ``RestoreSink``)."""

    def __init__(self, backend: NativeBackend) -> None:
        self._backend = backend

    async def restore(self, request: RestoreRequest) -> int:
        raw = await self._backend.call_partition(
            request.partition, native.RESTORE, encode_request(request), _TIMEOUT_S
        )
        reply = decode_reply("restore", raw)
        if not isinstance(reply, RestoreReply):
            raise ProtocolViolation("malformed restore answer from a node")
        return reply.restored

    async def is_empty(self) -> bool:
        """No partition holds an item, of any key (the store's own namespace included: a
        cluster holding only DynamoDB tables is not empty, though a public scan sees nothing)."""
        for partition in range(await self._backend.partition_count(_TIMEOUT_S)):
            request = ScanRequest(partition=PartitionId(partition), start="", end=None, limit=1)
            raw = await self._backend.call_partition(
                request.partition, native.PARTITION_PAGE, encode_request(request), _TIMEOUT_S
            )
            reply = decode_reply("scan", raw)
            if not isinstance(reply, ScanReply):
                raise ProtocolViolation("malformed partition page from a node")
            if reply.items:
                return False
        return True
