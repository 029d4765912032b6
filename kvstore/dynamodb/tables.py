"""Tables: the catalogue stored in the store itself, and the schema cache of a front end.

Theory of operation
-------------------
A table's record lives at :func:`~kvstore.dynamodb.keys.catalog_key` (one partition holds them
all, in name order). It is written by the store's own singleton writes, with conditions, so the
catalogue is transactional: ``CreateTable`` is a put *if absent* (a present record is
``ResourceInUseException``) and ``DeleteTable`` an update of an existing record to ``DELETING``.

The record names the table's random id (:mod:`kvstore.dynamodb.keys`: the prefix of its items),
its key schema and attribute definitions, its billing mode and capacity (accepted and reported,
never enforced) and its creation time. The reply to ``CreateTable`` says ``CREATING``, as
DynamoDB's does; the record is durable when the reply is sent, so every later
``DescribeTable`` says ``ACTIVE`` (boto3's ``table_exists`` waiter returns at its first call).

Every front end caches the schemas it found for ``DYNAMODB_SCHEMA_CACHE_MS`` (at most
``DYNAMODB_SCHEMA_CACHE_TABLES_MAX`` of them; an absent table is looked up every time). A
deleted table's record says ``DELETING`` until its items are purged: item operations on it fail
with ``ResourceNotFoundException`` at once (after at most a cache lifetime on other front ends),
``DescribeTable`` and ``ListTables`` show it ``DELETING``, and ``CreateTable`` of its name is
``ResourceInUseException``. Once ``DYNAMODB_TABLE_DELETE_GRACE_MS`` has passed (more than a
cache lifetime plus the clock skew, so no front end can still be writing into it)
:mod:`kvstore.dynamodb.janitor` deletes its items and then the record (:meth:`Catalog.purgeable`,
:meth:`Catalog.forget`); the name is free again.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from kvstore.conditions import Exists, VersionEquals
from kvstore.coordinator.engine import Coordinator
from kvstore.dynamodb import keys as ddb_keys
from kvstore.dynamodb.attributes import Item, number_value, payload
from kvstore.dynamodb.requests import (
    Body,
    constraint,
    invalid,
    optional_enum,
    optional_int,
    optional_object,
    optional_str,
    required_list,
    required_str,
    table_name,
)
from kvstore.errors import ConditionFailed, NotFound, ValidationError
from kvstore.limits import (
    DYNAMODB_CATALOG_PAGES_MAX,
    DYNAMODB_HASH_KEY_BYTES_MAX,
    DYNAMODB_LIST_TABLES_MAX,
    DYNAMODB_SCHEMA_CACHE_MS,
    DYNAMODB_SCHEMA_CACHE_TABLES_MAX,
    DYNAMODB_SORT_KEY_BYTES_MAX,
    DYNAMODB_TABLE_DELETE_GRACE_MS,
)
from kvstore.ops import Op, OpKind
from kvstore.types import Value

__all__ = ["KeyAttribute", "TableSchema", "Catalog", "not_found", "sort_bytes", "ARN_PREFIX"]

ARN_PREFIX: Final = "arn:aws:dynamodb:kvstore:000000000000:table/"
_KEY_TYPES: Final = ("S", "N", "B")
_BILLING: Final = ("PROVISIONED", "PAY_PER_REQUEST")
_MS_PER_S: Final = 1000
_UNSUPPORTED: Final = {
    "GlobalSecondaryIndexes": "Global secondary indexes are not supported by this endpoint",
    "LocalSecondaryIndexes": "Local secondary indexes are not supported by this endpoint",
}


@dataclass(frozen=True, slots=True)
class KeyAttribute:
    name: str
    type: str  # S, N or B


@dataclass(frozen=True, slots=True)
class TableSchema:
    """One table's record."""

    name: str
    table_id: str
    hash_key: KeyAttribute
    range_key: KeyAttribute | None
    attributes: tuple[KeyAttribute, ...]
    billing: str
    read_units: int
    write_units: int
    created_s: float
    deleting_since_s: float | None = None

    @property
    def key_names(self) -> tuple[str, ...]:
        if self.range_key is None:
            return (self.hash_key.name,)
        return (self.hash_key.name, self.range_key.name)

    def store_key(self, attributes: Mapping[str, Value], *, item: bool) -> tuple[str, Item]:
        """The store key of the item with these key attributes, and the key attributes alone.
        ``item``: ``attributes`` is a whole item (extra attributes are fine); otherwise it is a
        ``Key`` parameter, which must hold exactly the key attributes."""
        if not item and set(attributes) != set(self.key_names):
            raise invalid("The provided key element does not match the schema")
        key: Item = {}
        parts: list[bytes] = []
        for attribute in (self.hash_key, self.range_key):
            if attribute is None:
                continue
            value = attributes.get(attribute.name)
            if value is None:
                if item:
                    raise invalid(
                        "One or more parameter values were invalid: Missing the key "
                        f"{attribute.name} in the item"
                    )
                raise invalid("The provided key element does not match the schema")
            kind, body = payload(value)
            if kind != attribute.type:
                raise invalid(
                    "One or more parameter values were invalid: Type mismatch for key "
                    f"{attribute.name} expected: {attribute.type} actual: {kind}"
                )
            parts.append(_key_bytes(kind, body, attribute))
            if attribute is self.hash_key:
                check_hash_size(parts[0])
            key[attribute.name] = value
        digest = ddb_keys.hash_digest(self.hash_key.type, parts[0])
        sort = ""
        if self.range_key is not None:
            sort = ddb_keys.sort_text(sort_bytes(self.range_key.type, key[self.range_key.name]))
        return ddb_keys.item_key(self.table_id, digest, sort), key

    def hash_digest(self, value: Value) -> str:
        """The digest of a hash key value (already of the key's type)."""
        kind, body = payload(value)
        return ddb_keys.hash_digest(kind, _key_bytes(kind, body, self.hash_key))

    def to_value(self) -> Value:
        return {
            "name": self.name,
            "id": self.table_id,
            "hash": [self.hash_key.name, self.hash_key.type],
            "range": None if self.range_key is None else [self.range_key.name, self.range_key.type],
            "attributes": [[a.name, a.type] for a in self.attributes],
            "billing": self.billing,
            "read_units": self.read_units,
            "write_units": self.write_units,
            "created_s": self.created_s,
            "deleting_since_s": self.deleting_since_s,
        }

    @staticmethod
    def from_value(raw: Value) -> TableSchema:
        if not isinstance(raw, dict):
            raise ValidationError("", "Malformed table record")
        try:
            hash_raw, range_raw = raw["hash"], raw["range"]
            attributes_raw, deleting = raw["attributes"], raw.get("deleting_since_s")
            assert isinstance(hash_raw, list) and isinstance(attributes_raw, list)
            range_key = None
            if range_raw is not None:
                assert isinstance(range_raw, list)
                range_key = KeyAttribute(str(range_raw[0]), str(range_raw[1]))
            attributes = []
            for attribute in attributes_raw:
                assert isinstance(attribute, list)
                attributes.append(KeyAttribute(str(attribute[0]), str(attribute[1])))
            return TableSchema(
                name=str(raw["name"]),
                table_id=str(raw["id"]),
                hash_key=KeyAttribute(str(hash_raw[0]), str(hash_raw[1])),
                range_key=range_key,
                attributes=tuple(attributes),
                billing=str(raw["billing"]),
                read_units=_int(raw["read_units"]),
                write_units=_int(raw["write_units"]),
                created_s=_float(raw["created_s"]),
                deleting_since_s=None if deleting is None else _float(deleting),
            )
        except (KeyError, TypeError, ValueError, IndexError, AssertionError):
            raise ValidationError("", "Malformed table record") from None

    def description(self, *, status: str | None = None) -> dict[str, object]:
        """The ``TableDescription`` DynamoDB answers with."""
        key_schema = [{"AttributeName": self.hash_key.name, "KeyType": "HASH"}]
        if self.range_key is not None:
            key_schema.append({"AttributeName": self.range_key.name, "KeyType": "RANGE"})
        shown = status or ("DELETING" if self.deleting_since_s is not None else "ACTIVE")
        out: dict[str, object] = {
            "TableName": self.name,
            "TableStatus": shown,
            "KeySchema": key_schema,
            "AttributeDefinitions": [
                {"AttributeName": a.name, "AttributeType": a.type} for a in self.attributes
            ],
            "CreationDateTime": self.created_s,
            "ProvisionedThroughput": {
                "NumberOfDecreasesToday": 0,
                "ReadCapacityUnits": self.read_units,
                "WriteCapacityUnits": self.write_units,
            },
            "TableSizeBytes": 0,
            "ItemCount": 0,
            "TableArn": ARN_PREFIX + self.name,
            "TableId": self.table_id,
            "DeletionProtectionEnabled": False,
        }
        if self.billing == "PAY_PER_REQUEST":
            out["BillingModeSummary"] = {
                "BillingMode": "PAY_PER_REQUEST",
                "LastUpdateToPayPerRequestDateTime": self.created_s,
            }
        return out


