"""The ts replay and read-only transactions, which the store serializes without a commit ts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chaos.checkers import check_all, list_append, replay, rw_register
from chaos.checkers.result import MODELS

if TYPE_CHECKING:
    from conftest import Builder

SER, SESSION, STRICT = MODELS
SKIPPED_ONE = "skipped 1 read-only transactions without ts"


def test_ok_read_only_transactions_without_ts_are_skipped(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["r", "x", 1], ["r", "y", None]])
    build.txn([["r", "x", 9]])  # would disagree with the replay, but is not replayed
    result = replay.check(build.history, "rw-register")
    assert result.valid and result.anomalies == []
    assert result.notes == [
        "replayed 1 transactions in ts order",
        "skipped 2 read-only transactions without ts",
    ]


def test_no_skip_note_when_nothing_was_skipped(build: Builder) -> None:
    build.txn([["append", "x", 1]], ts=(1,))
    build.txn([["r", "x", [1]]], ts=(2,))
    assert replay.check(build.history).notes == ["replayed 2 transactions in ts order"]


def test_read_only_transactions_with_ts_are_still_replayed(build: Builder) -> None:
    build.txn([["append", "x", 1]], ts=(2,))
    build.txn([["r", "x", [1]]], ts=(1,))
    build.txn([["r", "x", [1]]])
    result = replay.check(build.history)
    assert result.kinds() == {"ts-replay-mismatch"}
    assert [a.ops[0].index for a in result.anomalies] == [3]
    assert result.notes[-1] == SKIPPED_ONE


def test_writes_without_ts_are_still_missing_ts(build: Builder) -> None:
    build.txn([["r", "x", None], ["append", "x", 1]])
    build.txn([["append", "y", 1]], ts=(1,))
    result = replay.check(build.history)
    assert result.kinds() == {"missing-ts"}
    assert [a.ops[0].index for a in result.anomalies] == [1]
    build2 = type(build)()
    build2.txn([["w", "x", None]])  # a delete is a write too
    build2.txn([["r", "x", None], ["w", "y", 1], ["r", "y", 1]])
    assert len(replay.check(build2.history, "rw-register").of_kind("missing-ts")) == 2


def test_empty_ok_transaction_without_ts_counts_as_read_only(build: Builder) -> None:
    build.txn([])
    result = replay.check(build.history, "rw-register")
    assert result.valid and result.notes[-1] == SKIPPED_ONE


def test_info_and_fail_without_ts_are_neither_reported_nor_counted(build: Builder) -> None:
    build.txn([["r", "x", None]], type="info")
    build.txn([["r", "x", None]], type="fail")
    build.txn([["w", "x", 1]], type="info")
    build.txn([["w", "x", 2]], type="fail")
    result = replay.check(build.history, "rw-register")
    assert result.valid and result.notes == [
        "replayed 0 transactions in ts order",
        "did not compare reads of 1 keys written by ambiguous writes of unknown ts",
    ]


def test_stale_read_only_transaction_is_left_to_the_elle_checker(build: Builder) -> None:
    build.txn([["append", "x", 1]], ts=(1,))
    build.txn([["r", "x", []]])  # invoked after the append committed: stale in real time
    assert replay.check(build.history).valid
    elle = list_append.check(build.history, STRICT)
    assert elle.kinds() == {"G-single-realtime"}
    merged = check_all(build.history, "list-append", STRICT)
    assert not merged.valid
    assert merged.verdict == {SER: True, SESSION: True, STRICT: False}
    assert f"ts-replay: {SKIPPED_ONE}" in merged.notes


def test_register_read_only_reads_are_checked_by_elle(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["r", "x", None]])
    assert replay.check(build.history, "rw-register").valid
    assert rw_register.check(build.history, STRICT).kinds() == {"G-single-realtime"}


def test_reads_of_keys_with_an_unplaced_ambiguous_write_are_not_compared(build: Builder) -> None:
    build.txn([["append", "x", 1]], ts=(1,))
    build.txn([["append", "x", 2]], type="info")  # applied, at a ts nobody learned
    build.txn([["r", "x", [1, 2]]], ts=(3,))
    build.txn([["append", "y", 1]], ts=(4,))
    build.txn([["r", "y", [7]]], ts=(5,))  # a key without ambiguity is still compared
    result = replay.check(build.history)
    assert result.kinds() == {"ts-replay-mismatch"}
    assert [a.ops[0].index for a in result.anomalies] == [9]
    assert result.notes[-1] == (
        "did not compare reads of 1 keys written by ambiguous writes of unknown ts"
    )
