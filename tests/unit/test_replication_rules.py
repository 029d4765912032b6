"""The replication rules (kvstore.replication.rules) and the live placement map."""

from __future__ import annotations

import pytest

from kvstore.errors import ProtocolViolation
from kvstore.replication.placement import Placement, initial_placement
from kvstore.replication.rules import (
    Position,
    Verdict,
    catch_up_from,
    choose_leader,
    follower_verdict,
    lease_deadline_us,
    majority,
    majority_seq,
    takeover_wait_us,
)
from kvstore.types import NodeId, PartitionId


def test_positions_order_by_epoch_first() -> None:
    assert Position(2, 1) > Position(1, 99)
    assert Position(2, 5) > Position(2, 4)


def test_follower_accepts_only_the_successor_from_a_leader_at_or_above_its_promise() -> None:
    held = Position(3, 10)
    assert follower_verdict(3, held, 3, Position(3, 10)) is Verdict.ACCEPT
    assert follower_verdict(3, held, 5, Position(3, 10)) is Verdict.ACCEPT  # a newer leader
    assert follower_verdict(4, held, 3, Position(3, 10)) is Verdict.STALE_EPOCH
    assert follower_verdict(3, held, 3, Position(3, 9)) is Verdict.NOT_NEXT  # a gap or a repeat
    assert follower_verdict(3, held, 4, Position(2, 10)) is Verdict.NOT_NEXT  # another history


@pytest.mark.parametrize(("replicas", "needed"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_majority(replicas: int, needed: int) -> None:
    assert majority(replicas) == needed


def test_majority_seq_is_what_a_majority_holds() -> None:
    assert majority_seq(5, {}, ("b", "c")) == 0
    assert majority_seq(5, {"b": 4}, ("b", "c")) == 4
    assert majority_seq(3, {"b": 4, "c": 6}, ("b", "c")) == 4
    assert majority_seq(7, {}, ()) == 7  # replication factor 1
    assert majority_seq(7, {"gone": 9}, ("b", "c")) == 0  # only the current followers count


def test_choose_leader_needs_a_majority_and_takes_the_highest_position() -> None:
    replicas = ("a", "b", "c")
    assert choose_leader(replicas, {"a": Position(1, 5)}) is None
    assert choose_leader(replicas, {"b": Position(1, 5), "c": Position(2, 1)}) == "c"
    assert choose_leader(replicas, {"a": Position(1, 5), "c": Position(1, 5)}) == "a"
    assert choose_leader(replicas, {"x": Position(9, 9), "y": Position(9, 9)}) is None


def test_catch_up_from_ships_the_missing_tail_or_asks_for_a_snapshot() -> None:
    log = {4: 1, 5: 1, 6: 2}
    leader = Position(2, 6)
    assert catch_up_from(leader, log, leader) == 7  # level
    assert catch_up_from(Position(1, 4), log, leader) == 5
    assert catch_up_from(Position(1, 3), log, leader) is None  # before the log: snapshot
    assert catch_up_from(Position(1, 6), log, leader) is None  # seq 6 of another epoch
    assert catch_up_from(Position(1, 7), log, leader) is None  # ahead: a divergent suffix
    assert catch_up_from(Position(0, -1), log, leader) is None  # poisoned
    assert catch_up_from(Position(0, 0), {1: 1}, Position(1, 1)) == 1  # empty replica


def test_the_takeover_wait_outlasts_any_lease_under_the_drift_bound() -> None:
    lease_ms, margin_ms = 1_500, 50
    granted_until = lease_deadline_us(0, lease_ms, margin_ms)
    assert granted_until < lease_ms * 1000 < takeover_wait_us(lease_ms, margin_ms)
    # A clock 1% fast on the old leader and 1% slow here still leaves the old lease first.
    assert granted_until * 1.01 < takeover_wait_us(lease_ms, margin_ms) * 0.99


def test_initial_placement_spreads_leaders_and_replicas() -> None:
    nodes = (NodeId("n1"), NodeId("n2"), NodeId("n3"))
    placement = initial_placement(nodes, 6, 3)
    assert [p.leader for p in placement.partitions] == ["n1", "n2", "n3"] * 2
    assert all(len(set(p.replicas)) == 3 for p in placement.partitions)
    assert initial_placement(nodes, 2, 1).of(PartitionId(1)).replicas == ("n2",)
    with pytest.raises(ValueError):
        initial_placement(nodes, 2, 4)


def test_placement_round_trips_and_moves_leaders_with_a_new_epoch() -> None:
    nodes = (NodeId("n1"), NodeId("n2"), NodeId("n3"))
    placement = initial_placement(nodes, 3, 3)
    moved = placement.with_leader(PartitionId(0), NodeId("n3"))
    assert moved.epoch == placement.epoch + 1 and moved.of(PartitionId(0)).epoch == moved.epoch
    assert moved.of(PartitionId(1)) == placement.of(PartitionId(1))
    assert Placement.decode(moved.encode()) == moved
    with pytest.raises(ValueError):
        initial_placement(nodes[:2], 3, 1).with_leader(PartitionId(0), NodeId("n2"))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{}",
        b'{"epoch":1}',
        b'{"epoch":-1,"partitions":[]}',
        b"[1]",
        b'{"epoch":1,"partitions":[{"replicas":["a","a"],"leader":"a","epoch":1}]}',
        b'{"epoch":1,"partitions":[{"replicas":[],"leader":"a","epoch":1}]}',
        b'{"epoch":1,"partitions":[{"replicas":["a"],"leader":"a","epoch":1,"learners":["a"]}]}',
        b'{"epoch":1,"partitions":[{"replicas":["a"],"leader":"a","epoch":2}]}',
    ],
)
def test_a_malformed_map_is_a_protocol_violation(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        Placement.decode(raw)


def test_a_move_is_three_single_changes_each_a_new_map_epoch() -> None:
    nodes = (NodeId("n1"), NodeId("n2"), NodeId("n3"))
    p0, n4 = PartitionId(0), NodeId("n4")
    start = initial_placement(nodes, 2, 3)
    learning = start.with_learner(p0, n4)
    assert learning.of(p0).learners == (n4,) and learning.of(p0).replicas == nodes
    assert learning.replicated_on(n4) == (p0,)
    promoted = learning.promoted(p0, n4)
    assert promoted.of(p0).replicas == (*nodes, n4) and not promoted.of(p0).learners
    moved = promoted.without(p0, NodeId("n1"))  # the leader leaves: an election follows
    assert moved.of(p0).replicas == (NodeId("n2"), NodeId("n3"), n4)
    assert moved.of(p0).leader == "n1" and moved.of(p0).epoch == start.of(p0).epoch
    assert [m.epoch for m in (start, learning, promoted, moved)] == [1, 2, 3, 4]
    assert Placement.decode(learning.encode()) == learning
    with pytest.raises(ValueError):
        learning.with_learner(p0, n4)
    with pytest.raises(ValueError):
        start.promoted(p0, n4)
    with pytest.raises(ValueError):
        initial_placement(nodes, 1, 1).without(p0, NodeId("n1"))  # the last replica