def _int(raw: Value) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError("not an integer")
    return raw


def _float(raw: Value) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError("not a number")
    return float(raw)


def _key_bytes(kind: str, body: Value, attribute: KeyAttribute) -> bytes:
    """A key value's bytes (S: UTF-8, N: normalised text, B: itself), its size checked."""
    if kind == "B":
        assert isinstance(body, bytes)
        raw = body
    else:
        assert isinstance(body, str)
        raw = body.encode("utf-8", "surrogatepass")
    if not raw:
        what = "binary" if kind == "B" else "string"
        raise invalid(
            "One or more parameter values are not valid. The AttributeValue for a key attribute "
            f"cannot contain an empty {what} value. Key: {attribute.name}"
        )
    return raw


def sort_bytes(kind: str, value: Value) -> bytes:
    """The order-preserving bytes of a sort key value (size-checked, AWS's wording)."""
    body = payload(value)[1]
    if kind == "N":
        assert isinstance(body, str)
        size = len(body)
        raw = ddb_keys.number_order_bytes(number_value(body))
    elif kind == "B":
        assert isinstance(body, bytes)
        raw = body
        size = len(raw)
    else:
        assert isinstance(body, str)
        raw = body.encode("utf-8", "surrogatepass")
        size = len(raw)
    if size > DYNAMODB_SORT_KEY_BYTES_MAX:
        raise invalid(
            "One or more parameter values were invalid: Aggregated size of all range keys has "
            f"exceeded the size limit of {DYNAMODB_SORT_KEY_BYTES_MAX} bytes"
        )
    return raw


