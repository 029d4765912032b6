"""Conditions: the JSON form, its limits, and evaluation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.conditions import (
    VERSION_MAX,
    AllOf,
    AnyOf,
    Compare,
    CompareOperator,
    Condition,
    Exists,
    Not,
    VersionEquals,
    condition_from_json,
    condition_to_json,
    evaluate,
)
from kvstore.errors import ValidationError
from kvstore.limits import CONDITION_DEPTH_MAX, CONDITION_NODES_MAX, PATH_SEGMENTS_MAX
from kvstore.types import Value
from kvstore.values import INT_MAX, INT_MIN

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | st.binary(max_size=5)
)
values: st.SearchStrategy[Value] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from("abc"), children, max_size=3)
    ),
    max_leaves=8,
)
paths = st.lists(st.sampled_from("abc"), max_size=3).map(tuple)


def conditions(depth: int = 0) -> st.SearchStrategy[Condition]:
    leaves: st.SearchStrategy[Condition] = (
        st.builds(Exists, st.booleans())
        | st.builds(VersionEquals, st.integers(0, 5))
        | st.builds(Compare, paths, st.sampled_from(CompareOperator), values)
    )
    if depth >= 3:
        return leaves
    inner = st.deferred(lambda: conditions(depth + 1))
    return (
        leaves
        | st.builds(AllOf, st.lists(inner, min_size=1, max_size=3).map(tuple))
        | st.builds(AnyOf, st.lists(inner, min_size=1, max_size=3).map(tuple))
        | st.builds(Not, inner)
    )


def reject(obj: object, field: str, words: str = "") -> ValidationError:
    with pytest.raises(ValidationError) as info:
        condition_from_json(obj)
    assert info.value.field == field, info.value.message
    assert words in info.value.message
    return info.value


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "condition"),
    [
        ({"exists": True}, Exists(True)),
        ({"exists": False}, Exists(False)),
        ({"version": 0}, VersionEquals(0)),
        ({"version": VERSION_MAX}, VersionEquals(VERSION_MAX)),
        ({"path": "a.b", "eq": 1}, Compare(("a", "b"), CompareOperator.EQ, 1)),
        ({"path": "", "ne": None}, Compare((), CompareOperator.NE, None)),
        ({"path": "x", "lt": "s"}, Compare(("x",), CompareOperator.LT, "s")),
        ({"path": "x", "le": b"b"}, Compare(("x",), CompareOperator.LE, b"b")),
        ({"path": "x", "gt": 1.5}, Compare(("x",), CompareOperator.GT, 1.5)),
        ({"path": "x", "ge": [1, {"a": 2}]}, Compare(("x",), CompareOperator.GE, [1, {"a": 2}])),
        ({"all": [{"exists": True}]}, AllOf((Exists(True),))),
        (
            {"any": [{"exists": False}, {"version": 3}]},
            AnyOf((Exists(False), VersionEquals(3))),
        ),
        ({"not": {"not": {"exists": True}}}, Not(Not(Exists(True)))),
    ],
)
def test_parse_and_round_trip(obj: dict[str, object], condition: Condition) -> None:
    assert condition_from_json(obj) == condition
    assert condition_to_json(condition) == obj


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        (None, "if", "object"),
        ([], "if", "object"),
        ("exists", "if", "object"),
        ({}, "if", "empty"),
        ({"exists": True, "version": 1}, "if", "exactly one"),
        ({"exists": True, "extra": 1}, "if.extra", "unknown"),
        ({"bogus": 1}, "if.bogus", "unknown"),
        ({1: True}, "if[int]", "unknown"),
        ({"eq": 1}, "if", "exactly one"),
        ({"exists": 1}, "if.exists", "true or false"),
        ({"exists": None}, "if.exists", "true or false"),
        ({"version": True}, "if.version", "integer"),
        ({"version": 1.0}, "if.version", "integer"),
        ({"version": "1"}, "if.version", "integer"),
        ({"version": -1}, "if.version", str(VERSION_MAX)),
        ({"version": VERSION_MAX + 1}, "if.version", str(VERSION_MAX)),
        ({"path": "a"}, "if", "exactly one operator"),
        ({"path": "a", "eq": 1, "ne": 2}, "if", "exactly one operator"),
        ({"path": "a", "eq": 1, "exists": True}, "if.exists", "only path"),
        ({"path": "a", "eq": 1, "zz": True}, "if.zz", "unknown"),
        ({"path": 1, "eq": 1}, "if.path", "string"),
        ({"path": "a..b", "eq": 1}, "if.path", "empty"),
        ({"path": ".".join("a" * (PATH_SEGMENTS_MAX + 1)), "eq": 1}, "if.path", "at most"),
        ({"path": "a", "eq": math.nan}, "if.eq", "finite"),
        ({"path": "a", "lt": {"b": (1,)}}, "if.lt.b", "tuple"),
        ({"all": []}, "if.all", "non-empty"),
        ({"any": []}, "if.any", "non-empty"),
        ({"all": {"exists": True}}, "if.all", "list"),
        ({"any": None}, "if.any", "list"),
        ({"not": []}, "if.not", "object"),
        ({"not": None}, "if.not", "object"),
        (
            {"all": [{"exists": True}, {"exists": True}, {"path": 3, "eq": 1}]},
            "if.all[2].path",
            "string",
        ),
        ({"any": [{"not": {"version": "x"}}]}, "if.any[0].not.version", "integer"),
        ({"all": [{"any": [{"exists": True, "x": 1}]}]}, "if.all[0].any[0].x", "unknown"),
    ],
)
def test_parse_rejects(obj: object, field: str, words: str) -> None:
    reject(obj, field, words)


def test_field_prefix_is_given() -> None:
    with pytest.raises(ValidationError) as info:
        condition_from_json({"not": {"exists": 0}}, "ops[3].if")
    assert info.value.field == "ops[3].if.not.exists"


def nested_not(depth: int) -> dict[str, object]:
    obj: dict[str, object] = {"exists": True}
    for _ in range(depth):
        obj = {"not": obj}
    return obj


def test_depth_limit() -> None:
    condition = condition_from_json(nested_not(CONDITION_DEPTH_MAX))
    assert condition_to_json(condition) == nested_not(CONDITION_DEPTH_MAX)
    error = reject(
        nested_not(CONDITION_DEPTH_MAX + 1), "if" + ".not" * CONDITION_DEPTH_MAX, "nested"
    )
    assert str(CONDITION_DEPTH_MAX) in error.message
    # Hostile depth is refused at the limit without recursing further.
    reject(nested_not(100_000), "if" + ".not" * CONDITION_DEPTH_MAX, "nested")


def test_depth_limit_through_all_and_any() -> None:
    obj: dict[str, object] = {"exists": True}
    for level in range(CONDITION_DEPTH_MAX):
        obj = {"all": [obj]} if level % 2 else {"any": [{"exists": False}, obj]}
    condition_from_json(obj)
    reject(
        {"not": obj},
        "if.not"
        + "".join(
            ".all[0]" if level % 2 else ".any[1]"
            for level in reversed(range(1, CONDITION_DEPTH_MAX))
        ),
        "nested",
    )


def test_node_limit() -> None:
    leaves = [{"version": i} for i in range(CONDITION_NODES_MAX - 1)]
    condition = condition_from_json({"all": leaves})
    assert isinstance(condition, AllOf)
    assert len(condition.conditions) == CONDITION_NODES_MAX - 1
    error = reject({"all": [*leaves, {"version": 0}]}, "if.all", "nodes")
    assert str(CONDITION_NODES_MAX) in error.message
    # Counted across the whole tree, not per list.
    half = [{"exists": True}] * (CONDITION_NODES_MAX // 2)
    with pytest.raises(ValidationError) as info:
        condition_from_json({"any": [{"all": half}, {"all": half}]})
    assert "nodes" in info.value.message
    assert info.value.field.startswith("if.any[1]")
    # not counts as a node too.
    with pytest.raises(ValidationError):
        condition_from_json({"all": [{"not": {"exists": True}}] * (CONDITION_NODES_MAX // 2)})


@given(conditions())
def test_round_trip_property(condition: Condition) -> None:
    obj = condition_to_json(condition)
    assert condition_from_json(obj) == condition
    assert condition_to_json(condition_from_json(obj)) == obj


def test_to_json_rejects_non_condition() -> None:
    with pytest.raises(TypeError):
        condition_to_json("exists")  # type: ignore[arg-type]


# --- evaluation -----------------------------------------------------------------------------

ITEM: Value = {"n": 5, "f": 2.5, "s": "mid", "b": b"\x10", "t": True, "z": None, "o": {"x": [1]}}


def holds(condition: Condition | None, *, exists: bool = True, value: Value = ITEM) -> bool:
    return evaluate(condition, exists=exists, value=value, version=7)


def cmp(path: str, operator: str, operand: Value) -> Compare:
    return Compare(tuple(path.split(".")) if path else (), CompareOperator(operator), operand)


def test_none_always_holds() -> None:
    assert holds(None)
    assert holds(None, exists=False, value=None)


def test_exists() -> None:
    assert holds(Exists(True))
    assert not holds(Exists(False))
    assert holds(Exists(False), exists=False, value=None)
    assert not holds(Exists(True), exists=False, value=None)
    assert holds(Exists(True), value=None)  # a stored null is an existing item


def test_version() -> None:
    assert holds(VersionEquals(7))
    assert not holds(VersionEquals(6))
    assert not holds(VersionEquals(7), exists=False, value=None)
    assert not holds(VersionEquals(0), exists=False, value=None)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cmp("n", "eq", 5), True),
        (cmp("n", "eq", 5.0), True),
        (cmp("n", "ne", 5.0), False),
        (cmp("n", "ne", 6), True),
        (cmp("n", "lt", 6), True),
        (cmp("n", "lt", 5), False),
        (cmp("n", "le", 5), True),
        (cmp("n", "gt", 4.5), True),
        (cmp("n", "ge", 5.0), True),
        (cmp("n", "ge", 5.1), False),
        (cmp("f", "gt", 2), True),
        (cmp("f", "lt", 3), True),
        (cmp("s", "lt", "n"), True),
        (cmp("s", "gt", "m"), True),
        (cmp("s", "ge", "mid"), True),
        (cmp("s", "le", "MID"), False),
        (cmp("b", "gt", b"\x0f"), True),
        (cmp("b", "lt", b"\x10\x00"), True),
        (cmp("b", "eq", b"\x10"), True),
        (cmp("b", "eq", "\x10"), False),
        (cmp("b", "lt", "zzz"), False),
        (cmp("s", "lt", 10), False),
        (cmp("s", "gt", b"a"), False),
        (cmp("n", "lt", "10"), False),
        (cmp("n", "gt", [1]), False),
        (cmp("t", "eq", True), True),
        (cmp("t", "eq", 1), False),
        (cmp("t", "ne", 1), True),
        (cmp("t", "gt", 0), False),
        (cmp("t", "ge", True), False),
        (cmp("n", "lt", True), False),
        (cmp("z", "eq", None), True),
        (cmp("z", "ne", None), False),
        (cmp("z", "lt", 1), False),
        (cmp("o", "eq", {"x": [1.0]}), True),
        (cmp("o.x", "eq", [1]), True),
        (cmp("o", "lt", {"x": [2]}), False),
        (cmp("", "eq", ITEM), True),
        (cmp("", "ne", {}), True),
    ],
)
def test_compare(condition: Compare, expected: bool) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize("operator", list(CompareOperator))
def test_compare_missing_path_or_absent_item_is_false_for_every_operator(
    operator: CompareOperator,
) -> None:
    assert not holds(Compare(("missing",), operator, 1))
    assert not holds(Compare(("n", "deeper"), operator, 1))
    assert not holds(Compare(("o", "x", "0"), operator, 1))
    assert not holds(Compare((), operator, 1), exists=False, value=None)
    assert not holds(Compare(("n",), operator, 5), exists=False, value=None)
    assert holds(Not(Compare(("missing",), operator, 1)))


def test_compare_on_scalar_value() -> None:
    assert holds(cmp("", "gt", 3), value=4)
    assert not holds(cmp("a", "eq", 4), value=4)


def test_composition() -> None:
    yes, no = Exists(True), Exists(False)
    assert holds(AllOf((yes, yes)))
    assert not holds(AllOf((yes, no)))
    assert holds(AnyOf((no, yes)))
    assert not holds(AnyOf((no, no)))
    assert holds(Not(no))
    assert not holds(Not(yes))


def test_short_circuit() -> None:
    class Boom:
        pass

    bad = Boom()  # evaluating it would raise TypeError
    assert not holds(AllOf((Exists(False), bad)))  # type: ignore[arg-type]
    assert holds(AnyOf((Exists(True), bad)))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        holds(AllOf((Exists(True), bad)))  # type: ignore[arg-type]


@given(conditions(), st.booleans(), values, st.integers(0, 5))
def test_not_is_negation(condition: Condition, exists: bool, value: Value, version: int) -> None:
    plain = evaluate(condition, exists=exists, value=value, version=version)
    negated = evaluate(Not(condition), exists=exists, value=value, version=version)
    assert negated is (not plain)


@given(conditions(), values, st.integers(0, 5))
def test_absent_item_never_matches_compare_or_version(
    condition: Condition, value: Value, version: int
) -> None:
    # An absent item's value and version are irrelevant.
    assert evaluate(condition, exists=False, value=value, version=version) == evaluate(
        condition, exists=False, value=None, version=0
    )


@given(paths, st.sampled_from(CompareOperator), values, values)
def test_eq_and_ne_are_complementary_when_found(
    path: tuple[str, ...], operator: CompareOperator, operand: Value, value: Value
) -> None:
    eq = evaluate(Compare(path, CompareOperator.EQ, operand), exists=True, value=value, version=1)
    ne = evaluate(Compare(path, CompareOperator.NE, operand), exists=True, value=value, version=1)
    assert not (eq and ne)
    lt = evaluate(Compare(path, CompareOperator.LT, operand), exists=True, value=value, version=1)
    ge = evaluate(Compare(path, CompareOperator.GE, operand), exists=True, value=value, version=1)
    assert not (lt and ge)
