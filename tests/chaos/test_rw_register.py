"""Hand-written rw-register histories: non-cycle anomalies, cycles and the ts version order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from chaos.checkers import oracle, rw_register
from chaos.checkers.result import MODELS

if TYPE_CHECKING:
    from conftest import Builder

SER, SESSION, STRICT = MODELS


def test_g1a(build: Builder) -> None:
    h = build.concurrent(([["w", "x", 1]], "fail"), [["r", "x", 1]])
    assert "G1a" in rw_register.check(h).kinds()


def test_g1b(build: Builder) -> None:
    h = build.concurrent([["w", "x", 1], ["w", "x", 2]], [["r", "x", 1]])
    assert "G1b" in rw_register.check(h).kinds()


def test_internal(build: Builder) -> None:
    h = build.concurrent([["w", "x", 1], ["r", "x", None]], [["r", "y", 5], ["r", "y", 6]])
    assert len(rw_register.check(h).of_kind("internal")) == 2


def test_future_read_and_garbage_read(build: Builder) -> None:
    h = build.concurrent([["r", "x", 1], ["w", "x", 1]], [["r", "y", 9]])
    assert {"future-read", "garbage-read"} <= rw_register.check(h).kinds()


def test_lost_update(build: Builder) -> None:
    h = build.concurrent([["r", "x", None], ["w", "x", 1]], [["r", "x", None], ["w", "x", 2]])
    result = rw_register.check(h)
    assert "lost-update" in result.kinds()
    assert not result.valid


def test_g1c(build: Builder) -> None:
    h = build.concurrent([["w", "x", 1], ["r", "y", 1]], [["w", "y", 1], ["r", "x", 1]])
    assert rw_register.check(h).kinds() == {"G1c"}


def test_g2_item_write_skew(build: Builder) -> None:
    h = build.concurrent([["r", "x", None], ["w", "y", 1]], [["r", "y", None], ["w", "x", 1]])
    result = rw_register.check(h)
    assert result.kinds() == {"G2-item"}
    assert oracle.serial_order(h, "rw-register") is None


def test_g0_from_write_follows_read_and_ts(build: Builder) -> None:
    t1 = build.invoke([["r", "y", None], ["w", "x", 1], ["w", "y", 1]])
    t2 = build.invoke([["w", "x", 2], ["w", "y", 2]])
    build.complete(t2, [["w", "x", 2], ["w", "y", 2]], ts=(2,))
    build.complete(t1, [["r", "y", 2], ["w", "x", 1], ["w", "y", 1]], ts=(1,))
    result = rw_register.check(build.history)
    assert {"G0", "cyclic-versions"} <= result.kinds(), result.summary()


def test_ts_order_exposes_a_stale_read_only_with_ts(build: Builder) -> None:
    t1 = build.invoke([["w", "x", 1], ["w", "y", 2]])
    t2 = build.invoke([["r", "x", None], ["w", "y", 1]])
    build.complete(t1, [["w", "x", 1], ["w", "y", 2]], ts=(1,))
    build.complete(t2, [["r", "x", None], ["w", "y", 1]], ts=(2,))
    assert rw_register.check(build.history).kinds() == {"G-single"}
    assert rw_register.check(build.history, use_ts=False).valid
    assert oracle.serial_order(build.history, "rw-register") is not None


def test_realtime_variant(build: Builder) -> None:
    build.txn([["w", "x", 1]])
    build.txn([["r", "x", None]])
    result = rw_register.check(build.history)
    assert result.kinds() == {"G-single-realtime"}
    assert result.verdict == {SER: True, SESSION: True, STRICT: False}
    assert oracle.serial_order(build.history, "rw-register", STRICT) is None


def test_valid_concurrent_history(build: Builder) -> None:
    h = build.concurrent(
        [["w", "x", 1]],
        [["r", "x", 1], ["w", "y", 2]],
        [["r", "y", None], ["r", "x", None]],
        ([["w", "x", 3]], "info"),
    )
    result = rw_register.check(h, STRICT)
    assert result.valid, result.summary()


def test_non_unique_writes_are_rejected(build: Builder) -> None:
    h = build.concurrent([["w", "x", 1]], [["w", "x", 1]])
    with pytest.raises(ValueError, match="unique"):
        rw_register.check(h)
