"""The DynamoDB endpoint's edge cases, driven by boto3 and by raw signed requests.

Goal: every limit of the reference (dynamodb-api.md sections 3-5) is a ValidationException
with AWS's own message fragment, unknown tables are ResourceNotFoundException for every
operation, malformed requests are UnknownOperationException / SerializationException, the
ReturnValues and ReturnConsumedCapacity variants answer as DynamoDB does, the legacy parameters
(Expected, AttributeUpdates, KeyConditions, QueryFilter, ScanFilter, AttributesToGet) behave
exactly like their expression forms, and no message names a partition, a node or an address.
Method: one cluster for the module (three storage nodes, 8 partitions, one coordinator,
separate processes, :func:`support.api.api_cluster`), boto3 for everything it can send, and
requests signed with botocore's SigV4 signer for what botocore refuses to send (a number given
as a JSON number, an unknown operation) and to read the error body exactly as sent; the AWS CLI
too, when it is installed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import string
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from support.api import api_cluster
from support.cluster import LocalNodes

from kvstore.limits import (
    DYNAMODB_BATCH_GET_KEYS_MAX,
    DYNAMODB_BATCH_WRITE_ITEMS_MAX,
    DYNAMODB_EXPRESSION_BYTES_MAX,
    DYNAMODB_HASH_KEY_BYTES_MAX,
    DYNAMODB_ITEM_BYTES_MAX,
    DYNAMODB_SORT_KEY_BYTES_MAX,
    DYNAMODB_TRANSACT_ITEMS_MAX,
)

REGION = "us-east-1"
TYPE_PREFIX = "com.amazonaws.dynamodb.v20120810#"
CONTENT_TYPE = "application/x-amz-json-1.0"
# What no public message may contain: a partition, a node id, an address, a Python object.
INTERNAL = re.compile(r"partition \d|node n\d|127\.0\.0\.1|0x[0-9a-f]{6,}|Traceback|\bop: ")

Call = Callable[[Any, "Tables"], object]


@dataclass(frozen=True)
class Tables:
    """The module's tables: ``t`` has a string hash and sort key, ``h`` a string hash key,
    ``n`` a number sort key."""

    t: str
    h: str
    n: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    with api_cluster(tmp_path_factory.mktemp("dynamodb-errors")) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def ddb(cluster: LocalNodes) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=cluster.api(),
        region_name=REGION,
        aws_access_key_id="admin",
        aws_secret_access_key=cluster.tokens["admin"],
        # No retries: a limit is refused once; a retried throttle would hide a wrong code.
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def _create(ddb: Any, *, sort: str | None, hash_type: str = "S") -> str:
    name = f"e-{uuid.uuid4().hex[:10]}"
    schema = [{"AttributeName": "pk", "KeyType": "HASH"}]
    definitions = [{"AttributeName": "pk", "AttributeType": hash_type}]
    if sort is not None:
        schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
        definitions.append({"AttributeName": "sk", "AttributeType": sort})
    ddb.create_table(
        TableName=name,
        KeySchema=schema,
        AttributeDefinitions=definitions,
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    return name


@pytest.fixture(scope="module")
def tables(ddb: Any) -> Tables:
    return Tables(t=_create(ddb, sort="S"), h=_create(ddb, sort=None), n=_create(ddb, sort="N"))


def _key(pk: str = "k", sk: str = "s") -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _error(call: Callable[[], object]) -> tuple[str, str]:
    """(code, message) of the ClientError ``call`` raises."""
    with pytest.raises(ClientError) as raised:
        call()
    error = raised.value.response["Error"]
    message = str(error["Message"])
    assert not INTERNAL.search(message), message
    return str(error["Code"]), message


def _unique(count: int, size: int = 3) -> list[str]:
    alphabet = string.ascii_letters + string.digits
    return ["".join(p) for p in itertools.islice(itertools.product(alphabet, repeat=size), count)]


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"S": "leaf"}
    for _ in range(levels):
        value = {"L": [value]}
    return value


# --- raw signed requests ------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def aws_type(self) -> str:
        return str(self.body["__type"]).rsplit("#", 1)[1]


def _raw(cluster: LocalNodes, operation: str, body: bytes | dict[str, Any]) -> Raw:
    """One request signed by botocore's own SigV4 signer, sent as is, its answer unparsed."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = cluster.api() + "/"
    headers = {"Content-Type": CONTENT_TYPE, "X-Amz-Target": f"DynamoDB_20120810.{operation}"}
    signed = AWSRequest(method="POST", url=url, data=data, headers=headers)
    SigV4Auth(Credentials("admin", cluster.tokens["admin"]), "dynamodb", REGION).add_auth(signed)
    request = urllib.request.Request(
        url, data=data, headers={k: str(v) for k, v in signed.headers.items()}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, answer, raw_headers = reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as error:
        status, answer, raw_headers = error.code, error.read(), error.headers
    return Raw(status, {k.lower(): v for k, v in raw_headers.items()}, json.loads(answer))


# --- every ValidationException limit, with AWS's words ----------------------------------


def _many_tiny_attributes(ddb: Any, tb: Tables) -> object:
    """Under 400 KB by AWS's formula, over the store's encoded cap: refused, not stored."""
    item = {**_key(), **{name: {"NULL": True} for name in _unique(80_000)}}
    return ddb.put_item(TableName=tb.t, Item=item)


def _update_over_the_limit(ddb: Any, tb: Tables) -> object:
    key = _key("grow")
    ddb.put_item(TableName=tb.t, Item={**key, "a": {"S": "x" * 300_000}})
    return ddb.update_item(
        TableName=tb.t,
        Key=key,
        UpdateExpression="SET b = :v",
        ExpressionAttributeValues={":v": {"S": "y" * 150_000}},
    )


def _update_over_the_store_cap(ddb: Any, tb: Tables) -> object:
    """The result fits AWS's formula but not the store: refused on the node, in AWS's words
    (it used to be stored, then unreadable)."""
    key = _key("grow-store")
    item = {**key, **{name: {"N": "1"} for name in _unique(40_000)}}
    ddb.put_item(TableName=tb.t, Item=item)
    return ddb.update_item(
        TableName=tb.t,
        Key=key,
        UpdateExpression="SET over_cap = :v",
        ExpressionAttributeValues={":v": {"S": "x" * 100_000}},
    )


def _transact_puts(count: int) -> Call:
    return lambda ddb, tb: ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": tb.h, "Item": {"pk": {"S": str(i)}}}} for i in range(count)
        ]
    )


