"""The bank checker, the ts-order replay, the oracle on its own and check_all."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from chaos.checkers import check_all, oracle, replay
from chaos.checkers.bank import check as bank_check
from chaos.history import History

if TYPE_CHECKING:
    from conftest import Builder


def _bank(*reads: dict[str, int]) -> History:
    h = History()
    t = 0
    for i, balances in enumerate(reads):
        inv = h.invoke(i, "read", None, time_ns=(t := t + 1))
        h.complete(inv, "ok", balances, time_ns=(t := t + 1))
    inv = h.invoke(99, "transfer", {"from": "a", "to": "b", "amount": 5}, time_ns=t + 1)
    h.complete(inv, "info", time_ns=t + 2)
    return h


def test_bank_accepts_conserved_totals() -> None:
    result = bank_check(_bank({"a": 10, "b": 0}, {"a": 5, "b": 5}), 10, accounts=["a", "b"])
    assert result.valid and result.anomalies == []


def test_bank_reports_wrong_totals_negative_balances_and_missing_accounts() -> None:
    h = _bank({"a": 10, "b": 5}, {"a": -5, "b": 15}, {"a": 10})
    result = bank_check(h, 10, accounts=["a", "b"])
    assert not result.valid
    assert [a.kind for a in result.anomalies] == [
        "wrong-total",
        "negative-balance",
        "wrong-accounts",
    ]
    assert result.anomalies[0].ops[0].index == 1
    assert bank_check(h, 10, negative_ok=True).kinds() == {"wrong-total"}


def test_replay_accepts_a_ts_consistent_history(build: Builder) -> None:
    b = build.invoke([["append", "x", 2], ["r", "x", None]])
    a = build.invoke([["append", "x", 1]])
    build.complete(a, [["append", "x", 1]], ts=(1, 0))
    build.complete(b, [["append", "x", 2], ["r", "x", [1, 2]]], ts=(1, 5))
    assert replay.check(build.history).valid


def test_replay_reports_reads_that_disagree_with_ts_order(build: Builder) -> None:
    build.txn([["append", "x", 1]], ts=(2,))
    build.txn([["r", "x", [1]]], ts=(1,))
    result = replay.check(build.history)
    assert result.kinds() == {"ts-replay-mismatch"}
    assert "replaying in ts order gives []" in result.anomalies[0].explanation


def test_replay_reports_missing_and_duplicate_ts(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["w", "y", 1]], ts=(1,))
    build.txn([["r", "x", 1], ["w", "z", 1]])
    assert replay.check(build.history, "rw-register").kinds() == {"missing-ts", "duplicate-ts"}


def test_replay_register_reads_of_initial_state(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["r", "x", None]], ts=(2,))
    assert replay.check(build.history, "rw-register").kinds() == {"ts-replay-mismatch"}


def test_oracle_finds_a_witness_order_including_info(build: Builder) -> None:
    h = build.concurrent([["r", "x", [1, 2]]], ([["append", "x", 2]], "info"), [["append", "x", 1]])
    order = oracle.serial_order(h)
    assert order is not None
    assert [op.index for op in order] == [5, 4, 3]
    assert oracle.check(h).valid


def test_oracle_may_leave_info_out(build: Builder) -> None:
    h = build.concurrent(([["append", "x", 1]], "info"), [["r", "x", []]])
    assert oracle.serial_order(h) is not None


def test_oracle_rejects_too_many_transactions(build: Builder) -> None:
    h = build.concurrent(*([["r", "x", []]] for _ in range(9)))
    with pytest.raises(ValueError, match="too many"):
        oracle.serial_order(h)
    assert oracle.serial_order(h, max_txns=9) is not None


def test_oracle_check_reports_no_serial_order(build: Builder) -> None:
    result = oracle.check(build.concurrent([["r", "x", [1]]]))
    assert not result.valid and result.kinds() == {"no-serial-order"}


def test_check_all_runs_elle_and_replay(build: Builder) -> None:
    build.txn([["append", "x", 1]], ts=(2,))
    build.txn([["r", "x", [1]]], ts=(1,))
    result = check_all(build.history, "list-append", "strict-serializable")
    assert result.kinds() == {"ts-replay-mismatch"}
    assert not result.valid
    assert check_all(build.history, "list-append").verdict["serializable"] is False


def test_check_all_bank_and_errors() -> None:
    assert check_all(_bank({"a": 3}), "bank", total=3).valid
    with pytest.raises(ValueError, match="total"):
        check_all(_bank(), "bank")
    with pytest.raises(ValueError, match="unknown workload"):
        check_all(_bank(), "set")
