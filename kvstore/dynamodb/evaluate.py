"""Evaluating parsed DynamoDB expressions on stored-form items: conditions, updates, projections.

Theory of operation
-------------------
Everything here is a pure function of a tree from :mod:`kvstore.dynamodb.expressions` and an
item in stored form (:mod:`kvstore.dynamodb.attributes`); it runs in the front end (filters,
projections) and on storage nodes (conditions and updates during prepare). Nothing mutates its
input: an update copies each map and list on the way down to a change and shares the rest.

Conditions (:func:`condition_holds`). An absent item (None) has no attributes. A path that is
missing, or that indexes into something that is not a map or list, has no value, and a test on a
missing value is false for every operator, ``<>`` included; ``attribute_not_exists`` is the way
to ask for absence. ``=`` and ``<>`` compare with typed equality (numbers by value, sets in any
order); across types ``=`` is false and ``<>`` true. ``< <= > >=`` and BETWEEN hold only between
two S, two N or two B (a mismatch coming from the item makes the test false; a literal of the
wrong type was refused by the parser). ``size`` is the characters of S, bytes of B, elements of
a set, L or M; of anything else it has no value.

Updates (:func:`apply_update`). Every SET value, ADD and DELETE reads the item *before* the
update (so ``SET a = b, b = a`` swaps), and REMOVE's list indices refer to the list before the
update: removals are applied last, highest index first, and an index past the end is ignored.
SET of a list index past the end appends. A nested path whose parent is missing or of the wrong
type is "The document path provided in the update expression is invalid for update". ADD adds
numbers (a missing attribute counts as 0) or unites sets; DELETE takes elements out of a set and
a set left empty disappears; any other type is "An operand in the update expression has an
incorrect data type", as is ``+``/``-`` on non-numbers and list_append on non-lists. A SET value
reading a missing attribute is "The provided expression refers to an attribute that does not
exist in the item". The result is checked for nesting and for the item size limit ("Item size to
update has exceeded the maximum allowed size"). An absent item starts as its key attributes.

Projections (:func:`project`) keep only the selected paths: a map keeps the selected members, a
list the selected elements in index order; paths that do not resolve are left out.

Malformed stored values raise ValidationError (:func:`kvstore.dynamodb.attributes.malformed`),
never another exception. Recursion follows paths (at most ``DYNAMODB_NESTING_MAX + 1`` steps) and
trees (bounded by the parser).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kvstore.dynamodb.attributes import (
    SET_TYPES,
    Item,
    add_numbers,
    bytes_body,
    check_item_size,
    compare,
    list_body,
    map_body,
    nesting_of,
    number_body,
    payload,
    str_body,
    subtract_numbers,
    type_of,
    values_equal,
)
from kvstore.dynamodb.expressions import (
    And,
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
    KeyCondition,
    ListAppend,
    Literal,
    Not,
    Operand,
    Or,
    Path,
    Projection,
    RangeTest,
    SetValue,
    Update,
)
from kvstore.errors import ValidationError
from kvstore.types import Value

__all__ = [
    "resolve",
    "condition_holds",
    "key_condition_holds",
    "range_test_holds",
    "apply_update",
    "updated_attributes",
    "project",
]

_INVALID_PATH: Final = "The document path provided in the update expression is invalid for update"
_BAD_OPERAND: Final = "An operand in the update expression has an incorrect data type"
_MISSING: Final = "The provided expression refers to an attribute that does not exist in the item"


def resolve(item: Mapping[str, Value] | None, path: DocumentPath) -> Value | None:
    """The value at ``path`` in ``item``, or None when any step is missing or of the wrong
    type."""
    if item is None or not path or not isinstance(path[0], str):
        return None
    current = item.get(path[0])
    for step in path[1:]:
        if current is None:
            return None
        tag, body = payload(current)
        if isinstance(step, str):
            current = map_body(body).get(step) if tag == "M" else None
        elif tag == "L":
            elements = list_body(body)
            current = elements[step] if step < len(elements) else None
        else:
            return None
    return current


# --- conditions ---------------------------------------------------------------------------


def _size(value: Value | None) -> Value | None:
    if value is None:
        return None
    tag, body = payload(value)
    if tag == "S":
        count = len(str_body(body))
    elif tag == "B":
        count = len(bytes_body(body))
    elif tag == "M":
        count = len(map_body(body))
    elif tag == "L" or tag in SET_TYPES:
        count = len(list_body(body))
    else:
        return None
    return {"N": str(count)}


def _operand(operand: Operand, item: Mapping[str, Value] | None) -> Value | None:
    if isinstance(operand, Literal):
        return operand.value
    if isinstance(operand, Path):
        return resolve(item, operand.path)
    return _size(resolve(item, operand.path))


def _compare_holds(operator: str, left: Value | None, right: Value | None) -> bool:
    if left is None or right is None:
        return False
    if operator == "=":
        return values_equal(left, right)
    if operator == "<>":
        return not values_equal(left, right)
    order = compare(left, right)
    if order is None:
        return False
    if operator == "<":
        return order < 0
    if operator == "<=":
        return order <= 0
    if operator == ">":
        return order > 0
    return order >= 0


def _between(value: Value | None, low: Value | None, high: Value | None) -> bool:
    if value is None or low is None or high is None:
        return False
    above, below = compare(value, low), compare(value, high)
    return above is not None and below is not None and above >= 0 and below <= 0


def _begins_with(value: Value | None, prefix: Value | None) -> bool:
    if value is None or prefix is None:
        return False
    tag, body = payload(value)
    other, start = payload(prefix)
    if tag != other:
        return False
    if tag == "S":
        return str_body(body).startswith(str_body(start))
    if tag == "B":
        return bytes_body(body).startswith(bytes_body(start))
    return False


def _contains(value: Value | None, element: Value | None) -> bool:
    if value is None or element is None:
        return False
    tag, body = payload(value)
    other, needle = payload(element)
    if tag == "S" and other == "S":
        return str_body(needle) in str_body(body)
    if tag == "B" and other == "B":
        return bytes_body(needle) in bytes_body(body)
    if tag == "SS" and other == "S":
        return str_body(needle) in (str_body(e) for e in list_body(body))
    if tag == "NS" and other == "N":
        wanted = number_body(needle)
        return any(number_body(e) == wanted for e in list_body(body))
    if tag == "BS" and other == "B":
        return bytes_body(needle) in (bytes_body(e) for e in list_body(body))
    if tag == "L":
        return any(values_equal(e, element) for e in list_body(body))
    return False


def condition_holds(condition: Condition, item: Mapping[str, Value] | None) -> bool:
    """Whether ``condition`` holds on ``item`` (None: the item is absent)."""
    match condition:
        case Comparison(operator, left, right):
            return _compare_holds(operator, _operand(left, item), _operand(right, item))
        case Between(operand, low, high):
            return _between(_operand(operand, item), _operand(low, item), _operand(high, item))
        case In(operand, choices):
            value = _operand(operand, item)
            if value is None:
                return False
            for choice in choices:
                candidate = _operand(choice, item)
                if candidate is not None and values_equal(value, candidate):
                    return True
            return False
        case AttributeExists(path):
            return resolve(item, path) is not None
        case AttributeNotExists(path):
            return resolve(item, path) is None
        case AttributeType(path, type_tag):
            found = resolve(item, path)
            return found is not None and type_of(found) == type_tag
        case BeginsWith(operand, prefix):
            return _begins_with(_operand(operand, item), _operand(prefix, item))
        case Contains(operand, element):
            return _contains(_operand(operand, item), _operand(element, item))
        case And(conditions):
            # Loops, not all()/any(): one stack frame per level of a tree up to 301 deep.
            for child in conditions:  # noqa: SIM110
                if not condition_holds(child, item):
                    return False
            return True
        case Or(conditions):
            for child in conditions:  # noqa: SIM110
                if condition_holds(child, item):
                    return True
            return False
        case Not(inner):
            return not condition_holds(inner, item)
    raise TypeError(f"not a condition: {condition!r}")


def range_test_holds(test: RangeTest, value: Value | None) -> bool:
    """Whether a sort-key value passes a key condition's range test."""
    if value is None:
        return False
    if test.operator == "BETWEEN":
        return _between(value, test.values[0], test.values[1])
    if test.operator == "begins_with":
        return _begins_with(value, test.values[0])
    return _compare_holds(test.operator, value, test.values[0])


