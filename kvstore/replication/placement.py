"""The live cluster map of a replicated cluster: each partition's replicas, leader and epoch.

Theory of operation
-------------------
One value, :class:`Placement`, kept as JSON in one control-plane key (``<prefix>/map``) and
changed only by compare-and-set on that key's revision (rule 1 of docs/replication.md: the
control plane alone decides leaders and replica sets). ``epoch`` grows by one with every change;
a partition's ``epoch`` is the map epoch at which its current leadership began, so two
leaderships of one partition never share an epoch, and every batch, request and answer can
carry it as a fencing token.

Node addresses stay in ``cluster.toml``; the placement names nodes by id. Everything here is
pure: building the first placement, encoding, decoding (a malformed value is a
``ProtocolViolation``, never a crash), and the transitions: a new leader (failover), and the
three steps a move is made of, one change each: add a learner, promote it into the replica set,
remove a replica. The leader of a partition may be missing from its replica set (it was just
removed): the remaining replicas then elect one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kvstore.errors import ProtocolViolation
from kvstore.types import NodeId, PartitionId

__all__ = ["PartitionPlacement", "Placement", "initial_placement", "map_key", "node_key"]


def map_key(prefix: str) -> str:
    """The control-plane key holding the placement."""
    return f"{prefix}/map"


def node_key(prefix: str, node: NodeId | str = "") -> str:
    """A node's liveness key (or, with no node, the prefix of them all)."""
    return f"{prefix}/nodes/{node}"


@dataclass(frozen=True, slots=True)
class PartitionPlacement:
    """One partition: its replica set (in preference order), its leader and its epoch, and its
    learners: replicas being filled (snapshot, then the batch stream) that count in no
    majority and never lead until promoted into the set."""

    replicas: tuple[NodeId, ...]
    leader: NodeId
    epoch: int
    learners: tuple[NodeId, ...] = ()

    @property
    def followers(self) -> tuple[NodeId, ...]:
        return tuple(node for node in self.replicas if node != self.leader)

    @property
    def holders(self) -> tuple[NodeId, ...]:
        """Every node that keeps a copy: the replicas, then the learners."""
        return self.replicas + self.learners


@dataclass(frozen=True, slots=True)
class Placement:
    """Every partition's placement (index = partition id) and the map epoch."""

    epoch: int
    partitions: tuple[PartitionPlacement, ...]

    def of(self, pid: PartitionId) -> PartitionPlacement:
        return self.partitions[pid]

    def leader_of(self, pid: PartitionId) -> NodeId:
        return self.partitions[pid].leader

    def replicated_on(self, node: NodeId) -> tuple[PartitionId, ...]:
        return tuple(
            PartitionId(pid) for pid, part in enumerate(self.partitions) if node in part.holders
        )

    def _changed(self, pid: PartitionId, part: PartitionPlacement) -> Placement:
        parts = list(self.partitions)
        parts[pid] = part
        return Placement(epoch=self.epoch + 1, partitions=tuple(parts))

    def with_learner(self, pid: PartitionId, node: NodeId) -> Placement:
        """The next map: ``node`` starts receiving ``pid`` as a learner."""
        part = self.partitions[pid]
        if node in part.holders:
            raise ValueError(f"node {node} already holds partition {pid}")
        return self._changed(pid, replace(part, learners=(*part.learners, node)))

    def promoted(self, pid: PartitionId, node: NodeId) -> Placement:
        """The next map: the learner ``node`` joins ``pid``'s replica set (one change)."""
        part = self.partitions[pid]
        if node not in part.learners:
            raise ValueError(f"node {node} is not a learner of partition {pid}")
        learners = tuple(n for n in part.learners if n != node)
        return self._changed(pid, replace(part, replicas=(*part.replicas, node), learners=learners))

    def without(self, pid: PartitionId, node: NodeId) -> Placement:
        """The next map: ``node`` leaves ``pid``'s replica set (or its learners). Removing the
        leader leaves the partition without one until an election (the remaining replicas run
        it: the leader is no longer in the set)."""
        part = self.partitions[pid]
        if node in part.learners:
            learners = tuple(n for n in part.learners if n != node)
            return self._changed(pid, replace(part, learners=learners))
        if node not in part.replicas or len(part.replicas) == 1:
            raise ValueError(f"node {node} is not a removable replica of partition {pid}")
        replicas = tuple(n for n in part.replicas if n != node)
        return self._changed(pid, replace(part, replicas=replicas))

    def with_leader(self, pid: PartitionId, node: NodeId) -> Placement:
        """The next map: ``node`` leads ``pid`` from the new epoch on."""
        part = self.partitions[pid]
        if node not in part.replicas:
            raise ValueError(f"node {node} holds no replica of partition {pid}")
        return self._changed(pid, replace(part, leader=node, epoch=self.epoch + 1))

    def encode(self) -> bytes:
        body = {
            "epoch": self.epoch,
            "partitions": [
                {
                    "replicas": list(p.replicas),
                    "leader": p.leader,
                    "epoch": p.epoch,
                    **({"learners": list(p.learners)} if p.learners else {}),
                }
                for p in self.partitions
            ],
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    @staticmethod
    def decode(raw: bytes) -> Placement:
        try:
            body = json.loads(raw)
            parts = tuple(
                PartitionPlacement(
                    replicas=tuple(NodeId(str(n)) for n in p["replicas"]),
                    leader=NodeId(str(p["leader"])),
                    epoch=_int(p["epoch"]),
                    learners=tuple(NodeId(str(n)) for n in p.get("learners", ())),
                )
                for p in body["partitions"]
            )
            placement = Placement(epoch=_int(body["epoch"]), partitions=parts)
        except (ValueError, KeyError, TypeError) as error:
            raise ProtocolViolation(
                f"malformed cluster map in the control plane: {error}"
            ) from None
        for pid, part in enumerate(placement.partitions):
            holders = part.holders
            if (
                not part.replicas
                or part.epoch > placement.epoch
                or len(set(holders)) != len(holders)
            ):
                raise ProtocolViolation(f"malformed cluster map: partition {pid} is inconsistent")
        return placement


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a non-negative integer: {value!r}")
    return value


def initial_placement(
    nodes: Sequence[NodeId], partitions: int, replication_factor: int
) -> Placement:
    """The first map: partition ``p`` on ``replication_factor`` consecutive nodes starting at
    ``p mod len(nodes)``, led by the first of them, all at epoch 1."""
    if not 1 <= replication_factor <= len(nodes):
        raise ValueError(
            f"replication factor {replication_factor} needs between 1 and {len(nodes)} nodes"
        )
    parts = []
    for pid in range(partitions):
        replicas = tuple(nodes[(pid + i) % len(nodes)] for i in range(replication_factor))
        parts.append(PartitionPlacement(replicas=replicas, leader=replicas[0], epoch=1))
    return Placement(epoch=1, partitions=tuple(parts))
