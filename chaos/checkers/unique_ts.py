"""Unique timestamps and transaction ids: no two committed writes share a ``ts``, no two
transactions an id (DESIGN section 4).

Theory of operation
-------------------
Every timestamp the store issues carries its clock's origin, a random id of the process that
issued it; two processes with the same origin (a clone: a fork, a snapshot restored twice, whose
clock kept its origin) issue equal timestamps whenever they draw at the same instant. Timestamp
ordering needs every committed write at a distinct ``ts``; when two equal ones land on different
keys, both commit and nothing else in the history need look wrong. So this checker looks at the
identities themselves, in any workload's history:

* ``duplicate-write-ts``: two operations committed at one ``ts`` (``ok``, or ``info`` with the
  ``ts`` the harness learnt for it): transactions (a ``txn_id``; one of condition checks only
  commits at its ``ts`` too, raising the keys' read timestamps) and singleton writes (no
  ``txn_id``, micro-ops that write). A read that carries a ``ts`` without being a transaction
  (micro-ops all reads, or ``f`` a read: ``read``, ``get``, ``scan``) reads at that instant; it
  may share it.
* ``duplicate-txn-id``: two operations, committed or not, name one ``txn_id``. A retry that
  follows its first attempt (the same idempotency token) is one operation, so its id appears once.

Both are violations under every model (a transaction id and a commit timestamp name one
transaction).
"""

from __future__ import annotations

from typing import Any, Final

from chaos.checkers.result import Anomaly, CheckResult, make_result
from chaos.history import History, Op

__all__ = ["check", "committed_at_ts"]

READ_FS: Final = frozenset({"read", "get", "scan"})


def _all_reads(value: Any) -> bool:
    """A non-empty list of micro-ops ``[f, k, v]``, every ``f`` a read."""
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(m, list) and len(m) == 3 and m[0] == "r" for m in value)


def committed_at_ts(op: Op) -> bool:
    """Whether the completion ``op`` is a transaction or write committed at its ``ts``."""
    if op.type not in ("ok", "info") or op.ts is None:
        return False
    return op.txn_id is not None or (op.f not in READ_FS and not _all_reads(op.value))


def check(history: History, model: str = "serializable") -> CheckResult:
    """Report committed writes sharing a ``ts`` and operations sharing a ``txn_id``."""
    anomalies: list[Anomaly] = []
    by_ts: dict[tuple[int, ...], Op] = {}
    by_id: dict[str, Op] = {}
    writes = 0
    for _, done in history.pairs():
        if committed_at_ts(done):
            writes += 1
            assert done.ts is not None
            first = by_ts.setdefault(done.ts, done)
            if first is not done:
                anomalies.append(
                    Anomaly(
                        "duplicate-write-ts",
                        f"ops {first.index} and {done.index} both committed a write at ts "
                        f"{done.ts}",
                        (first, done),
                    )
                )
        if done.txn_id is not None:
            first = by_id.setdefault(done.txn_id, done)
            if first is not done:
                anomalies.append(
                    Anomaly(
                        "duplicate-txn-id",
                        f"ops {first.index} and {done.index} are both transaction {done.txn_id}",
                        (first, done),
                    )
                )
    notes = [f"{writes} committed writes, {len(by_id)} transaction ids"]
    return make_result("unique-ts", anomalies, model, notes)
