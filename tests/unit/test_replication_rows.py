"""A replica's rows (kvstore.replication.rows): batches applied, snapshots taken and installed,
on two partition cores over memory stores: the follower ends with the leader's exact rows."""

from __future__ import annotations

from support.partition import Partition, delete, put, ts

from kvstore.replication.rows import apply_batch, install_snapshot, take_snapshot
from kvstore.storage_node.store import MemoryNodeStore, MemoryStore
from kvstore.types import PartitionId

P0 = PartitionId(0)


def rows(store: MemoryStore) -> tuple[object, ...]:
    snap = take_snapshot(store)
    return (
        sorted(snap.items, key=lambda r: r.key),
        sorted(snap.intents, key=lambda i: i.key),
        sorted(snap.ledger, key=lambda r: r.txn_id),
        sorted(snap.tokens, key=lambda t: t.token),
        snap.meta,
    )


def busy_leader() -> Partition:
    """Committed items, a tombstone, a pending intent with its ledger record, a token."""
    leader = Partition()
    leader.execute("t1", ts(10), put("a", 1), put("b", {"x": [1, 2]}), token="tok", fp="f")
    leader.execute("t2", ts(20), delete("b"))
    assert leader.prepare("t3", ts(30), put("c", "pending"), anchor=True).accepted
    return leader


def test_applying_each_flushed_batch_reproduces_the_leaders_rows() -> None:
    leader, follower = Partition(), MemoryStore()
    node = leader.store.node
    for step in (
        lambda: leader.execute("t1", ts(10), put("a", 1), token="tok", fp="f"),
        lambda: leader.execute("t2", ts(20), delete("a"), put("b", 2)),
        lambda: leader.prepare("t3", ts(30), put("c", 3), anchor=True),
        lambda: leader.commit("t3"),
    ):
        step()
        job = node.begin_flush()
        assert job is not None
        job.run()
        node.end_flush(job)
        apply_batch(follower, job.batch[P0])
        if job.batch[P0].meta is not None:
            follower.put_meta(job.batch[P0].meta)
    assert rows(follower) == rows(leader.store)


def test_a_snapshot_replaces_every_row_of_a_stale_copy() -> None:
    leader = busy_leader()
    stale = Partition()
    stale.execute("old", ts(5), put("zombie", 0), put("a", -1), token="old-tok", fp="g")
    assert stale.prepare("t9", ts(6), put("d", 9), anchor=True).accepted
    install_snapshot(stale.store, take_snapshot(leader.store), promised=7)
    assert rows(stale.store)[:4] == rows(leader.store)[:4]
    assert stale.store.get_meta().promised == 7
    assert stale.store.get_item("zombie") is None and stale.store.get_intent("d") is None


def test_discarding_a_partitions_open_writes_keeps_the_rest() -> None:
    p1 = PartitionId(1)
    node = MemoryNodeStore((P0, p1))
    first = Partition()  # a source of real rows
    first.execute("t1", ts(10), put("a", 1))
    row = first.store.get_item("a")
    assert row is not None
    node.partition(P0).put_item(row)
    node.commit()  # durable
    node.partition(P0).delete_item("a")  # unflushed: dropped below
    node.partition(p1).put_item(row)  # another partition's: kept
    node.discard_open_writes(P0)
    assert node.open_writes_of(P0) == 0 and node.open_writes_of(p1) == 1
    assert node.partition(P0).get_item("a") == row  # the durable row shows again
    node.commit()
    assert node.durable_rows[P0].items == {"a": row} and node.durable_rows[p1].items == {"a": row}
    node.discard_open_writes(p1)  # nothing open: harmless
    assert not node.dirty
