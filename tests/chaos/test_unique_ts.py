"""The unique timestamps and transaction ids checker (``chaos.checkers.unique_ts``)."""

from __future__ import annotations

from typing import Any

from chaos.checkers import check_all, unique_ts
from chaos.history import History


def _history(*ops: tuple[str, str, Any, tuple[int, ...] | None, str | None]) -> History:
    """One process per op: ``(type, f, value, ts, txn_id)``."""
    h = History()
    for process, (kind, f, value, ts, txn_id) in enumerate(ops):
        inv = h.invoke(process, f, value)
        h.complete(inv, kind, value, ts=ts, txn_id=txn_id)  # type: ignore[arg-type]
    return h


W1 = [["w", "k1", 1]]
W2 = [["w", "k2", 2]]
R1 = [["r", "k1", 1]]


def test_distinct_timestamps_and_ids_pass() -> None:
    h = _history(
        ("ok", "txn", W1, (10, 0, 7), "a"),
        ("ok", "txn", W2, (10, 1, 7), "b"),
        ("ok", "txn", W2, (10, 0, 8), None),  # a singleton write: same instant, other origin
    )
    result = unique_ts.check(h)
    assert result.valid and result.anomalies == []
    assert result.notes == ["3 committed writes, 2 transaction ids"]


def test_two_committed_writes_at_one_ts_are_reported_whatever_their_keys() -> None:
    h = _history(
        ("ok", "txn", W1, (10, 0, 7), "a"),
        ("info", "txn", W2, (10, 0, 7), "b"),  # an info whose ts the harness learnt
        ("ok", "transfer", {"from": "x", "to": "y", "amount": 1}, (10, 0, 7), "c"),
    )
    result = unique_ts.check(h)
    assert not result.valid
    assert [a.kind for a in result.anomalies] == ["duplicate-write-ts", "duplicate-write-ts"]
    assert "ops 1 and 3 both committed a write at ts (10, 0, 7)" in str(result.anomalies[0])


def test_a_transaction_of_checks_only_commits_at_its_ts_too() -> None:
    h = _history(("ok", "txn", R1, (10, 0, 7), "a"), ("ok", "txn", W2, (10, 0, 7), "b"))
    assert [a.kind for a in unique_ts.check(h).anomalies] == ["duplicate-write-ts"]


def test_failed_writes_and_plain_reads_do_not_count() -> None:
    h = _history(
        ("ok", "txn", W1, (10, 0, 7), "a"),
        ("fail", "txn", W2, (10, 0, 7), "b"),  # refused: it committed nothing
        ("ok", "get", R1, (10, 0, 7), None),  # a read at that instant
        ("ok", "txn", R1, (10, 0, 7), None),  # a read placed at a ts, not a transaction
    )
    assert unique_ts.check(h).valid


def test_two_operations_with_one_transaction_id_are_reported() -> None:
    h = _history(
        ("ok", "txn", W1, (10, 0, 7), "same"),
        ("fail", "txn", W2, None, "same"),
    )
    result = unique_ts.check(h)
    assert [a.kind for a in result.anomalies] == ["duplicate-txn-id"]
    assert "transaction same" in result.anomalies[0].explanation


def test_check_all_runs_it_for_every_workload() -> None:
    h = _history(
        ("ok", "transfer", {"from": "a", "to": "b", "amount": 1}, (10, 0, 7), "t1"),
        ("ok", "transfer", {"from": "b", "to": "a", "amount": 1}, (10, 0, 7), "t2"),
    )
    result = check_all(h, "bank", total=10, accounts=["a", "b"])
    assert "duplicate-write-ts" in result.kinds()
    assert not result.valid
