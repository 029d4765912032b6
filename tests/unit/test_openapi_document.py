"""The OpenAPI 3.1 document of the public HTTP API (``kvstore/api/openapi.json``).

Checks that the document is a valid OpenAPI 3.1 document with exactly the routes of
docs/api.md, that its examples validate against their schemas (JSON Schema Draft 2020-12, with
the ``jsonschema_rs`` validator schemathesis itself uses), and that its schemas agree with what
the server validates: the JSON forms the store produces (``condition_to_json``, ``op_to_json``,
timestamps, transaction ids) are accepted, the limits are the ones of ``kvstore.limits``, and
the enums list every code of the catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path as FsPath
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvstore
from kvstore import limits
from kvstore.conditions import (
    VERSION_MAX,
    AllOf,
    AnyOf,
    Compare,
    CompareOperator,
    Condition,
    Exists,
    Not,
    VersionEquals,
    condition_from_json,
    condition_to_json,
)
from kvstore.errors import ErrorCode, ValidationError
from kvstore.messages import ReasonCode, TxnState
from kvstore.ops import Op, OpKind, op_from_json, op_to_json, validate_token
from kvstore.paths import parse_path
from kvstore.recover import Driven, Stuck, report_to_json
from kvstore.timestamps import new_txn_id
from kvstore.types import ORIGIN_MAX, PartitionId, Timestamp, timestamp_from_text
from kvstore.updates import ActionKind, UpdateAction
from kvstore.values import INT_MAX, INT_MIN, validate_key

DOCUMENT_PATH = FsPath(kvstore.__file__).parent / "api" / "openapi.json"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

EXPECTED_OPERATIONS = {
    ("/v1/kv/{key}", "get"): "getItem",
    ("/v1/kv/{key}", "put"): "putItem",
    ("/v1/kv/{key}", "delete"): "deleteItem",
    ("/v1/txn", "post"): "transact",
    ("/v1/read", "post"): "readTxn",
    ("/v1/scan", "get"): "scan",
    ("/v1/txn/{token}", "get"): "getTxnOutcome",
    ("/v1/health", "get"): "health",
    ("/v1/openapi.json", "get"): "openapi",
    ("/v1/admin/recover", "post"): "adminRecover",
    ("/metrics", "get"): "metrics",
}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@cache
def document() -> dict[str, Any]:
    with DOCUMENT_PATH.open(encoding="utf-8") as file:
        loaded: dict[str, Any] = json.load(file)
    return loaded


@cache
def validator(name: str) -> jsonschema_rs.Draft202012Validator:
    """A Draft 2020-12 validator for ``components.schemas[name]`` (references resolved)."""
    return schema_validator({"$ref": f"#/components/schemas/{name}"})


def schema_validator(schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    """A validator for a schema taken from the document: ``#/components/...`` references
    resolve because the document's components sit beside it in the root."""
    root = {"$schema": DRAFT_2020_12, "components": document()["components"], **schema}
    return jsonschema_rs.Draft202012Validator(root)


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def resolve(obj: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (responses, schemas) to the object it names."""
    while "$ref" in obj:
        node: Any = document()
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def walk(node: object, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object of the document with its JSON pointer."""
    if isinstance(node, dict):
        yield where, node
        for name, child in node.items():
            yield from walk(child, f"{where}/{name}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from walk(child, f"{where}/{index}")


# --- the document itself --------------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "kvstore"
    assert doc["info"]["version"] == "0.1.0"
    assert doc["info"]["description"]
    assert doc["servers"] == [{"url": "http://127.0.0.1:8080"}]
    loaded_schema = schemathesis.openapi.from_dict(doc)
    loaded_schema.validate()  # against the OpenAPI 3.1 meta-schema; raises when invalid
    loaded = {(op.ok().path, op.ok().method.lower()) for op in loaded_schema.get_all_operations()}
    assert loaded == set(EXPECTED_OPERATIONS)


def test_component_schemas_are_valid_draft_2020_12() -> None:
    for name, schema in document()["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid({"$schema": DRAFT_2020_12, **schema}), name


def test_every_reference_resolves() -> None:
    for where, obj in walk(document()):
        if "$ref" in obj:
            assert obj["$ref"].startswith("#/"), where
            assert resolve(obj), where


def test_routes_and_operation_ids() -> None:
    found = {(path, method): op["operationId"] for path, method, op in operations()}
    assert found == EXPECTED_OPERATIONS


def test_security() -> None:
    doc = document()
    bearer = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{"bearerAuth": []}]
    for path, method, operation in operations():
        if (path, method) == ("/v1/health", "get"):
            assert operation["security"] == []
        else:
            assert "security" not in operation, (path, method)
            assert "401" in operation["responses"], (path, method)
            # Every role allows /metrics, so only there no token is ever refused with 403.
            forbidden_possible = (path, method) != ("/metrics", "get")
            assert ("403" in operation["responses"]) == forbidden_possible, (path, method)


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/v1/kv/{key}", "get", {"200", "400", "401", "403", "404", "409", "503"}),
        (
            "/v1/kv/{key}",
            "put",
            {"200", "400", "401", "403", "409", "412", "413", "503", "504"},
        ),
        (
            "/v1/kv/{key}",
            "delete",
            {"200", "400", "401", "403", "409", "412", "413", "503", "504"},
        ),
        ("/v1/txn", "post", {"200", "400", "401", "403", "409", "413", "422", "503", "504"}),
        ("/v1/read", "post", {"200", "400", "401", "403", "409", "413", "503"}),
        ("/v1/scan", "get", {"200", "400", "401", "403", "503"}),
        ("/v1/txn/{token}", "get", {"200", "400", "401", "403", "404", "503"}),
        ("/v1/health", "get", {"200"}),
        ("/v1/openapi.json", "get", {"200", "401", "403"}),
        ("/v1/admin/recover", "post", {"200", "400", "401", "403", "413", "503"}),
        ("/metrics", "get", {"200", "401"}),
    ],
)
def test_documented_statuses(path: str, method: str, statuses: set[str]) -> None:
    assert set(document()["paths"][path][method]["responses"]) == statuses


