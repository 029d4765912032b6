"""Builders for the operations and conditions of the public API's JSON forms (docs/api.md).

Theory of operation
-------------------
A transaction is a list of operations (``put``, ``delete``, ``update``, ``check``), each on one
key with an optional condition. The builders here produce exactly the API's JSON forms, so what
the SDK sends is what ``curl`` would send:

* :class:`Put`, :class:`Delete`, :class:`Update`, :class:`Check` are frozen values;
  ``to_json()`` gives the operation object.
* :func:`exists`, :func:`absent`, :func:`version_is`, :func:`eq` ... :func:`ge`,
  :func:`all_of`, :func:`any_of`, :func:`not_` return condition objects (plain dicts), ready to
  pass as ``if_=`` or to compose.

Every builder validates what it builds with the store's own parsers
(:func:`kvstore.ops.op_from_json`, :func:`kvstore.conditions.condition_from_json`) when it is
built: a bad argument raises :class:`~kvstore.errors.ValidationError` at the line that made it,
and nothing is ever sent. The SDK validates again, as a whole transaction, before sending
(:func:`kvstore.ops.ops_from_json`: op count, distinct keys, total size), so raw JSON dicts are
accepted wherever builders are.

Values are typed :data:`~kvstore.types.ValueInput` (so ``object()`` does not type-check) and
made plain lists and dicts when built (:func:`kvstore.client.typed.to_value`): a ``Put``'s
``value`` is what is sent.

``if_`` has its trailing underscore because ``if`` is a keyword; the JSON member is ``"if"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TypeAlias

from kvstore.client.typed import to_value
from kvstore.conditions import condition_from_json
from kvstore.errors import ValidationError
from kvstore.ops import op_from_json
from kvstore.types import ValueInput

__all__ = [
    "JsonCondition",
    "Put",
    "Delete",
    "Update",
    "Check",
    "TxnOp",
    "op_json",
    "exists",
    "absent",
    "version_is",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "all_of",
    "any_of",
    "not_",
]

JsonCondition: TypeAlias = Mapping[str, object]
"""A condition in its JSON form, e.g. ``{"exists": true}`` or ``{"path": "n", "ge": 1}``."""


def _with_condition(obj: dict[str, object], if_: JsonCondition | None) -> dict[str, object]:
    if if_ is not None:
        obj["if"] = dict(if_)
    return obj


def _values(paths: Mapping[str, ValueInput]) -> object:
    """``{path: value}`` with each value made plain (a non-mapping is left for the parser to
    refuse with its typed error)."""
    if not isinstance(paths, Mapping):
        return paths
    return {path: to_value(value) for path, value in paths.items()}


@dataclass(frozen=True, slots=True)
class Put:
    """Store ``value`` at ``key`` (creating or replacing the item) if ``if_`` holds."""

    key: str
    value: ValueInput
    if_: JsonCondition | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", to_value(self.value))
        op_from_json(self.to_json())

    def to_json(self) -> dict[str, object]:
        return _with_condition({"op": "put", "key": self.key, "value": self.value}, self.if_)


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove the item at ``key`` (nothing to remove is not an error) if ``if_`` holds."""

    key: str
    if_: JsonCondition | None = None

    def __post_init__(self) -> None:
        op_from_json(self.to_json())

    def to_json(self) -> dict[str, object]:
        return _with_condition({"op": "delete", "key": self.key}, self.if_)


@dataclass(frozen=True, slots=True)
class Update:
    """Change parts of the value at ``key``: ``set`` paths to values, ``remove`` paths, ``add``
    numbers to paths (from 0), ``append`` lists to lists (from ``[]``); at least one action.
    A path is dotted (``"a.b"``); ``""`` is the whole value."""

    key: str
    _: KW_ONLY
    set: Mapping[str, ValueInput] | None = None  # the API's member name, hence the builtin's
    remove: Sequence[str] | None = None
    add: Mapping[str, int | float] | None = None
    append: Mapping[str, Sequence[ValueInput]] | None = None
    if_: JsonCondition | None = None

    def __post_init__(self) -> None:
        op_from_json(self.to_json())

    def to_json(self) -> dict[str, object]:
        obj: dict[str, object] = {"op": "update", "key": self.key}
        if self.set is not None:
            obj["set"] = _values(self.set)
        if self.remove is not None:
            if isinstance(self.remove, str):
                raise ValidationError("op.remove", "must be a list of paths, not one string")
            obj["remove"] = list(self.remove)
        if self.add is not None:
            obj["add"] = dict(self.add)
        if self.append is not None:
            obj["append"] = _values(self.append)
        return _with_condition(obj, self.if_)


@dataclass(frozen=True, slots=True)
class Check:
    """Write nothing; the transaction commits only if ``if_`` holds on ``key``."""

    key: str
    if_: JsonCondition

    def __post_init__(self) -> None:
        op_from_json(self.to_json())

    def to_json(self) -> dict[str, object]:
        return _with_condition({"op": "check", "key": self.key}, self.if_)


TxnOp: TypeAlias = Put | Delete | Update | Check | Mapping[str, object]
"""One operation of :meth:`Client.transact`: a builder or its JSON form."""


def op_json(op: TxnOp) -> Mapping[str, object]:
    """The JSON form of a builder; a mapping is taken as already being one."""
    if isinstance(op, Put | Delete | Update | Check):
        return op.to_json()
    return op


# --- conditions -------------------------------------------------------------------------------


def _checked(condition: dict[str, object]) -> dict[str, object]:
    condition_from_json(condition)
    return condition


def exists() -> dict[str, object]:
    """The item exists."""
    return {"exists": True}


def absent() -> dict[str, object]:
    """The item does not exist."""
    return {"exists": False}


def version_is(version: int) -> dict[str, object]:
    """The item exists with this version."""
    return _checked({"version": version})


def _compare(operator: str, path: str, value: ValueInput) -> dict[str, object]:
    return _checked({"path": path, operator: to_value(value)})


def eq(path: str, value: ValueInput) -> dict[str, object]:
    """The value at ``path`` (``""``: the whole value) equals ``value`` (JSON equality)."""
    return _compare("eq", path, value)


def ne(path: str, value: ValueInput) -> dict[str, object]:
    """The value at ``path`` exists and differs from ``value`` (a missing path is false)."""
    return _compare("ne", path, value)


def lt(path: str, value: ValueInput) -> dict[str, object]:
    """The value at ``path`` is below ``value`` (numbers with numbers, strings with strings)."""
    return _compare("lt", path, value)


def le(path: str, value: ValueInput) -> dict[str, object]:
    """The value at ``path`` is at most ``value``."""
    return _compare("le", path, value)


def gt(path: str, value: ValueInput) -> dict[str, object]:
    """The value at ``path`` is above ``value``."""
    return _compare("gt", path, value)


def ge(path: str, value: ValueInput) -> dict[str, object]:
    """The value at ``path`` is at least ``value``."""
    return _compare("ge", path, value)


def all_of(*conditions: JsonCondition) -> dict[str, object]:
    """Every condition holds (at least one)."""
    return _checked({"all": [dict(condition) for condition in conditions]})


def any_of(*conditions: JsonCondition) -> dict[str, object]:
    """At least one condition holds (at least one given)."""
    return _checked({"any": [dict(condition) for condition in conditions]})


def not_(condition: JsonCondition) -> dict[str, object]:
    """``condition`` does not hold."""
    return _checked({"not": dict(condition)})
