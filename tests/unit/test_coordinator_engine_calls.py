"""The coordinator library's transport: a call that may have run reaches the cores as
``OutcomeUnknown``; one refused before sending keeps its code (so a singleton write that was never
sent is a plain, retryable failure, and one that may have run is never reported as failed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore.coordinator.engine import _SentAware
from kvstore.errors import ErrorCode, KvError, OutcomeUnknown, Overloaded, Unavailable
from kvstore.messages import GetReply, GetRequest, Reply, Request
from kvstore.types import PartitionId

pytestmark = pytest.mark.asyncio
REQUEST = GetRequest(partition=PartitionId(0), key="k")


class Failing:
    """A transport whose calls fail with ``error`` (``call`` only: no ``start``)."""

    def __init__(self, error: KvError) -> None:
        self.error = error

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        raise self.error


class Starting(Failing):
    """A transport that also starts calls without a coroutine, answering ``error``."""

    def start(
        self, request: Request, timeout_ms: int, answer: Callable[[Reply | KvError], None]
    ) -> bool:
        answer(self.error)
        return True


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Unavailable("lost", details={"sent": True}), ErrorCode.OutcomeUnknown),
        (Unavailable("refused", details={"sent": False}), ErrorCode.Unavailable),
        (Overloaded("full"), ErrorCode.Overloaded),
    ],
)
async def test_a_call_that_may_have_run_is_outcome_unknown(error: KvError, code: ErrorCode) -> None:
    with pytest.raises(KvError) as raised:
        await _SentAware(Failing(error)).call(REQUEST, 100)
    assert raised.value.code is code

    answers: list[Reply | KvError] = []
    assert _SentAware(Starting(error)).start(REQUEST, 100, answers.append)
    [answer] = answers
    assert isinstance(answer, KvError) and answer.code is code


async def test_without_start_the_runner_falls_back_to_call() -> None:
    answers: list[Reply | KvError] = []
    assert not _SentAware(Failing(OutcomeUnknown("x"))).start(REQUEST, 100, answers.append)
    assert answers == []


async def test_replies_pass_through() -> None:
    class Answering:
        async def call(self, request: Request, timeout_ms: int) -> Reply:
            return GetReply(item=None)

    assert await _SentAware(Answering()).call(REQUEST, 100) == GetReply(item=None)