def test_error_responses_use_the_error_schema() -> None:
    for path, method, operation in operations():
        for status, response in operation["responses"].items():
            assert status != "500", (path, method)  # never documented: the fuzz run fails on 5xx
            if status.startswith("2"):
                continue
            resolved = resolve(response)
            assert set(resolved["content"]) == {"application/json"}, (path, method, status)
            media = resolved["content"]["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/Error"}
            if status == "503":
                assert resolved["headers"]["Retry-After"]["required"] is True
            if status == "401":
                assert resolved["headers"]["WWW-Authenticate"]["required"] is True


def test_metrics_is_plain_text() -> None:
    responses = document()["paths"]["/metrics"]["get"]["responses"]
    assert set(responses["200"]["content"]) == {"text/plain"}


def test_main_request_bodies_have_examples() -> None:
    for path, method, operation in operations():
        if "requestBody" in operation:
            media = operation["requestBody"]["content"]["application/json"]
            assert "example" in media, (path, method)


def test_every_example_validates() -> None:
    checked = 0
    for where, obj in walk(document()):
        if "example" in obj:
            target = obj.get("schema", obj)
            errors = [e.message for e in schema_validator(target).iter_errors(obj["example"])]
            assert not errors, (where, errors)
            checked += 1
        if isinstance(obj.get("examples"), list):  # JSON Schema examples (of the object itself)
            for example in obj["examples"]:
                errors = [e.message for e in schema_validator(obj).iter_errors(example)]
                assert not errors, (where, example, errors)
                checked += 1
    assert checked >= 20


# --- agreement with the catalogue and the limits --------------------------------------------


def schema(name: str) -> dict[str, Any]:
    found: dict[str, Any] = document()["components"]["schemas"][name]
    return found


