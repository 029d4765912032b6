"""DynamoDB attribute values: numbers, wire/stored forms, sizes, equality and order."""

from __future__ import annotations

import base64
import contextlib
import decimal
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.dynamodb.attributes import (
    add_numbers,
    check_item_size,
    compare,
    describe,
    item_from_stored,
    item_from_wire,
    item_size,
    item_to_wire,
    nesting_of,
    normalize_number,
    number_value,
    subtract_numbers,
    type_of,
    value_from_stored,
    value_from_wire,
    value_size,
    value_to_wire,
    values_equal,
)
from kvstore.errors import ValidationError
from kvstore.limits import DYNAMODB_ITEM_BYTES_MAX, DYNAMODB_NESTING_MAX, VALUE_BYTES_MAX
from kvstore.types import Value
from kvstore.values import value_size_bytes

# --- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("3", "3"),
        ("-7.1234", "-7.1234"),
        ("-17e5", "-1700000"),
        ("+3", "3"),
        (".123", "0.123"),
        ("0001.23", "1.23"),
        ("1e+5", "100000"),
        ("0e1000", "0"),
        ("0e99999999999999", "0"),
        ("-0", "0"),
        ("-0.000", "0"),
        ("1.500", "1.5"),
        ("12.", "12"),
        ("1.23e-1", "0.123"),
        ("1000.0", "1000"),
        ("1E3", "1000"),
        ("1e-130", "0." + "0" * 129 + "1"),
        ("9.99e125", "999" + "0" * 123),
        ("3.1415926535897932384626433832795028841", "3.1415926535897932384626433832795028841"),
        ("1" + "0" * 60, "1" + "0" * 60),  # trailing zeros are not significant
        ("1." + "0" * 60, "1"),
    ],
)
def test_numbers_normalise_to_plain_decimal(text: str, normal: str) -> None:
    assert normalize_number(text) == normal


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("NaN", "numeric"),
        ("Infinity", "numeric"),
        ("-Infinity", "numeric"),
        ("dog", "numeric"),
        (" 1", "numeric"),
        ("1 ", "numeric"),
        ("1_000", "numeric"),
        ("", "numeric"),
        (".", "numeric"),
        ("e5", "numeric"),
        ("1e", "numeric"),
        ("\u0661", "numeric"),  # an Arabic-Indic digit: Decimal would take it
        ("0x10", "numeric"),
        ("1e126", "overflow"),
        ("11e125", "overflow"),
        ("-1e126", "overflow"),
        ("1e99999999999", "overflow"),
        ("1e-131", "underflow"),
        ("0.9e-130", "underflow"),
        ("1e-99999999999", "underflow"),
        ("3.14159265358979323846264338327950288419", "significant"),
        ("314159265358979323846264338327950288419e30", "significant"),
    ],
)
def test_bad_numbers_are_refused_with_aws_wording(text: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        normalize_number(text)


def test_arithmetic_is_exact() -> None:
    assert add_numbers("1", "10000000000000000000000") == "10000000000000000000001"
    assert subtract_numbers("10000000000000000000000", "1") == "9999999999999999999999"
    assert subtract_numbers("0.1", "0.3") == "-0.2"
    assert add_numbers("5", "-5") == "0"
    assert add_numbers("1e-130", "1e-130") == normalize_number("2e-130")


@pytest.mark.parametrize(
    ("a", "b", "negate"),
    [
        ("1e50", "1", False),
        ("1e50", "1", True),
        ("9e125", "9e125", False),
        ("9e125", "-9e125", True),
    ],
)
def test_arithmetic_out_of_range_is_an_overflow(a: str, b: str, negate: bool) -> None:
    with pytest.raises(ValidationError, match="overflow"):
        (subtract_numbers if negate else add_numbers)(a, b)


decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: d == 0 or -130 <= d.adjusted() <= 125
)


def _fits(d: decimal.Decimal) -> bool:
    return len(d.normalize(decimal.Context(prec=200)).as_tuple().digits) <= 38


