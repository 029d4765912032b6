"""Hybrid logical clock, transaction ids and clone safety across a real fork."""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.errors import ValidationError
from kvstore.limits import MAX_CLOCK_SKEW_MS
from kvstore.timestamps import (
    HybridClock,
    RandomOrigin,
    check_skew,
    new_txn_id,
    random_origin,
    redraw_origins,
    system_clock_us,
)
from kvstore.types import (
    ORIGIN_MAX,
    TIMESTAMP_ZERO,
    Timestamp,
    timestamp_from_text,
    timestamp_from_wire,
)


class FakeClock:
    """A settable physical clock in microseconds."""

    def __init__(self, now_us: int = 1_000_000) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


def test_now_uses_physical_time_and_origin() -> None:
    fake = FakeClock(5_000)
    clock = HybridClock(fake, 7)
    assert clock.origin == 7
    assert clock.last == TIMESTAMP_ZERO
    assert clock.now() == Timestamp(5_000, 0, 7)
    assert clock.now() == Timestamp(5_000, 1, 7)
    fake.now_us = 6_000
    assert clock.now() == Timestamp(6_000, 0, 7)
    assert clock.last == Timestamp(6_000, 0, 7)


def test_monotonic_when_physical_clock_goes_backwards_and_stalls() -> None:
    fake = FakeClock(10_000)
    clock = HybridClock(fake, 1)
    issued = [clock.now()]
    fake.now_us = 3_000  # backwards
    issued += [clock.now() for _ in range(5)]
    fake.now_us = 9_999  # still behind
    issued += [clock.now() for _ in range(5)]
    fake.now_us = 10_000  # stalls at the old maximum
    issued += [clock.now() for _ in range(5)]
    assert all(a < b for a, b in itertools.pairwise(issued))
    assert all(ts.physical_us == 10_000 for ts in issued)
    assert issued[-1].logical == 15
    fake.now_us = 10_001
    assert clock.now() == Timestamp(10_001, 0, 1)


def test_observe_far_future_timestamp() -> None:
    fake = FakeClock(1_000)
    clock = HybridClock(fake, 5)
    remote = Timestamp(10**15, 42, ORIGIN_MAX)
    clock.observe(remote)
    assert clock.last == remote
    ts = clock.now()
    assert ts > remote
    assert ts == Timestamp(10**15, 43, 5)
    # An older observation changes nothing.
    clock.observe(Timestamp(2_000, 0, 9))
    assert clock.now() == Timestamp(10**15, 44, 5)


def test_observe_equal_physical_smaller_origin() -> None:
    clock = HybridClock(FakeClock(100), 50)
    remote = Timestamp(100, 3, 10)
    clock.observe(remote)
    assert clock.now() > remote


def test_two_origins_same_clock_never_equal() -> None:
    fake = FakeClock(1_000)
    a = HybridClock(fake, 1)
    b = HybridClock(fake, 2)
    seen: set[Timestamp] = set()
    for step in range(200):
        if step % 17 == 0:
            fake.now_us += 1
        for clock in (a, b):
            ts = clock.now()
            assert ts not in seen
            seen.add(ts)
    assert len(seen) == 400


def test_bad_origin_rejected() -> None:
    for origin in (0, -1, ORIGIN_MAX + 1):
        with pytest.raises(ValidationError):
            HybridClock(FakeClock(), origin)
    clock = HybridClock(FakeClock(), 1)
    with pytest.raises(ValidationError):
        clock.reset_origin(0)


def test_reset_origin_keeps_last() -> None:
    fake = FakeClock(500)
    clock = HybridClock(fake, 1)
    before = clock.now()
    clock.reset_origin(2)
    fake.now_us = 1
    after = clock.now()
    assert after > before
    assert after.origin == 2


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("now"), st.just(0)),
        st.tuples(st.just("move"), st.integers(-1_000_000, 1_000_000)),
        st.tuples(st.just("observe"), st.integers(-2_000_000, 2_000_000)),
    ),
    max_size=60,
)


@given(ops=_ops, logical=st.integers(0, 5), origin=st.integers(1, ORIGIN_MAX))
def test_property_now_strictly_increasing(
    ops: list[tuple[str, int]], logical: int, origin: int
) -> None:
    fake = FakeClock(10_000_000)
    clock = HybridClock(fake, 3)
    issued: list[Timestamp] = []
    observed: list[Timestamp] = []
    for op, arg in ops:
        if op == "now":
            ts = clock.now()
            assert ts.origin == 3
            if issued:
                assert ts > issued[-1]
            assert all(ts > seen for seen in observed)
            issued.append(ts)
        elif op == "move":
            fake.now_us = max(0, fake.now_us + arg)
        else:
            remote = Timestamp(max(0, fake.now_us + arg), logical, origin)
            clock.observe(remote)
            observed.append(remote)
    final = clock.now()
    assert all(final > ts for ts in issued + observed)


def test_check_skew() -> None:
    now = 1_000_000_000
    limit = MAX_CLOCK_SKEW_MS * 1000
    assert check_skew(Timestamp(now, 0, 1), now, MAX_CLOCK_SKEW_MS)
    assert check_skew(Timestamp(now - 10**9, 0, 1), now, MAX_CLOCK_SKEW_MS)
    assert check_skew(Timestamp(now + limit, 99, 1), now, MAX_CLOCK_SKEW_MS)
    assert not check_skew(Timestamp(now + limit + 1, 0, 1), now, MAX_CLOCK_SKEW_MS)
    assert not check_skew(Timestamp(now + 1, 0, 1), now, 0)


def test_random_origin_range() -> None:
    origins = {random_origin() for _ in range(100)}
    assert all(1 <= o <= ORIGIN_MAX for o in origins)
    assert len(origins) == 100


