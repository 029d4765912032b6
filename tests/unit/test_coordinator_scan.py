"""A scan page: every partition asked (bounded fan-out), merged in key order, cut at ``limit``."""

from __future__ import annotations

import pytest
from support.coordinator import finishes, sends

from kvstore.coordinator.effects import Send
from kvstore.coordinator.scan import Scan, ScanPage, ScanResult
from kvstore.coordinator.state import CallState
from kvstore.errors import ErrorCode, ValidationError
from kvstore.limits import RPC_TIMEOUT_MS, SCAN_PAGE_ITEMS_MAX
from kvstore.messages import GetReply, ItemView, ScanReply, ScanRequest
from kvstore.types import PartitionId, Timestamp

T0 = 1_000_000_000
PARTS = (PartitionId(0), PartitionId(1), PartitionId(2))


def item(key: str) -> ItemView:
    return ItemView(key=key, value=key, version=1, ts=Timestamp(1, 0, 1))


def page(*keys: str, more: str | None = None) -> ScanReply:
    return ScanReply(items=tuple(item(k) for k in keys), next_start=more)


def answer_all(scan: Scan, calls: list[Send], replies: dict[int, ScanReply]) -> list[object]:
    effects: list[object] = []
    for send in calls:
        assert isinstance(send.request, ScanRequest)
        effects = list(scan.step_reply(send.call_id, replies[send.request.partition], T0))
    return effects


def test_every_partition_is_asked_for_limit_plus_one_and_pages_merge_in_key_order() -> None:
    scan = Scan(PARTS, start="k", end="l", limit=3)
    calls = sends(scan.step_start(T0))
    assert [c.request for c in calls] == [
        ScanRequest(partition=p, start="k", end="l", limit=4) for p in PARTS
    ]
    assert {c.deadline_us for c in calls} == {T0 + RPC_TIMEOUT_MS * 1000}
    effects = answer_all(scan, calls, {0: page("k1", "k5"), 1: page("k2"), 2: page("k3", "k4")})
    [result] = finishes(effects)
    assert result == ScanResult(
        page=ScanPage(items=(item("k1"), item("k2"), item("k3")), after="k3")
    )
    assert scan.done


def test_an_exhausted_range_has_no_cursor() -> None:
    scan = Scan(PARTS, limit=5)
    calls = sends(scan.step_start(T0))
    effects = answer_all(scan, calls, {0: page("a"), 1: page(), 2: page("b")})
    [result] = finishes(effects)
    assert isinstance(result, ScanResult) and result.page is not None
    assert [i.key for i in result.page.items] == ["a", "b"] and result.page.after is None


def test_a_partition_with_more_gives_a_cursor() -> None:
    scan = Scan(PARTS, limit=5)
    calls = sends(scan.step_start(T0))
    effects = answer_all(scan, calls, {0: page("a", more="c"), 1: page(), 2: page("b")})
    [result] = finishes(effects)
    assert isinstance(result, ScanResult) and result.page is not None
    assert result.page.after == "b"


def test_the_cursor_moves_the_lower_bound_and_drops_keys_not_past_it() -> None:
    scan = Scan(PARTS[:1], start="a", limit=2, after="c")
    [call] = sends(scan.step_start(T0))
    assert isinstance(call.request, ScanRequest) and call.request.start == "c"
    [result] = finishes(scan.step_reply(call.call_id, page("c", "d"), T0))
    assert isinstance(result, ScanResult) and result.page is not None
    assert [i.key for i in result.page.items] == ["d"]


def test_an_empty_range_finishes_without_a_call() -> None:
    scan = Scan(PARTS, start="m", end="m", limit=1)
    effects = scan.step_start(T0)
    assert sends(effects) == []
    assert finishes(effects) == [ScanResult(page=ScanPage(items=(), after=None))]
    assert scan.state is CallState.DONE


def test_the_fan_out_is_bounded_and_refilled_as_answers_come() -> None:
    scan = Scan(PARTS, limit=1, fanout_max=2)
    first = sends(scan.step_start(T0))
    assert len(first) == 2
    refill = sends(scan.step_reply(first[0].call_id, page(), T0 + 1))
    assert [c.request.partition for c in refill] == [PARTS[2]]
    assert scan.step_reply(refill[0].call_id, page(), T0 + 2) == []
    assert finishes(scan.step_reply(first[1].call_id, page(), T0 + 3))


def test_the_first_failure_in_partition_order_is_reported_after_every_call_ended() -> None:
    scan = Scan(PARTS, limit=1)
    calls = sends(scan.step_start(T0))
    assert scan.step_failed(calls[2].call_id, ErrorCode.Unavailable, T0) == []
    assert scan.step_reply(calls[1].call_id, GetReply(item=None), T0) == []
    [result] = finishes(scan.step_reply(calls[0].call_id, page(), T0))
    assert result == ScanResult(error=ErrorCode.ProtocolViolation, partition=PARTS[1])


def test_an_unanswered_call_fails_at_its_deadline() -> None:
    scan = Scan(PARTS[:1], limit=1)
    [call] = sends(scan.step_start(T0))
    assert scan.next_deadline_us == call.deadline_us
    assert scan.step_tick(call.deadline_us - 1) == []
    [result] = finishes(scan.step_tick(call.deadline_us))
    assert result == ScanResult(error=ErrorCode.OutcomeUnknown, partition=PARTS[0])
    assert scan.step_reply(call.call_id, page(), T0) == []


@pytest.mark.parametrize("limit", [0, SCAN_PAGE_ITEMS_MAX + 1, True, 1.5])
def test_the_limit_is_validated(limit: object) -> None:
    with pytest.raises(ValidationError):
        Scan(PARTS, limit=limit)  # type: ignore[arg-type]
