"""Failover, measured: how long the partitions a leader fault hit went without a commit.

Theory of operation
-------------------
A replicated run's leader faults (``kill-leader``, ``pause-leader``, ``partition-leader``, see
:mod:`chaos.nemesis`) each record, in their :class:`~chaos.report.FaultWindow`, the partitions
the target node led when the fault opened; ``kill-etcd`` records every partition (after one
lease no leader serves). What a client sees of such a fault is a stretch of time in which those
partitions acknowledge no write. This module measures it from the history alone:

1. **Acknowledged writes per partition** (:func:`acknowledged_writes`): every ``ok`` completion
   that wrote something (:func:`written_keys`: a transaction's ``append`` and ``w`` micro-ops,
   a bank transfer's two accounts, a set insert's key) counts, at its completion time, for the
   partition of each key it wrote (``partition_of``, the cluster's
   :class:`~kvstore.partitioning.PartitionMap`). ``fail`` and ``info`` completions never count:
   an ``info`` write may have committed, but nobody was told.
2. **The gaps of a partition** are the intervals between consecutive acknowledgements, the
   first one opening at the load's start and the last one closing at the load's end (so a
   partition that never acknowledged again after a fault has a gap up to the end of the load,
   flagged as not recovered).
3. **A fault's unavailability** on one of its partitions is measured on the gaps that overlap
   the fault window ``[start, end]``: each counts from the fault's start (or from its own start,
   when it opened later, as after ``kill-etcd``, where leaders serve on for one lease) to the
   next acknowledgement; the longest is the partition's figure, and the fault's figure is the
   longest of its partitions' (:func:`unavailability`). Counting from the fault's start rather
   than from the last acknowledgement before it leaves out the quiet time before the fault (a
   partition holding one of the workload's eight keys may see no write for several hundred
   milliseconds); the whole gap is kept too (``gap_s``). The figure ends at the first
   acknowledgement after the outage, so it includes the clients' own delays (backoff, requests
   still waiting on the dead leader): what an application sees, an upper bound on the store's
   own outage. Partitions the workload never writes (``keyed``) cannot be measured and are
   listed apart.
4. **A gap counts for the first fault that overlaps it.** When a partition is still without a
   commit from an earlier fault as the next one opens, the later fault gets its own longest
   gap that no earlier fault took; if every gap it overlaps was taken, it shows the ongoing one
   marked ``earlier`` (left out of the per-kind maxima), so one outage is never counted twice.

Everything here is pure (histories and windows in, figures out) and unit-tested on synthetic
histories (``tests/chaos/test_failover.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from chaos.history import History, Op

if TYPE_CHECKING:  # chaos.report renders these figures and imports this module
    from chaos.report import FaultWindow

__all__ = [
    "LEADER_FAULTS",
    "MEASURED_FAULTS",
    "SET_PREFIX",
    "PartitionGap",
    "Unavailability",
    "written_keys",
    "acknowledged_writes",
    "unavailability",
    "longest_by_kind",
    "failover_text",
]

LEADER_FAULTS: Final = ("kill-leader", "pause-leader", "partition-leader")
MEASURED_FAULTS: Final = (*LEADER_FAULTS, "kill-etcd")
SET_PREFIX: Final = "set/"  # the set workload's keys (chaos.sim.workloads.SetInserts)
_WRITE_MOPS: Final = frozenset({"append", "w"})


@dataclass(frozen=True)
class PartitionGap:
    """The stretch without an acknowledged write on ``partition`` that a fault window caused
    (see the module): the gap from ``start_ns`` (its last acknowledgement before, or the load's
    start) to ``end_ns`` (its next acknowledgement, or the load's end when ``recovered`` is
    false), counted from ``from_ns`` (the later of ``start_ns`` and the fault's start)."""

    partition: int
    start_ns: int
    end_ns: int
    from_ns: int
    recovered: bool
    earlier: bool = False  # the gap was already counted for an earlier fault

    @property
    def seconds(self) -> float:
        """The unavailability: from ``from_ns`` to the next acknowledgement."""
        return (self.end_ns - self.from_ns) / 1e9

    @property
    def gap_seconds(self) -> float:
        """The whole gap between two acknowledgements."""
        return (self.end_ns - self.start_ns) / 1e9

    def to_json(self, fault_start_ns: int) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "seconds": round(self.seconds, 3),
            "gap_s": round(self.gap_seconds, 3),
            "gap_from_fault_start_s": round((self.start_ns - fault_start_ns) / 1e9, 3),
            "gap_to_fault_start_s": round((self.end_ns - fault_start_ns) / 1e9, 3),
            "recovered": self.recovered,
            "earlier": self.earlier,
        }