def _number(text: str) -> Call:
    return lambda ddb, tb: ddb.put_item(TableName=tb.h, Item={"pk": {"S": "num"}, "n": {"N": text}})


LIMITS: dict[str, tuple[Call, str]] = {
    "item over 400 KB": (
        lambda ddb, tb: ddb.put_item(
            TableName=tb.t, Item={**_key(), "x": {"S": "x" * DYNAMODB_ITEM_BYTES_MAX}}
        ),
        r"^Item size has exceeded the maximum allowed size$",
    ),
    "item of many tiny attributes": (
        _many_tiny_attributes,
        r"^Item size has exceeded the maximum allowed size$",
    ),
    "batch put over 400 KB": (
        lambda ddb, tb: ddb.batch_write_item(
            RequestItems={tb.t: [{"PutRequest": {"Item": {**_key(), "x": {"S": "x" * 410_000}}}}]}
        ),
        r"^Item size has exceeded the maximum allowed size$",
    ),
    "transaction put over 400 KB": (
        lambda ddb, tb: ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": tb.t, "Item": {**_key(), "x": {"S": "x" * 410_000}}}}
            ]
        ),
        r"^Item size has exceeded the maximum allowed size$",
    ),
    "update over 400 KB": (
        _update_over_the_limit,
        r"^Item size to update has exceeded the maximum allowed size$",
    ),
    "update over the store's cap": (
        _update_over_the_store_cap,
        r"^Item size to update has exceeded the maximum allowed size$",
    ),
    "nesting over 32 levels": (
        lambda ddb, tb: ddb.put_item(TableName=tb.t, Item={**_key(), "d": _nested(33)}),
        r"^Nesting Levels have exceeded supported limits$",
    ),
    "nesting the store cannot hold": (
        lambda ddb, tb: ddb.put_item(TableName=tb.t, Item={**_key(), "d": _nested(32)}),
        r"^Nesting Levels have exceeded supported limits$",
    ),
    "hash key over 2048 bytes": (
        lambda ddb, tb: ddb.put_item(
            TableName=tb.h, Item={"pk": {"S": "é" * (DYNAMODB_HASH_KEY_BYTES_MAX // 2 + 1)}}
        ),
        r"Size of hashkey has exceeded the maximum size limit of2048 bytes",
    ),
    "sort key over 1024 bytes": (
        lambda ddb, tb: ddb.put_item(
            TableName=tb.t, Item=_key(sk="s" * (DYNAMODB_SORT_KEY_BYTES_MAX + 1))
        ),
        r"Aggregated size of all range keys has exceeded the size limit of 1024 bytes",
    ),
    "empty string hash key": (
        lambda ddb, tb: ddb.put_item(TableName=tb.t, Item=_key(pk="")),
        r"cannot contain an empty string value\. Key: pk",
    ),
    "empty string sort key in a Key": (
        lambda ddb, tb: ddb.get_item(TableName=tb.t, Key=_key(sk="")),
        r"cannot contain an empty string value\. Key: sk",
    ),
    "101 transaction actions": (
        _transact_puts(DYNAMODB_TRANSACT_ITEMS_MAX + 1),
        r"'transactItems' failed to satisfy constraint: Member must have length less than or "
        r"equal to 100",
    ),
    "101 transactional gets": (
        lambda ddb, tb: ddb.transact_get_items(
            TransactItems=[
                {"Get": {"TableName": tb.h, "Key": {"pk": {"S": str(i)}}}}
                for i in range(DYNAMODB_TRANSACT_ITEMS_MAX + 1)
            ]
        ),
        r"Member must have length less than or equal to 100",
    ),
    "26 batch writes": (
        lambda ddb, tb: ddb.batch_write_item(
            RequestItems={
                tb.h: [
                    {"PutRequest": {"Item": {"pk": {"S": str(i)}}}}
                    for i in range(DYNAMODB_BATCH_WRITE_ITEMS_MAX + 1)
                ]
            }
        ),
        r"Member must have length less than or equal to 25",
    ),
    "101 batch gets": (
        lambda ddb, tb: ddb.batch_get_item(
            RequestItems={
                tb.h: {
                    "Keys": [{"pk": {"S": str(i)}} for i in range(DYNAMODB_BATCH_GET_KEYS_MAX + 1)]
                }
            }
        ),
        r"^Too many items requested for the BatchGetItem call$",
    ),
    "duplicate batch gets": (
        lambda ddb, tb: ddb.batch_get_item(RequestItems={tb.t: {"Keys": [_key(), _key()]}}),
        r"^Provided list of item keys contains duplicates$",
    ),
    "duplicate batch writes": (
        lambda ddb, tb: ddb.batch_write_item(
            RequestItems={
                tb.t: [{"PutRequest": {"Item": _key()}}, {"DeleteRequest": {"Key": _key()}}]
            }
        ),
        r"^Provided list of item keys contains duplicates$",
    ),
    "duplicate transaction actions": (
        lambda ddb, tb: ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": tb.t, "Item": _key()}},
                {
                    "ConditionCheck": {
                        "TableName": tb.t,
                        "Key": _key(),
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
            ]
        ),
        r"Transaction request cannot include multiple operations on one item",
    ),
    "duplicate transactional gets": (
        lambda ddb, tb: ddb.transact_get_items(
            TransactItems=[{"Get": {"TableName": tb.t, "Key": _key()}}] * 2
        ),
        r"Transaction request cannot include multiple operations on one item",
    ),
    "expression over 4 KB": (
        lambda ddb, tb: ddb.put_item(
            TableName=tb.t,
            Item=_key(),
            ConditionExpression=" OR ".join(
                ["attribute_not_exists(a)"] * (DYNAMODB_EXPRESSION_BYTES_MAX // 20)
            ),
        ),
        r"^Invalid ConditionExpression: Expression size has exceeded the maximum allowed size",
    ),
    "unused name": (
        lambda ddb, tb: ddb.put_item(
            TableName=tb.t,
            Item=_key(),
            ConditionExpression="attribute_not_exists(a)",
            ExpressionAttributeNames={"#xyz": "b"},
        ),
        r"^Value provided in ExpressionAttributeNames unused in expressions: keys: \{#xyz\}$",
    ),
    "unused value": (
        lambda ddb, tb: ddb.query(
            TableName=tb.t,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "k"}, ":xyz": {"N": "1"}},
        ),
        r"^Value provided in ExpressionAttributeValues unused in expressions: keys: \{:xyz\}$",
    ),
    "undefined value": (
        lambda ddb, tb: ddb.put_item(TableName=tb.t, Item=_key(), ConditionExpression="a = :v"),
        r"An expression attribute value used in expression is not defined; attribute value: :v",
    ),
    "undefined name": (
        lambda ddb, tb: ddb.update_item(
            TableName=tb.t, Key=_key(), UpdateExpression="REMOVE #gone"
        ),
        r"An expression attribute name used in the document path is not defined; attribute "
        r"name: #gone",
    ),
    "values without an expression": (
        lambda ddb, tb: ddb.put_item(
            TableName=tb.t, Item=_key(), ExpressionAttributeValues={":v": {"N": "1"}}
        ),
        r"^ExpressionAttributeValues can only be specified when using expressions: "
        r"ConditionExpression is null$",
    ),
    "names without an expression": (
        lambda ddb, tb: ddb.get_item(
            TableName=tb.t, Key=_key(), ExpressionAttributeNames={"#a": "a"}
        ),
        r"^ExpressionAttributeNames can only be specified when using expressions$",
    ),
    "reserved word": (
        lambda ddb, tb: ddb.get_item(TableName=tb.t, Key=_key(), ProjectionExpression="size"),
        r"Attribute name is a reserved keyword; reserved keyword: size",
    ),
    "overlapping update paths": (
        lambda ddb, tb: ddb.update_item(
            TableName=tb.t,
            Key=_key(),
            UpdateExpression="SET a = :v, a.b = :v",
            ExpressionAttributeValues={":v": {"N": "1"}},
        ),
        r"Two document paths overlap with each other",
    ),
    "key attribute update": (
        lambda ddb, tb: ddb.update_item(
            TableName=tb.t,
            Key=_key(),
            UpdateExpression="SET sk = :v",
            ExpressionAttributeValues={":v": {"S": "other"}},
        ),
        r"Cannot update attribute sk\. This attribute is part of the key",
    ),
    "legacy key attribute update": (
        lambda ddb, tb: ddb.update_item(
            TableName=tb.t, Key=_key(), AttributeUpdates={"pk": {"Value": {"S": "x"}}}
        ),
        r"Cannot update attribute pk\. This attribute is part of the key",
    ),
    "39 significant digits": (_number("1" * 39), r"significant"),
    "number overflow": (_number("1E+126"), r"overflow"),
    "number underflow": (_number("1E-131"), r"underflow"),
    "NaN": (_number("NaN"), r"numeric"),
    "number with spaces": (_number(" 1"), r"numeric"),
    "number of letters": (_number("one"), r"numeric"),
    "arithmetic over 38 digits": (
        lambda ddb, tb: ddb.update_item(
            TableName=tb.h,
            Key={"pk": {"S": "sum"}},
            UpdateExpression="SET n = :big + :one",
            ExpressionAttributeValues={":big": {"N": "1E+50"}, ":one": {"N": "1"}},
        ),
        r"overflow|significant",
    ),
    "query start key of the wrong type": (
        lambda ddb, tb: ddb.query(
            TableName=tb.t,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "k"}},
            ExclusiveStartKey={"pk": {"N": "1"}, "sk": {"S": "s"}},
        ),
        r"^The provided starting key is invalid",
    ),
    "scan start key missing the sort key": (
        lambda ddb, tb: ddb.scan(TableName=tb.t, ExclusiveStartKey={"pk": {"S": "k"}}),
        r"^The provided starting key is invalid",
    ),
    "Segment without TotalSegments": (
        lambda ddb, tb: ddb.scan(TableName=tb.t, Segment=1),
        r"The TotalSegments parameter is required but was not present in the request when "
        r"Segment parameter is present",
    ),
    "TotalSegments without Segment": (
        lambda ddb, tb: ddb.scan(TableName=tb.t, TotalSegments=4),
        r"The Segment parameter is required but was not present",
    ),
    "Segment past TotalSegments": (
        lambda ddb, tb: ddb.scan(TableName=tb.t, Segment=4, TotalSegments=4),
        r"Segment: 4 is not less than TotalSegments: 4",
    ),
    "Expected with ConditionExpression": (
        lambda ddb, tb: ddb.put_item(
            TableName=tb.t,
            Item=_key(),
            Expected={"pk": {"Exists": False}},
            ConditionExpression="attribute_not_exists(pk)",
        ),
        r"^Can not use both expression and non-expression parameters in the same request: "
        r"Non-expression parameters: \{Expected\} Expression parameters: "
        r"\{ConditionExpression\}$",
    ),
    "AttributeUpdates with ConditionExpression": (
        lambda ddb, tb: ddb.update_item(
            TableName=tb.t,
            Key=_key(),
            AttributeUpdates={"a": {"Value": {"N": "1"}}},
            ConditionExpression="attribute_exists(pk)",
        ),
        r"Non-expression parameters: \{AttributeUpdates\} Expression parameters: "
        r"\{ConditionExpression\}$",
    ),
    "KeyConditions with KeyConditionExpression": (
        lambda ddb, tb: ddb.query(
            TableName=tb.t,
            KeyConditions={"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "k"}]}},
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "k"}},
        ),
        r"Non-expression parameters: \{KeyConditions\} Expression parameters: "
        r"\{KeyConditionExpression\}$",
    ),
    "ScanFilter with ProjectionExpression": (
        lambda ddb, tb: ddb.scan(
            TableName=tb.t,
            ScanFilter={"a": {"ComparisonOperator": "NULL"}},
            ProjectionExpression="a",
        ),
        r"Non-expression parameters: \{ScanFilter\} Expression parameters: "
        r"\{ProjectionExpression\}$",
    ),
    "AttributesToGet with ProjectionExpression": (
        lambda ddb, tb: ddb.get_item(
            TableName=tb.t, Key=_key(), AttributesToGet=["a"], ProjectionExpression="a"
        ),
        r"Non-expression parameters: \{AttributesToGet\}",
    ),
    "query without a key condition": (
        lambda ddb, tb: ddb.query(TableName=tb.t),
        r"Either the KeyConditions or KeyConditionExpression parameter must be specified",
    ),
    "begins_with on a number sort key": (
        lambda ddb, tb: ddb.query(
            TableName=tb.n,
            KeyConditions={
                "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "k"}]},
                "sk": {"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [{"N": "1"}]},
            },
        ),
        r"ComparisonOperator BEGINS_WITH is not valid for N AttributeValue type",
    ),
    "ReturnValues ALL_NEW on PutItem": (
        lambda ddb, tb: ddb.put_item(TableName=tb.t, Item=_key(), ReturnValues="ALL_NEW"),
        r"'returnValues' failed to satisfy constraint: Member must satisfy enum value set",
    ),
}


