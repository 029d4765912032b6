"""Hand-written list-append histories, one per anomaly class, plus valid ones.

Each case states the anomaly kind the checker must report and which consistency models hold;
the brute-force oracle must agree with those verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from chaos.checkers import list_append, oracle
from chaos.checkers.result import MODELS
from chaos.checkers.txn import transactions
from chaos.history import History

if TYPE_CHECKING:
    from conftest import Builder

SER, SESSION, STRICT = MODELS
NONE: frozenset[str] = frozenset()
ALL: frozenset[str] = frozenset(MODELS)


def g0(b: Builder) -> History:
    return b.concurrent(
        [["append", "x", 1], ["append", "y", 2]],
        [["append", "x", 2], ["append", "y", 1]],
        [["r", "x", [1, 2]]],
        [["r", "y", [1, 2]]],
    )


def g1a(b: Builder) -> History:
    return b.concurrent(([["append", "x", 1]], "fail"), [["r", "x", [1]]])


def g1b(b: Builder) -> History:
    return b.concurrent([["append", "x", 1], ["append", "x", 2]], [["r", "x", [1]]])


def g1c(b: Builder) -> History:
    return b.concurrent(
        [["append", "x", 1], ["r", "y", [1]]],
        [["append", "x", 2], ["append", "y", 1]],
        [["r", "x", [1, 2]]],
    )


def g_single(b: Builder) -> History:
    return b.concurrent(
        [["append", 1, 1], ["append", 2, 1]],
        [["append", 1, 2], ["r", 2, []]],
        [["r", 1, [1, 2]]],
    )


def g_single_tidb(b: Builder) -> History:
    b.txn([["append", 34, 2], ["append", 34, 1]])
    return b.concurrent(
        [["r", 34, [2, 1]], ["append", 36, 5], ["append", 34, 4]],
        [["append", 34, 5]],
        [["r", 34, [2, 1, 5, 4]]],
    )


def g_nonadjacent(b: Builder) -> History:
    return b.concurrent(
        [["r", "x", []], ["r", "w", [1]]],
        [["append", "x", 1], ["append", "y", 1]],
        [["r", "y", [1]], ["r", "z", []]],
        [["append", "z", 1], ["append", "w", 1]],
    )


def g2_item(b: Builder) -> History:
    return b.concurrent(
        [["r", "x", []], ["append", "y", 1]],
        [["r", "y", []], ["append", "x", 1]],
    )


def duplicate_elements(b: Builder) -> History:
    return b.concurrent([["append", "x", 1]], [["r", "x", [1, 1]]])


def incompatible_order(b: Builder) -> History:
    return b.concurrent(
        [["append", "x", 1]], [["append", "x", 2]], [["r", "x", [1, 2]]], [["r", "x", [2, 1]]]
    )


def internal(b: Builder) -> History:
    return b.concurrent([["append", "x", 1], ["r", "x", []]])


def dirty_update(b: Builder) -> History:
    return b.concurrent(([["append", "x", 1]], "fail"), [["append", "x", 2]], [["r", "x", [1, 2]]])


def lost_update(b: Builder) -> History:
    return b.concurrent(
        [["r", "x", []], ["append", "x", 1]],
        [["r", "x", []], ["append", "x", 2]],
    )


def future_read(b: Builder) -> History:
    return b.concurrent([["r", "x", [1]], ["append", "x", 1]])


def garbage_read(b: Builder) -> History:
    return b.concurrent([["r", "x", [9]]])


def g_single_process(b: Builder) -> History:
    b.txn([["append", "x", 1]], process=0)
    b.txn([["r", "x", []]], process=0)
    return b.history


def g_single_realtime(b: Builder) -> History:
    b.txn([["append", "x", 1]])
    b.txn([["r", "x", []]])
    return b.history


def g0_realtime(b: Builder) -> History:
    reader = b.invoke([["r", "x", None]])
    b.txn([["append", "x", 1]])
    b.txn([["append", "x", 2]])
    b.complete(reader, [["r", "x", [2, 1]]])
    return b.history


def g1c_realtime(b: Builder) -> History:
    b.txn([["r", "y", [1]]])
    b.txn([["append", "y", 1]])
    return b.history


def serial(b: Builder) -> History:
    b.txn([["append", "x", 1], ["r", "y", []]], process=0)
    b.txn([["r", "x", [1]], ["append", "y", 1]], process=1)
    b.txn([["append", "x", 2], ["r", "x", [1, 2]], ["r", "y", [1]]], process=0)
    return b.history


def concurrent_serializable(b: Builder) -> History:
    return b.concurrent(
        [["append", "x", 1]],
        [["r", "x", [1]], ["append", "y", 1]],
        [["r", "y", []], ["r", "x", []]],
    )


def info_unobserved(b: Builder) -> History:
    return b.concurrent(([["append", "x", 1]], "info"), [["r", "x", []]])


def info_observed(b: Builder) -> History:
    b.concurrent(([["append", "x", 1]], "info"))
    b.txn([["r", "x", [1]]])
    return b.history


def fail_invisible(b: Builder) -> History:
    b.txn([["append", "x", 1]], "fail")
    b.txn([["r", "x", []]])
    return b.history


CASES: list[tuple[Callable[[Builder], History], str | None, frozenset[str]]] = [
    # (history, kind the checker must report, models that must still hold)
    (g0, "G0", NONE),
    (g1a, "G1a", NONE),
    (g1b, "G1b", NONE),
    (g1c, "G1c", NONE),
    (g_single, "G-single", NONE),
    (g_single_tidb, "G-single", NONE),
    (g_nonadjacent, "G-nonadjacent", NONE),
    (g2_item, "G2-item", NONE),
    (duplicate_elements, "duplicate-elements", NONE),
    (incompatible_order, "incompatible-order", NONE),
    (internal, "internal", NONE),
    (dirty_update, "dirty-update", NONE),
    (lost_update, "lost-update", NONE),
    (future_read, "future-read", NONE),
    (garbage_read, "garbage-read", NONE),
    (g_single_process, "G-single-process", frozenset({SER})),
    (g_single_realtime, "G-single-realtime", frozenset({SER, SESSION})),
    (g0_realtime, "G0-realtime", frozenset({SER, SESSION})),
    (g1c_realtime, "G1c-realtime", frozenset({SER, SESSION})),
    (serial, None, ALL),
    (concurrent_serializable, None, ALL),
    (info_unobserved, None, ALL),
    (info_observed, None, ALL),
    (fail_invisible, None, ALL),
]


@pytest.mark.parametrize(("make", "kind", "holds"), CASES, ids=[c[0].__name__ for c in CASES])
def test_fixture(
    make: Callable[[Builder], History], kind: str | None, holds: frozenset[str], build: Builder
) -> None:
    history = make(build)
    result = list_append.check(history)
    if kind is None:
        assert result.anomalies == [], result.summary()
    else:
        assert kind in result.kinds(), result.summary()
    assert {m for m, ok in result.verdict.items() if ok} == holds, result.summary()
    assert result.valid == (SER in holds)
    for model in MODELS:
        found = oracle.serial_order(history, "list-append", model) is not None
        assert found == (model in holds), (model, result.summary())


def test_model_argument_selects_verdict(build: Builder) -> None:
    history = g_single_realtime(build)
    assert list_append.check(history, SER).valid
    assert list_append.check(history, SESSION).valid
    assert not list_append.check(history, STRICT).valid


def test_explanation_names_transactions_and_edges(build: Builder) -> None:
    result = list_append.check(g_single(build))
    [cycle] = result.of_kind("G-single")
    assert "T2 read key 2 as [], missing T1's append of 1 (rw)" in cycle.explanation
    assert "T2 appended 2 to key 1 after T1 appended 1 (ww)" in cycle.explanation
    assert len(cycle.ops) == 2


def test_g2_item_is_write_skew_not_g_single(build: Builder) -> None:
    result = list_append.check(g2_item(build))
    assert result.kinds() == {"G2-item"}


def test_g1a_only_counts_failed_writes(build: Builder) -> None:
    history = build.concurrent(([["append", "x", 1]], "info"), [["r", "x", [1]]])
    assert list_append.check(history).anomalies == []


def test_duplicate_appends_are_a_harness_error(build: Builder) -> None:
    history = build.concurrent([["append", "x", 1]], [["append", "x", 1]])
    with pytest.raises(ValueError, match="duplicate append"):
        list_append.check(history)


def test_other_fs_are_ignored(build: Builder) -> None:
    build.history.complete(build.history.invoke(99, "read", None, time_ns=1), "ok", {"a": 1})
    assert list_append.check(build.history).anomalies == []


def test_graph_dump_as_dot(build: Builder) -> None:
    history = g_single(build)
    txns = list(transactions(history))
    graph = list_append.build_graph(txns, list_append.trusted_txns(txns))
    dot = graph.to_dot()
    assert dot.startswith("digraph dsg {")
    assert '3 -> 4 [label="ww"];' in dot
    assert '4 -> 3 [label="rw"];' in dot