@dataclass(frozen=True)
class Unavailability:
    """One measured fault: its window, a gap per measured partition it hit, and the partitions
    it hit that the workload never writes (``unmeasured``)."""

    fault: FaultWindow
    gaps: tuple[PartitionGap, ...]
    unmeasured: tuple[int, ...] = ()

    @property
    def longest(self) -> PartitionGap | None:
        """The longest gap of this fault's own (not counted for an earlier fault)."""
        own = [gap for gap in self.gaps if not gap.earlier]
        return max(own, key=lambda gap: (gap.seconds, -gap.partition), default=None)

    def to_json(self, origin_ns: int) -> dict[str, Any]:
        longest = self.longest
        return {
            "kind": self.fault.kind,
            "target": self.fault.target,
            "start_s": round((self.fault.start_ns - origin_ns) / 1e9, 3),
            "window_s": round((self.fault.end_ns - self.fault.start_ns) / 1e9, 3),
            "partitions": list(self.fault.partitions),
            "longest_s": None if longest is None else round(longest.seconds, 3),
            "recovered": all(gap.recovered for gap in self.gaps),
            "gaps": [gap.to_json(self.fault.start_ns) for gap in self.gaps],
            "unmeasured": list(self.unmeasured),
        }


def written_keys(op: Op) -> list[str]:
    """The keys a completed operation wrote (deletes included; reads and checks are not
    writes), from what the history records of each workload."""
    value = op.value
    if op.f == "txn" and isinstance(value, list):
        return [
            mop[1]
            for mop in value
            if isinstance(mop, list)
            and len(mop) == 3
            and mop[0] in _WRITE_MOPS
            and isinstance(mop[1], str)
        ]
    if op.f == "transfer" and isinstance(value, dict):
        return [key for key in (value.get("from"), value.get("to")) if isinstance(key, str)]
    if op.f == "add" and isinstance(value, int) and not isinstance(value, bool):
        return [f"{SET_PREFIX}{value}"]
    return []


def acknowledged_writes(
    history: History, partition_of: Callable[[str], int]
) -> dict[int, list[int]]:
    """Partition -> completion times (ns, sorted) of the ``ok`` operations that wrote to it."""
    out: dict[int, list[int]] = {}
    for op in history.ops:
        if op.type != "ok":
            continue
        for partition in {partition_of(key) for key in written_keys(op)}:
            out.setdefault(partition, []).append(op.time_ns)
    for times in out.values():
        times.sort()
    return out


def _longest_gap(
    acks: Sequence[int],
    partition: int,
    fault: FaultWindow,
    start_ns: int,
    end_ns: int,
    *,
    claimed: set[tuple[int, int]],
) -> PartitionGap:
    """The longest gap of ``partition`` overlapping ``fault`` that no earlier fault claimed
    (then claimed for this one); else the longest claimed one, marked ``earlier``."""
    inside = [t for t in acks if start_ns <= t <= end_ns]
    points = [(start_ns, True), *((t, True) for t in inside), (end_ns, False)]
    best: PartitionGap | None = None
    taken: PartitionGap | None = None
    for (a, _), (b, is_ack) in itertools.pairwise(points):
        if not (a < fault.end_ns and b > fault.start_ns) or b <= a:
            continue
        gap = PartitionGap(
            partition,
            a,
            b,
            max(a, fault.start_ns),
            recovered=is_ack,
            earlier=(a, b) in claimed,
        )
        if gap.earlier:
            if taken is None or gap.seconds > taken.seconds:
                taken = gap
        elif best is None or gap.seconds > best.seconds:
            best = gap
    if best is not None:
        claimed.add((best.start_ns, best.end_ns))
        return best
    if taken is not None:
        return taken
    # A window of no length between two acknowledgements at one instant.
    at = min(max(fault.start_ns, start_ns), end_ns)
    return PartitionGap(partition, at, at, at, recovered=True)


