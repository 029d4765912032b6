"""The expressions of one request, parsed against its placeholders, or its legacy parameters.

Theory of operation
-------------------
A DynamoDB request gives its expressions (condition, update, projection, filter, key condition)
and one set of placeholders, ``ExpressionAttributeNames`` and ``ExpressionAttributeValues``, for
all of them. :class:`RequestExpressions` converts the values to the stored form once, parses each
expression the request has with :mod:`kvstore.dynamodb.expressions` (which records the
placeholders each uses), and :meth:`RequestExpressions.finish` then refuses placeholders no
expression used, with AWS's message, as DynamoDB does.

Each operation declares its members (:class:`Members`): the expression members it takes and
the legacy ones (``Expected`` with ``ConditionalOperator``, ``AttributeUpdates``,
``KeyConditions``, ``QueryFilter``/``ScanFilter``, ``AttributesToGet``). Before parsing anything
the request is checked as DynamoDB checks it:

* an expression member and a legacy member together are refused, naming both lists ("Can not use
  both expression and non-expression parameters in the same request: Non-expression parameters:
  {Expected} Expression parameters: {ConditionExpression}"), except that ``KeyConditions`` may
  go with a ``FilterExpression`` or ``ProjectionExpression`` when there is no
  ``KeyConditionExpression``;
* ``ExpressionAttributeNames`` without any expression member, and ``ExpressionAttributeValues``
  without any member that takes values (every expression but the projection), are refused
  with AWS's "... can only be specified when using expressions" messages.

A legacy member is translated into the same tree an expression parses into
(:mod:`kvstore.dynamodb.legacy`). What the front end evaluates (a Query's key condition and
filter, a projection) is used as that tree. What a storage node evaluates (a condition, an
update) must travel as source, so the tree is written back as text with generated placeholders
(:mod:`kvstore.dynamodb.unparse`) and parsed here once, exactly as the node will parse it: there
is one path from here on, and a legacy request whose generated text breaks an expression limit
(4 KB, 300 operators, 100 IN operands) is refused now, named by its legacy member. The generated
placeholders are the source's own, never the request's, so the unused-placeholder check does not
see them.

A condition or update meant for a storage node leaves as its source
(:class:`~kvstore.dynamodb.payloads.ExpressionSource`): the text and the placeholders in stored
form (the request's for an expression, the generated ones for a legacy member), which the node
parses again with the same parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from kvstore.dynamodb.expressions import (
    Condition,
    KeyCondition,
    Placeholders,
    Projection,
    Update,
    condition_from_expected,
    condition_from_filter,
    key_condition_from_legacy,
    parse_condition,
    parse_key_condition,
    parse_projection,
    parse_update,
    projection_from_attributes_to_get,
    update_from_attribute_updates,
)
from kvstore.dynamodb.payloads import (
    ExpressionCondition,
    ExpressionSource,
    ExpressionUpdate,
    condition_from_source,
    update_from_source,
)
from kvstore.dynamodb.requests import Body, invalid, optional_str
from kvstore.dynamodb.unparse import unparse_condition, unparse_update
from kvstore.errors import ValidationError
from kvstore.types import Value

__all__ = [
    "Members",
    "RequestExpressions",
    "PUT_ITEM",
    "DELETE_ITEM",
    "UPDATE_ITEM",
    "GET_ITEM",
    "QUERY",
    "SCAN",
    "BATCH_GET",
    "TRANSACT_CONDITION",
    "TRANSACT_UPDATE",
    "TRANSACT_GET",
]

_PROJECTION: Final = "ProjectionExpression"
_KEY_CONDITIONS: Final = "KeyConditions"
_KEY_CONDITION_EXPRESSION: Final = "KeyConditionExpression"


@dataclass(frozen=True, slots=True)
class Members:
    """The expression members and the legacy members of one operation, in AWS's order."""

    expressions: tuple[str, ...]
    legacy: tuple[str, ...] = ()


PUT_ITEM: Final = Members(("ConditionExpression",), ("Expected", "ConditionalOperator"))
DELETE_ITEM: Final = PUT_ITEM
UPDATE_ITEM: Final = Members(
    ("UpdateExpression", "ConditionExpression"),
    ("AttributeUpdates", "Expected", "ConditionalOperator"),
)
GET_ITEM: Final = Members((_PROJECTION,), ("AttributesToGet",))
BATCH_GET: Final = GET_ITEM  # one table's KeysAndAttributes
QUERY: Final = Members(
    (_PROJECTION, "FilterExpression", _KEY_CONDITION_EXPRESSION),
    ("AttributesToGet", "QueryFilter", "ConditionalOperator", _KEY_CONDITIONS),
)
SCAN: Final = Members(
    (_PROJECTION, "FilterExpression"), ("AttributesToGet", "ScanFilter", "ConditionalOperator")
)
# TransactWriteItems' and TransactGetItems' actions have no legacy members.
TRANSACT_CONDITION: Final = Members(("ConditionExpression",))
TRANSACT_UPDATE: Final = Members(("UpdateExpression", "ConditionExpression"))
TRANSACT_GET: Final = Members((_PROJECTION,))


def _check_members(body: Body, members: Members) -> None:
    """DynamoDB's refusals of a request's mix of expression and legacy members."""
    given = [name for name in members.expressions if body.get(name) is not None]
    legacy = [name for name in members.legacy if body.get(name) is not None]
    if given and _KEY_CONDITIONS in legacy and _KEY_CONDITION_EXPRESSION not in given:
        legacy.remove(_KEY_CONDITIONS)  # KeyConditions may go with a filter expression
    if given and legacy:
        raise invalid(
            "Can not use both expression and non-expression parameters in the same request: "
            f"Non-expression parameters: {{{', '.join(legacy)}}} "
            f"Expression parameters: {{{', '.join(given)}}}"
        )
    if body.get("ExpressionAttributeNames") is not None and not given:
        raise invalid("ExpressionAttributeNames can only be specified when using expressions")
    with_values = [name for name in members.expressions if name != _PROJECTION]
    if (
        with_values
        and body.get("ExpressionAttributeValues") is not None
        and not any(name in given for name in with_values)
    ):
        verb = "are" if len(with_values) > 1 else "is"
        raise invalid(
            "ExpressionAttributeValues can only be specified when using expressions: "
            f"{' and '.join(with_values)} {verb} null"
        )