@pytest.mark.parametrize("case", sorted(LIMITS))
def test_limits_are_validation_exceptions_in_aws_words(ddb: Any, tables: Tables, case: str) -> None:
    call, fragment = LIMITS[case]
    code, message = _error(lambda: call(ddb, tables))
    assert code == "ValidationException", (code, message)
    assert re.search(fragment, message), message


def test_keys_and_items_at_the_limits_are_accepted(ddb: Any, tables: Tables) -> None:
    """The other side of each limit: exactly at it, the request goes through."""
    hash_key = {"pk": {"S": "é" * (DYNAMODB_HASH_KEY_BYTES_MAX // 2)}}
    ddb.put_item(TableName=tables.h, Item=hash_key)
    assert ddb.get_item(TableName=tables.h, Key=hash_key)["Item"] == hash_key
    sort_key = _key(sk="s" * DYNAMODB_SORT_KEY_BYTES_MAX)
    ddb.put_item(TableName=tables.t, Item=sort_key)
    assert "Item" in ddb.get_item(TableName=tables.t, Key=sort_key)
    deep = {**_key("deep"), "d": _nested(31)}
    ddb.put_item(TableName=tables.t, Item=deep)
    assert ddb.get_item(TableName=tables.t, Key=_key("deep"))["Item"] == deep
    big = {**_key("big"), "x": {"S": "x" * (DYNAMODB_ITEM_BYTES_MAX - 64)}}
    ddb.put_item(TableName=tables.t, Item=big)
    assert len(ddb.get_item(TableName=tables.t, Key=_key("big"))["Item"]["x"]["S"]) == len(
        big["x"]["S"]
    )
    ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": tables.h, "Item": {"pk": {"S": f"tx-{i}"}}}}
            for i in range(DYNAMODB_TRANSACT_ITEMS_MAX)
        ]
    )
    got = ddb.batch_get_item(
        RequestItems={
            tables.h: {
                "Keys": [{"pk": {"S": f"tx-{i}"}} for i in range(DYNAMODB_BATCH_GET_KEYS_MAX)]
            }
        }
    )
    assert len(got["Responses"][tables.h]) == DYNAMODB_TRANSACT_ITEMS_MAX


def test_a_refused_update_leaves_the_item_readable(ddb: Any, tables: Tables) -> None:
    """An update the store could not have held is refused and changes nothing."""
    _error(lambda: _update_over_the_store_cap(ddb, tables))
    item = ddb.get_item(TableName=tables.t, Key=_key("grow-store"))["Item"]
    assert "over_cap" not in item and len(item) == 40_002


# --- unknown tables -----------------------------------------------------------------------

MISSING = "nope-missing-table"
K = _key()
ON_A_MISSING_TABLE: dict[str, dict[str, Any]] = {
    "get_item": {"TableName": MISSING, "Key": K},
    "put_item": {"TableName": MISSING, "Item": K},
    "update_item": {"TableName": MISSING, "Key": K, "UpdateExpression": "REMOVE a"},
    "delete_item": {"TableName": MISSING, "Key": K},
    "query": {
        "TableName": MISSING,
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": "k"}},
    },
    "scan": {"TableName": MISSING},
    "describe_table": {"TableName": MISSING},
    "delete_table": {"TableName": MISSING},
    "update_table": {"TableName": MISSING, "BillingMode": "PAY_PER_REQUEST"},
    "describe_time_to_live": {"TableName": MISSING},
    "describe_continuous_backups": {"TableName": MISSING},
    "list_tags_of_resource": {
        "ResourceArn": f"arn:aws:dynamodb:kvstore:000000000000:table/{MISSING}"
    },
    "transact_write_items": {"TransactItems": [{"Put": {"TableName": MISSING, "Item": K}}]},
    "transact_get_items": {"TransactItems": [{"Get": {"TableName": MISSING, "Key": K}}]},
    "batch_get_item": {"RequestItems": {MISSING: {"Keys": [K]}}},
    "batch_write_item": {"RequestItems": {MISSING: [{"PutRequest": {"Item": K}}]}},
}


@pytest.mark.parametrize("operation", sorted(ON_A_MISSING_TABLE))
def test_an_unknown_table_is_resource_not_found(ddb: Any, operation: str) -> None:
    code, message = _error(lambda: getattr(ddb, operation)(**ON_A_MISSING_TABLE[operation]))
    assert code == "ResourceNotFoundException"
    assert message == f"Requested resource not found: Table: {MISSING} not found"


# --- the wire: unknown operations, serialization, the error body --------------------------


def test_an_unknown_operation(cluster: LocalNodes) -> None:
    reply = _raw(cluster, "CreateGlobalTable", {})
    assert reply.status == 400
    assert reply.body["__type"] == TYPE_PREFIX + "UnknownOperationException"
    assert reply.headers["content-type"] == CONTENT_TYPE


@pytest.mark.parametrize(
    "body",
    [
        {"Item": {"pk": {"N": 123}}},  # a number as a JSON number: botocore never sends it
        {"Item": {"pk": {"S": ["a"]}}},
        {"Item": {"pk": {"BOOL": "yes"}}},
        {"Item": [{"pk": {"S": "a"}}]},
    ],
    ids=["N as a JSON number", "S as a list", "BOOL as a string", "Item as a list"],
)
def test_wrong_json_types_are_serialization_exceptions(
    cluster: LocalNodes, tables: Tables, body: dict[str, Any]
) -> None:
    reply = _raw(cluster, "PutItem", {"TableName": tables.h, **body})
    assert reply.status == 400
    assert reply.aws_type == "SerializationException", reply.body


def test_bad_json_is_a_serialization_exception(cluster: LocalNodes) -> None:
    reply = _raw(cluster, "ListTables", b'{"Limit": ')
    assert (reply.status, reply.aws_type) == (400, "SerializationException")


def test_the_error_body_as_sent(cluster: LocalNodes, tables: Tables) -> None:
    """``__type`` carries DynamoDB's prefix; ``message`` is lower case except for the three
    errors whose model says ``Message``; the extra members are top level."""
    invalid = _raw(cluster, "GetItem", {"TableName": tables.t, "Key": {"pk": {"S": "k"}}})
    assert invalid.status == 400
    assert set(invalid.body) == {"__type", "message"}
    assert invalid.body["__type"] == TYPE_PREFIX + "ValidationException"
    assert invalid.body["message"] == "The provided key element does not match the schema"
    assert invalid.headers["content-type"] == CONTENT_TYPE
    missing = _raw(cluster, "DescribeTable", {"TableName": MISSING})
    assert set(missing.body) == {"__type", "message"}
    assert missing.aws_type == "ResourceNotFoundException"
    key = {"pk": {"S": "body-shape"}, "sk": {"S": "s"}}
    _raw(cluster, "PutItem", {"TableName": tables.t, "Item": {**key, "v": {"N": "1"}}})
    failed = _raw(
        cluster,
        "PutItem",
        {
            "TableName": tables.t,
            "Item": key,
            "ConditionExpression": "attribute_not_exists(pk)",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        },
    )
    assert failed.aws_type == "ConditionalCheckFailedException"
    assert set(failed.body) == {"__type", "message", "Item"}
    assert failed.body["Item"] == {**key, "v": {"N": "1"}}
    cancelled = _raw(
        cluster,
        "TransactWriteItems",
        {
            "TransactItems": [
                {
                    "ConditionCheck": {
                        "TableName": tables.t,
                        "Key": key,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {"Put": {"TableName": tables.h, "Item": {"pk": {"S": "body-shape"}}}},
            ]
        },
    )
    assert cancelled.aws_type == "TransactionCanceledException"
    assert set(cancelled.body) == {"__type", "Message", "CancellationReasons"}
    assert cancelled.body["Message"].endswith("[ConditionalCheckFailed, None]")
    assert cancelled.body["CancellationReasons"] == [
        {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
        {"Code": "None"},
    ]


def test_a_refused_node_side_update_reads_as_aws_wrote_it(
    cluster: LocalNodes, tables: Tables
) -> None:
    """The node's reason reaches the client alone: no field, partition or node before it."""
    key = {"pk": {"S": "wrong-type"}, "sk": {"S": "s"}}
    _raw(cluster, "PutItem", {"TableName": tables.t, "Item": {**key, "s": {"S": "text"}}})
    reply = _raw(
        cluster,
        "UpdateItem",
        {
            "TableName": tables.t,
            "Key": key,
            "UpdateExpression": "ADD s :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        },
    )
    assert reply.aws_type == "ValidationException"
    assert reply.body["message"] == "An operand in the update expression has an incorrect data type"


# --- ReturnValues, ReturnConsumedCapacity, ConsistentRead -------------------------------


def test_update_return_values(ddb: Any, tables: Tables) -> None:
    key = _key("rv")
    ddb.put_item(TableName=tables.t, Item={**key, "a": {"N": "1"}, "b": {"S": "x"}})

    def update(returns: str) -> dict[str, Any]:
        answer = ddb.update_item(
            TableName=tables.t,
            Key=key,
            UpdateExpression="SET a = a + :one, c = :one REMOVE b",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues=returns,
        )
        return dict(answer.get("Attributes", {}))

    assert update("UPDATED_OLD") == {"a": {"N": "1"}, "b": {"S": "x"}}  # c did not exist
    assert update("UPDATED_NEW") == {"a": {"N": "3"}, "c": {"N": "1"}}  # b is gone
    assert update("ALL_NEW") == {**key, "a": {"N": "4"}, "c": {"N": "1"}}
    assert update("ALL_OLD") == {**key, "a": {"N": "4"}, "c": {"N": "1"}}
    assert update("NONE") == {}
    assert ddb.get_item(TableName=tables.t, Key=key)["Item"]["a"] == {"N": "6"}


def test_updated_values_of_nested_paths_are_those_paths_only(ddb: Any, tables: Tables) -> None:
    """As DynamoDB answers (Alternator's test_update_item_returnvalues_nested, AWS-verified)."""
    key = _key("nested-rv")
    one, two, three = ({"N": str(n)} for n in (1, 2, 3))
    ddb.put_item(
        TableName=tables.t,
        Item={**key, "a": {"M": {"b": {"S": "dog"}, "c": {"L": [one, two, three]}}}},
    )

    def update(expression: str, returns: str, **values: Any) -> Any:
        extra = {"ExpressionAttributeValues": values} if values else {}
        answer = ddb.update_item(
            TableName=tables.t, Key=key, UpdateExpression=expression, ReturnValues=returns, **extra
        )
        return answer.get("Attributes")

    assert update("SET a.b = :v", "UPDATED_OLD", **{":v": {"S": "yo"}}) == {
        "a": {"M": {"b": {"S": "dog"}}}
    }
    assert update("SET a.c[1] = :v", "UPDATED_NEW", **{":v": {"N": "7"}}) == {
        "a": {"M": {"c": {"L": [{"N": "7"}]}}}
    }
    assert update("SET a.x = :v", "UPDATED_OLD", **{":v": one}) is None  # nothing was there
    assert update("SET a.c[100] = :v", "UPDATED_NEW", **{":v": one}) is None  # appended
    assert update("REMOVE a.c[1], a.c[9]", "UPDATED_OLD") == {
        "a": {"M": {"c": {"L": [{"N": "7"}]}}}
    }


def test_a_remove_only_update_of_a_missing_item_creates_nothing(ddb: Any, tables: Tables) -> None:
    key = _key("never-created")
    for returns in ("ALL_NEW", "ALL_OLD", "UPDATED_NEW", "UPDATED_OLD", "NONE"):
        answer = ddb.update_item(
            TableName=tables.t, Key=key, UpdateExpression="REMOVE a", ReturnValues=returns
        )
        assert "Attributes" not in answer
    legacy = ddb.update_item(
        TableName=tables.t,
        Key=key,
        AttributeUpdates={"a": {"Action": "DELETE"}},
        ReturnValues="ALL_NEW",
    )
    assert "Attributes" not in legacy
    assert "Item" not in ddb.get_item(TableName=tables.t, Key=key)
    created = ddb.update_item(TableName=tables.t, Key=key, ReturnValues="ALL_NEW")
    assert created["Attributes"] == key  # no action at all: the item is created with its key


def test_put_and_delete_return_the_old_item(ddb: Any, tables: Tables) -> None:
    key = _key("old")
    assert "Attributes" not in ddb.put_item(TableName=tables.t, Item=key, ReturnValues="ALL_OLD")
    replaced = ddb.put_item(
        TableName=tables.t, Item={**key, "v": {"N": "2"}}, ReturnValues="ALL_OLD"
    )
    assert replaced["Attributes"] == key
    deleted = ddb.delete_item(TableName=tables.t, Key=key, ReturnValues="ALL_OLD")
    assert deleted["Attributes"] == {**key, "v": {"N": "2"}}
    assert "Attributes" not in ddb.delete_item(TableName=tables.t, Key=key, ReturnValues="ALL_OLD")


@pytest.mark.parametrize("capacity", ["TOTAL", "INDEXES"])
def test_consumed_capacity_and_consistent_reads_are_accepted(
    ddb: Any, tables: Tables, capacity: str
) -> None:
    t = tables.t
    key = _key(f"cap-{capacity}")
    by_table = {"TableName": t, "ReturnConsumedCapacity": capacity}
    answers = [
        ddb.put_item(Item=key, **by_table),
        ddb.get_item(Key=key, ConsistentRead=True, **by_table),
        ddb.update_item(Key=key, **by_table),
        ddb.query(
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": key["pk"]},
            ConsistentRead=True,
            **by_table,
        ),
        ddb.scan(ConsistentRead=True, Limit=1, **by_table),
        ddb.delete_item(Key=key, **by_table),
    ]
    for answer in answers:
        assert answer["ConsumedCapacity"]["TableName"] == t
        assert answer["ConsumedCapacity"]["CapacityUnits"] > 0
    listed = [
        ddb.batch_write_item(
            RequestItems={t: [{"PutRequest": {"Item": key}}]}, ReturnConsumedCapacity=capacity
        ),
        ddb.batch_get_item(
            RequestItems={t: {"Keys": [key], "ConsistentRead": True}},
            ReturnConsumedCapacity=capacity,
        ),
        ddb.transact_write_items(
            TransactItems=[{"Put": {"TableName": t, "Item": key}}],
            ReturnConsumedCapacity=capacity,
        ),
        ddb.transact_get_items(
            TransactItems=[{"Get": {"TableName": t, "Key": key}}], ReturnConsumedCapacity=capacity
        ),
    ]
    for answer in listed:
        assert [entry["TableName"] for entry in answer["ConsumedCapacity"]] == [t]
    assert listed[2]["ConsumedCapacity"][0]["CapacityUnits"] == 2.0  # two units per item
    assert "ConsumedCapacity" not in ddb.get_item(TableName=t, Key=key)


# --- legacy parameters behave like their expression forms -------------------------------


def test_expected_is_a_node_evaluated_condition(ddb: Any, tables: Tables) -> None:
    key = _key("expected")
    ddb.put_item(
        TableName=tables.t, Item={**key, "v": {"N": "1"}}, Expected={"pk": {"Exists": False}}
    )
    code, _ = _error(
        lambda: ddb.put_item(
            TableName=tables.t,
            Item=key,
            Expected={"pk": {"Exists": False}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    )
    assert code == "ConditionalCheckFailedException"
    with pytest.raises(ClientError) as raised:
        ddb.put_item(
            TableName=tables.t,
            Item=key,
            Expected={"v": {"ComparisonOperator": "GT", "AttributeValueList": [{"N": "5"}]}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert raised.value.response["Item"] == {**key, "v": {"N": "1"}}
    # ConditionalOperator OR: either test may hold. A reserved word and a dotted name are
    # plain attribute names here (the generated expression names them by placeholders).
    ddb.put_item(
        TableName=tables.t,
        Item={**key, "v": {"N": "2"}, "size": {"S": "m"}, "a.b": {"S": "dot"}},
        Expected={"v": {"Value": {"N": "9"}}, "missing": {"ComparisonOperator": "NULL"}},
        ConditionalOperator="OR",
    )
    ddb.delete_item(
        TableName=tables.t,
        Key=key,
        Expected={
            "size": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "m"}]},
            "a.b": {"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [{"S": "do"}]},
        },
    )
    assert "Item" not in ddb.get_item(TableName=tables.t, Key=key)


N1, N4, N5, N6 = ({"N": str(n)} for n in (1, 4, 5, 6))
VERDICTS: list[tuple[str, dict[str, Any], str, list[Any], bool]] = [
    # (expression, its values, legacy operator on attribute n or s, its values, holds)
    ("n BETWEEN :a AND :b", {":a": N1, ":b": N5}, "BETWEEN", [N1, N5], True),
    ("n IN (:a, :b)", {":a": N4, ":b": N6}, "IN", [N4, N6], False),
    ("contains(s, :a)", {":a": {"S": "a"}}, "CONTAINS", [{"S": "a"}], True),
    ("NOT contains(s, :a)", {":a": {"S": "a"}}, "NOT_CONTAINS", [{"S": "a"}], False),
    ("n <> :a", {":a": N5}, "NE", [N5], False),
    ("n < :a", {":a": N6}, "LT", [N6], True),
    ("attribute_exists(n)", {}, "NOT_NULL", [], True),
    ("attribute_not_exists(n)", {}, "NULL", [], False),
    ("begins_with(w, :a)", {":a": {"S": "wo"}}, "BEGINS_WITH", [{"S": "wo"}], True),
]


@pytest.mark.parametrize("case", VERDICTS, ids=[case[0] for case in VERDICTS])
def test_expected_and_the_expression_give_the_same_verdicts(
    ddb: Any, tables: Tables, case: tuple[str, dict[str, Any], str, list[Any], bool]
) -> None:
    expression, values, operator, legacy_values, holds = case
    key = _key("verdicts")
    ddb.put_item(
        TableName=tables.t,
        Item={**key, "n": N5, "s": {"SS": ["a", "b"]}, "w": {"S": "word"}},
    )
    attribute = re.findall(r"\b[nsw]\b", expression)[0]
    by_expression: dict[str, Any] = {"ConditionExpression": expression}
    if values:
        by_expression["ExpressionAttributeValues"] = values
    by_legacy = {
        "Expected": {
            attribute: {"ComparisonOperator": operator, "AttributeValueList": legacy_values}
        }
    }
    outcomes = []
    for extra in (by_expression, by_legacy):
        try:
            ddb.update_item(TableName=tables.t, Key=key, **extra)  # no update: changes nothing
            outcomes.append(True)
        except ClientError as error:
            assert error.response["Error"]["Code"] == "ConditionalCheckFailedException"
            outcomes.append(False)
    assert outcomes == [holds, holds]


def test_attribute_updates_are_node_applied_updates(ddb: Any, tables: Tables) -> None:
    key = _key("attribute-updates")
    ddb.put_item(
        TableName=tables.t,
        Item={**key, "n": {"N": "1"}, "gone": {"S": "x"}, "set": {"SS": ["a", "b"]}},
    )
    new = ddb.update_item(
        TableName=tables.t,
        Key=key,
        AttributeUpdates={
            "n": {"Action": "ADD", "Value": {"N": "4"}},
            "gone": {"Action": "DELETE"},
            "set": {"Action": "DELETE", "Value": {"SS": ["a"]}},
            "list": {"Action": "ADD", "Value": {"L": [{"S": "x"}]}},  # legacy ADD appends
            "size": {"Action": "PUT", "Value": {"S": "reserved word"}},
        },
        Expected={"n": {"Value": {"N": "1"}}},
        ReturnValues="ALL_NEW",
    )["Attributes"]
    assert new == {
        **key,
        "n": {"N": "5"},
        "set": {"SS": ["b"]},
        "list": {"L": [{"S": "x"}]},
        "size": {"S": "reserved word"},
    }
    appended = ddb.update_item(
        TableName=tables.t,
        Key=key,
        AttributeUpdates={"list": {"Action": "ADD", "Value": {"L": [{"S": "y"}]}}},
        ReturnValues="UPDATED_NEW",
    )["Attributes"]
    assert appended == {"list": {"L": [{"S": "x"}, {"S": "y"}]}}
    code, message = _error(
        lambda: ddb.update_item(
            TableName=tables.t,
            Key=key,
            AttributeUpdates={"n": {"Action": "ADD", "Value": {"N": "1"}}},
            Expected={"n": {"Value": {"N": "1"}}},
        )
    )
    assert (code, message) == ("ConditionalCheckFailedException", "The conditional request failed")
    assert ddb.get_item(TableName=tables.t, Key=key)["Item"]["n"] == {"N": "5"}


def test_key_conditions_query_filter_and_attributes_to_get(ddb: Any, tables: Tables) -> None:
    for i in range(6):
        ddb.put_item(
            TableName=tables.n,
            Item={"pk": {"S": "legacy"}, "sk": {"N": str(i)}, "odd": {"BOOL": i % 2 == 1}},
        )

    def expression_query(**extra: Any) -> dict[str, Any]:
        return dict(
            ddb.query(
                TableName=tables.n,
                KeyConditionExpression="pk = :p AND sk BETWEEN :lo AND :hi",
                FilterExpression="odd = :t",
                ProjectionExpression="sk",
                ExpressionAttributeValues={
                    ":p": {"S": "legacy"},
                    ":lo": {"N": "1"},
                    ":hi": {"N": "4"},
                    ":t": {"BOOL": True},
                },
                **extra,
            )
        )

    def legacy_query(**extra: Any) -> dict[str, Any]:
        return dict(
            ddb.query(
                TableName=tables.n,
                KeyConditions={
                    "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "legacy"}]},
                    "sk": {
                        "ComparisonOperator": "BETWEEN",
                        "AttributeValueList": [{"N": "1"}, {"N": "4"}],
                    },
                },
                QueryFilter={
                    "odd": {"ComparisonOperator": "EQ", "AttributeValueList": [{"BOOL": True}]}
                },
                AttributesToGet=["sk"],
                **extra,
            )
        )

    for extra in ({}, {"ScanIndexForward": False}, {"Limit": 2}):
        by_expression, by_legacy = expression_query(**extra), legacy_query(**extra)
        for answer in (by_expression, by_legacy):
            answer.pop("ResponseMetadata")
        assert by_expression == by_legacy
    assert legacy_query()["Items"] == [{"sk": {"N": "1"}}, {"sk": {"N": "3"}}]
    # KeyConditions may go with a filter expression (no KeyConditionExpression to clash with).
    mixed = ddb.query(
        TableName=tables.n,
        KeyConditions={"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "legacy"}]}},
        FilterExpression="odd = :f",
        ExpressionAttributeValues={":f": {"BOOL": False}},
    )
    assert [item["sk"]["N"] for item in mixed["Items"]] == ["0", "2", "4"]


def test_scan_filter_and_attributes_to_get(ddb: Any, tables: Tables) -> None:
    table = _create(ddb, sort=None)
    for i in range(8):
        ddb.put_item(
            TableName=table, Item={"pk": {"S": str(i)}, "n": {"N": str(i)}, "x": {"S": "x"}}
        )
    legacy = ddb.scan(
        TableName=table,
        ScanFilter={
            "n": {"ComparisonOperator": "GE", "AttributeValueList": [{"N": "6"}]},
            "pk": {"ComparisonOperator": "IN", "AttributeValueList": [{"S": "0"}, {"S": "1"}]},
        },
        ConditionalOperator="OR",
        AttributesToGet=["n"],
    )
    expression = ddb.scan(
        TableName=table,
        FilterExpression="n >= :six OR pk IN (:zero, :one)",
        ProjectionExpression="n",
        ExpressionAttributeValues={":six": {"N": "6"}, ":zero": {"S": "0"}, ":one": {"S": "1"}},
    )
    assert sorted(item["n"]["N"] for item in legacy["Items"]) == ["0", "1", "6", "7"]
    assert legacy["Items"] == expression["Items"] and legacy["Count"] == expression["Count"]
    got = ddb.get_item(TableName=table, Key={"pk": {"S": "3"}}, AttributesToGet=["x", "none"])
    assert got["Item"] == {"x": {"S": "x"}}
    batch = ddb.batch_get_item(
        RequestItems={table: {"Keys": [{"pk": {"S": "3"}}], "AttributesToGet": ["n"]}}
    )
    assert batch["Responses"][table] == [{"n": {"N": "3"}}]
    code, message = _error(
        lambda: ddb.scan(TableName=table, AttributesToGet=["n"], Select="ALL_ATTRIBUTES")
    )
    assert code == "ValidationException" and "AttributesToGet" in message


# --- the AWS CLI, when it is installed --------------------------------------------------


def _aws_cli(cluster: LocalNodes, *args: str) -> subprocess.CompletedProcess[str]:
    """``aws dynamodb ...`` configured only by the environment (no files of the machine)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="admin",
        AWS_SECRET_ACCESS_KEY=cluster.tokens["admin"],
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL_DYNAMODB=cluster.api(),
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_MAX_ATTEMPTS="1",
    )
    return subprocess.run(
        ["aws", "dynamodb", *args, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI is not installed")
def test_the_aws_cli(cluster: LocalNodes, tables: Tables) -> None:
    """Hand-written CLI input meets the reserved words boto3's builders never send; the legacy
    parameters work from the CLI too."""
    key = json.dumps(_key("cli"))
    put = _aws_cli(
        cluster,
        "put-item",
        "--table-name",
        tables.t,
        "--item",
        json.dumps({**_key("cli"), "size": {"N": "1"}}),
    )
    assert put.returncode == 0, put.stderr
    refused = _aws_cli(
        cluster,
        "update-item",
        "--table-name",
        tables.t,
        "--key",
        key,
        "--update-expression",
        "SET size = size + :one",
        "--expression-attribute-values",
        json.dumps({":one": {"N": "1"}}),
    )
    assert refused.returncode != 0
    assert "(ValidationException)" in refused.stderr
    assert "reserved keyword: size" in refused.stderr
    legacy = _aws_cli(
        cluster,
        "update-item",
        "--table-name",
        tables.t,
        "--key",
        key,
        "--attribute-updates",
        json.dumps({"size": {"Action": "ADD", "Value": {"N": "1"}}}),
        "--return-values",
        "UPDATED_NEW",
    )
    assert legacy.returncode == 0, legacy.stderr
    assert json.loads(legacy.stdout)["Attributes"] == {"size": {"N": "2"}}
    queried = _aws_cli(
        cluster,
        "query",
        "--table-name",
        tables.t,
        "--key-conditions",
        json.dumps({"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "cli"}]}}),
    )
    assert queried.returncode == 0, queried.stderr
    assert json.loads(queried.stdout)["Items"] == [{**_key("cli"), "size": {"N": "2"}}]
