"""Parsing of what HTTP clients send (kvstore.api.requests): strict, typed errors only."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.api import requests as parse
from kvstore.coordinator.answers import value_to_json
from kvstore.errors import ValidationError
from kvstore.limits import SCAN_LIMIT_DEFAULT
from kvstore.ops import OpKind
from kvstore.types import Timestamp


def test_json_object_refuses_duplicates_constants_non_objects_and_bad_utf8() -> None:
    assert parse.json_object(b'{"a": 1}') == {"a": 1}
    for raw in (
        b'{"a": 1, "a": 2}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"[1]",
        b"",
        b"{",
        b'{"a": "\xff"}',
        b"[" * 100_000,
        b'{"a": ' + b"9" * 5000 + b"}",
    ):
        with pytest.raises(ValidationError):
            parse.json_object(raw)


@given(st.text(min_size=1, max_size=40))
def test_any_key_survives_percent_encoding(key: str) -> None:
    try:
        encoded = urllib.parse.quote(key, safe="")
    except UnicodeEncodeError:  # lone surrogates are not UTF-8: not keys either
        return
    assert parse.decode_component(encoded, "key") == key


@pytest.mark.parametrize("raw", ["%zz", "%f", "a%", "%ff", "%c3%28"])
def test_invalid_percent_encoding_is_refused(raw: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse.decode_component(raw, "key")
    assert caught.value.field == "key"


def test_put_and_delete_bodies_allow_exactly_their_members() -> None:
    op = parse.put_op("k", {"value": {"a": 1}, "if": {"exists": False}})
    assert op.kind is OpKind.PUT and op.value == {"a": 1} and op.condition is not None
    assert parse.delete_op("k", {}).kind is OpKind.DELETE
    for bad in ({"value": 1, "extra": 2}, {}, {"if": {"exists": True}}):
        with pytest.raises(ValidationError):
            parse.put_op("k", bad)
    with pytest.raises(ValidationError):
        parse.delete_op("k", {"value": 1})


def test_recover_request_defaults_and_refusals() -> None:
    assert parse.recover_request({}, 5000) == parse.RecoverRequest(
        older_than_ms=5000, dry_run=False
    )
    asked = parse.recover_request({"older_than_ms": 0, "dry_run": True}, 5000)
    assert asked == parse.RecoverRequest(older_than_ms=0, dry_run=True)
    for bad, field in (
        ({"older_than_ms": -1}, "older_than_ms"),
        ({"older_than_ms": 1.5}, "older_than_ms"),
        ({"older_than_ms": True}, "older_than_ms"),
        ({"older_than_ms": "10"}, "older_than_ms"),
        ({"dry_run": 1}, "dry_run"),
        ({"dry_run": None}, "dry_run"),
        ({"force": True}, "force"),
    ):
        with pytest.raises(ValidationError) as caught:
            parse.recover_request(bad, 5000)
        assert caught.value.field == field, bad


def test_txn_request_checks_members_ops_and_token() -> None:
    ops, token = parse.txn_request(
        {"ops": [{"op": "put", "key": "a", "value": 1}], "token": "t 1"}, 100
    )
    assert len(ops) == 1 and token == "t 1"
    for bad in (
        {},
        {"ops": []},
        {"ops": [{"op": "put", "key": "a", "value": 1}] * 2},  # duplicate keys
        {"ops": [{"op": "put", "key": f"k{i}", "value": 1} for i in range(3)]},  # over the max
        {"ops": [{"op": "put", "key": "a", "value": 1}], "token": ""},
        {"ops": [{"op": "put", "key": "a", "value": 1}], "token": "\u00e9"},
        {"ops": [{"op": "merge", "key": "a"}]},
    ):
        with pytest.raises(ValidationError):
            parse.txn_request(bad, 2)


def test_read_request() -> None:
    assert parse.read_request({"keys": ["a", "b"]}) == parse.ReadQuery(["a", "b"], None)
    for bad in ({"keys": "a"}, {"keys": [1]}, {"keys": [""]}, {"keys": ["a"], "x": 1}):
        with pytest.raises(ValidationError):
            parse.read_request(bad)


def test_read_request_at_is_a_timestamp_in_exactly_the_api_s_text_form() -> None:
    at = Timestamp(1_765_000_000_123_456, 3, 0xAB)
    query = parse.read_request({"keys": ["a"], "at": str(at)})
    assert query.at == at and str(at) == "1765000000123456.3.00000000000000ab"
    bad_forms: list[object] = [
        "",
        "1.2",
        "1.2.3",  # the origin is 16 hex digits
        "1.2.00000000000000AB",  # lowercase only
        "01.2.00000000000000ab",  # no leading zeros
        "-1.2.00000000000000ab",
        "+1.2.00000000000000ab",
        " 1.2.00000000000000ab",
        "1.2.00000000000000ab ",
        "1.2.00000000000000ab.4",
        "1_0.2.00000000000000ab",
        "\u0661.2.00000000000000ab",  # a non-ASCII digit (ARABIC-INDIC ONE)
        f"{2**64}.0.0000000000000000",  # beyond 64 bits
        1765000000123456,
        [1, 2, 3],
        None,
        {"physical_us": 1},
    ]
    for bad in bad_forms:
        with pytest.raises(ValidationError) as refused:
            parse.read_request({"keys": ["a"], "at": bad})
        assert refused.value.field == "at"


def test_scan_query_prefix_range_limit_and_cursor() -> None:
    query = parse.scan_query("")
    assert (query.start, query.end, query.limit, query.after) == (
        "",
        None,
        SCAN_LIMIT_DEFAULT,
        None,
    )
    query = parse.scan_query("prefix=user%2F&limit=5")
    assert (query.start, query.end, query.limit) == ("user/", "user0", 5)
    query = parse.scan_query("prefix=a&start=a5&end=b")  # the intersection of both ranges
    assert (query.start, query.end) == ("a5", "b")
    query = parse.scan_query("start=a+b")  # form encoding: + is a space
    assert query.start == "a b"
    cursor = parse.encode_cursor("k/\u00e9")
    assert parse.scan_query(f"cursor={cursor}").after == "k/\u00e9"
    for bad in ("limit=0", "limit=1001", "limit=x", "limit=-1", "foo=1", "limit=1&limit=2"):
        with pytest.raises(ValidationError):
            parse.scan_query(bad)
    for bad_cursor in ("x", "c1.!!", "c1.", "c1." + "_w"):
        with pytest.raises(ValidationError):
            parse.scan_query(f"cursor={bad_cursor}")


def test_prefix_end_is_the_least_upper_bound_of_the_prefix() -> None:
    assert parse.prefix_end("ab") == "ac"
    assert parse.prefix_end("a\U0010ffff") == "b"
    assert parse.prefix_end("\U0010ffff") is None
    assert parse.prefix_end("\ud7ff") == "\ue000"  # skips the surrogates


@given(st.text(min_size=1, max_size=8), st.text(max_size=8))
def test_every_key_with_the_prefix_lies_below_prefix_end(prefix: str, rest: str) -> None:
    end = parse.prefix_end(prefix)
    assert end is None or prefix + rest < end
    assert end is None or prefix < end


def test_value_to_json_renders_bytes_as_base64_at_any_depth() -> None:
    assert value_to_json({"a": [b"\x00\x01", {"b": b"hi"}], "c": 1}) == {
        "a": ["AAE=", {"b": "aGk="}],
        "c": 1,
    }
    deep: object = b"x"
    for _ in range(10_000):  # iterative: no recursion limit
        deep = [deep]
    assert value_to_json(deep) is not None  # type: ignore[arg-type]
