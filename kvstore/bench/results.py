"""One system's figures for one workload run, and the ratio between two systems.

Theory of operation
-------------------
A driver (``store`` or ``postgres``) measures each completed transaction's latency from its first
attempt to its answer, retries included, and counts what happened on the way. :func:`summarize`
turns those into a :class:`RunResult`: throughput is completed transactions per second of the
measured window; latencies are nearest-rank percentiles. ``aborts`` counts attempts the system
refused and the client tried again (conflicts, serialization failures); ``retries`` is the
number of such extra attempts; ``failed`` counts transactions given up on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

__all__ = ["RunResult", "summarize", "percentile_ms"]


def percentile_ms(sorted_us: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of latencies in microseconds, in milliseconds (0 when empty)."""
    if not sorted_us:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_us)))
    return sorted_us[rank - 1] / 1000


@dataclass(frozen=True)
class RunResult:
    """What one system did on one workload."""

    system: str  # "kvstore" or "postgresql"
    workload: str
    clients: int
    duration_s: float  # the measured window
    completed: int  # transactions answered (a refused condition included)
    condition_failed: int  # completed, but the condition refused the move (-1: not known)
    retried: int  # transactions that needed more than one attempt
    retries: int  # extra attempts in all
    failed: int  # transactions given up on
    p50_ms: float
    p99_ms: float
    mean_ms: float
    detail: dict[str, str] = field(default_factory=dict)

    @property
    def throughput_per_s(self) -> float:
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["throughput_per_s"] = round(self.throughput_per_s, 1)
        return out


def summarize(
    system: str,
    workload: str,
    clients: int,
    duration_s: float,
    latencies_us: list[int],
    *,
    condition_failed: int,
    retried: int,
    retries: int,
    failed: int,
    detail: dict[str, str] | None = None,
) -> RunResult:
    """A :class:`RunResult` from the completed transactions' latencies and the counts."""
    latencies_us.sort()
    mean_ms = sum(latencies_us) / len(latencies_us) / 1000 if latencies_us else 0.0
    return RunResult(
        system=system,
        workload=workload,
        clients=clients,
        duration_s=duration_s,
        completed=len(latencies_us),
        condition_failed=condition_failed,
        retried=retried,
        retries=retries,
        failed=failed,
        p50_ms=percentile_ms(latencies_us, 0.50),
        p99_ms=percentile_ms(latencies_us, 0.99),
        mean_ms=mean_ms,
        detail=dict(detail or {}),
    )
