"""A coordinator that follows the leaders of a replicated cluster (``Coordinator.follow``).

Goal: an operation refused before anything ran (``WrongOwner``, an ``Unavailable`` refusal) is
run again on the new map when the map moved, a bounded number of times, and answered as the
refusal otherwise; a coordinator that never follows answers at once, as before; a coordinator
outside the nodes refuses a replicated cluster (nothing would move its map). Method: a
coordinator over a scripted transport that records where each request went (by the owner the
coordinator's map names when it is sent); maps are moved by ``follow`` from the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import kvstore
from kvstore.config import ReplicationSpec, load_cluster, write_cluster_file, write_secret
from kvstore.coordinator.engine import Coordinator
from kvstore.errors import ErrorCode, KvError, Unavailable, ValidationError, WrongOwner
from kvstore.limits import COORDINATOR_REROUTE_WAIT_MS, COORDINATOR_REROUTES_MAX
from kvstore.messages import ExecuteReply, ExecuteRequest, GetReply, GetRequest, Reply, Request
from kvstore.ops import op_from_json
from kvstore.partitioning import ClusterMap, PartitionMap
from kvstore.types import NodeId, PartitionId

pytestmark = pytest.mark.asyncio
NODES = {NodeId("n1"): "127.0.0.1:1", NodeId("n2"): "127.0.0.1:2"}
PARTITIONS = 2
SECRET = "s" * 32


def leaders(node: str, epoch: int) -> ClusterMap:
    """Every partition led by ``node``, at map ``epoch``."""
    owners = {PartitionId(p): NodeId(node) for p in range(PARTITIONS)}
    return ClusterMap(epoch=epoch, partitions=PartitionMap(PARTITIONS), owners=owners, nodes=NODES)


class Scripted:
    """A transport: ``refuse(request, node)`` returns the error to raise for a request routed
    to ``node`` (the owner in the coordinator's map when sent), or None to answer it."""

    def __init__(self, refuse: Callable[[Request, str], KvError | None]) -> None:
        self.refuse = refuse
        self.coordinator: Coordinator | None = None
        self.sent: list[str] = []

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        assert self.coordinator is not None
        node = self.coordinator.cluster_map.owner_of(request.partition)
        self.sent.append(node)
        error = self.refuse(request, node)
        if error is not None:
            raise error
        if isinstance(request, ExecuteRequest):
            return ExecuteReply(txn_id=request.txn_id, committed=True)
        assert isinstance(request, GetRequest)
        return GetReply(item=None)


def coordinator_over(transport: Scripted) -> Coordinator:
    coordinator = Coordinator(leaders("n1", 1), SECRET, transport=transport)
    transport.coordinator = coordinator
    return coordinator


def wrong_owner(request: Request, node: str) -> KvError | None:
    if node == "n1":
        return WrongOwner("n1 does not lead", details={"owner": "n2", "epoch": 2})
    return None


async def test_a_refusal_then_a_moved_map_runs_the_get_again_on_the_new_leader() -> None:
    transport = Scripted(wrong_owner)
    coordinator = coordinator_over(transport)
    coordinator.follow(leaders("n1", 1))  # following, map unchanged
    # The refusing replica read the new map first; ours moves a moment later.
    asyncio.get_running_loop().call_later(0.05, coordinator.follow, leaders("n2", 2))
    assert await coordinator.get("k") is None
    assert transport.sent == ["n1", "n2"]


async def test_a_one_partition_transaction_refused_definitively_runs_again() -> None:
    transport = Scripted(wrong_owner)
    coordinator = coordinator_over(transport)
    coordinator.follow(leaders("n1", 1))
    asyncio.get_running_loop().call_later(0.05, coordinator.follow, leaders("n2", 2))
    op = op_from_json({"op": "put", "key": "k", "value": 1})
    result = await coordinator.transact([op], token=None)
    assert result.committed
    assert transport.sent == ["n1", "n2"]


async def test_without_follow_a_refusal_is_answered_at_once() -> None:
    transport = Scripted(wrong_owner)
    coordinator = coordinator_over(transport)
    with pytest.raises(KvError) as raised:
        await coordinator.get("k")
    assert raised.value.code is ErrorCode.Unavailable  # an internal fault, retryable
    assert raised.value.details.get("cause") == "WrongOwner"
    assert transport.sent == ["n1"]


async def test_a_map_that_does_not_move_ends_the_wait_with_the_refusal() -> None:
    transport = Scripted(wrong_owner)
    coordinator = coordinator_over(transport)
    coordinator.follow(leaders("n1", 1))
    started = time.monotonic()
    with pytest.raises(KvError):
        await coordinator.get("k")
    assert transport.sent == ["n1"]
    assert time.monotonic() - started >= COORDINATOR_REROUTE_WAIT_MS / 1000 * 0.9


async def test_an_unavailable_refusal_is_run_again_only_when_the_map_moved() -> None:
    def changing_leader(request: Request, node: str) -> KvError | None:
        if node == "n1":
            assert transport.coordinator is not None
            transport.coordinator.follow(leaders("n2", 2))  # moved while the call ran
            return Unavailable("changing leader", details={"sent": False})
        return None

    transport = Scripted(changing_leader)
    coordinator = coordinator_over(transport)
    assert await coordinator.get("k") is None
    assert transport.sent == ["n1", "n2"]

    still = Scripted(lambda request, node: Unavailable("changing", details={"sent": False}))
    steady = coordinator_over(still)
    steady.follow(leaders("n1", 1))
    with pytest.raises(KvError):
        await steady.get("k")
    assert still.sent == ["n1"]  # the map did not move: the caller retries


async def test_reruns_are_bounded() -> None:
    epochs = iter(range(2, 100))

    def always_moving(request: Request, node: str) -> KvError | None:
        assert transport.coordinator is not None
        transport.coordinator.follow(leaders("n1", next(epochs)))
        return WrongOwner("moved again", details={})

    transport = Scripted(always_moving)
    coordinator = coordinator_over(transport)
    with pytest.raises(KvError):
        await coordinator.get("k")
    assert len(transport.sent) == COORDINATOR_REROUTES_MAX + 1


async def test_an_older_map_is_ignored() -> None:
    coordinator = coordinator_over(Scripted(wrong_owner))
    coordinator.follow(leaders("n2", 3))
    coordinator.follow(leaders("n1", 2))
    assert coordinator.cluster_map.epoch == 3
    assert coordinator.cluster_map.owner_of(PartitionId(0)) == "n2"


async def test_a_standalone_coordinator_refuses_a_replicated_cluster(tmp_path: Path) -> None:
    spec = ReplicationSpec(factor=2, endpoints=("http://127.0.0.1:2379",), prefix="/t")
    write_cluster_file(tmp_path / "cluster.toml", nodes=NODES, replication=spec)
    write_secret(tmp_path / "secret")
    config = load_cluster(tmp_path / "cluster.toml")
    with pytest.raises(ValidationError) as caught:
        Coordinator.from_config(config)  # a coordinator process, the SDK's direct mode
    assert caught.value.field == "replication"
    with pytest.raises(ValidationError):
        kvstore.connect(cluster=tmp_path, mode="direct")