@given(decimals.filter(_fits))
def test_normalisation_keeps_the_value_and_is_idempotent(d: decimal.Decimal) -> None:
    text = normalize_number(str(d))
    assert decimal.Decimal(text) == d
    assert normalize_number(text) == text
    assert "e" not in text.lower() and not text.startswith("+")
    assert number_value(str(d)) == d


@given(st.integers(-(10**37), 10**37), st.integers(-(10**37), 10**37))
def test_add_and_subtract_agree_with_integers(a: int, b: int) -> None:
    assert add_numbers(str(a), str(b)) == str(a + b)
    assert subtract_numbers(str(a), str(b)) == str(a - b)


@given(decimals.filter(_fits), decimals.filter(_fits))
def test_number_order_is_numeric_order(a: decimal.Decimal, b: decimal.Decimal) -> None:
    left: Value = {"N": normalize_number(str(a))}
    right: Value = {"N": normalize_number(str(b))}
    assert compare(left, right) == (a > b) - (a < b)
    assert values_equal(left, right) == (a == b)


# --- wire and stored forms ----------------------------------------------------------------


def test_wire_round_trip_of_every_type() -> None:
    wire = {
        "s": {"S": "héllo"},
        "n": {"N": "1e3"},
        "b": {"B": base64.b64encode(b"\x00\xff").decode()},
        "t": {"BOOL": True},
        "z": {"NULL": True},
        "l": {"L": [{"S": ""}, {"N": "-0"}]},
        "m": {"M": {"x": {"M": {}}, "": {"L": []}}},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2.50"]},
        "bs": {"BS": [base64.b64encode(b"a").decode()]},
    }
    item = item_from_wire(wire)
    assert item["n"] == {"N": "1000"}
    assert item["b"] == {"B": b"\x00\xff"}
    assert item["ns"] == {"NS": ["1", "2.5"]}
    assert item["bs"] == {"BS": [b"a"]}
    assert item["l"] == {"L": [{"S": ""}, {"N": "0"}]}
    back = item_to_wire(item)
    assert back["b"] == wire["b"] and back["bs"] == wire["bs"]
    assert item_from_wire(back) == item
    assert item_from_stored(item) == item
    assert value_to_wire({"S": "x"}) == {"S": "x"}
    assert type_of(item["ss"]) == "SS"


@pytest.mark.parametrize(
    "wire",
    [
        {"N": 123},
        {"S": 5},
        {"S": None},
        {"B": "!!!"},
        {"B": "YQ"},  # bad padding
        {"BOOL": "true"},
        {"NULL": 1},
        {"L": {}},
        {"M": []},
        {"SS": "a"},
        {"SS": [1]},
        {"NS": [1]},
        "x",
        ["S", "x"],
        {"S": "\ud800"},  # a lone surrogate is not UTF-8
    ],
)
def test_wire_type_errors_are_serialization_exceptions(wire: object) -> None:
    with pytest.raises(ValidationError) as info:
        value_from_wire(wire)
    assert info.value.details["aws_type"] == "SerializationException"


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        ({}, "Supplied AttributeValue is empty"),
        ({"X": "1"}, "Supplied AttributeValue is empty"),
        ({"S": "a", "N": "1"}, "more than one datatypes"),
        ({"NULL": False}, "Null attribute value types must have the value of true"),
        ({"SS": []}, "An string set  may not be empty"),
        ({"NS": []}, "An number set  may not be empty"),
        ({"BS": []}, "An binary set  may not be empty"),
        ({"SS": ["a", "a"]}, "Input collection \\[a, a\\] contains duplicates"),
        ({"NS": ["1", "1.0"]}, "contains duplicates"),
        ({"NS": ["1e3", "1000"]}, "contains duplicates"),
        ({"BS": ["YQ==", "YQ=="]}, "contains duplicates"),
        ({"N": "NaN"}, "numeric"),
        ({"NS": ["1", "x"]}, "numeric"),
    ],
)
def test_wire_validation_errors(wire: object, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment) as info:
        value_from_wire(wire)
    assert "aws_type" not in info.value.details


