"""The partition transport end to end: real RPC servers on 127.0.0.1, the codec on both ends.

Requests go to their partition's owner; the replication requests go to the node they name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from aiohttp import web
from support.cluster import refusing_port

from kvstore import limits
from kvstore.codec import METHODS, REPLY_OF, decode_request, encode_reply
from kvstore.errors import KvError, TooLarge, Unavailable, ValidationError
from kvstore.messages import (
    GetReply,
    GetRequest,
    PositionReply,
    PositionRequest,
    ReplicateReply,
    ReplicateRequest,
    Reply,
    Request,
    ShippedBatch,
    Snapshot,
)
from kvstore.partitioning import ClusterMap, PartitionMap
from kvstore.rpc import AsyncHandler, RpcPool, RpcServer
from kvstore.storage_node.overlay import PartitionBatch
from kvstore.storage_node.store import ItemRow, PartitionMeta
from kvstore.transport import PartitionTransport, addressee
from kvstore.types import NodeId, PartitionId, Timestamp

pytestmark = pytest.mark.timeout(60)

SECRET = "transport-test-secret"
WAIT_S = 10.0  # bound on every wait for something that should happen promptly
TIMEOUT_MS = 5_000
N1, N2 = NodeId("n1"), NodeId("n2")
TS = Timestamp(1_700_000_000_000_000, 0, 7)
ROW = ItemRow(key="k", exists=True, value={"v": [1, b"\x00"]}, version=3, write_ts=TS, read_ts=TS)
BATCH = PartitionBatch(
    items={"k": ROW, "gone": None}, intents={}, ledger={}, tokens={}, meta=PartitionMeta(seq=8)
)
ANSWERS: dict[type[Request], Reply] = {
    GetRequest: GetReply(item=None),
    ReplicateRequest: ReplicateReply(accepted=True, epoch=2, seq=8, promised=2),
    PositionRequest: PositionReply(epoch=2, seq=8, promised=3),
}


class Node:
    """A node's RPC server that records what it was sent and answers from ``ANSWERS``."""

    def __init__(self) -> None:
        self.received: list[Request] = []

    async def handle(self, method: str, body: object, timeout_ms: int) -> object:
        request = decode_request(method, body, trusted=True)
        self.received.append(request)
        reply = ANSWERS[type(request)]
        assert isinstance(reply, REPLY_OF[METHODS[method]])
        return encode_reply(reply)


@asynccontextmanager
async def serving(node: Node) -> AsyncIterator[str]:
    """``node`` served on a loopback port; yields its ``host:port``."""
    server = RpcServer(AsyncHandler(node.handle), secret=SECRET, clock=lambda: TS)
    app = web.Application()
    server.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await server.close(grace_ms=100)
        await runner.cleanup()


def replicate(partition: PartitionId, node: NodeId) -> ReplicateRequest:
    return ReplicateRequest(
        partition=partition,
        node=node,
        leader=N1,
        leader_epoch=2,
        prev_epoch=2,
        prev_seq=7,
        batches=(ShippedBatch(epoch=2, seq=8, rows=BATCH),),
    )


async def started(transport: PartitionTransport, request: Request) -> Reply:
    """``request`` sent by ``transport.start`` (the connection must be open), awaited."""
    answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def respond(outcome: Reply | KvError) -> None:
        if isinstance(outcome, KvError):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)

    assert transport.start(request, TIMEOUT_MS, respond)
    return await answer


def test_only_the_replication_requests_name_a_node() -> None:
    assert addressee(replicate(PartitionId(0), N2)) == N2
    assert addressee(PositionRequest(partition=PartitionId(0), node=N1, epoch=3)) == N1
    assert addressee(GetRequest(partition=PartitionId(0), key="k")) is None


