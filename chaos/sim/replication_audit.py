"""The simulator's omniscient checks of replication (docs/replication.md, rules 2, 4 and 5).

Theory of operation
-------------------
The history checkers see what clients saw; a replication bug may leave no trace there (a lost
batch overwritten later, a stale read nobody compared). The simulator sees every replica, so
it also checks the rules themselves:

* **No acknowledged batch is lost** (rules 2 and 4): every leader reports each batch it
  acknowledged (durable on a majority: the answers waiting on it were released) and every
  leadership reports, as it starts, the position its leader holds. A leadership of a later
  epoch than an acknowledged batch must hold a position at least that batch's, whichever of
  the two events came first.
* **Never two serving leaders** (rule 5): every ``SAMPLE_US`` of virtual time, no partition may
  be served by two running nodes at once (a paused node serves nothing until it resumes; then
  it is checked like the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from chaos.checkers.result import Anomaly
from kvstore.replication.rules import Position
from kvstore.types import NodeId, PartitionId

__all__ = ["ReplicationAudit", "SAMPLE_US"]

SAMPLE_US = 10_000  # how often the serving leaders are compared
_ANOMALIES_MAX = 20


class ReplicationAudit:
    """Collects the replicators' reports; ``anomalies`` lists what broke a rule."""

    def __init__(self, now_us: Callable[[], int]) -> None:
        self._now_us = now_us
        self._acked: dict[PartitionId, list[tuple[Position, NodeId, int]]] = {}
        self._starts: dict[PartitionId, list[tuple[int, Position, NodeId, int]]] = {}
        self.anomalies: list[Anomaly] = []

    def _report(self, kind: str, explanation: str) -> None:
        if len(self.anomalies) < _ANOMALIES_MAX:
            self.anomalies.append(Anomaly(kind, explanation))

    def acknowledged(self, node: NodeId, pid: PartitionId, position: Position) -> None:
        now_us = self._now_us()
        for epoch, held, leader, at_us in self._starts.get(pid, ()):
            if epoch > position.epoch and held < position:
                self._lost(pid, (position, node, now_us), (epoch, held, leader, at_us))
        self._acked.setdefault(pid, []).append((position, node, now_us))

    def leads(self, node: NodeId, pid: PartitionId, epoch: int, position: Position) -> None:
        now_us = self._now_us()
        for acked, by, at_us in self._acked.get(pid, ()):
            if epoch > acked.epoch and position < acked:
                self._lost(pid, (acked, by, at_us), (epoch, position, node, now_us))
        self._starts.setdefault(pid, []).append((epoch, position, node, now_us))

    def _lost(
        self,
        pid: PartitionId,
        ack: tuple[Position, NodeId, int],
        start: tuple[int, Position, NodeId, int],
    ) -> None:
        acked, by, acked_us = ack
        epoch, held, leader, led_us = start
        self._report(
            "lost-acknowledged-batch",
            f"p{pid}: {by} acknowledged batch {tuple(acked)} at {acked_us / 1e6:.6f}s, but "
            f"{leader} leads epoch {epoch} from {led_us / 1e6:.6f}s holding only {tuple(held)}",
        )

    def check_serving(self, serving: Iterable[tuple[PartitionId, list[str]]]) -> None:
        """One sample: the nodes serving each partition right now."""
        for pid, nodes in serving:
            if len(nodes) > 1:
                self._report(
                    "two-leaders",
                    f"p{pid} served by {', '.join(nodes)} at once at {self._now_us() / 1e6:.6f}s",
                )