def check_hash_size(raw: bytes) -> None:
    if len(raw) > DYNAMODB_HASH_KEY_BYTES_MAX:
        raise invalid(
            "One or more parameter values were invalid: Size of hashkey has exceeded the "
            f"maximum size limit of{DYNAMODB_HASH_KEY_BYTES_MAX} bytes"
        )


def not_found(name: str) -> NotFound:
    return NotFound(
        f"Requested resource not found: Table: {name} not found",
        details={"aws_type": "ResourceNotFoundException"},
    )


def _in_use(name: str) -> ConditionFailed:
    return ConditionFailed(
        f"Table already exists: {name}", details={"aws_type": "ResourceInUseException"}
    )


def _key_schema(body: Body) -> tuple[KeyAttribute, KeyAttribute | None]:
    """(hash, range) names from KeySchema, types from AttributeDefinitions (exactly those)."""
    schema = required_list(body, "KeySchema")
    definitions = required_list(body, "AttributeDefinitions")
    types: dict[str, str] = {}
    for raw in definitions:
        if not isinstance(raw, Mapping):
            raise invalid("AttributeDefinitions must be a list of objects")
        name = required_str(raw, "AttributeName")
        kind = required_str(raw, "AttributeType")
        if kind not in _KEY_TYPES:
            raise constraint(
                "attributeDefinitions.member.attributeType",
                kind,
                "Member must satisfy enum value set: [B, N, S]",
            )
        if name in types:
            raise invalid(
                f"One or more parameter values were invalid: Duplicate AttributeName: {name}"
            )
        types[name] = kind
    roles: dict[str, str] = {}
    for raw in schema:
        if not isinstance(raw, Mapping):
            raise invalid("KeySchema must be a list of objects")
        name = required_str(raw, "AttributeName")
        role = optional_enum(raw, "KeyType", ("HASH", "RANGE"), "")
        if not role:
            raise constraint("keySchema.member.keyType", None, "Member must not be null")
        if name in roles:
            raise invalid("Invalid KeySchema: Some index key attribute have no definition")
        roles[name] = role
    hashes = [n for n, r in roles.items() if r == "HASH"]
    ranges = [n for n, r in roles.items() if r == "RANGE"]
    if len(schema) not in (1, 2) or len(hashes) != 1 or len(ranges) > 1:
        raise invalid(
            "1 validation error detected: Value at 'keySchema' failed to satisfy constraint: "
            "Member must have length less than or equal to 2 and contain one HASH key"
        )
    if set(roles) != set(types):
        if not set(roles) <= set(types):
            raise invalid(
                "One or more parameter values were invalid: Some index key attributes are not "
                "defined in AttributeDefinitions. Keys: "
                f"[{', '.join(sorted(set(roles) - set(types)))}], AttributeDefinitions: "
                f"[{', '.join(sorted(types))}]"
            )
        raise invalid(
            "One or more parameter values were invalid: Number of attributes in KeySchema does "
            "not exactly match number of attributes defined in AttributeDefinitions"
        )
    if isinstance(schema[0], Mapping) and schema[0].get("KeyType") != "HASH":
        raise invalid("Invalid KeySchema: The first KeySchemaElement is not a HASH key type")
    for name in roles:
        if not 1 <= len(name.encode("utf-8", "surrogatepass")) <= 255:
            raise invalid("Invalid KeySchema: key attribute names are 1..255 bytes")
    range_key = KeyAttribute(ranges[0], types[ranges[0]]) if ranges else None
    return KeyAttribute(hashes[0], types[hashes[0]]), range_key


