"""Update actions (``set``, ``remove``, ``add``, ``append``) on attribute paths of one value.

Theory of operation
-------------------
An update operation carries actions grouped by kind in its JSON form::

    {"set": {"a.b": 1, "": ...}, "remove": ["c"], "add": {"n": 1}, "append": {"log": ["x"]}}

:func:`actions_from_json` turns those members into a flat tuple of :class:`UpdateAction`, in the
order set, remove, add, append and, within a kind, the JSON object's order. It refuses an update
with no action, more than ``UPDATE_ACTIONS_MAX`` actions, a bad operand, or two actions whose
paths overlap (the same path twice, or one path inside another: ``a`` and ``a.b``), because
their outcome would depend on an order the caller cannot see. So within a valid update every
action touches a disjoint part of the value and the order of application does not matter; the
empty path (the whole value) can only be the single action of its update.
:func:`actions_to_json` is the inverse.

:func:`apply_actions` computes the new value and never mutates its input: it copies each object
on the way down to a changed attribute (copy-on-write) and leaves everything else shared with the
input, so the result must be treated as immutable like every stored value. An absent item starts
as ``{}`` for actions on attribute paths; on the whole value ``set`` replaces it, ``add`` starts
from 0, ``append`` from ``[]``, and ``remove`` is refused (deleting is ``delete``). Missing
intermediate objects are created for ``set``/``add``/``append``; an intermediate that exists and
is not an object is an error for every kind. The result is validated as a value (nesting and
size limits), so an update can never store what a put could not.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from kvstore.errors import ValidationError
from kvstore.limits import UPDATE_ACTIONS_MAX
from kvstore.paths import Path, format_path, parse_path
from kvstore.types import Value
from kvstore.values import (
    INT_MAX,
    INT_MIN,
    index_field,
    is_number,
    validate_value,
)

__all__ = [
    "ActionKind",
    "UpdateAction",
    "actions_from_json",
    "actions_to_json",
    "apply_actions",
]

# Display only: how much of a path goes into an error's field.
_FIELD_PATH_SHOWN_CHARS: Final = 64


class ActionKind(enum.StrEnum):
    """Kinds of update action; the value is the JSON member name."""

    SET = "set"
    REMOVE = "remove"
    ADD = "add"
    APPEND = "append"


@dataclass(frozen=True, slots=True)
class UpdateAction:
    """One action: ``set`` path to operand, ``remove`` path, ``add`` operand (a number) to
    path, ``append`` operand (a list) to path."""

    kind: ActionKind
    path: Path
    operand: Value = None


def _path_field(field: str, path_text: object) -> str:
    """``op.set["a.b"]``: the field of one entry of a kind's object (for errors)."""
    if not isinstance(path_text, str):
        return f"{field}[{type(path_text).__name__}]"
    shown = path_text[:_FIELD_PATH_SHOWN_CHARS]
    quoted = json.dumps(shown)
    suffix = "..." if len(path_text) > _FIELD_PATH_SHOWN_CHARS else ""
    return f"{field}[{quoted[:-1]}{suffix}{quoted[-1]}]"


def _action_field(field: str, action: UpdateAction) -> str:
    kind_field = f"{field}.{action.kind.value}"
    if action.kind is ActionKind.REMOVE:
        return f"{kind_field}[{json.dumps(format_path(action.path)[:_FIELD_PATH_SHOWN_CHARS])}]"
    return _path_field(kind_field, format_path(action.path))


class _Collector:
    """Gathers actions, enforcing the count limit and the no-overlap rule as it goes."""

    __slots__ = ("actions", "enclosing", "paths")

    def __init__(self) -> None:
        self.actions: list[UpdateAction] = []
        self.paths: set[Path] = set()
        self.enclosing: set[Path] = set()  # proper prefixes of the paths seen

    def reserve(self, count: int, field: str) -> None:
        if len(self.actions) + count > UPDATE_ACTIONS_MAX:
            raise ValidationError(field, f"an update has at most {UPDATE_ACTIONS_MAX} actions")

    def add(self, action: UpdateAction, field: str) -> None:
        path = action.path
        if path in self.paths:
            raise ValidationError(field, f"path {format_path(path)!r} appears twice in the update")
        if path in self.enclosing:
            raise ValidationError(
                field,
                f"path {format_path(path)!r} encloses the path of another action of the update",
            )
        for length in range(len(path)):
            if path[:length] in self.paths:
                raise ValidationError(
                    field,
                    f"path {format_path(path)!r} lies inside path {format_path(path[:length])!r}"
                    " of another action of the update",
                )
        self.paths.add(path)
        self.enclosing.update(path[:length] for length in range(len(path)))
        self.actions.append(action)


