"""What a store operation carries of a DynamoDB request: its condition and its update.

Theory of operation
-------------------
DynamoDB's condition and update expressions are evaluated on the storage node, inside the
transaction protocol, exactly like the store's own conditions (DESIGN section 3): the front end
does not read first. An :class:`~kvstore.ops.Op` carries them as the request gave them: the
expression text and the placeholders it uses (``ExpressionAttributeNames`` and, in the stored
form of :mod:`kvstore.dynamodb.attributes`, ``ExpressionAttributeValues``). Their JSON form is
that source, so the node parses it with the same parser as the front end
(:mod:`kvstore.dynamodb.expressions`), and an intent persisted with its op (and re-read after a
restart) parses the same way. Only the cluster's own processes send them (``internal``: the
public API refuses both members).

* :class:`ExpressionCondition` is a leaf of :mod:`kvstore.conditions`: JSON
  ``{"ddb": {"expr": text, "names": {...}, "values": {...}}}``; it holds when the DynamoDB
  condition holds on the item (an absent item is ``None`` to the evaluator).
* :class:`ExpressionUpdate` is what an update op applies (``"ddb_update"`` member): the same
  source plus the item's key attributes, which start an item the update creates. An empty text
  is the update with no action (``UpdateItem`` without an expression: it creates the item with
  its key when absent). An update of an absent item whose actions only remove (REMOVE,
  DELETE) creates nothing, as on DynamoDB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from kvstore.dynamodb.attributes import Item
from kvstore.dynamodb.evaluate import apply_update, condition_holds
from kvstore.dynamodb.expressions import (
    Condition,
    Placeholders,
    Update,
    parse_condition,
    parse_update,
)
from kvstore.errors import ValidationError
from kvstore.types import Value

__all__ = [
    "ExpressionSource",
    "ExpressionCondition",
    "ExpressionUpdate",
    "source_from_json",
    "source_to_json",
    "condition_from_source",
    "update_from_source",
    "expression_condition_holds",
    "apply_expression_update",
    "creates_nothing",
]

_MEMBERS: Final = frozenset({"expr", "names", "values"})


@dataclass(frozen=True, slots=True)
class ExpressionSource:
    """An expression's text and the placeholders of its request (values in stored form)."""

    text: str
    names: Mapping[str, str]
    values: Mapping[str, Value]


@dataclass(frozen=True, slots=True)
class ExpressionCondition:
    """A DynamoDB condition on the item (a leaf of :mod:`kvstore.conditions`)."""

    source: ExpressionSource
    tree: Condition


@dataclass(frozen=True, slots=True)
class ExpressionUpdate:
    """A DynamoDB update of the item; ``key`` (the key attributes) starts an absent item."""

    source: ExpressionSource
    tree: Update
    key: Item


def source_to_json(source: ExpressionSource) -> dict[str, object]:
    out: dict[str, object] = {"expr": source.text}
    if source.names:
        out["names"] = dict(source.names)
    if source.values:
        out["values"] = dict(source.values)
    return out


def source_from_json(obj: object, field: str) -> ExpressionSource:
    """The source of an expression as a peer sent it (checked; the parser checks the rest)."""
    if not isinstance(obj, Mapping) or not _MEMBERS.issuperset(obj) or "expr" not in obj:
        raise ValidationError(field, "an expression is an object with expr, names and values")
    text, names, values = obj["expr"], obj.get("names", {}), obj.get("values", {})
    if not isinstance(text, str):
        raise ValidationError(f"{field}.expr", "must be a string")
    if not isinstance(names, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in names.items()
    ):
        raise ValidationError(f"{field}.names", "must map names to names")
    if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
        raise ValidationError(f"{field}.values", "must map names to values")
    return ExpressionSource(text, dict(names), dict(values))


def _placeholders(source: ExpressionSource) -> Placeholders:
    return Placeholders.from_stored(dict(source.names) or None, dict(source.values) or None)


def condition_from_source(source: ExpressionSource) -> ExpressionCondition:
    return ExpressionCondition(source, parse_condition(source.text, _placeholders(source)))


def update_from_source(source: ExpressionSource, key: Item) -> ExpressionUpdate:
    if source.text == "":
        return ExpressionUpdate(source, Update(), key)
    return ExpressionUpdate(source, parse_update(source.text, _placeholders(source)), key)


def _item(exists: bool, value: Value) -> Item | None:
    if not exists:
        return None
    if not isinstance(value, dict):
        raise ValidationError("value", "the stored item is not a DynamoDB item")
    return value


def expression_condition_holds(
    condition: ExpressionCondition, *, exists: bool, value: Value
) -> bool:
    """Whether the condition holds on the item's committed state."""
    return condition_holds(condition.tree, _item(exists, value))


def creates_nothing(update: Update) -> bool:
    """An update of an absent item with these actions leaves it absent (only removals)."""
    return bool(update.remove or update.delete) and not (update.set or update.add)


def apply_expression_update(
    update: ExpressionUpdate, *, exists: bool, value: Value
) -> tuple[bool, Item | None]:
    """Whether the item exists after the update, and its value (``ValidationError`` with AWS's
    wording when the update cannot apply)."""
    if not exists and creates_nothing(update.tree):
        return False, None
    return True, apply_update(update.tree, _item(exists, value), update.key)
