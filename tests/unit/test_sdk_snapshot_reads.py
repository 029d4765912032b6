"""Snapshot reads in the SDK (``kv.read(keys, at=...)``) with no network: the client's checks,
the in-memory backend's versions, and the native protocol's ``kv.read`` body.

Goal: ``at`` is taken as a :class:`~kvstore.types.Timestamp` or its text form (a commit's, a
write's, an item's ``ts``), checked before anything is sent; the in-memory backend answers as of
``at`` the way a cluster does (the versions of that instant, ``ValidationError`` after its
clock, ``SnapshotTooOld`` beyond the window or its bound, never a wrong answer) on an injected
wall clock; the native body carries ``at`` in the same text form and the node parses it as
strictly as the HTTP API does.
"""

from __future__ import annotations

import pytest

from kvstore import native
from kvstore.client import Client, Put, SyncClient
from kvstore.client.memory import MEMORY_VERSIONS_PER_KEY, MemoryBackend
from kvstore.errors import SnapshotTooOld, ValidationError
from kvstore.limits import SNAPSHOT_WINDOW_MS
from kvstore.types import Timestamp, timestamp_from_text

START_US = 1_800_000_000_000_000
WINDOW_US = SNAPSHOT_WINDOW_MS * 1000


class WallClock:
    def __init__(self) -> None:
        self.now_us = START_US

    def __call__(self) -> int:
        return self.now_us


def memory() -> tuple[Client, MemoryBackend, WallClock]:
    clock = WallClock()
    backend = MemoryBackend(now_us=clock)
    return Client(backend), backend, clock


def reads(backend: MemoryBackend) -> list[object]:
    return [argument for method, argument in backend.calls if method == "read"]


@pytest.mark.asyncio
async def test_a_read_at_a_commit_s_ts_sees_that_instant() -> None:
    kv, _, clock = memory()
    first = await kv.put("k", "v1")
    clock.now_us += 1
    committed = await kv.transact([Put("k", "v2"), Put("other", 1)])
    clock.now_us += 1
    await kv.delete("other")
    latest = await kv.read(["k", "other"])
    assert [item.value if item else None for item in latest] == ["v2", None]
    as_of_first = await kv.read(["k", "other"], at=first.ts)
    assert as_of_first[0] is not None and (as_of_first[0].value, as_of_first[0].ts) == (
        "v1",
        first.ts,
    )
    assert as_of_first[1] is None  # "other" did not exist yet
    as_of_commit = await kv.read(["k", "other"], at=committed.ts)  # read as of the commit
    assert [item.value if item else None for item in as_of_commit] == ["v2", 1]
    parsed = timestamp_from_text(committed.ts)
    assert parsed is not None
    assert await kv.read(["k", "other"], at=parsed) == as_of_commit  # a Timestamp works too


@pytest.mark.asyncio
async def test_at_is_checked_before_anything_is_sent() -> None:
    kv, backend, _ = memory()
    for bad in ("yesterday", "1.2.3", "01.0.0000000000000000", 17, Timestamp(-1, 0, 0)):
        with pytest.raises(ValidationError) as refused:
            await kv.read(["k"], at=bad)  # type: ignore[arg-type]
        assert refused.value.field == "at"
    assert reads(backend) == []


@pytest.mark.asyncio
async def test_a_future_or_too_old_at_is_refused_and_not_retried() -> None:
    kv, backend, clock = memory()
    written = await kv.put("k", 1)
    future = Timestamp(clock.now_us + 1_000_000, 0, 0)
    with pytest.raises(ValidationError, match="in the future"):
        await kv.read(["k"], at=future)
    old = Timestamp(clock.now_us - 60_000_000, 0, 0)  # a minute ago
    with pytest.raises(SnapshotTooOld, match="snapshot window") as too_old:
        await kv.read(["k"], at=old)
    assert not too_old.value.retryable
    assert len(reads(backend)) == 2  # one attempt each
    clock.now_us += WINDOW_US + 1  # the write's timestamp leaves the window
    with pytest.raises(SnapshotTooOld):
        await kv.read(["k"], at=written.ts)


@pytest.mark.asyncio
async def test_versions_replaced_before_the_window_are_dropped_never_answered_wrong() -> None:
    kv, backend, clock = memory()
    first = await kv.put("k", 1)
    clock.now_us += 1
    await kv.put("k", 2)
    assert len(backend._states["k"]) == 2
    clock.now_us += WINDOW_US + 10
    third = await kv.put("k", 3)  # the first state was replaced before the window: dropped
    assert len(backend._states["k"]) == 2
    with pytest.raises(SnapshotTooOld):
        await kv.read(["k"], at=first.ts)
    items = await kv.read(["k"], at=third.ts)
    assert items[0] is not None and items[0].value == 3


@pytest.mark.asyncio
async def test_a_key_keeps_a_bounded_list_of_versions() -> None:
    kv, backend, _ = memory()
    stamps = [(await kv.put("hot", n)).ts for n in range(MEMORY_VERSIONS_PER_KEY + 5)]
    assert len(backend._states["hot"]) == MEMORY_VERSIONS_PER_KEY
    with pytest.raises(SnapshotTooOld, match="no longer kept"):
        await kv.read(["hot"], at=stamps[3])
    items = await kv.read(["hot"], at=stamps[5])
    assert items[0] is not None and items[0].value == 5
    assert (await kv.read(["cold"], at=stamps[0])) == [None]  # a key never written: absent


def test_the_sync_client_reads_at_a_timestamp() -> None:
    clock = WallClock()
    with SyncClient(Client(MemoryBackend(now_us=clock))) as kv:
        first = kv.put("k", "a")
        kv.put("k", "b")
        item = kv.read(["k"], at=first.ts)[0]
        assert item is not None and item.value == "a"
        assert kv.read(["k"], str, at=first.ts)[0] is not None


def test_the_native_read_body_carries_at_as_text_and_is_parsed_strictly() -> None:
    at = Timestamp(START_US, 4, 0xBEEF)
    body = native.encode_read_body(["a", "b"], at)
    assert body == {"keys": ["a", "b"], "at": str(at)}
    assert native.body_at(body) == at
    assert native.body_at(native.encode_read_body(["a"], None)) is None
    for bad in ("1.2.3", [START_US, 4, 0xBEEF], 5):
        with pytest.raises(ValidationError):
            native.body_at({"keys": ["a"], "at": bad})