def _object_member(
    op: Mapping[str, object], kind: ActionKind, field: str
) -> Mapping[object, object]:
    body = op[kind.value]
    if not isinstance(body, Mapping):
        raise ValidationError(
            field, f"{kind.value} takes an object of path: operand, not {type(body).__name__}"
        )
    return body


_KINDS: Final = tuple((kind, kind.value) for kind in ActionKind)  # enum iteration is slow


def _entry(kind: ActionKind, text: object, raw: object, where: str) -> UpdateAction:
    """One ``path: operand`` entry of a ``set``/``add``/``append`` object, checked."""
    path = parse_path(text, where)
    operand = validate_value(raw, where)
    if kind is ActionKind.ADD:
        if not is_number(operand):
            raise ValidationError(where, "add takes a number")
    elif kind is ActionKind.APPEND and not isinstance(operand, list):
        raise ValidationError(where, "append takes a list of values")
    return UpdateAction(kind, path, operand)


def actions_from_json(op: Mapping[str, object], field: str = "op") -> tuple[UpdateAction, ...]:
    """The actions of an update operation's ``set``/``remove``/``add``/``append`` members.

    Other members of ``op`` are ignored (the caller checks for unknown members). An entry's field
    for error messages (``op.add["a.b"]``) is only formatted when the entry is refused: the entry
    is checked again with it, which raises the same error with the precise field.
    """
    collector = _Collector()
    for kind, name in _KINDS:
        if name not in op:
            continue
        kind_field = f"{field}.{name}"
        if kind is ActionKind.REMOVE:
            body = op[name]
            if not isinstance(body, list):
                raise ValidationError(
                    kind_field, f"remove takes a list of paths, not {type(body).__name__}"
                )
            collector.reserve(len(body), kind_field)
            for index, text in enumerate(body):
                where = index_field(kind_field, index)
                path = parse_path(text, where)
                collector.add(UpdateAction(kind, path), where)
            continue
        entries = _object_member(op, kind, kind_field)
        collector.reserve(len(entries), kind_field)
        for text, raw in entries.items():
            try:
                action = _entry(kind, text, raw, kind_field)
                collector.add(action, kind_field)
            except ValidationError:
                where = _path_field(kind_field, text)
                collector.add(_entry(kind, text, raw, where), where)  # raises, with ``where``
                raise  # pragma: no cover - the same checks cannot pass the second time
    if not collector.actions:
        raise ValidationError(
            field, "an update needs at least one action (set, remove, add or append)"
        )
    return tuple(collector.actions)


def actions_to_json(actions: Iterable[UpdateAction]) -> dict[str, object]:
    """The JSON members of ``actions``; ``actions_from_json`` reads them back (in the canonical
    order set, remove, add, append)."""
    sets: dict[str, object] = {}
    removes: list[object] = []
    adds: dict[str, object] = {}
    appends: dict[str, object] = {}
    for action in actions:
        text = format_path(action.path)
        if action.kind is ActionKind.SET:
            sets[text] = action.operand
        elif action.kind is ActionKind.REMOVE:
            removes.append(text)
        elif action.kind is ActionKind.ADD:
            adds[text] = action.operand
        else:
            appends[text] = action.operand
    out: dict[str, object] = {}
    for kind, members in (
        (ActionKind.SET, sets),
        (ActionKind.REMOVE, removes),
        (ActionKind.ADD, adds),
        (ActionKind.APPEND, appends),
    ):
        if members:
            out[kind.value] = members
    return out


class _Absent:
    """The state of an absent item before the first action."""


_ABSENT: Final = _Absent()


def _add_numbers(current: Value, operand: Value, field: str) -> Value:
    if not is_number(current):
        raise ValidationError(field, f"add on a non-number ({type(current).__name__})")
    if not is_number(operand):
        raise ValidationError(field, "add takes a number")
    assert isinstance(current, int | float) and isinstance(operand, int | float)
    total = current + operand
    if isinstance(total, int):
        if not INT_MIN <= total <= INT_MAX:
            raise ValidationError(field, f"add overflows the 64-bit range ({total})")
    elif not math.isfinite(total):
        raise ValidationError(field, "add overflows the float range")
    return total


