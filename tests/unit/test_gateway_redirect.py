"""A replicated node's gateway sends native calls to their partition's leader.

Goal: a native call whose home partition (its key's, its token's, its first key's) another node
leads is refused with that replica's ``WrongOwner`` before anything runs; a scan has no home and
runs; a node that leads the home partition runs the call. Method: a ``NodeGateway`` on a real
cluster file whose runtime is a recording ``submit`` (answering every get at once) and whose
``redirect`` names a leader for partitions outside a chosen set.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvstore import native
from kvstore.config import ClusterConfig, load_cluster, write_cluster_file, write_secret
from kvstore.errors import KvError, WrongOwner
from kvstore.messages import GetReply, Request, ScanRequest
from kvstore.rpc import RpcPool
from kvstore.runtime.admission import LagGate
from kvstore.storage_node.gateway import NodeGateway
from kvstore.timestamps import HybridClock, system_clock_us
from kvstore.types import PartitionId

pytestmark = pytest.mark.asyncio
NODES = {"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002"}


@pytest.fixture
def config(tmp_path: Path) -> ClusterConfig:
    write_cluster_file(tmp_path / "cluster.toml", nodes=NODES, partitions=4)
    write_secret(tmp_path / "secret")
    return load_cluster(tmp_path / "cluster.toml")


async def answer(gateway: NodeGateway, method: str, body: object) -> object:
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    gateway.handle_native(method, body, 1_000, done.set_result)
    return await done


async def test_calls_go_to_the_leader_of_their_home_partition(config: ClusterConfig) -> None:
    partition_of = config.cluster_map.partitions.partition_of
    led = partition_of("mine")
    submitted: list[Request] = []

    def submit(request: Request, respond: object) -> None:
        submitted.append(request)
        respond(GetReply(item=None))  # type: ignore[operator]

    def redirect(pid: PartitionId) -> KvError | None:
        if pid == led:
            return None
        return WrongOwner("not here", details={"owner": "n2", "epoch": 4, "partition": pid})

    pool = RpcPool(config.secret())
    gateway = NodeGateway(
        config,
        "n1",
        pool=pool,
        owns=lambda pid: True,
        submit=submit,
        clock=HybridClock(system_clock_us, 1),
        physical_clock=system_clock_us,
        mutants=frozenset(),
        lag_gate=LagGate(),
        redirect=redirect,
    )
    try:
        other = next(key for key in (f"k{i}" for i in range(100)) if partition_of(key) != led)
        with pytest.raises(WrongOwner) as raised:
            gateway.handle_native(native.GET, {"key": other}, 1_000, lambda outcome: None)
        assert raised.value.details["owner"] == "n2"
        with pytest.raises(WrongOwner):
            gateway.handle_native(native.READ, {"keys": [other, "mine"]}, 1_000, print)
        assert submitted == []  # nothing ran

        assert await answer(gateway, native.GET, {"key": "mine"}) == native.encode_item(None)
        assert len(submitted) == 1
        # A scan has no home: this node coordinates it (its partitions' answers do not matter).
        await answer(gateway, native.SCAN, {"prefix": None, "start": None, "end": None, "limit": 1})
        assert any(isinstance(request, ScanRequest) for request in submitted)
    finally:
        await gateway.close()
        await pool.close()
