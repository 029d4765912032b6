"""The SDK's op and condition builders (kvstore.client.builders).

Goal: every builder produces exactly the public API's JSON form (docs/api.md), which the store's
own parser accepts, and refuses a bad argument when it is built, with a ValidationError naming
the field. Method: compare built JSON with the documented forms and round-trip it through
``kvstore.ops.op_from_json`` / ``op_to_json``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore.client.builders import (
    Check,
    Delete,
    Put,
    Update,
    absent,
    all_of,
    any_of,
    eq,
    exists,
    ge,
    gt,
    le,
    lt,
    ne,
    not_,
    op_json,
    version_is,
)
from kvstore.conditions import condition_from_json
from kvstore.errors import ValidationError
from kvstore.ops import op_from_json, op_to_json


def test_conditions_have_the_api_forms() -> None:
    assert exists() == {"exists": True}
    assert absent() == {"exists": False}
    assert version_is(7) == {"version": 7}
    assert eq("a.b", 1) == {"path": "a.b", "eq": 1}
    assert ne("", "x") == {"path": "", "ne": "x"}
    assert lt("n", 2) == {"path": "n", "lt": 2}
    assert le("n", 2.5) == {"path": "n", "le": 2.5}
    assert gt("s", "m") == {"path": "s", "gt": "m"}
    assert ge("n", 0) == {"path": "n", "ge": 0}
    composed = all_of(exists(), any_of(eq("a", 1), not_(gt("b", 2))))
    assert composed == {
        "all": [
            {"exists": True},
            {"any": [{"path": "a", "eq": 1}, {"not": {"path": "b", "gt": 2}}]},
        ]
    }
    condition_from_json(composed)  # the store's parser accepts it
    # Any sequence is a list, any str-keyed mapping an object (the static type admits them).
    assert eq("a", (1, (2, 3))) == {"path": "a", "eq": [1, [2, 3]]}


@pytest.mark.parametrize(
    "build",
    [
        lambda: version_is("7"),  # type: ignore[arg-type]
        lambda: version_is(True),
        lambda: eq("a", float("nan")),
        lambda: eq("a", object()),  # type: ignore[arg-type]
        lambda: lt(5, 1),  # type: ignore[arg-type]
        all_of,
        any_of,
        lambda: not_({"exists": "yes"}),
        lambda: all_of({"bogus": 1}),
    ],
)
def test_bad_conditions_are_refused_when_built(build: Callable[[], object]) -> None:
    with pytest.raises(ValidationError):
        build()


def test_ops_have_the_api_forms_and_round_trip_through_the_parser() -> None:
    ops: list[Put | Delete | Update | Check] = [
        Put("k", {"a": [1, None]}, exists()),
        Delete("k", if_=version_is(3)),
        Delete("k"),
        Update("k", set={"a": 1}, remove=["b"], add={"n": 2}, append={"log": ("x",)}),
        Check("k", absent()),
    ]
    assert [op.to_json() for op in ops] == [
        {"op": "put", "key": "k", "value": {"a": [1, None]}, "if": {"exists": True}},
        {"op": "delete", "key": "k", "if": {"version": 3}},
        {"op": "delete", "key": "k"},
        {
            "op": "update",
            "key": "k",
            "set": {"a": 1},
            "remove": ["b"],
            "add": {"n": 2},
            "append": {"log": ["x"]},
        },
        {"op": "check", "key": "k", "if": {"exists": False}},
    ]
    for op in ops:
        assert op_to_json(op_from_json(op.to_json())) == op.to_json()
    raw = {"op": "put", "key": "k", "value": 1}
    assert op_json(raw) is raw  # a JSON form passes through untouched


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Put("", 1), "op.key"),
        (lambda: Put("k" * 1025, 1), "op.key"),
        (lambda: Put("k", {1, 2}), "op.value"),
        (lambda: Put("k", float("inf")), "op.value"),
        (lambda: Put("k", 1, {"version": -1}), "op.if"),
        (lambda: Delete("k", if_={"exists": 1}), "op.if"),
        (lambda: Update("k"), "op"),
        (lambda: Update("k", add={"n": "one"}), "op.add"),
        (lambda: Update("k", set={"a": 1}, remove=["a.b"]), "op.remove"),
        (lambda: Update("k", remove="a"), "op.remove"),
        (lambda: Check("k", {}), "op.if"),
    ],
)
def test_bad_ops_are_refused_when_built(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        build()
    assert raised.value.field.startswith(field), raised.value.field


def test_builders_are_frozen_values() -> None:
    put = Put("k", 1)
    assert put == Put("k", 1)
    with pytest.raises(AttributeError):
        put.key = "other"  # type: ignore[misc]