def _nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"S": "leaf"}
    for level in range(levels):
        value = {"L": [value]} if level % 2 else {"M": {"k": value}}
    return value


def test_nesting_up_to_the_limit() -> None:
    v = value_from_wire(_nested(DYNAMODB_NESTING_MAX))
    assert nesting_of(v) == DYNAMODB_NESTING_MAX
    with pytest.raises(ValidationError, match="Nesting Levels have exceeded supported limits"):
        value_from_wire(_nested(DYNAMODB_NESTING_MAX + 1))
    with pytest.raises(ValidationError, match="Nesting"):
        value_from_wire(_nested(5000))  # refused without recursing 5000 deep


def test_attribute_names() -> None:
    assert item_from_wire({"a" * 65535: {"S": "x"}})
    with pytest.raises(ValidationError, match="Attribute name"):
        item_from_wire({"a" * 65536: {"S": "x"}})
    with pytest.raises(ValidationError, match="empty"):
        item_from_wire({"": {"S": "x"}})
    with pytest.raises(ValidationError) as info:
        item_from_wire([])
    assert info.value.details["aws_type"] == "SerializationException"


@pytest.mark.parametrize(
    "stored",
    [
        "x",
        {},
        {"S": "a", "N": "1"},
        {"Q": 1},
        {"B": "not bytes"},
        {"BS": ["x"]},
        {"N": "abc"},
        {"N": 5},
        {"L": "x"},
        {"M": [1]},
        {"L": ["not typed"]},
        {"SS": "ab"},
    ],
)
def test_malformed_stored_values_are_validation_errors(stored: Value) -> None:
    with pytest.raises(ValidationError):
        value_from_stored(stored)
    for check in (value_size, nesting_of, value_to_wire):
        with contextlib.suppress(ValidationError):
            check(stored)
    others: list[Value] = [stored, {"S": "a"}, {"N": "1"}, {"L": []}]
    for other in others:
        with contextlib.suppress(ValidationError):
            values_equal(stored, other)
        with contextlib.suppress(ValidationError):
            compare(stored, other)


# --- sizes --------------------------------------------------------------------------------


def test_sizes_follow_the_aws_formula() -> None:
    assert value_size({"S": "héllo"}) == 6
    assert value_size({"B": b"abc"}) == 3
    assert value_size({"BOOL": False}) == 1
    assert value_size({"NULL": True}) == 1
    assert value_size({"N": "1"}) == 2
    assert value_size({"N": "12"}) == 2
    assert value_size({"N": "123"}) == 3
    assert value_size({"N": "1000"}) == 2  # one significant digit
    assert value_size({"N": "0"}) == 2
    assert value_size({"L": []}) == 3
    assert value_size({"L": [{"S": "ab"}, {"NULL": True}]}) == 3 + (1 + 2) + (1 + 1)
    assert value_size({"M": {"k": {"S": "ab"}}}) == 3 + 1 + 1 + 2
    assert value_size({"SS": ["a", "bc"]}) == 3
    assert value_size({"NS": ["1", "123"]}) == 5
    assert value_size({"BS": [b"a", b"bc"]}) == 3
    assert item_size({"name": {"S": "ab"}, "é": {"N": "1"}}) == 4 + 2 + 2 + 2


