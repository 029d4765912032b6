"""The DynamoDB-compatible endpoint driven by boto3, unmodified, against a real cluster.

Goal: issue 21's promise that DynamoDB applications run unchanged against the store. Method: one
cluster for the module (three storage nodes, 8 partitions, one coordinator, separate processes),
a boto3 client whose endpoint is the coordinator's public API and whose credentials are an API
token (access key id = the token's name, secret access key = the token); each test uses tables
of its own.

Every operation the endpoint serves is exercised and checked through boto3's own parsing: tables
(create, describe, list with pages, update, delete), typed items round-tripping every type,
conditions and update expressions evaluated on the nodes, ReturnValues, Query (every sort-key
test, both directions, Limit/ExclusiveStartKey pages, filters, COUNT), Scan with pages and
segments, TransactWriteItems across two tables (conditions, cancellation reasons, idempotency),
TransactGetItems, BatchGetItem and BatchWriteItem, the errors' shapes, and contended transactions
that lose no update.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from support.api import api_cluster
from support.cluster import LocalNodes

from kvstore.limits import DYNAMODB_SCHEMA_CACHE_MS

REGION = "us-east-1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    with api_cluster(tmp_path_factory.mktemp("dynamodb")) as nodes:
        yield nodes


def _client(nodes: LocalNodes, role: str = "admin", **config: Any) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=nodes.api(),
        region_name=REGION,
        aws_access_key_id=role,
        aws_secret_access_key=nodes.tokens[role],
        config=Config(**config) if config else None,
    )


@pytest.fixture(scope="module")
def ddb(cluster: LocalNodes) -> Any:
    return _client(cluster)


def _table(ddb: Any, *, sort: str | None = "S", hash_type: str = "S") -> str:
    return _table_named(ddb, f"t-{uuid.uuid4().hex[:10]}", sort=sort, hash_type=hash_type)


def _table_named(ddb: Any, name: str, *, sort: str | None = None, hash_type: str = "S") -> str:
    schema = [{"AttributeName": "pk", "KeyType": "HASH"}]
    definitions = [{"AttributeName": "pk", "AttributeType": hash_type}]
    if sort is not None:
        schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
        definitions.append({"AttributeName": "sk", "AttributeType": sort})
    created = ddb.create_table(
        TableName=name,
        KeySchema=schema,
        AttributeDefinitions=definitions,
        BillingMode="PAY_PER_REQUEST",
    )
    assert created["TableDescription"]["TableStatus"] == "CREATING"
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    return name


def _code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


def test_tables_lifecycle(ddb: Any) -> None:
    names = sorted(_table(ddb) for _ in range(3))
    described = ddb.describe_table(TableName=names[0])["Table"]
    assert described["TableStatus"] == "ACTIVE"
    assert described["KeySchema"][0] == {"AttributeName": "pk", "KeyType": "HASH"}
    listed: list[str] = []
    kwargs: dict[str, Any] = {"Limit": 2}
    for _ in range(100):
        page = ddb.list_tables(**kwargs)
        listed.extend(page["TableNames"])
        if "LastEvaluatedTableName" not in page:
            break
        kwargs["ExclusiveStartTableName"] = page["LastEvaluatedTableName"]
    assert set(names) <= set(listed)
    assert listed == sorted(listed)
    with pytest.raises(ClientError) as raised:
        ddb.create_table(
            TableName=names[0],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    assert _code(raised.value) == "ResourceInUseException"
    deleted = ddb.delete_table(TableName=names[0])
    assert deleted["TableDescription"]["TableStatus"] == "DELETING"
    assert ddb.describe_table(TableName=names[0])["Table"]["TableStatus"] == "DELETING"
    with pytest.raises(ClientError) as raised:  # until its items are purged
        ddb.create_table(
            TableName=names[0],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    assert _code(raised.value) == "ResourceInUseException"
    with pytest.raises(ClientError) as raised:
        ddb.put_item(TableName=names[0], Item={"pk": {"S": "a"}, "sk": {"S": "b"}})
    assert _code(raised.value) == "ResourceNotFoundException"
    assert "not found" in raised.value.response["Error"]["Message"]


def test_item_types_round_trip(ddb: Any) -> None:
    table = _table(ddb)
    item = {
        "pk": {"S": "types"},
        "sk": {"S": "1"},
        "s": {"S": "héllo"},
        "n": {"N": "-12.500"},
        "big": {"N": "1E+125"},
        "b": {"B": b"\x00\xff"},
        "t": {"BOOL": True},
        "z": {"NULL": True},
        "l": {"L": [{"S": "x"}, {"N": "1"}, {"L": []}]},
        "m": {"M": {"a": {"M": {"b": {"SS": ["p", "q"]}}}}},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2.50"]},
        "bs": {"BS": [b"a", b"b"]},
        "empty": {"S": ""},
    }
    ddb.put_item(TableName=table, Item=item)
    got = ddb.get_item(TableName=table, Key={"pk": {"S": "types"}, "sk": {"S": "1"}})["Item"]
    assert got["n"] == {"N": "-12.5"}
    assert got["big"] == {"N": "1" + "0" * 125}
    assert got["b"] == {"B": b"\x00\xff"}
    assert sorted(got["ns"]["NS"]) == ["1", "2.5"]
    assert got["m"] == item["m"] and got["l"] == item["l"] and got["empty"] == {"S": ""}
    missing = ddb.get_item(TableName=table, Key={"pk": {"S": "nope"}, "sk": {"S": "1"}})
    assert "Item" not in missing
    with pytest.raises(ClientError) as raised:
        ddb.put_item(
            TableName=table, Item={"pk": {"S": "x"}, "sk": {"S": "1"}, "n": {"N": "1" * 39}}
        )
    assert _code(raised.value) == "ValidationException"
    assert "significant" in raised.value.response["Error"]["Message"]


def test_conditions_and_updates_on_the_node(ddb: Any) -> None:
    table = _table(ddb)
    key = {"pk": {"S": "acct"}, "sk": {"S": "a"}}
    ddb.put_item(
        TableName=table,
        Item={**key, "balance": {"N": "10"}, "tags": {"SS": ["x"]}},
        ConditionExpression="attribute_not_exists(pk)",
    )
    with pytest.raises(ClientError) as raised:
        ddb.put_item(
            TableName=table,
            Item={**key, "balance": {"N": "0"}},
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert _code(raised.value) == "ConditionalCheckFailedException"
    assert raised.value.response["Item"]["balance"] == {"N": "10"}
    updated = ddb.update_item(
        TableName=table,
        Key=key,
        UpdateExpression=(
            "SET #b = #b - :amount, hist = list_append(if_not_exists(hist, :empty), :entry) "
            "ADD tags :more, visits :one"
        ),
        ConditionExpression="#b >= :amount AND contains(tags, :x)",
        ExpressionAttributeNames={"#b": "balance"},
        ExpressionAttributeValues={
            ":amount": {"N": "3"},
            ":empty": {"L": []},
            ":entry": {"L": [{"N": "3"}]},
            ":more": {"SS": ["y"]},
            ":one": {"N": "1"},
            ":x": {"S": "x"},
        },
        ReturnValues="ALL_NEW",
    )["Attributes"]
    assert updated["balance"] == {"N": "7"}
    assert updated["hist"] == {"L": [{"N": "3"}]}
    assert sorted(updated["tags"]["SS"]) == ["x", "y"]
    assert updated["visits"] == {"N": "1"}
    with pytest.raises(ClientError) as raised:
        ddb.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET balance = balance - :a",
            ConditionExpression="balance >= :a",
            ExpressionAttributeValues={":a": {"N": "100"}},
        )
    assert _code(raised.value) == "ConditionalCheckFailedException"
    old = ddb.update_item(
        TableName=table,
        Key=key,
        UpdateExpression="REMOVE hist DELETE tags :x",
        ExpressionAttributeValues={":x": {"SS": ["x"]}},
        ReturnValues="UPDATED_OLD",
    )["Attributes"]
    assert set(old) == {"hist", "tags"}
    item = ddb.get_item(TableName=table, Key=key, ProjectionExpression="balance, tags")["Item"]
    assert item == {"balance": {"N": "7"}, "tags": {"SS": ["y"]}}
    deleted = ddb.delete_item(TableName=table, Key=key, ReturnValues="ALL_OLD")["Attributes"]
    assert deleted["balance"] == {"N": "7"}
    with pytest.raises(ClientError) as raised:
        ddb.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET pk = :v",
            ExpressionAttributeValues={":v": {"S": "other"}},
        )
    assert _code(raised.value) == "ValidationException"
    with pytest.raises(ClientError) as raised:
        ddb.put_item(
            TableName=table,
            Item=key,
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":unused": {"S": "u"}},
        )
    assert _code(raised.value) == "ValidationException"
    assert "unused" in raised.value.response["Error"]["Message"]


def test_query_sort_key_tests_and_pages(ddb: Any) -> None:
    table = _table(ddb, sort="N")
    numbers = [Decimal(x) for x in ("-100", "-1.5", "0", "0.25", "1", "2", "10", "1e3")]
    for number in numbers:
        ddb.put_item(
            TableName=table,
            Item={"pk": {"S": "h"}, "sk": {"N": str(number)}, "odd": {"BOOL": number % 2 == 1}},
        )
    ddb.put_item(TableName=table, Item={"pk": {"S": "other"}, "sk": {"N": "5"}})

    def query(condition: str, values: dict[str, Any], **extra: Any) -> list[Decimal]:
        found: list[Decimal] = []
        start: dict[str, Any] | None = None
        for _ in range(50):
            kwargs = dict(extra)
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            page = ddb.query(
                TableName=table,
                KeyConditionExpression=condition,
                ExpressionAttributeValues={":h": {"S": "h"}, **values},
                **kwargs,
            )
            found.extend(Decimal(item["sk"]["N"]) for item in page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if start is None:
                return found
        raise AssertionError("the query did not end")

    ordered = sorted(numbers)
    assert query("pk = :h", {}) == ordered
    assert query("pk = :h", {}, ScanIndexForward=False, Limit=3) == ordered[::-1]
    assert query("pk = :h AND sk < :v", {":v": {"N": "1"}}, Limit=2) == [
        n for n in ordered if n < 1
    ]
    assert query("pk = :h AND sk <= :v", {":v": {"N": "1"}}) == [n for n in ordered if n <= 1]
    assert query("pk = :h AND sk > :v", {":v": {"N": "0"}}) == [n for n in ordered if n > 0]
    assert query("pk = :h AND sk >= :v", {":v": {"N": "0"}}) == [n for n in ordered if n >= 0]
    assert query("pk = :h AND sk = :v", {":v": {"N": "1000"}}) == [Decimal(1000)]
    assert query("pk = :h AND sk BETWEEN :a AND :b", {":a": {"N": "-2"}, ":b": {"N": "1"}}) == [
        n for n in ordered if -2 <= n <= 1
    ]
    filtered = ddb.query(
        TableName=table,
        KeyConditionExpression="pk = :h",
        FilterExpression="odd = :t",
        ExpressionAttributeValues={":h": {"S": "h"}, ":t": {"BOOL": True}},
    )
    assert filtered["Count"] == 1 and filtered["ScannedCount"] == len(numbers)
    counted = ddb.query(
        TableName=table,
        KeyConditionExpression="pk = :h",
        ExpressionAttributeValues={":h": {"S": "h"}},
        Select="COUNT",
    )
    assert counted["Count"] == len(numbers) and "Items" not in counted


def test_query_begins_with_and_binary_order(ddb: Any) -> None:
    table = _table(ddb, sort="S")
    for sk in ("a", "ab", "abc", "abd", "b", "é"):
        ddb.put_item(TableName=table, Item={"pk": {"S": "h"}, "sk": {"S": sk}})
    page = ddb.query(
        TableName=table,
        KeyConditionExpression="pk = :h AND begins_with(sk, :p)",
        ExpressionAttributeValues={":h": {"S": "h"}, ":p": {"S": "ab"}},
    )
    assert [item["sk"]["S"] for item in page["Items"]] == ["ab", "abc", "abd"]
    binary = _table(ddb, sort="B")
    for raw in (b"\x00", b"\x00\x01", b"\x7f", b"\x80", b"\xff"):
        ddb.put_item(TableName=binary, Item={"pk": {"S": "h"}, "sk": {"B": raw}})
    page = ddb.query(
        TableName=binary,
        KeyConditionExpression="pk = :h",
        ExpressionAttributeValues={":h": {"S": "h"}},
        ScanIndexForward=False,
    )
    assert [item["sk"]["B"] for item in page["Items"]] == [
        b"\xff",
        b"\x80",
        b"\x7f",
        b"\x00\x01",
        b"\x00",
    ]


def test_scan_pages_segments_and_filters(ddb: Any) -> None:
    table = _table(ddb, sort=None, hash_type="N")
    for number in range(60):
        ddb.put_item(
            TableName=table, Item={"pk": {"N": str(number)}, "even": {"BOOL": number % 2 == 0}}
        )
    paginator = ddb.get_paginator("scan")
    seen = [
        int(item["pk"]["N"])
        for page in paginator.paginate(TableName=table, PaginationConfig={"PageSize": 7})
        for item in page["Items"]
    ]
    assert sorted(seen) == list(range(60))
    segments: list[int] = []
    for segment in range(3):
        for page in paginator.paginate(TableName=table, Segment=segment, TotalSegments=3):
            segments.extend(int(item["pk"]["N"]) for item in page["Items"])
    assert sorted(segments) == list(range(60))
    evens = [
        int(item["pk"]["N"])
        for page in paginator.paginate(
            TableName=table,
            FilterExpression="even = :t",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )
        for item in page["Items"]
    ]
    assert sorted(evens) == list(range(0, 60, 2))


def test_transactions_across_two_tables(ddb: Any) -> None:
    accounts = _table(ddb, sort=None)
    audit = _table(ddb)
    ddb.put_item(TableName=accounts, Item={"pk": {"S": "alice"}, "balance": {"N": "100"}})
    ddb.put_item(TableName=accounts, Item={"pk": {"S": "bob"}, "balance": {"N": "0"}})

    def transfer(amount: int, token: str | None = None) -> None:
        kwargs: dict[str, Any] = {} if token is None else {"ClientRequestToken": token}
        entry = token or uuid.uuid4().hex  # the same request again for the same token
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": accounts,
                        "Key": {"pk": {"S": "alice"}},
                        "UpdateExpression": "SET balance = balance - :a",
                        "ConditionExpression": "balance >= :a",
                        "ExpressionAttributeValues": {":a": {"N": str(amount)}},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                },
                {
                    "Update": {
                        "TableName": accounts,
                        "Key": {"pk": {"S": "bob"}},
                        "UpdateExpression": "SET balance = balance + :a",
                        "ExpressionAttributeValues": {":a": {"N": str(amount)}},
                    }
                },
                {
                    "Put": {
                        "TableName": audit,
                        "Item": {"pk": {"S": "log"}, "sk": {"S": entry}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "ConditionCheck": {
                        "TableName": accounts,
                        "Key": {"pk": {"S": "carol"}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ],
            **kwargs,
        )

    transfer(30, token="tok-1")
    transfer(30, token="tok-1")  # a retry with the same token: applied once
    with pytest.raises(ClientError) as raised:
        transfer(31, token="tok-1")
    assert _code(raised.value) == "IdempotentParameterMismatchException"
    with pytest.raises(ClientError) as raised:
        transfer(500)
    error = raised.value.response
    assert error["Error"]["Code"] == "TransactionCanceledException"
    reasons = error["CancellationReasons"]
    assert [reason["Code"] for reason in reasons] == [
        "ConditionalCheckFailed",
        "None",
        "None",
        "None",
    ]
    assert reasons[0]["Item"]["balance"] == {"N": "70"}
    got = ddb.transact_get_items(
        TransactItems=[
            {"Get": {"TableName": accounts, "Key": {"pk": {"S": "alice"}}}},
            {"Get": {"TableName": accounts, "Key": {"pk": {"S": "bob"}}}},
            {"Get": {"TableName": accounts, "Key": {"pk": {"S": "nobody"}}}},
        ]
    )["Responses"]
    assert got[0]["Item"]["balance"] == {"N": "70"}
    assert got[1]["Item"]["balance"] == {"N": "30"}
    assert got[2] == {}
    logged = ddb.query(
        TableName=audit,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "log"}},
    )
    assert logged["Count"] == 1
    with pytest.raises(ClientError) as raised:
        ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": accounts, "Item": {"pk": {"S": "x"}}}},
                {"Delete": {"TableName": accounts, "Key": {"pk": {"S": "x"}}}},
            ]
        )
    assert _code(raised.value) == "ValidationException"
    assert "one item" in raised.value.response["Error"]["Message"]


def test_batches(ddb: Any) -> None:
    table = _table(ddb)
    written = ddb.batch_write_item(
        RequestItems={
            table: [
                {"PutRequest": {"Item": {"pk": {"S": "b"}, "sk": {"S": str(i)}}}} for i in range(25)
            ]
        }
    )
    assert written["UnprocessedItems"] == {}
    keys = [{"pk": {"S": "b"}, "sk": {"S": str(i)}} for i in range(30)]
    got = ddb.batch_get_item(RequestItems={table: {"Keys": keys[:100]}})
    assert len(got["Responses"][table]) == 25
    assert got["UnprocessedKeys"] == {}
    ddb.batch_write_item(
        RequestItems={table: [{"DeleteRequest": {"Key": key}} for key in keys[:10]]}
    )
    got = ddb.batch_get_item(RequestItems={table: {"Keys": keys[:20]}})
    assert len(got["Responses"][table]) == 10
    with pytest.raises(ClientError) as raised:
        ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": keys[0]}}] * 2})
    assert "duplicates" in raised.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as raised:
        ddb.batch_write_item(
            RequestItems={table: [{"PutRequest": {"Item": key}} for key in keys[:26]]}
        )
    assert _code(raised.value) == "ValidationException"


def test_read_only_token_cannot_write(cluster: LocalNodes, ddb: Any) -> None:
    table = _table(ddb)
    reader = _client(cluster, "read-only")
    assert "Item" not in reader.get_item(TableName=table, Key={"pk": {"S": "a"}, "sk": {"S": "b"}})
    with pytest.raises(ClientError) as raised:
        reader.put_item(TableName=table, Item={"pk": {"S": "a"}, "sk": {"S": "b"}})
    assert _code(raised.value) == "AccessDeniedException"


def test_contended_transactional_increments_lose_no_update(ddb: Any) -> None:
    """Eight threads each add 1 to two counters in one TransactWriteItems, 15 times, retrying
    cancellations for conflicts (botocore does not retry them): every increment lands once."""
    table = _table(ddb, sort=None)
    for name in ("c1", "c2"):
        ddb.put_item(TableName=table, Item={"pk": {"S": name}, "n": {"N": "0"}})
    threads_count, rounds = 8, 15
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(rounds):
                for _attempt in range(200):
                    try:
                        ddb.transact_write_items(
                            TransactItems=[
                                {
                                    "Update": {
                                        "TableName": table,
                                        "Key": {"pk": {"S": name}},
                                        "UpdateExpression": "ADD n :one",
                                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                                    }
                                }
                                for name in ("c1", "c2")
                            ]
                        )
                        break
                    except ClientError as error:
                        if _code(error) != "TransactionCanceledException":
                            raise
                        codes = {r["Code"] for r in error.response["CancellationReasons"]}
                        assert codes <= {"None", "TransactionConflict"}, codes
                else:
                    raise AssertionError("a transaction never committed")
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for name in ("c1", "c2"):
        item = ddb.get_item(TableName=table, Key={"pk": {"S": name}})["Item"]
        assert item["n"] == {"N": str(threads_count * rounds)}


def test_pages_of_large_items(ddb: Any) -> None:
    """Items near the 400 KB limit: a Query and a Scan page stop at 1 MB (LastEvaluatedKey),
    and the store calls behind them stay within one message each."""
    table = _table(ddb, sort="N")
    blob = b"x" * 350_000
    for number in range(12):
        ddb.put_item(
            TableName=table, Item={"pk": {"S": "big"}, "sk": {"N": str(number)}, "b": {"B": blob}}
        )
    pages = list(
        ddb.get_paginator("query").paginate(
            TableName=table,
            KeyConditionExpression="pk = :h",
            ExpressionAttributeValues={":h": {"S": "big"}},
            ScanIndexForward=False,
        )
    )
    found = [int(item["sk"]["N"]) for page in pages for item in page["Items"]]
    assert found == list(range(11, -1, -1))
    assert len(pages) >= 4, [len(page["Items"]) for page in pages]  # about 3 items per MB
    scanned = [
        item["sk"]["N"]
        for page in ddb.get_paginator("scan").paginate(TableName=table)
        for item in page["Items"]
    ]
    assert sorted(map(int, scanned)) == list(range(12))


def test_every_api_process_serves_the_same_tables(cluster: LocalNodes, ddb: Any) -> None:
    """A table created through the coordinator is usable at once through each storage node's
    API (every node serves it), and their writes meet in one transaction history."""
    table = _table(ddb, sort=None)
    clients = [
        boto3.client(
            "dynamodb",
            endpoint_url=f"http://{cluster.address(node)}",
            region_name=REGION,
            aws_access_key_id="read-write",
            aws_secret_access_key=cluster.tokens["read-write"],
        )
        for node in ("n1", "n2", "n3")
    ]
    for index, client in enumerate(clients):
        client.put_item(TableName=table, Item={"pk": {"S": f"k{index}"}, "n": {"N": "0"}})
    for index, client in enumerate(clients):
        client.update_item(
            TableName=table,
            Key={"pk": {"S": f"k{(index + 1) % 3}"}},
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    got = ddb.batch_get_item(
        RequestItems={table: {"Keys": [{"pk": {"S": f"k{i}"}} for i in range(3)]}}
    )["Responses"][table]
    assert sorted(item["n"]["N"] for item in got) == ["1", "1", "1"]
    ddb.delete_table(TableName=table)
    # Another front end may serve the table from its schema cache for DYNAMODB_SCHEMA_CACHE_MS
    # (DynamoDB's own DeleteTable is asynchronous too); then it is gone there as well.
    deadline = time.monotonic() + 3 * DYNAMODB_SCHEMA_CACHE_MS / 1000
    while True:
        try:
            clients[0].get_item(TableName=table, Key={"pk": {"S": "k0"}})
        except ClientError as error:
            assert _code(error) == "ResourceNotFoundException"
            break
        assert time.monotonic() < deadline, "the deleted table is still served"
        time.sleep(0.05)


def test_a_deleted_table_is_purged_and_its_name_is_free_again(ddb: Any) -> None:
    """The janitor of the API processes purges a deleted table after its grace (10 s), then
    removes its record: DescribeTable stops answering, and the name can be created afresh,
    empty."""
    table = _table(ddb, sort=None)
    for index in range(30):
        ddb.put_item(TableName=table, Item={"pk": {"S": f"k{index}"}})
    ddb.delete_table(TableName=table)
    deadline = time.monotonic() + 60  # grace, then passes every 2.5-7.5 s: about 20 s
    while True:
        try:
            status = ddb.describe_table(TableName=table)["Table"]["TableStatus"]
        except ClientError as error:
            assert _code(error) == "ResourceNotFoundException"
            break
        assert status == "DELETING"
        assert time.monotonic() < deadline, "the deleted table was never purged"
        time.sleep(0.5)
    again = _table_named(ddb, table)
    assert ddb.scan(TableName=again)["Count"] == 0
