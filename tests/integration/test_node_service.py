"""A node service run in the test process (real SQLite files, real sockets): admission control,
ownership, stats, the replication calls' way in, and a clean stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from support.cluster import free_port
from support.partition import put

from kvstore import limits
from kvstore.codec import encode_request
from kvstore.config import load_cluster, write_cluster_file, write_secret
from kvstore.errors import KvError, Overloaded, ValidationError, WrongOwner
from kvstore.messages import (
    ExecuteReply,
    ExecuteRequest,
    GetReply,
    GetRequest,
    LedgerRecord,
    PositionReply,
    PositionRequest,
    PrepareReply,
    PrepareRequest,
    ReplicateRequest,
    Reply,
    Request,
    TxnState,
    WriteReply,
    WriteRequest,
)
from kvstore.storage_node.service import NodeService
from kvstore.timestamps import new_txn_id, system_clock_us
from kvstore.types import NodeId, PartitionId, Timestamp

pytestmark = pytest.mark.asyncio


async def rpc(service: NodeService, method: str, body: object) -> object:
    """One call through the node's RPC handler, as the RPC server makes it."""
    answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def respond(outcome: object) -> None:
        if isinstance(outcome, KvError):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)

    service.handle_rpc(method, body, 1000, respond)
    return await answer


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[NodeService]:
    nodes = {"n1": f"127.0.0.1:{free_port()}", "n2": f"127.0.0.1:{free_port()}"}
    write_cluster_file(tmp_path / "cluster.toml", nodes=nodes, partitions=4)
    write_secret(tmp_path / "secret")
    node = NodeService(load_cluster(tmp_path / "cluster.toml"), "n1")
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def test_a_full_partition_queue_answers_overloaded_and_others_keep_serving(
    service: NodeService,
) -> None:
    runtime, other = service.runtime, PartitionId(2)
    assert runtime is not None
    # As if that many requests were waiting on partition 0:
    runtime.in_progress[PartitionId(0)] = limits.PARTITION_QUEUE_MAX
    try:
        with pytest.raises(Overloaded):
            await rpc(service, "get", {"partition": 0, "key": "k"})
        with pytest.raises(Overloaded):
            await service.serve(GetRequest(partition=PartitionId(0), key="k"))
    finally:
        runtime.in_progress[PartitionId(0)] = 0
    reply = await service.serve(WriteRequest(partition=other, op=put("k2", 1)))
    assert isinstance(reply, WriteReply) and reply.version == 1
    got = await service.serve(GetRequest(partition=other, key="k2"))
    assert isinstance(got, GetReply) and got.item is not None and got.item.value == 1
    text = service.metrics.render().decode()
    assert 'kvstore_node_requests_total{code="Overloaded",method="get"}' in text


async def test_partitions_of_other_nodes_are_refused_with_the_epoch(service: NodeService) -> None:
    assert service.runtime is not None and sorted(service.runtime.cores) == [0, 2]
    with pytest.raises(WrongOwner) as caught:
        await service.serve(GetRequest(partition=PartitionId(1), key="k"))
    assert caught.value.details == {"epoch": 1, "partition": 1, "owner": "n2"}


