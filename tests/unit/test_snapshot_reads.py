"""Reads as of a timestamp (docs/backup.md): the version history, the read floor, intents, pins.

Each rule of the partition core's snapshot reads is one script on a memory partition: the
version a read at ``at`` sees, the floor that refuses later writes at or below ``at``, intents
above ``at`` ignored and at or below it reported, the window and the pins that keep versions,
and the restore message.
"""

from __future__ import annotations

import pytest
from support.partition import P0, Partition, check, codes, delete, put, ts

from kvstore.conditions import Exists
from kvstore.errors import SnapshotTooOld, TransactionConflict
from kvstore.messages import ItemView, ReasonCode, RestoreRequest
from kvstore.storage_node.core import PartitionConfig
from kvstore.storage_node.history import Version, VersionHistory
from kvstore.types import Timestamp

OK = ReasonCode.NONE
TOO_OLD = ReasonCode.TIMESTAMP_TOO_OLD
SECOND_US = 1_000_000


def committed(p: Partition, txn: str, at: Timestamp, *ops: object) -> None:
    assert p.prepare(txn, at, *ops).accepted  # type: ignore[arg-type]
    p.commit(txn)


def test_a_read_at_a_timestamp_sees_the_versions_of_that_instant() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", "one"))
    committed(p, "t2", ts(20), put("x", "two"))
    committed(p, "t3", ts(30), delete("x"))
    committed(p, "t4", ts(40), put("y", "new"))
    at_15, at_25, at_35 = (p.read_at(ts(t), "x", "y") for t in (15, 25, 35))
    assert [(e.exists, e.value, e.version) for e in at_15] == [(True, "one", 1), (False, None, 0)]
    assert [(e.exists, e.value, e.version) for e in at_25] == [(True, "two", 2), (False, None, 0)]
    assert [e.exists for e in at_35] == [False, False]
    assert [e.ts for e in at_25] == [ts(20), Timestamp(0, 0, 0)]
    latest = p.read_at(ts(50), "x", "y")
    assert [(e.exists, e.value) for e in latest] == [(False, None), (True, "new")]


def test_a_read_at_raises_the_floor_so_no_write_at_or_below_it_commits_later() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", 1))
    p.read_at(ts(100), "x")
    # Any key of the partition, read or not: the floor is partition-wide.
    assert codes(p.prepare("late", ts(90), put("x", 2)).outcomes) == [TOO_OLD]
    assert codes(p.prepare("late2", ts(100), put("other", 2)).outcomes) == [TOO_OLD]
    assert p.prepare("checks", ts(50), check("x")).accepted  # a check changes nothing
    assert p.prepare("after", ts(101), put("other", 3)).accepted
    # A singleton write is stamped above the floor whatever the node's clock says.
    written = p.write(put("y", 1), node_clock_us=5)
    assert written.ts is not None and written.ts > ts(100)
    assert p.store.get_meta().read_floor == ts(100)


def test_intents_above_at_are_ignored_and_those_at_or_below_are_reported() -> None:
    p = Partition()
    committed(p, "t1", ts(10), put("x", 1), put("y", 1))
    assert p.prepare("above", ts(200), put("x", 2)).accepted
    assert p.prepare("below", ts(50), put("y", 2)).accepted
    x, y = p.read_at(ts(100), "x", "y")
    assert (x.value, x.pending) == (1, False)
    assert (y.value, y.pending) == (1, True)
    with pytest.raises(TransactionConflict):  # a backup page waits for the one below
        p.scan_at(ts(100))
    p.commit("below")
    p.commit("above")
    items, _ = p.scan_at(ts(100))
    assert [(i.key, i.value) for i in items] == [("x", 1), ("y", 2)]


