"""Interactive transactions (kvstore.client.transaction) on the in-memory backend.

Goal: the commit plan is exactly what makes an interactive transaction serializable: every
write carries, ANDed with its own condition, a condition that what the transaction read is
unchanged; every key read and not written gets a check; a commit cancelled because a read
changed is a retryable ``TransactionConflict``, one cancelled by the code's own condition on
current data is ``TransactionCanceled``; ``run`` re-runs conflicts and nothing else. Method: a
:class:`~kvstore.client.memory.MemoryBackend` (the store's semantics in memory, not a mock of
HTTP) behind a real :class:`Client` with a fake clock and instant sleeps; "someone else" writes
straight into the backend between a read and the commit.
"""

from __future__ import annotations

import random

import pytest

from kvstore.client import (
    UNCOMMITTED_VERSION,
    Client,
    Committed,
    Transaction,
    absent,
    eq,
    exists,
    gt,
    reasons,
)
from kvstore.client.memory import MemoryBackend
from kvstore.client.transaction import ReadMark, commit_plan
from kvstore.errors import (
    ConditionFailed,
    TransactionCanceled,
    TransactionConflict,
    Unavailable,
    ValidationError,
)
from kvstore.ops import op_to_json

pytestmark = pytest.mark.asyncio


class FakeTime:
    """A clock the client's sleeps move forward: no real waiting."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.slept.append(delay_s)
        self.now_s += delay_s


def make_client(backend: MemoryBackend | None = None) -> tuple[Client, MemoryBackend, FakeTime]:
    backend = backend if backend is not None else MemoryBackend()
    time = FakeTime()
    client = Client(backend, clock=time, sleep=time.sleep, rng=random.Random(3))
    return client, backend, time


def sent_ops(backend: MemoryBackend) -> list[list[dict[str, object]]]:
    """The ops of every transaction the backend received, as JSON."""
    return [
        [op_to_json(op) for op in argument[0]]  # type: ignore[index]
        for method, argument in backend.calls
        if method == "transact"
    ]


async def test_writes_carry_read_versions_and_reads_get_checks() -> None:
    kv, backend, _ = make_client()
    await kv.put("a", 1)
    await kv.put("b", 2)
    async with kv.transaction() as tx:
        a = await tx.get("a")
        await tx.get("b")
        assert await tx.get("missing") is None
        assert a is not None
        tx.put("a", a.value + 1)  # type: ignore[operator]
        tx.put("new", "x", if_=absent())
        tx.update("b", add={"": 1}, if_=gt("", 0))
    assert sent_ops(backend) == [
        [
            {"op": "put", "key": "a", "value": 2, "if": {"version": 1}},
            {"op": "put", "key": "new", "value": "x", "if": {"exists": False}},
            {
                "op": "update",
                "key": "b",
                "add": {"": 1},
                "if": {"all": [{"version": 1}, {"path": "", "gt": 0}]},
                "return_item": True,
            },
            {"op": "check", "key": "missing", "if": {"exists": False}},
        ]
    ]
    assert isinstance(tx.committed, Committed)
    assert [item.value if item else None for item in await kv.read(["a", "b", "new"])] == [
        2,
        3,
        "x",
    ]


async def test_commit_plan_orders_writes_first_then_read_checks() -> None:
    reads = {"r1": ReadMark(True, 4), "w": ReadMark(False), "r2": ReadMark(True, 9)}
    tx = Transaction(Client(MemoryBackend()))
    tx._reads.update(reads)
    tx.delete("w")
    tx.check("c", exists())
    plan = tx.plan()
    assert plan.ops_json() == [
        {"op": "delete", "key": "w", "if": {"exists": False}},
        {"op": "check", "key": "c", "if": {"exists": True}},
        {"op": "check", "key": "r1", "if": {"version": 4}},
        {"op": "check", "key": "r2", "if": {"version": 9}},
    ]
    assert commit_plan({}, {}).ops == ()


async def test_a_changed_read_is_a_retryable_conflict_and_nothing_applies() -> None:
    kv, _, _ = make_client()
    await kv.put("a", 1)
    tx = kv.transaction()
    await tx.get("a")
    tx.put("b", "written")
    await kv.put("a", 2)  # someone else
    with pytest.raises(TransactionConflict) as raised:
        await tx.commit()
    error = raised.value
    assert error.retryable
    assert error.details["stale_keys"] == ["a"]
    assert [r["code"] for r in reasons(error)] == ["None", "ConditionFailed"]
    assert await kv.get("b") is None


async def test_the_codes_own_condition_failing_on_current_data_is_a_cancellation() -> None:
    kv, _, _ = make_client()
    await kv.put("a", {"n": 1})
    tx = kv.transaction()
    await tx.get("a")
    tx.put("a", {"n": 2}, if_=eq("n", 5))  # fails on the very item the transaction read
    with pytest.raises(TransactionCanceled) as raised:
        await tx.commit()
    assert not isinstance(raised.value, TransactionConflict)
    assert raised.value.retryable is False


async def test_a_stale_read_wins_over_the_codes_failed_condition() -> None:
    kv, _, _ = make_client()
    await kv.put("a", {"n": 1})
    tx = kv.transaction()
    await tx.get("a")
    tx.put("a", {"n": 2}, if_=eq("n", 1))
    await kv.put("a", {"n": 7})  # both the read and the own condition now fail
    with pytest.raises(TransactionConflict) as raised:
        await tx.commit()
    assert raised.value.details["stale_keys"] == ["a"]


async def test_reads_repeat_and_the_transaction_reads_its_own_writes() -> None:
    kv, backend, _ = make_client()
    await kv.put("a", {"n": 1, "tags": ["x"]})
    tx = kv.transaction()
    first = await tx.get("a")
    await kv.put("a", "changed")
    assert await tx.get("a") == first  # the first answer, not a second read
    assert [method for method, _ in backend.calls].count("get") == 1
    tx.update("a", add={"n": 2}, append={"tags": ["y"]})
    mine = await tx.get("a")
    assert mine is not None
    assert mine.value == {"n": 3, "tags": ["x", "y"]}
    assert (mine.version, mine.ts, mine.committed) == (UNCOMMITTED_VERSION, "", False)
    tx.put("p", [1])
    put_back = await tx.get("p")
    assert put_back is not None and put_back.value == [1]
    tx.delete("p")
    assert await tx.get("p") is None
    tx.discard()


async def test_an_update_is_folded_into_an_earlier_put_but_not_into_an_update() -> None:
    kv, backend, _ = make_client()
    async with kv.transaction() as tx:
        tx.put("k", {"n": 1})
        tx.update("k", add={"n": 1}, set={"s": "v"})
        tx.delete("gone")
        tx.update("gone", add={"": 5})
        tx.update("u", add={"": 1})
        with pytest.raises(ValidationError):
            tx.update("u", add={"": 1})
    assert sent_ops(backend) == [
        [
            {"op": "put", "key": "k", "value": {"n": 2, "s": "v"}},
            {"op": "put", "key": "gone", "value": 5},
            {"op": "update", "key": "u", "add": {"": 1}},
        ]
    ]


async def test_a_read_only_transaction_validates_with_one_snapshot_read() -> None:
    kv, backend, _ = make_client()
    await kv.put("a", 1)
    async with kv.transaction() as tx:
        await tx.get("a")
        await tx.get("b")
    assert tx.committed is None
    assert ("read", ("a", "b")) in backend.calls
    assert sent_ops(backend) == []
    tx = kv.transaction()
    await tx.get("a")
    await tx.get("b")
    await kv.put("b", "appeared")
    with pytest.raises(TransactionConflict) as raised:
        await tx.commit()
    assert raised.value.details["stale_keys"] == ["b"]
    calls_before = len(backend.calls)
    async with kv.transaction() as tx:
        await tx.get("a")  # one key is its own snapshot: nothing more to send
    assert len(backend.calls) == calls_before + 1


async def test_an_exception_discards_and_a_closed_transaction_refuses_more() -> None:
    kv, backend, _ = make_client()
    with pytest.raises(RuntimeError):
        async with kv.transaction() as tx:
            tx.put("a", 1)
            raise RuntimeError("boom")
    assert sent_ops(backend) == []
    with pytest.raises(ValidationError):
        tx.put("a", 2)
    with pytest.raises(ValidationError):
        await tx.get("a")


async def test_run_re_runs_conflicts_in_new_transactions_and_returns_the_result() -> None:
    kv, backend, time = make_client()
    await kv.put("counter", 0)
    runs = 0

    async def increment(tx: Transaction) -> int:
        nonlocal runs
        runs += 1
        item = await tx.get("counter")
        assert item is not None
        if runs <= 2:  # someone else increments in between, twice
            await kv.update("counter", add={"": 10})
        tx.put("counter", int(str(item.value)) + 1)
        return runs

    assert await kv.run(increment) == 3
    item = await kv.get("counter")
    assert item is not None and item.value == 21
    assert len(time.slept) == 2
    tokens = [argument[1] for method, argument in backend.calls if method == "transact"]  # type: ignore[index]
    assert len(set(tokens)) == len(tokens)  # every transaction has its own token


async def test_run_raises_what_is_not_a_conflict_and_gives_up_after_its_attempts() -> None:
    kv, _, _ = make_client()
    await kv.put("a", 1)

    async def conditional(tx: Transaction) -> None:
        await tx.get("a")
        tx.put("a", 2, if_=absent())

    with pytest.raises(TransactionCanceled):
        await kv.run(conditional)

    async def always_stale(tx: Transaction) -> None:
        await tx.get("a")
        await kv.update("a", add={"": 1})
        tx.put("a", 0)

    with pytest.raises(TransactionConflict):
        await kv.run(always_stale, attempts_max=3)

    async def fails(tx: Transaction) -> None:
        raise ConditionFailed("from the code")

    with pytest.raises(ConditionFailed):
        await kv.run(fails)


async def test_a_commit_whose_answer_was_lost_is_retried_with_the_same_token() -> None:
    kv, backend, _ = make_client()
    await kv.put("n", 1)
    backend.inject("transact", Unavailable("lost", details={"sent": True}), after_apply=True)
    async with kv.transaction() as tx:
        item = await tx.get("n")
        assert item is not None
        tx.update("n", add={"": 1})
    item = await kv.get("n")
    assert item is not None and item.value == 2  # applied once
    tokens = [argument[1] for method, argument in backend.calls if method == "transact"]  # type: ignore[index]
    assert len(tokens) == 2 and tokens[0] == tokens[1]