def test_error_codes_match_the_catalogue() -> None:
    enum = schema("ErrorBody")["properties"]["code"]["enum"]
    assert set(enum) == {code.name for code in ErrorCode}
    assert len(enum) == len(set(enum))
    assert schema("ErrorBody").get("additionalProperties", True) is not False
    assert set(schema("ErrorBody")["required"]) == {"code", "number", "message", "retryable"}


def test_reason_and_state_enums() -> None:
    assert set(schema("Reason")["properties"]["code"]["enum"]) == {c.value for c in ReasonCode}
    assert set(schema("TxnOutcome")["properties"]["state"]["enum"]) == {s.value for s in TxnState}


def test_limits_match_kvstore_limits() -> None:
    assert schema("Key")["minLength"] == 1
    assert schema("Key")["maxLength"] == limits.KEY_BYTES_MAX
    assert schema("Path")["maxLength"] == limits.PATH_BYTES_MAX
    token = schema("IdempotencyToken")
    assert (token["minLength"], token["maxLength"]) == (1, limits.TOKEN_BYTES_MAX)
    ops = schema("TxnRequest")["properties"]["ops"]
    assert (ops["minItems"], ops["maxItems"]) == (1, limits.TXN_OPS_MAX_DEFAULT)
    keys = schema("ReadRequest")["properties"]["keys"]
    assert (keys["minItems"], keys["maxItems"]) == (1, limits.READ_KEYS_MAX)
    params = {p["name"]: p for p in document()["paths"]["/v1/scan"]["get"]["parameters"]}
    assert set(params) == {"prefix", "start", "end", "limit", "cursor"}
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": limits.SCAN_PAGE_ITEMS_MAX,
        "default": 100,
    }
    version = schema("VersionCondition")["properties"]["version"]
    assert (version["minimum"], version["maximum"]) == (0, VERSION_MAX)


def test_request_objects_refuse_unknown_members() -> None:
    for name in (
        "TxnRequest",
        "ReadRequest",
        "PutRequest",
        "DeleteRequest",
        "RecoverRequest",
        "RecoverResponse",
        "StuckTransaction",
        "PutOp",
        "DeleteOp",
        "UpdateOp",
        "CheckOp",
        "ExistsCondition",
        "VersionCondition",
        "AllCondition",
        "AnyCondition",
        "NotCondition",
    ):
        assert schema(name)["additionalProperties"] is False, name
    for branch in schema("CompareCondition")["oneOf"]:
        assert branch["additionalProperties"] is False
    assert not validator("PutRequest").is_valid({"value": 1, "extra": 2})
    assert not validator("DeleteRequest").is_valid({"if": {"exists": True}, "x": 1})
    assert validator("DeleteRequest").is_valid({})
    assert validator("RecoverRequest").is_valid({})
    assert not validator("RecoverRequest").is_valid({"older_than_ms": -1})
    assert not validator("RecoverRequest").is_valid({"dry_run": 1})
    assert not validator("TxnRequest").is_valid({"ops": [{"op": "delete", "key": "a"}], "x": 1})


# --- agreement with the server's parsers ----------------------------------------------------

# JSON values (no bytes: the HTTP API has none) with integers in the stored range.
json_values: st.SearchStrategy[object] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)
names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="."),
    min_size=1,
    max_size=4,
)
attribute_paths = st.lists(names, max_size=4).map(tuple)
# Public keys: U+0000 first is the store's own namespace (the DynamoDB endpoint's).
keys = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20).filter(
    lambda key: not key.startswith("\x00")
)


def conditions(depth: int = 0) -> st.SearchStrategy[Condition]:
    leaves: st.SearchStrategy[Condition] = (
        st.builds(Exists, st.booleans())
        | st.builds(VersionEquals, st.integers(0, VERSION_MAX))
        | st.builds(Compare, attribute_paths, st.sampled_from(CompareOperator), json_values)
    )
    if depth >= 3:
        return leaves
    inner = st.deferred(lambda: conditions(depth + 1))
    return (
        leaves
        | st.builds(AllOf, st.lists(inner, min_size=1, max_size=3).map(tuple))
        | st.builds(AnyOf, st.lists(inner, min_size=1, max_size=3).map(tuple))
        | st.builds(Not, inner)
    )