def test_txn_id_format_and_uniqueness() -> None:
    ids = {new_txn_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", txn) for txn in ids)


def test_a_clock_on_a_random_origin_is_redrawn_at_fork_and_one_on_an_int_is_not() -> None:
    origin = random_origin()
    assert isinstance(origin, RandomOrigin)
    clock = HybridClock(FakeClock(), origin)
    assert clock.redrawn_at_fork
    assert type(clock.origin) is int and clock.origin == origin  # plain ints in timestamps
    assert type(clock.now().origin) is int
    fixed = HybridClock(FakeClock(), 7)
    assert not fixed.redrawn_at_fork
    fixed.reset_origin(random_origin())  # a random origin later: from then on, redrawn
    assert fixed.redrawn_at_fork


def test_redraw_origins_never_keeps_the_old_origin_and_keeps_last() -> None:
    fake = FakeClock(5_000)
    clock = HybridClock(fake, 3)
    issued = clock.now()
    draws = iter([3, 3, 9])  # the old origin twice, then a new one
    redraw_origins([clock], lambda: next(draws))
    assert clock.origin == 9
    assert clock.last == issued
    assert clock.now() == Timestamp(5_000, 1, 9)


def test_a_clone_gets_a_fresh_lock_even_if_the_original_s_was_held() -> None:
    clock = HybridClock(FakeClock(), 3)
    clock._lock.acquire()  # a thread of the original held it when the process was copied
    redraw_origins([clock], lambda: 4)
    assert clock.now().origin == 4  # would block forever on the old lock


def test_a_clock_on_the_system_time_and_a_random_origin() -> None:
    clock = HybridClock(system_clock_us, random_origin())
    assert 1 <= clock.origin <= ORIGIN_MAX
    before = system_clock_us()
    ts = clock.now()
    assert ts.physical_us >= before
    assert clock.now() > ts


def _fork() -> int:
    # Python 3.12+ warns when forking a process that has threads; this test wants a real fork.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
        return os.fork()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_new_origin_and_distinct_ids() -> None:
    n = 500
    clock = HybridClock(system_clock_us, random_origin())
    parent_ts = {clock.now() for _ in range(n)}
    parent_ids = {new_txn_id() for _ in range(n)}
    parent_origin = clock.origin
    last_before_fork = clock.last

    read_fd, write_fd = os.pipe()
    pid = _fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_fd)
            payload = {
                "origin": clock.origin,
                "ts": [list(clock.now()) for _ in range(n)],
                "ids": [new_txn_id() for _ in range(n)],
            }
            data = json.dumps(payload).encode()
            view = memoryview(data)
            while view:
                written = os.write(write_fd, view)
                view = view[written:]
            os.close(write_fd)
            code = 0
        finally:
            os._exit(code)

    os.close(write_fd)
    parent_ts |= {clock.now() for _ in range(n)}
    parent_ids |= {new_txn_id() for _ in range(n)}
    chunks: list[bytes] = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    child = json.loads(b"".join(chunks))
    assert child["origin"] != parent_origin
    assert clock.origin == parent_origin
    child_ts = [Timestamp(*ts) for ts in child["ts"]]
    assert len(child_ts) == n
    assert all(ts.origin == child["origin"] for ts in child_ts)
    assert all(ts > last_before_fork for ts in child_ts)  # the child kept the clock's history
    assert all(a < b for a, b in itertools.pairwise(child_ts))
    assert parent_ts.isdisjoint(child_ts)
    child_ids = set(child["ids"])
    assert len(child_ids) == n
    assert parent_ids.isdisjoint(child_ids)


def test_timestamp_from_wire_accepts_only_three_unsigned_64_bit_ints() -> None:
    assert timestamp_from_wire([1, 2, ORIGIN_MAX]) == Timestamp(1, 2, ORIGIN_MAX)
    for junk in (
        [1, 2],
        [1, 2, 3, 4],
        (1, 2, 3),
        [1, True, 3],
        [-1, 0, 0],
        [0, 0, ORIGIN_MAX + 1],
        [1.0, 0, 0],
        None,
        "1.0.1",
    ):
        assert timestamp_from_wire(junk) is None, junk


u64 = st.integers(min_value=0, max_value=ORIGIN_MAX)


# The text form's decimal parts have at most 19 digits (the API's ``ReadAt`` pattern): every
# microsecond count until the year 318,857 and every logical counter a clock can reach.
decimal19 = st.integers(min_value=0, max_value=10**19 - 1)


@given(decimal19, decimal19, u64)
def test_timestamp_from_text_reads_back_str_of_every_timestamp(a: int, b: int, c: int) -> None:
    ts = Timestamp(a, b, c)
    assert timestamp_from_text(str(ts)) == ts


def test_timestamp_from_text_accepts_only_the_exact_text_form() -> None:
    assert timestamp_from_text("1700000000000000.3.0000000000000abc") == Timestamp(
        1_700_000_000_000_000, 3, 0xABC
    )
    for junk in (
        "1.2.3",  # the origin is 16 hex digits
        "01.2.0000000000000abc",  # leading zero
        "1.02.0000000000000abc",
        "-1.2.0000000000000abc",
        "+1.2.0000000000000abc",
        "1.2.0000000000000ABC",  # lowercase hex only
        "1.2.0000000000000abc\n",
        " 1.2.0000000000000abc",
        "1_0.2.0000000000000abc",
        "\u0661.2.0000000000000abc",  # a non-ASCII digit
        f"{ORIGIN_MAX + 1}.0.0000000000000000",
        f"0.{ORIGIN_MAX + 1}.0000000000000000",
        "1.2.00000000000000abc",  # 17 hex digits
        "1.2",
        "",
        None,
        [1, 2, 3],
    ):
        assert timestamp_from_text(junk) is None, junk
