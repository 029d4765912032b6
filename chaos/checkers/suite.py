"""One call to run every checker that applies to a workload's history.

Theory of operation
-------------------
``list-append`` and ``rw-register`` histories get the Elle-style black-box checker and, when any
transaction carries a commit ``ts``, the white-box ts-order replay. ``bank`` histories get the
balance-invariant checker (``total=`` is required). Every history also goes through the unique
timestamps and transaction ids checker (:mod:`chaos.checkers.unique_ts`). The parts are merged
into one :class:`~chaos.checkers.result.CheckResult` whose ``valid`` refers to the requested
model; the merged ``verdict`` says which models each anomaly rules out.
"""

from __future__ import annotations

from typing import Any, cast

from chaos.checkers import bank, list_append, replay, rw_register, unique_ts
from chaos.checkers.result import CheckResult, merge
from chaos.history import History

__all__ = ["WORKLOADS", "check_all"]

WORKLOADS: tuple[str, ...] = ("list-append", "rw-register", "bank")


def check_all(
    history: History,
    workload: str,
    model: str = "serializable",
    *,
    total: int | None = None,
    timeout_s: float = 1.0,
    **kwargs: Any,
) -> CheckResult:
    """Run the checkers for ``workload`` and merge their results."""
    parts: list[CheckResult] = []
    if workload == "bank":
        if total is None:
            raise ValueError("the bank checker needs total=")
        parts.append(bank.check(history, total, model=model, **kwargs))
    elif workload in ("list-append", "rw-register"):
        if workload == "list-append":
            parts.append(list_append.check(history, model, timeout_s=timeout_s, **kwargs))
        else:
            parts.append(rw_register.check(history, model, timeout_s=timeout_s, **kwargs))
        if any(op.ts is not None for op in history.ops):
            f = kwargs.get("f", "txn")
            ts_workload = cast(replay.Workload, workload)
            parts.append(replay.check(history, ts_workload, f=f, model=model))
    else:
        raise ValueError(f"unknown workload {workload!r}; expected one of {WORKLOADS}")
    parts.append(unique_ts.check(history, model))
    return merge(workload, parts, model)
