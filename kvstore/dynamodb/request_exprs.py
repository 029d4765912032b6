"""The expressions of one request, parsed against its placeholders.

Theory of operation
-------------------
A DynamoDB request gives its expressions (condition, update, projection, filter, key condition)
and one set of placeholders, ``ExpressionAttributeNames`` and ``ExpressionAttributeValues``, for
all of them. :class:`RequestExpressions` converts the values to the stored form once, parses each
expression the request has with :mod:`kvstore.dynamodb.expressions` (which records the
placeholders each uses), and :meth:`RequestExpressions.finish` then refuses placeholders no
expression used, with AWS's message, as DynamoDB does. Placeholders given without any expression
are refused the same way.

A condition or update meant for a storage node leaves as its source
(:class:`~kvstore.dynamodb.payloads.ExpressionSource`): the text and the request's placeholders
in stored form, which the node parses again with the same parser.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvstore.dynamodb.expressions import (
    Condition,
    KeyCondition,
    Placeholders,
    Projection,
    Update,
    parse_condition,
    parse_key_condition,
    parse_projection,
    parse_update,
)
from kvstore.dynamodb.payloads import ExpressionCondition, ExpressionSource, ExpressionUpdate
from kvstore.dynamodb.requests import Body, invalid, optional_str
from kvstore.types import Value

__all__ = ["RequestExpressions"]


class RequestExpressions:
    """The placeholders of one request (or one action of a transaction) and its parses."""

    def __init__(self, body: Body) -> None:
        names = body.get("ExpressionAttributeNames")
        values = body.get("ExpressionAttributeValues")
        if names is not None and not names:
            raise invalid("ExpressionAttributeNames must not be empty")
        if values is not None and not values:
            raise invalid("ExpressionAttributeValues must not be empty")
        self.placeholders = Placeholders(names, values)
        self.names = dict(self.placeholders.names)
        self.values: dict[str, Value] = dict(self.placeholders.values)
        self._body = body

    def _text(self, member: str) -> str | None:
        text = optional_str(self._body, member)
        if text is not None and not text.strip():
            raise invalid(f"Invalid {_label(member)}: The expression can not be empty;")
        return text

    def _source(self, text: str) -> ExpressionSource:
        return ExpressionSource(text, dict(self.names), dict(self.values))

    def condition(self, member: str = "ConditionExpression") -> ExpressionCondition | None:
        """The node-evaluated condition of ``member``, if the request has one."""
        text = self._text(member)
        if text is None:
            return None
        return ExpressionCondition(self._source(text), parse_condition(text, self.placeholders))

    def filter(self, member: str = "FilterExpression") -> Condition | None:
        """A condition evaluated here, on items read (a Query's or Scan's filter)."""
        text = self._text(member)
        if text is None:
            return None
        return parse_condition(text, self.placeholders, expression=member)

    def update(
        self, key: Mapping[str, Value], key_names: tuple[str, ...]
    ) -> ExpressionUpdate | None:
        text = self._text("UpdateExpression")
        if text is None:
            return None
        tree: Update = parse_update(text, self.placeholders, key_names=key_names)
        return ExpressionUpdate(self._source(text), tree, dict(key))

    def empty_update(self, key: Mapping[str, Value]) -> ExpressionUpdate:
        """An update with no action (``UpdateItem`` without ``UpdateExpression``): it creates
        the item with its key attributes when absent and changes nothing otherwise."""
        return ExpressionUpdate(self._source(""), Update(), dict(key))

    def projection(self) -> Projection | None:
        text = self._text("ProjectionExpression")
        return None if text is None else parse_projection(text, self.placeholders)

    def key_condition(self, hash_key: str, range_key: str | None) -> KeyCondition | None:
        text = self._text("KeyConditionExpression")
        if text is None:
            return None
        return parse_key_condition(text, self.placeholders, hash_key=hash_key, range_key=range_key)

    def finish(self) -> None:
        """Refuse placeholders that no expression of the request used."""
        self.placeholders.unused_check()


def _label(member: str) -> str:
    return member.removesuffix("Expression") + "Expression"
