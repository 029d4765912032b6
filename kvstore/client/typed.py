"""Value types in the SDK: what a write accepts, and the caller's type for what a read returns.

Theory of operation
-------------------
The store holds JSON values (plus bytes through msgpack). Two typing problems meet at the SDK's
edge, and this module solves each once:

* **Writes.** ``put``/``update``/the builders take a :data:`~kvstore.types.ValueInput`: any
  ``Sequence`` for a list and any ``str``-keyed ``Mapping`` for an object, so that a
  ``list[int]`` or a ``TypedDict`` type-checks where a value goes (``object()`` does not).
  :func:`to_value` turns such an input into the store's :data:`~kvstore.types.Value` (tuples and
  other sequences become lists, mappings become dicts) before the store's own validation
  (:func:`kvstore.values.validate_value`) runs, so the static type and what is accepted at run
  time agree. ``str``, ``bytes`` and ``bytearray`` are never taken for sequences.
* **Reads.** An :class:`~kvstore.client.results.Item` is generic in its value's type. Without a
  type, reads give ``Item[JsonValue]``: honest, but a union a type checker makes you narrow.
  With ``value_type=`` (``await kv.get("acct/1", Account)``, ``Account`` a ``TypedDict``) they
  give ``Item[Account]``, and ``item.value["balance"]`` is an ``int`` to the type checker. The
  SDK checks the value against the type when it arrives (:func:`checker`), so the static type is
  true at run time: a value that does not match raises ``ValidationError`` naming the path
  (``value.balance``) and the key, instead of failing later somewhere else.

Types :func:`checker` understands (anything else is a ``ValidationError`` on ``value_type``,
raised before anything is sent): ``object`` and ``Any`` (anything), ``None``, ``bool``, ``int``
(not ``bool``), ``float`` (an integer is a JSON number too), ``str``, ``list``/``list[T]``,
``dict``/``dict[str, T]``, unions (``A | B``, ``Optional``), ``Literal[...]``,
:data:`~kvstore.types.JsonValue`, and ``TypedDict`` classes (a dict with every required key; keys
it declares are checked, other keys are allowed, as for any structural type). A checker is built
once per type and cached.

Why not ``msgspec.convert(value, type=T, strict=True)``: tried (msgspec 0.23), it is not faithful
here. On Python 3.11 it refuses ``JsonValue`` (a recursive alias: ``ForwardRef('JsonValue')`` is
not supported), even as a ``TypedDict`` field; it refuses unions of two ``TypedDict`` classes,
of a ``TypedDict`` and ``dict[str, T]``, or of two list types; its paths do not name dict keys
(``$.lines[0][...]`` where this module says ``value.lines[0].price``) nor a missing key (``$``);
and it accepts and converts types whose value would then not be what a read returns (``datetime``,
``bytes``, ``tuple``, dataclasses), so a walk over the type would remain anyway.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar, Union, cast, overload

import typing_extensions
from typing_extensions import is_typeddict

from kvstore.client.results import Item
from kvstore.errors import ValidationError
from kvstore.limits import VALUE_DEPTH_MAX
from kvstore.types import JsonValue, Value, ValueInput
from kvstore.values import index_field, member_field

__all__ = ["to_value", "checker", "typed_item", "typed_items"]

V = TypeVar("V")

# Checks a value and returns None, or a (path, what was expected) pair for the first mismatch.
_Check = Callable[[object, str], "tuple[str, str] | None"]
_NOT_SEQUENCES = (str, bytes, bytearray, memoryview)
_REQUIRED: Final = frozenset({typing.Required, typing_extensions.Required})
_NOT_REQUIRED: Final = frozenset({typing.NotRequired, typing_extensions.NotRequired})


def to_value(value: ValueInput) -> Value:
    """``value`` with every non-list sequence made a list and every non-dict mapping a dict (see
    the module); anything else is left for :func:`kvstore.values.validate_value` to judge. Nesting
    deeper than the store's limit is left as is, and refused by that validation."""
    return cast(Value, _convert(value, 0))


def _convert(value: object, depth: int) -> object:
    if depth > VALUE_DEPTH_MAX:
        return value
    if isinstance(value, Mapping):
        return {name: _convert(item, depth + 1) for name, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, _NOT_SEQUENCES):
        return [_convert(item, depth + 1) for item in value]
    return value


def _type_name(annotation: object) -> str:
    name = getattr(annotation, "__name__", None)
    return (
        name
        if isinstance(name, str) and not getattr(annotation, "__args__", None)
        else (str(annotation).replace("typing.", ""))
    )


def _kind(value: object) -> str:
    """A JSON-ish name of a value's type, for messages (never the value itself)."""
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _scalar(kind: type, expected: str) -> _Check:
    def check(value: object, where: str) -> tuple[str, str] | None:
        ok = type(value) in ((int, float) if kind is float else (kind,))
        return None if ok else (where, f"{expected}, got {_kind(value)}")

    return check


def _anything(value: object, where: str) -> tuple[str, str] | None:
    del value, where
    return None


def _is_json_value(annotation: object) -> bool:
    """``JsonValue`` itself, or the name it goes by inside its own (recursive) definition."""
    if annotation is JsonValue:
        return True
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    return annotation == "JsonValue"


