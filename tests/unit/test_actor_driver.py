"""The runtime's actor driver on a hand-moved clock: an answer given while a step's effects are
carried out is fed after them, ticks come at deadlines, and a core that ends without an answer
fails its caller with a catalogue error."""

from __future__ import annotations

from typing import Any

from support.network import ManualScheduler

from kvstore.coordinator.effects import Finish, Send
from kvstore.errors import ErrorCode, InternalError
from kvstore.messages import GetReply, GetRequest, Reply, Request
from kvstore.runtime.actors import ActorDriver, Answer
from kvstore.types import PartitionId

START_US = 1_000_000
DEADLINE_US = START_US + 5_000


class Echo:
    """Answers every request at once, inside ``send`` (as a node's local partitions can)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        self.log.append("send")
        answer(GetReply(item=None), None)


class Silent:
    def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
        pass


class TwoCalls:
    """Sends two gets at start; finishes once both replied, or at its deadline."""

    def __init__(self, end_without_answer: bool = False) -> None:
        self.log: list[str] = []
        self.replies = 0
        self.done = False
        self._silent_end = end_without_answer

    @property
    def next_deadline_us(self) -> int | None:
        return None if self.done else DEADLINE_US

    def _step(self, name: str, effects: list[Any]) -> list[Any]:
        self.log.append(name)
        return effects

    def step_start(self, now_us: int) -> list[Any]:
        request = GetRequest(partition=PartitionId(0), key="k")
        effects = [Send(call_id=i, request=request, deadline_us=DEADLINE_US) for i in (1, 2)]
        return self._step("start", effects)

    def step_reply(self, call_id: int, reply: Reply, now_us: int) -> list[Any]:
        self.replies += 1
        if self.replies == 2:
            self.done = True
            return self._step(f"reply {call_id}", [] if self._silent_end else [Finish("ok")])
        return self._step(f"reply {call_id}", [])

    def step_failed(self, call_id: int, error: ErrorCode, now_us: int) -> list[Any]:
        return self._step(f"failed {call_id}", [])

    def step_tick(self, now_us: int) -> list[Any]:
        if now_us < DEADLINE_US:
            return self._step("early tick", [])
        self.done = True
        return self._step("deadline", [Finish("timed out")])


def test_answers_given_during_a_step_are_fed_after_its_effects_in_order() -> None:
    scheduler = ManualScheduler(START_US)
    actor = TwoCalls()
    driver = ActorDriver(scheduler, Echo(actor.log))
    results: list[object] = []
    driver.start(actor, results.append)
    assert actor.log == ["start", "send", "send", "reply 1", "reply 2"]
    assert results == ["ok"] and driver.running == 0


def test_a_silent_actor_is_ticked_at_its_deadline_not_before() -> None:
    scheduler = ManualScheduler(START_US)
    driver = ActorDriver(scheduler, Silent())
    actor = TwoCalls()
    results: list[object] = []
    driver.start(actor, results.append)
    scheduler.advance(DEADLINE_US - START_US - 1)
    assert results == [] and actor.log == ["start"]
    scheduler.advance(1)
    assert results == ["timed out"] and actor.log == ["start", "deadline"]
    assert driver.running == 0


def test_a_core_that_ends_without_an_answer_fails_its_caller_with_internal_error() -> None:
    driver = ActorDriver(ManualScheduler(START_US), Echo([]))
    errors: list[BaseException] = []
    driver.start(TwoCalls(end_without_answer=True), lambda result: None, errors.append)
    [error] = errors
    assert isinstance(error, InternalError)


def test_answers_to_a_dropped_actor_are_ignored() -> None:
    held: list[Answer] = []

    class Holding:
        def send(self, request: Request, deadline_us: int, answer: Answer) -> None:
            held.append(answer)

    driver = ActorDriver(ManualScheduler(START_US), Holding())
    actor = TwoCalls()
    actor_id = driver.start(actor, lambda result: None)
    driver.drop(actor_id)
    for answer in held:
        answer(GetReply(item=None), None)
    assert actor.log == ["start"]
