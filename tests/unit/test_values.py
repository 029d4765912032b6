"""Keys, values, paths: validation, encoded size, equality."""

from __future__ import annotations

import math
import sys

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.errors import ValidationError
from kvstore.limits import (
    KEY_BYTES_MAX,
    PATH_BYTES_MAX,
    PATH_SEGMENTS_MAX,
    VALUE_BYTES_MAX,
    VALUE_DEPTH_MAX,
)
from kvstore.paths import format_path, get_at, is_prefix, parse_path
from kvstore.types import Value
from kvstore.values import (
    INT_MAX,
    INT_MIN,
    member_field,
    validate_key,
    validate_value,
    value_size_bytes,
    values_equal,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.binary()
)
values: st.SearchStrategy[Value] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=20,
)


def nested_list(depth: int) -> Value:
    value: Value = 1
    for _ in range(depth):
        value = [value]
    return value


def raises(field: str, call: object, *args: object) -> ValidationError:
    assert callable(call)
    with pytest.raises(ValidationError) as info:
        call(*args)
    assert info.value.field == field, info.value.message
    assert info.value.details["field"] == field
    return info.value


# --- keys -----------------------------------------------------------------------------------


def test_key_accepts_one_to_max_bytes() -> None:
    assert validate_key("a") == "a"
    assert validate_key("x" * KEY_BYTES_MAX) == "x" * KEY_BYTES_MAX
    assert validate_key("é" * (KEY_BYTES_MAX // 2)) == "é" * (KEY_BYTES_MAX // 2)


@pytest.mark.parametrize(
    "key",
    ["", "x" * (KEY_BYTES_MAX + 1), "é" * (KEY_BYTES_MAX // 2 + 1), "a\ud800b", b"k", 1, None],
)
def test_key_rejects(key: object) -> None:
    raises("key", validate_key, key)


def test_key_error_uses_given_field_and_clear_messages() -> None:
    assert "string" in raises("ops[0].key", validate_key, 5, "ops[0].key").message
    assert "empty" in raises("key", validate_key, "").message
    assert str(KEY_BYTES_MAX) in raises("key", validate_key, "é" * KEY_BYTES_MAX).message
    assert "surrogate" in raises("key", validate_key, "\udfff").message


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        INT_MIN,
        INT_MAX,
        1.5,
        -0.0,
        "",
        "héllo",
        b"",
        b"\x00\xff",
        [],
        {},
        [1, "a", None, [2], {"b": b"c"}],
        {"a": {"b": [1, 2, {"c": 1.0}]}},
        {"": 1, "a.b": 2},
    ],
)
def test_value_accepts_and_returns_unchanged(value: Value) -> None:
    assert validate_value(value) is value


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        (INT_MAX + 1, "value", "64"),
        (INT_MIN - 1, "value", "64"),
        (math.nan, "value", "finite"),
        (math.inf, "value", "finite"),
        (-math.inf, "value", "finite"),
        ("a\ud800", "value", "surrogate"),
        ((1, 2), "value", "tuple"),
        ({1, 2}, "value", "set"),
        (bytearray(b"x"), "value", "bytearray"),
        (object(), "value", "object"),
        ({"a": {"b": (1,)}}, "value.a.b", "tuple"),
        ({"a": [0, 0, math.nan]}, "value.a[2]", "finite"),
        ({"a": {1: 2}}, "value.a", "keys must be strings"),
        ({"a": {"k\ud800": 2}}, 'value.a["k\\ud800"]', "surrogate"),
        ({"x.y": [None, {"z": math.inf}]}, 'value["x.y"][1].z', "finite"),
        ([{"b": 2**64}], "value[0].b", "64"),
    ],
)
def test_value_rejects_with_field(value: object, field: str, words: str) -> None:
    assert words in raises(field, validate_value, value).message


def test_value_field_prefix_is_the_given_field() -> None:
    raises("ops[1].value.a", validate_value, {"a": math.nan}, "ops[1].value")


