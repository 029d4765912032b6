"""Deliver a partition request to whichever node owns the partition.

Theory of operation
-------------------
Requests name a partition, never a node. :class:`PartitionTransport` looks the owner up in the
cluster map and sends the request over that node's persistent RPC connection (``kvstore.rpc``),
encoding and decoding with ``kvstore.codec``. Every failure surfaces as a
:class:`~kvstore.errors.KvError`; a reply that does not decode is a ``ProtocolViolation``. An
unreachable owner is ``Unavailable`` naming the partition and the node id (``details``:
``partition``, ``node``), never the node's address: these messages reach API callers.

:class:`ColocatedTransport` is the transport of a coordinator that lives inside a storage node
(DESIGN section 2: every node is a gateway): a request for a partition the node owns is a
function call into the node's runtime (``submit``: no encoding, no socket, the runtime's own
admission and durability wait); any other goes through the wrapped :class:`PartitionTransport`.
A local refusal (``WrongOwner``, ``Overloaded``, ``DiskFull``) is definite: nothing ran. (The
node's own background actors reach its partitions the same way, through the runtime's sender.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kvstore.codec import decode_reply, encode_request, method_of
from kvstore.errors import InternalError, KvError, ProtocolViolation, Unavailable
from kvstore.messages import Reply, Request
from kvstore.partitioning import ClusterMap
from kvstore.rpc import RpcPool
from kvstore.types import PartitionId

__all__ = ["PartitionTransport", "ColocatedTransport", "Submit", "submitted"]

Submit = Callable[[Request, Callable[[Reply | KvError], None]], None]
"""A node runtime's ``submit``: run a request on an owned partition, answer when it is safe."""


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


class ColocatedTransport:
    """Owned partitions by function call, the rest through ``remote``; see the module."""

    def __init__(
        self, remote: PartitionTransport, owns: Callable[[PartitionId], bool], submit: Submit
    ) -> None:
        self._remote = remote
        self._owns = owns
        self._submit = submit

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        if not self._owns(request.partition):
            return await self._remote.call(request, timeout_ms)
        return await submitted(self._submit, request)

    def start(
        self, request: Request, timeout_ms: int, answer: Callable[[Reply | KvError], None]
    ) -> bool:
        if not self._owns(request.partition):
            return self._remote.start(request, timeout_ms, answer)
        self._submit(request, answer)
        return True


async def submitted(submit: Submit, request: Request) -> Reply:
    """``request`` run by ``submit`` (a node runtime's), awaited: the reply, or its error."""
    answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def respond(outcome: Reply | KvError) -> None:
        if answer.done():
            return
        if isinstance(outcome, KvError):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)

    submit(request, respond)
    return await answer


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
