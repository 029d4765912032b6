"""Where DynamoDB items live in the store's key space (kvstore/dynamodb/keys.py, tables.py) and
how ops carry DynamoDB expressions to the nodes (kvstore/dynamodb/payloads.py).

Goal: the rules a Query relies on. Method: hypothesis over sort keys of every type, and the pure
functions themselves.

* Store-key order is sort-key order: numbers numerically, strings by UTF-8 bytes, binary as
  unsigned bytes; ``begins_with`` and every comparison select exactly the matching keys.
* Every item of one hash key routes to one partition whatever the partition count; numbers
  equal by value are one key; keys of other hash keys spread.
* The public API refuses the store's namespace; the cluster accepts it, longer keys included.
* An op with a DynamoDB condition and update survives its JSON (wire) form, and only inside the
  cluster.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.dynamodb import keys as ddb_keys
from kvstore.dynamodb.attributes import normalize_number
from kvstore.dynamodb.request_exprs import UPDATE_ITEM, RequestExpressions
from kvstore.dynamodb.tables import KeyAttribute, TableSchema, sort_bytes
from kvstore.errors import ValidationError
from kvstore.limits import INTERNAL_KEY_BYTES_MAX, KEY_BYTES_MAX
from kvstore.ops import Op, OpKind, apply_op, op_from_json, op_to_json
from kvstore.partitioning import PartitionMap, routing_key
from kvstore.values import validate_key


def _schema(sort_type: str | None = "S", hash_type: str = "S") -> TableSchema:
    hash_key = KeyAttribute("pk", hash_type)
    range_key = None if sort_type is None else KeyAttribute("sk", sort_type)
    attributes = (hash_key,) if range_key is None else (hash_key, range_key)
    return TableSchema(
        name="t",
        table_id="0123456789abcdef",
        hash_key=hash_key,
        range_key=range_key,
        attributes=attributes,
        billing="PAY_PER_REQUEST",
        read_units=0,
        write_units=0,
        created_s=0.0,
    )


def _store_key(schema: TableSchema, sort_value: dict[str, object]) -> str:
    key, _ = schema.store_key({"pk": {"S": "h"}, "sk": sort_value}, item=False)  # type: ignore[dict-item]
    return key


numbers = (
    st.decimals(allow_nan=False, allow_infinity=False, places=None)
    .filter(lambda d: d.is_zero() or -130 <= d.adjusted() <= 125)
    .map(lambda d: d.normalize())
)


@given(st.lists(numbers, min_size=2, max_size=20))
def test_number_keys_sort_numerically(values: list[Decimal]) -> None:
    texts = [
        normalize_number(f"{value:f}") for value in values if len(value.as_tuple().digits) <= 38
    ]
    schema = _schema("N")
    by_key = sorted(texts, key=lambda t: _store_key(schema, {"N": t}))
    assert [Decimal(t) for t in by_key] == sorted(Decimal(t) for t in texts)


@given(st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=20))
def test_string_keys_sort_by_utf8_bytes(values: list[str]) -> None:
    schema = _schema("S")
    by_key = sorted(values, key=lambda v: _store_key(schema, {"S": v}))
    assert [v.encode() for v in by_key] == sorted(v.encode() for v in values)


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=2, max_size=20))
def test_binary_keys_sort_as_unsigned_bytes(values: list[bytes]) -> None:
    schema = _schema("B")
    by_key = sorted(values, key=lambda v: _store_key(schema, {"B": v}))
    assert by_key == sorted(values)


OPERATORS = ("=", "<", "<=", ">", ">=", "BETWEEN", "begins_with")


@given(
    st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=12),
    st.binary(min_size=1, max_size=3),
    st.binary(min_size=1, max_size=3),
    st.sampled_from(OPERATORS),
)
def test_sort_ranges_select_exactly_the_matching_keys(
    values: list[bytes], low: bytes, high: bytes, operator: str
) -> None:
    schema = _schema("B")
    digest = schema.hash_digest({"S": "h"})
    low_text = ddb_keys.sort_text(sort_bytes("B", {"B": low}))
    high_text = ddb_keys.sort_text(sort_bytes("B", {"B": high}))
    bounds = ddb_keys.sort_range(schema.table_id, digest, operator, low_text, high_text)
    expected = {
        "=": lambda v: v == low,
        "<": lambda v: v < low,
        "<=": lambda v: v <= low,
        ">": lambda v: v > low,
        ">=": lambda v: v >= low,
        "BETWEEN": lambda v: low <= v <= high,
        "begins_with": lambda v: v.startswith(low),
    }[operator]
    for value in values:
        key = _store_key(schema, {"B": value})
        assert (bounds.start <= key < bounds.end) is expected(value), (value, operator)


def test_a_hash_keys_items_share_one_partition_and_equal_numbers_one_key() -> None:
    schema = _schema("N", hash_type="N")
    keys = [
        schema.store_key({"pk": {"N": "1000"}, "sk": {"N": str(i)}}, item=False)[0]
        for i in range(50)
    ]
    same, _ = schema.store_key({"pk": {"N": normalize_number("1e3")}, "sk": {"N": "0"}}, item=False)
    assert same == keys[0]
    for count in (1, 7, 16, 4096):
        partitions = PartitionMap(count)
        assert len({partitions.partition_of(key) for key in keys}) == 1
    spread = {
        PartitionMap(16).partition_of(
            schema.store_key({"pk": {"N": str(i)}, "sk": {"N": "0"}}, item=False)[0]
        )
        for i in range(200)
    }
    assert len(spread) > 8
    assert routing_key("user-key\x01x") == "user-key\x01x"  # only the store's own keys split


def test_the_catalogue_is_one_partition() -> None:
    partitions = PartitionMap(64)
    assert len({partitions.partition_of(ddb_keys.catalog_key(f"t{i}")) for i in range(100)}) == 1


def test_key_rules_of_dynamodb() -> None:
    schema = _schema("S")
    with pytest.raises(ValidationError, match="Missing the key sk"):
        schema.store_key({"pk": {"S": "h"}}, item=True)
    with pytest.raises(ValidationError, match="does not match the schema"):
        schema.store_key({"pk": {"S": "h"}, "sk": {"S": "s"}, "x": {"S": "1"}}, item=False)
    with pytest.raises(ValidationError, match="Type mismatch for key pk expected: S actual: N"):
        schema.store_key({"pk": {"N": "1"}, "sk": {"S": "s"}}, item=False)
    with pytest.raises(ValidationError, match=r"empty string value\. Key: pk"):
        schema.store_key({"pk": {"S": ""}, "sk": {"S": "s"}}, item=False)
    with pytest.raises(ValidationError, match="of2048 bytes"):
        schema.store_key({"pk": {"S": "x" * 2049}, "sk": {"S": "s"}}, item=False)
    with pytest.raises(ValidationError, match="range keys"):
        _schema("B").store_key({"pk": {"S": "h"}, "sk": {"B": b"\xff" * 1025}}, item=False)
    longest, _ = _schema("B").store_key(
        {"pk": {"S": "x" * 2048}, "sk": {"B": b"\xff" * 1024}}, item=False
    )
    assert validate_key(longest, internal=True) == longest
    assert len(longest.encode()) <= INTERNAL_KEY_BYTES_MAX


def test_the_public_api_refuses_the_stores_own_keys() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        validate_key("\x00d/anything")
    assert validate_key("\x00d/anything", internal=True)
    with pytest.raises(ValidationError):
        validate_key("\x00" + "x" * INTERNAL_KEY_BYTES_MAX, internal=True)
    with pytest.raises(ValidationError):
        validate_key("y" * (KEY_BYTES_MAX + 1), internal=True)  # others keep their limit


def test_an_op_carries_a_dynamodb_condition_and_update_through_its_wire_form() -> None:
    schema = _schema("S")
    key, key_item = schema.store_key({"pk": {"S": "h"}, "sk": {"S": "s"}}, item=False)
    exprs = RequestExpressions(
        {
            "UpdateExpression": "SET #n = if_not_exists(#n, :zero) + :one",
            "ConditionExpression": "attribute_not_exists(#n) OR #n < :ten",
            "ExpressionAttributeNames": {"#n": "count"},
            "ExpressionAttributeValues": {
                ":zero": {"N": "0"},
                ":one": {"N": "1"},
                ":ten": {"N": "10"},
            },
        },
        UPDATE_ITEM,
    )
    update = exprs.update(key_item, schema.key_names)
    condition = exprs.condition()
    exprs.finish()
    op = Op(kind=OpKind.UPDATE, key=key, expression=update, condition=condition)
    wire = op_to_json(op)
    again = op_from_json(wire, internal=True)
    assert op_to_json(again) == wire
    exists, value = apply_op(again, exists=False, value=None)
    assert exists and value == {"pk": {"S": "h"}, "sk": {"S": "s"}, "count": {"N": "1"}}
    with pytest.raises(ValidationError):
        op_from_json(wire)  # the public API: neither the key nor the members
    with pytest.raises(ValidationError, match="unknown member"):
        op_from_json({**wire, "key": "public"})


def test_an_update_of_an_absent_item_that_only_removes_creates_nothing() -> None:
    schema = _schema("S")
    key, key_item = schema.store_key({"pk": {"S": "h"}, "sk": {"S": "s"}}, item=False)
    exprs = RequestExpressions({"UpdateExpression": "REMOVE a"}, UPDATE_ITEM)
    update = exprs.update(key_item, schema.key_names)
    op = Op(kind=OpKind.UPDATE, key=key, expression=update)
    assert apply_op(op, exists=False, value=None) == (False, None)
    empty = Op(kind=OpKind.UPDATE, key=key, expression=exprs.empty_update(key_item))
    assert apply_op(empty, exists=False, value=None) == (True, key_item)
    stored = {"pk": {"S": "h"}, "sk": {"S": "s"}, "a": {"S": "x"}}
    assert apply_op(empty, exists=True, value=stored) == (True, stored)
