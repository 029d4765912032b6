"""The asyncio shell that runs actor cores: effects carried out in order, nothing dropped."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.coordinator.recovery import Recovery
from kvstore.coordinator.results import RecoveryResult
from kvstore.errors import Unavailable
from kvstore.messages import (
    CancelReply,
    CancelRequest,
    CompleteRequest,
    LedgerRecord,
    LedgerReply,
    Reply,
    Request,
    TxnState,
)
from kvstore.runtime.aio import ActorRunner
from kvstore.types import PartitionId, Timestamp, TxnId

pytestmark = pytest.mark.asyncio

WAIT_S = 60.0  # a guard against a hang, not a measurement


class Partitions:
    """Answers cancels and completes like partitions would, and records every request."""

    def __init__(self, unreachable: frozenset[int] = frozenset()) -> None:
        self.seen: list[Request] = []
        self.unreachable = unreachable
        self.all_seen = asyncio.Event()

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        await asyncio.sleep(0)  # a real hop: the answer comes on a later loop iteration
        self.seen.append(request)
        if isinstance(request, CompleteRequest):
            self.all_seen.set()
        if request.partition in self.unreachable:
            raise Unavailable("down")
        if isinstance(request, CancelRequest):
            return CancelReply(txn_id=request.txn_id, cleared=1)
        return LedgerReply(txn_id=request.txn_id, record=None)


def record() -> LedgerRecord:
    return LedgerRecord(
        txn_id=TxnId("t1"),
        ts=Timestamp(1, 0, 1),
        state=TxnState.CANCELLED,
        participants=(PartitionId(0), PartitionId(1)),
    )


async def test_a_message_sent_just_before_finishing_still_goes_out() -> None:
    # Regression: Recovery sends CompleteRequest and finishes in the same step; the first runner
    # cancelled calls still in flight when the actor was done, so records stayed open forever.
    partitions = Partitions()
    runner = ActorRunner(partitions, lambda: 1_000_000)
    try:
        result = await asyncio.wait_for(runner.run(Recovery(record(), PartitionId(0), 0)), WAIT_S)
        assert isinstance(result, RecoveryResult) and result.completed
        await asyncio.wait_for(partitions.all_seen.wait(), WAIT_S)
    finally:
        await runner.close()
    kinds = [type(r).__name__ for r in partitions.seen]
    assert sorted(kinds) == ["CancelRequest", "CancelRequest", "CompleteRequest"]
    assert kinds[-1] == "CompleteRequest"


async def test_failed_calls_reach_the_core_and_close_stops_everything() -> None:
    partitions = Partitions(unreachable=frozenset({1}))
    clock = [0]
    runner = ActorRunner(partitions, lambda: clock[0], tick_ms=1)
    result = runner.run(Recovery(record(), PartitionId(0), 0))
    try:
        while sum(isinstance(r, CancelRequest) and r.partition == 1 for r in partitions.seen) < 2:
            await asyncio.sleep(0.001)  # the core re-sends after failures: observe it, bounded
            clock[0] += 500_000
            assert clock[0] < 60_000_000
        assert not result.done()
    finally:
        await runner.close()
    assert result.cancelled()
    assert runner.running == 0


class Broken:
    done = False

    def step_start(self, now_us: int) -> list[object]:
        raise RuntimeError("core bug")


async def test_a_core_that_raises_fails_its_caller_instead_of_hanging() -> None:
    runner = ActorRunner(Partitions(), lambda: 0)
    try:
        with pytest.raises(RuntimeError, match="core bug"):
            await asyncio.wait_for(runner.run(Broken()), WAIT_S)  # type: ignore[arg-type]
    finally:
        await runner.close()


class Gate(Partitions):
    """Holds every call until ``open`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        await self.open.wait()
        return await super().call(request, timeout_ms)


async def test_drain_lets_a_running_actor_finish_and_reports_what_is_left() -> None:
    gate = Gate()
    runner = ActorRunner(gate, lambda: 1_000_000)
    try:
        result = runner.run(Recovery(record(), PartitionId(0), 0))
        assert await runner.drain(0.01) == 1  # held at the gate: still running
        gate.open.set()
        assert await runner.drain(5) == 0
        assert isinstance(result.result(), RecoveryResult) and result.result().completed
    finally:
        await runner.close()
