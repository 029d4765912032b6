"""MemoryControlPlane (the simulator's etcd) against the control plane's shared behaviour checks,
on a fake scheduler (virtual time); tests/integration/test_etcd_control.py runs the same checks
on etcd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.control_plane import (
    FakeScheduler,
    SchedulerDriver,
    ask,
    check_beat_keeps_key_alive_then_it_expires,
    check_beat_updates_value,
    check_close_answers_calls_in_flight,
    check_compare_and_set,
    check_create_if_absent,
    check_list_by_prefix,
    check_outage,
    check_read_absent_then_present,
)

from kvstore.replication.control import MemoryControlPlane
from kvstore.replication.etcd import prefix_end

LATENCY_US = 500
PREFIX = "t/"


@pytest.fixture
def scheduler() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def driver(scheduler: FakeScheduler) -> SchedulerDriver:
    return SchedulerDriver(scheduler)


@pytest.fixture
def plane(scheduler: FakeScheduler) -> Iterator[MemoryControlPlane]:
    plane = MemoryControlPlane(scheduler.later, scheduler.now, latency_us=LATENCY_US)
    yield plane
    plane.close()


def test_read_absent_then_present(plane: MemoryControlPlane, driver: SchedulerDriver) -> None:
    check_read_absent_then_present(plane, driver, PREFIX)


def test_create_if_absent(plane: MemoryControlPlane, driver: SchedulerDriver) -> None:
    check_create_if_absent(plane, driver, PREFIX)


def test_compare_and_set(plane: MemoryControlPlane, driver: SchedulerDriver) -> None:
    check_compare_and_set(plane, driver, PREFIX)


def test_list_by_prefix(plane: MemoryControlPlane, driver: SchedulerDriver) -> None:
    check_list_by_prefix(plane, driver, PREFIX)


@pytest.mark.parametrize("ttl_ms", [100, 1_000, 30_000])
def test_beat_keeps_key_alive_then_it_expires(
    plane: MemoryControlPlane, driver: SchedulerDriver, ttl_ms: int
) -> None:
    check_beat_keeps_key_alive_then_it_expires(
        plane, driver, PREFIX, ttl_ms, expiry_bound_ms=ttl_ms + 10
    )


def test_beat_updates_value(plane: MemoryControlPlane, driver: SchedulerDriver) -> None:
    check_beat_updates_value(plane, driver, PREFIX, ttl_ms=1_000)


def test_outage(plane: MemoryControlPlane, driver: SchedulerDriver) -> None:
    def take_down() -> None:
        plane.up = False

    def bring_up() -> None:
        plane.up = True

    check_outage(
        plane, driver, PREFIX, take_down=take_down, bring_up=bring_up, recovery_bound_ms=10
    )


def test_close_answers_calls_in_flight(plane: MemoryControlPlane, driver: SchedulerDriver) -> None:
    answers = check_close_answers_calls_in_flight(plane, driver, PREFIX)
    assert [error for _, error in answers] == [None] * 4  # the model's close cuts nothing short


def test_answers_come_after_the_latency(
    plane: MemoryControlPlane, driver: SchedulerDriver, scheduler: FakeScheduler
) -> None:
    assert ask(driver, lambda d: plane.read("k", d)) == (None, None)
    assert scheduler.now_us == LATENCY_US


def test_beat_expires_exactly_one_ttl_after_the_last_beat(
    plane: MemoryControlPlane, driver: SchedulerDriver, scheduler: FakeScheduler
) -> None:
    assert ask(driver, lambda d: plane.beat("live", b"n1", 10, d)) == (True, None)
    beaten_us = scheduler.now_us - LATENCY_US  # the beat took effect when it was made
    seen: list[object] = []
    scheduler.advance(beaten_us + 10_000 - 1 - scheduler.now_us)
    plane.read("live", lambda found, _: seen.append(found))  # takes effect now, 1 µs before
    scheduler.advance(1)
    plane.read("live", lambda found, _: seen.append(found))  # and now, at the TTL
    scheduler.advance(2 * LATENCY_US)
    assert seen[0] is not None and seen[1] is None


def test_etcd_prefix_end() -> None:
    """The range end covering a prefix (clientv3's GetPrefixRangeEnd)."""
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"