def key_condition_holds(key_condition: KeyCondition, item: Mapping[str, Value]) -> bool:
    """Whether ``item`` matches the hash key value and the range test, if any."""
    hash_value = item.get(key_condition.hash_name)
    if hash_value is None or not values_equal(hash_value, key_condition.hash_value):
        return False
    test = key_condition.range
    return test is None or range_test_holds(test, item.get(test.name))


# --- updates ------------------------------------------------------------------------------


def _set_value(value: SetValue, reads: Mapping[str, Value]) -> Value:
    if isinstance(value, Literal):
        return value.value
    if isinstance(value, Path):
        found = resolve(reads, value.path)
        if found is None:
            raise ValidationError("", _MISSING)
        return found
    if isinstance(value, IfNotExists):
        found = resolve(reads, value.path)
        return found if found is not None else _set_value(value.default, reads)
    if isinstance(value, ListAppend):
        left, right = _set_value(value.left, reads), _set_value(value.right, reads)
        (ltag, lbody), (rtag, rbody) = payload(left), payload(right)
        if ltag != "L" or rtag != "L":
            raise ValidationError("", _BAD_OPERAND)
        return {"L": list_body(lbody) + list_body(rbody)}
    left, right = _set_value(value.left, reads), _set_value(value.right, reads)
    (ltag, lbody), (rtag, rbody) = payload(left), payload(right)
    if ltag != "N" or rtag != "N":
        raise ValidationError("", _BAD_OPERAND)
    a, b = str_body(lbody), str_body(rbody)
    return {"N": add_numbers(a, b) if value.operator == "+" else subtract_numbers(a, b)}


