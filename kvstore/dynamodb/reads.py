"""``Query`` and ``Scan``: pages of a table's items, read from the store in key order.

Theory of operation
-------------------
A ``Query`` names one hash key; all its items live in one partition, in sort-key order
(:mod:`kvstore.dynamodb.keys`), so the key condition becomes one key range of one partition and
the page is read from it forwards or (``ScanIndexForward=false``) backwards. A ``Scan`` walks the
table's key range (or a ``Segment``'s slice of it: a slice of the hash digest space, independent
of the partition count) partition by partition, in partition order; within a partition, in key
order. Either way an item's store key alone says where the walk stands, so
``ExclusiveStartKey`` (the key attributes of the last item evaluated, as DynamoDB defines it)
resumes it: its store key names the partition and the position inside it.

A page evaluates items until ``Limit`` items or ``DYNAMODB_PAGE_BYTES_MAX`` bytes (AWS's item
size; both counted before the filter, as DynamoDB does), asking the store for at most
``DYNAMODB_PAGE_CALL_ITEMS`` items or ``DYNAMODB_PAGE_CALL_BYTES_MAX`` bytes per call and making
at most ``DYNAMODB_PAGE_CALLS_MAX`` calls; when it stops with items possibly left, it answers
``LastEvaluatedKey``. A Scan that runs out of calls before evaluating any item stops at a
partition boundary, which has no item key to resume from; it goes on instead (at most one call
per empty partition, a bounded number).

Like DynamoDB's, a page is not a snapshot: each store call reads committed items at its own
instant (intents are invisible). ``FilterExpression`` and ``ProjectionExpression`` apply here,
to the items read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from kvstore.coordinator.engine import Coordinator
from kvstore.dynamodb import keys as ddb_keys
from kvstore.dynamodb.attributes import (
    Item,
    item_from_wire,
    item_size,
    item_to_wire,
    payload,
)
from kvstore.dynamodb.evaluate import condition_holds, project
from kvstore.dynamodb.expressions import Condition, KeyCondition, Projection
from kvstore.dynamodb.items import consumed
from kvstore.dynamodb.request_exprs import QUERY, SCAN, RequestExpressions
from kvstore.dynamodb.requests import (
    Body,
    invalid,
    optional_bool,
    optional_enum,
    optional_int,
    optional_object,
    table_name,
)
from kvstore.dynamodb.tables import Catalog, TableSchema, sort_bytes
from kvstore.errors import ValidationError
from kvstore.limits import (
    DYNAMODB_PAGE_BYTES_MAX,
    DYNAMODB_PAGE_CALL_BYTES_MAX,
    DYNAMODB_PAGE_CALL_ITEMS,
    DYNAMODB_PAGE_CALLS_MAX,
    DYNAMODB_SEGMENTS_MAX,
)
from kvstore.messages import ItemView
from kvstore.types import PartitionId

__all__ = ["Reads"]

_SELECT: Final = ("ALL_ATTRIBUTES", "ALL_PROJECTED_ATTRIBUTES", "SPECIFIC_ATTRIBUTES", "COUNT")
_LIMIT_MAX: Final = (1 << 31) - 1
_BEGINS_WITH: Final = "begins_with"


@dataclass(slots=True)
class _Page:
    """What one page has evaluated so far."""

    limit: int | None
    filter: Condition | None
    matched: list[Item] = field(default_factory=list)
    evaluated: int = 0
    bytes: int = 0
    last: Item | None = None

    def take(self, views: tuple[ItemView, ...]) -> int:
        """Evaluate ``views`` in order; how many were taken (fewer when the page is full)."""
        for index, view in enumerate(views):
            item = view.value
            if not isinstance(item, dict):
                continue
            self.evaluated += 1
            self.bytes += item_size(item)
            self.last = item
            if self.filter is None or condition_holds(self.filter, item):
                self.matched.append(item)
            if self.full:
                return index + 1
        return len(views)

    @property
    def full(self) -> bool:
        reached = self.limit is not None and self.evaluated >= self.limit
        return reached or self.bytes >= DYNAMODB_PAGE_BYTES_MAX

    def want(self) -> int:
        if self.limit is None:
            return DYNAMODB_PAGE_CALL_ITEMS
        return max(1, min(DYNAMODB_PAGE_CALL_ITEMS, self.limit - self.evaluated))


class Reads:
    """Query and Scan of one front end."""

    def __init__(self, coordinator: Coordinator, catalog: Catalog) -> None:
        self.coordinator = coordinator
        self.catalog = catalog

    async def query(self, body: Body) -> dict[str, object]:
        schema = await self.catalog.schema(table_name(body))
        _no_index(body)
        exprs = RequestExpressions(body, QUERY)
        range_name = None if schema.range_key is None else schema.range_key.name
        condition = exprs.key_condition(schema.hash_key.name, range_name)
        if condition is None:
            raise invalid(
                "Either the KeyConditions or KeyConditionExpression parameter must be specified "
                "in the request."
            )
        page = _Page(optional_int(body, "Limit", 1, _LIMIT_MAX), exprs.filter())
        projection = exprs.projection()
        exprs.finish()
        select = _select(body, projection, exprs.projection_member)
        forward = optional_bool(body, "ScanIndexForward", True)
        bounds = _query_range(schema, condition)
        start, end = bounds.start, bounds.end
        resume = _start_key(schema, body)
        if resume is not None:
            if not bounds.start <= resume < bounds.end:
                raise invalid(
                    "The provided starting key is outside query boundaries based on provided "
                    "conditions"
                )
            if forward:
                start = resume + "\x00"
            else:
                end = resume
        partition = self.coordinator.partition_of(bounds.start)
        more = False
        for _ in range(DYNAMODB_PAGE_CALLS_MAX):
            reply = await self.coordinator.partition_page(
                partition,
                start=start,
                end=end,
                limit=page.want(),
                reverse=not forward,
                bytes_max=DYNAMODB_PAGE_CALL_BYTES_MAX,
            )
            taken = page.take(reply.items)
            more = taken < len(reply.items) or reply.next_start is not None
            if page.full or reply.next_start is None:
                break
            if forward:
                start = reply.next_start
            else:
                end = reply.next_start
        return _answer(
            body, schema=schema, page=page, projection=projection, select=select, more=more
        )

    async def scan(self, body: Body) -> dict[str, object]:
        schema = await self.catalog.schema(table_name(body))
        _no_index(body)
        exprs = RequestExpressions(body, SCAN)
        page = _Page(optional_int(body, "Limit", 1, _LIMIT_MAX), exprs.filter())
        projection = exprs.projection()
        exprs.finish()
        select = _select(body, projection, exprs.projection_member)
        bounds = _segment(schema, body)
        resume = _start_key(schema, body)
        count = self.coordinator.cluster_map.partitions.partition_count
        partition, start = 0, bounds.start
        if resume is not None:
            if not bounds.start <= resume < bounds.end:
                raise invalid("The provided starting key is invalid: not in this scan's segment")
            partition, start = self.coordinator.partition_of(resume), resume + "\x00"
        more = False
        calls = 0
        while partition < count:
            reply = await self.coordinator.partition_page(
                PartitionId(partition),
                start=start,
                end=bounds.end,
                limit=page.want(),
                bytes_max=DYNAMODB_PAGE_CALL_BYTES_MAX,
            )
            calls += 1
            taken = page.take(reply.items)
            if page.full:
                left_here = taken < len(reply.items) or reply.next_start is not None
                more = left_here or partition + 1 < count
                break
            if reply.next_start is not None:
                start = reply.next_start
            else:
                partition, start = partition + 1, bounds.start
            more = partition < count
            if calls >= DYNAMODB_PAGE_CALLS_MAX and page.last is not None:
                break
        return _answer(
            body,
            schema=schema,
            page=page,
            projection=projection,
            select=select,
            more=more and page.last is not None,
        )


def _no_index(body: Body) -> None:
    index = body.get("IndexName")
    if index is not None:
        raise invalid(f"The table does not have the specified index: {index}")


def _select(body: Body, projection: Projection | None, member: str) -> str:
    """``Select``, checked against the projection (``member`` names where it came from)."""
    default = "SPECIFIC_ATTRIBUTES" if projection is not None else "ALL_ATTRIBUTES"
    select = optional_enum(body, "Select", _SELECT, default)
    if select == "ALL_PROJECTED_ATTRIBUTES":
        raise invalid("ALL_PROJECTED_ATTRIBUTES can be used only when Querying using an IndexName")
    if select == "SPECIFIC_ATTRIBUTES" and projection is None:
        raise invalid("SPECIFIC_ATTRIBUTES requires a ProjectionExpression or AttributesToGet")
    if select in ("ALL_ATTRIBUTES", "COUNT") and projection is not None:
        raise invalid(f"Cannot specify the {member} when choosing to get ALL_ATTRIBUTES or COUNT")
    return select


def _start_key(schema: TableSchema, body: Body) -> str | None:
    raw = optional_object(body, "ExclusiveStartKey")
    if raw is None:
        return None
    try:
        key, _ = schema.store_key(item_from_wire(raw, field="ExclusiveStartKey"), item=False)
    except ValidationError as error:  # a malformed start key gets DynamoDB's one message
        raise invalid("The provided starting key is invalid: " + error.message) from None
    return key


def _segment(schema: TableSchema, body: Body) -> ddb_keys.KeyRange:
    segment = optional_int(body, "Segment", 0, DYNAMODB_SEGMENTS_MAX - 1)
    total = optional_int(body, "TotalSegments", 1, DYNAMODB_SEGMENTS_MAX)
    if segment is None and total is None:
        return ddb_keys.table_range(schema.table_id)
    if segment is None or total is None:
        raise invalid(
            "The TotalSegments parameter is required but was not present in the request when "
            "Segment parameter is present"
            if total is None
            else "The Segment parameter is required but was not present in the request when "
            "parameter TotalSegments is present"
        )
    if segment >= total:
        raise invalid(
            f"The Segment parameter is zero-based and must be less than parameter TotalSegments: "
            f"Segment: {segment} is not less than TotalSegments: {total}"
        )
    return ddb_keys.digest_slice(schema.table_id, segment, total)


def _query_range(schema: TableSchema, condition: KeyCondition) -> ddb_keys.KeyRange:
    """The store keys a key condition covers (one hash key's range)."""
    hash_name, hash_value = condition.hash_name, condition.hash_value
    if hash_name != schema.hash_key.name:
        raise invalid(f"Query condition missed key schema element: {schema.hash_key.name}")
    if payload(hash_value)[0] != schema.hash_key.type:
        raise invalid(
            "One or more parameter values were invalid: Condition parameter type does not match "
            "schema type"
        )
    digest = schema.hash_digest(hash_value)
    sort = condition.range
    if sort is None:
        return ddb_keys.hash_range(schema.table_id, digest)
    range_key = schema.range_key
    if range_key is None or sort.name != range_key.name:
        raise invalid("Query key condition not supported")
    texts: list[str] = []
    for value in sort.values:
        kind = payload(value)[0]
        if kind != range_key.type:
            raise invalid(
                "One or more parameter values were invalid: Condition parameter type does not "
                "match schema type"
            )
        texts.append(ddb_keys.sort_text(sort_bytes(kind, value)))
    if sort.operator == _BEGINS_WITH and range_key.type == "N":
        raise invalid(
            "Invalid KeyConditionExpression: Incorrect operand type for operator or function; "
            "operator or function: begins_with, operand type: N"
        )
    low = texts[0]
    high = texts[1] if len(texts) > 1 else ""
    return ddb_keys.sort_range(schema.table_id, digest, sort.operator, low, high)


def _answer(
    body: Body,
    *,
    schema: TableSchema,
    page: _Page,
    projection: Projection | None,
    select: str,
    more: bool,
) -> dict[str, object]:
    out: dict[str, object] = {"Count": len(page.matched), "ScannedCount": page.evaluated}
    if select != "COUNT":
        out["Items"] = [
            item_to_wire(item if projection is None else project(item, projection))
            for item in page.matched
        ]
    if more and page.last is not None:
        out["LastEvaluatedKey"] = item_to_wire(
            {name: page.last[name] for name in schema.key_names if name in page.last}
        )
    out.update(consumed(body, schema.name, max(1.0, page.bytes / 4096)))
    return out
