"""White-box timestamp-order replay: committed transactions, run serially in ``ts`` order.

Theory of operation
-------------------
A timestamp-ordering store promises more than serializability: its history must be equivalent
to the serial execution in commit-timestamp order. So we take every transaction that committed and
carries a ``ts`` (``ok`` ones, plus ``info`` ones when the harness learned their ts, e.g. from the
participants' logs in simulation), sort by ``ts`` and apply their micro-ops to an empty model:
a dict of lists for list-append, a dict of values for rw-register. In rw-register, ``[w k None]``
deletes ``k`` from the model and a read of an absent key returns ``None``, so a read after a delete
must return ``None`` exactly like a read of a key never written. Each read of an ``ok`` transaction
must equal the model at that point; a mismatch names the transaction, the key and both values. Two
transactions with one ``ts`` are reported (TO requires unique timestamps), as is an ``ok``
transaction that writes (or appends) without a ``ts`` (the replay cannot place it, so its effects
would be missing).

Read-only transactions. The store serializes a read-only transaction at a real-time instant
between its read rounds, not at a commit timestamp, so an ``ok`` transaction whose micro-ops are
all reads may come without ``ts``. The replay skips it (it has no effects to place) and says how
many it skipped in the notes; the Elle-style checkers still check its reads, including against
real time. A read-only transaction that does carry a ``ts`` is replayed like any other.

Unplaced writes. An ``info`` write whose ``ts`` stayed unknown (a singleton write with an
ambiguous outcome that no read resolved: it carries no idempotency token to look up) may or may
not have applied, at a ts the replay does not know. Reads of the keys it wrote are therefore not
compared with the model (the notes say how many keys); the Elle-style checkers still check them.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from chaos.checkers.result import Anomaly, CheckResult, make_result
from chaos.checkers.txn import Txn, describe, show_list, transactions
from chaos.history import History

__all__ = ["Workload", "check", "apply", "read_only"]

Workload = Literal["list-append", "rw-register"]


def read_only(t: Txn) -> bool:
    """Whether every micro-op of ``t`` is a read (vacuously true for an empty transaction)."""
    return all(f == "r" for f, _, _ in t.mops)


def apply(state: dict[Any, Any], t: Txn, workload: Workload) -> list[tuple[Any, Any, Any]]:
    """Run ``t`` against ``state`` in place; return ``(key, read, model value)`` mismatches.

    For rw-register, ``[w k None]`` removes ``k`` from ``state`` (a deleted key and a key never
    written are the same state) and reads of absent keys return ``None``.
    """
    bad = []
    for f, k, v in t.mops:
        if f == "append":
            state[k] = (*state.get(k, ()), v)
        elif f == "w":
            if v is None and workload == "rw-register":
                state.pop(k, None)
            else:
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
    skipped = 0
    for t in txns:
        if t.type == "ok" and t.op.ts is None:
            if read_only(t):
                skipped += 1
            else:
                anomalies.append(Anomaly("missing-ts", f"committed {t} carries no ts", (t.op,)))
    unplaced = {
        k for t in txns if t.type == "info" and t.op.ts is None for f, k, _ in t.mops if f != "r"
    }
    placed.sort(key=lambda t: t.op.ts or ())
    for a, b in itertools.pairwise(placed):
        if a.op.ts == b.op.ts:
            anomalies.append(
                Anomaly("duplicate-ts", f"{a} and {b} both committed at ts {a.op.ts}", (a.op, b.op))
            )
    state: dict[Any, Any] = {}
    for t in placed:
        for k, read, model_value in apply(state, t, workload):
            if k in unplaced:
                continue
            anomalies.append(
                Anomaly(
                    "ts-replay-mismatch",
                    f"{t} at ts {t.op.ts} read {k!r} = {show_list(read)}, but replaying in ts "
                    f"order gives {show_list(model_value)}: {describe(t.op.value)}",
                    (t.op,),
                )
            )
    notes = [f"replayed {len(placed)} transactions in ts order"]
    if skipped:
        notes.append(f"skipped {skipped} read-only transactions without ts")
    if unplaced:
        notes.append(
            f"did not compare reads of {len(unplaced)} keys written by ambiguous writes of "
            "unknown ts"
        )
    return make_result("ts-replay", anomalies, model, notes)
