"""Brute-force serializability oracle for small histories (a cross-check for the Elle port).

Theory of operation
-------------------
A history is serializable iff some serial order of its committed transactions, run against an
empty store, returns exactly the values every committed transaction read. ``ok`` transactions must
all appear; ``info`` transactions may or may not have committed, so each may appear or not; ``fail``
ones never do. A depth-first search places one transaction at a time, replaying list-append or
register semantics (:func:`chaos.checkers.replay.apply`) and backtracking as soon as a read
disagrees, so every subset of ``info`` transactions and every order is covered. Stronger models add
precedence constraints: ``strong-session-serializable`` keeps each process's transactions in
order, and ``strict-serializable`` puts ``a`` before ``b`` whenever ``a`` completed ``ok`` before
``b`` was invoked. Placing a transaction rules out every ``info`` transaction that had to precede
it but was not placed yet. Failed (state, placed, excluded) configurations are memoised. The search
is exponential: it refuses histories with more than ``max_txns`` possibly committed transactions.
"""

from __future__ import annotations

from typing import Any

from chaos.checkers.replay import Workload, apply
from chaos.checkers.result import Anomaly, CheckResult
from chaos.checkers.txn import Txn, transactions
from chaos.history import History, Op

__all__ = ["serial_order", "check"]


def _must_precede(a: Txn, b: Txn, model: str) -> bool:
    if a.type != "ok":
        return False  # an info transaction's effects may land arbitrarily late
    if model == "strict-serializable" and a.op.index < b.invoke.index:
        return True
    return model != "serializable" and a.op.process == b.op.process and a.op.index < b.invoke.index


def serial_order(
    history: History,
    workload: Workload = "list-append",
    model: str = "serializable",
    *,
    f: str = "txn",
    max_txns: int = 8,
) -> tuple[Op, ...] | None:
    """A serial order (completion ops) explaining every read under ``model``, or ``None``."""
    txns = [t for t in transactions(history, f) if t.type != "fail"]
    if len(txns) > max_txns:
        raise ValueError(f"{len(txns)} transactions: too many for the brute-force oracle")
    n = len(txns)
    preds = [
        frozenset(j for j in range(n) if _must_precede(txns[j], txns[i], model)) for i in range(n)
    ]
    required = frozenset(i for i in range(n) if txns[i].type == "ok")
    failed: set[tuple[frozenset[int], frozenset[int], frozenset[tuple[Any, Any]]]] = set()

    def search(
        state: dict[Any, Any], placed: tuple[int, ...], excluded: frozenset[int]
    ) -> tuple[int, ...] | None:
        done = frozenset(placed)
        if required <= done:
            return placed
        memo = (done, excluded, frozenset(state.items()))
        if memo in failed:
            return None
        for i in range(n):
            dropped = preds[i] - done  # info predecessors not placed now never will be
            if i in done or i in excluded or dropped & required:
                continue
            nxt = dict(state)
            if apply(nxt, _reads_checked(txns[i], workload), workload):
                continue
            found = search(nxt, (*placed, i), excluded | dropped)
            if found is not None:
                return found
        failed.add(memo)
        return None

    order = search({}, (), frozenset())
    return None if order is None else tuple(txns[i].op for i in order)


def _reads_checked(t: Txn, workload: Workload) -> Txn:
    """``info`` transactions' list reads are checked as if ``ok``; register reads are unknown."""
    if t.type == "info" and workload == "list-append":
        return Txn(t.invoke, _as_ok(t.op), t.mops)
    return t


def _as_ok(op: Op) -> Op:
    return Op(op.index, "ok", op.process, op.time_ns, op.f, op.value, op.ts, op.txn_id, op.error)


def check(
    history: History,
    workload: Workload = "list-append",
    model: str = "serializable",
    *,
    f: str = "txn",
    max_txns: int = 8,
) -> CheckResult:
    """:func:`serial_order` as a :class:`CheckResult` (``verdict`` only covers ``model``)."""
    order = serial_order(history, workload, model, f=f, max_txns=max_txns)
    if order is not None:
        witness = ", ".join(f"op {op.index}" for op in order)
        return CheckResult(True, [], model, "oracle", {model: True}, notes=[f"order: {witness}"])
    why = f"no order of the committed transactions explains every read under {model}"
    return CheckResult(False, [Anomaly("no-serial-order", why)], model, "oracle", {model: False})
