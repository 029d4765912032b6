"""Deliberate protocol bugs, for proving that the chaos harness catches broken stores.

Theory of operation
-------------------
A checker that never fails proves nothing. Each :class:`Mutant` names one rule of the protocol
that the cores can be told to break; the simulator runs with one mutant armed and must report an
anomaly. The cores consult a :class:`Mutants` value (``PartitionConfig.mutants``, ``ReadTxn``'s and
``HybridClock``'s ``mutants`` argument). Its default, :data:`NO_MUTANTS`, breaks nothing.

Arming is made impossible by accident: :meth:`Mutants.arm` refuses unless the process
environment holds ``KVSTORE_MUTANTS=i-want-a-broken-store`` (the chaos commands set it for their
own process, or for the processes of a chaos run), and no configuration file format has a field
for mutants. A service arms mutants only through :mod:`kvstore.chaos_control`: it needs
``KVSTORE_CHAOS_CONTROL=1``, the names in ``KVSTORE_CHAOS_MUTANTS`` *and* the arming variable,
and refuses to start when asked for mutants without all three. The constructor itself checks the
environment whenever the set is not empty, so there is no way around it, and a ``Mutants`` value
cannot be changed once built.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from typing import Final

__all__ = ["Mutant", "Mutants", "MutantsNotAllowed", "NO_MUTANTS", "ARMING_ENV", "ARMING_VALUE"]

ARMING_ENV: Final = "KVSTORE_MUTANTS"
ARMING_VALUE: Final = "i-want-a-broken-store"


class Mutant(enum.Enum):
    """One broken rule; the value is its command-line name."""

    SKIP_READ_TS_CHECK = "skip-read-ts-check"  # writes below a key's read_ts are accepted
    READS_SEE_INTENTS = "reads-see-intents"  # reads return pending intents as committed
    PRESUME_ABORT = "presume-abort"  # a participant cancels a stale intent on its own
    NO_TS_TIE_BREAK = "no-ts-tie-break"  # every clock stamps the same origin
    DOUBLE_APPLY_COMMIT = "double-apply-commit"  # a duplicate commit applies the ops again
    SKIP_SECOND_READ_ROUND = "skip-second-read-round"  # a read answers after one round
    WATERMARK_DOWN_ON_DELETE = "watermark-down-on-delete"  # a delete drops the key's floor
    # a one-node transaction applies the partitions that voted yes though another voted no:
    NODE_EXECUTE_PARTIAL = "node-execute-partial"
    # A prepare or execute parked behind an intent keeps the vote it would have had when it was
    # parked (computed on the committed value under the intent) instead of checking again:
    STALE_VOTE_AFTER_WAIT = "stale-vote-after-wait"
    # Parallel commit (DESIGN section 6, rule 5a):
    UNKNOWN_HOLDS = "unknown-holds"  # recovery counts "never prepared here" as a yes vote
    FORGET_REFUSAL = "forget-refusal"  # a participant's refusal mark does not stop a prepare
    FORGET_APPLIED = "forget-applied"  # a participant applies a commit without an applied mark
    # Of the write coordinator: a commit answered at all-yes (CockroachDB's implicit commit),
    # before the participants applied it:
    ANSWER_BEFORE_APPLIED = "answer-before-applied"
    # Of the node runtime (kvstore.runtime.node), not of a core:
    REPLY_BEFORE_FLUSH = "reply-before-flush"  # answers leave before their writes are durable
    ACK_WITH_EARLIER_FLUSH = "ack-with-earlier-flush"  # answers ride the flush before their own
    # Of replication (kvstore.replication.rules, docs/replication.md):
    ACK_BEFORE_MAJORITY = "ack-before-majority"  # a batch counts durable on the leader's fsync
    ACCEPT_OLD_EPOCH = "accept-old-epoch"  # a follower takes batches from a deposed leader
    SERVE_BEFORE_LEASE_END = "serve-before-lease-end"  # a new leader serves at once
    ELECT_ANY_REPLICA = "elect-any-replica"  # the election ignores which replica holds the most
    # Of snapshot reads and backups (kvstore.storage_node.core, docs/backup.md):
    SNAPSHOT_WITHOUT_FLOOR = "snapshot-without-floor"  # a read at ``at`` leaves the floor below it
    # Of the DynamoDB endpoint (kvstore.dynamodb, docs/dynamodb.md): a node takes every DynamoDB
    # condition expression as holding (caught by real-process runs of the DynamoDB bank workload,
    # python -m chaos.mutant_runs; the simulator drives no DynamoDB requests):
    DDB_CONDITION_IGNORED = "ddb-condition-ignored"
    # Of the clock (kvstore.timestamps), in clones of a process (a fork, a snapshot restored twice):
    NO_FORK_REDRAW = "no-fork-redraw"  # a cloned clock keeps its origin: copies reissue timestamps


class MutantsNotAllowed(RuntimeError):
    """Raised when something tries to arm a mutant outside a chaos run."""


class Mutants:
    """An immutable set of armed mutants; ``bool(m)`` is True when any is armed."""

    __slots__ = ("_armed",)
    _armed: frozenset[Mutant]

    def __init__(self, armed: frozenset[Mutant] = frozenset()) -> None:
        if armed and os.environ.get(ARMING_ENV) != ARMING_VALUE:
            raise MutantsNotAllowed(
                f"arming {sorted(m.value for m in armed)} needs {ARMING_ENV}={ARMING_VALUE}; "
                "mutants exist only for the chaos harness"
            )
        object.__setattr__(self, "_armed", frozenset(armed))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Mutants values are immutable")

    @classmethod
    def arm(cls, *mutants: Mutant) -> Mutants:
        """Arm ``mutants``; raises :class:`MutantsNotAllowed` unless the environment allows it."""
        return cls(frozenset(mutants))

    def __contains__(self, mutant: object) -> bool:
        return mutant in self._armed

    def __bool__(self) -> bool:
        return bool(self._armed)

    def __iter__(self) -> Iterator[Mutant]:
        return iter(sorted(self._armed, key=lambda m: m.value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mutants) and self._armed == other._armed

    def __hash__(self) -> int:
        return hash(self._armed)

    def __repr__(self) -> str:
        return f"Mutants({', '.join(sorted(m.value for m in self._armed))})"


NO_MUTANTS: Final = Mutants()
