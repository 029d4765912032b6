"""Deliver a partition request to whichever node owns the partition, or to the node it names.

Theory of operation
-------------------
Requests name a partition. :class:`PartitionTransport` looks the owner up in the cluster map and
sends the request over that node's persistent RPC connection (``kvstore.rpc``), encoding and
decoding with ``kvstore.codec``. The replication requests (``ReplicateRequest``,
``PositionRequest``) also name a node, ``node``: the replica they are for, which need not own
the partition; they go to that node instead (:func:`addressee`). Every failure surfaces as a
:class:`~kvstore.errors.KvError`; a reply that does not decode is a ``ProtocolViolation``. An
unreachable node is ``Unavailable`` naming the partition and the node id (``details``:
``partition``, ``node``), never the node's address: these messages reach API callers.

:class:`ColocatedTransport` is the transport of a coordinator that lives inside a storage node
(DESIGN section 2: every node is a gateway): a request for a partition the node owns is a
function call into the node's runtime (``submit``: no encoding, no socket, the runtime's own
admission and durability wait), and so is a replication request naming this node (``node_id``;
without it, every replication request goes remote, one for this node too); any other goes
through the wrapped :class:`PartitionTransport`. A local refusal (``WrongOwner``,
``Overloaded``, ``DiskFull``) is definite: nothing ran. (The node's own background actors reach
its partitions the same way, through the runtime's sender.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kvstore.codec import decode_reply, encode_request, method_of
from kvstore.errors import InternalError, KvError, ProtocolViolation, Unavailable
from kvstore.messages import PositionRequest, ReplicateRequest, Reply, Request
from kvstore.partitioning import ClusterMap
from kvstore.rpc import RpcPool
from kvstore.types import NodeId, PartitionId

__all__ = ["PartitionTransport", "ColocatedTransport", "Submit", "submitted", "addressee"]

Submit = Callable[[Request, Callable[[Reply | KvError], None]], None]
"""A node runtime's ``submit``: run a request on an owned partition, answer when it is safe."""


def addressee(request: Request) -> NodeId | None:
    """The node ``request`` is addressed to (a replication request's ``node``), or None: it
    goes to its partition's owner."""
    if isinstance(request, ReplicateRequest | PositionRequest):
        return request.node
    return None


class PartitionTransport:
    """Routes requests by partition owner (or named node); see the module docstring."""

    def __init__(
        self,
        cluster_map: ClusterMap,
        pool: RpcPool,
    ) -> None:
        self.cluster_map = cluster_map
        self._pool = pool

    def _node(self, request: Request) -> NodeId:
        node = addressee(request)
        return self.cluster_map.owner_of(request.partition) if node is None else node

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        node = self._node(request)
        method = method_of(request)
        try:
            client = self._pool.client(self.cluster_map.address_of(node))
            body = await client.call(method, encode_request(request), timeout_ms)
        except Unavailable as error:
            raise _naming(error, request, node) from None
        return _reply(method, body, node)

    def start(
        self, request: Request, timeout_ms: int, answer: Callable[[Reply | KvError], None]
    ) -> bool:
        """:meth:`call` without a coroutine while the node's connection is open: ``answer``
        gets the reply or the error later (a refusal before sending, such as ``TooLarge``, at
        once). False (nothing sent) when :meth:`call` is needed."""
        node = self._node(request)
        method = method_of(request)
        try:
            client = self._pool.client(self.cluster_map.address_of(node))
        except KvError:
            return False
        try:
            future = client.start(method, encode_request(request), timeout_ms)
        except KvError as refused:  # nothing sent (a message over the frame limit, say)
            answer(_naming(refused, request, node) if isinstance(refused, Unavailable) else refused)
            return True
        if future is None:
            return False

        def ended(done: asyncio.Future[object]) -> None:
            if done.cancelled():
                answer(Unavailable("the call was cancelled", details={"sent": True}))
                return
            error = done.exception()
            if error is None:
                try:
                    answer(_reply(method, done.result(), node))
                except KvError as refused:
                    answer(refused)
            elif isinstance(error, Unavailable):
                answer(_naming(error, request, node))
            elif isinstance(error, KvError):
                answer(error)
            else:  # a bug below: answer with the catalogue's code rather than never
                answer(InternalError(f"{method} to node {node} failed: {type(error).__name__}"))

        future.add_done_callback(ended)
        return True


class ColocatedTransport:
    """Owned partitions (and replication requests naming ``node_id``) by function call, the
    rest through ``remote``; see the module."""

    def __init__(
        self,
        remote: PartitionTransport,
        owns: Callable[[PartitionId], bool],
        submit: Submit,
        node_id: NodeId | None = None,
    ) -> None:
        self._remote = remote
        self._owns = owns
        self._submit = submit
        self._node_id = node_id

    def _here(self, request: Request) -> bool:
        node = addressee(request)
        if node is None:
            return self._owns(request.partition)
        return node == self._node_id

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        if not self._here(request):
            return await self._remote.call(request, timeout_ms)
        return await submitted(self._submit, request)

    def start(
        self, request: Request, timeout_ms: int, answer: Callable[[Reply | KvError], None]
    ) -> bool:
        if not self._here(request):
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


def _naming(error: Unavailable, request: Request, node: str) -> Unavailable:
    return Unavailable(
        f"partition {request.partition} on node {node}: {error.message}",
        details={**error.details, "partition": request.partition, "node": node},
    )


def _reply(method: str, body: object, node: str) -> Reply:
    try:
        return decode_reply(method, body)
    except KvError as error:
        raise ProtocolViolation(f"malformed {method} reply from {node}: {error}") from None