def _assign(root: Item, path: DocumentPath, value: Value) -> Item:
    result = dict(root)
    name = path[0]
    assert isinstance(name, str)  # the parser starts every path with a name
    result[name] = value if len(path) == 1 else _assign_in(root.get(name), path[1:], value)
    return result


def _assign_in(container: Value | None, path: DocumentPath, value: Value) -> Value:
    if container is None:
        raise ValidationError("", _INVALID_PATH)
    tag, body = payload(container)
    step, rest = path[0], path[1:]
    if isinstance(step, str):
        if tag != "M":
            raise ValidationError("", _INVALID_PATH)
        members = dict(map_body(body))
        members[step] = value if not rest else _assign_in(members.get(step), rest, value)
        return {"M": members}
    if tag != "L":
        raise ValidationError("", _INVALID_PATH)
    elements = list(list_body(body))
    if not rest:
        if step < len(elements):
            elements[step] = value
        else:
            elements.append(value)
    else:
        if step >= len(elements):
            raise ValidationError("", _INVALID_PATH)
        elements[step] = _assign_in(elements[step], rest, value)
    return {"L": elements}


def _remove_in(container: Value | None, path: DocumentPath, steps: list[str | int]) -> Value:
    """``container`` with the members or elements ``steps`` of the list or map at ``path``
    removed (indices of the list as it was; past the end ignored)."""
    if container is None:
        raise ValidationError("", _INVALID_PATH)
    tag, body = payload(container)
    if path:
        step, rest = path[0], path[1:]
        if isinstance(step, str):
            if tag != "M":
                raise ValidationError("", _INVALID_PATH)
            members = dict(map_body(body))
            members[step] = _remove_in(members.get(step), rest, steps)
            return {"M": members}
        if tag != "L" or step >= len(list_body(body)):
            raise ValidationError("", _INVALID_PATH)
        elements = list(list_body(body))
        elements[step] = _remove_in(elements[step], rest, steps)
        return {"L": elements}
    if tag == "M":
        members = dict(map_body(body))
        for step in steps:
            if isinstance(step, str):
                members.pop(step, None)
        return {"M": members}
    if tag == "L":
        elements = list(list_body(body))
        for index in sorted({s for s in steps if isinstance(s, int)}, reverse=True):
            if index < len(elements):
                del elements[index]
        return {"L": elements}
    raise ValidationError("", _INVALID_PATH)


def _remove(root: Item, paths: list[DocumentPath]) -> Item:
    result = dict(root)
    parents: dict[DocumentPath, list[str | int]] = {}
    for path in paths:
        if len(path) == 1:
            result.pop(str(path[0]), None)
        else:
            parents.setdefault(path[:-1], []).append(path[-1])
    for parent, steps in parents.items():
        name = parent[0]
        assert isinstance(name, str)
        result[name] = _remove_in(result.get(name), parent[1:], steps)
    return result