def unavailability(
    history: History,
    faults: Sequence[FaultWindow],
    partition_of: Callable[[str], int],
    *,
    start_ns: int,
    end_ns: int,
    keyed: Collection[int] | None = None,
    kinds: Collection[str] = MEASURED_FAULTS,
) -> list[Unavailability]:
    """For each fault of ``kinds`` that names partitions, in window order, the longest gap
    without an acknowledged write of each partition it hit (see the module). ``start_ns`` and
    ``end_ns`` bound the load; ``keyed`` are the partitions the workload writes (None: all)."""
    acks = acknowledged_writes(history, partition_of)
    claimed: dict[int, set[tuple[int, int]]] = {}  # partition -> gaps counted already
    out: list[Unavailability] = []
    for fault in sorted(faults, key=lambda f: (f.start_ns, f.end_ns)):
        if fault.kind not in kinds or not fault.partitions:
            continue
        measured = [p for p in fault.partitions if keyed is None or p in keyed]
        gaps = tuple(
            _longest_gap(
                acks.get(p, []), p, fault, start_ns, end_ns, claimed=claimed.setdefault(p, set())
            )
            for p in sorted(measured)
        )
        unmeasured = tuple(sorted(p for p in fault.partitions if p not in measured))
        out.append(Unavailability(fault, gaps, unmeasured))
    return out


def longest_by_kind(measured: Sequence[Unavailability]) -> dict[str, float]:
    """Fault kind -> its longest unavailability over the run, in seconds (3 decimals)."""
    out: dict[str, float] = {}
    for entry in measured:
        longest = entry.longest
        if longest is not None:
            out[entry.fault.kind] = max(out.get(entry.fault.kind, 0.0), round(longest.seconds, 3))
    return dict(sorted(out.items()))


def failover_text(measured: Sequence[Unavailability], origin_ns: int) -> str:
    """The run summary's lines: one per measured fault, then the longest per kind."""
    if not measured:
        return ""
    lines = [
        "failover (per fault: the partitions it hit, and the longest time one of them went "
        "without an acknowledged write from the fault's start):"
    ]
    for entry in measured:
        fault = entry.fault
        longest = entry.longest
        where = (
            f"  {fault.kind:<16} {fault.target:<4} at {(fault.start_ns - origin_ns) / 1e9:6.1f} s"
            f" for {(fault.end_ns - fault.start_ns) / 1e9:4.1f} s,"
            f" partitions {','.join(str(p) for p in fault.partitions)}:"
        )
        if not entry.gaps:
            lines.append(f"{where} none written by the workload")
            continue
        if longest is None:
            lines.append(f"{where} each still out since an earlier fault (counted there)")
            continue
        others = ", ".join(
            f"p{gap.partition} {gap.seconds:.2f}" + (" earlier" if gap.earlier else "")
            for gap in entry.gaps
            if gap is not longest
        )
        text = f"{where} longest {longest.seconds:.2f} s (p{longest.partition}"
        text += f"; {others})" if others else ")"
        if not all(gap.recovered for gap in entry.gaps):
            stuck = [gap.partition for gap in entry.gaps if not gap.recovered]
            text += f" — no write acknowledged again before the load ended: partitions {stuck}"
        lines.append(text)
    by_kind = longest_by_kind(measured)
    counts: dict[str, int] = {}
    for entry in measured:
        counts[entry.fault.kind] = counts.get(entry.fault.kind, 0) + 1
    lines.append(
        "longest unavailability by fault kind: "
        + ", ".join(f"{kind} {s:.2f} s (of {counts[kind]} faults)" for kind, s in by_kind.items())
    )
    return "\n".join(lines) + "\n"
