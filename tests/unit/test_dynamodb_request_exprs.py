"""A request's expressions or legacy parameters, as RequestExpressions reads them.

Goal: each operation takes its expression members or their legacy counterparts, never both
(AWS's wording), placeholders only with expressions, and a legacy condition or update leaves for
the storage node as generated source that parses into the legacy translation's tree, without
tripping the request's unused-placeholder check. Method: request bodies straight into
RequestExpressions with each operation's member set; the node's parse is
``condition_from_source`` / ``update_from_source``, the same functions a peer's op goes through.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvstore.dynamodb.expressions import (
    AddAction,
    And,
    AttributeNotExists,
    Comparison,
    KeyCondition,
    Literal,
    Not,
    Path,
    Projection,
    RangeTest,
    RemoveAction,
    SetAction,
    Update,
)
from kvstore.dynamodb.payloads import condition_from_source, update_from_source
from kvstore.dynamodb.request_exprs import (
    GET_ITEM,
    PUT_ITEM,
    QUERY,
    SCAN,
    TRANSACT_CONDITION,
    UPDATE_ITEM,
    Members,
    RequestExpressions,
)
from kvstore.errors import ValidationError
from kvstore.limits import DYNAMODB_EXPRESSION_OPERATORS_MAX

N1 = {"N": "1"}
KEY = {"pk": {"S": "k"}}
MIXED = "Can not use both expression and non-expression parameters in the same request: "


def refused(body: dict[str, Any], members: Members, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        exprs = RequestExpressions(body, members)
        exprs.condition()
        exprs.update(KEY, ("pk",))
        exprs.filter()
        exprs.projection()
        exprs.key_condition("pk", "sk")
        exprs.finish()
    assert raised.value.message == message


@pytest.mark.parametrize(
    ("body", "members", "message"),
    [
        (
            {"Expected": {"a": {"Exists": False}}, "ConditionExpression": "a = :v"},
            PUT_ITEM,
            MIXED + "Non-expression parameters: {Expected} Expression parameters: "
            "{ConditionExpression}",
        ),
        (
            {"AttributeUpdates": {}, "ConditionExpression": "attribute_exists(a)"},
            UPDATE_ITEM,
            MIXED + "Non-expression parameters: {AttributeUpdates} Expression parameters: "
            "{ConditionExpression}",
        ),
        (
            {"Expected": {}, "UpdateExpression": "REMOVE a", "ConditionalOperator": "OR"},
            UPDATE_ITEM,
            MIXED + "Non-expression parameters: {Expected, ConditionalOperator} Expression "
            "parameters: {UpdateExpression}",
        ),
        (
            {"AttributesToGet": ["a"], "ProjectionExpression": "a"},
            GET_ITEM,
            MIXED + "Non-expression parameters: {AttributesToGet} Expression parameters: "
            "{ProjectionExpression}",
        ),
        (
            {"KeyConditions": {}, "KeyConditionExpression": "pk = :v"},
            QUERY,
            MIXED + "Non-expression parameters: {KeyConditions} Expression parameters: "
            "{KeyConditionExpression}",
        ),
        (
            {"QueryFilter": {}, "KeyConditionExpression": "pk = :v", "FilterExpression": "a"},
            QUERY,
            MIXED + "Non-expression parameters: {QueryFilter} Expression parameters: "
            "{FilterExpression, KeyConditionExpression}",
        ),
        (
            {"ScanFilter": {}, "ProjectionExpression": "a"},
            SCAN,
            MIXED + "Non-expression parameters: {ScanFilter} Expression parameters: "
            "{ProjectionExpression}",
        ),
        (
            {"ExpressionAttributeNames": {"#a": "a"}, "Expected": {}},
            PUT_ITEM,
            "ExpressionAttributeNames can only be specified when using expressions",
        ),
        (
            {"ExpressionAttributeValues": {":v": N1}},
            PUT_ITEM,
            "ExpressionAttributeValues can only be specified when using expressions: "
            "ConditionExpression is null",
        ),
        (
            {"ExpressionAttributeValues": {":v": N1}},
            UPDATE_ITEM,
            "ExpressionAttributeValues can only be specified when using expressions: "
            "UpdateExpression and ConditionExpression are null",
        ),
        (
            {"ExpressionAttributeValues": {":v": N1}, "ProjectionExpression": "a"},
            SCAN,
            "ExpressionAttributeValues can only be specified when using expressions: "
            "FilterExpression is null",
        ),
        (  # GetItem takes no values at all: they are unused
            {"ExpressionAttributeValues": {":v": N1}, "ProjectionExpression": "a"},
            GET_ITEM,
            "Value provided in ExpressionAttributeValues unused in expressions: keys: {:v}",
        ),
    ],
)
def test_mixing_and_placeholders_without_expressions(
    body: dict[str, Any], members: Members, message: str
) -> None:
    refused(body, members, message)


def test_key_conditions_go_with_a_filter_expression() -> None:
    exprs = RequestExpressions(
        {
            "KeyConditions": {"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [N1]}},
            "FilterExpression": "a = :v",
            "ExpressionAttributeValues": {":v": N1},
        },
        QUERY,
    )
    assert exprs.key_condition("pk", None) == KeyCondition("pk", N1)
    assert exprs.filter() == Comparison("=", Path(("a",)), Literal(N1))
    exprs.finish()


def test_expected_becomes_generated_source_the_node_parses_into_the_same_tree() -> None:
    exprs = RequestExpressions(
        {
            "Expected": {
                "size": {"Value": N1},  # a reserved word: the generated text names it by #n
                "a.b": {"Exists": False},
                "c": {"ComparisonOperator": "NE", "AttributeValueList": [{"S": "x"}]},
            }
        },
        PUT_ITEM,
    )
    condition = exprs.condition()
    exprs.finish()
    assert condition is not None
    assert condition.tree == And(
        (
            Comparison("=", Path(("size",)), Literal(N1)),
            AttributeNotExists(("a.b",)),
            Not(Comparison("=", Path(("c",)), Literal({"S": "x"}))),
        )
    )
    source = condition.source
    assert source.text == "#n0 = :v0 AND attribute_not_exists(#n1) AND NOT #n2 = :v1"
    assert dict(source.names) == {"#n0": "size", "#n1": "a.b", "#n2": "c"}
    assert condition_from_source(source).tree == condition.tree


def test_an_empty_expected_is_no_condition() -> None:
    exprs = RequestExpressions({"Expected": {}}, PUT_ITEM)
    assert exprs.condition() is None


def test_attribute_updates_become_generated_source() -> None:
    exprs = RequestExpressions(
        {
            "AttributeUpdates": {
                "n": {"Action": "ADD", "Value": N1},
                "gone": {"Action": "DELETE"},
                "s": {"Value": {"S": "x"}},
            },
            "Expected": {"n": {"Exists": False}},
            "ConditionalOperator": "AND",
        },
        UPDATE_ITEM,
    )
    update = exprs.update(KEY, ("pk",))
    condition = exprs.condition()
    exprs.finish()
    assert update is not None and condition is not None
    assert update.tree == Update(
        set=(SetAction(("s",), Literal({"S": "x"})),),
        remove=(RemoveAction(("gone",)),),
        add=(AddAction(("n",), N1),),
    )
    assert update.source.text == "SET #n0 = :v0 REMOVE #n1 ADD #n2 :v1"
    assert update.key == KEY
    assert update_from_source(update.source, KEY).tree == update.tree
    assert condition.tree == AttributeNotExists(("n",))


def test_empty_attribute_updates_are_the_update_with_no_action() -> None:
    update = RequestExpressions({"AttributeUpdates": {}}, UPDATE_ITEM).update(KEY, ("pk",))
    assert update is not None and update.tree == Update() and update.source.text == ""


def test_attribute_updates_may_not_touch_the_key() -> None:
    exprs = RequestExpressions({"AttributeUpdates": {"pk": {"Value": N1}}}, UPDATE_ITEM)
    with pytest.raises(ValidationError, match="Cannot update attribute pk"):
        exprs.update(KEY, ("pk",))


def test_legacy_members_an_operation_does_not_take_are_not_read() -> None:
    """TransactWriteItems' actions have no Expected (botocore refuses it client-side)."""
    exprs = RequestExpressions({"Expected": {"a": {"Exists": False}}}, TRANSACT_CONDITION)
    assert exprs.condition() is None