async def test_replication_calls_reach_the_runtime_as_partition_requests_do(
    service: NodeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = service.runtime
    assert runtime is not None
    poll = PositionRequest(partition=PartitionId(0), node=NodeId("n1"), epoch=3)
    probe = ReplicateRequest(
        partition=PartitionId(1),  # n2's, and n1 holds no replica of it
        node=NodeId("n1"),
        leader=NodeId("n2"),
        leader_epoch=1,
        prev_epoch=0,
        prev_seq=0,
        batches=(),
    )
    # The runtime does not handle them yet: it answers with an error, nothing crashes.
    with pytest.raises(ValidationError):  # an owned partition: its core has no such request
        await rpc(service, "position", encode_request(poll))
    with pytest.raises(WrongOwner):
        await rpc(service, "replicate", encode_request(probe))
    # What reaches the runtime is the decoded message; its reply goes back encoded.
    submitted: list[Request] = []

    def submit(request: Request, respond: Callable[[Reply | KvError], None]) -> None:
        submitted.append(request)
        respond(PositionReply(epoch=3, seq=7, promised=3))

    monkeypatch.setattr(runtime, "submit", submit)
    answer = await rpc(service, "position", encode_request(poll))
    assert answer == {"epoch": 3, "seq": 7, "promised": 3}
    assert submitted == [poll]
    with pytest.raises(ValidationError):  # a malformed call never reaches the runtime
        await rpc(service, "replicate", {**encode_request(probe), "node": ""})
    assert submitted == [poll]
    assert service.metrics.method_label("replicate") == "replicate"
    assert service.metrics.method_label("position") == "position"


async def test_stats_report_every_owned_partition(service: NodeService) -> None:
    stats = service.stats()
    assert stats["node"] == "n1" and stats["epoch"] == 1
    partitions = stats["partitions"]
    assert isinstance(partitions, dict) and sorted(partitions) == ["0", "2"]
    assert partitions["0"] == {
        "items": 0,
        "intents": 0,
        "open_ledger_records": 0,
        "in_progress": 0,
    }


async def test_a_second_node_on_the_same_data_directory_is_refused(
    service: NodeService,
) -> None:
    twin = NodeService(service.config, "n1")
    with pytest.raises(ValidationError, match="in use by another running node"):
        await twin.start()
    await twin.stop()


async def test_a_batch_too_big_to_stage_on_the_loop_is_written_by_the_flush_thread(
    service: NodeService,
) -> None:
    pmap = service.cluster_map.partitions
    keys = [k for k in (f"big-{i}" for i in range(5_000)) if pmap.partition_of(k) == 0]
    keys = keys[: limits.STAGE_ON_LOOP_ROWS_MAX + 20]
    assert len(keys) > limits.STAGE_ON_LOOP_ROWS_MAX
    request = ExecuteRequest(
        partition=PartitionId(0),
        txn_id=new_txn_id(),
        ts=Timestamp(system_clock_us(), 0, 77),
        ops=tuple(put(k, i) for i, k in enumerate(keys)),
    )
    reply = await service.serve(request)
    assert isinstance(reply, ExecuteReply) and reply.committed, reply
    assert service.runtime is not None
    store = service.runtime.store
    assert not store.dirty and store.in_flight is None  # acknowledged only once durable
    for i in (0, len(keys) - 1):
        got = await service.serve(GetRequest(partition=PartitionId(0), key=keys[i]))
        assert isinstance(got, GetReply) and got.item is not None and got.item.value == i


async def test_inspect_lists_counts_intents_and_open_ledger_records(service: NodeService) -> None:
    pid = PartitionId(0)
    await service.serve(WriteRequest(partition=pid, op=put("k1", 1)))
    txn = new_txn_id()
    ts = Timestamp(system_clock_us(), 0, 5)
    ledger = LedgerRecord(txn_id=txn, ts=ts, state=TxnState.STAGING, participants=(pid,))
    prepare = PrepareRequest(
        partition=pid, txn_id=txn, ts=ts, ops=(put("k2", 2),), anchor=pid, ledger=ledger
    )
    reply = await service.serve(prepare)
    assert isinstance(reply, PrepareReply) and reply.accepted
    seen = await rpc(service, "inspect", {"partition": 0, "limit": 10})
    assert isinstance(seen, dict)
    assert (seen["items"], seen["intents"]) == (1, 1)
    assert [(i["key"], i["txn_id"]) for i in seen["oldest_intents"]] == [("k2", txn)]
    [record] = seen["open_ledger_records"]
    assert (record["txn_id"], record["state"], record["past_deadline"]) == (txn, "STAGING", False)
    for bad in ({"partition": 0, "limit": 0}, {"partition": "0"}, {"x": 1}, [0]):
        with pytest.raises(ValidationError):
            await rpc(service, "inspect", bad)
    with pytest.raises(WrongOwner):
        await rpc(service, "inspect", {"partition": 1})