def _append_list(current: Value, operand: Value, field: str) -> Value:
    if not isinstance(current, list):
        raise ValidationError(field, f"append on a non-list ({type(current).__name__})")
    if not isinstance(operand, list):
        raise ValidationError(field, "append takes a list of values")
    return [*current, *operand]


class _Editor:
    """Copy-on-write edits of one value; ``owned`` holds the objects this edit created."""

    __slots__ = ("keep", "owned", "root")

    def __init__(self, root: dict[str, Value]) -> None:
        self.root = root
        self.keep: list[dict[str, Value]] = [root]  # keeps owned ids from being reused
        self.owned: set[int] = {id(root)}

    def _own(
        self, parent: dict[str, Value], name: str, child: dict[str, Value]
    ) -> dict[str, Value]:
        if id(child) in self.owned:
            return child
        copy = dict(child)
        parent[name] = copy
        self.keep.append(copy)
        self.owned.add(id(copy))
        return copy

    def parent_of(self, path: Path, field: str, *, create: bool) -> dict[str, Value] | None:
        """The (owned) object holding the last attribute of ``path``; ``None`` when an
        intermediate is missing and ``create`` is false."""
        current = self.root
        for depth, name in enumerate(path[:-1]):
            child = current.get(name)
            if name not in current:
                if not create:
                    return None
                fresh: dict[str, Value] = {}
                current[name] = fresh
                self.keep.append(fresh)
                self.owned.add(id(fresh))
                current = fresh
            elif isinstance(child, dict):
                current = self._own(current, name, child)
            else:
                raise ValidationError(
                    field,
                    f"attribute {format_path(path[: depth + 1])!r} is a"
                    f" {type(child).__name__}, not an object",
                )
        return current

    def lookup(self, path: Path, field: str) -> bool:
        """Whether ``path`` names an attribute; raises if an intermediate is not an object."""
        current: Value = self.root
        for depth, name in enumerate(path):
            if not isinstance(current, dict):
                raise ValidationError(
                    field,
                    f"attribute {format_path(path[:depth])!r} is a"
                    f" {type(current).__name__}, not an object",
                )
            if name not in current:
                return False
            current = current[name]
        return True


def _apply_whole(action: UpdateAction, state: Value | _Absent, field: str) -> Value:
    if action.kind is ActionKind.SET:
        return action.operand
    if action.kind is ActionKind.REMOVE:
        raise ValidationError(field, "remove of the whole value: use delete")
    if action.kind is ActionKind.ADD:
        return _add_numbers(0 if isinstance(state, _Absent) else state, action.operand, field)
    return _append_list([] if isinstance(state, _Absent) else state, action.operand, field)


def apply_actions(
    actions: Sequence[UpdateAction], *, exists: bool, value: Value, field: str = "op"
) -> Value:
    """The value after applying ``actions`` to the item (``exists``, ``value``).

    Never mutates ``value`` or the operands; raises ValidationError (with a field like
    ``op.add["a.b"]``) for actions that do not fit the value or a result that breaks a limit.
    """
    state: Value | _Absent = value if exists else _ABSENT
    editor: _Editor | None = None
    for action in actions:
        where = _action_field(field, action)
        path = action.path
        if not path:
            state = _apply_whole(action, state, where)
            editor = None
            continue
        if editor is None:
            if isinstance(state, _Absent):
                state = {}
            if not isinstance(state, dict):
                raise ValidationError(
                    where,
                    f"the value is a {type(state).__name__}, not an object with attributes",
                )
            editor = _Editor(dict(state))
            state = editor.root
        name = path[-1]
        if action.kind is ActionKind.REMOVE:
            if not editor.lookup(path, where):
                continue
            parent = editor.parent_of(path, where, create=False)
            assert parent is not None
            del parent[name]
            continue
        parent = editor.parent_of(path, where, create=True)
        assert parent is not None
        if action.kind is ActionKind.SET:
            parent[name] = action.operand
        elif action.kind is ActionKind.ADD:
            parent[name] = _add_numbers(parent.get(name, 0), action.operand, where)
        else:
            parent[name] = _append_list(parent.get(name, []), action.operand, where)
    if isinstance(state, _Absent):
        state = {}
    try:
        return validate_value(state, "value")
    except ValidationError as error:
        details = {name: item for name, item in error.details.items() if name != "field"}
        raise ValidationError(
            field, f"the updated value is invalid: {error.message}", details=details
        ) from None
