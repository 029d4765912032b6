"""Key hashing, the partition map and the cluster map (DESIGN section 7).

Theory of operation
-------------------
A key's hash is the first 8 bytes of BLAKE2b of its UTF-8 bytes, read as a big-endian unsigned
64-bit integer (:func:`key_hash`), taken over its routing key (:func:`routing_key`): the key
itself, except for a key of the store's own namespace (first character U+0000), which routes on
its part before its first U+0001, so that the keys sharing that part share a partition (the
DynamoDB endpoint's items of one hash key, in sort-key order; its table catalogue). The hash
space ``[0, 2**64)`` is cut into ``P`` contiguous ranges as equal as possible: partition ``i``
covers ``[i * 2**64 // P, (i+1) * 2**64 // P)``. :meth:`PartitionMap.partition_of_hash` inverts
that with integer arithmetic: ``h`` lies in partition ``((h + 1) * P - 1) // 2**64``, which
agrees with the ranges exactly.

A :class:`ClusterMap` adds ownership: each partition has exactly one owner node, each node has a
``host:port`` address, and the map has an epoch that grows whenever ownership changes (a node
answers ``WrongOwner`` with its epoch; the caller reloads the map). Maps are immutable and are
validated on construction. Everything here is pure: no I/O, no clocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from kvstore.errors import ValidationError
from kvstore.limits import PARTITIONS_DEFAULT, PARTITIONS_MAX
from kvstore.types import NodeId, PartitionId

__all__ = [
    "HASH_SPACE",
    "key_hash",
    "routing_key",
    "PartitionMap",
    "ClusterMap",
]

HASH_SPACE = 1 << 64
"""The number of distinct key hashes."""


def key_hash(key: str) -> int:
    """The 64-bit partitioning hash of ``key``: BLAKE2b-64 of its UTF-8 bytes, big-endian."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def routing_key(key: str) -> str:
    """The part of ``key`` its partition is chosen by (see the module)."""
    if key.startswith("\x00"):
        return key.partition("\x01")[0]
    return key


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class PartitionMap:
    """``partition_count`` contiguous, near-equal ranges of the 64-bit hash space."""

    partition_count: int = PARTITIONS_DEFAULT
    bounds: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """``bounds[i]`` is partition ``i``'s inclusive lower hash; ``bounds[P] == 2**64``."""

    def __post_init__(self) -> None:
        count = self.partition_count
        if not _is_int(count) or not 1 <= count <= PARTITIONS_MAX:
            raise ValidationError(
                "partitions", f"must be an integer in 1..{PARTITIONS_MAX}, got {count!r}"
            )
        bounds = tuple(i * HASH_SPACE // count for i in range(count + 1))
        object.__setattr__(self, "bounds", bounds)

    def partitions(self) -> range:
        """All partition ids, in hash order."""
        return range(self.partition_count)

    def partition_of_hash(self, h: int) -> PartitionId:
        """The partition whose range holds the hash ``h`` (``0 <= h < 2**64``)."""
        if not _is_int(h) or not 0 <= h < HASH_SPACE:
            raise ValidationError("hash", f"must be an integer in 0..2**64-1, got {h!r}")
        return PartitionId(((h + 1) * self.partition_count - 1) // HASH_SPACE)

    def partition_of(self, key: str) -> PartitionId:
        """The partition that holds ``key``."""
        return self.partition_of_hash(key_hash(routing_key(key)))

    def hash_range(self, pid: int) -> tuple[int, int]:
        """Partition ``pid``'s hashes as ``(inclusive lower, exclusive upper)``."""
        self._check_pid(pid)
        return self.bounds[pid], self.bounds[pid + 1]

    def _check_pid(self, pid: int) -> None:
        if not _is_int(pid) or not 0 <= pid < self.partition_count:
            raise ValidationError(
                "partition", f"must be an integer in 0..{self.partition_count - 1}, got {pid!r}"
            )


def _check_address(node: object, address: object) -> None:
    if not isinstance(address, str):
        raise ValidationError("nodes", f"address of node {node!r} must be a string")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValidationError(
            "nodes", f"address of node {node!r} must be 'host:port', got {address!r}"
        )


@dataclass(frozen=True)
class ClusterMap:
    """Which node owns each partition, where each node listens, and the map's epoch."""

    epoch: int
    partitions: PartitionMap
    owners: Mapping[PartitionId, NodeId]
    nodes: Mapping[NodeId, str]

    def __post_init__(self) -> None:
        # Private read-only copies: a caller's later edits to its dicts cannot change the map.
        object.__setattr__(self, "owners", MappingProxyType(dict(self.owners)))
        object.__setattr__(self, "nodes", MappingProxyType(dict(self.nodes)))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ValidationError` unless the map is complete and consistent."""
        if not _is_int(self.epoch) or self.epoch < 0:
            raise ValidationError("epoch", f"must be a non-negative integer, got {self.epoch!r}")
        if not isinstance(self.partitions, PartitionMap):
            raise ValidationError("partitions", "must be a PartitionMap")
        if not self.nodes:
            raise ValidationError("nodes", "at least one node is required")
        for node, address in self.nodes.items():
            if not isinstance(node, str) or not node:
                raise ValidationError("nodes", f"node ids must be non-empty strings, got {node!r}")
            _check_address(node, address)
        expected = set(self.partitions.partitions())
        for owned in self.owners:
            if owned not in expected:
                raise ValidationError(
                    "owners",
                    f"partition {owned!r} is outside 0..{self.partitions.partition_count - 1}",
                )
        for pid in self.partitions.partitions():
            owner = self.owners.get(PartitionId(pid))
            if owner is None:
                raise ValidationError("owners", f"partition {pid} has no owner")
            if owner not in self.nodes:
                raise ValidationError(
                    "owners", f"partition {pid} is owned by unknown node {owner!r}"
                )

    def owner_of(self, pid: PartitionId) -> NodeId:
        """The node that owns partition ``pid``."""
        self.partitions._check_pid(pid)
        return self.owners[pid]

    def node_for_key(self, key: str) -> NodeId:
        """The node that owns the partition holding ``key``."""
        return self.owners[self.partitions.partition_of(key)]

    def partitions_of(self, node: NodeId) -> tuple[PartitionId, ...]:
        """The partitions ``node`` owns, ascending (empty for a node that owns none)."""
        return tuple(sorted(pid for pid, owner in self.owners.items() if owner == node))

    def address_of(self, node: NodeId) -> str:
        """The ``host:port`` of ``node``."""
        try:
            return self.nodes[node]
        except KeyError:
            raise ValidationError("node", f"unknown node {node!r}") from None

    @classmethod
    def round_robin(
        cls,
        node_ids: Sequence[NodeId],
        addresses: Mapping[NodeId, str],
        partition_count: int = PARTITIONS_DEFAULT,
        epoch: int = 1,
    ) -> ClusterMap:
        """A map giving partition ``i`` to ``node_ids[i % len(node_ids)]``."""
        if not node_ids:
            raise ValidationError("nodes", "at least one node is required")
        if len(set(node_ids)) != len(node_ids):
            raise ValidationError("nodes", "node ids must be unique")
        missing = [node for node in node_ids if node not in addresses]
        if missing:
            raise ValidationError("nodes", f"no address for nodes {missing!r}")
        pmap = PartitionMap(partition_count)
        owners = {PartitionId(pid): node_ids[pid % len(node_ids)] for pid in pmap.partitions()}
        nodes = {node: addresses[node] for node in node_ids}
        return cls(epoch=epoch, partitions=pmap, owners=owners, nodes=nodes)
