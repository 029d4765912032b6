"""Conditions (``if``) on one item: parsing from the API's JSON form and evaluation.

Theory of operation
-------------------
A condition is a small immutable tree. Leaves test the item: :class:`Exists` (is there an item),
:class:`VersionEquals` (the item's version) and :class:`Compare` (an attribute of the value
against a constant). Inner nodes compose: :class:`AllOf`, :class:`AnyOf`, :class:`Not`.

The JSON form has one object per node, with exactly the members of its kind::

    {"exists": true}            {"version": 7}           {"path": "a.b", "ge": 10}
    {"all": [C, ...]}           {"any": [C, ...]}        {"not": C}

Inside the cluster (``internal``: the codec) a leaf may also be a DynamoDB condition expression,
``{"ddb": {"expr", "names", "values"}}`` (:class:`~kvstore.dynamodb.payloads.ExpressionCondition`,
the DynamoDB endpoint's); the public API refuses it as an unknown member.

:func:`condition_from_json` refuses anything else with a ValidationError whose field points at
the offending member (``if.all[2].path``). It counts nodes as it goes and refuses trees of more
than ``CONDITION_NODES_MAX`` nodes or with all/any/not nested deeper than
``CONDITION_DEPTH_MAX``, before descending further, so parsing (and the recursive evaluation of
what it returns) is bounded. :func:`condition_to_json` is its exact inverse.

:func:`evaluate` runs on the committed state of the item (``exists``, ``value``, ``version``).
An absent item has no version and no attributes: a version test or any comparison on it is
false, and so is a comparison whose path is missing, for every operator including ``ne``
(``{"not": {"path": p, "eq": v}}`` is the way to say "missing or different"). ``eq``/``ne`` use
JSON equality (:func:`kvstore.values.values_equal`); the order operators compare numbers with
numbers (never bools), strings with strings (code point order) and bytes with bytes, and are
false for any other pair of types.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar

from kvstore.dynamodb.payloads import (
    ExpressionCondition,
    condition_from_source,
    expression_condition_holds,
    source_from_json,
    source_to_json,
)
from kvstore.errors import ValidationError
from kvstore.limits import CONDITION_DEPTH_MAX, CONDITION_NODES_MAX
from kvstore.paths import Path, format_path, get_at, parse_path
from kvstore.types import Value
from kvstore.values import (
    index_field,
    is_number,
    member_field,
    validate_value,
    values_equal,
)

__all__ = [
    "CompareOperator",
    "Exists",
    "VersionEquals",
    "Compare",
    "AllOf",
    "AnyOf",
    "Not",
    "Condition",
    "VERSION_MAX",
    "condition_from_json",
    "condition_to_json",
    "evaluate",
]

# Versions are stored as SQLite INTEGER (signed 64-bit); a larger one can never match.
VERSION_MAX: Final = (1 << 63) - 1


class CompareOperator(enum.StrEnum):
    """Operators of a path comparison; the value is the JSON member name."""

    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"


@dataclass(frozen=True, slots=True)
class Exists:
    """True when the item exists (``expected=True``) or is absent (``expected=False``)."""

    expected: bool


@dataclass(frozen=True, slots=True)
class VersionEquals:
    """True when the item exists and its version is ``version``."""

    version: int


@dataclass(frozen=True, slots=True)
class Compare:
    """True when the item exists, ``path`` is found in its value and ``operator`` holds."""

    path: Path
    operator: CompareOperator
    operand: Value


@dataclass(frozen=True, slots=True)
class AllOf:
    """True when every condition holds (non-empty)."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """True when at least one condition holds (non-empty)."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """True when ``condition`` does not hold."""

    condition: Condition


Condition: TypeAlias = Exists | VersionEquals | Compare | AllOf | AnyOf | Not | ExpressionCondition

_OPERATORS: Final = frozenset(op.value for op in CompareOperator)
_KINDS: Final = ("exists", "version", "path", "all", "any", "not")
_Ordered = TypeVar("_Ordered", float, str, bytes)  # int is accepted where float is


class _Parser:
    """One parse: counts nodes across the whole tree."""

    __slots__ = ("internal", "nodes")

    def __init__(self, internal: bool) -> None:
        self.nodes = 0
        self.internal = internal

    def parse(self, obj: object, field: str, depth: int) -> Condition:
        self.nodes += 1
        if self.nodes > CONDITION_NODES_MAX:
            raise ValidationError(field, f"a condition has at most {CONDITION_NODES_MAX} nodes")
        if not isinstance(obj, Mapping):
            raise ValidationError(field, f"a condition must be an object, not {type(obj).__name__}")
        if self.internal and len(obj) == 1 and "ddb" in obj:
            return condition_from_source(source_from_json(obj["ddb"], f"{field}.ddb"))
        for name in obj:
            if name not in _KINDS and name not in _OPERATORS:
                raise ValidationError(
                    member_field(field, name),
                    "unknown condition member (expected one of exists, version, path"
                    " with eq/ne/lt/le/gt/ge, all, any, not)",
                )
        if "path" in obj:
            return self._compare(obj, field)
        kinds = [name for name in obj if name in _KINDS]
        if len(kinds) != 1 or len(obj) != 1:
            if not obj:
                raise ValidationError(field, "a condition must not be an empty object")
            raise ValidationError(
                field,
                "a condition object has exactly one of exists, version, all, any, not"
                f" (or path with one operator); got {', '.join(map(str, obj))}",
            )
        kind = kinds[0]
        where = f"{field}.{kind}"
        body = obj[kind]
        if kind == "exists":
            if not isinstance(body, bool):
                raise ValidationError(where, "must be true or false")
            return Exists(body)
        if kind == "version":
            if not isinstance(body, int) or isinstance(body, bool):
                raise ValidationError(where, "a version must be an integer")
            if not 0 <= body <= VERSION_MAX:
                raise ValidationError(where, f"a version lies in 0..{VERSION_MAX}")
            return VersionEquals(body)
        if depth >= CONDITION_DEPTH_MAX:
            raise ValidationError(
                field, f"all/any/not are nested at most {CONDITION_DEPTH_MAX} deep"
            )
        if kind == "not":
            return Not(self.parse(body, where, depth + 1))
        if not isinstance(body, list):
            raise ValidationError(where, f"{kind} takes a list of conditions")
        if not body:
            raise ValidationError(where, f"{kind} takes a non-empty list of conditions")
        if self.nodes + len(body) > CONDITION_NODES_MAX:
            raise ValidationError(where, f"a condition has at most {CONDITION_NODES_MAX} nodes")
        children = tuple(
            self.parse(child, index_field(where, index), depth + 1)
            for index, child in enumerate(body)
        )
        return AllOf(children) if kind == "all" else AnyOf(children)

    def _compare(self, obj: Mapping[object, object], field: str) -> Compare:
        others = [name for name in obj if name != "path" and name not in _OPERATORS]
        if others:
            raise ValidationError(
                member_field(field, others[0]),
                "a path comparison has only path and one of eq, ne, lt, le, gt, ge",
            )
        operators = [name for name in obj if name in _OPERATORS]
        if len(operators) != 1:
            raise ValidationError(
                field,
                "a path comparison needs exactly one operator of eq, ne, lt, le, gt, ge"
                f" (got {len(operators)})",
            )
        path = parse_path(obj["path"], f"{field}.path")
        operator = CompareOperator(str(operators[0]))
        operand = validate_value(obj[operators[0]], f"{field}.{operator.value}")
        return Compare(path, operator, operand)


def condition_from_json(obj: object, field: str = "if", *, internal: bool = False) -> Condition:
    """Parse the JSON form of a condition; raises ValidationError naming the bad member.
    ``internal`` (a peer's message) also accepts DynamoDB condition expressions."""
    return _Parser(internal).parse(obj, field, 0)


def condition_to_json(condition: Condition) -> dict[str, object]:
    """The JSON form of ``condition``; ``condition_from_json`` gives back an equal tree."""
    match condition:
        case Exists(expected):
            return {"exists": expected}
        case VersionEquals(version):
            return {"version": version}
        case Compare(path, operator, operand):
            return {"path": format_path(path), operator.value: operand}
        case AllOf(conditions):
            return {"all": [condition_to_json(child) for child in conditions]}
        case AnyOf(conditions):
            return {"any": [condition_to_json(child) for child in conditions]}
        case Not(inner):
            return {"not": condition_to_json(inner)}
        case ExpressionCondition(source):
            return {"ddb": source_to_json(source)}
    raise TypeError(f"not a condition: {condition!r}")


def _order_holds(operator: CompareOperator, left: _Ordered, right: _Ordered) -> bool:
    if operator is CompareOperator.LT:
        return left < right
    if operator is CompareOperator.LE:
        return left <= right
    if operator is CompareOperator.GT:
        return left > right
    return left >= right


def _compare_holds(condition: Compare, *, exists: bool, value: Value) -> bool:
    if not exists:
        return False
    found, attribute = get_at(value, condition.path)
    if not found:
        return False
    operator = condition.operator
    if operator is CompareOperator.EQ:
        return values_equal(attribute, condition.operand)
    if operator is CompareOperator.NE:
        return not values_equal(attribute, condition.operand)
    operand = condition.operand
    if isinstance(attribute, int | float) and isinstance(operand, int | float):
        if is_number(attribute) and is_number(operand):
            return _order_holds(operator, attribute, operand)
        return False
    if isinstance(attribute, str) and isinstance(operand, str):
        return _order_holds(operator, attribute, operand)
    if isinstance(attribute, bytes) and isinstance(operand, bytes):
        return _order_holds(operator, attribute, operand)
    return False


def evaluate(condition: Condition | None, *, exists: bool, value: Value, version: int) -> bool:
    """Whether ``condition`` holds on the item's committed state; ``None`` always holds."""
    match condition:
        case None:
            return True
        case Exists(expected):
            return exists == expected
        case VersionEquals(expected_version):
            return exists and version == expected_version
        case Compare():
            return _compare_holds(condition, exists=exists, value=value)
        case AllOf(conditions):
            return all(
                evaluate(child, exists=exists, value=value, version=version) for child in conditions
            )
        case AnyOf(conditions):
            return any(
                evaluate(child, exists=exists, value=value, version=version) for child in conditions
            )
        case Not(inner):
            return not evaluate(inner, exists=exists, value=value, version=version)
        case ExpressionCondition():
            return expression_condition_holds(condition, exists=exists, value=value)
    raise TypeError(f"not a condition: {condition!r}")
