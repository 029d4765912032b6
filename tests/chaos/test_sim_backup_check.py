"""The backup checker (``chaos.sim.backup_check``): a completed backup at ``T`` is the store as
of ``T``, for bank, list-append and rw-register."""

from __future__ import annotations

from typing import Any

from chaos.history import History
from chaos.sim.backup_check import BackupImage, check_backup, check_bank, check_list_append
from chaos.sim.backup_check import check_register as check_registers

AT = (100, 0, 1)
ACCOUNTS = ["a0", "a1", "a2"]


def _history(*ops: tuple[str, Any, tuple[int, ...] | None]) -> History:
    """One process per op: ``(type, value, ts)`` of ``txn`` ops."""
    h = History()
    for process, (kind, value, ts) in enumerate(ops):
        inv = h.invoke(process, "txn", value)
        h.complete(inv, kind, value, ts=ts)  # type: ignore[arg-type]
    return h


def _image(
    values: dict[str, Any], item_ts: dict[str, tuple[int, ...]] | None = None
) -> BackupImage:
    return BackupImage(number=0, at=AT, values=values, item_ts=item_ts or {})


def _kinds(found: list[Any]) -> list[str]:
    return sorted(a.kind for a in found)


# --- bank ----------------------------------------------------------------------------------


def test_a_bank_backup_must_hold_every_account_and_the_total() -> None:
    assert check_bank(_image({"a0": 50, "a1": 30, "a2": 20}), 100, ACCOUNTS) == []
    assert _kinds(check_bank(_image({"a0": 50, "a1": 30, "a2": 25}), 100, ACCOUNTS)) == [
        "backup-wrong-total"
    ]
    missing = check_bank(_image({"a0": 70, "a1": 30}), 100, ACCOUNTS)
    assert _kinds(missing) == ["backup-wrong-accounts"]
    assert "missing ['a2']" in str(missing[0])
    assert _kinds(check_bank(_image({"a0": 110, "a1": -10, "a2": 0}), 100, ACCOUNTS)) == [
        "backup-negative-balance"
    ]
    assert _kinds(check_bank(_image({"a0": None, "a1": 30, "a2": 20}), 100, ACCOUNTS)) == [
        "backup-nil-balance"
    ]


# --- list-append ---------------------------------------------------------------------------

APPENDS = _history(
    ("ok", [["append", "x", 1]], (10, 0, 1)),
    ("ok", [["append", "x", 2], ["append", "y", 3]], (20, 0, 1)),
    ("info", [["append", "x", 4]], (30, 0, 1)),  # resolved: committed at 30
    ("info", [["append", "y", 5]], None),  # unknown: may be anywhere, or nowhere
    ("fail", [["append", "x", 6]], None),
    ("ok", [["append", "x", 7]], (150, 0, 1)),  # after the backup
)


def test_a_list_append_backup_holds_exactly_the_appends_at_or_below_its_timestamp() -> None:
    exact = _image({"x": [1, 2, 4], "y": [3]}, {"x": (30, 0, 1), "y": (20, 0, 1)})
    assert check_list_append(exact, APPENDS) == []
    with_unknown = _image({"x": [1, 2, 4], "y": [3, 5]}, {"x": (30, 0, 1), "y": (40, 0, 1)})
    assert check_list_append(with_unknown, APPENDS) == []


def test_a_committed_append_below_the_timestamp_missing_from_the_backup_is_lost() -> None:
    found = check_list_append(_image({"x": [1, 4], "y": [3]}), APPENDS)
    assert _kinds(found) == ["backup-lost-write"]
    assert "'x' lacks 2, committed at [20, 0, 1]" in str(found[0])
    assert found[0].ops[0].value == [["append", "x", 2], ["append", "y", 3]]


def test_appends_after_the_timestamp_failed_or_never_made_must_not_show() -> None:
    future = check_list_append(_image({"x": [1, 2, 4, 7], "y": [3]}), APPENDS)
    assert _kinds(future) == ["backup-future-write"]
    aborted = check_list_append(_image({"x": [1, 2, 4, 6], "y": [3]}), APPENDS)
    assert _kinds(aborted) == ["backup-aborted-write"]
    garbage = check_list_append(_image({"x": [1, 2, 4, 99], "y": [3]}), APPENDS)
    assert _kinds(garbage) == ["backup-garbage"]
    elsewhere = check_list_append(_image({"x": [1, 2, 4, 3], "y": [3]}), APPENDS)
    assert _kinds(elsewhere) == ["backup-garbage"]  # 3 was appended to y, not x


