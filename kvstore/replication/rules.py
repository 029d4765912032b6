"""The replication rules, as pure functions (docs/replication.md has each rule's reason).

Theory of operation
-------------------
A partition's replicas hold the same sequence of write batches. The leader numbers each batch of
the partition (``seq``, from 1) and labels it with its leadership ``epoch`` (the cluster map's
epoch at which it became leader); the pair is the batch's :class:`Position`. Positions order
lexicographically, epoch first: that is the order in which an election compares replicas
(Viewstamped Replication's view-change rule; ``seq`` alone is Raft's Figure-8 trap). A replica
persists, with the rows, the position of the last batch it holds and ``promised``, the highest
leader epoch it promised to follow.

1. **A follower accepts** a batch only from a leader epoch at least its promise and only as the
   successor of the last batch it holds (same previous position): :func:`follower_verdict`.
   Otherwise it answers its own position; the leader then re-ships from its log or sends a
   snapshot (:func:`catch_up_from`).
2. **Durable means a majority**: a batch is durable once a majority of the replica set (the
   leader included) holds it fsynced under the current epoch: :func:`majority_seq`.
3. **Elections promise**: a replica answering a position poll for a proposed epoch promises it
   (and persists the promise before answering), so an old leader can no longer gather a majority
   for anything once the poll has a majority.
4. **The new leader** is the polled replica with the highest position, among answers from a
   majority: :func:`choose_leader`. It holds every batch a majority acknowledged.
5. **Leases**: a leader serves until ``sent + lease * (1 - drift) - margin`` after the send time of
   the last control-plane read that confirmed its epoch (:func:`lease_deadline_us`); a new leader
   serves nothing before ``lease * (1 + drift) + margin`` after it learned of its election
   (:func:`takeover_wait_us`), so a deposed leader has stopped by then whatever its state.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Mapping, Sequence
from typing import NamedTuple

from kvstore.mutants import NO_MUTANTS, Mutant

__all__ = [
    "Position",
    "Verdict",
    "follower_verdict",
    "majority",
    "majority_seq",
    "choose_leader",
    "catch_up_from",
    "lease_deadline_us",
    "takeover_wait_us",
    "DRIFT_PPM",
]

DRIFT_PPM = 10_000
"""The assumed bound on the rate difference of two nodes' clocks: 1%, in parts per million."""


class Position(NamedTuple):
    """The last batch a replica holds: (leader epoch, sequence number); (0, 0) for none."""

    epoch: int
    seq: int


class Verdict(enum.Enum):
    ACCEPT = "accept"
    STALE_EPOCH = "stale_epoch"  # the sender's leadership is older than our promise
    NOT_NEXT = "not_next"  # we do not hold the batch it follows: re-ship or snapshot


def follower_verdict(
    promised: int,
    held: Position,
    leader_epoch: int,
    prev: Position,
    mutants: Container[Mutant] = NO_MUTANTS,
) -> Verdict:
    """Rule 1: may a replica holding ``held``, promised to ``promised``, take a batch that a leader
    of ``leader_epoch`` ships as the successor of ``prev``?"""
    if leader_epoch < promised and Mutant.ACCEPT_OLD_EPOCH not in mutants:
        return Verdict.STALE_EPOCH
    if prev != held:
        return Verdict.NOT_NEXT
    return Verdict.ACCEPT


def majority(replicas: int) -> int:
    """How many of ``replicas`` make a majority."""
    return replicas // 2 + 1


def majority_seq(
    own_seq: int,
    acked: Mapping[str, int],
    followers: Sequence[str],
    mutants: Container[Mutant] = NO_MUTANTS,
) -> int:
    """Rule 2: the highest ``seq`` held durably by a majority of the leader and ``followers``,
    given the leader's own durable ``own_seq`` and each follower's acknowledged one."""
    held = sorted([own_seq, *(acked.get(node, 0) for node in followers)], reverse=True)
    if Mutant.ACK_BEFORE_MAJORITY in mutants:
        return own_seq  # the mutant: the leader's own fsync is enough
    return held[majority(len(held)) - 1]


def choose_leader(
    replicas: Sequence[str],
    positions: Mapping[str, Position],
    mutants: Container[Mutant] = NO_MUTANTS,
) -> str | None:
    """Rule 4: the replica with the highest position among the answers, once a majority of
    ``replicas`` answered (``None`` before); ties go to the earlier replica in the set's order."""
    answered = [node for node in replicas if node in positions]
    if len(answered) < majority(len(replicas)):
        return None
    if Mutant.ELECT_ANY_REPLICA in mutants:
        return answered[-1]  # the mutant: whoever answered, holding every batch or not
    best = answered[0]
    for node in answered[1:]:
        if positions[node] > positions[best]:
            best = node
    return best


def catch_up_from(follower: Position, log: Mapping[int, int], leader: Position) -> int | None:
    """Where a leader re-ships from to a follower holding ``follower``: the first ``seq`` to send
    (``leader.seq + 1`` when it is level), or ``None`` when only a snapshot helps. ``log`` maps
    the seqs the leader still holds in memory to their epochs; a follower's position is a prefix
    of the leader's history iff the leader holds the same (seq, epoch)."""
    if follower == leader:
        return leader.seq + 1
    if follower.seq < leader.seq and log.get(follower.seq) == follower.epoch:
        return follower.seq + 1
    if follower.seq == 0 and follower.epoch == 0 and log.get(1) is not None:
        return 1
    return None


def lease_deadline_us(sent_us: int, lease_ms: int, margin_ms: int) -> int:
    """Rule 5: until when a leader may serve after a confirming read sent at ``sent_us``."""
    lease_us = lease_ms * 1000
    return sent_us + lease_us - lease_us * DRIFT_PPM // 1_000_000 - margin_ms * 1000


def takeover_wait_us(lease_ms: int, margin_ms: int, mutants: Container[Mutant] = NO_MUTANTS) -> int:
    """Rule 5: how long a new leader waits after learning of its election before serving."""
    if Mutant.SERVE_BEFORE_LEASE_END in mutants:
        return 0
    lease_us = lease_ms * 1000
    return lease_us + lease_us * DRIFT_PPM // 1_000_000 + margin_ms * 1000