def test_attributes_to_get_query_filter_and_key_conditions() -> None:
    exprs = RequestExpressions(
        {
            "AttributesToGet": ["a", "b.c"],
            "QueryFilter": {"a": {"ComparisonOperator": "NOT_NULL"}},
            "KeyConditions": {
                "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [N1]},
                "sk": {"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [{"S": "p"}]},
            },
        },
        QUERY,
    )
    assert exprs.projection() == Projection((("a",), ("b.c",)))
    assert exprs.projection_member == "AttributesToGet"
    assert exprs.filter() is not None
    assert exprs.key_condition("pk", "sk") == KeyCondition(
        "pk", N1, RangeTest("sk", "begins_with", ({"S": "p"},))
    )
    exprs.finish()


def test_a_scan_reads_scan_filter_not_query_filter() -> None:
    spec = {"a": {"ComparisonOperator": "NULL"}}
    assert RequestExpressions({"ScanFilter": spec}, SCAN).filter() == AttributeNotExists(("a",))
    assert RequestExpressions({"QueryFilter": spec}, SCAN).filter() is None


def test_a_legacy_condition_over_an_expression_limit_is_refused_by_its_member() -> None:
    expected = {f"a{i}": {"Exists": False} for i in range(DYNAMODB_EXPRESSION_OPERATORS_MAX)}
    exprs = RequestExpressions({"Expected": expected}, PUT_ITEM)
    with pytest.raises(ValidationError) as raised:
        exprs.condition()
    assert raised.value.message.startswith("Invalid Expected: ")
    assert "ConditionExpression" not in raised.value.message