def test_value_depth_limit() -> None:
    assert validate_value(nested_list(VALUE_DEPTH_MAX)) is not None
    error = raises(
        "value" + "[0]" * VALUE_DEPTH_MAX, validate_value, nested_list(VALUE_DEPTH_MAX + 1)
    )
    assert str(VALUE_DEPTH_MAX) in error.message
    deep: Value = {}
    for _ in range(VALUE_DEPTH_MAX + 1):
        deep = {"a": deep}
    raises("value" + ".a" * VALUE_DEPTH_MAX, validate_value, deep)


def test_hostile_nesting_does_not_recurse() -> None:
    raises(
        "value" + "[0]" * VALUE_DEPTH_MAX, validate_value, nested_list(sys.getrecursionlimit() * 3)
    )
    cyclic: list[object] = []
    cyclic.append(cyclic)
    raises("value" + "[0]" * VALUE_DEPTH_MAX, validate_value, cyclic)


def test_value_size_limit_exact_boundary() -> None:
    overhead = value_size_bytes(b"")  # bin8 header for short, grows for long
    assert overhead == 2
    exact = b"x" * (VALUE_BYTES_MAX - 5)  # bin32 header is 5 bytes
    assert value_size_bytes(exact) == VALUE_BYTES_MAX
    assert validate_value(exact) is exact
    over = b"x" * (VALUE_BYTES_MAX - 4)
    error = raises("value", validate_value, over)
    assert str(VALUE_BYTES_MAX) in error.message
    assert str(VALUE_BYTES_MAX + 1) in error.message
    assert error.details["limit_bytes"] == VALUE_BYTES_MAX


def test_value_size_limit_many_small_items() -> None:
    value = {"k": [1] * VALUE_BYTES_MAX}
    error = raises("value.k", validate_value, value)
    assert "larger than" in error.message
    raises("value", validate_value, [{"x": "y" * 1000} for _ in range(500)])
    raises("value", validate_value, {"a" * (VALUE_BYTES_MAX + 1): 1})
    raises("value", validate_value, ["a" * (VALUE_BYTES_MAX // 2), "b" * (VALUE_BYTES_MAX // 2)])
    raises("value[0]", validate_value, ["a" * (VALUE_BYTES_MAX + 1)])


def test_member_field_quotes_odd_names() -> None:
    assert member_field("v", "a") == "v.a"
    assert member_field("v", "a.b") == 'v["a.b"]'
    assert member_field("v", "") == 'v[""]'
    assert member_field("v", 3) == "v[int]"
    assert member_field("v", "x" * 100) == "v." + "x" * 64 + "..."


@given(values)
def test_value_size_is_msgpack_length(value: Value) -> None:
    assert value_size_bytes(value) == len(msgpack.packb(value, use_bin_type=True))
    assert validate_value(value) is value


@given(values)
def test_computed_size_is_exact_at_the_limit(value: Value) -> None:
    # validate_value computes the encoded size itself; pad the value to exactly the limit.
    filler_bytes = VALUE_BYTES_MAX - 1 - value_size_bytes(value) - 5  # fixarray, bin32 header
    exact: Value = [value, b"x" * filler_bytes]
    assert value_size_bytes(exact) == VALUE_BYTES_MAX
    assert validate_value(exact) is exact
    over: Value = [value, b"x" * (filler_bytes + 1)]
    raises("value", validate_value, over)


@pytest.mark.parametrize("extra", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("text", ["a", "\u00e9", "\U0001f600"])
def test_size_boundary_for_strings(extra: int, text: str) -> None:
    count = (VALUE_BYTES_MAX - 8) // len(text.encode()) + extra
    value: Value = {"s": text * count}
    if value_size_bytes(value) <= VALUE_BYTES_MAX:
        assert validate_value(value) is value
    else:
        with pytest.raises(ValidationError) as info:
            validate_value(value)
        assert info.value.field in {"value", "value.s"}


# --- equality -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (0, -0.0, True),
        (True, 1, False),
        (False, 0, False),
        (1, True, False),
        (True, True, True),
        (None, None, True),
        (None, False, False),
        (None, 0, False),
        ("a", b"a", False),
        (b"a", b"a", True),
        ("a", "a", True),
        ([1, 2], [1.0, 2.0], True),
        ([1, 2], [2, 1], False),
        ([1], [1, 1], False),
        ([True], [1], False),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"b": 1}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": [1, {"b": True}]}, {"a": [1, {"b": True}]}, True),
        ({"a": [1, {"b": True}]}, {"a": [1, {"b": 1}]}, False),
        ([], {}, False),
        ("1", 1, False),
        (2**63, float(2**63), True),
        (2**53 + 1, float(2**53), False),
    ],
)
def test_values_equal(a: Value, b: Value, equal: bool) -> None:
    assert values_equal(a, b) is equal
    assert values_equal(b, a) is equal


def test_values_equal_deep_is_iterative() -> None:
    assert values_equal(nested_list(10_000), nested_list(10_000))
    assert not values_equal(nested_list(10_000), nested_list(10_001))


@given(values)
def test_values_equal_reflexive(value: Value) -> None:
    assert values_equal(value, value)


@given(values, values)
def test_values_equal_symmetric(a: Value, b: Value) -> None:
    assert values_equal(a, b) == values_equal(b, a)


# --- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [("", ()), ("a", ("a",)), ("a.b.c", ("a", "b", "c")), ("é.ü", ("é", "ü")), (" ", (" ",))],
)
def test_parse_path(text: str, path: tuple[str, ...]) -> None:
    assert parse_path(text, "p") == path
    assert format_path(path) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (None, "string"),
        (1, "string"),
        (["a"], "string"),
        ("a..b", "empty"),
        (".a", "empty"),
        ("a.", "empty"),
        (".", "empty"),
        ("a\ud800", "surrogate"),
        (".".join(["a"] * (PATH_SEGMENTS_MAX + 1)), str(PATH_SEGMENTS_MAX)),
        ("x" * (PATH_BYTES_MAX + 1), str(PATH_BYTES_MAX)),
        ("é" * (PATH_BYTES_MAX // 2 + 1), str(PATH_BYTES_MAX)),
    ],
)
def test_parse_path_rejects(text: object, words: str) -> None:
    assert words in raises("if.path", parse_path, text, "if.path").message


