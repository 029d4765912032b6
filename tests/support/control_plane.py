"""The behaviour every control plane must show, written once for both implementations.

:mod:`kvstore.replication.control` defines the interface; ``tests/unit/test_control_plane.py``
runs these checks on :class:`~kvstore.replication.control.MemoryControlPlane` over a fake
scheduler (virtual time), ``tests/integration/test_etcd_control.py`` on
:class:`~kvstore.replication.etcd.EtcdControlPlane` against a real etcd (wall time). A check
takes the plane, a :class:`Driver` that runs the plane's clock until calls are answered, and a
key prefix of its own (so checks can share one store).

Every answer goes through :class:`Answers`, which records a violation when an answer comes from
inside the call or comes twice; the drivers fail the test on any.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kvstore.replication.control import ControlPlane, Versioned

__all__ = [
    "Call",
    "Driver",
    "Answers",
    "ask",
    "poll_until",
    "FakeScheduler",
    "SchedulerDriver",
    "LoopDriver",
    "check_read_absent_then_present",
    "check_create_if_absent",
    "check_compare_and_set",
    "check_list_by_prefix",
    "check_beat_keeps_key_alive_then_it_expires",
    "check_beat_updates_value",
    "check_outage",
    "check_close_answers_calls_in_flight",
]

Done = Callable[[Any, str | None], None]
Call = Callable[[Done], None]
Answer = tuple[Any, str | None]


class Answers:
    """The answers to calls made in one go, with the violations of the interface's rules."""

    def __init__(self, count: int) -> None:
        self.got: list[list[Answer]] = [[] for _ in range(count)]
        self.issued = [False] * count
        self.violations: list[str] = []

    def done(self, index: int) -> Done:
        def answer(result: Any, error: str | None) -> None:
            if not self.issued[index]:
                self.violations.append(f"call {index} was answered from inside the call")
            if self.got[index]:
                self.violations.append(f"call {index} was answered twice")
            self.got[index].append((result, error))

        return answer

    def complete(self) -> bool:
        return all(self.got)

    def first(self) -> list[Answer]:
        assert not self.violations, self.violations
        return [answers[0] for answers in self.got]


class Driver(Protocol):
    def ask_all(
        self, calls: Sequence[Call], then: Callable[[], object] | None = None
    ) -> list[Answer]:
        """Make ``calls`` one after another, then call ``then``, then run the plane's clock until
        every call is answered (failing the test past a bound); the answers in order."""
        ...

    def pause(self, ms: int) -> None:
        """Let ``ms`` of the plane's time pass (its clock runs: answers and expiries happen)."""
        ...

    def now_ms(self) -> float: ...


def ask(driver: Driver, call: Call) -> Answer:
    return driver.ask_all([call])[0]


# --- drivers ---------------------------------------------------------------------------------


class FakeScheduler:
    """Virtual time: a heap of (time in µs, sequence, callback), run in order."""

    def __init__(self) -> None:
        self.now_us = 0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def later(self, delay_us: int, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (self.now_us + delay_us, next(self._seq), callback))

    def now(self) -> int:
        return self.now_us

    def step(self) -> bool:
        """Run the next callback; False when none is scheduled."""
        if not self._heap:
            return False
        when, _, callback = heapq.heappop(self._heap)
        self.now_us = max(self.now_us, when)
        callback()
        return True

    def advance(self, us: int) -> None:
        """Run every callback due within ``us``, then move the clock to its end."""
        end = self.now_us + us
        while self._heap and self._heap[0][0] <= end:
            self.step()
        self.now_us = end


class SchedulerDriver:
    """Drives a plane whose ``later``/``now`` are a :class:`FakeScheduler`'s."""

    steps_max = 10_000  # callbacks run while waiting for answers: a bound, not a measurement

    def __init__(self, scheduler: FakeScheduler) -> None:
        self.scheduler = scheduler

    def ask_all(
        self, calls: Sequence[Call], then: Callable[[], object] | None = None
    ) -> list[Answer]:
        answers = Answers(len(calls))
        for index, call in enumerate(calls):
            call(answers.done(index))
            answers.issued[index] = True
        if then is not None:
            then()
        for _ in range(self.steps_max):
            if answers.complete() or not self.scheduler.step():
                break
        assert answers.complete(), f"unanswered calls: {answers.got}"
        return answers.first()

    def pause(self, ms: int) -> None:
        self.scheduler.advance(ms * 1000)

    def now_ms(self) -> float:
        return self.scheduler.now_us / 1000


