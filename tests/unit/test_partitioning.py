"""Key hashing, partition ranges and cluster map validation."""

from __future__ import annotations

import bisect
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.errors import ValidationError
from kvstore.limits import PARTITIONS_DEFAULT, PARTITIONS_MAX
from kvstore.partitioning import HASH_SPACE, ClusterMap, PartitionMap, key_hash
from kvstore.types import NodeId, PartitionId

N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")
ADDRESSES = {N1: "127.0.0.1:7001", N2: "127.0.0.1:7002", N3: "[::1]:7003"}


def test_key_hash_is_pinned() -> None:
    # Computed once; a change here would move every key to another partition.
    assert key_hash("") == 0xE4A6A0577479B2B4
    assert key_hash("a") == 0x40F89E395B66422F
    assert key_hash("user:42") == 0xD9279B7CB3A5B282
    assert key_hash("héllo") == 0x135DD36EC231AFCB


def test_key_hash_range() -> None:
    for i in range(100):
        assert 0 <= key_hash(f"k{i}") < HASH_SPACE


def test_default_map_ranges() -> None:
    pmap = PartitionMap()
    assert pmap.partition_count == PARTITIONS_DEFAULT
    assert pmap.partitions() == range(16)
    assert pmap.hash_range(PartitionId(0)) == (0, 1 << 60)
    assert pmap.hash_range(PartitionId(15)) == (15 << 60, HASH_SPACE)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16, 100, 1000, PARTITIONS_MAX])
def test_ranges_tile_the_hash_space(count: int) -> None:
    pmap = PartitionMap(count)
    lower_prev, upper_prev = pmap.hash_range(PartitionId(0))
    assert lower_prev == 0
    sizes = [upper_prev - lower_prev]
    for pid in range(1, count):
        lower, upper = pmap.hash_range(PartitionId(pid))
        assert lower == upper_prev
        assert lower == pid * HASH_SPACE // count
        sizes.append(upper - lower)
        upper_prev = upper
    assert upper_prev == HASH_SPACE
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16, 100, 1000, PARTITIONS_MAX])
def test_partition_of_hash_boundaries(count: int) -> None:
    pmap = PartitionMap(count)
    for pid in pmap.partitions():
        lower, upper = pmap.hash_range(PartitionId(pid))
        assert pmap.partition_of_hash(lower) == pid
        assert pmap.partition_of_hash(upper - 1) == pid
        if lower > 0:
            assert pmap.partition_of_hash(lower - 1) == pid - 1
        if upper < HASH_SPACE:
            assert pmap.partition_of_hash(upper) == pid + 1
    assert pmap.partition_of_hash(0) == 0
    assert pmap.partition_of_hash(HASH_SPACE - 1) == count - 1


@given(count=st.integers(1, PARTITIONS_MAX), h=st.integers(0, HASH_SPACE - 1))
def test_partition_of_hash_agrees_with_bisect(count: int, h: int) -> None:
    pmap = PartitionMap(count)
    lowers = [pmap.hash_range(PartitionId(pid))[0] for pid in pmap.partitions()]
    pid = pmap.partition_of_hash(h)
    assert pid == bisect.bisect_right(lowers, h) - 1
    lower, upper = pmap.hash_range(pid)
    assert lower <= h < upper


def test_partition_of_key_uses_key_hash() -> None:
    pmap = PartitionMap(16)
    assert pmap.partition_of("") == 0xE  # top nibble of the pinned hash
    assert pmap.partition_of("a") == 0x4
    assert pmap.partition_of("user:42") == 0xD


def test_keys_spread_over_all_partitions() -> None:
    pmap = PartitionMap(16)
    counts = Counter(pmap.partition_of(f"key-{i}") for i in range(10_000))
    assert set(counts) == set(range(16))
    assert min(counts.values()) > 10_000 / 16 * 0.8
    assert max(counts.values()) < 10_000 / 16 * 1.2


@pytest.mark.parametrize("count", [0, -1, PARTITIONS_MAX + 1, True, 2.0, "16"])
def test_partition_count_validation(count: object) -> None:
    with pytest.raises(ValidationError) as info:
        PartitionMap(count)  # type: ignore[arg-type]
    assert info.value.field == "partitions"


