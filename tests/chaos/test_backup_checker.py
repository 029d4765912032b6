"""The backup checkers (chaos/checkers/backup.py) accept right backups and name each wrong one."""

from __future__ import annotations

from chaos.checkers.backup import Appended, check_bank_backup, check_list_append_backup

T = (100, 0, 0)
HISTORY = [
    Appended({"a": [1], "b": [1]}, "ok", (10, 0, 1)),
    Appended({"a": [2]}, "ok", (20, 0, 1)),
    Appended({"a": [3]}, "info", None),
    Appended({"b": [4]}, "fail", None),
    Appended({"a": [5], "b": [5]}, "ok", (150, 0, 1)),
]
FINAL = {"a": [1, 2, 3, 5], "b": [1, 5]}


def test_a_right_bank_backup_passes_and_wrong_ones_are_named() -> None:
    assert check_bank_backup({"x": 60, "y": 40}, ["x", "y"], 100) == []
    assert "sum to 99" in check_bank_backup({"x": 60, "y": 39}, ["x", "y"], 100)[0]
    assert "missing ['y']" in check_bank_backup({"x": 100}, ["x", "y"], 100)[0]


def test_a_cut_at_t_passes_with_or_without_an_unknown_outcome() -> None:
    assert check_list_append_backup({"a": [1, 2], "b": [1]}, FINAL, HISTORY, T) == []
    assert check_list_append_backup({"a": [1, 2, 3], "b": [1]}, FINAL, HISTORY, T) == []


def test_wrong_cuts_are_named() -> None:
    late = check_list_append_backup({"a": [1, 2, 3, 5], "b": [1]}, FINAL, HISTORY, T)
    assert any("committed at (150, 0, 1) > (100, 0, 0)" in p for p in late)
    missing = check_list_append_backup({"a": [1], "b": [1]}, FINAL, HISTORY, T)
    assert any("element 2 committed at (20, 0, 1) is missing" in p for p in missing)
    torn = check_list_append_backup({"a": [1, 2], "b": []}, FINAL, HISTORY, T)
    assert any("b: element 1" in p and "missing" in p for p in torn)
    failed = check_list_append_backup({"a": [1, 2], "b": [1, 4]}, {"b": [1, 4]}, HISTORY, T)
    assert any("failed transaction" in p for p in failed)
    invented = check_list_append_backup({"a": [1, 2, 9], "b": [1]}, FINAL, HISTORY, T)
    assert any("never appended" in p for p in invented)
    assert any("prefix" in p for p in invented)