class LoopDriver:
    """Drives a plane that runs on an asyncio loop (wall time), outside that loop's run."""

    def __init__(self, loop: asyncio.AbstractEventLoop, answer_timeout_s: float) -> None:
        self.loop = loop
        self.answer_timeout_s = answer_timeout_s

    def ask_all(
        self, calls: Sequence[Call], then: Callable[[], object] | None = None
    ) -> list[Answer]:
        answers = Answers(len(calls))
        answered = asyncio.Event()

        def done(index: int) -> Done:
            record = answers.done(index)

            def answer(result: Any, error: str | None) -> None:
                record(result, error)
                if answers.complete():
                    answered.set()

            return answer

        async def run() -> None:
            for index, call in enumerate(calls):  # on the running loop, as the runtime calls
                call(done(index))
                answers.issued[index] = True
            if then is not None:
                then()
            if not answers.complete():
                await asyncio.wait_for(answered.wait(), self.answer_timeout_s)

        self.loop.run_until_complete(run())
        return answers.first()

    def pause(self, ms: int) -> None:
        self.loop.run_until_complete(asyncio.sleep(ms / 1000))

    def now_ms(self) -> float:
        return time.monotonic() * 1000


def poll_until(driver: Driver, probe: Callable[[], bool], bound_ms: int, every_ms: int) -> bool:
    """Whether ``probe()`` became true within ``bound_ms`` of the plane's time, asked every
    ``every_ms``."""
    deadline = driver.now_ms() + bound_ms
    while not probe():
        if driver.now_ms() >= deadline:
            return False
        driver.pause(every_ms)
    return True


# --- the checks --------------------------------------------------------------------------


def check_read_absent_then_present(plane: ControlPlane, driver: Driver, prefix: str) -> None:
    """An absent key reads as None; a written one as its value and a positive revision, also
    an empty value and arbitrary bytes."""
    for name, value in (("k", b"v1"), ("empty", b""), ("bytes", bytes(range(256)))):
        key = prefix + name
        assert ask(driver, functools.partial(plane.read, key)) == (None, None)
        assert ask(driver, functools.partial(plane.write_if, key, value, 0)) == (True, None)
        found, error = ask(driver, functools.partial(plane.read, key))
        assert error is None
        assert isinstance(found, Versioned) and found.value == value and found.mod_revision > 0


def check_create_if_absent(plane: ControlPlane, driver: Driver, prefix: str) -> None:
    """``write_if(..., 0)`` creates an absent key once; a second one finds it and fails."""
    key = prefix + "k"
    assert ask(driver, lambda d: plane.write_if(key, b"first", 0, d)) == (True, None)
    assert ask(driver, lambda d: plane.write_if(key, b"second", 0, d)) == (False, None)
    found, _ = ask(driver, lambda d: plane.read(key, d))
    assert isinstance(found, Versioned) and found.value == b"first"


def check_compare_and_set(plane: ControlPlane, driver: Driver, prefix: str) -> None:
    """A write naming the current revision succeeds and raises it; one naming an older (or an
    unused) revision fails and changes nothing."""
    key = prefix + "k"
    assert ask(driver, lambda d: plane.write_if(key, b"v1", 0, d)) == (True, None)
    first, _ = ask(driver, lambda d: plane.read(key, d))
    assert isinstance(first, Versioned)
    rev = first.mod_revision
    assert ask(driver, lambda d: plane.write_if(key, b"v2", rev, d)) == (True, None)
    second, _ = ask(driver, lambda d: plane.read(key, d))
    assert isinstance(second, Versioned)
    assert second.value == b"v2" and second.mod_revision > rev
    assert ask(driver, lambda d: plane.write_if(key, b"v3", rev, d)) == (False, None)
    unused = second.mod_revision + 1_000
    assert ask(driver, lambda d: plane.write_if(key, b"v3", unused, d)) == (False, None)
    assert ask(driver, lambda d: plane.read(key, d)) == (second, None)


def check_list_by_prefix(plane: ControlPlane, driver: Driver, prefix: str) -> None:
    """``list`` answers exactly the keys under the prefix, with their values."""
    keys = {"a/1": b"x", "a/2": b"", "a/\u00e9": b"y", "ab": b"z", "b/1": b"w"}
    for name, value in keys.items():
        write = functools.partial(plane.write_if, prefix + name, value, 0)
        assert ask(driver, write) == (True, None)
    under_a = {prefix + name: keys[name] for name in ("a/1", "a/2", "a/\u00e9")}
    assert ask(driver, lambda d: plane.list(prefix + "a/", d)) == (under_a, None)
    everything = {prefix + name: value for name, value in keys.items()}
    assert ask(driver, lambda d: plane.list(prefix, d)) == (everything, None)
    assert ask(driver, lambda d: plane.list(prefix + "none/", d)) == ({}, None)