@pytest.mark.asyncio
async def test_replication_requests_go_to_the_node_they_name_not_the_owner() -> None:
    nodes = {N1: Node(), N2: Node()}
    async with AsyncExitStack() as stack:
        addresses = {name: await stack.enter_async_context(serving(n)) for name, n in nodes.items()}
        cluster_map = ClusterMap.round_robin([N1, N2], addresses, partition_count=4)
        owned_by_n1 = PartitionId(0)
        assert cluster_map.owner_of(owned_by_n1) == N1
        pool = RpcPool(SECRET)
        stack.push_async_callback(pool.close)
        transport = PartitionTransport(cluster_map, pool)
        get = GetRequest(partition=owned_by_n1, key="k")
        to_n2 = replicate(owned_by_n1, N2)
        poll_n2 = PositionRequest(partition=owned_by_n1, node=N2, epoch=3)
        to_n1 = replicate(PartitionId(1), N1)  # partition 1 is n2's
        async with asyncio.timeout(WAIT_S):
            assert await transport.call(get, TIMEOUT_MS) == ANSWERS[GetRequest]
            assert await transport.call(to_n2, TIMEOUT_MS) == ANSWERS[ReplicateRequest]
            assert await transport.call(poll_n2, TIMEOUT_MS) == ANSWERS[PositionRequest]
            assert await transport.call(to_n1, TIMEOUT_MS) == ANSWERS[ReplicateRequest]
            # and without a coroutine, on the connections now open
            assert await started(transport, to_n2) == ANSWERS[ReplicateRequest]
            assert await started(transport, poll_n2) == ANSWERS[PositionRequest]
            assert await started(transport, get) == ANSWERS[GetRequest]
        assert nodes[N1].received == [get, to_n1, get]
        assert nodes[N2].received == [to_n2, poll_n2, to_n2, poll_n2]
        # every row came through the codec intact, deletions included
        shipped = nodes[N2].received[0]
        assert isinstance(shipped, ReplicateRequest)
        assert shipped.batches[0].rows.items == {"k": ROW, "gone": None}


@pytest.mark.asyncio
async def test_an_unknown_or_unreachable_named_node_is_an_error_naming_it() -> None:
    node = Node()
    async with AsyncExitStack() as stack:
        address = await stack.enter_async_context(serving(node))
        with refusing_port() as port:
            partitions = PartitionMap(4)
            cluster_map = ClusterMap(  # n1 owns every partition; n2 is a replica, and down
                epoch=1,
                partitions=partitions,
                owners={PartitionId(pid): N1 for pid in partitions.partitions()},
                nodes={N1: address, N2: f"127.0.0.1:{port}"},
            )
            pool = RpcPool(SECRET)
            stack.push_async_callback(pool.close)
            transport = PartitionTransport(cluster_map, pool)
            async with asyncio.timeout(WAIT_S):
                with pytest.raises(ValidationError) as unknown:
                    await transport.call(replicate(PartitionId(0), NodeId("n9")), TIMEOUT_MS)
                assert unknown.value.field == "node"
                assert not transport.start(
                    replicate(PartitionId(0), NodeId("n9")), TIMEOUT_MS, lambda _: None
                )
                with pytest.raises(Unavailable) as down:
                    await transport.call(replicate(PartitionId(0), N2), TIMEOUT_MS)
        assert down.value.details["node"] == N2 and down.value.details["partition"] == 0
        assert node.received == []


@pytest.mark.asyncio
async def test_a_replicate_message_over_the_frame_limit_is_refused_before_sending() -> None:
    rows = tuple(
        ItemRow(
            key=f"k{i}",
            exists=True,
            value=b"x" * (limits.VALUE_BYTES_MAX - 5),
            version=1,
            write_ts=TS,
            read_ts=TS,
        )
        for i in range(limits.RPC_FRAME_BYTES_MAX // limits.VALUE_BYTES_MAX + 1)
    )
    huge = ReplicateRequest(
        partition=PartitionId(0),
        node=N2,
        leader=N1,
        leader_epoch=2,
        prev_epoch=2,
        prev_seq=7,
        batches=(),
        snapshot=Snapshot(items=rows, intents=(), ledger=(), tokens=(), meta=PartitionMeta()),
    )
    nodes = {N1: Node(), N2: Node()}
    async with AsyncExitStack() as stack:
        addresses = {name: await stack.enter_async_context(serving(n)) for name, n in nodes.items()}
        cluster_map = ClusterMap.round_robin([N1, N2], addresses, partition_count=4)
        pool = RpcPool(SECRET)
        stack.push_async_callback(pool.close)
        transport = PartitionTransport(cluster_map, pool)
        probe = replicate(PartitionId(0), N2)
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(TooLarge):
                await transport.call(huge, TIMEOUT_MS)
            assert await transport.call(probe, TIMEOUT_MS) == ANSWERS[ReplicateRequest]
            answers: list[Reply | KvError] = []
            assert transport.start(huge, TIMEOUT_MS, answers.append)  # answered, not raised
            assert len(answers) == 1 and isinstance(answers[0], TooLarge)
            assert await started(transport, probe) == ANSWERS[ReplicateRequest]
        assert nodes[N2].received == [probe, probe]