def test_a_list_out_of_ts_order_duplicated_or_stamped_wrong_is_reported() -> None:
    assert _kinds(check_list_append(_image({"x": [2, 1, 4], "y": [3]}), APPENDS)) == [
        "backup-wrong-order"
    ]
    assert _kinds(check_list_append(_image({"x": [1, 2, 2, 4], "y": [3]}), APPENDS)) == [
        "backup-duplicate"
    ]
    stamped = _image({"x": [1, 2, 4], "y": [3]}, {"x": (25, 0, 1), "y": (120, 0, 1)})
    assert _kinds(check_list_append(stamped, APPENDS)) == [
        "backup-future-version",
        "backup-wrong-version-ts",
        "backup-wrong-version-ts",
    ]


# --- rw-register ---------------------------------------------------------------------------

REGISTERS = _history(
    ("ok", [["w", "x", 1]], (10, 0, 1)),
    ("ok", [["w", "x", 2]], (20, 0, 1)),
    ("ok", [["w", "y", 3]], (30, 0, 1)),
    ("ok", [["w", "y", None]], (40, 0, 1)),  # y deleted at 40
    ("info", [["w", "z", 5]], None),  # unknown
    ("ok", [["w", "x", 6]], (150, 0, 1)),  # after the backup
    ("fail", [["w", "z", 7]], None),
    ("info", [["w", "u", 8]], (60, 0, 1)),
    ("info", [["w", "u", None]], None),  # a delete of unknown fate
)
KEYS = ["u", "x", "y", "z"]


def test_a_register_backup_holds_each_key_s_last_write_at_or_below_its_timestamp() -> None:
    exact = _image({"x": 2, "u": 8}, {"x": (20, 0, 1), "u": (60, 0, 1)})
    assert check_registers(exact, REGISTERS, KEYS) == []
    # z's unknown write may have committed (its item says when); u's unknown delete may have.
    maybe = _image({"x": 2, "z": 5}, {"x": (20, 0, 1), "z": (50, 0, 1)})
    assert check_registers(maybe, REGISTERS, KEYS) == []


def test_a_register_backup_that_misses_or_anticipates_a_write_is_reported() -> None:
    stale = check_registers(_image({"x": 1, "u": 8}, {"x": (10, 0, 1)}), REGISTERS, KEYS)
    assert _kinds(stale) == ["backup-lost-write"]
    absent = check_registers(_image({"u": 8}), REGISTERS, KEYS)
    assert _kinds(absent) == ["backup-lost-write"]  # x = 2 since 20
    undeleted = check_registers(_image({"x": 2, "y": 3, "u": 8}), REGISTERS, KEYS)
    assert _kinds(undeleted) == ["backup-lost-write"]  # y deleted at 40
    future = check_registers(_image({"x": 6, "u": 8}, {"x": (150, 0, 1)}), REGISTERS, KEYS)
    assert _kinds(future) == ["backup-future-version", "backup-future-write"]
    aborted = check_registers(_image({"x": 2, "z": 7, "u": 8}), REGISTERS, KEYS)
    assert _kinds(aborted) == ["backup-aborted-write"]
    wrong_ts = check_registers(_image({"x": 2, "u": 8}, {"x": (50, 0, 1)}), REGISTERS, KEYS)
    assert _kinds(wrong_ts) == ["backup-wrong-version-ts"]


def test_check_backup_picks_the_workload_s_check() -> None:
    assert check_backup(_image({"x": [1, 2, 4], "y": [3]}), APPENDS, "list-append") == []
    assert (
        _kinds(check_backup(_image({"a0": 1}), History(), "bank", total=1, accounts=["a0"])) == []
    )
    assert check_backup(_image({"x": 2}), REGISTERS, "rw-register", accounts=["x"]) == []
    assert check_backup(_image({}), History(), "set") == []
