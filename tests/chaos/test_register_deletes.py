"""rw-register histories with deletes: ``["w", k, None]``; a read of an absent key returns None.

A delete is a version of its own (ordered by the initial, write-follows-read and commit-ts
sources); a read of ``None`` on a key that some committed-or-indeterminate transaction deleted is
ambiguous and gives no edges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from chaos.checkers import check_all, oracle, replay, rw_register
from chaos.checkers.result import MODELS
from chaos.checkers.txn import transactions

if TYPE_CHECKING:
    from conftest import Builder

SER, SESSION, STRICT = MODELS


def test_valid_serial_history_with_deletes_and_recreation(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["r", "x", 1], ["w", "x", None]], ts=(2,))
    build.txn([["r", "x", None]], ts=(3,))  # read after the delete
    build.txn([["w", "x", 2], ["r", "x", 2]], ts=(4,))  # re-created with a new unique value
    build.txn([["r", "x", 2], ["w", "x", None], ["r", "x", None], ["w", "y", 1]], ts=(5,))
    build.txn([["r", "x", None], ["r", "y", 1]])  # read-only, no ts
    build.txn([["w", "x", None]], ts=(6,))  # deleting an absent key
    build.txn([["r", "x", None], ["w", "x", 3]], ts=(7,))
    h = build.history
    result = check_all(h, "rw-register", STRICT)
    assert result.valid, result.summary()
    assert result.anomalies == []
    assert rw_register.check(h, STRICT, use_ts=False).valid
    assert oracle.serial_order(h, "rw-register", STRICT) is not None


def test_valid_concurrent_history_with_deletes(build: Builder) -> None:
    build.txn([["w", "x", 1], ["w", "y", 1]])
    h = build.concurrent(
        [["r", "x", 1], ["w", "x", None]],
        [["r", "x", None]],
        [["r", "x", 1], ["w", "y", None]],
        ([["w", "x", None], ["w", "y", 2]], "info"),
        ([["w", "x", 5]], "fail"),
    )
    result = rw_register.check(h, STRICT)
    assert result.valid, result.summary()
    assert oracle.serial_order(h, "rw-register", STRICT) is not None


def test_reads_of_none_on_deleted_keys_are_ambiguous(build: Builder) -> None:
    # Both read None and wrote x, but T1 may have seen the initial state and T2 T0's delete:
    # T1, T0, T2 explains it, so this is not a lost update.
    h = build.concurrent(
        [["w", "x", None]],
        [["r", "x", None], ["w", "x", 1]],
        [["r", "x", None], ["w", "x", 2]],
    )
    assert rw_register.check(h, STRICT).valid, rw_register.check(h).summary()
    assert oracle.serial_order(h, "rw-register", STRICT) is not None


def test_without_deletes_none_is_still_the_initial_value(build: Builder) -> None:
    h = build.concurrent([["r", "x", None], ["w", "x", 1]], [["r", "x", None], ["w", "x", 2]])
    result = rw_register.check(h)
    assert "lost-update" in result.kinds()
    assert "the initial value" in result.of_kind("lost-update")[0].explanation


def test_failed_and_intermediate_deletes_do_not_make_none_ambiguous(build: Builder) -> None:
    build.txn([["w", "x", None], ["w", "x", 1]])  # the delete is intermediate
    build.txn([["w", "x", None]], type="fail")
    build.txn([["r", "x", None]])  # only the initial state explains None, and it is stale
    result = rw_register.check(build.history, STRICT)
    assert result.kinds() == {"G-single-realtime"}, result.summary()
    assert oracle.serial_order(build.history, "rw-register", STRICT) is None


def test_an_info_delete_makes_none_ambiguous(build: Builder) -> None:
    build.txn([["w", "x", 1]])
    build.txn([["w", "x", None]], type="info")
    build.txn([["r", "x", None]])
    assert rw_register.check(build.history, STRICT).valid
    assert oracle.serial_order(build.history, "rw-register", STRICT) is not None


def test_stale_read_of_a_value_overwritten_by_a_later_ts_delete(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["w", "x", None]], ts=(2,))  # a blind delete: only ts orders it after x = 1
    build.txn([["r", "x", 1]])  # read-only, invoked after the delete committed
    h = build.history
    result = rw_register.check(h, STRICT)
    assert result.kinds() == {"G-single-realtime"}, result.summary()
    assert result.verdict == {SER: True, SESSION: True, STRICT: False}
    assert "the delete by op" in result.anomalies[0].explanation
    assert oracle.serial_order(h, "rw-register", STRICT) is None
    assert rw_register.check(h, STRICT, use_ts=False).valid  # no other source orders them
    # The replay skips the read-only transaction; the Elle-style checker still fails strict.
    assert replay.check(h, "rw-register").valid
    merged = check_all(h, "rw-register", STRICT)
    assert not merged.valid and merged.kinds() == {"G-single-realtime"}


def test_write_follows_read_orders_a_delete(build: Builder) -> None:
    build.txn([["w", "x", 1]])
    build.txn([["r", "x", 1], ["w", "x", None]])
    build.txn([["r", "x", 1]])
    result = rw_register.check(build.history, STRICT, use_ts=False)
    assert result.kinds() == {"G-single-realtime"}, result.summary()


def test_g0_through_deletes_from_write_follows_read(build: Builder) -> None:
    # Each transaction read the other's write and then deleted that key: ww edges both ways.
    h = build.concurrent(
        [["r", "x", 2], ["w", "x", None], ["w", "y", 1]],
        [["r", "y", 1], ["w", "y", None], ["w", "x", 2]],
    )
    result = rw_register.check(h)
    assert result.kinds() == {"G0"}, result.summary()
    assert "the delete by op" in result.anomalies[0].explanation
    assert oracle.serial_order(h, "rw-register") is None


def test_g0_through_deletes_from_ts_and_write_follows_read(build: Builder) -> None:
    t1 = build.invoke([["w", "x", 1], ["w", "y", None]])
    t2 = build.invoke([["r", "x", 1], ["w", "x", None], ["w", "y", 2]])
    build.complete(t2, [["r", "x", 1], ["w", "x", None], ["w", "y", 2]], ts=(1,))
    build.complete(t1, [["w", "x", 1], ["w", "y", None]], ts=(2,))
    # x: 1 < T2's delete (write-follows-read; ts disagrees, so cyclic-versions);
    # y: 2 < T1's delete (ts). So ww T1 -> T2 on x and T2 -> T1 on y.
    result = rw_register.check(build.history)
    assert result.kinds() == {"G0", "cyclic-versions"}, result.summary()
    assert rw_register.check(build.history, use_ts=False).valid


def test_lost_update_with_non_none_values_on_a_deleted_key(build: Builder) -> None:
    build.txn([["w", "x", 1]])
    h = build.concurrent([["r", "x", 1], ["w", "x", 2]], [["r", "x", 1], ["w", "x", None]])
    result = rw_register.check(h)
    assert "lost-update" in result.kinds(), result.summary()
    assert oracle.serial_order(h, "rw-register") is None


def test_g_single_with_non_none_values_on_deleted_keys(build: Builder) -> None:
    h = build.concurrent(
        [["w", "x", 1], ["w", "y", 1]],
        [["r", "y", 1], ["w", "x", 2], ["w", "y", 2]],
        [["r", "x", 2], ["r", "y", 1]],  # read skew: T1's x but not T1's y
        [["w", "x", None]],
        [["w", "y", None], ["r", "x", None]],
    )
    result = rw_register.check(h)
    assert result.kinds() == {"G-single"}, result.summary()
    assert oracle.serial_order(h, "rw-register") is None


def test_cyclic_versions_mention_deletes(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(2,))
    build.txn([["r", "x", 1], ["w", "x", None]], ts=(1,))
    result = rw_register.check(build.history)
    assert "cyclic-versions" in result.kinds()
    (cyc,) = result.of_kind("cyclic-versions")
    assert "the delete by op 3" in cyc.explanation


def test_internal_reads_after_own_delete(build: Builder) -> None:
    build.txn([["w", "x", 1]])
    h = build.concurrent(
        [["w", "x", None], ["r", "x", 1]],
        [["r", "x", 1], ["w", "x", None], ["r", "x", None]],
    )
    internal = rw_register.check(h).of_kind("internal")
    assert [a.ops[0].index for a in internal] == [4]


def test_duplicate_values_are_rejected_but_repeated_deletes_are_not(build: Builder) -> None:
    h = build.concurrent([["w", "x", None]], [["w", "x", None]], [["w", "x", 1]])
    assert rw_register.check(h).valid
    build.txn([["w", "x", 1]])
    with pytest.raises(ValueError, match="unique"):
        rw_register.check(build.history)


def test_replay_apply_removes_deleted_keys(build: Builder) -> None:
    build.txn([["w", "x", 1], ["w", "x", None], ["r", "x", None], ["w", "y", 2]])
    build.txn([["w", "x", 1], ["w", "x", None], ["r", "x", 1]])
    t1, t2 = transactions(build.history)
    state: dict[object, object] = {}
    assert replay.apply(state, t1, "rw-register") == []
    assert state == {"y": 2}  # a deleted key is absent, like a key never written
    assert replay.apply(state, t2, "rw-register") == [("x", 1, None)]


def test_replay_reads_after_deletes(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["r", "x", 1], ["w", "x", None]], ts=(2,))
    build.txn([["r", "x", None], ["r", "y", None]], ts=(3,))
    assert replay.check(build.history, "rw-register").valid
    build.txn([["r", "x", 1]], ts=(4,))
    result = replay.check(build.history, "rw-register")
    assert result.kinds() == {"ts-replay-mismatch"}
    assert "replaying in ts order gives None" in result.anomalies[0].explanation


def test_replay_catches_a_write_visible_after_a_later_ts_delete(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(10,))
    build.txn([["w", "x", None]], ts=(20,))
    build.txn([["w", "x", 2]], ts=(15,))  # committed last, but its ts precedes the delete
    build.txn([["r", "x", 2]], ts=(30,))
    h = build.history
    result = replay.check(h, "rw-register")
    assert result.kinds() == {"ts-replay-mismatch"}, result.summary()
    (mismatch,) = result.anomalies
    assert mismatch.ops[0].index == 7
    assert "read 'x' = 2, but replaying in ts order gives None" in mismatch.explanation
    merged = check_all(h, "rw-register", STRICT)
    assert "ts-replay-mismatch" in merged.kinds()
    assert not merged.verdict[SER]


def test_stale_none_after_recreation_is_caught_through_ts_order(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["w", "x", None]], ts=(2,))
    build.txn([["w", "x", 3]], ts=(3,))  # re-created after every delete
    build.txn([["r", "x", None]])  # read-only, no ts, invoked after x = 3 committed
    h = build.history
    result = check_all(h, "rw-register", STRICT)
    assert result.kinds() == {"G-single-realtime"}, result.summary()
    assert "later version than the initial value and every delete" in str(result.anomalies[0])
    assert "ts-replay: skipped 1 read-only transactions without ts" in result.notes
    assert oracle.serial_order(h, "rw-register", STRICT) is None


def test_none_read_that_a_delete_explains_is_not_flagged(build: Builder) -> None:
    build.txn([["w", "x", 1]], ts=(1,))
    build.txn([["w", "x", 3]], ts=(2,))
    build.txn([["w", "x", None]], ts=(3,))
    build.txn([["r", "x", None]])
    assert check_all(build.history, "rw-register", STRICT).valid