def check_beat_keeps_key_alive_then_it_expires(
    plane: ControlPlane, driver: Driver, prefix: str, ttl_ms: int, expiry_bound_ms: int
) -> None:
    """Beats every ``ttl_ms / 5`` keep the key (same value, same revision) for 2.5 TTLs; once
    they stop it is gone within ``expiry_bound_ms``; the next beat creates it again."""
    key = prefix + "live"
    assert ask(driver, lambda d: plane.beat(key, b"n1", ttl_ms, d)) == (True, None)
    created, _ = ask(driver, lambda d: plane.read(key, d))
    assert isinstance(created, Versioned) and created.value == b"n1"
    keep_until = driver.now_ms() + 2.5 * ttl_ms
    while driver.now_ms() < keep_until:
        driver.pause(ttl_ms // 5)  # the beat interval: the subject of the check, not a wait
        assert ask(driver, lambda d: plane.beat(key, b"n1", ttl_ms, d)) == (True, None)
        assert ask(driver, lambda d: plane.read(key, d)) == (created, None)
    stopped = driver.now_ms()

    def gone() -> bool:
        found, error = ask(driver, lambda d: plane.read(key, d))
        assert error is None
        return found is None

    assert poll_until(driver, gone, expiry_bound_ms, every_ms=max(1, ttl_ms // 20))
    assert driver.now_ms() - stopped >= ttl_ms / 2, "the key vanished well before its TTL"
    assert ask(driver, lambda d: plane.beat(key, b"n1", ttl_ms, d)) == (True, None)
    again, _ = ask(driver, lambda d: plane.read(key, d))
    assert isinstance(again, Versioned)
    assert again.value == b"n1" and again.mod_revision > created.mod_revision


def check_beat_updates_value(plane: ControlPlane, driver: Driver, prefix: str, ttl_ms: int) -> None:
    """A beat with a new value rewrites the key; the one after it, with the same value, keeps it."""
    key = prefix + "live"
    assert ask(driver, lambda d: plane.beat(key, b"old", ttl_ms, d)) == (True, None)
    assert ask(driver, lambda d: plane.beat(key, b"new", ttl_ms, d)) == (True, None)
    found, _ = ask(driver, lambda d: plane.read(key, d))
    assert isinstance(found, Versioned) and found.value == b"new"
    assert ask(driver, lambda d: plane.beat(key, b"new", ttl_ms, d)) == (True, None)
    assert ask(driver, lambda d: plane.read(key, d)) == (found, None)


def check_outage(
    plane: ControlPlane,
    driver: Driver,
    prefix: str,
    *,
    take_down: Callable[[], object],
    bring_up: Callable[[], object],
    recovery_bound_ms: int,
) -> None:
    """While the store is down every call answers an error text (never raises, never hangs);
    once it is back calls succeed again (within ``recovery_bound_ms``) and nothing was lost."""
    key = prefix + "k"
    assert ask(driver, lambda d: plane.write_if(key, b"kept", 0, d)) == (True, None)
    take_down()
    calls: list[Call] = [
        lambda d: plane.read(key, d),
        lambda d: plane.write_if(key, b"lost", 0, d),
        lambda d: plane.beat(prefix + "live", b"n1", 1_000, d),
        lambda d: plane.list(prefix, d),
    ]
    for result, error in driver.ask_all(calls):
        assert result is None and isinstance(error, str) and error, (result, error)
    bring_up()

    def read_ok() -> bool:
        return ask(driver, lambda d: plane.read(key, d))[1] is None

    assert poll_until(driver, read_ok, recovery_bound_ms, every_ms=50)
    found, _ = ask(driver, lambda d: plane.read(key, d))
    assert isinstance(found, Versioned) and found.value == b"kept"


def check_close_answers_calls_in_flight(
    plane: ControlPlane, driver: Driver, prefix: str
) -> list[Answer]:
    """Calls made just before ``close()`` are each answered exactly once (a result or an error
    text); the answers, for the implementation's own assertions."""
    key = prefix + "k"
    calls: list[Call] = [
        lambda d: plane.write_if(key, b"v", 0, d),
        lambda d: plane.read(key, d),
        lambda d: plane.beat(prefix + "live", b"n1", 1_000, d),
        lambda d: plane.list(prefix, d),
    ]
    answers = driver.ask_all(calls, then=plane.close)
    for result, error in answers:
        assert (error is None) or (result is None and isinstance(error, str) and error)
    return answers
