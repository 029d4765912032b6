"""``BatchGetItem`` and ``BatchWriteItem``: independent single-item reads and writes.

Theory of operation
-------------------
A batch is not atomic in DynamoDB and is not here: the whole request is validated first (limits,
keys, duplicates: AWS refuses the request as a whole), then each key is read with the store's
``get`` or written with one singleton put or delete, all at once (at most
``DYNAMODB_BATCH_GET_KEYS_MAX`` / ``DYNAMODB_BATCH_WRITE_ITEMS_MAX`` calls, so bounded). A key the
store could not serve right now (overload, a pending transaction, an unreachable or silent
partition) is returned in ``UnprocessedKeys`` / ``UnprocessedItems`` for the caller to send again
(boto3's batch writer does); a write whose outcome is unknown is among them too, since a put or
delete applied twice leaves the same item. When nothing at all could be processed because of
overload the answer is ``ProvisionedThroughputExceededException``, which the AWS SDKs retry with
backoff, as DynamoDB does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from kvstore.coordinator.engine import Coordinator
from kvstore.dynamodb.attributes import Item, check_item_size, item_from_wire, item_to_wire
from kvstore.dynamodb.evaluate import project
from kvstore.dynamodb.expressions import Projection
from kvstore.dynamodb.items import consumed_per_table, store_refusal
from kvstore.dynamodb.request_exprs import BATCH_GET, RequestExpressions
from kvstore.dynamodb.requests import (
    Body,
    constraint,
    invalid,
    required_list,
    required_object,
)
from kvstore.dynamodb.tables import Catalog
from kvstore.errors import (
    KvError,
    OutcomeUnknown,
    Overloaded,
    TransactionConflict,
    Unavailable,
    ValidationError,
)
from kvstore.limits import DYNAMODB_BATCH_GET_KEYS_MAX, DYNAMODB_BATCH_WRITE_ITEMS_MAX
from kvstore.ops import Op, OpKind

__all__ = ["Batches"]

_DEFERRED: Final = (Overloaded, Unavailable, TransactionConflict, OutcomeUnknown)
_DUPLICATES: Final = "Provided list of item keys contains duplicates"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Get:
    table: str
    key: str
    wire_key: Mapping[str, object]
    projection: Projection | None


@dataclass(frozen=True, slots=True)
class _Write:
    table: str
    op: Op
    request: Mapping[str, object]  # the request entry, as given (for UnprocessedItems)


async def _settled(calls: list[Awaitable[_T]]) -> list[_T | KvError]:
    """Every call's result or its KvError (anything else propagates)."""

    async def one(call: Awaitable[_T]) -> _T | KvError:
        try:
            return await call
        except KvError as error:
            return error

    return list(await asyncio.gather(*(one(call) for call in calls)))


def _throttled() -> KvError:
    return Overloaded(
        "The level of configured provisioned throughput for the table was exceeded. Consider "
        "increasing your provisioning level with the UpdateTable API.",
        details={"aws_type": "ProvisionedThroughputExceededException"},
    )


