"""``PutItem``, ``GetItem``, ``UpdateItem`` and ``DeleteItem``: one item, one store operation.

Theory of operation
-------------------
Each write is one singleton write of the store (a one-operation transaction at the owning
node's timestamp, DESIGN section 6): the front end validates the request, parses its
expressions, and sends one :class:`~kvstore.ops.Op` whose condition and update the storage node
evaluates on the item's committed state (:mod:`kvstore.dynamodb.payloads`). A write that meets a
pending transaction is retried by the coordinator for a bounded time before it answers
``TransactionConflictException`` (botocore never retries that one). ``GetItem`` is the store's
``get``: the committed item, never blocked by a pending transaction; reads are always strongly
consistent here, so ``ConsistentRead`` is accepted and changes nothing.

``ReturnValues``: the op asks the node for the item it replaced (``return_previous``); the new
item, for ``ALL_NEW``/``UPDATED_NEW``, is the same pure function of it the node applied
(:func:`~kvstore.dynamodb.evaluate.apply_update`). ``UPDATED_*`` returns the old or new item
projected on the paths the update's actions write, as DynamoDB does: ``SET a.b = :v`` returns
``{"a": {"b": ...}}``, not all of ``a``; a path with nothing there (a list index past the end, an
attribute the update created, for ``UPDATED_OLD``) contributes nothing.
``ReturnValuesOnConditionCheckFailure=ALL_OLD`` asks the node for the item in
the failed condition's reason (the op's ``return_item``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from kvstore.coordinator.engine import Coordinator
from kvstore.dynamodb.attributes import Item, check_item_size, item_from_wire, item_to_wire
from kvstore.dynamodb.evaluate import project
from kvstore.dynamodb.expressions import Projection
from kvstore.dynamodb.payloads import apply_expression_update
from kvstore.dynamodb.request_exprs import (
    DELETE_ITEM,
    GET_ITEM,
    PUT_ITEM,
    UPDATE_ITEM,
    Members,
    RequestExpressions,
)
from kvstore.dynamodb.requests import Body, optional_enum, required_object, table_name
from kvstore.dynamodb.tables import Catalog, TableSchema
from kvstore.errors import ConditionFailed, ValidationError
from kvstore.ops import Op, OpKind
from kvstore.types import Value

__all__ = [
    "Items",
    "consumed",
    "consumed_per_table",
    "condition_failed",
    "RETURN_ON_FAILURE",
    "store_refusal",
]

RETURN_ON_FAILURE: Final = ("NONE", "ALL_OLD")
_CAPACITY: Final = ("INDEXES", "TOTAL", "NONE")
_CONDITION_FAILED: Final = "The conditional request failed"


def consumed(body: Body, table: str, units: float) -> dict[str, object]:
    """``ConsumedCapacity`` when the request asked for it (capacity is reported, not enforced:
    one unit per item read or written, two in a transaction)."""
    if optional_enum(body, "ReturnConsumedCapacity", _CAPACITY, "NONE") == "NONE":
        return {}
    return {"ConsumedCapacity": {"TableName": table, "CapacityUnits": units}}


def consumed_per_table(body: Body, units: Mapping[str, float]) -> dict[str, object]:
    """``ConsumedCapacity`` of a request over several tables (batches, transactions)."""
    if optional_enum(body, "ReturnConsumedCapacity", _CAPACITY, "NONE") == "NONE":
        return {}
    return {
        "ConsumedCapacity": [
            {"TableName": name, "CapacityUnits": value} for name, value in units.items()
        ]
    }


def condition_failed(error: ConditionFailed) -> ConditionFailed:
    """DynamoDB's ConditionalCheckFailedException, with the item when the node returned it."""
    details: dict[str, object] = {"aws_type": "ConditionalCheckFailedException"}
    item = error.details.get("item")
    if isinstance(item, Mapping) and isinstance(item.get("value"), dict):
        details["item"] = item["value"]  # the item's JSON form: bytes as base64, its wire form
    return ConditionFailed(_CONDITION_FAILED, details=details)


def store_refusal(error: ValidationError) -> ValidationError:
    """The ValidationException for a singleton write the store refused, in AWS's words.

    The coordinator words a node's reason for an op that cannot apply (an update whose result
    breaks a limit) after the field ``op`` (``"op: Item size to update has exceeded..."``); the
    reason itself is already AWS's message (:mod:`kvstore.dynamodb.evaluate`), so the field
    goes. A refused call keeps its details: naming a partition or node, it is worded by
    :mod:`kvstore.dynamodb.errors` like every such error."""
    prefix = f"{error.field}: " if error.field else ""
    details = {name: value for name, value in error.details.items() if name != "field"}
    return ValidationError("", error.message.removeprefix(prefix), details=details)


