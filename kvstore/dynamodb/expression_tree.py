"""The trees DynamoDB expressions parse into, and the placeholders they refer to.

Theory of operation
-------------------
Every expression of a request (condition, filter, update, projection, key condition) is parsed
once by :mod:`kvstore.dynamodb.expressions` into the immutable trees below, with every ``#name``
and ``:value`` placeholder already substituted: a :data:`DocumentPath` is a tuple of attribute
names (``str``) and list indices (``int``), a :class:`Literal` holds a stored-form typed value.
Evaluation (:mod:`kvstore.dynamodb.evaluate`) then needs nothing but the tree and the item.

Conditions: :class:`Comparison`, :class:`Between`, :class:`In`, the functions
:class:`AttributeExists`, :class:`AttributeNotExists`, :class:`AttributeType`,
:class:`BeginsWith`, :class:`Contains`, and the connectives :class:`And` / :class:`Or` (n-ary:
a chain ``a AND b AND c`` is one node, so long chains stay shallow) and :class:`Not`. Operands
are a :class:`Path`, a :class:`Literal` or :class:`Size` of a path.

Updates: an :class:`Update` holds its actions by clause. A SET value is an operand, an
:class:`Arithmetic` ``x + y`` / ``x - y``, :class:`IfNotExists` or :class:`ListAppend`.

:class:`Placeholders` maps ``ExpressionAttributeNames`` and ``ExpressionAttributeValues`` and
records which entries the parsed expressions used, so that the request can be refused for an
unused one (:meth:`Placeholders.unused_check`) with AWS's wording, after every expression of the
request has been parsed with the same instance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from kvstore.dynamodb.attributes import (
    check_attribute_name,
    serialization_error,
    value_from_stored,
    value_from_wire,
)
from kvstore.errors import ValidationError
from kvstore.limits import DYNAMODB_PLACEHOLDER_BYTES_MAX
from kvstore.types import Value

__all__ = [
    "DocumentPath",
    "Path",
    "Literal",
    "Size",
    "Operand",
    "Comparison",
    "Between",
    "In",
    "AttributeExists",
    "AttributeNotExists",
    "AttributeType",
    "BeginsWith",
    "Contains",
    "And",
    "Or",
    "Not",
    "Condition",
    "Arithmetic",
    "IfNotExists",
    "ListAppend",
    "SetValue",
    "SetAction",
    "RemoveAction",
    "AddAction",
    "DeleteAction",
    "Update",
    "Projection",
    "RangeTest",
    "KeyCondition",
    "Placeholders",
    "format_path",
]

DocumentPath: TypeAlias = tuple[str | int, ...]


def format_path(path: DocumentPath) -> str:
    """A path as AWS shows one in messages: ``[a, b, [1]]``."""
    return "[" + ", ".join(f"[{p}]" if isinstance(p, int) else p for p in path) + "]"


# --- operands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Path:
    """The value at a document path of the item (missing when any step is)."""

    path: DocumentPath


@dataclass(frozen=True, slots=True)
class Literal:
    """A ``:value`` placeholder's typed value (stored form)."""

    value: Value


@dataclass(frozen=True, slots=True)
class Size:
    """``size(path)``: characters of S, bytes of B, elements of a set, L or M."""

    path: DocumentPath


Operand: TypeAlias = Path | Literal | Size

# --- conditions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """``left <op> right``; ``operator`` is one of ``= <> < <= > >=``."""

    operator: str
    left: Operand
    right: Operand


@dataclass(frozen=True, slots=True)
class Between:
    """``operand BETWEEN low AND high`` (both bounds included)."""

    operand: Operand
    low: Operand
    high: Operand


@dataclass(frozen=True, slots=True)
class In:
    """``operand IN (choice, ...)``: equal to at least one choice."""

    operand: Operand
    choices: tuple[Operand, ...]


@dataclass(frozen=True, slots=True)
class AttributeExists:
    path: DocumentPath


@dataclass(frozen=True, slots=True)
class AttributeNotExists:
    path: DocumentPath


