"""DynamoDB's legacy (pre-expression) parameters, translated into the expression trees.

Theory of operation
-------------------
DynamoDB still accepts ``Expected`` (with ``ConditionalOperator``), ``QueryFilter`` and
``ScanFilter``, ``KeyConditions``, ``AttributeUpdates`` and ``AttributesToGet``; old SDK code and
Java's ``DynamoDBMapper`` send them. Each is translated once into the trees of
:mod:`kvstore.dynamodb.expression_tree`, so evaluation has one implementation.

A legacy condition is ``{attribute: {"ComparisonOperator": op, "AttributeValueList": [...]}}``
(``Expected`` also takes ``{"Value": v}`` meaning equality, ``{"Exists": false}`` meaning
absence, and ``Value`` in place of a one-value ``AttributeValueList``; its refusals are worded
as DynamoDB words them, "... for Attribute: a"), the attributes combined with
``ConditionalOperator`` (AND by default). The operators map onto expression ones: EQ ``=``; NE
``NOT =`` (so it holds for a missing attribute, as in DynamoDB); LT/LE/GT/GE; BETWEEN; IN;
BEGINS_WITH; CONTAINS; NOT_CONTAINS ``NOT contains``; NULL ``attribute_not_exists``; NOT_NULL
``attribute_exists``. Attribute names are plain names (never paths). ``AttributeUpdates``
actions are PUT (SET), DELETE (REMOVE, or set elements with a value) and ADD (numbers and sets,
and, unlike the expression ADD, lists: appended). Values are request JSON, validated by
:func:`kvstore.dynamodb.attributes.value_from_wire`. Callers refuse a
request that mixes legacy and expression parameters.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final

from kvstore.dynamodb.attributes import (
    SCALAR_TYPES,
    SET_TYPES,
    check_attribute_name,
    compare,
    serialization_error,
    type_of,
    value_from_wire,
)
from kvstore.dynamodb.expression_tree import (
    AddAction,
    And,
    AttributeExists,
    AttributeNotExists,
    BeginsWith,
    Between,
    Comparison,
    Condition,
    Contains,
    DeleteAction,
    IfNotExists,
    In,
    KeyCondition,
    ListAppend,
    Literal,
    Not,
    Or,
    Path,
    Projection,
    RangeTest,
    RemoveAction,
    SetAction,
    Update,
)
from kvstore.errors import ValidationError
from kvstore.types import Value

__all__ = [
    "condition_from_expected",
    "condition_from_filter",
    "key_condition_from_legacy",
    "update_from_attribute_updates",
    "projection_from_attributes_to_get",
]

_INVALID: Final = "One or more parameter values were invalid: "
# Operator -> (least, most) values in AttributeValueList (None: no upper bound).
_ARITY: Final[dict[str, tuple[int, int | None]]] = {
    "EQ": (1, 1),
    "NE": (1, 1),
    "LT": (1, 1),
    "LE": (1, 1),
    "GT": (1, 1),
    "GE": (1, 1),
    "BEGINS_WITH": (1, 1),
    "CONTAINS": (1, 1),
    "NOT_CONTAINS": (1, 1),
    "BETWEEN": (2, 2),
    "IN": (1, None),
    "NULL": (0, 0),
    "NOT_NULL": (0, 0),
}
_ORDER: Final = {"LT": "<", "LE": "<=", "GT": ">", "GE": ">="}
# KeyConditions operators -> the RangeTest operator.
_KEY_OPERATORS: Final = {
    "EQ": "=",
    **_ORDER,
    "BEGINS_WITH": "begins_with",
    "BETWEEN": "BETWEEN",
}


def _mapping(obj: object, parameter: str) -> Mapping[str, object]:
    if not isinstance(obj, Mapping):
        raise serialization_error(f"{parameter} must be a map")
    return obj


def _test(name: str, operator: object, values: object) -> Condition:
    """One ``{"ComparisonOperator", "AttributeValueList"}`` test on attribute ``name``."""
    if not isinstance(operator, str) or operator not in _ARITY:
        raise ValidationError(
            "",
            f"1 validation error detected: Value '{operator}' at 'comparisonOperator' failed to "
            "satisfy constraint: Member must satisfy enum value set: "
            "[IN, NULL, BETWEEN, LT, NOT_CONTAINS, EQ, GT, NOT_NULL, NE, LE, BEGINS_WITH, GE, "
            "CONTAINS]",
        )
    if values is None:
        values = []
    if not isinstance(values, list):
        raise serialization_error("AttributeValueList must be a list")
    least, most = _ARITY[operator]
    if len(values) < least or (most is not None and len(values) > most):
        raise ValidationError(
            "", _INVALID + f"Invalid number of argument(s) for the {operator} ComparisonOperator"
        )
    typed = [value_from_wire(v) for v in values]
    for value in typed:
        tag = type_of(value)
        allowed = (
            SCALAR_TYPES
            if operator in (*_ORDER, "BETWEEN")
            else {"S", "B"}
            if operator == "BEGINS_WITH"
            else {"S", "N", "B"}
            if operator in ("CONTAINS", "NOT_CONTAINS", "IN")
            else None
        )
        if allowed is not None and tag not in allowed:
            raise ValidationError(
                "",
                _INVALID + f"ComparisonOperator {operator} is not valid for {tag} "
                "AttributeValue type",
            )
    path = Path((name,))
    literals = [Literal(v) for v in typed]
    if operator == "EQ":
        return Comparison("=", path, literals[0])
    if operator == "NE":
        return Not(Comparison("=", path, literals[0]))
    if operator in _ORDER:
        return Comparison(_ORDER[operator], path, literals[0])
    if operator == "BETWEEN":
        order = compare(typed[0], typed[1])
        if order is None or order > 0:
            raise ValidationError(
                "",
                _INVALID + "The BETWEEN condition was provided a range where the lower bound is "
                "greater than the upper bound",
            )
        return Between(path, literals[0], literals[1])
    if operator == "IN":
        return In(path, tuple(literals))
    if operator == "BEGINS_WITH":
        return BeginsWith(path, literals[0])
    if operator == "CONTAINS":
        return Contains(path, literals[0])
    if operator == "NOT_CONTAINS":
        return Not(Contains(path, literals[0]))
    if operator == "NULL":
        return AttributeNotExists((name,))
    return AttributeExists((name,))


def _combine(tests: list[Condition], conditional_operator: object) -> Condition | None:
    if conditional_operator not in (None, "AND", "OR"):
        raise ValidationError(
            "",
            f"1 validation error detected: Value '{conditional_operator}' at "
            "'conditionalOperator' failed to satisfy constraint: Member must satisfy enum value "
            "set: [AND, OR]",
        )
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return Or(tuple(tests)) if conditional_operator == "OR" else And(tuple(tests))


def condition_from_filter(
    conditions: object, conditional_operator: object = None, *, parameter: str = "QueryFilter"
) -> Condition | None:
    """A ``QueryFilter`` or ``ScanFilter`` (None when empty)."""
    tests: list[Condition] = []
    for name, spec in _mapping(conditions, parameter).items():
        body = _mapping(spec, parameter)
        tests.append(
            _test(
                check_attribute_name(name),
                body.get("ComparisonOperator"),
                body.get("AttributeValueList"),
            )
        )
    return _combine(tests, conditional_operator)


def condition_from_expected(
    expected: object, conditional_operator: object = None
) -> Condition | None:
    """An ``Expected`` map (None when empty)."""
    tests: list[Condition] = []
    for name, spec in _mapping(expected, "Expected").items():
        checked = check_attribute_name(name)
        body = _mapping(spec, "Expected")
        exists = body.get("Exists")
        if exists is not None and not isinstance(exists, bool):
            raise serialization_error("Exists must be a boolean")
        value = body.get("Value")
        values = body.get("AttributeValueList")
        if value is not None and values is not None:
            raise ValidationError(
                "",
                _INVALID + "Value and AttributeValueList cannot be used together for Attribute: "
                f"{checked}",
            )
        operator = body.get("ComparisonOperator")
        if operator is not None:
            if exists is not None:
                raise ValidationError(
                    "",
                    _INVALID + "Exists and ComparisonOperator cannot be used together for "
                    f"Attribute: {checked}",
                )
            if value is None and values is None and operator not in ("NULL", "NOT_NULL"):
                raise ValidationError(
                    "",
                    _INVALID + "Value or AttributeValueList must be used with ComparisonOperator: "
                    f"{operator} for Attribute: {checked}",
                )
            tests.append(_test(checked, operator, [value] if value is not None else values))
            continue
        if values is not None:
            raise ValidationError(
                "",
                _INVALID + "AttributeValueList can only be used with a ComparisonOperator for "
                f"Attribute: {checked}",
            )
        if exists is False:
            if value is not None:
                raise ValidationError(
                    "",
                    _INVALID + "Value cannot be used when Exists is false for Attribute: "
                    f"{checked}",
                )
            tests.append(AttributeNotExists((checked,)))
        elif value is not None:
            tests.append(Comparison("=", Path((checked,)), Literal(value_from_wire(value))))
        else:
            shown = "null" if exists is None else "true"
            raise ValidationError(
                "",
                _INVALID + f"Value must be provided when Exists is {shown} for Attribute: "
                f"{checked}",
            )
    return _combine(tests, conditional_operator)


def key_condition_from_legacy(
    conditions: object, *, hash_key: str, range_key: str | None = None
) -> KeyCondition:
    """``KeyConditions``: EQ on the hash key and at most one test on the sort key."""
    body = _mapping(conditions, "KeyConditions")
    if len(body) > 2:
        raise ValidationError("", "Conditions can be of length 1 or 2 only")
    hash_value: Value | None = None
    range_test: RangeTest | None = None
    for name, spec in body.items():
        test = _mapping(spec, "KeyConditions")
        operator = test.get("ComparisonOperator")
        condition = _test(check_attribute_name(name), operator, test.get("AttributeValueList"))
        if operator not in _KEY_OPERATORS:
            raise ValidationError(
                "", "Attempted conditional constraint is not an indexable operation"
            )
        values = _literals(condition)
        if name == hash_key:
            if operator != "EQ":
                raise ValidationError("", "Query key condition not supported")
            hash_value = values[0]
        elif range_key is not None and name == range_key:
            range_test = RangeTest(name, _KEY_OPERATORS[str(operator)], values)
        else:
            raise ValidationError(
                "", f"Query condition missed key schema element: {range_key or hash_key}"
            )
    if hash_value is None:
        raise ValidationError("", f"Query condition missed key schema element: {hash_key}")
    return KeyCondition(hash_key, hash_value, range_test)


def _literals(condition: Condition) -> tuple[Value, ...]:
    if isinstance(condition, Comparison) and isinstance(condition.right, Literal):
        return (condition.right.value,)
    if isinstance(condition, Between):
        assert isinstance(condition.low, Literal) and isinstance(condition.high, Literal)
        return (condition.low.value, condition.high.value)
    if isinstance(condition, BeginsWith) and isinstance(condition.prefix, Literal):
        return (condition.prefix.value,)
    raise ValidationError("", "Attempted conditional constraint is not an indexable operation")


def update_from_attribute_updates(updates: object, *, key_names: Collection[str] = ()) -> Update:
    """``AttributeUpdates``: PUT, DELETE and ADD actions, one per attribute."""
    sets: list[SetAction] = []
    removes: list[RemoveAction] = []
    adds: list[AddAction] = []
    deletes: list[DeleteAction] = []
    for name, spec in _mapping(updates, "AttributeUpdates").items():
        checked = check_attribute_name(name)
        if checked in key_names:
            raise ValidationError(
                "",
                _INVALID + f"Cannot update attribute {checked}. This attribute is part of the key",
            )
        body = _mapping(spec, "AttributeUpdates")
        action = body.get("Action", "PUT")
        value = value_from_wire(body["Value"]) if body.get("Value") is not None else None
        path = (checked,)
        if action == "PUT":
            if value is None:
                raise ValidationError(
                    "",
                    _INVALID + f"Only DELETE action is allowed when no attribute value is "
                    f"specified: {checked}",
                )
            sets.append(SetAction(path, Literal(value)))
        elif action == "DELETE":
            if value is None:
                removes.append(RemoveAction(path))
            elif type_of(value) in SET_TYPES:
                deletes.append(DeleteAction(path, value))
            else:
                raise ValidationError(
                    "",
                    _INVALID
                    + f"DELETE action with value is not supported for the type {type_of(value)}",
                )
        elif action == "ADD":
            if value is None:
                raise ValidationError(
                    "",
                    _INVALID + f"Only DELETE action is allowed when no attribute value is "
                    f"specified: {checked}",
                )
            tag = type_of(value)
            if tag == "L":
                appended = ListAppend(IfNotExists(path, Literal({"L": []})), Literal(value))
                sets.append(SetAction(path, appended))
            elif tag == "N" or tag in SET_TYPES:
                adds.append(AddAction(path, value))
            else:
                raise ValidationError(
                    "", _INVALID + f"ADD action is not supported for the type {tag}"
                )
        else:
            raise ValidationError(
                "",
                f"1 validation error detected: Value '{action}' at 'attributeUpdates.{checked}."
                "member.action' failed to satisfy constraint: Member must satisfy enum value "
                "set: [ADD, PUT, DELETE]",
            )
    return Update(tuple(sets), tuple(removes), tuple(adds), tuple(deletes))


def projection_from_attributes_to_get(names: object) -> Projection:
    """``AttributesToGet``: a non-empty list of distinct attribute names."""
    if not isinstance(names, list):
        raise serialization_error("AttributesToGet must be a list")
    if not names:
        raise ValidationError(
            "",
            "1 validation error detected: Value '[]' at 'attributesToGet' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1",
        )
    checked = [check_attribute_name(name) for name in names]
    seen: set[str] = set()
    for name in checked:
        if name in seen:
            raise ValidationError("", _INVALID + f"Duplicate value in attribute name: {name}")
        seen.add(name)
    return Projection(tuple((name,) for name in checked))