@st.composite
def update_actions(draw: st.DrawFn) -> tuple[UpdateAction, ...]:
    # Distinct top-level names keep the paths of one update from overlapping.
    heads = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    actions = []
    for head in heads:
        path = (head, *draw(st.lists(names, max_size=2)))
        kind = draw(st.sampled_from(ActionKind))
        if kind is ActionKind.SET:
            operand = draw(json_values)
        elif kind is ActionKind.REMOVE:
            operand = None
        elif kind is ActionKind.ADD:
            operand = draw(
                st.integers(INT_MIN, INT_MAX) | st.floats(allow_nan=False, allow_infinity=False)
            )
        else:
            operand = draw(st.lists(json_values, max_size=3))
        actions.append(UpdateAction(kind, path, operand))
    return tuple(actions)


@st.composite
def txn_ops(draw: st.DrawFn) -> Op:
    kind = draw(st.sampled_from(OpKind))
    condition = draw(conditions()) if kind is OpKind.CHECK else draw(st.none() | conditions())
    return Op(
        kind=kind,
        key=draw(keys),
        value=draw(json_values) if kind is OpKind.PUT else None,
        actions=draw(update_actions()) if kind is OpKind.UPDATE else (),
        condition=condition,
        return_item=draw(st.booleans()),
    )


def assert_valid(name: str, instance: object) -> None:
    errors = [error.message for error in validator(name).iter_errors(instance)]
    assert not errors, (name, instance, errors)


def test_recover_response_schema_accepts_report_to_json() -> None:
    txn, other = new_txn_id(), new_txn_id()
    stuck = [
        Stuck(
            txn_id=txn,
            anchor=PartitionId(3),
            state="COMMITTED",
            age_ms=7000,
            intents=((PartitionId(5), "accounts/alice"),),
        ),
        Stuck(txn_id=other, anchor=PartitionId(0), state="intent", age_ms=6000),
    ]
    for driven in (
        [],
        [
            Driven(txn_id=txn, state="COMMITTED", completed=True),
            Driven(txn_id=other, state="intent", completed=False, error="Unavailable"),
        ],
    ):
        body = {"older_than_ms": 5000, "dry_run": not driven}
        assert_valid("RecoverResponse", {**body, "transactions": report_to_json(stuck, driven)})
    assert not validator("RecoverResponse").is_valid({"older_than_ms": 0, "dry_run": True})


@given(conditions())
def test_condition_schema_accepts_condition_to_json(condition: Condition) -> None:
    obj = condition_to_json(condition)
    assert_valid("Condition", obj)
    assert condition_from_json(obj) == condition


@given(txn_ops())
def test_op_schema_accepts_op_to_json(op: Op) -> None:
    obj = op_to_json(op)
    assert_valid("Op", obj)
    assert_valid(f"{op.kind.value.capitalize()}Op", obj)
    assert op_to_json(op_from_json(obj)) == obj


@given(st.lists(txn_ops(), min_size=1, max_size=5), st.none() | st.text("abc -~", min_size=1))
def test_txn_request_schema_accepts_transactions(ops: list[Op], token: str | None) -> None:
    body: dict[str, object] = {"ops": [op_to_json(op) for op in ops]}
    if token is not None:
        body["token"] = token
    assert_valid("TxnRequest", body)


