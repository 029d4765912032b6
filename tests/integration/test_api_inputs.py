"""Bad input to the public HTTP JSON API (docs/api.md) of a real cluster: every case gets the
documented status and error code, and changes nothing (a canary item is read back after it).

One cluster (3 storage nodes, 8 partitions, one coordinator) serves the whole module; every test
has its own canary key. Requests an HTTP client would not send (a huge ``Content-Length`` with a
short body, an endless chunked body) go over a plain socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.api import (
    ApiClient,
    RawReply,
    api_client,
    api_cluster,
    assert_error,
    keys_on_distinct_partitions,
    parse_host_port,
    quote_all,
    read_raw_reply,
    sync_request,
    unique,
)
from support.cluster import LocalNodes

from kvstore.limits import API_BODY_BYTES_MAX

RAW_REPLY_TIMEOUT_S = 60.0  # only a guard against a hang: the answers come at once
CHUNK_ANNOUNCED_BYTES = 8 * API_BODY_BYTES_MAX  # far past the limit: the server must cut off


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    with api_cluster(tmp_path_factory.mktemp("api-inputs")) as nodes:
        yield nodes


@pytest_asyncio.fixture
async def api(cluster: LocalNodes) -> AsyncIterator[ApiClient]:
    """A client with the read-write token."""
    async with api_client(cluster.api("c1"), cluster.tokens["read-write"]) as client:
        yield client


class Canary:
    """An item that no bad request may change: read back after each case."""

    def __init__(self, api: ApiClient, key: str, item: dict[str, Any]) -> None:
        self.api = api
        self.key = key
        self.item = item

    async def unchanged(self, *also_absent: str) -> None:
        got = await self.api.get_item(self.key)
        assert got.status == 200, got
        assert got.body == self.item, "a refused request changed the canary"
        for key in also_absent:
            assert (await self.api.get_item(key)).status == 404, f"{key!r} was written"


@pytest_asyncio.fixture
async def canary(api: ApiClient) -> Canary:
    key = unique("canary")
    reply = await api.put_item(key, {"canary": True, "n": 1})
    assert reply.status == 200, reply
    got = await api.get_item(key)
    return Canary(api, key, got.body)


def kv(key: str) -> str:
    return "/v1/kv/" + quote_all(key)


async def refused(
    api: ApiClient,
    method: str,
    target: str,
    data: bytes | None,
    code: str = "ValidationError",
    *,
    status: int | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    reply = await api.request(method, target, data=data)
    error = assert_error(reply, code, status=status)
    if field is not None:
        assert error.get("field") == field, reply
    return error


def body(obj: object) -> bytes:
    return json.dumps(obj).encode("utf-8")


# --- malformed bodies --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_malformed_json_is_400(api: ApiClient, canary: Canary) -> None:
    key = canary.key
    bad_bodies = [
        b"{",
        b"",
        b"   ",
        b'{"value": 2,}',
        b'{"value": 2} {}',
        b"{\"value\": '2'}",
        b"{value: 2}",
        b'{"value": 2',
        b'\xef\xbb\xbf{"value": 2}',  # a byte order mark
        b'{"value": "\xff"}',  # not UTF-8
        b'{"value": "\\ud800"}',  # a lone surrogate is not a string of UTF-8
        b'{"value": ' + b"1" * 5000 + b"}",  # more digits than an integer may have
        b"[" * 100_000 + b"]" * 100_000,  # nested far too deep
    ]
    for data in bad_bodies:
        await refused(api, "PUT", kv(key), data)
    for data in bad_bodies[:1] + bad_bodies[3:]:
        await refused(api, "DELETE", kv(key), data)
    ops = f'[{{"op": "put", "key": "{key}", "value": 2}}]'
    for data in (b'{"ops": ' + ops.encode(), b"{" + ops.encode() + b"}", b"", b"\xff"):
        await refused(api, "POST", "/v1/txn", data)
    for data in (b'{"keys": ["a"]', b"", b"{keys: []}"):
        await refused(api, "POST", "/v1/read", data)
    await canary.unchanged()


@pytest.mark.asyncio
async def test_a_body_that_is_not_an_object_is_400(api: ApiClient, canary: Canary) -> None:
    key = canary.key
    for data in (b"[]", b"1", b'"value"', b"null", b"true", body([{"value": 2}])):
        await refused(api, "PUT", kv(key), data, field="body")
        await refused(api, "DELETE", kv(key), data, field="body")
        await refused(api, "POST", "/v1/txn", data, field="body")
        await refused(api, "POST", "/v1/read", data, field="body")
    await canary.unchanged()


@pytest.mark.asyncio
async def test_wrong_types_are_400_naming_the_field(api: ApiClient, canary: Canary) -> None:
    key = canary.key
    put = {"op": "put", "key": key, "value": 2}
    cases: list[tuple[str, str, object, str]] = [
        ("PUT", kv(key), {}, "value"),
        ("PUT", kv(key), {"value": 2, "if": True}, "body.if"),
        ("PUT", kv(key), {"value": 2, "if": {"version": "1"}}, "body.if.version"),
        ("PUT", kv(key), {"value": 2, "if": {"version": 1.0}}, "body.if.version"),
        ("PUT", kv(key), {"value": 2, "if": {"version": -1}}, "body.if.version"),
        ("PUT", kv(key), {"value": 2, "if": {"exists": "yes"}}, "body.if.exists"),
        ("PUT", kv(key), {"value": 2, "if": {"all": {"exists": True}}}, "body.if.all"),
        ("PUT", kv(key), {"value": 2, "if": {"any": []}}, "body.if.any"),
        ("PUT", kv(key), {"value": 2, "if": {"path": 1, "eq": 1}}, "body.if.path"),
        ("PUT", kv(key), {"value": 2, "if": {}}, "body.if"),
        ("DELETE", kv(key), {"if": None}, "body.if"),
        ("DELETE", kv(key), {"if": [{"exists": True}]}, "body.if"),
        ("POST", "/v1/txn", {"ops": {"0": put}}, "ops"),
        ("POST", "/v1/txn", {"ops": None}, "ops"),
        ("POST", "/v1/txn", {}, "ops"),
        ("POST", "/v1/txn", {"ops": [1]}, "ops[0]"),
        ("POST", "/v1/txn", {"ops": [{**put, "key": 5}]}, "ops[0].key"),
        ("POST", "/v1/txn", {"ops": [{"op": "put", "key": key}]}, "ops[0].value"),
        ("POST", "/v1/txn", {"ops": [{**put, "op": 1}]}, "ops[0].op"),
        ("POST", "/v1/txn", {"ops": [{**put, "return_item": "yes"}]}, "ops[0].return_item"),
        ("POST", "/v1/txn", {"ops": [put], "token": 5}, "token"),
        ("POST", "/v1/txn", {"ops": [put], "token": ""}, "token"),
        ("POST", "/v1/txn", {"ops": [put], "token": "t" * 65}, "token"),
        ("POST", "/v1/txn", {"ops": [put], "token": "caf\u00e9"}, "token"),
        ("POST", "/v1/txn", {"ops": [put], "token": "tab\there"}, "token"),
        ("POST", "/v1/txn", {"ops": [{"op": "update", "key": key, "set": [1]}]}, "ops[0].set"),
        ("POST", "/v1/txn", {"ops": [{"op": "update", "key": key, "remove": "n"}]}, None),
        ("POST", "/v1/txn", {"ops": [{"op": "update", "key": key, "add": {"n": "1"}}]}, None),
        ("POST", "/v1/txn", {"ops": [{"op": "update", "key": key, "add": {"n": True}}]}, None),
        ("POST", "/v1/txn", {"ops": [{"op": "update", "key": key, "append": {"l": 1}}]}, None),
        ("POST", "/v1/txn", {"ops": [{"op": "update", "key": key}]}, "ops[0]"),
        ("POST", "/v1/txn", {"ops": [{"op": "check", "key": key}]}, "ops[0].if"),
        ("POST", "/v1/read", {"keys": "a"}, "keys"),
        ("POST", "/v1/read", {"keys": [1]}, "keys[0]"),
        ("POST", "/v1/read", {"keys": []}, "keys"),
        ("POST", "/v1/read", {}, "keys"),
        ("POST", "/v1/read", {"keys": [key], "at": 1764000000000000}, "at"),
        ("POST", "/v1/read", {"keys": [key], "at": "1764000000000000.0.ff"}, "at"),
        ("POST", "/v1/read", {"keys": [key], "at": "1764000000000000.0.00000000000000FF"}, "at"),
        ("POST", "/v1/read", {"keys": [key], "at": "01764000000000000.0.00000000000000ff"}, "at"),
        ("POST", "/v1/read", {"keys": [key], "at": [1764000000000000, 0, 255]}, "at"),
        ("POST", "/v1/read", {"keys": [key], "at": None}, "at"),
        ("POST", "/v1/read", {"keys": [key], "at": "9999999999999999999.0.0000000000000000"}, "at"),
    ]
    for method, target, payload, field in cases:
        await refused(api, method, target, body(payload), field=field)
    await canary.unchanged()


@pytest.mark.asyncio
async def test_unknown_members_are_400(api: ApiClient, canary: Canary) -> None:
    key = canary.key
    put = {"op": "put", "key": key, "value": 2}
    cases: list[tuple[str, str, object, str]] = [
        ("PUT", kv(key), {"value": 2, "extra": 1}, "extra"),
        ("PUT", kv(key), {"value": 2, "return_item": True}, "return_item"),
        ("DELETE", kv(key), {"if": {"exists": True}, "extra": 1}, "extra"),
        ("DELETE", kv(key), {"value": 2}, "value"),
        ("POST", "/v1/txn", {"ops": [put], "extra": 1}, "extra"),
        ("POST", "/v1/txn", {"ops": [{**put, "extra": 1}]}, "ops[0].extra"),
        ("POST", "/v1/txn", {"ops": [{"op": "delete", "key": key, "value": 1}]}, "ops[0].value"),
        ("POST", "/v1/txn", {"ops": [{"op": "check", "key": key, "value": 1}]}, "ops[0].value"),
        (
            "POST",
            "/v1/txn",
            {"ops": [{"op": "update", "key": key, "set": {"a": 1}, "value": 1}]},
            "ops[0].value",
        ),
        ("POST", "/v1/read", {"keys": [key], "extra": 1}, "extra"),
        ("PUT", kv(key), {"value": 2, "if": {"exists": True, "extra": 1}}, "body.if.extra"),
        ("PUT", kv(key), {"value": 2, "if": {"path": "n", "eq": 1, "x": 1}}, "body.if.x"),
        (
            "PUT",
            kv(key),
            {"value": 2, "if": {"all": [{"exists": True}, {"version": 1, "extra": 1}]}},
            "body.if.all[1].extra",
        ),
        (
            "POST",
            "/v1/txn",
            {"ops": [{**put, "if": {"not": {"exists": True, "y": 0}}}]},
            "ops[0].if.not.y",
        ),
    ]
    for method, target, payload, field in cases:
        await refused(api, method, target, body(payload), field=field)
    # Two kinds, or two operators, in one condition object.
    for condition in (
        {"exists": True, "version": 1},
        {"path": "n", "eq": 1, "ne": 2},
        {"path": "n"},
        {"all": [{"exists": True}], "any": [{"exists": True}]},
    ):
        await refused(api, "PUT", kv(key), body({"value": 2, "if": condition}))
    await canary.unchanged()


@pytest.mark.asyncio
async def test_unknown_member_names_with_lone_surrogates_are_400_json(
    api: ApiClient, canary: Canary
) -> None:
    """A JSON escape may spell a lone surrogate; echoing such a name in the error must still
    give a JSON 400 (it once broke the error rendering into a plain-text 500)."""
    key = canary.key.encode()
    put = b'{"op": "put", "key": "' + key + b'", "value": 2'
    for method, target, data in (
        ("PUT", kv(canary.key), b'{"value": 2, "\\ud800": 1}'),
        ("DELETE", kv(canary.key), b'{"\\udfff": 1}'),
        ("POST", "/v1/txn", b'{"ops": [' + put + b"}], " + b'"\\ud800x": 1}'),
        ("POST", "/v1/txn", b'{"ops": [' + put + b', "\\ud800": 1}]}'),
        ("POST", "/v1/read", b'{"keys": ["a"], "\\udc00": 1}'),
        ("PUT", kv(canary.key), b'{"value": 2, "if": {"\\ud800": true}}'),
    ):
        reply = await api.request(method, target, data=data)
        assert_error(reply, "ValidationError")
        json.dumps(reply.body)  # the echoed name decodes to a str again
    await canary.unchanged()


@pytest.mark.asyncio
async def test_an_unknown_op_kind_is_400(api: ApiClient, canary: Canary) -> None:
    other = unique("opkind")
    for kind in ("upsert", "PUT", "", None, ["put"]):
        ops = [
            {"op": "put", "key": other, "value": 1},
            {"op": kind, "key": canary.key, "value": 2},
        ]
        await refused(api, "POST", "/v1/txn", body({"ops": ops}), field="ops[1].op")
    await refused(api, "POST", "/v1/txn", body({"ops": [{"key": canary.key}]}), field="ops[0].op")
    await canary.unchanged(other)


@pytest.mark.asyncio
async def test_nan_and_infinity_literals_are_400(api: ApiClient, canary: Canary) -> None:
    key = canary.key
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"):
        await refused(api, "PUT", kv(key), b'{"value": ' + literal + b"}")
        await refused(api, "PUT", kv(key), b'{"value": {"a": [' + literal + b"]}}")
        await refused(
            api, "PUT", kv(key), b'{"value": 2, "if": {"path": "n", "lt": ' + literal + b"}}"
        )
        await refused(
            api,
            "POST",
            "/v1/txn",
            b'{"ops": [{"op": "update", "key": "'
            + key.encode()
            + b'", "add": {"n": '
            + literal
            + b"}}]}",
        )
    await canary.unchanged()


@pytest.mark.asyncio
async def test_duplicate_member_names_are_400(api: ApiClient, canary: Canary) -> None:
    key = canary.key.encode()
    cases = [
        (kv(canary.key), "PUT", b'{"value": 2, "value": 3}'),
        (kv(canary.key), "PUT", b'{"value": {"a": 1, "a": 2}}'),
        (kv(canary.key), "PUT", b'{"value": 2, "if": {"exists": true, "exists": true}}'),
        (kv(canary.key), "DELETE", b'{"if": {"version": 1}, "if": {"version": 1}}'),
        ("/v1/txn", "POST", b'{"ops": [], "ops": [{"op": "put", "key": "' + key + b'"}]}'),
        (
            "/v1/txn",
            "POST",
            b'{"ops": [{"op": "put", "key": "' + key + b'", "value": 1, "value": 2}]}',
        ),
        (
            "/v1/txn",
            "POST",
            b'{"ops": [{"op": "put", "key": "x", "key": "' + key + b'", "value": 1}]}',
        ),
        ("/v1/read", "POST", b'{"keys": ["a"], "keys": ["b"]}'),
    ]
    for target, method, data in cases:
        error = await refused(api, method, target, data)
        assert "twice" in error["message"], error
    await canary.unchanged("x")


# --- limits -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_more_than_100_ops_is_400_and_100_are_fine(api: ApiClient, canary: Canary) -> None:
    prefix = unique("many")
    keys = [f"{prefix}/{index:03d}" for index in range(100)]
    ops = [{"op": "put", "key": key, "value": 1} for key in keys]
    too_many = [*ops, {"op": "put", "key": canary.key, "value": 2}]
    await refused(api, "POST", "/v1/txn", body({"ops": too_many}), field="ops")
    await canary.unchanged(*keys[::10])
    reply = await api.txn(ops)
    assert reply.status == 200, reply
    read = await api.read(keys)
    assert all(item.get("value") == 1 for item in read.body["items"])


@pytest.mark.asyncio
async def test_duplicate_keys_in_one_txn_are_400(api: ApiClient, canary: Canary) -> None:
    other = unique("dupkey")
    ops = [
        {"op": "put", "key": other, "value": 1},
        {"op": "put", "key": canary.key, "value": 2},
        {"op": "check", "key": canary.key, "if": {"exists": True}},
    ]
    await refused(api, "POST", "/v1/txn", body({"ops": ops}), field="ops[2].key")
    await refused(api, "POST", "/v1/read", body({"keys": [other, other]}), field="keys[1]")
    await canary.unchanged(other)


@pytest.mark.asyncio
async def test_empty_ops_is_400(api: ApiClient, canary: Canary) -> None:
    await refused(api, "POST", "/v1/txn", body({"ops": []}), field="ops")
    await refused(api, "POST", "/v1/txn", body({"ops": [], "token": unique("t")}), field="ops")
    await canary.unchanged()


@pytest.mark.asyncio
async def test_a_key_over_1024_bytes_is_400_and_1024_bytes_are_fine(
    api: ApiClient, canary: Canary
) -> None:
    ascii_long = "k" * 1025
    cyrillic_long = "я" * 513  # 513 characters, 1026 bytes of UTF-8
    for key in (ascii_long, cyrillic_long):
        await refused(api, "PUT", kv(key), body({"value": 1}), field="key")
        await refused(api, "GET", kv(key), None, field="key")
        await refused(api, "DELETE", kv(key), None, field="key")
        ops = [{"op": "put", "key": canary.key, "value": 2}, {"op": "put", "key": key, "value": 1}]
        await refused(api, "POST", "/v1/txn", body({"ops": ops}), field="ops[1].key")
        await refused(api, "POST", "/v1/read", body({"keys": [key]}), field="keys[0]")
        await refused(api, "GET", f"/v1/scan?start={quote_all(key)}", None, field="start")
        await refused(api, "GET", f"/v1/scan?prefix={quote_all(key)}", None, field="prefix")
    await refused(api, "PUT", kv(""), body({"value": 1}), "NotFound")  # no key: no route
    await refused(api, "POST", "/v1/read", body({"keys": [""]}), field="keys[0]")
    await canary.unchanged()
    longest = unique("long") + "я" * 400
    longest += "k" * (1024 - len(longest.encode()))
    assert len(longest.encode()) == 1024
    assert (await api.put_item(longest, 1)).status == 200
    got = await api.get_item(longest)
    assert got.status == 200 and got.body["key"] == longest, got


@pytest.mark.asyncio
async def test_values_and_conditions_over_their_limits_are_400(
    cluster: LocalNodes, api: ApiClient, canary: Canary
) -> None:
    key = canary.key
    deep: object = 1
    for _ in range(65):
        deep = [deep]
    deep_condition: dict[str, Any] = {"exists": True}
    for _ in range(17):
        deep_condition = {"not": deep_condition}
    wide_condition = {"all": [{"exists": True}] * 256}
    for payload in (
        {"value": "x" * (400 * 1024 + 1)},
        {"value": deep},
        {"value": 2**64},
        {"value": -(2**63) - 1},
        {"value": 2, "if": deep_condition},
        {"value": 2, "if": wide_condition},
        {"value": 2, "if": {"version": 2**63}},
    ):
        await refused(api, "PUT", kv(key), body(payload))
    overlapping = {"op": "update", "key": key, "set": {"a": 1, "a.b": 2}}
    await refused(api, "POST", "/v1/txn", body({"ops": [overlapping]}))
    twice = {"op": "update", "key": key, "set": {"a": 1}, "remove": ["a"]}
    await refused(api, "POST", "/v1/txn", body({"ops": [twice]}))
    big_keys = keys_on_distinct_partitions(cluster, unique("bigtxn"), 8)
    big = "v" * (390 * 1024)  # 11 values of 390 KiB: over the 4 MiB of one transaction
    ops = [{"op": "put", "key": f"{k}/{i}", "value": big} for k in big_keys for i in range(2)]
    await refused(api, "POST", "/v1/txn", body({"ops": ops[:11]}), field="ops")
    read_keys = [f"{key}/{index}" for index in range(1001)]
    await refused(api, "POST", "/v1/read", body({"keys": read_keys}), field="keys")
    await canary.unchanged(*(op["key"] for op in ops[:11]))
    for edge in (2**63 - 1, -(2**63)):
        assert (await api.put_item(unique("intedge"), edge)).status == 200


@pytest.mark.asyncio
async def test_a_content_length_over_8_mib_is_413_before_the_body_is_read(
    cluster: LocalNodes, api: ApiClient, canary: Canary
) -> None:
    host, port = parse_host_port(cluster.api("c1"))
    token = cluster.tokens["read-write"]
    for target, method in ((kv(canary.key), "PUT"), ("/v1/txn", "POST"), ("/v1/read", "POST")):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = (
                f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {API_BODY_BYTES_MAX + 1}\r\n\r\n"
            )
            # Only the first bytes of the announced body: the answer must not wait for more.
            writer.write(head.encode("ascii") + b'{"value": "')
            await writer.drain()
            reply = await asyncio.wait_for(read_raw_reply(reader), RAW_REPLY_TIMEOUT_S)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        check_too_large(reply)
    await canary.unchanged()


def check_too_large(reply: RawReply) -> None:
    assert reply.status == 413, reply
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json()["error"]
    assert (error["code"], error["number"], error["retryable"]) == ("TooLarge", 2004, False)
    assert isinstance(error["message"], str) and error["message"]


@pytest.mark.asyncio
async def test_a_chunked_body_over_8_mib_is_cut_off_with_413(
    cluster: LocalNodes, api: ApiClient, canary: Canary
) -> None:
    """The client announces one chunk far over the limit, sends one byte past the limit and then
    nothing more (the body never ends): the server must answer 413 from what it has, say
    ``Connection: close``, and close the connection instead of waiting for (or draining) the rest.
    Every byte sent is a body byte the server needs to see the limit passed, so nothing is left
    unread in its socket when it closes (no reset can swallow the answer)."""
    host, port = parse_host_port(cluster.api("c1"))
    token = cluster.tokens["read-write"]
    head = (
        f"PUT {kv(canary.key)} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    first = b'{"value": "'
    announced = b"%x\r\n" % CHUNK_ANNOUNCED_BYTES  # a chunk that never completes
    sent = first + b"x" * (API_BODY_BYTES_MAX + 1 - len(first))
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode("ascii") + announced + sent)
        reply = await asyncio.wait_for(read_raw_reply(reader), RAW_REPLY_TIMEOUT_S)
        check_too_large(reply)
        assert reply.headers.get("Connection", "").lower() == "close", reply
        rest = await asyncio.wait_for(reader.read(), RAW_REPLY_TIMEOUT_S)
        assert rest == b"", "more than one answer to a cut-off request"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    await canary.unchanged()


# --- paths and queries --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_invalid_percent_encoding_in_a_path_is_400(api: ApiClient, canary: Canary) -> None:
    bad = ["%zz", "a%", "a%2", "%f", "%ff", "%C3", "%C3%28", "%ED%A0%80", "%C0%AF", "%F4%90%80%80"]
    for raw in bad:
        await refused(api, "GET", f"/v1/kv/{raw}", None, field="key")
        await refused(api, "PUT", f"/v1/kv/{raw}", body({"value": 1}), field="key")
        await refused(api, "DELETE", f"/v1/kv/{raw}", None, field="key")
        await refused(api, "GET", f"/v1/txn/{raw}", None, field="token")
        await refused(api, "GET", f"/v1/scan?prefix={raw}", None, field="prefix")
    # Nothing was stored under the literal text either.
    await canary.unchanged("%zz", "a%", "%ff")


@pytest.mark.asyncio
async def test_unknown_or_repeated_scan_parameters_are_400(api: ApiClient, canary: Canary) -> None:
    for query, field in (
        ("foo=1", "foo"),
        ("prefix=a&Prefix=b", "Prefix"),
        ("limit=1&limit=2", "limit"),
        ("prefix=a&prefix=a", "prefix"),
        ("cursor=c1.YQ%3D%3D&cursor=c1.YQ%3D%3D", "cursor"),
        ("start=a&end=b&start=a", "start"),
        ("key=a", "key"),
        ("%zz=1", "query"),
    ):
        await refused(api, "GET", f"/v1/scan?{query}", None, field=field)
    await canary.unchanged()


@pytest.mark.asyncio
async def test_a_bad_cursor_is_400(api: ApiClient, canary: Canary) -> None:
    def encoded(raw: bytes) -> str:
        return quote_all("c1." + base64.urlsafe_b64encode(raw).decode("ascii"))

    for cursor in (
        "zzz",
        "c1.",
        "c1.a",
        "c1.%21%21",
        "c2.YQ%3D%3D",
        encoded(b"\xff\xfe"),  # not UTF-8
        encoded(b"k" * 1025),  # not a key
    ):
        await refused(api, "GET", f"/v1/scan?prefix=a&cursor={cursor}", None, field="cursor")
    await canary.unchanged()


@pytest.mark.asyncio
async def test_a_wrong_method_is_405_with_allow(api: ApiClient, canary: Canary) -> None:
    for method, target, allowed in (
        ("POST", kv(canary.key), {"GET", "PUT", "DELETE"}),
        ("PATCH", kv(canary.key), {"GET", "PUT", "DELETE"}),
        ("GET", "/v1/txn", {"POST"}),
        ("PUT", "/v1/read", {"POST"}),
        ("POST", "/v1/scan", {"GET"}),
        ("DELETE", "/v1/txn/some-token", {"GET"}),
        ("POST", "/v1/health", {"GET"}),
        ("PUT", "/metrics", {"GET"}),
    ):
        reply = await api.request(method, target, data=body({"value": 2}))
        assert_error(reply, "ValidationError", status=405)
        assert set(reply.headers["Allow"].replace(" ", "").split(",")) == allowed, reply
    await canary.unchanged()


@pytest.mark.asyncio
async def test_an_unknown_route_is_404_json(api: ApiClient, canary: Canary) -> None:
    for target in ("/v1", "/v1/kv", "/v1/kv/", "/v2/kv/a", "/v1/items/a", "/v1/txn/"):
        await refused(api, "GET", target, None, "NotFound")
    # "/" is the DynamoDB endpoint's (POST only): other methods are 405 in the API's form.
    await refused(api, "GET", "/", None, "ValidationError", status=405)
    await refused(api, "PUT", "/v1/kvs/" + canary.key, body({"value": 2}), "NotFound")
    await canary.unchanged()


# --- random bodies --------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
# Member names include lone surrogates (JSON can spell them as escapes) and known names.
_NAMES = st.text(max_size=6) | st.sampled_from(["\ud800", "x\udfff", "value", "ops", "if"])
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_NAMES, inner, max_size=4),
    max_leaves=16,
)
_KEYS = st.sampled_from(["hyp/a", "hyp/b", "hyp/c", "hyp/d"]) | st.text(max_size=4).map(
    lambda text: "hyp/" + text
)
_PATHS = st.sampled_from(["", "a", "a.b", "n", "l"]) | st.text(max_size=4)
_LEAF_CONDITIONS = (
    st.fixed_dictionaries({"exists": st.booleans()})
    | st.fixed_dictionaries({"version": st.integers(-1, 4)})
    | st.builds(
        lambda path, operator, operand: {"path": path, operator: operand},
        _PATHS,
        st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "is"]),
        _JSON,
    )
)
_CONDITIONS = st.recursive(
    _LEAF_CONDITIONS,
    lambda inner: (
        st.builds(lambda c: {"all": c}, st.lists(inner, max_size=3))
        | st.builds(lambda c: {"any": c}, st.lists(inner, max_size=3))
        | st.builds(lambda c: {"not": c}, inner)
    ),
    max_leaves=5,
)
_OPS = st.fixed_dictionaries(
    {"op": st.sampled_from(["put", "delete", "update", "check", "merge"]), "key": _KEYS},
    optional={
        "value": _JSON,
        "if": _CONDITIONS | _JSON,
        "return_item": st.booleans() | _JSON,
        "set": st.dictionaries(_PATHS, _JSON, max_size=2),
        "remove": st.lists(_PATHS, max_size=2),
        "add": st.dictionaries(_PATHS, st.integers(-5, 5) | _JSON, max_size=2),
        "append": st.dictionaries(_PATHS, st.lists(_JSON, max_size=2) | _JSON, max_size=2),
        "extra": _JSON,
    },
)
_TXN_BODIES = _JSON | st.fixed_dictionaries(
    {"ops": st.lists(_OPS | st.dictionaries(_NAMES, _JSON, max_size=3), max_size=4) | _JSON},
    optional={"token": st.text(max_size=8) | _JSON, "extra": _JSON, "\ud800": _JSON},
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_TXN_BODIES)
def test_random_txn_bodies_never_get_a_5xx(cluster: LocalNodes, payload: object) -> None:
    data = json.dumps(payload).encode("utf-8")
    status, content_type, raw = sync_request(
        cluster.api("c1"), "POST", "/v1/txn", data, cluster.tokens["read-write"]
    )
    assert status < 500, (status, raw, data)
    assert content_type.startswith("application/json"), (status, raw)
    answer = json.loads(raw)
    if status == 200:
        assert answer["committed"] is True, answer
        return
    assert status in {400, 409, 412, 422}, (status, raw, data)
    error = answer["error"]
    assert {"code", "number", "message", "retryable"} <= set(error), answer
    assert isinstance(error["message"], str)
    if status == 400:
        assert error["code"] == "ValidationError", answer
    if status == 409:
        assert error["code"] in {
            "TransactionCanceled",
            "TransactionConflict",
            "TimestampTooOld",
            "TransactionInProgress",
        }, answer