def test_a_scan_at_merges_keys_deleted_since_and_hides_keys_created_since() -> None:
    p = Partition()
    for index, key in enumerate("abcde"):
        committed(p, f"t{key}", ts(10 + index), put(key, key.upper()))
    committed(p, "del-b", ts(100), delete("b"))
    committed(p, "new-f", ts(101), put("f", "F"))
    committed(p, "upd-d", ts(102), put("d", "DD"))
    seen: list[tuple[str, object]] = []
    start: str | None = ""
    pages = 0
    while start is not None and pages < 10:
        items, start = p.scan_at(ts(50), start, limit=2)
        seen += [(i.key, i.value) for i in items]
        pages += 1
    assert seen == [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D"), ("e", "E")]
    items, start = p.scan_at(ts(200))
    assert [(i.key, i.value) for i in items] == [
        ("a", "A"),
        ("c", "C"),
        ("d", "DD"),
        ("e", "E"),
        ("f", "F"),
    ]
    assert start is None


def test_versions_older_than_the_window_are_forgotten_unless_pinned() -> None:
    p = Partition()
    committed(p, "t1", ts(p.now_us), put("x", 1))
    committed(p, "t2", ts(p.now_us + 10), put("y", 1))
    pinned = ts(p.now_us + 5)
    p.scan_at(pinned)  # a backup's page pins its timestamp
    committed(p, "t3", ts(p.now_us + 20), put("x", 2))
    committed(p, "t4", ts(p.now_us + 30), put("y", 2))
    p.now_us += 11 * SECOND_US  # past the 10 s window
    p.maintain()
    with pytest.raises(SnapshotTooOld):
        p.read_at(ts(p.now_us - 11 * SECOND_US + 25), "x")
    items, _ = p.scan_at(pinned)  # kept for the pin: x as of the pin, y absent then
    assert [(i.key, i.value) for i in items] == [("x", 1)]
    p.now_us += 61 * SECOND_US  # the pin lapses a minute after its last page
    p.maintain()
    with pytest.raises(SnapshotTooOld):
        p.scan_at(pinned)


def test_writes_the_history_did_not_see_move_its_horizon_up() -> None:
    """A restart, a follower's applied batches or a restore leave rows the history never saw:
    reads below the partition's largest write timestamp are refused, not answered wrongly."""
    p = Partition()
    committed(p, "t1", ts(10), put("x", 1))
    p.core.forget_history()  # as after a restart or a change of leader
    with pytest.raises(SnapshotTooOld):
        p.read_at(ts(5), "x")
    assert p.read_at(ts(10), "x")[0].value == 1
    restore = RestoreRequest(
        partition=P0,
        items=(ItemView(key="r", value="R", version=7, ts=ts(500)),),
        floor=ts(600),
        deleted_version=9,
    )
    assert p.core.restore(restore).reply.restored == 1
    with pytest.raises(SnapshotTooOld):
        p.read_at(ts(400), "r")
    entry = p.read_at(ts(700), "r")[0]
    assert (entry.value, entry.version, entry.ts) == ("R", 7, ts(500))
    assert codes(p.prepare("below", ts(550), put("r", 1)).outcomes) == [TOO_OLD]
    committed(p, "gone", ts(800), delete("r"))
    committed(p, "again", ts(900), put("r", "again"))
    again = p.get("r")
    assert again is not None and again.version == 9


def test_the_history_keeps_at_most_its_bound_and_drops_pins_that_lose_a_version() -> None:
    history = VersionHistory(versions_max=3)
    before = Version(True, "v0", 1, ts(1))
    history.pin(ts(5), until_us=10**12)
    for index in range(4):
        history.record(f"k{index}", before, ts(10 + index))
    assert len(history) == 3
    assert history.horizon == ts(10)
    assert not history.readable(ts(5))  # k0's version as of 5 is gone, and the pin with it
    assert history.readable(ts(10))
    assert history.version_at("k1", ts(10), Version(True, "now", 2, ts(11))).value == "v0"


def test_a_write_committed_below_the_partition_watermark_is_read_at_its_own_timestamp() -> None:
    """Regression (simulator, rw-register seeds with backups): a transaction prepared on an
    absent key at 10 commits after the partition watermark rose to 50 (another key's tombstone,
    read at 50, folded). Its row was stamped with the watermark (``max(floor, ts)``), so the
    version history recorded the write at 50: a read as of 30 missed a write committed at 10,
    and the item claimed a commit timestamp it never had. It is the write's own timestamp now;
    the watermark stays the key's read floor."""
    p = Partition(PartitionConfig(tombstone_retention_ms=0))
    assert p.prepare("t1", ts(10), put("x", 1)).accepted
    committed(p, "t2", ts(50), check("y", Exists(False)))
    p.maintain()  # y's tombstone folds: every absent key's floor is 50 now
    assert p.store.get_meta().max_delete_ts == ts(50)
    p.commit("t1")
    entry = p.read_at(ts(30), "x")[0]
    assert (entry.exists, entry.value, entry.ts) == (True, 1, ts(10))
    item = p.get("x")
    assert item is not None and item.ts == ts(10)
    items, _ = p.scan_at(ts(30))
    assert [(i.key, i.value, i.ts) for i in items] == [("x", 1, ts(10))]
    # The watermark still holds for x as a read floor: no write at or below 50.
    assert codes(p.prepare("low", ts(40), put("x", 2)).outcomes) == [TOO_OLD]
    assert p.prepare("checked", ts(40), check("x")).accepted  # x = 1 as of 40, as it was


def test_a_pin_keeps_the_version_replaced_after_it_whatever_that_version_s_write_ts() -> None:
    """Regression: a check of an absent key leaves a tombstone carrying the partition
    watermark as its ``write_ts``, above a pinned ``at``. The version a later write replaced
    there (absent) is the key's version as of ``at``, but the pin test compared ``at`` with
    that ``write_ts`` and let collection forget it: the pinned page then read the later write.
    A replaced version is needed by a pin when it is the first one replaced after ``at``."""
    p = Partition(PartitionConfig(tombstone_retention_ms=0))
    start = p.now_us
    committed(p, "t0", ts(start + 50), check("y", Exists(False)))
    p.now_us += 100
    p.maintain()  # the watermark is start + 50
    pinned = ts(start + 30)
    assert p.scan_at(pinned) == ((), None)  # a backup's first page pins its timestamp
    committed(p, "t1", ts(start + 60), check("x", Exists(False)))  # x's tombstone at + 50
    committed(p, "t2", ts(start + 70), put("x", 1))
    p.now_us += 11 * SECOND_US  # past the window, within the pin
    p.maintain()
    assert p.scan_at(pinned) == ((), None)  # x did not exist as of the pin
    items, _ = p.scan_at(ts(p.now_us))
    assert [(i.key, i.value) for i in items] == [("x", 1)]