CONDITION_FORMS = [
    ({"exists": True}, True),
    ({"version": 0}, True),
    ({"version": VERSION_MAX}, True),
    ({"path": "", "eq": None}, True),
    ({"path": "a.b", "ge": 10}, True),
    ({"all": [{"exists": True}, {"any": [{"not": {"path": "x", "ne": [1]}}]}]}, True),
    ({}, False),
    ({"exists": 1}, False),
    ({"version": -1}, False),
    ({"version": VERSION_MAX + 1}, False),
    ({"version": True}, False),
    ({"exists": True, "version": 1}, False),
    ({"path": "a"}, False),
    ({"path": "a", "eq": 1, "ne": 2}, False),
    ({"path": "a", "eq": 1, "extra": 2}, False),
    ({"path": "a..b", "eq": 1}, False),
    ({"path": ".a", "eq": 1}, False),
    ({"path": ".".join("a" * (limits.PATH_SEGMENTS_MAX + 1)), "eq": 1}, False),
    ({"eq": 1}, False),
    ({"all": []}, False),
    ({"any": {"exists": True}}, False),
    ({"not": [{"exists": True}]}, False),
    ({"frob": 1}, False),
    ([], False),
]


@pytest.mark.parametrize(("obj", "accepted"), CONDITION_FORMS)
def test_condition_schema_agrees_with_parser(obj: object, accepted: bool) -> None:
    assert validator("Condition").is_valid(obj) is accepted
    if accepted:
        condition_from_json(obj)
    else:
        with pytest.raises(ValidationError):
            condition_from_json(obj)


OP_FORMS = [
    ({"op": "put", "key": "a", "value": None}, True),
    ({"op": "put", "key": "a", "value": 1, "if": {"exists": False}, "return_item": True}, True),
    ({"op": "delete", "key": "a"}, True),
    ({"op": "check", "key": "a", "if": {"version": 1}}, True),
    ({"op": "update", "key": "a", "set": {"": 1}}, True),
    ({"op": "update", "key": "a", "remove": ["x"], "set": {}}, True),
    ({"op": "update", "key": "a", "add": {"n": 1.5}, "append": {"l": [1]}}, True),
    ({"op": "put", "key": "a"}, False),
    ({"op": "put", "key": "", "value": 1}, False),
    ({"op": "put", "key": "a" * (limits.KEY_BYTES_MAX + 1), "value": 1}, False),
    ({"op": "put", "key": 1, "value": 1}, False),
    ({"op": "delete", "key": "a", "value": 1}, False),
    ({"op": "check", "key": "a"}, False),
    ({"op": "update", "key": "a"}, False),
    ({"op": "update", "key": "a", "set": {}, "remove": []}, False),
    ({"op": "update", "key": "a", "add": {"n": "1"}}, False),
    ({"op": "update", "key": "a", "add": {"n": True}}, False),
    ({"op": "update", "key": "a", "append": {"l": 1}}, False),
    ({"op": "update", "key": "a", "remove": "x"}, False),
    ({"op": "update", "key": "a", "set": {"a..b": 1}}, False),
    ({"op": "put", "key": "a", "value": 1, "return_item": 1}, False),
    ({"op": "frob", "key": "a"}, False),
    ({"key": "a", "value": 1}, False),
]


@pytest.mark.parametrize(("obj", "accepted"), OP_FORMS)
def test_op_schema_agrees_with_parser(obj: object, accepted: bool) -> None:
    assert validator("Op").is_valid(obj) is accepted
    if accepted:
        op_from_json(obj)
    else:
        with pytest.raises(ValidationError):
            op_from_json(obj)


printable_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=70)


@given(printable_text | st.text("a ~\x1f\x7f", max_size=70))
def test_token_schema_agrees_with_validate_token(token: str) -> None:
    try:
        validate_token(token)
    except ValidationError:
        accepted = False
    else:
        accepted = True
    assert validator("IdempotencyToken").is_valid(token) is accepted


@given(printable_text | st.text("aé", min_size=1000, max_size=1100))
def test_key_schema_accepts_every_valid_key(key: str) -> None:
    try:
        validate_key(key)
    except ValidationError:
        # The schema counts characters, the server bytes: the schema may be looser.
        assert len(key) == 0 or len(key.encode()) > limits.KEY_BYTES_MAX or key[0] == "\x00"
        assert not (key[:1] == "\x00" and validator("Key").is_valid(key))
    else:
        assert validator("Key").is_valid(key)


