"""Deleted DynamoDB tables are purged (kvstore/dynamodb/janitor.py, tables.py).

Goal: a deleted table's items leave the store and its name becomes free, in bounded passes,
never before the grace that keeps stale schema caches from writing after the purge, and the
record goes only after a walk that found nothing. Method: the catalogue and the janitor over an
in-memory stand-in for the coordinator library (the calls they make), with the wall clock under
the test's control.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from kvstore.conditions import evaluate
from kvstore.dynamodb import keys as ddb_keys
from kvstore.dynamodb.janitor import purge_pass
from kvstore.dynamodb.tables import Catalog
from kvstore.errors import ConditionFailed
from kvstore.limits import DYNAMODB_PURGE_ITEMS_PER_PASS, DYNAMODB_TABLE_DELETE_GRACE_MS
from kvstore.messages import ItemView, OpOutcome, ScanReply, WriteReply
from kvstore.ops import Op, apply_op
from kvstore.partitioning import PartitionMap
from kvstore.types import TIMESTAMP_ZERO, PartitionId, Value


@dataclass
class _Map:
    partitions: PartitionMap


@dataclass
class MemoryCoordinator:
    """The calls Catalog and the janitor make, over a dict of versioned items."""

    partition_count: int = 4
    items: dict[str, tuple[Value, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cluster_map = _Map(PartitionMap(self.partition_count))

    def partition_of(self, key: str) -> PartitionId:
        return self.cluster_map.partitions.partition_of(key)

    def _view(self, key: str) -> ItemView:
        value, version = self.items[key]
        return ItemView(key=key, value=value, version=version, ts=TIMESTAMP_ZERO)

    async def get(self, key: str) -> ItemView | None:
        return self._view(key) if key in self.items else None

    async def write(self, op: Op) -> WriteReply:
        value, version = self.items.get(op.key, (None, 0))
        exists = op.key in self.items
        if not evaluate(op.condition, exists=exists, value=value, version=version):
            raise ConditionFailed("the condition did not hold")
        new_exists, new_value = apply_op(op, exists=exists, value=value)
        if new_exists:
            self.items[op.key] = (new_value, version + 1)
        else:
            self.items.pop(op.key, None)
        return WriteReply(outcome=OpOutcome(), existed=exists, version=version + 1)

    async def partition_page(
        self, partition: PartitionId, *, start: str, end: str | None, limit: int, **_: Any
    ) -> ScanReply:
        keys = sorted(
            key
            for key in self.items
            if self.partition_of(key) == partition and start <= key and (end is None or key < end)
        )
        views = tuple(self._view(key) for key in keys[:limit])
        return ScanReply(items=views, next_start=keys[limit] if len(keys) > limit else None)


TABLE = {
    "TableName": "gone",
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


def test_a_deleted_table_is_purged_after_its_grace_then_its_name_is_free() -> None:
    async def scenario() -> None:
        now = [1_000.0]
        store: Any = MemoryCoordinator()
        catalog = Catalog(store, wall_s=lambda: now[0])
        await catalog.create(TABLE)
        schema = await catalog.schema("gone")
        total = DYNAMODB_PURGE_ITEMS_PER_PASS + 50
        for index in range(total):
            key, _ = schema.store_key({"pk": {"S": f"k{index}"}}, item=True)
            store.items[key] = ({"pk": {"S": f"k{index}"}}, 1)
        neighbour = "\x00d/ffffffffffffffff/x\x01"  # another table's item
        store.items[neighbour] = ({"pk": {"S": "x"}}, 1)
        await catalog.delete({"TableName": "gone"})
        described: Any = await catalog.describe({"TableName": "gone"})
        assert described["Table"]["TableStatus"] == "DELETING"
        listed: Any = await catalog.list_names({})
        assert listed["TableNames"] == ["gone"]
        try:
            await catalog.create(TABLE)
        except ConditionFailed as error:
            assert error.details["aws_type"] == "ResourceInUseException"
        else:
            raise AssertionError("a table being deleted was created again")
        assert await purge_pass(store, catalog) == 0  # within the grace: nothing yet
        now[0] += DYNAMODB_TABLE_DELETE_GRACE_MS / 1000 + 1
        assert await purge_pass(store, catalog) == DYNAMODB_PURGE_ITEMS_PER_PASS
        assert await purge_pass(store, catalog) == 50
        assert ddb_keys.catalog_key("gone") in store.items  # forgotten after a clean walk only
        assert await purge_pass(store, catalog) == 0
        assert ddb_keys.catalog_key("gone") not in store.items
        assert neighbour in store.items
        items = ddb_keys.table_range(schema.table_id)
        assert not [key for key in store.items if items.start <= key < items.end]
        await catalog.create(TABLE)  # the name is free again
        assert (await catalog.schema("gone")).table_id != schema.table_id

    asyncio.run(scenario())