def test_parse_path_limits_inclusive() -> None:
    assert len(parse_path(".".join(["a"] * PATH_SEGMENTS_MAX), "p")) == PATH_SEGMENTS_MAX
    assert parse_path("x" * PATH_BYTES_MAX, "p") == ("x" * PATH_BYTES_MAX,)


@given(st.lists(st.text(min_size=1).filter(lambda s: "." not in s), max_size=5))
def test_path_round_trip(segments: list[str]) -> None:
    path = tuple(segments)
    try:
        assert parse_path(format_path(path), "p") == path
    except ValidationError:
        assert (
            any("\ud800" <= c <= "\udfff" for s in segments for c in s)
            or len(format_path(path).encode("utf-8", "surrogatepass")) > PATH_BYTES_MAX
        )


def test_get_at() -> None:
    value: Value = {"a": {"b": [1], "n": None}, "c": 3}
    assert get_at(value, ()) == (True, value)
    assert get_at(value, ("a", "b")) == (True, [1])
    assert get_at(value, ("a", "n")) == (True, None)
    assert get_at(value, ("a", "x")) == (False, None)
    assert get_at(value, ("c", "x")) == (False, None)
    assert get_at(value, ("a", "b", "0")) == (False, None)
    assert get_at(None, ("a",)) == (False, None)
    assert get_at(5, ()) == (True, 5)


def test_is_prefix() -> None:
    assert is_prefix((), ("a",))
    assert is_prefix(("a",), ("a",))
    assert is_prefix(("a",), ("a", "b"))
    assert not is_prefix(("a", "b"), ("a",))
    assert not is_prefix(("a",), ("ab",))