@dataclass(frozen=True, slots=True)
class AttributeType:
    """``attribute_type(path, :t)``: the attribute exists and has type ``type_tag``."""

    path: DocumentPath
    type_tag: str


@dataclass(frozen=True, slots=True)
class BeginsWith:
    """``begins_with(operand, prefix)`` on two S or two B."""

    operand: Operand
    prefix: Operand


@dataclass(frozen=True, slots=True)
class Contains:
    """``contains(operand, element)``: a substring, or a member of a set or list."""

    operand: Operand
    element: Operand


@dataclass(frozen=True, slots=True)
class And:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Or:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    condition: Condition


Condition: TypeAlias = (
    Comparison
    | Between
    | In
    | AttributeExists
    | AttributeNotExists
    | AttributeType
    | BeginsWith
    | Contains
    | And
    | Or
    | Not
)

# --- updates ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """``left + right`` or ``left - right`` (``operator`` ``"+"`` or ``"-"``) on numbers."""

    operator: str
    left: SetValue
    right: SetValue


@dataclass(frozen=True, slots=True)
class IfNotExists:
    """``if_not_exists(path, default)``: the attribute at ``path``, else ``default``."""

    path: DocumentPath
    default: SetValue


@dataclass(frozen=True, slots=True)
class ListAppend:
    """``list_append(left, right)``: the two lists concatenated."""

    left: SetValue
    right: SetValue


SetValue: TypeAlias = Path | Literal | Arithmetic | IfNotExists | ListAppend


@dataclass(frozen=True, slots=True)
class SetAction:
    path: DocumentPath
    value: SetValue


@dataclass(frozen=True, slots=True)
class RemoveAction:
    path: DocumentPath


@dataclass(frozen=True, slots=True)
class AddAction:
    """``ADD path :v``: a number added, or set elements added (a missing attribute is 0/{})."""

    path: DocumentPath
    value: Value


@dataclass(frozen=True, slots=True)
class DeleteAction:
    """``DELETE path :v``: set elements removed; a set left empty disappears."""

    path: DocumentPath
    value: Value


@dataclass(frozen=True, slots=True)
class Update:
    """An update expression: each clause's actions, in the order written."""

    set: tuple[SetAction, ...] = ()
    remove: tuple[RemoveAction, ...] = ()
    add: tuple[AddAction, ...] = ()
    delete: tuple[DeleteAction, ...] = ()

    def paths(self) -> tuple[DocumentPath, ...]:
        """The path every action writes, clause by clause."""
        return (
            tuple(a.path for a in self.set)
            + tuple(a.path for a in self.remove)
            + tuple(a.path for a in self.add)
            + tuple(a.path for a in self.delete)
        )


# --- projections and key conditions -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Projection:
    """The attributes (or parts of them) to return; no two paths overlap."""

    paths: tuple[DocumentPath, ...]


@dataclass(frozen=True, slots=True)
class RangeTest:
    """The sort-key test of a key condition: ``operator`` is one of ``= < <= > >=``,
    ``BETWEEN`` (two values) or ``begins_with`` (one value)."""

    name: str
    operator: str
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class KeyCondition:
    """``hash = :v`` and optionally one test on the sort key."""

    hash_name: str
    hash_value: Value
    range: RangeTest | None = None


# --- placeholders -------------------------------------------------------------------------

_NAME_KEY: Final = re.compile(r"#[A-Za-z0-9_]+")
_VALUE_KEY: Final = re.compile(r":[A-Za-z0-9_]+")


def _key_error(parameter: str, key: str) -> ValidationError:
    return ValidationError("", f'{parameter} contains invalid key: Syntax error; key: "{key}"')


def _check_key(parameter: str, key: object, pattern: re.Pattern[str]) -> str:
    if not isinstance(key, str):
        raise serialization_error(f"{parameter} keys must be strings")
    if pattern.fullmatch(key) is None:
        raise _key_error(parameter, key)
    if len(key.encode()) > DYNAMODB_PLACEHOLDER_BYTES_MAX:
        raise ValidationError(
            "",
            f"{parameter} contains invalid key: The key is longer than "
            f"{DYNAMODB_PLACEHOLDER_BYTES_MAX} bytes; key: {key[:32]}...",
        )
    return key