def test_bad_hash_and_partition_ids() -> None:
    pmap = PartitionMap(4)
    for h in (-1, HASH_SPACE):
        with pytest.raises(ValidationError):
            pmap.partition_of_hash(h)
    for pid in (-1, 4):
        with pytest.raises(ValidationError):
            pmap.hash_range(PartitionId(pid))


def test_round_robin_map() -> None:
    cmap = ClusterMap.round_robin([N1, N2, N3], ADDRESSES, partition_count=8, epoch=3)
    assert cmap.epoch == 3
    assert cmap.partitions == PartitionMap(8)
    assert [cmap.owner_of(PartitionId(p)) for p in range(8)] == [N1, N2, N3, N1, N2, N3, N1, N2]
    assert cmap.partitions_of(N1) == (0, 3, 6)
    assert cmap.partitions_of(N3) == (2, 5)
    assert cmap.partitions_of(NodeId("nobody")) == ()
    assert cmap.address_of(N3) == "[::1]:7003"
    for i in range(50):
        key = f"k{i}"
        assert cmap.node_for_key(key) == cmap.owner_of(cmap.partitions.partition_of(key))


def test_round_robin_defaults() -> None:
    cmap = ClusterMap.round_robin([N1], {N1: "localhost:9000"})
    assert cmap.epoch == 1
    assert cmap.partitions.partition_count == PARTITIONS_DEFAULT
    assert cmap.partitions_of(N1) == tuple(range(PARTITIONS_DEFAULT))


def test_cluster_map_is_isolated_from_caller_dicts() -> None:
    owners = {PartitionId(0): N1, PartitionId(1): N2}
    nodes = {N1: ADDRESSES[N1], N2: ADDRESSES[N2]}
    cmap = ClusterMap(epoch=0, partitions=PartitionMap(2), owners=owners, nodes=nodes)
    owners[PartitionId(0)] = NodeId("gone")
    del nodes[N2]
    assert cmap.owner_of(PartitionId(0)) == N1
    assert cmap.address_of(N2) == ADDRESSES[N2]
    cmap.validate()


def _map(
    *,
    epoch: int = 1,
    count: int = 2,
    owners: dict[PartitionId, NodeId] | None = None,
    nodes: dict[NodeId, str] | None = None,
) -> ClusterMap:
    if owners is None:
        owners = {PartitionId(0): N1, PartitionId(1): N2}
    if nodes is None:
        nodes = {N1: ADDRESSES[N1], N2: ADDRESSES[N2]}
    return ClusterMap(epoch=epoch, partitions=PartitionMap(count), owners=owners, nodes=nodes)


def test_cluster_map_validation_errors() -> None:
    _map()  # valid
    cases: list[tuple[str, dict[str, object]]] = [
        ("epoch", {"epoch": -1}),
        ("owners", {"owners": {PartitionId(0): N1}}),  # partition 1 has no owner
        ("owners", {"owners": {PartitionId(0): N1, PartitionId(1): N3}}),  # unknown node
        ("owners", {"owners": {PartitionId(p): N1 for p in range(3)}}),  # partition 2 of 2
        ("nodes", {"nodes": {}}),
        ("nodes", {"nodes": {N1: ADDRESSES[N1], N2: "no-port"}}),
        ("nodes", {"nodes": {N1: ADDRESSES[N1], N2: "host:0"}}),
        ("nodes", {"nodes": {N1: ADDRESSES[N1], N2: ":80"}}),
    ]
    for field, kwargs in cases:
        with pytest.raises(ValidationError) as info:
            _map(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field, kwargs


def test_round_robin_validation_errors() -> None:
    with pytest.raises(ValidationError):
        ClusterMap.round_robin([], ADDRESSES)
    with pytest.raises(ValidationError):
        ClusterMap.round_robin([N1, N1], ADDRESSES)
    with pytest.raises(ValidationError):
        ClusterMap.round_robin([N1, NodeId("n9")], ADDRESSES)
    with pytest.raises(ValidationError):
        ClusterMap.round_robin([N1], ADDRESSES, partition_count=0)
    with pytest.raises(ValidationError):
        ClusterMap.round_robin([N1], ADDRESSES, epoch=-1)
    with pytest.raises(ValidationError):
        cmap_ok = ClusterMap.round_robin([N1], ADDRESSES, partition_count=2)
        cmap_ok.owner_of(PartitionId(2))