def test_item_size_limit() -> None:
    head = "a"
    at_aws_limit: dict[str, Value] = {head: {"S": "x" * (DYNAMODB_ITEM_BYTES_MAX - 1)}}
    assert item_size(at_aws_limit) == DYNAMODB_ITEM_BYTES_MAX
    # The store holds at most VALUE_BYTES_MAX encoded bytes: the type tags and headers cost a
    # few bytes more than AWS counts, so an item this close to AWS's limit does not fit.
    fits: dict[str, Value] = {head: {"S": "x" * (VALUE_BYTES_MAX - 16)}}
    assert value_size_bytes(fits) <= VALUE_BYTES_MAX
    check_item_size(fits)
    with pytest.raises(ValidationError, match=r"^Item size has exceeded the maximum allowed size$"):
        check_item_size(at_aws_limit)
    over: dict[str, Value] = {head: {"S": "x" * DYNAMODB_ITEM_BYTES_MAX}}
    with pytest.raises(ValidationError, match=r"^Item size has exceeded the maximum allowed size$"):
        check_item_size(over)
    with pytest.raises(ValidationError, match=r"^Item size to update has exceeded"):
        check_item_size(over, update=True)


# --- equality and order -------------------------------------------------------------------


def test_typed_equality() -> None:
    assert values_equal({"N": "1000"}, {"N": "1000"})
    assert not values_equal({"N": "1"}, {"S": "1"})
    assert values_equal({"SS": ["a", "b"]}, {"SS": ["b", "a"]})
    assert not values_equal({"SS": ["a"]}, {"SS": ["a", "b"]})
    assert values_equal({"NS": ["1", "2"]}, {"NS": ["2", "1"]})
    assert values_equal({"BS": [b"1", b"2"]}, {"BS": [b"2", b"1"]})
    assert not values_equal({"L": [{"S": "a"}, {"S": "b"}]}, {"L": [{"S": "b"}, {"S": "a"}]})
    assert values_equal({"M": {"a": {"N": "1"}}}, {"M": {"a": {"N": "1"}}})
    assert not values_equal({"M": {"a": {"N": "1"}}}, {"M": {"b": {"N": "1"}}})
    assert not values_equal({"BOOL": True}, {"N": "1"})
    assert values_equal({"NULL": True}, {"NULL": True})


@given(st.lists(st.text(max_size=4), min_size=1, max_size=6, unique=True), st.randoms())
def test_sets_are_equal_in_any_order(elements: list[str], rng: random.Random) -> None:
    shuffled: list[Value] = list(elements)
    rng.shuffle(shuffled)
    assert values_equal({"SS": list[Value](elements)}, {"SS": shuffled})


def test_order() -> None:
    assert compare({"S": "a"}, {"S": "b"}) == -1
    assert compare({"S": "\uffff"}, {"S": "\U00010000"}) == -1  # UTF-8 order, not UTF-16
    assert compare({"N": "10"}, {"N": "9"}) == 1
    assert compare({"N": "-10"}, {"N": "-9"}) == -1
    assert compare({"B": b"\x80"}, {"B": b"\x7f"}) == 1  # unsigned bytes
    assert compare({"B": b"a"}, {"B": b"a"}) == 0
    assert compare({"S": "1"}, {"N": "1"}) is None
    assert compare({"BOOL": True}, {"BOOL": False}) is None
    assert compare({"SS": ["a"]}, {"SS": ["a"]}) is None


@given(st.text(max_size=8), st.text(max_size=8))
def test_string_order_is_utf8_byte_order(a: str, b: str) -> None:
    x, y = a.encode(), b.encode()
    assert compare({"S": a}, {"S": b}) == (x > y) - (x < y)


def test_describe() -> None:
    assert describe({"N": "10"}) == "AttributeValue: {N:10}"
    assert describe({"B": b"a"}) == "AttributeValue: {B:YQ==}"


def test_items_the_store_could_not_hold_are_refused_in_aws_words() -> None:
    """Many tiny attributes: under AWS's 400 KB by its formula, over the store's encoded cap."""
    names = [f"{i:04x}" for i in range(50_000)]
    tiny: dict[str, Value] = {name: {"NULL": True} for name in names}
    assert item_size(tiny) <= DYNAMODB_ITEM_BYTES_MAX < value_size_bytes(tiny)
    with pytest.raises(ValidationError, match=r"^Item size has exceeded the maximum allowed size$"):
        check_item_size(tiny)
