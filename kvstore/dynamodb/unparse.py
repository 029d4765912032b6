"""Condition and update trees written back as expression text, with generated placeholders.

Theory of operation
-------------------
A condition or update evaluated on a storage node travels as expression *source* (text plus
placeholders, :mod:`kvstore.dynamodb.payloads`) and the node parses it again. The legacy
parameters (``Expected``, ``AttributeUpdates``: :mod:`kvstore.dynamodb.legacy`) arrive as trees,
not text; :func:`unparse_condition` and :func:`unparse_update` turn such a tree into source the
parser (:mod:`kvstore.dynamodb.expressions`) reads back into the *same* tree, so legacy requests
take the one path every expression takes: tree, source, the node's parse.

Placeholders are generated, never taken from a request: every attribute name is a ``#n<i>``
(one per distinct name, so a name that is a reserved word, holds a dot or is any other text is
safe) and every literal a ``:v<i>`` (one per occurrence). A source therefore uses all of its
placeholders, and it shares none with the request's own ``ExpressionAttributeNames`` and
``ExpressionAttributeValues``, so the request's unused-placeholder check never sees them.

The text is as short as the grammar allows (the parser refuses more than 4 KB): parentheses
only where precedence needs them (NOT binds tighter than AND, AND tighter than OR), never
around a lone comparison or function, and never twice (the parser refuses redundant ones).

The inverse holds for trees in the parser's normal form, the only ones it produces: AND and OR
nodes have at least two operands and no operand of their own kind (the parser flattens
``a AND (b AND c)``), ``+``/``-`` appears only at the top of a SET value, ``size`` never in an
update, ``if_not_exists`` takes a path first. A tree outside the grammar is a ``ValueError``
(a bug of the caller, not the client's request). Literal operand *types* are not checked here:
the parser's checks apply when the source is parsed (the caller parses it once before sending
it, so a legacy request that breaks a limit is refused up front). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from kvstore.dynamodb.expression_tree import (
    And,
    Arithmetic,
    AttributeExists,
    AttributeNotExists,
    AttributeType,
    BeginsWith,
    Between,
    Comparison,
    Condition,
    Contains,
    DocumentPath,
    IfNotExists,
    In,
    ListAppend,
    Literal,
    Not,
    Operand,
    Or,
    Path,
    SetValue,
    Size,
    Update,
)
from kvstore.types import Value

__all__ = ["Unparsed", "unparse_condition", "unparse_update"]

# Binding strength of a condition node's connective; atoms bind tightest.
_OR, _AND, _NOT, _ATOM = 1, 2, 3, 4


class Unparsed(NamedTuple):
    """Expression text and the placeholders it uses (values in stored form)."""

    text: str
    names: dict[str, str]
    values: dict[str, Value]


@dataclass(slots=True)
class _Writer:
    """The placeholders handed out while writing one expression."""

    names: dict[str, str] = field(default_factory=dict)  # placeholder -> attribute name
    values: dict[str, Value] = field(default_factory=dict)  # placeholder -> stored value
    _by_name: dict[str, str] = field(default_factory=dict)  # attribute name -> placeholder

    def name(self, name: str) -> str:
        placeholder = self._by_name.get(name)
        if placeholder is None:
            placeholder = f"#n{len(self._by_name)}"
            self._by_name[name] = placeholder
            self.names[placeholder] = name
        return placeholder

    def value(self, value: Value) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = value
        return placeholder

    def path(self, path: DocumentPath) -> str:
        if not path or not isinstance(path[0], str):
            raise ValueError(f"a document path starts with an attribute name: {path!r}")
        parts: list[str] = []
        for step in path:
            if isinstance(step, int):
                if isinstance(step, bool) or step < 0:
                    raise ValueError(f"a list index is a non-negative integer: {step!r}")
                parts.append(f"[{step}]")
            else:
                parts.append(("." if parts else "") + self.name(step))
        return "".join(parts)

    def done(self, text: str) -> Unparsed:
        return Unparsed(text, self.names, self.values)

    # --- conditions -------------------------------------------------------------------------

    def operand(self, operand: Operand) -> str:
        if isinstance(operand, Path):
            return self.path(operand.path)
        if isinstance(operand, Literal):
            return self.value(operand.value)
        if isinstance(operand, Size):
            return f"size({self.path(operand.path)})"
        raise ValueError(f"not a condition operand: {operand!r}")

    def condition(self, condition: Condition) -> tuple[str, int]:
        """The text of ``condition`` and how tightly it binds."""
        match condition:
            case Comparison(operator, left, right):
                if operator not in ("=", "<>", "<", "<=", ">", ">="):
                    raise ValueError(f"not a comparison operator: {operator!r}")
                return f"{self.operand(left)} {operator} {self.operand(right)}", _ATOM
            case Between(operand, low, high):
                text = self.operand(operand)
                return f"{text} BETWEEN {self.operand(low)} AND {self.operand(high)}", _ATOM
            case In(operand, choices):
                if not choices:
                    raise ValueError("IN needs at least one choice")
                text = self.operand(operand)
                listed = ", ".join(self.operand(choice) for choice in choices)
                return f"{text} IN ({listed})", _ATOM
            case AttributeExists(path):
                return f"attribute_exists({self.path(path)})", _ATOM
            case AttributeNotExists(path):
                return f"attribute_not_exists({self.path(path)})", _ATOM
            case AttributeType(path, type_tag):
                text = self.path(path)
                return f"attribute_type({text}, {self.value({'S': type_tag})})", _ATOM
            case BeginsWith(operand, prefix):
                text = self.operand(operand)
                return f"begins_with({text}, {self.operand(prefix)})", _ATOM
            case Contains(operand, element):
                text = self.operand(operand)
                return f"contains({text}, {self.operand(element)})", _ATOM
            case And(parts):
                return self.connective("AND", _AND, And, parts), _AND
            case Or(parts):
                return self.connective("OR", _OR, Or, parts), _OR
            case Not(inner):
                text, strength = self.condition(inner)
                # NOT binds tighter than AND/OR: parenthesise those; NOT NOT x needs none.
                return ("NOT " + (text if strength >= _NOT else f"({text})")), _NOT
        raise ValueError(f"not a condition: {condition!r}")

    def connective(
        self, word: str, strength: int, kind: type[And] | type[Or], parts: tuple[Condition, ...]
    ) -> str:
        if len(parts) < 2:
            raise ValueError(f"{word} needs at least two operands")
        written: list[str] = []
        for part in parts:
            if isinstance(part, kind):
                raise ValueError(f"{word} directly inside {word} (the parser flattens it)")
            text, binds = self.condition(part)
            written.append(text if binds > strength else f"({text})")
        return f" {word} ".join(written)

    # --- updates ----------------------------------------------------------------------------

    def set_operand(self, value: SetValue) -> str:
        """An operand of a SET value: a path, a literal or a function (not ``+``/``-``)."""
        match value:
            case Path(path):
                return self.path(path)
            case Literal(literal):
                return self.value(literal)
            case IfNotExists(path, default):
                return f"if_not_exists({self.path(path)}, {self.set_operand(default)})"
            case ListAppend(left, right):
                return f"list_append({self.set_operand(left)}, {self.set_operand(right)})"
            case Arithmetic():
                raise ValueError("+ and - appear only at the top of a SET value")
        raise ValueError(f"not an update operand: {value!r}")

    def set_value(self, value: SetValue) -> str:
        if isinstance(value, Arithmetic):
            if value.operator not in ("+", "-"):
                raise ValueError(f"not an arithmetic operator: {value.operator!r}")
            left, right = self.set_operand(value.left), self.set_operand(value.right)
            return f"{left} {value.operator} {right}"
        return self.set_operand(value)


def unparse_condition(condition: Condition) -> Unparsed:
    """Source that parses back into ``condition`` (see the module docstring)."""
    writer = _Writer()
    text, _ = writer.condition(condition)
    return writer.done(text)


def unparse_update(update: Update) -> Unparsed:
    """Source that parses back into ``update``: its clauses in the order SET, REMOVE, ADD,
    DELETE, each action as written in the tree. An update with no action is the empty text
    (which no parser accepts: :mod:`kvstore.dynamodb.payloads` reads it as "no action")."""
    writer = _Writer()
    clauses: list[str] = []
    if update.set:
        actions = [f"{writer.path(a.path)} = {writer.set_value(a.value)}" for a in update.set]
        clauses.append("SET " + ", ".join(actions))
    if update.remove:
        clauses.append("REMOVE " + ", ".join(writer.path(a.path) for a in update.remove))
    if update.add:
        actions = [f"{writer.path(a.path)} {writer.value(a.value)}" for a in update.add]
        clauses.append("ADD " + ", ".join(actions))
    if update.delete:
        actions = [f"{writer.path(a.path)} {writer.value(a.value)}" for a in update.delete]
        clauses.append("DELETE " + ", ".join(actions))
    return writer.done(" ".join(clauses))
