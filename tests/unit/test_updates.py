"""Update actions: the JSON form, its limits, and application."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.errors import ValidationError
from kvstore.limits import PATH_SEGMENTS_MAX, UPDATE_ACTIONS_MAX, VALUE_BYTES_MAX, VALUE_DEPTH_MAX
from kvstore.paths import get_at, is_prefix
from kvstore.types import Value
from kvstore.updates import (
    ActionKind,
    UpdateAction,
    actions_from_json,
    actions_to_json,
    apply_actions,
)
from kvstore.values import INT_MAX, INT_MIN, validate_value, values_equal

SET, REMOVE, ADD, APPEND = ActionKind.SET, ActionKind.REMOVE, ActionKind.ADD, ActionKind.APPEND

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=5)
    | st.binary(max_size=5)
)
values: st.SearchStrategy[Value] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from("abcd"), children, max_size=4)
    ),
    max_leaves=12,
)
paths = st.lists(st.sampled_from("abcd"), min_size=0, max_size=3).map(tuple)


@st.composite
def action_lists(draw: st.DrawFn) -> tuple[UpdateAction, ...]:
    """Valid action lists: no two paths overlap; canonical kind order."""
    chosen: list[tuple[str, ...]] = []
    for path in draw(st.lists(paths, max_size=5)):
        if not any(is_prefix(path, other) or is_prefix(other, path) for other in chosen):
            chosen.append(path)
    if not chosen:
        chosen.append(draw(paths))
    actions = []
    for path in chosen:
        kind = draw(st.sampled_from(ActionKind))
        if kind is SET:
            operand = draw(values)
        elif kind is ADD:
            operand = draw(st.integers(-100, 100) | st.floats(-100, 100))
        elif kind is APPEND:
            operand = draw(st.lists(values, max_size=3))
        else:
            operand = None
        actions.append(UpdateAction(kind, path, operand))
    order = list(ActionKind)
    actions.sort(key=lambda action: order.index(action.kind))
    return tuple(actions)


def reject(op: dict[str, object], field: str, words: str = "") -> ValidationError:
    with pytest.raises(ValidationError) as info:
        actions_from_json(op)
    assert info.value.field == field, info.value.message
    assert words in info.value.message
    return info.value


def apply_rejects(
    actions: tuple[UpdateAction, ...], field: str, words: str, *, exists: bool, value: Value
) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        apply_actions(actions, exists=exists, value=value)
    assert info.value.field == field, info.value.message
    assert words in info.value.message
    return info.value


# --- parsing --------------------------------------------------------------------------------


def test_parse_all_kinds_in_canonical_order() -> None:
    op: dict[str, object] = {
        "append": {"log": ["x"]},
        "add": {"n": 1, "f": -0.5},
        "remove": ["old", "o.p"],
        "set": {"a.b": {"c": 1}, "z": None},
        "key": "ignored",
        "if": {"exists": True},
    }
    actions = actions_from_json(op)
    assert actions == (
        UpdateAction(SET, ("a", "b"), {"c": 1}),
        UpdateAction(SET, ("z",), None),
        UpdateAction(REMOVE, ("old",)),
        UpdateAction(REMOVE, ("o", "p")),
        UpdateAction(ADD, ("n",), 1),
        UpdateAction(ADD, ("f",), -0.5),
        UpdateAction(APPEND, ("log",), ["x"]),
    )
    assert actions_to_json(actions) == {
        "set": {"a.b": {"c": 1}, "z": None},
        "remove": ["old", "o.p"],
        "add": {"n": 1, "f": -0.5},
        "append": {"log": ["x"]},
    }


@pytest.mark.parametrize(
    "op",
    [
        {"set": {"": {"whole": 1}}},
        {"add": {"": 2}},
        {"append": {"": []}},
        {"remove": ["a"]},
        {"set": {}, "remove": ["a"]},
    ],
)
def test_round_trip(op: dict[str, object]) -> None:
    actions = actions_from_json(op)
    assert actions_from_json(actions_to_json(actions)) == actions
    assert actions_to_json(actions) == {k: v for k, v in op.items() if v}


@pytest.mark.parametrize(
    ("op", "field", "words"),
    [
        ({}, "op", "at least one"),
        ({"key": "k"}, "op", "at least one"),
        ({"set": {}, "remove": [], "add": {}, "append": {}}, "op", "at least one"),
        ({"set": ["a"]}, "op.set", "object"),
        ({"set": None}, "op.set", "object"),
        ({"add": [1]}, "op.add", "object"),
        ({"append": "x"}, "op.append", "object"),
        ({"remove": {"a": 1}}, "op.remove", "list"),
        ({"remove": "a"}, "op.remove", "list"),
        ({"remove": ["a", 3]}, "op.remove[1]", "string"),
        ({"remove": ["a..b"]}, "op.remove[0]", "empty"),
        ({"set": {"a.": 1}}, 'op.set["a."]', "empty"),
        ({"set": {1: 1}}, "op.set[int]", "string"),
        ({"set": {"a": (1,)}}, 'op.set["a"]', "tuple"),
        ({"set": {"a": {"b": float("nan")}}}, 'op.set["a"].b', "finite"),
        ({"add": {"n": "1"}}, 'op.add["n"]', "number"),
        ({"add": {"n": True}}, 'op.add["n"]', "number"),
        ({"add": {"n": None}}, 'op.add["n"]', "number"),
        ({"add": {"n": float("inf")}}, 'op.add["n"]', "finite"),
        ({"add": {"n": 2**64}}, 'op.add["n"]', "64"),
        ({"append": {"l": 1}}, 'op.append["l"]', "list"),
        ({"append": {"l": (1,)}}, 'op.append["l"]', "tuple"),
        ({"append": {"l": {"a": 1}}}, 'op.append["l"]', "list"),
        ({"set": {"a": 1}, "remove": ["a"]}, "op.remove[0]", "twice"),
        ({"set": {"a": 1}, "add": {"a": 1}}, 'op.add["a"]', "twice"),
        ({"remove": ["a", "a"]}, "op.remove[1]", "twice"),
        ({"set": {"a": 1}, "append": {"a.b": []}}, 'op.append["a.b"]', "inside"),
        ({"set": {"a.b.c": 1}, "remove": ["a"]}, "op.remove[0]", "encloses"),
        ({"set": {"": 1, "a": 2}}, 'op.set["a"]', "inside"),
        ({"set": {"a": 2}, "add": {"": 1}}, 'op.add[""]', "encloses"),
        ({"set": {"x": 1}, "remove": [""]}, "op.remove[0]", "encloses"),
    ],
)
def test_parse_rejects(op: dict[str, object], field: str, words: str) -> None:
    reject(op, field, words)


def test_sibling_paths_with_common_prefix_text_do_not_overlap() -> None:
    assert len(actions_from_json({"set": {"a": 1, "ab": 2, "a_b": 3}, "add": {"b.a": 1}})) == 4


def test_field_prefix_is_given() -> None:
    with pytest.raises(ValidationError) as info:
        actions_from_json({"remove": [1]}, "ops[2]")
    assert info.value.field == "ops[2].remove[0]"


def test_action_limit() -> None:
    many = {f"k{i}": i for i in range(UPDATE_ACTIONS_MAX)}
    assert len(actions_from_json({"set": many})) == UPDATE_ACTIONS_MAX
    error = reject({"set": many, "remove": ["z"]}, "op.remove", "at most")
    assert str(UPDATE_ACTIONS_MAX) in error.message
    reject({"set": {**many, "z": 0}}, "op.set", "at most")
    half = UPDATE_ACTIONS_MAX // 2
    reject(
        {
            "add": {f"a{i}": 1 for i in range(half)},
            "append": {f"b{i}": [] for i in range(half + 1)},
        },
        "op.append",
        "at most",
    )


def test_path_segment_limit_applies_and_long_paths_are_shortened_in_fields() -> None:
    text = ".".join("a" * (PATH_SEGMENTS_MAX + 1))
    assert len(text) > 64
    reject({"set": {text: 1}}, 'op.set["' + text[:64] + '..."]', "at most")
    reject({"remove": [text]}, "op.remove[0]", "at most")


@given(action_lists())
def test_round_trip_property(actions: tuple[UpdateAction, ...]) -> None:
    obj = actions_to_json(actions)
    assert actions_from_json(obj) == actions
    assert actions_to_json(actions_from_json(obj)) == obj


# --- application ----------------------------------------------------------------------------


def apply(op: dict[str, object], value: Value = None, *, exists: bool = True) -> Value:
    return apply_actions(actions_from_json(op), exists=exists, value=value)


def test_set() -> None:
    assert apply({"set": {"a": 1}}, {"a": 0, "b": 2}) == {"a": 1, "b": 2}
    assert apply({"set": {"a.b.c": 1}}, {"x": 1}) == {"x": 1, "a": {"b": {"c": 1}}}
    assert apply({"set": {"a.c": 1}}, {"a": {"b": 2}}) == {"a": {"b": 2, "c": 1}}
    assert apply({"set": {"": [1, 2]}}, {"a": 1}) == [1, 2]
    assert apply({"set": {"": 5}}, 3) == 5
    assert apply({"set": {"a": None}}, {}) == {"a": None}


def test_set_on_absent_item() -> None:
    assert apply({"set": {"a.b": 1}}, None, exists=False) == {"a": {"b": 1}}
    assert apply({"set": {"": "x"}}, None, exists=False) == "x"
    assert apply({"set": {"": None}}, {"ignored": 1}, exists=False) is None


def test_remove() -> None:
    assert apply({"remove": ["a"]}, {"a": 1, "b": 2}) == {"b": 2}
    assert apply({"remove": ["a.b"]}, {"a": {"b": 1, "c": 2}}) == {"a": {"c": 2}}
    assert apply({"remove": ["missing"]}, {"a": 1}) == {"a": 1}
    assert apply({"remove": ["x.y"]}, {"a": 1}) == {"a": 1}
    assert apply({"remove": ["a"]}, None, exists=False) == {}
    value: Value = {"a": {"b": 1}}
    assert apply({"remove": ["a.b"]}, value) == {"a": {}}
    assert value == {"a": {"b": 1}}


def test_remove_whole_value_is_refused() -> None:
    actions = (UpdateAction(REMOVE, ()),)
    apply_rejects(actions, 'op.remove[""]', "use delete", exists=True, value={"a": 1})
    apply_rejects(actions, 'op.remove[""]', "use delete", exists=False, value=None)


def test_add() -> None:
    assert apply({"add": {"n": 2}}, {"n": 3}) == {"n": 5}
    assert apply({"add": {"n": -2.5}}, {"n": 3}) == {"n": 0.5}
    assert apply({"add": {"n": 1}}, {}) == {"n": 1}
    assert apply({"add": {"a.n": 1}}, {}) == {"a": {"n": 1}}
    assert apply({"add": {"n": 1}}, None, exists=False) == {"n": 1}
    assert apply({"add": {"": 1}}, None, exists=False) == 1
    assert apply({"add": {"": 1.5}}, 2) == 3.5
    result = apply({"add": {"n": 1}}, {"n": 1})
    assert isinstance(result, dict)
    assert type(result["n"]) is int


@pytest.mark.parametrize("current", ["1", True, False, None, [1], {"a": 1}, b"1"])
def test_add_on_non_number(current: Value) -> None:
    actions = actions_from_json({"add": {"n": 1}})
    apply_rejects(actions, 'op.add["n"]', "add on a non-number", exists=True, value={"n": current})
    whole = actions_from_json({"add": {"": 1}})
    apply_rejects(whole, 'op.add[""]', "add on a non-number", exists=True, value=current)


@pytest.mark.parametrize(
    ("start", "increment"),
    [(INT_MAX, 1), (INT_MIN, -1), (INT_MAX - 5, 6)],
)
def test_add_integer_overflow(start: int, increment: int) -> None:
    actions = actions_from_json({"add": {"n": increment}})
    apply_rejects(actions, 'op.add["n"]', "64-bit", exists=True, value={"n": start})


def test_add_float_overflow() -> None:
    actions = actions_from_json({"add": {"n": 1.7e308}})
    apply_rejects(actions, 'op.add["n"]', "float", exists=True, value={"n": 1.7e308})


def test_add_integer_range_edges_ok() -> None:
    assert apply({"add": {"n": 1}}, {"n": INT_MAX - 1}) == {"n": INT_MAX}
    assert apply({"add": {"n": -1}}, {"n": INT_MIN + 1}) == {"n": INT_MIN}


def test_append() -> None:
    assert apply({"append": {"l": [3, 4]}}, {"l": [1, 2]}) == {"l": [1, 2, 3, 4]}
    assert apply({"append": {"l": []}}, {"l": [1]}) == {"l": [1]}
    assert apply({"append": {"l": [1]}}, {}) == {"l": [1]}
    assert apply({"append": {"a.l": [1]}}, None, exists=False) == {"a": {"l": [1]}}
    assert apply({"append": {"": [1]}}, None, exists=False) == [1]
    assert apply({"append": {"": [2]}}, [1]) == [1, 2]


@pytest.mark.parametrize("current", ["ab", 1, None, {"a": 1}, b"x", True])
def test_append_on_non_list(current: Value) -> None:
    actions = actions_from_json({"append": {"l": [1]}})
    apply_rejects(
        actions, 'op.append["l"]', "append on a non-list", exists=True, value={"l": current}
    )
    whole = actions_from_json({"append": {"": [1]}})
    apply_rejects(whole, 'op.append[""]', "append on a non-list", exists=True, value=current)


@pytest.mark.parametrize(
    ("op", "value", "field"),
    [
        ({"set": {"a.b": 1}}, {"a": 5}, 'op.set["a.b"]'),
        ({"set": {"a.b.c": 1}}, {"a": {"b": [1]}}, 'op.set["a.b.c"]'),
        ({"add": {"a.n": 1}}, {"a": "s"}, 'op.add["a.n"]'),
        ({"append": {"a.l": [1]}}, {"a": None}, 'op.append["a.l"]'),
        ({"remove": ["a.b"]}, {"a": 1}, 'op.remove["a.b"]'),
        ({"set": {"a": 1}}, [1, 2], 'op.set["a"]'),
        ({"set": {"a": 1}}, "text", 'op.set["a"]'),
        ({"remove": ["a"]}, 7, 'op.remove["a"]'),
        ({"set": {"a": 1}}, None, 'op.set["a"]'),
    ],
)
def test_non_object_intermediate(op: dict[str, object], value: Value, field: str) -> None:
    apply_rejects(actions_from_json(op), field, "not an object", exists=True, value=value)


def test_intermediate_error_names_the_attribute() -> None:
    with pytest.raises(ValidationError) as info:
        apply({"set": {"a.b.c": 1}}, {"a": {"b": 3}})
    assert "'a.b'" in info.value.message


def test_result_size_limit() -> None:
    big = "x" * (VALUE_BYTES_MAX // 2)
    actions = actions_from_json({"set": {"b": big}})
    error = apply_rejects(actions, "op", "larger than", exists=True, value={"a": big})
    assert str(VALUE_BYTES_MAX) in error.message
    assert error.details["field"] == "op"
    appended = actions_from_json({"append": {"l": [big]}})
    apply_rejects(appended, "op", "larger than", exists=True, value={"l": [big]})


def test_result_depth_limit() -> None:
    deep: Value = 1
    for _ in range(VALUE_DEPTH_MAX - 1):
        deep = [deep]
    actions = actions_from_json({"set": {"a": deep}})
    assert apply_actions(actions, exists=False, value=None) == {"a": deep}
    deeper = actions_from_json({"set": {"a.b": deep}})
    apply_rejects(deeper, "op", "nested", exists=False, value=None)


def test_apply_field_prefix_is_given() -> None:
    with pytest.raises(ValidationError) as info:
        apply_actions(
            actions_from_json({"add": {"n": 1}}), exists=True, value={"n": "x"}, field="ops[4]"
        )
    assert info.value.field == 'ops[4].add["n"]'


def test_apply_does_not_mutate_input_or_operands() -> None:
    value: Value = {"a": {"b": 1, "l": [1]}, "keep": {"x": 1}, "gone": 1}
    before = copy.deepcopy(value)
    operand: Value = {"c": [1]}
    actions = (
        UpdateAction(SET, ("a", "s"), operand),
        UpdateAction(REMOVE, ("gone",)),
        UpdateAction(ADD, ("a", "b"), 1),
        UpdateAction(APPEND, ("a", "l"), [2]),
    )
    result = apply_actions(actions, exists=True, value=value)
    assert value == before
    assert operand == {"c": [1]}
    assert result == {"a": {"b": 2, "l": [1, 2], "s": {"c": [1]}}, "keep": {"x": 1}}
    assert isinstance(result, dict)
    assert isinstance(value, dict)
    assert result["a"] is not value["a"]
    assert result["keep"] is value["keep"]  # untouched parts are shared


def test_remove_of_missing_attribute_copies_nothing_observable() -> None:
    value: Value = {"a": {"b": 1}}
    result = apply({"remove": ["a.x", "y.z"]}, value)
    assert result == value
    assert value == {"a": {"b": 1}}


def test_unordered_direct_actions_apply_in_sequence() -> None:
    # Not produced by actions_from_json, but apply_actions still behaves sequentially.
    actions = (UpdateAction(SET, (), {"a": 1}), UpdateAction(ADD, ("a",), 1))
    assert apply_actions(actions, exists=False, value=None) == {"a": 2}
    actions = (UpdateAction(SET, ("a",), {"b": 1}), UpdateAction(SET, ("a", "c"), 2))
    operand_holder = apply_actions(actions, exists=True, value={})
    assert operand_holder == {"a": {"b": 1, "c": 2}}
    assert actions[0].operand == {"b": 1}  # the operand was copied, not changed


@given(action_lists(), st.booleans(), values)
def test_apply_never_mutates_input(
    actions: tuple[UpdateAction, ...], exists: bool, value: Value
) -> None:
    before = copy.deepcopy(value)
    operands = copy.deepcopy([action.operand for action in actions])
    try:
        result = apply_actions(actions, exists=exists, value=value)
    except ValidationError:
        pass
    else:
        assert validate_value(result) is result
    assert values_equal(value, before) and repr(value) == repr(before)
    assert [action.operand for action in actions] == operands


@given(action_lists(), values)
def test_apply_matches_a_naive_model(actions: tuple[UpdateAction, ...], value: Value) -> None:
    try:
        result = apply_actions(actions, exists=True, value=value)
    except ValidationError:
        return
    model = copy.deepcopy(value)
    for action in actions:
        if not action.path:
            model = action.operand if action.kind is SET else model
            continue
        assert isinstance(model, dict)
        if action.kind is REMOVE:
            found, holder = get_at(model, action.path[:-1])
            if found:
                assert isinstance(holder, dict)
                holder.pop(action.path[-1], None)
            continue
        parent = model
        for name in action.path[:-1]:
            parent = parent.setdefault(name, {})  # type: ignore[assignment]
            assert isinstance(parent, dict)
        name = action.path[-1]
        if action.kind is SET:
            parent[name] = action.operand
        elif action.kind is ADD:
            parent[name] = parent.get(name, 0) + action.operand  # type: ignore[operator]
        else:
            parent[name] = [*parent.get(name, []), *action.operand]  # type: ignore[misc]
    if any(not action.path and action.kind is not SET for action in actions):
        return  # whole-value add/append: covered by the example tests
    assert repr(result) == repr(model)