class Batches:
    """BatchGetItem and BatchWriteItem of one front end."""

    def __init__(self, coordinator: Coordinator, catalog: Catalog) -> None:
        self.coordinator = coordinator
        self.catalog = catalog

    async def get(self, body: Body) -> dict[str, object]:
        request = required_object(body, "RequestItems")
        gets: list[_Get] = []
        per_table: dict[str, Mapping[str, object]] = {}
        for table, raw in request.items():
            if not isinstance(raw, Mapping):
                raise invalid("RequestItems values must be objects")
            schema = await self.catalog.schema(str(table))
            exprs = RequestExpressions(raw, BATCH_GET)
            projection = exprs.projection()
            exprs.finish()
            per_table[schema.name] = raw
            seen: set[str] = set()
            for wire_key in required_list(raw, "Keys"):
                if not isinstance(wire_key, Mapping):
                    raise invalid("Keys must be a list of objects")
                key, _ = schema.store_key(item_from_wire(wire_key, field="Key"), item=False)
                if key in seen:
                    raise invalid(_DUPLICATES)
                seen.add(key)
                gets.append(_Get(schema.name, key, wire_key, projection))
        if not gets:
            raise constraint(
                "requestItems", None, "Member must have length greater than or equal to 1"
            )
        if len(gets) > DYNAMODB_BATCH_GET_KEYS_MAX:
            raise invalid("Too many items requested for the BatchGetItem call")
        results = await _settled([self.coordinator.get(get.key) for get in gets])
        responses: dict[str, list[dict[str, object]]] = {table: [] for table in per_table}
        unprocessed: dict[str, list[Mapping[str, object]]] = {}
        throttled = 0
        for get, result in zip(gets, results, strict=True):
            if isinstance(result, KvError):
                if not isinstance(result, _DEFERRED):
                    raise result
                throttled += isinstance(result, Overloaded)
                unprocessed.setdefault(get.table, []).append(get.wire_key)
                continue
            if result is not None and isinstance(result.value, dict):
                item: Item = result.value
                if get.projection is not None:
                    item = project(item, get.projection)
                responses[get.table].append(item_to_wire(item))
        if throttled == len(gets):
            raise _throttled()
        out: dict[str, object] = {
            "Responses": responses,
            "UnprocessedKeys": {
                table: {**per_table[table], "Keys": keys} for table, keys in unprocessed.items()
            },
        }
        units = {table: float(len(items)) for table, items in responses.items()}
        out.update(consumed_per_table(body, units))
        return out

    async def write(self, body: Body) -> dict[str, object]:
        request = required_object(body, "RequestItems")
        writes: list[_Write] = []
        for table, raw in request.items():
            if not isinstance(raw, list):
                raise invalid("RequestItems values must be lists of write requests")
            schema = await self.catalog.schema(str(table))
            seen: set[str] = set()
            for entry in raw:
                if not isinstance(entry, Mapping) or len(entry) != 1:
                    raise invalid(
                        "Each write request holds exactly one of PutRequest or DeleteRequest"
                    )
                if "PutRequest" in entry:
                    put = required_object(entry, "PutRequest")
                    item = item_from_wire(required_object(put, "Item"), field="Item")
                    key, _ = schema.store_key(item, item=True)
                    check_item_size(item)
                    op = Op(kind=OpKind.PUT, key=key, value=item)
                elif "DeleteRequest" in entry:
                    delete = required_object(entry, "DeleteRequest")
                    raw_key = item_from_wire(required_object(delete, "Key"), field="Key")
                    key, _ = schema.store_key(raw_key, item=False)
                    op = Op(kind=OpKind.DELETE, key=key)
                else:
                    raise invalid(
                        "Each write request holds exactly one of PutRequest or DeleteRequest"
                    )
                if key in seen:
                    raise invalid(_DUPLICATES)
                seen.add(key)
                writes.append(_Write(schema.name, op, entry))
        if not writes:
            raise constraint(
                "requestItems", None, "Member must have length greater than or equal to 1"
            )
        if len(writes) > DYNAMODB_BATCH_WRITE_ITEMS_MAX:
            raise constraint(
                "requestItems",
                f"[{len(writes)} items]",
                f"Member must have length less than or equal to {DYNAMODB_BATCH_WRITE_ITEMS_MAX}",
            )
        results = await _settled([self.coordinator.write(write.op) for write in writes])
        unprocessed: dict[str, list[Mapping[str, object]]] = {}
        units: dict[str, float] = {}
        throttled = 0
        for write, result in zip(writes, results, strict=True):
            if isinstance(result, KvError):
                if isinstance(result, ValidationError):
                    raise store_refusal(result)
                if not isinstance(result, _DEFERRED):
                    raise result
                throttled += isinstance(result, Overloaded)
                unprocessed.setdefault(write.table, []).append(write.request)
                continue
            units[write.table] = units.get(write.table, 0.0) + 1.0
        if throttled == len(writes):
            raise _throttled()
        out: dict[str, object] = {"UnprocessedItems": unprocessed}
        out.update(consumed_per_table(body, units))
        return out