def _set_elements(tag: str, body: Value) -> list[Value]:
    """A set's elements, checked for their type."""
    elements = list_body(body)
    for element in elements:
        if tag == "SS":
            str_body(element)
        elif tag == "NS":
            number_body(element)
        else:
            bytes_body(element)
    return elements


def _element_key(tag: str, element: Value) -> object:
    return number_body(element) if tag == "NS" else element


def _add(current: Value | None, value: Value) -> Value:
    tag, body = payload(value)
    if current is None:
        return value
    have, existing = payload(current)
    if have != tag:
        raise ValidationError("", _BAD_OPERAND)
    if tag == "N":
        return {"N": add_numbers(str_body(existing), str_body(body))}
    if tag not in SET_TYPES:
        raise ValidationError("", _BAD_OPERAND)
    union = list(_set_elements(tag, existing))
    seen = {_element_key(tag, e) for e in union}
    for element in _set_elements(tag, body):
        key = _element_key(tag, element)
        if key not in seen:
            seen.add(key)
            union.append(element)
    return {tag: union}


def _delete(current: Value, value: Value) -> Value | None:
    tag, body = payload(value)
    have, existing = payload(current)
    if have != tag or tag not in SET_TYPES:
        raise ValidationError("", _BAD_OPERAND)
    gone = {_element_key(tag, e) for e in _set_elements(tag, body)}
    kept = [e for e in _set_elements(tag, existing) if _element_key(tag, e) not in gone]
    return {tag: kept} if kept else None


def apply_update(
    update: Update, item: Mapping[str, Value] | None, key: Mapping[str, Value]
) -> Item:
    """The item after ``update``; an absent item (None) starts as ``key``. See the module for
    the rules and errors."""
    reads: Item = dict(item) if item is not None else dict(key)
    result = reads
    values = [(action.path, _set_value(action.value, reads)) for action in update.set]
    for path, value in values:
        result = _assign(result, path, value)
    for add in update.add:
        result = _assign(result, add.path, _add(resolve(reads, add.path), add.value))
    removals = [action.path for action in update.remove]
    for delete in update.delete:
        current = resolve(reads, delete.path)
        if current is None:
            continue
        remaining = _delete(current, delete.value)
        if remaining is None:
            removals.append(delete.path)
        else:
            result = _assign(result, delete.path, remaining)
    if removals:
        result = _remove(result, removals)
    for name in updated_attributes(update):
        if name in result:
            nesting_of(result[name])
    check_item_size(result, update=True)
    return result


def updated_attributes(update: Update) -> frozenset[str]:
    """The top-level attribute names an update's actions touch (for UPDATED_OLD/NEW)."""
    return frozenset(str(path[0]) for path in update.paths())


# --- projections --------------------------------------------------------------------------


@dataclass(slots=True)
class _Selection:
    """What a projection keeps below one point: everything, or some members/elements."""

    whole: bool = False
    parts: dict[str | int, _Selection] = field(default_factory=dict)


def _pick(value: Value, selection: _Selection) -> Value | None:
    if selection.whole:
        return value
    tag, body = payload(value)
    if tag == "M":
        members = map_body(body)
        kept: dict[str, Value] = {}
        for step, below in selection.parts.items():
            if isinstance(step, str) and step in members:
                picked = _pick(members[step], below)
                if picked is not None:
                    kept[step] = picked
        return {"M": kept} if kept else None
    if tag == "L":
        elements = list_body(body)
        chosen: list[Value] = []
        indices = sorted(s for s in selection.parts if isinstance(s, int))
        for index in indices:
            if index < len(elements):
                picked = _pick(elements[index], selection.parts[index])
                if picked is not None:
                    chosen.append(picked)
        return {"L": chosen} if chosen else None
    return None


def project(item: Mapping[str, Value], projection: Projection) -> Item:
    """The parts of ``item`` that ``projection`` selects."""
    root = _Selection()
    for path in projection.paths:
        node = root
        for step in path:
            if node.whole:
                break
            node = node.parts.setdefault(step, _Selection())
        else:
            node.whole = True
            node.parts.clear()
    result: Item = {}
    for name, selection in root.parts.items():
        if isinstance(name, str) and name in item:
            picked = _pick(item[name], selection)
            if picked is not None:
                result[name] = picked
    return result