@given(st.text("ab.", max_size=80) | st.lists(names, max_size=40).map(".".join))
def test_path_schema_agrees_with_parse_path(text: str) -> None:
    try:
        parse_path(text)
    except ValidationError:
        accepted = False
    else:
        accepted = True
    if len(text.encode()) <= limits.PATH_BYTES_MAX:
        assert validator("Path").is_valid(text) is accepted
    else:
        assert not accepted


@given(st.integers(0, ORIGIN_MAX), st.integers(0, ORIGIN_MAX), st.integers(0, ORIGIN_MAX))
def test_timestamp_schema_accepts_timestamps(physical_us: int, logical: int, origin: int) -> None:
    assert_valid("Timestamp", str(Timestamp(physical_us, logical, origin)))


ts_texts = st.text("0123456789abcdefAF.-+ \n", max_size=45) | st.builds(
    lambda p, lg, o: f"{p}.{lg}.{o:016x}",
    st.integers(0, 10**20),
    st.integers(0, 10**20),
    st.integers(0, ORIGIN_MAX),
)


@given(ts_texts)
def test_read_at_schema_agrees_with_the_parser(text: str) -> None:
    accepted = timestamp_from_text(text) is not None
    assert validator("ReadAt").is_valid(text) is accepted
    if accepted:
        assert str(timestamp_from_text(text)) == text


@given(st.integers(0, 10**19 - 1), st.integers(0, 10**19 - 1), st.integers(0, ORIGIN_MAX))
def test_read_at_schema_accepts_timestamps(physical_us: int, logical: int, origin: int) -> None:
    text = str(Timestamp(physical_us, logical, origin))
    assert_valid("ReadAt", text)
    assert timestamp_from_text(text) == Timestamp(physical_us, logical, origin)


def test_txn_id_schema_accepts_txn_ids() -> None:
    for _ in range(20):
        assert_valid("TxnId", new_txn_id())
    assert not validator("TxnId").is_valid("A" * 32)


def test_read_items() -> None:
    item = {"key": "a", "value": [1], "version": 1, "ts": "1.0.00000000000000ff"}
    assert_valid("ReadResponse", {"items": [item, {"key": "b", "found": False}]})
    assert not validator("ReadResponse").is_valid({"items": [{"key": "b", "found": True}]})
    assert not validator("ReadResponse").is_valid({"items": [{**item, "version": 0}]})
    assert not validator("ReadRequest").is_valid({"keys": ["a", "a"]})
    assert not validator("ReadRequest").is_valid({"keys": []})
    at = "1764000000000000.0.00000000000000ff"
    assert_valid("ReadRequest", {"keys": ["a"], "at": at})
    assert not validator("ReadRequest").is_valid({"keys": ["a"], "at": "1.0.ff"})
    assert_valid("ReadResponse", {"items": [item], "at": at})


# --- what schemathesis generates from the document, the server's parsers accept --------------

# Rules the schema cannot express: distinct keys, paths of one update that overlap, byte
# limits counted in UTF-8 (the schema counts characters), the integer range of values, and
# integers written with a fraction (JSON Schema's "integer" accepts 1.0, the parser refuses it).
INEXPRESSIBLE = (
    "must be an integer",
    "appears twice",
    "encloses the path",
    "lies inside path",
    "bytes of UTF-8",
    "integers must lie",
)


@cache
def transact_operation() -> Any:
    return schemathesis.openapi.from_dict(document())["/v1/txn"]["POST"]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_txn_bodies_parse(data: st.DataObject) -> None:
    case = data.draw(transact_operation().as_strategy())
    body = case.body
    assert_valid("TxnRequest", body)
    for index, obj in enumerate(body["ops"]):
        try:
            op_from_json(obj, f"ops[{index}]")
        except ValidationError as error:
            assert any(words in error.message for words in INEXPRESSIBLE), (obj, error.message)
    if "token" in body:
        validate_token(body["token"])
