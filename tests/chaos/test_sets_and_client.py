"""The set checker and the real runner's HTTP answer parsing."""

from __future__ import annotations

import pytest

from chaos.checkers import sets
from chaos.history import History
from chaos.http_client import parse_ts
from chaos.nemesis import NEMESES, parse_nemeses
from kvstore.types import Timestamp


def _history(adds: list[tuple[int, str]], present: list[int] | None) -> History:
    history = History()
    for process, (element, outcome) in enumerate(adds):
        invoke = history.invoke(process, "add", element)
        history.complete(invoke, outcome, element)  # type: ignore[arg-type]
    if present is not None:
        invoke = history.invoke(len(adds), "read", None)
        history.complete(invoke, "ok", present)
    return history


def test_a_clean_set_history_passes_and_info_may_go_either_way() -> None:
    history = _history([(1, "ok"), (2, "fail"), (3, "info"), (4, "info")], [1, 3])
    assert sets.check(history).valid


def test_lost_revived_and_unexpected_elements_are_anomalies() -> None:
    history = _history([(1, "ok"), (2, "ok"), (3, "fail")], [1, 3, 9])
    result = sets.check(history)
    assert not result.valid
    assert result.kinds() == {"lost", "fail-but-present", "unexpected"}
    assert "2" in result.of_kind("lost")[0].explanation


def test_without_a_final_read_nothing_is_decided() -> None:
    result = sets.check(_history([(1, "ok")], None))
    assert not result.valid and result.unknown


def test_api_timestamps_parse_back_and_garbage_is_zero() -> None:
    ts = Timestamp(1795332101865961, 3, 0xBE933201DA7D5FB5)
    assert parse_ts(str(ts)) == ts
    for bad in (None, "", "1.2", "a.b.c", 5):
        assert parse_ts(bad) == Timestamp(0, 0, 0)


def test_nemesis_names_parse_strictly() -> None:
    assert parse_nemeses("all") == NEMESES
    assert parse_nemeses("kill,partition") == ("kill", "partition")
    assert parse_nemeses("none") == ()
    with pytest.raises(ValueError, match="unknown nemesis"):
        parse_nemeses("kill,flood")
