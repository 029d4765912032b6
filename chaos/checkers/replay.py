"""White-box timestamp-order replay: committed transactions, run serially in ``ts`` order.

Theory of operation
-------------------
A timestamp-ordering store promises more than serializability: its history must be equivalent
to the serial execution in commit-timestamp order. So we take every transaction that committed and
carries a ``ts`` (``ok`` ones, plus ``info`` ones when the harness learned their ts, e.g. from the
participants' logs in simulation), sort by ``ts`` and apply their micro-ops to an empty model:
a dict of lists for list-append, a dict of values for rw-register. Each read of an ``ok``
transaction must equal the model at that point; a mismatch names the transaction, the key and both
values. Two transactions with one ``ts`` are reported (TO requires unique timestamps), as is an
``ok`` transaction without ``ts`` (the replay cannot place it, so its effects would be missing).
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from chaos.checkers.result import Anomaly, CheckResult, make_result
from chaos.checkers.txn import Txn, describe, show_list, transactions
from chaos.history import History

__all__ = ["Workload", "check", "apply"]

Workload = Literal["list-append", "rw-register"]


def apply(state: dict[Any, Any], t: Txn, workload: Workload) -> list[tuple[Any, Any, Any]]:
    """Run ``t`` against ``state`` in place; return ``(key, read, model value)`` mismatches."""
    bad = []
    for f, k, v in t.mops:
        if f == "append":
            state[k] = (*state.get(k, ()), v)
        elif f == "w":
            state[k] = v
        elif f == "r":
            now = state.get(k, () if workload == "list-append" else None)
            unknown = v is None and workload == "list-append"
            if t.type == "ok" and not unknown and v != now:
                bad.append((k, v, now))
    return bad


def check(
    history: History,
    workload: Workload = "list-append",
    *,
    f: str = "txn",
    model: str = "serializable",
) -> CheckResult:
    """Replay committed transactions in ``ts`` order and report reads that disagree."""
    txns = list(transactions(history, f))
    anomalies: list[Anomaly] = []
    placed = [t for t in txns if t.op.ts is not None and t.type != "fail"]
    for t in txns:
        if t.type == "ok" and t.op.ts is None:
            anomalies.append(Anomaly("missing-ts", f"committed {t} carries no ts", (t.op,)))
    placed.sort(key=lambda t: t.op.ts or ())
    for a, b in itertools.pairwise(placed):
        if a.op.ts == b.op.ts:
            anomalies.append(
                Anomaly("duplicate-ts", f"{a} and {b} both committed at ts {a.op.ts}", (a.op, b.op))
            )
    state: dict[Any, Any] = {}
    for t in placed:
        for k, read, model_value in apply(state, t, workload):
            anomalies.append(
                Anomaly(
                    "ts-replay-mismatch",
                    f"{t} at ts {t.op.ts} read {k!r} = {show_list(read)}, but replaying in ts "
                    f"order gives {show_list(model_value)}: {describe(t.op.value)}",
                    (t.op,),
                )
            )
    notes = [f"replayed {len(placed)} transactions in ts order"]
    return make_result("ts-replay", anomalies, model, notes)
