"""Bank checker: every successful read of all accounts sees the invariant total.

Theory of operation
-------------------
The bank workload moves money between accounts with ``transfer`` transactions and reads every
balance with ``read`` operations whose ``ok`` value is a ``{account: balance}`` mapping. Transfers
conserve money, so in any serializable execution each read's balances sum to the initial total,
and (when overdrafts are refused) no balance is negative. A wrong total is the classic symptom of a
non-atomic two-phase commit: a read saw one side of a transfer but not the other. ``fail``/``info``
reads carry no balances and are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chaos.checkers.result import Anomaly, CheckResult, make_result
from chaos.history import History

__all__ = ["check"]


def check(
    history: History,
    total: int,
    *,
    accounts: Iterable[Any] | None = None,
    negative_ok: bool = False,
    f: str = "read",
    model: str = "serializable",
) -> CheckResult:
    """Report reads with a wrong total, a negative balance or a missing/unknown account."""
    expected = None if accounts is None else set(accounts)
    anomalies: list[Anomaly] = []
    reads = 0
    for _inv, done in history.pairs():
        if done.f != f or done.type != "ok":
            continue
        reads += 1
        balances: dict[Any, Any] = done.value
        where = f"op {done.index} (process {done.process})"
        if expected is not None and set(balances) != expected:
            missing = sorted(map(repr, expected - set(balances)))
            extra = sorted(map(repr, set(balances) - expected))
            anomalies.append(
                Anomaly(
                    "wrong-accounts",
                    f"{where} read accounts missing {missing}, unexpected {extra}",
                    (done,),
                )
            )
        if any(b is None for b in balances.values()):
            anomalies.append(Anomaly("nil-balance", f"{where} read {balances!r}", (done,)))
            continue
        got = sum(balances.values())
        if got != total:
            anomalies.append(
                Anomaly(
                    "wrong-total",
                    f"{where} read total {got}, expected {total}: {balances!r}",
                    (done,),
                )
            )
        negative = {a: b for a, b in balances.items() if b < 0}
        if negative and not negative_ok:
            anomalies.append(
                Anomaly("negative-balance", f"{where} read negative balances {negative!r}", (done,))
            )
    return make_result("bank", anomalies, model, [f"{reads} ok reads checked"])
