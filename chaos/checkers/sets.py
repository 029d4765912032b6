"""The set checker: no acknowledged insert lost, nothing present that was never inserted.

Theory of operation
-------------------
A ``set`` history has ``add`` operations of unique integers and, at the end, ``read`` operations
whose values together list every element present. An ``ok`` add must be present (else it was
*lost*: an acknowledged write the store forgot); a ``fail`` add must be absent (a definite
failure that took effect anyway); an ``info`` add may be either. An element present that no add
ever named is *unexpected*. The checker needs at least one ``ok`` final read; without one it can
decide nothing and says so (``unknown``).
"""

from __future__ import annotations

from chaos.checkers.result import Anomaly, CheckResult
from chaos.history import History, Op

__all__ = ["check"]

_SHOWN_MAX = 20  # elements named in one anomaly's explanation


def _listed(elements: set[int]) -> str:
    shown = sorted(elements)[:_SHOWN_MAX]
    more = len(elements) - len(shown)
    return ", ".join(map(str, shown)) + (f" and {more} more" if more > 0 else "")


def check(history: History) -> CheckResult:
    adds: dict[int, Op] = {}
    reads_ok = False
    present: set[int] = set()
    for op in history.ops:
        if op.f == "add" and op.type != "invoke":
            adds[int(op.value)] = op
        elif op.f == "read" and op.type == "ok":
            reads_ok = True
            present.update(int(element) for element in op.value)
    if not reads_ok:
        return CheckResult(
            valid=False,
            anomalies=[],
            model="set",
            checker="set",
            unknown=True,
            notes=["no final read completed: nothing can be decided"],
        )
    anomalies: list[Anomaly] = []
    lost = {e for e, op in adds.items() if op.type == "ok" and e not in present}
    if lost:
        ops = tuple(adds[e] for e in sorted(lost))[:_SHOWN_MAX]
        anomalies.append(Anomaly("lost", f"acknowledged inserts missing: {_listed(lost)}", ops))
    revived = {e for e, op in adds.items() if op.type == "fail" and e in present}
    if revived:
        ops = tuple(adds[e] for e in sorted(revived))[:_SHOWN_MAX]
        anomalies.append(
            Anomaly("fail-but-present", f"failed inserts present: {_listed(revived)}", ops)
        )
    unexpected = present - set(adds)
    if unexpected:
        anomalies.append(Anomaly("unexpected", f"never inserted: {_listed(unexpected)}"))
    return CheckResult(valid=not anomalies, anomalies=anomalies, model="set", checker="set")
