"""Deliver a partition request to whichever node owns the partition.

Theory of operation
-------------------
Requests name a partition, never a node. :class:`PartitionTransport` looks the owner up in the
cluster map and sends the request over that node's persistent RPC connection (``kvstore.rpc``),
encoding and decoding with ``kvstore.codec``. (A node's requests to its own partitions never get
here: its runtime submits them directly.) Every failure surfaces as a
:class:`~kvstore.errors.KvError`; a reply that does not decode is a ``ProtocolViolation``. An
unreachable owner is ``Unavailable`` naming the partition and the node id (``details``:
``partition``, ``node``), never the node's address: these messages reach API callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kvstore.codec import decode_reply, encode_request, method_of
from kvstore.errors import InternalError, KvError, ProtocolViolation, Unavailable
from kvstore.messages import Reply, Request
from kvstore.partitioning import ClusterMap
from kvstore.rpc import RpcPool

__all__ = ["PartitionTransport"]


class PartitionTransport:
    """Routes requests by partition owner; see the module docstring."""

    def __init__(
        self,
        cluster_map: ClusterMap,
        pool: RpcPool,
    ) -> None:
        self.cluster_map = cluster_map
        self._pool = pool

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        owner = self.cluster_map.owner_of(request.partition)
        method = method_of(request)
        try:
            client = self._pool.client(self.cluster_map.address_of(owner))
            body = await client.call(method, encode_request(request), timeout_ms)
        except Unavailable as error:
            raise _naming(error, request, owner) from None
        return _reply(method, body, owner)

    def start(
        self, request: Request, timeout_ms: int, answer: Callable[[Reply | KvError], None]
    ) -> bool:
        """:meth:`call` without a coroutine while the owner's connection is open: ``answer``
        gets the reply or the error later. False (nothing sent) when :meth:`call` is needed."""
        owner = self.cluster_map.owner_of(request.partition)
        method = method_of(request)
        try:
            client = self._pool.client(self.cluster_map.address_of(owner))
        except KvError:
            return False
        future = client.start(method, encode_request(request), timeout_ms)
        if future is None:
            return False

        def ended(done: asyncio.Future[object]) -> None:
            if done.cancelled():
                answer(Unavailable("the call was cancelled", details={"sent": True}))
                return
            error = done.exception()
            if error is None:
                try:
                    answer(_reply(method, done.result(), owner))
                except KvError as refused:
                    answer(refused)
            elif isinstance(error, Unavailable):
                answer(_naming(error, request, owner))
            elif isinstance(error, KvError):
                answer(error)
            else:  # a bug below: answer with the catalogue's code rather than never
                answer(InternalError(f"{method} to node {owner} failed: {type(error).__name__}"))

        future.add_done_callback(ended)
        return True


def _naming(error: Unavailable, request: Request, owner: str) -> Unavailable:
    return Unavailable(
        f"partition {request.partition} on node {owner}: {error.message}",
        details={**error.details, "partition": request.partition, "node": owner},
    )


def _reply(method: str, body: object, owner: str) -> Reply:
    try:
        return decode_reply(method, body)
    except KvError as error:
        raise ProtocolViolation(f"malformed {method} reply from {owner}: {error}") from None