class Placeholders:
    """A request's ``ExpressionAttributeNames`` and ``ExpressionAttributeValues`` (values in
    stored form), with the set of those the parsed expressions used.

    Build it from the request's JSON (``Placeholders(names, values)``: validated, values from
    DynamoDB JSON) or from stored-form values (:meth:`from_stored`, for a node re-parsing the
    expressions of a request the front end already validated). ``None`` means the parameter was
    absent; an empty map is refused as AWS refuses it."""

    __slots__ = ("_names", "_used_names", "_used_values", "_values")

    def __init__(self, names: object = None, values: object = None) -> None:
        self._names = self._read_names(names)
        self._values = self._read_values(values, stored=False)
        self._used_names: set[str] = set()
        self._used_values: set[str] = set()

    @classmethod
    def from_stored(
        cls, names: Mapping[str, str] | None, values: Mapping[str, Value] | None
    ) -> Placeholders:
        """Placeholders whose values are stored-form typed values (validated as such)."""
        self = cls.__new__(cls)
        self._names = cls._read_names(names)
        self._values = cls._read_values(values, stored=True)
        self._used_names = set()
        self._used_values = set()
        return self

    @staticmethod
    def _read_names(names: object) -> dict[str, str]:
        parameter = "ExpressionAttributeNames"
        if names is None:
            return {}
        if not isinstance(names, Mapping):
            raise serialization_error(f"{parameter} must be a map")
        if not names:
            raise ValidationError("", f"{parameter} must not be empty")
        result: dict[str, str] = {}
        for key, name in names.items():
            checked = _check_key(parameter, key, _NAME_KEY)
            if not isinstance(name, str):
                raise serialization_error(f"{parameter} values must be strings")
            try:
                result[checked] = check_attribute_name(name)
            except ValidationError as error:
                raise ValidationError(
                    "", f"{parameter} contains invalid value: {error.message} for key {checked}"
                ) from None
        return result

    @staticmethod
    def _read_values(values: object, *, stored: bool) -> dict[str, Value]:
        parameter = "ExpressionAttributeValues"
        if values is None:
            return {}
        if not isinstance(values, Mapping):
            raise serialization_error(f"{parameter} must be a map")
        if not values:
            raise ValidationError("", f"{parameter} must not be empty")
        result: dict[str, Value] = {}
        for key, raw in values.items():
            checked = _check_key(parameter, key, _VALUE_KEY)
            try:
                result[checked] = value_from_stored(raw) if stored else value_from_wire(raw)
            except ValidationError as error:
                if "aws_type" in error.details:
                    raise
                raise ValidationError(
                    "", f"{parameter} contains invalid value: {error.message} for key {checked}"
                ) from None
        return result

    @property
    def names(self) -> Mapping[str, str]:
        return self._names

    @property
    def values(self) -> Mapping[str, Value]:
        return self._values

    def name(self, key: str) -> str | None:
        """The attribute name ``key`` stands for, recorded as used; None when undefined."""
        name = self._names.get(key)
        if name is not None:
            self._used_names.add(key)
        return name

    def value(self, key: str) -> Value | None:
        """The typed value ``key`` stands for, recorded as used; None when undefined."""
        value = self._values.get(key)
        if value is not None:
            self._used_values.add(key)
        return value

    def unused_check(self) -> None:
        """AWS's error when a name or value was given that no parsed expression used."""
        unused_names = sorted(set(self._names) - self._used_names)
        if unused_names:
            raise ValidationError(
                "",
                "Value provided in ExpressionAttributeNames unused in expressions: keys: "
                "{" + ", ".join(unused_names) + "}",
            )
        unused_values = sorted(set(self._values) - self._used_values)
        if unused_values:
            raise ValidationError(
                "",
                "Value provided in ExpressionAttributeValues unused in expressions: keys: "
                "{" + ", ".join(unused_values) + "}",
            )