def _wire(item: Value) -> dict[str, object]:
    assert isinstance(item, dict)
    return item_to_wire(item)


class Items:
    """The single-item operations of one front end."""

    def __init__(self, coordinator: Coordinator, catalog: Catalog) -> None:
        self.coordinator = coordinator
        self.catalog = catalog

    async def _write(self, op: Op) -> Value:
        """Run ``op``; the item it replaced when asked, AWS's error when a condition failed."""
        try:
            reply = await self.coordinator.write(op)
        except ConditionFailed as error:
            raise condition_failed(error) from None
        except ValidationError as error:
            raise store_refusal(error) from None
        return reply.previous

    async def put(self, body: Body) -> dict[str, object]:
        schema = await self.catalog.schema(_table(body))
        item = item_from_wire(required_object(body, "Item"), field="Item")
        key, _ = schema.store_key(item, item=True)
        check_item_size(item)
        return await self._replace(body, schema, Op(kind=OpKind.PUT, key=key, value=item), PUT_ITEM)

    async def delete(self, body: Body) -> dict[str, object]:
        schema = await self.catalog.schema(_table(body))
        key, _ = _key(schema, body)
        return await self._replace(body, schema, Op(kind=OpKind.DELETE, key=key), DELETE_ITEM)

    async def _replace(
        self, body: Body, schema: TableSchema, op: Op, members: Members
    ) -> dict[str, object]:
        """A put or delete (``op``) with the request's condition and ``ReturnValues``."""
        returns = optional_enum(body, "ReturnValues", ("NONE", "ALL_OLD"), "NONE")
        exprs = RequestExpressions(body, members)
        condition = exprs.condition()
        exprs.finish()
        previous = await self._write(
            replace(
                op,
                condition=condition,
                return_item=_on_failure(body),
                return_previous=returns == "ALL_OLD",
            )
        )
        out = consumed(body, schema.name, 1.0)
        if returns == "ALL_OLD" and previous is not None:
            out["Attributes"] = _wire(previous)
        return out

    async def update(self, body: Body) -> dict[str, object]:
        schema = await self.catalog.schema(_table(body))
        key, key_item = _key(schema, body)
        returns = optional_enum(
            body,
            "ReturnValues",
            ("NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"),
            "NONE",
        )
        exprs = RequestExpressions(body, UPDATE_ITEM)
        update = exprs.update(key_item, schema.key_names)
        condition = exprs.condition()
        exprs.finish()
        if update is None:  # no update: the item is created with its key if absent
            update = exprs.empty_update(key_item)
        previous = await self._write(
            Op(
                kind=OpKind.UPDATE,
                key=key,
                condition=condition,
                expression=update,
                return_item=_on_failure(body),
                return_previous=returns != "NONE",
            )
        )
        out = consumed(body, schema.name, 1.0)
        if returns == "NONE":
            return out
        old: Item | None = previous if isinstance(previous, dict) else None
        if returns == "ALL_OLD":
            if old is not None:
                out["Attributes"] = item_to_wire(old)
            return out
        updated = Projection(update.tree.paths())
        if returns == "UPDATED_OLD":
            chosen = {} if old is None else project(old, updated)
        else:
            _, new = apply_expression_update(update, exists=old is not None, value=old)
            new = new or {}
            chosen = new if returns == "ALL_NEW" else project(new, updated)
        if chosen:
            out["Attributes"] = item_to_wire(chosen)
        return out

    async def get(self, body: Body) -> dict[str, object]:
        schema = await self.catalog.schema(_table(body))
        key, _ = _key(schema, body)
        exprs = RequestExpressions(body, GET_ITEM)
        projection = exprs.projection()
        exprs.finish()
        found = await self.coordinator.get(key)
        out = consumed(body, schema.name, 1.0)
        if found is not None and isinstance(found.value, dict):
            item: Item = found.value
            if projection is not None:
                item = project(item, projection)
            out["Item"] = item_to_wire(item)
        return out


def _table(body: Body) -> str:
    return table_name(body)


def _key(schema: TableSchema, body: Body) -> tuple[str, Item]:
    raw = required_object(body, "Key")
    return schema.store_key(item_from_wire(raw, field="Key"), item=False)


def _on_failure(body: Body) -> bool:
    chosen = optional_enum(body, "ReturnValuesOnConditionCheckFailure", RETURN_ON_FAILURE, "NONE")
    return chosen == "ALL_OLD"
