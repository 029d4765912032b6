"""A replica's rows: a shipped batch applied, a partition's snapshot taken and installed.

Theory of operation
-------------------
Replicas change their rows only through the partition's store view
(:class:`~kvstore.storage_node.store.PartitionStore`), the same interface the partition core
writes through, so applied rows land in the node's open batch and reach the disk with its group
commit, and every read (caches, the intent mirror) stays exact. A batch holds whole rows (a
deletion is ``None``), so applying one is setting each row; a snapshot is every row of the
partition (its listings, each at most ``REPL_SNAPSHOT_ROWS_MAX`` rows), and installing one
deletes what the snapshot lacks and writes the rest. The meta row (watermark and position) is
the caller's business. Pure: no I/O beyond the view, no clock.
"""

from __future__ import annotations

from dataclasses import replace

from kvstore import limits
from kvstore.messages import Snapshot
from kvstore.storage_node.overlay import PartitionBatch
from kvstore.storage_node.store import PartitionStore

__all__ = ["apply_batch", "take_snapshot", "install_snapshot"]

_FAR_US = 1 << 62  # after every row's creation or completion time


def apply_batch(view: PartitionStore, rows: PartitionBatch) -> None:
    """Write a shipped batch's rows through ``view`` (meta is set by the caller)."""
    for key, item in rows.items.items():
        if item is None:
            view.delete_item(key)
        else:
            view.put_item(item)
    for key, intent in rows.intents.items():
        if intent is None:
            view.delete_intent(key)
        else:
            view.put_intent(intent)
    for txn_id, record in rows.ledger.items():
        if record is None:
            view.delete_ledger(txn_id)
        else:
            view.put_ledger(record)
    for token, row in rows.tokens.items():
        if row is None:
            view.delete_token(token)
        else:
            view.put_token(row)


def take_snapshot(view: PartitionStore) -> Snapshot:
    """Every row of the partition behind ``view`` (its open writes included)."""
    cap = limits.REPL_SNAPSHOT_ROWS_MAX
    items = tuple(view.scan_items("", None, cap)) + tuple(view.tombstones(cap))
    return Snapshot(
        items=items,
        intents=tuple(view.intents_created_before(_FAR_US, cap)),
        ledger=tuple(view.open_ledger_records(cap))
        + tuple(view.ledger_completed_before(_FAR_US, cap)),
        tokens=tuple(view.tokens_created_before(_FAR_US, cap)),
        meta=view.get_meta(),
    )


def install_snapshot(view: PartitionStore, snapshot: Snapshot, promised: int) -> None:
    """Replace every row behind ``view`` by the snapshot's."""
    old = take_snapshot(view)
    keep_items = {row.key for row in snapshot.items}
    for row in old.items:
        if row.key not in keep_items:
            view.delete_item(row.key)
    keep_intents = {intent.key for intent in snapshot.intents}
    for intent in old.intents:
        if intent.key not in keep_intents:
            view.delete_intent(intent.key)
    keep_ledger = {record.txn_id for record in snapshot.ledger}
    for record in old.ledger:
        if record.txn_id not in keep_ledger:
            view.delete_ledger(record.txn_id)
    keep_tokens = {row.token for row in snapshot.tokens}
    for token_row in old.tokens:
        if token_row.token not in keep_tokens:
            view.delete_token(token_row.token)
    for row in snapshot.items:
        view.put_item(row)
    for intent in snapshot.intents:
        view.put_intent(intent)
    for record in snapshot.ledger:
        view.put_ledger(record)
    for token_row in snapshot.tokens:
        view.put_token(token_row)
    view.put_meta(replace(snapshot.meta, promised=max(promised, snapshot.meta.promised)))
