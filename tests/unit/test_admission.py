"""Coordinator admission (kvstore.runtime.admission): the in-flight bound, CoDel's rule on
the event loop's lateness, the probe that feeds it, and the coordinator refusing before any work."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kvstore.config import ClusterConfig, load_cluster, write_cluster_file
from kvstore.config import write_secret as make_secret
from kvstore.coordinator.engine import Coordinator
from kvstore.errors import Overloaded
from kvstore.limits import RETRY_AFTER_MAX_S, RETRY_AFTER_S
from kvstore.messages import Reply, Request
from kvstore.runtime.admission import LagGate, RetryAfter, admit
from kvstore.runtime.aio import LoopLagProbe


def test_admit_refuses_at_the_limit() -> None:
    admit(3, 4)
    with pytest.raises(Overloaded) as refused:
        admit(4, 4)
    assert refused.value.retryable and refused.value.details["limit"] == 4


def test_the_gate_absorbs_a_burst_shorter_than_one_interval() -> None:
    gate = LagGate(target_ms=50, interval_ms=200)
    gate.observe(0, 120)
    gate.observe(150, 300)  # above target, but for less than an interval
    gate.admit()
    gate.observe(190, 10)  # back under: the run of lateness is over
    gate.observe(300, 80)
    gate.observe(480, 80)
    assert not gate.refusing
    gate.admit()


def test_the_gate_refuses_after_a_whole_interval_above_target_until_a_sample_is_under() -> None:
    gate = LagGate(target_ms=50, interval_ms=200)
    gate.observe(1000, 60)
    gate.observe(1100, 70)
    assert not gate.refusing
    gate.observe(1200, 51)  # a whole interval above target: a standing queue
    assert gate.refusing
    with pytest.raises(Overloaded) as refused:
        gate.admit()
    assert refused.value.retryable and refused.value.details == {"lag_ms": 51}
    gate.observe(1220, 500)
    assert gate.refusing
    gate.observe(1240, 50)  # at the target is not above it
    assert not gate.refusing
    gate.admit()
    gate.observe(1260, 60)  # a new run must last a whole interval again
    assert not gate.refusing


@pytest.mark.asyncio
async def test_the_probe_measures_how_late_the_loop_runs_a_timer() -> None:
    samples: list[float] = []
    late = asyncio.Event()

    def sample(now_ms: float, lag_ms: float) -> None:
        samples.append(lag_ms)
        if lag_ms >= 80:
            late.set()

    probe = LoopLagProbe(sample, period_ms=5)
    probe.start()
    assert probe.running
    probe.start()  # idempotent: one timer
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, time.sleep, 0.1)  # a callback that keeps the loop busy for 100 ms
    async with asyncio.timeout(10):
        await late.wait()  # the timer due during the busy callback ran that late
    probe.stop()
    assert not probe.running
    count = len(samples)
    await asyncio.sleep(0.03)  # six periods: a running probe would have sampled
    assert len(samples) == count


class Unreachable:
    async def call(self, request: Request, timeout_ms: int) -> Reply:
        raise AssertionError("a refused request must not send anything")


def one_node_cluster(tmp_path: Path) -> ClusterConfig:
    path = tmp_path / "cluster.toml"
    write_cluster_file(path, nodes={"n1": "127.0.0.1:1"}, partitions=1)
    make_secret(path.parent / "secret")
    return load_cluster(path)


@pytest.mark.asyncio
async def test_a_coordinator_behind_on_its_work_refuses_before_starting_a_core(
    tmp_path: Path,
) -> None:
    config = one_node_cluster(tmp_path)
    coordinator = Coordinator.from_config(config, transport=Unreachable(), refuse_when_behind=True)
    try:
        gate = coordinator._lag_gate
        gate.observe(0, 500)
        gate.observe(1000, 500)
        with pytest.raises(Overloaded):
            await coordinator.get("k")
        with pytest.raises(Overloaded):
            await coordinator.read(["k"])
        assert coordinator.running == 0
        assert b"kvstore_coordinator_refusals_total 2.0" in coordinator.metrics.render()
    finally:
        await coordinator.close()


def test_retry_after_doubles_while_refusals_outnumber_admissions_and_halves_back() -> None:
    control = RetryAfter(window_ms=1000)
    assert control.refused(0) == RETRY_AFTER_S
    now = 0.0
    seen = []
    for _ in range(8):  # every window: 100 admitted, 500 refused
        for _ in range(100):
            control.admitted(now)
        for _ in range(500):
            control.refused(now)
        now += 1000
        control.admitted(now)  # rolls the window
        seen.append(control.seconds)
    assert seen == [2, 4, 8, 16, 16, 16, 16, 16]  # doubled up to the cap
    assert seen[-1] == RETRY_AFTER_MAX_S
    for _ in range(10):
        control.admitted(now)
    control.refused(now)
    now += 1000
    control.admitted(now)
    assert control.seconds == 8  # under half as many refusals: halved
    control.refused(now + 5000)  # a quiet window in between: back to the floor
    assert control.seconds == RETRY_AFTER_S


def test_retry_after_holds_between_half_and_as_many_refusals_as_admissions() -> None:
    control = RetryAfter(window_ms=1000)
    control.seconds = 4
    control.admitted(0)
    for _ in range(100):
        control.admitted(10)
    for _ in range(70):
        control.refused(10)
    control.admitted(1000)
    assert control.seconds == 4


@pytest.mark.asyncio
async def test_an_embedded_coordinator_does_not_read_its_application_s_lag_as_overload(
    tmp_path: Path,
) -> None:
    coordinator = Coordinator.from_config(one_node_cluster(tmp_path), transport=Unreachable())
    try:
        coordinator.admit()
        assert not coordinator._lag_probe.running  # the SDK's direct mode: no loop-lag gate
    finally:
        await coordinator.close()
