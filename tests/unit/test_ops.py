"""Operation parsing and transaction-level validation (DESIGN section 6 rule 1)."""

from __future__ import annotations

import pytest

from kvstore import limits
from kvstore.errors import ValidationError
from kvstore.ops import (
    OpKind,
    apply_op,
    op_from_json,
    op_to_json,
    ops_from_json,
    txn_fingerprint,
    validate_token,
)

SAMPLES = [
    {"op": "put", "key": "a", "value": {"x": [1, 2]}},
    {"op": "put", "key": "b", "value": None, "if": {"exists": False}},
    {"op": "delete", "key": "c", "if": {"version": 3}},
    {"op": "update", "key": "d", "set": {"a.b": 1}, "add": {"n": 2}, "append": {"l": [1]}},
    {"op": "check", "key": "e", "if": {"path": "p", "ge": 1}, "return_item": True},
]


@pytest.mark.parametrize("obj", SAMPLES)
def test_json_round_trip(obj: dict[str, object]) -> None:
    assert op_to_json(op_from_json(obj)) == obj


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([], "op"),
        ({"op": "frob", "key": "a"}, "op.op"),
        ({"op": "put", "key": "a"}, "op.value"),
        ({"op": "put", "key": "", "value": 1}, "op.key"),
        ({"op": "put", "key": "a" * (limits.KEY_BYTES_MAX + 1), "value": 1}, "op.key"),
        ({"op": "put", "key": "a", "value": 1, "extra": 1}, "op.extra"),
        ({"op": "check", "key": "a"}, "op.if"),
        ({"op": "put", "key": "a", "value": 1, "if": {"bogus": 1}}, "op.if"),
        ({"op": "put", "key": "a", "value": 1, "return_item": "yes"}, "op.return_item"),
        ({"op": "put", "key": "a", "value": float("nan")}, "op.value"),
    ],
)
def test_bad_operations_name_the_field(obj: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        op_from_json(obj)
    assert caught.value.field.startswith(field), caught.value.field


def test_transaction_rules() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        ops_from_json([])
    with pytest.raises(ValidationError) as dup:
        ops_from_json([{"op": "put", "key": "k", "value": 1}, {"op": "delete", "key": "k"}])
    assert dup.value.field == "ops[1].key"
    many = [{"op": "delete", "key": f"k{i}"} for i in range(limits.TXN_OPS_MAX_DEFAULT + 1)]
    with pytest.raises(ValidationError, match="at most 100"):
        ops_from_json(many)
    assert len(ops_from_json(many, txn_ops_max=1000)) == 101
    with pytest.raises(ValidationError):
        ops_from_json(many, txn_ops_max=limits.TXN_OPS_MAX_CEILING + 1)
    big = "x" * (limits.VALUE_BYTES_MAX - 100)
    huge = [{"op": "put", "key": f"k{i}", "value": big} for i in range(11)]
    with pytest.raises(ValidationError, match="bytes"):
        ops_from_json(huge)
    with pytest.raises(ValidationError):
        ops_from_json({"ops": []})


def test_apply_op_semantics() -> None:
    put = op_from_json({"op": "put", "key": "a", "value": 5})
    assert apply_op(put, exists=False, value=None) == (True, 5)
    gone = op_from_json({"op": "delete", "key": "a"})
    assert apply_op(gone, exists=True, value=5) == (False, None)
    upd = op_from_json({"op": "update", "key": "a", "add": {"n": 2}})
    assert apply_op(upd, exists=False, value=None) == (True, {"n": 2})
    chk = op_from_json({"op": "check", "key": "a", "if": {"exists": True}})
    assert chk.kind is OpKind.CHECK and not chk.is_write
    assert apply_op(chk, exists=True, value=7) == (True, 7)


def test_fingerprint_depends_on_content_and_order() -> None:
    a = ops_from_json([{"op": "put", "key": "a", "value": 1}, {"op": "delete", "key": "b"}])
    b = ops_from_json([{"op": "delete", "key": "b"}, {"op": "put", "key": "a", "value": 1}])
    c = ops_from_json([{"op": "put", "key": "a", "value": 2}, {"op": "delete", "key": "b"}])
    assert txn_fingerprint(a) == txn_fingerprint(list(a))
    assert len({txn_fingerprint(a), txn_fingerprint(b), txn_fingerprint(c)}) == 3


@pytest.mark.parametrize("token", ["", "x" * (limits.TOKEN_BYTES_MAX + 1), "tab\there", 7])
def test_bad_tokens_are_refused(token: object) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_token(token)
    assert caught.value.field == "token"


def test_good_token() -> None:
    assert validate_token("order-42 retry") == "order-42 retry"


def test_a_deeply_nested_op_name_is_a_validation_error_not_a_recursion_error() -> None:
    nested: object = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ValidationError, match="unknown operation list"):
        op_from_json({"op": nested, "key": "k"})
