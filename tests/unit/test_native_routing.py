"""The SDK's native backend in a replicated cluster: where calls go when leaders move.

Goal: a ``WrongOwner`` naming the leader sends the call there at once and routes the partition
there from then on (bounded, and never back to an older epoch's leader); an unreachable node
moves the partition's route to the next replica for the next attempt; a node's own refusal
(``Unavailable`` on a live connection) moves nothing. Method: a ``NativeBackend`` on a real
cluster file (factor 3) whose RPC pool is replaced by scripted clients, one per address.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvstore import native
from kvstore.client.native import NativeBackend
from kvstore.config import ReplicationSpec, load_cluster, write_cluster_file, write_secret
from kvstore.errors import KvError, Unavailable, WrongOwner
from kvstore.limits import NATIVE_REROUTES_MAX
from kvstore.types import NodeId, PartitionId

pytestmark = pytest.mark.asyncio
NODES = {"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"}
BY_ADDRESS = {address: node for node, address in NODES.items()}
KEY = "k"

Script = Callable[[str], object]  # node -> the reply, or a KvError to raise


class Client:
    def __init__(self, node: str, script: Script, calls: list[str]) -> None:
        self.node = node
        self.script = script
        self.calls = calls
        self.connected = True

    async def call(self, method: str, body: object, timeout_ms: int) -> object:
        self.calls.append(self.node)
        outcome = self.script(self.node)
        if isinstance(outcome, KvError):
            if outcome.details.get("down"):
                self.connected = False
            raise outcome
        return outcome


class Pool:
    def __init__(self, script: Script) -> None:
        self.calls: list[str] = []
        self.clients: dict[str, Client] = {}
        self.script = script

    def client(self, address: str) -> Client:
        node = BY_ADDRESS[address]
        return self.clients.setdefault(node, Client(node, self.script, self.calls))

    async def close(self) -> None:
        pass


@pytest.fixture
def backend(tmp_path: Path) -> NativeBackend:
    spec = ReplicationSpec(factor=3, endpoints=("http://127.0.0.1:2379",), prefix="/t")
    write_cluster_file(tmp_path / "cluster.toml", nodes=NODES, partitions=3, replication=spec)
    write_secret(tmp_path / "secret")
    return NativeBackend(load_cluster(tmp_path / "cluster.toml"))


def scripted(backend: NativeBackend, script: Script) -> Pool:
    pool = Pool(script)
    backend._pool = pool  # type: ignore[assignment]
    return pool


def home(backend: NativeBackend) -> PartitionId:
    return backend.config.cluster_map.partitions.partition_of(KEY)


def refused_by_all_but(leader: str, epoch: int = 5) -> Script:
    def script(node: str) -> object:
        if node == leader:
            return native.encode_item(None)
        return WrongOwner("not the leader", details={"owner": leader, "epoch": epoch})

    return script


async def test_wrong_owner_sends_the_call_to_the_leader_and_keeps_routing_there(
    backend: NativeBackend,
) -> None:
    first = backend.node_of(home(backend))
    leader = next(node for node in NODES if node != first)
    pool = scripted(backend, refused_by_all_but(leader))
    assert await backend.get(KEY, 5.0) is None
    assert pool.calls == [first, leader]
    assert await backend.get(KEY, 5.0) is None
    assert pool.calls == [first, leader, leader]
    assert backend.node_of(home(backend)) == leader


async def test_reroutes_are_bounded(backend: NativeBackend) -> None:
    epochs = iter(range(1, 100))

    def ping_pong(node: str) -> object:  # every node names another one
        other = "n2" if node == "n1" else "n1"
        return WrongOwner("moved", details={"owner": other, "epoch": next(epochs)})

    pool = scripted(backend, ping_pong)
    with pytest.raises(WrongOwner):
        await backend.get(KEY, 5.0)
    assert len(pool.calls) == NATIVE_REROUTES_MAX + 1


async def test_a_hint_from_an_older_epoch_is_not_followed(backend: NativeBackend) -> None:
    pid = home(backend)
    first = backend.node_of(pid)
    leader, stale = (node for node in NODES if node != first)
    scripted(backend, refused_by_all_but(leader, epoch=7))
    await backend.get(KEY, 5.0)
    pool = scripted(backend, lambda node: WrongOwner("old", details={"owner": stale, "epoch": 6}))
    with pytest.raises(WrongOwner):
        await backend.get(KEY, 5.0)
    assert pool.calls == [leader]
    assert backend.node_of(pid) == leader


async def test_a_hint_naming_no_known_node_is_raised(backend: NativeBackend) -> None:
    pool = scripted(backend, lambda node: WrongOwner("?", details={"owner": "n9", "epoch": 9}))
    with pytest.raises(WrongOwner):
        await backend.get(KEY, 5.0)
    assert len(pool.calls) == 1


async def test_a_leader_added_since_the_file_was_read_is_found_in_it_again(
    backend: NativeBackend, tmp_path: Path
) -> None:
    spec = ReplicationSpec(factor=3, endpoints=("http://127.0.0.1:2379",), prefix="/t")
    grown = {**NODES, "n4": "127.0.0.1:7004"}
    write_cluster_file(tmp_path / "cluster.toml", nodes=grown, partitions=3, replication=spec)
    BY_ADDRESS["127.0.0.1:7004"] = "n4"
    try:
        pool = scripted(backend, refused_by_all_but("n4"))
        first = backend.node_of(home(backend))
        assert await backend.get(KEY, 5.0) is None  # kvctl node add, then n4 was elected
        assert pool.calls == [first, "n4"]
        assert backend.node_of(home(backend)) == "n4"
    finally:
        del BY_ADDRESS["127.0.0.1:7004"]


async def test_an_unreachable_node_moves_the_route_to_the_next_replica(
    backend: NativeBackend,
) -> None:
    pid = home(backend)
    first = backend.node_of(pid)
    down = Unavailable("cannot connect", details={"sent": False, "down": True})
    pool = scripted(backend, lambda node: down if node == first else native.encode_item(None))
    with pytest.raises(Unavailable):
        await backend.get(KEY, 5.0)  # the retry policy decides about a next attempt
    moved = backend.node_of(pid)
    assert moved != first
    replicas = list(NODES)
    assert moved == replicas[(replicas.index(first) + 1) % len(replicas)]
    assert await backend.get(KEY, 5.0) is None
    assert pool.calls == [first, moved]


async def test_a_refusal_on_a_live_connection_moves_nothing(backend: NativeBackend) -> None:
    pid = home(backend)
    first = backend.node_of(pid)
    changing = Unavailable("partition is changing leader", details={"sent": False})
    scripted(backend, lambda node: changing)
    with pytest.raises(Unavailable):
        await backend.get(KEY, 5.0)
    assert backend.node_of(pid) == first == NodeId(first)