def _build(annotation: object, seen: dict[type, list[_Check]]) -> _Check:
    """The check of ``annotation``; ``ValidationError`` for a form this module does not know.
    ``seen`` holds the TypedDicts being built, so that a recursive one refers to itself."""
    if annotation is Any or annotation is object or _is_json_value(annotation):
        return _anything  # a value from the store is JSON already
    if annotation is None or annotation is type(None):
        return _scalar(type(None), "null")
    for scalar in (bool, int, float, str):
        if annotation is scalar:
            return _scalar(scalar, scalar.__name__)
    if annotation is list:
        return _build(list[Any], seen)
    if annotation is dict:
        return _build(dict[str, Any], seen)
    if is_typeddict(annotation):
        return _typeddict(cast(type, annotation), seen)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return _union([_build(arm, seen) for arm in args], _type_name(annotation))
    if origin is Literal:
        return _literal(args)
    if origin is list and len(args) == 1:
        return _list(_build(args[0], seen))
    if origin is dict and len(args) == 2 and args[0] is str:
        return _dict(_build(args[1], seen))
    raise ValidationError(
        "value_type",
        f"{_type_name(annotation)} is not a type the SDK can check a JSON value against (use "
        "None, bool, int, float, str, list[T], dict[str, T], unions, Literal, JsonValue or a "
        "TypedDict)",
    )


def _union(arms: list[_Check], expected: str) -> _Check:
    def check(value: object, where: str) -> tuple[str, str] | None:
        for arm in arms:
            if arm(value, where) is None:
                return None
        return (where, f"{expected}, got {_kind(value)}")

    return check


def _literal(choices: tuple[object, ...]) -> _Check:
    def check(value: object, where: str) -> tuple[str, str] | None:
        for choice in choices:
            if type(choice) is type(value) and choice == value:
                return None
        shown = " | ".join(repr(choice) for choice in choices)
        return (where, f"one of {shown}")

    return check


def _list(item_check: _Check) -> _Check:
    def check(value: object, where: str) -> tuple[str, str] | None:
        if type(value) is not list:
            return (where, f"a list, got {_kind(value)}")
        for index, item in enumerate(value):
            found = item_check(item, index_field(where, index))
            if found is not None:
                return found
        return None

    return check


def _dict(item_check: _Check) -> _Check:
    def check(value: object, where: str) -> tuple[str, str] | None:
        if type(value) is not dict:
            return (where, f"an object, got {_kind(value)}")
        for name, item in value.items():
            found = item_check(item, member_field(where, name))
            if found is not None:
                return found
        return None

    return check


def _typeddict(cls: type, seen: dict[type, list[_Check]]) -> _Check:
    if cls in seen:  # a recursive TypedDict: check with the one being built
        cell = seen[cls]  # empty until the outer build finishes: look it up when checking

        def recursive(value: object, where: str) -> tuple[str, str] | None:
            return cell[0](value, where)

        return recursive
    seen[cls] = []
    try:
        hints = typing.get_type_hints(cls)
        marked = typing.get_type_hints(cls, include_extras=True)
    except Exception as error:  # an annotation that does not resolve (a name not importable)
        raise ValidationError(
            "value_type", f"the annotations of {cls.__name__} do not resolve: {error}"
        ) from None
    fields = {name: _build(hint, seen) for name, hint in hints.items()}
    # ``__required_keys__`` misses Required/NotRequired written as strings (``from __future__
    # import annotations`` before Python 3.14): the resolved annotations say it.
    required = set(getattr(cls, "__required_keys__", frozenset()))
    for name, hint in marked.items():
        origin = typing.get_origin(hint)
        if origin in _NOT_REQUIRED:
            required.discard(name)
        elif origin in _REQUIRED:
            required.add(name)

    def check(value: object, where: str) -> tuple[str, str] | None:
        if type(value) is not dict:
            return (where, f"an object ({cls.__name__}), got {_kind(value)}")
        missing = sorted(required - value.keys())
        if missing:
            return (member_field(where, missing[0]), "present (a required key)")
        for name, field_check in fields.items():
            if name in value:
                found = field_check(value[name], member_field(where, name))
                if found is not None:
                    return found
        return None

    seen[cls].append(check)
    return check


@functools.cache
def _cached(annotation: object) -> _Check:
    return _build(annotation, {})


def checker(value_type: object) -> _Check:
    """The check of ``value_type`` (see the module), built once per type; ``ValidationError``
    on ``value_type`` for a type it cannot check."""
    try:
        return _cached(value_type)
    except TypeError:  # an unhashable annotation: build it every time
        return _build(value_type, {})


@overload
def typed_item(item: Item, value_type: type[V]) -> Item[V]: ...
@overload
def typed_item(item: Item | None, value_type: type[V]) -> Item[V] | None: ...
def typed_item(item: Item | None, value_type: type[V]) -> Item[V] | None:
    """``item`` as an ``Item[value_type]`` once its value matches, else ``ValidationError``."""
    if item is None:
        return None
    found = checker(value_type)(item.value, "value")
    if found is not None:
        where, expected = found
        raise ValidationError(
            where,
            f"the value of {item.key!r} does not match {_type_name(value_type)}: "
            f"expected {expected}",
            details={"key": item.key},
        )
    return cast("Item[V]", item)


def typed_items(items: Sequence[Item | None], value_type: type[V]) -> list[Item[V] | None]:
    """:func:`typed_item` of each item."""
    return [typed_item(item, value_type) for item in items]