class RequestExpressions:
    """The placeholders of one request (or one action of a transaction) and its parses."""

    def __init__(self, body: Body, members: Members) -> None:
        _check_members(body, members)
        names = body.get("ExpressionAttributeNames")
        values = body.get("ExpressionAttributeValues")
        if names is not None and not names:
            raise invalid("ExpressionAttributeNames must not be empty")
        if values is not None and not values:
            raise invalid("ExpressionAttributeValues must not be empty")
        self.placeholders = Placeholders(names, values)
        self.names = dict(self.placeholders.names)
        self.values: dict[str, Value] = dict(self.placeholders.values)
        self.members = members
        self._body = body

    def _text(self, member: str) -> str | None:
        if member not in self.members.expressions:
            return None
        text = optional_str(self._body, member)
        if text is not None and not text.strip():
            raise invalid(f"Invalid {_label(member)}: The expression can not be empty;")
        return text

    def _legacy(self, member: str) -> object | None:
        """A legacy member's JSON, when the operation takes it and the request has it."""
        return self._body.get(member) if member in self.members.legacy else None

    def _source(self, text: str) -> ExpressionSource:
        return ExpressionSource(text, dict(self.names), dict(self.values))

    def condition(self) -> ExpressionCondition | None:
        """The node-evaluated condition (``ConditionExpression`` or ``Expected``), if any."""
        text = self._text("ConditionExpression")
        if text is not None:
            return ExpressionCondition(self._source(text), parse_condition(text, self.placeholders))
        expected = self._legacy("Expected")
        if expected is None:
            return None
        tree = condition_from_expected(expected, self._legacy("ConditionalOperator"))
        if tree is None:  # an empty Expected: no condition
            return None
        source = unparse_condition(tree)
        try:
            return condition_from_source(ExpressionSource(*source))
        except ValidationError as error:
            raise _legacy_error("Expected", error) from None

    def filter(self) -> Condition | None:
        """A condition evaluated here, on items read (``FilterExpression``, or ``QueryFilter``
        / ``ScanFilter``)."""
        text = self._text("FilterExpression")
        if text is not None:
            return parse_condition(text, self.placeholders, expression="FilterExpression")
        for member in ("QueryFilter", "ScanFilter"):
            raw = self._legacy(member)
            if raw is not None:
                return condition_from_filter(
                    raw, self._legacy("ConditionalOperator"), parameter=member
                )
        return None

    def update(
        self, key: Mapping[str, Value], key_names: tuple[str, ...]
    ) -> ExpressionUpdate | None:
        """The node-applied update (``UpdateExpression`` or ``AttributeUpdates``), if any."""
        text = self._text("UpdateExpression")
        if text is not None:
            tree: Update = parse_update(text, self.placeholders, key_names=key_names)
            return ExpressionUpdate(self._source(text), tree, dict(key))
        raw = self._legacy("AttributeUpdates")
        if raw is None:
            return None
        tree = update_from_attribute_updates(raw, key_names=key_names)
        if tree == Update():  # an empty AttributeUpdates: the update with no action
            return self.empty_update(key)
        source = unparse_update(tree)
        try:
            return update_from_source(ExpressionSource(*source), dict(key))
        except ValidationError as error:
            raise _legacy_error("AttributeUpdates", error) from None

    def empty_update(self, key: Mapping[str, Value]) -> ExpressionUpdate:
        """An update with no action (``UpdateItem`` without ``UpdateExpression``): it creates
        the item with its key attributes when absent and changes nothing otherwise."""
        return ExpressionUpdate(ExpressionSource("", {}, {}), Update(), dict(key))

    def projection(self) -> Projection | None:
        """``ProjectionExpression`` or ``AttributesToGet``, if any."""
        text = self._text(_PROJECTION)
        if text is not None:
            return parse_projection(text, self.placeholders)
        raw = self._legacy("AttributesToGet")
        return None if raw is None else projection_from_attributes_to_get(raw)

    @property
    def projection_member(self) -> str:
        """The member the projection came from, for messages."""
        legacy = self._legacy("AttributesToGet") is not None
        return "AttributesToGet" if legacy else _PROJECTION

    def key_condition(self, hash_key: str, range_key: str | None) -> KeyCondition | None:
        """``KeyConditionExpression`` or ``KeyConditions``, if any."""
        text = self._text(_KEY_CONDITION_EXPRESSION)
        if text is not None:
            return parse_key_condition(
                text, self.placeholders, hash_key=hash_key, range_key=range_key
            )
        raw = self._legacy(_KEY_CONDITIONS)
        if raw is None:
            return None
        return key_condition_from_legacy(raw, hash_key=hash_key, range_key=range_key)

    def finish(self) -> None:
        """Refuse placeholders that no expression of the request used."""
        self.placeholders.unused_check()


def _legacy_error(member: str, error: ValidationError) -> ValidationError:
    """A limit the generated expression of a legacy member broke, named by the member."""
    detail = error.message.split(": ", 1)[1] if error.message.startswith("Invalid ") else None
    return invalid(f"Invalid {member}: {detail or error.message}")


def _label(member: str) -> str:
    return member.removesuffix("Expression") + "Expression"
