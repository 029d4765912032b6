"""DynamoDB expression evaluation: conditions, updates and projections on stored items."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.dynamodb.attributes import Item
from kvstore.dynamodb.evaluate import (
    apply_update,
    condition_holds,
    key_condition_holds,
    project,
    resolve,
    updated_attributes,
)
from kvstore.dynamodb.expressions import (
    Placeholders,
    parse_condition,
    parse_key_condition,
    parse_projection,
    parse_update,
)
from kvstore.errors import ValidationError
from kvstore.limits import DYNAMODB_ITEM_BYTES_MAX, DYNAMODB_NESTING_MAX
from kvstore.types import Value

VALUES: dict[str, Value] = {
    ":one": {"N": "1"},
    ":three": {"N": "3.0"},
    ":five": {"N": "5"},
    ":x": {"S": "x"},
    ":xy": {"S": "xy"},
    ":a": {"S": "a"},
    ":sa": {"S": "a"},
    ":b": {"B": b"\x01"},
    ":list": {"L": [{"N": "9"}]},
    ":empty": {"L": []},
    ":ss": {"SS": ["a", "z"]},
    ":ss_ba": {"SS": ["b", "a"]},
    ":ns": {"NS": ["1", "7"]},
    ":bs": {"BS": [b"\x01"]},
    ":t": {"BOOL": True},
    ":null": {"NULL": True},
    ":S": {"S": "S"},
    ":SS": {"S": "SS"},
    ":m": {"M": {"k": {"N": "1"}}},
}

ITEM: Item = {
    "pk": {"S": "key"},
    "n": {"N": "3"},
    "s": {"S": "xyz"},
    "b": {"B": b"\x01\x02"},
    "t": {"BOOL": True},
    "z": {"NULL": True},
    "ss": {"SS": ["a", "b"]},
    "ns": {"NS": ["1", "2"]},
    "bs": {"BS": [b"\x01"]},
    "l": {"L": [{"N": "0"}, {"N": "1"}, {"N": "2"}, {"N": "3"}]},
    "m": {"M": {"k": {"N": "1"}, "deeper": {"M": {"deep": {"S": "x"}}}}},
    "a.b": {"S": "dotted"},
}
KEY: Item = {"pk": {"S": "key"}}


def ph() -> Placeholders:
    return Placeholders.from_stored({"#dot": "a.b"}, VALUES)


def holds(text: str, item: Item | None = ITEM) -> bool:
    return condition_holds(parse_condition(text, ph()), item)


def update(text: str, item: Item | None = ITEM) -> Item:
    before = copy.deepcopy(item)
    result = apply_update(parse_update(text, ph()), item, KEY)
    assert item == before  # never mutated
    return result


# --- conditions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n = :three", True),  # numbers by value
        ("n <> :three", False),
        ("n = :x", False),  # across types = is false
        ("n <> :x", True),  # ... and <> true
        ("gone = :one", False),
        ("gone <> :one", False),  # a missing attribute makes every test false
        ("n > :one", True),
        ("n >= :three", True),
        ("n < :three", False),
        ("n <= :five", True),
        ("s > :x", True),
        ("s < :x", False),
        ("b > :b", True),
        ("n > :x", False),  # item-side type mismatch: false, not an error
        ("t < n", False),
        ("n BETWEEN :one AND :five", True),
        ("n BETWEEN :one AND :one", False),
        ("s BETWEEN :one AND :five", False),
        ("n IN (:one, :three)", True),
        ("n IN (:one, :five)", False),
        ("gone IN (:one)", False),
        ("ss = :ss_ba", True),  # sets in any order
        ("ss = :ss", False),
        ("attribute_exists(m.deeper.deep)", True),
        ("attribute_exists(m.nope)", False),
        ("attribute_exists(l[3])", True),
        ("attribute_exists(l[4])", False),
        ("attribute_exists(n.x)", False),  # into a number
        ("attribute_exists(n[0])", False),
        ("attribute_not_exists(m.nope)", True),
        ("attribute_not_exists(n)", False),
        ("attribute_type(ss, :SS)", True),
        ("attribute_type(n, :S)", False),
        ("attribute_type(gone, :S)", False),
        ("begins_with(s, :xy)", True),
        ("begins_with(s, :a)", False),
        ("begins_with(b, :b)", True),
        ("begins_with(n, :x)", False),
        ("begins_with(s, :b)", False),
        ("contains(s, :xy)", True),
        ("contains(ss, :a)", True),
        ("contains(ss, :x)", False),
        ("contains(ns, :one)", True),
        ("contains(bs, :b)", True),
        ("contains(l, :three)", True),  # list members by typed equality
        ("contains(l, :x)", False),
        ("contains(n, :one)", False),
        ("contains(s, :one)", False),
        ("size(s) = :three", True),
        ("size(l) > :three", True),
        ("size(ss) < :three", True),
        ("size(m) < :three", True),
        ("size(b) < :three", True),
        ("size(n) > :one", False),
        ("size(gone) > :one", False),
        ("#dot = :x", False),
        ("attribute_exists(#dot)", True),
        ("attribute_exists(a.b)", False),  # a bare dotted name nests
        ("n = n", True),
        ("m = :m", False),
        ("m.k = :one AND s = s", True),
        ("n = :one OR s = :x OR attribute_exists(t)", True),
        ("NOT n = :one", True),
        ("NOT (n = :three AND s = :x) AND z = :null", True),
        ("n = :one OR n = :three AND s = :x", False),  # AND binds tighter
        ("(n = :one OR n = :three) AND attribute_exists(s)", True),
    ],
)
def test_condition_semantics(text: str, expected: bool) -> None:
    assert holds(text) is expected


def test_an_absent_item_has_no_attributes() -> None:
    assert not holds("attribute_exists(pk)", None)
    assert holds("attribute_not_exists(pk)", None)
    assert not holds("n <> :one", None)
    assert holds("NOT n = :one", None)


def test_deep_conditions_evaluate() -> None:
    text = "NOT (" * 140 + "n = :three" + ")" * 140
    assert holds(text)


def test_unicode_size_counts_characters() -> None:
    assert holds("size(s) = :one", {"s": {"S": "é"}})


def test_key_conditions() -> None:
    item: Item = {"pk": {"S": "key"}, "sk": {"N": "3"}}
    placeholders = ph()

    def matches(text: str) -> bool:
        parsed = parse_key_condition(text, placeholders, hash_key="pk", range_key="sk")
        return key_condition_holds(parsed, item)

    assert matches("pk = :x") is False
    item["pk"] = {"S": "x"}
    assert matches("pk = :x")
    assert matches("pk = :x AND sk BETWEEN :one AND :five")
    assert matches("pk = :x AND sk = :three")
    assert not matches("pk = :x AND sk > :three")
    assert not matches("pk = :x AND begins_with(sk, :x)")
    assert matches("pk = :x AND :one < sk")


def test_malformed_stored_values_are_validation_errors() -> None:
    bad: Item = {"n": {"N": "junk"}, "l": {"L": "not a list"}, "x": "untyped"}
    for text in ("n = :one", "l[0] = :one", "x = :one", "contains(l, :one)", "size(l) > :one"):
        with pytest.raises(ValidationError):
            holds(text, bad)


# --- updates ------------------------------------------------------------------------------


def test_set() -> None:
    result = update("SET n = :five, s = n, added = :x, m.k = :five, m.deeper.more = :t")
    assert result["n"] == {"N": "5"}
    assert result["s"] == {"N": "3"}  # SET values read the item before the update
    assert result["added"] == {"S": "x"}
    assert result["m"] == {
        "M": {"k": {"N": "5"}, "deeper": {"M": {"deep": {"S": "x"}, "more": {"BOOL": True}}}}
    }
    assert update("SET n = s, s = n")["s"] == {"N": "3"}  # a swap


def test_set_arithmetic_and_functions() -> None:
    assert update("SET n = n + :one")["n"] == {"N": "4"}
    assert update("SET n = :five - n")["n"] == {"N": "2"}
    assert update("SET c = if_not_exists(c, :one)")["c"] == {"N": "1"}
    assert update("SET n = if_not_exists(n, :one)")["n"] == {"N": "3"}
    assert update("SET l = list_append(l, :list)")["l"] == {
        "L": [{"N": "0"}, {"N": "1"}, {"N": "2"}, {"N": "3"}, {"N": "9"}]
    }
    assert update("SET l = list_append(:list, l)")["l"]["L"][0] == {"N": "9"}  # type: ignore[index,call-overload]
    assert update("SET q = list_append(if_not_exists(q, :empty), :list)")["q"] == {
        "L": [{"N": "9"}]
    }


def test_list_indices() -> None:
    assert update("SET l[1] = :x")["l"]["L"][1] == {"S": "x"}  # type: ignore[index,call-overload]
    # Past the end appends.
    assert update("SET l[99] = :x, l[50] = :t")["l"] == {
        "L": [{"N": "0"}, {"N": "1"}, {"N": "2"}, {"N": "3"}, {"S": "x"}, {"BOOL": True}]
    }
    # REMOVE indices refer to the list before the update; past the end is ignored.
    assert update("REMOVE l[0], l[2], l[99]")["l"] == {"L": [{"N": "1"}, {"N": "3"}]}
    assert update("REMOVE l[1] SET l[3] = :x")["l"] == {"L": [{"N": "0"}, {"N": "2"}, {"S": "x"}]}


def test_remove() -> None:
    result = update("REMOVE n, gone, m.k, m.nope, #dot")
    assert "n" not in result and "a.b" not in result
    assert result["m"] == {"M": {"deeper": {"M": {"deep": {"S": "x"}}}}}


def test_add() -> None:
    assert update("ADD n :one")["n"] == {"N": "4"}
    assert update("ADD fresh :five")["fresh"] == {"N": "5"}  # gone counts as 0
    assert update("ADD ss :ss")["ss"] == {"SS": ["a", "b", "z"]}
    assert update("ADD ns :ns")["ns"] == {"NS": ["1", "2", "7"]}
    assert update("ADD newset :ss")["newset"] == {"SS": ["a", "z"]}
    assert update("ADD m.k :one")["m"]["M"]["k"] == {"N": "2"}  # type: ignore[index,call-overload]


def test_delete() -> None:
    assert update("DELETE ss :ss")["ss"] == {"SS": ["b"]}
    assert "ss" not in update("DELETE ss :ss_ba")  # an emptied set disappears
    assert update("DELETE ns :ns")["ns"] == {"NS": ["2"]}
    assert "gone" not in update("DELETE gone :ss")
    assert "bs" not in update("DELETE bs :bs")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SET n = s + :one", "An operand in the update expression has an incorrect data type"),
        ("SET n = n - s", "incorrect data type"),
        ("SET l = list_append(l, n)", "incorrect data type"),
        ("ADD s :one", "incorrect data type"),
        ("ADD ss :ns", "incorrect data type"),
        ("ADD l :ss", "incorrect data type"),
        ("DELETE ss :ns", "incorrect data type"),
        ("DELETE n :ns", "incorrect data type"),
        ("SET q = gone", "The provided expression refers to an attribute that does not exist"),
        ("SET q = n + gone", "does not exist in the item"),
        ("SET nope.x = :one", "The document path provided in the update expression is invalid"),
        ("SET n.x = :one", "invalid for update"),
        ("SET n[0] = :one", "invalid for update"),
        ("SET l.x = :one", "invalid for update"),
        ("SET m.nope.x = :one", "invalid for update"),
        ("SET l[9].x = :one", "invalid for update"),
        ("REMOVE nope.x", "invalid for update"),
        ("REMOVE n[0]", "invalid for update"),
        ("ADD nope.x :one", "invalid for update"),
    ],
)
def test_update_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        update(text)


def test_number_overflow_in_updates() -> None:
    placeholders = Placeholders.from_stored(
        None, {":big": {"N": "1" + "0" * 50}, ":one": {"N": "1"}}
    )
    with pytest.raises(ValidationError, match="overflow"):
        apply_update(parse_update("SET a = :big + :one", placeholders), None, KEY)


def test_missing_items_start_as_their_key() -> None:
    assert update("SET a = :one", None) == {"pk": {"S": "key"}, "a": {"N": "1"}}
    assert update("REMOVE a", None) == KEY
    assert update("SET a = pk", None)["a"] == {"S": "key"}


def test_item_size_limit() -> None:
    half = "x" * (DYNAMODB_ITEM_BYTES_MAX // 2)
    placeholders = Placeholders.from_stored(None, {":half": {"S": half}})
    once = apply_update(parse_update("SET a = :half", placeholders), None, KEY)
    with pytest.raises(ValidationError, match=r"^Item size to update has exceeded the maximum"):
        apply_update(parse_update("SET b = :half", placeholders), once, KEY)


def test_nesting_limit() -> None:
    deep: Value = {"S": "leaf"}
    for _ in range(DYNAMODB_NESTING_MAX):
        deep = {"L": [deep]}
    placeholders = Placeholders.from_stored(None, {":deep": deep, ":one": {"N": "1"}})
    item = apply_update(parse_update("SET a = :deep", placeholders), None, KEY)
    with pytest.raises(ValidationError, match="Nesting"):
        apply_update(parse_update("SET a[0] = :deep", placeholders), item, KEY)


def test_updated_attributes() -> None:
    parsed = parse_update("SET a.b = :one, c = :one REMOVE d[1] ADD e :one DELETE f :ss", ph())
    assert updated_attributes(parsed) == {"a", "c", "d", "e", "f"}


@given(st.integers(-(10**30), 10**30), st.integers(-(10**30), 10**30))
def test_add_matches_integer_arithmetic(start: int, step: int) -> None:
    placeholders = Placeholders.from_stored(None, {":v": {"N": str(step)}})
    item: Item = {"pk": {"S": "key"}, "n": {"N": str(start)}}
    result = apply_update(parse_update("ADD n :v", placeholders), item, KEY)
    assert result["n"] == {"N": str(start + step)}


# --- projections --------------------------------------------------------------------------


def test_projection() -> None:
    def projected(text: str) -> Item:
        return project(ITEM, parse_projection(text, ph()))

    assert projected("n, s, gone") == {"n": {"N": "3"}, "s": {"S": "xyz"}}
    assert projected("m.deeper.deep") == {"m": {"M": {"deeper": {"M": {"deep": {"S": "x"}}}}}}
    assert projected("m.k, m.deeper.nope") == {"m": {"M": {"k": {"N": "1"}}}}
    assert projected("l[3], l[1], l[9]") == {"l": {"L": [{"N": "1"}, {"N": "3"}]}}
    assert projected("n.x, s[0]") == {}
    assert projected("#dot") == {"a.b": {"S": "dotted"}}


def test_resolve() -> None:
    assert resolve(ITEM, ("m", "deeper", "deep")) == {"S": "x"}
    assert resolve(ITEM, ("l", 2)) == {"N": "2"}
    assert resolve(ITEM, ("l", 4)) is None
    assert resolve(None, ("n",)) is None