def _capacity(body: Body) -> tuple[str, int, int]:
    billing = optional_enum(body, "BillingMode", _BILLING, "PROVISIONED")
    throughput = optional_object(body, "ProvisionedThroughput")
    if billing == "PAY_PER_REQUEST":
        if throughput is not None:
            raise invalid(
                "One or more parameter values were invalid: Neither ReadCapacityUnits nor "
                "WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST"
            )
        return billing, 0, 0
    if throughput is None:
        raise invalid(
            "One or more parameter values were invalid: ReadCapacityUnits and "
            "WriteCapacityUnits must both be specified when BillingMode is PROVISIONED"
        )
    read = optional_int(throughput, "ReadCapacityUnits", 1, 1 << 62)
    write = optional_int(throughput, "WriteCapacityUnits", 1, 1 << 62)
    if read is None or write is None:
        raise invalid(
            "One or more parameter values were invalid: ReadCapacityUnits and "
            "WriteCapacityUnits must both be specified when BillingMode is PROVISIONED"
        )
    return billing, read, write


class Catalog:
    """The catalogue operations and the schema cache of one front end."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        wall_s: Callable[[], float] = time.time,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self._wall_s = wall_s
        self._monotonic_s = monotonic_s
        self._cache: dict[str, tuple[float, TableSchema]] = {}

    # --- schemas of item operations ------------------------------------------------------

    async def schema(self, name: str) -> TableSchema:
        """The active table ``name`` (cached when found), else ``ResourceNotFoundException``.
        An absent table is never cached: one created through another front end is usable
        here as soon as its ``CreateTable`` answered."""
        now = self._monotonic_s()
        cached = self._cache.get(name)
        if cached is None or now - cached[0] > DYNAMODB_SCHEMA_CACHE_MS / _MS_PER_S:
            found = await self._record(name)
            if found is None:
                self._cache.pop(name, None)
                raise not_found(name)
            if len(self._cache) >= DYNAMODB_SCHEMA_CACHE_TABLES_MAX:
                self._cache.clear()  # bounded: rebuilt on demand
            cached = (now, found[0])
            self._cache[name] = cached
        schema = cached[1]
        if schema.deleting_since_s is not None:
            raise not_found(name)
        return schema

    async def _rewrite(self, schema: TableSchema, version: int) -> None:
        """Replace the record read at ``version`` (``ResourceNotFoundException`` when the table
        was deleted or re-created meanwhile)."""
        try:
            await self.coordinator.write(
                Op(
                    kind=OpKind.PUT,
                    key=ddb_keys.catalog_key(schema.name),
                    value=schema.to_value(),
                    condition=VersionEquals(version),
                )
            )
        except ConditionFailed:
            raise not_found(schema.name) from None
        self._cache.pop(schema.name, None)

    async def _record(self, name: str) -> tuple[TableSchema, int] | None:
        item = await self.coordinator.get(ddb_keys.catalog_key(name))
        if item is None:
            return None
        return TableSchema.from_value(item.value), item.version

    async def _records(
        self, after: str | None, limit: int
    ) -> tuple[list[tuple[TableSchema, int]], bool]:
        """Up to ``limit`` table records in name order after ``after``; whether more follow."""
        start = ddb_keys.CATALOG_PREFIX + (after + "\x00" if after else "")
        page = await self.coordinator.partition_page(
            self.coordinator.partition_of(ddb_keys.CATALOG_PREFIX),
            start=start,
            end=ddb_keys.CATALOG_PREFIX[:-1] + "\x02",
            limit=limit,
        )
        found = [(TableSchema.from_value(item.value), item.version) for item in page.items]
        return found, page.next_start is not None

    async def purgeable(self, limit: int) -> list[tuple[TableSchema, int]]:
        """Deleted tables whose grace is over (no front end can still write into them): their
        items may be purged, then their records forgotten (:mod:`kvstore.dynamodb.janitor`)."""
        now_s = self._wall_s()
        grace_s = DYNAMODB_TABLE_DELETE_GRACE_MS / _MS_PER_S
        out: list[tuple[TableSchema, int]] = []
        after: str | None = None
        for _ in range(DYNAMODB_CATALOG_PAGES_MAX):
            records, more = await self._records(after, DYNAMODB_LIST_TABLES_MAX)
            for schema, version in records:
                since = schema.deleting_since_s
                if since is not None and now_s - since > grace_s and len(out) < limit:
                    out.append((schema, version))
            if not more or not records or len(out) >= limit:
                break
            after = records[-1][0].name
        return out

    async def forget(self, schema: TableSchema, version: int) -> None:
        """Remove a purged table's record (the name is free again)."""
        with contextlib.suppress(ConditionFailed):  # another front end forgot it first
            await self.coordinator.write(
                Op(
                    kind=OpKind.DELETE,
                    key=ddb_keys.catalog_key(schema.name),
                    condition=VersionEquals(version),
                )
            )

    # --- operations -----------------------------------------------------------------------

    async def create(self, body: Body) -> dict[str, object]:
        name = table_name(body)
        for member, message in _UNSUPPORTED.items():
            if body.get(member):
                raise invalid(message)
        stream = optional_object(body, "StreamSpecification")
        if stream is not None and stream.get("StreamEnabled"):
            raise invalid("Streams are not supported by this endpoint")
        hash_key, range_key = _key_schema(body)
        billing, read_units, write_units = _capacity(body)
        attributes = (hash_key,) if range_key is None else (hash_key, range_key)
        schema = TableSchema(
            name=name,
            table_id=secrets.token_hex(8),
            hash_key=hash_key,
            range_key=range_key,
            attributes=attributes,
            billing=billing,
            read_units=read_units,
            write_units=write_units,
            created_s=round(self._wall_s(), 3),
        )
        key = ddb_keys.catalog_key(name)
        try:
            await self.coordinator.write(
                Op(kind=OpKind.PUT, key=key, value=schema.to_value(), condition=Exists(False))
            )
        except ConditionFailed:
            raise _in_use(name) from None
        self._cache.pop(name, None)
        return {"TableDescription": schema.description(status="CREATING")}

    async def describe(self, body: Body) -> dict[str, object]:
        name = table_name(body)
        found = await self._record(name)
        if found is None:
            raise not_found(name)
        return {"Table": found[0].description()}

    async def delete(self, body: Body) -> dict[str, object]:
        name = table_name(body)
        found = await self._record(name)
        if found is None or found[0].deleting_since_s is not None:
            raise not_found(name)
        schema, version = found
        deleting = replace(schema, deleting_since_s=self._wall_s())
        await self._rewrite(deleting, version)
        return {"TableDescription": deleting.description(status="DELETING")}

    async def update(self, body: Body) -> dict[str, object]:
        """``UpdateTable``: billing mode and capacity only (accepted, not enforced)."""
        name = table_name(body)
        for member, message in _UNSUPPORTED.items():
            if body.get(member.replace("Indexes", "IndexUpdates")):
                raise invalid(message)
        found = await self._record(name)
        if found is None or found[0].deleting_since_s is not None:
            raise not_found(name)
        schema, version = found
        updated = schema
        if body.get("BillingMode") is not None or body.get("ProvisionedThroughput") is not None:
            merged = dict(body)
            if merged.get("BillingMode") is None:
                merged["BillingMode"] = schema.billing
            billing, read_units, write_units = _capacity(merged)
            updated = replace(
                schema, billing=billing, read_units=read_units, write_units=write_units
            )
        await self._rewrite(updated, version)
        return {"TableDescription": updated.description()}

    async def list_names(self, body: Body) -> dict[str, object]:
        limit = optional_int(body, "Limit", 1, DYNAMODB_LIST_TABLES_MAX) or (
            DYNAMODB_LIST_TABLES_MAX
        )
        after = optional_str(body, "ExclusiveStartTableName")
        names: list[str] = []
        for _ in range(DYNAMODB_CATALOG_PAGES_MAX):
            records, more = await self._records(after, limit + 1 - len(names))
            names.extend(schema.name for schema, _ in records)
            if not more or not records or len(names) > limit:
                break
            after = records[-1][0].name
        out: dict[str, object] = {"TableNames": names[:limit]}
        if len(names) > limit:
            out["LastEvaluatedTableName"] = names[limit - 1]
        return out
