"""The history builder's rules and the JSON Lines round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaos.history import History, HistoryError, Op, failure_code


def _sample() -> History:
    h = History()
    a = h.invoke(0, "txn", [("append", "x", 1), ("r", "y", None)], time_ns=1)
    b = h.invoke(1, "read", None, time_ns=2)
    h.complete(a, "ok", [("append", "x", 1), ("r", "y", (1, 2))], time_ns=3, ts=(5, 1))
    h.complete(b, "ok", {1: 50, 2: 50}, time_ns=4)
    c = h.invoke(0, "transfer", {"from": 1, "to": 2, "amount": 5}, time_ns=5)
    h.complete(c, "info", time_ns=6, error="timeout", txn_id="t-9")
    d = h.invoke(2, "txn", [["append", "y", 3]], time_ns=7)
    h.complete(d, "fail", time_ns=8, error="conflict")
    e = h.invoke(3, "txn", [["append", "x", 4], ["append", "y", 4]], time_ns=9)
    reasons = ["None", "ConditionFailed"]
    h.complete(e, "fail", time_ns=10, error="TransactionCanceled", reasons=reasons)
    return h


def test_invoke_and_complete_build_indexed_ops() -> None:
    h = _sample()
    assert [op.index for op in h] == list(range(10))
    assert [op.type for op in h] == [
        "invoke",
        "invoke",
        "ok",
        "ok",
        "invoke",
        "info",
        "invoke",
        "fail",
        "invoke",
        "fail",
    ]
    ok = h.ops[2]
    assert ok.value == [["append", "x", 1], ["r", "y", [1, 2]]]  # canonical: lists
    assert ok.ts == (5, 1)
    assert h.ops[5].value == {"from": 1, "to": 2, "amount": 5}  # defaults to the invoke's value


def test_pairs_match_invokes_with_their_completions() -> None:
    pairs = list(_sample().pairs())
    assert [(i.index, c.index) for i, c in pairs] == [(0, 2), (1, 3), (4, 5), (6, 7), (8, 9)]
    assert all(i.process == c.process and i.f == c.f for i, c in pairs)


def test_jsonl_round_trip_is_exact(tmp_path: Path) -> None:
    h = _sample()
    path = tmp_path / "history.jsonl"
    h.save(path)
    loaded = History.load(path)
    assert loaded == h
    assert loaded.ops[3].value == {1: 50, 2: 50}  # int keys survive
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "index": 0,
        "type": "invoke",
        "process": 0,
        "time": 1,
        "f": "txn",
        "value": [["append", "x", 1], ["r", "y", None]],
    }
    cancelled = json.loads(path.read_text().splitlines()[-1])
    assert cancelled["error"] == "TransactionCanceled"
    assert cancelled["reasons"] == ["None", "ConditionFailed"]
    assert loaded.ops[-1].reasons == ("None", "ConditionFailed")


def test_failures_keep_their_code_and_per_op_reasons() -> None:
    h = _sample()
    assert h.ops[9].reasons == ("None", "ConditionFailed")
    assert h.ops[7].reasons is None
    assert failure_code(h.ops[9]) == "TransactionCanceled(ConditionFailed)"
    assert failure_code(h.ops[7]) == "conflict"
    assert failure_code(h.ops[5]) == "timeout"
    mixed = Op(
        0,
        "fail",
        0,
        0,
        "txn",
        [],
        error="TransactionCanceled",
        reasons=("TimestampTooOld", "None", "TransactionConflict", "TimestampTooOld"),
    )
    assert failure_code(mixed) == "TransactionCanceled(TimestampTooOld+TransactionConflict)"
    assert failure_code(Op(0, "info", 0, 0, "txn", [])) == "unknown"
    assert failure_code(Op(0, "fail", 0, 0, "txn", [], error="X", reasons=("None",))) == "X"


def test_one_outstanding_op_per_process() -> None:
    h = History()
    h.invoke(0, "txn", [], time_ns=1)
    with pytest.raises(HistoryError, match="outstanding"):
        h.invoke(0, "txn", [], time_ns=2)


def test_info_retires_the_process() -> None:
    h = History()
    h.complete(h.invoke(0, "txn", [], time_ns=1), "info", time_ns=2)
    with pytest.raises(HistoryError, match="retired"):
        h.invoke(0, "txn", [], time_ns=3)


def test_completion_must_match_an_outstanding_invoke() -> None:
    h = History()
    inv = h.invoke(0, "txn", [], time_ns=1)
    h.complete(inv, "ok", time_ns=2)
    with pytest.raises(HistoryError, match="not outstanding"):
        h.complete(inv, "ok", time_ns=3)
    with pytest.raises(HistoryError, match="completion type"):
        h.complete(h.invoke(1, "txn", [], time_ns=4), "invoke", time_ns=5)


def test_time_must_not_go_backwards() -> None:
    h = History()
    h.invoke(0, "txn", [], time_ns=10)
    with pytest.raises(HistoryError, match="backwards"):
        h.invoke(1, "txn", [], time_ns=5)


def test_validate_requires_every_invoke_completed_and_close_fixes_it() -> None:
    h = History()
    h.invoke(0, "txn", [], time_ns=1)
    with pytest.raises(HistoryError, match="without completion"):
        h.validate()
    h.close(time_ns=2)
    h.validate()
    assert h.ops[-1].type == "info"


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([Op(0, "ok", 0, 1, "txn", [])], "without an invoke"),
        ([Op(0, "invoke", 0, 1, "txn", [])], "without completion"),
        ([Op(1, "invoke", 0, 1, "txn", [])], "position"),
        (
            [Op(0, "invoke", 0, 1, "txn", []), Op(1, "invoke", 0, 2, "txn", [])],
            "pending",
        ),
        (
            [
                Op(0, "invoke", 0, 1, "txn", []),
                Op(1, "info", 0, 2, "txn", []),
                Op(2, "invoke", 0, 3, "txn", []),
            ],
            "retired",
        ),
        ([Op(0, "invoke", 0, 1, "txn", []), Op(1, "ok", 0, 2, "read", [])], "f "),
    ],
)
def test_from_ops_rejects_malformed_histories(ops: list[Op], message: str) -> None:
    with pytest.raises(HistoryError, match=message):
        History.from_ops(ops)


def test_unknown_op_type_is_rejected() -> None:
    with pytest.raises(HistoryError):
        Op(0, "maybe", 0, 0, "txn", [])  # type: ignore[arg-type]


def test_ops_are_hashable_and_default_time_is_monotonic() -> None:
    h = History()
    a = h.invoke(0, "txn", [["r", "x", None]])
    b = h.complete(a, "ok", [["r", "x", []]])
    assert len({a, b}) == 2
    assert b.time_ns >= a.time_ns
