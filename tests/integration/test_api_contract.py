"""The public HTTP JSON API (docs/api.md) against a real cluster: 3 storage nodes, 8 partitions,
one coordinator, all separate processes on loopback with their own SQLite files.

One cluster serves the whole module (processes take about a second each to start); every test
works under its own unique key prefix and idempotency tokens, so tests do not see each other.
Each test checks one behaviour of the contract: the status code and the body's shape and values.

A cancelled multi-partition transaction is decided once every vote is in, so every op's reason
comes from its own partition (regression: it used to be decided at the first "no", and ops on
partitions that had not voted yet read ``"None"`` even when their condition failed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support.api import (
    TXN_ID_PATTERN,
    ApiClient,
    api_client,
    api_cluster,
    assert_error,
    assert_item,
    key_on_partition_of,
    keys_on_distinct_partitions,
    quote_all,
    ts_order,
    unique,
)
from support.cluster import LocalNodes

pytestmark = pytest.mark.asyncio

OPENAPI_FILE = Path(__file__).resolve().parents[2] / "kvstore" / "api" / "openapi.json"
OUTCOME_WAIT_S = 60.0  # a guard against a hang, not a measurement


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    with api_cluster(tmp_path_factory.mktemp("api-contract")) as nodes:
        yield nodes


@pytest_asyncio.fixture
async def api(cluster: LocalNodes) -> AsyncIterator[ApiClient]:
    """A client with the read-write token."""
    async with api_client(cluster.api("c1"), cluster.tokens["read-write"]) as client:
        yield client


async def put_ok(api: ApiClient, key: str, value: object) -> dict[str, Any]:
    reply = await api.put_item(key, value)
    assert reply.status == 200, reply
    return dict(reply.body)


async def committed(api: ApiClient, ops: list[dict[str, Any]], token: str | None = None) -> Any:
    reply = await api.txn(ops, token)
    assert reply.status == 200, reply
    assert set(reply.body) == {"committed", "ts", "txn_id"}, reply
    assert reply.body["committed"] is True
    ts_order(reply.body["ts"])
    assert TXN_ID_PATTERN.fullmatch(reply.body["txn_id"]), reply
    return reply.body


def cancelled(reply: Any, codes: list[str]) -> dict[str, Any]:
    """A 409 TransactionCanceled whose reasons have ``codes``, one per op, in order."""
    error = assert_error(reply, "TransactionCanceled")
    assert error["retryable"] is False  # a failed condition fails again
    assert TXN_ID_PATTERN.fullmatch(error["txn_id"]), reply
    ts_order(error["ts"])
    assert [reason["code"] for reason in error["reasons"]] == codes, reply
    for reason in error["reasons"]:
        assert {"code", "key"} <= set(reason) <= {"code", "key", "message", "item"}, reason
        if "message" in reason:
            assert isinstance(reason["message"], str)
    return error


# --- GET / PUT / DELETE /v1/kv/{key} --------------------------------------------------------


async def test_put_then_get_returns_the_item_with_a_growing_version_and_ts(
    api: ApiClient,
) -> None:
    key = unique("item")
    first = await put_ok(api, key, {"name": "Ada", "visits": 3})
    assert set(first) == {"version", "ts"}
    assert isinstance(first["version"], int) and first["version"] >= 1
    got = await api.get_item(key)
    assert got.status == 200, got
    assert got.headers["Content-Type"].startswith("application/json")
    assert_item(got.body, key, {"name": "Ada", "visits": 3})
    assert (got.body["version"], got.body["ts"]) == (first["version"], first["ts"])

    second = await put_ok(api, key, [1, "two", None, True, 2.5])
    assert second["version"] == first["version"] + 1
    assert ts_order(second["ts"]) > ts_order(first["ts"])
    got = await api.get_item(key)
    assert_item(got.body, key, [1, "two", None, True, 2.5])
    assert (got.body["version"], got.body["ts"]) == (second["version"], second["ts"])

    third = await put_ok(api, key, [1, "two", None, True, 2.5])  # the same value is a write too
    assert third["version"] == second["version"] + 1
    assert ts_order(third["ts"]) > ts_order(second["ts"])


async def test_get_of_an_absent_key_is_404_not_found(api: ApiClient) -> None:
    reply = await api.get_item(unique("absent"))
    error = assert_error(reply, "NotFound")
    assert error["retryable"] is False


async def test_keys_needing_percent_encoding_round_trip_through_get_and_scan(
    api: ApiClient,
) -> None:
    prefix = unique("enc")
    keys = [
        f"{prefix}/a/b",
        f"{prefix} with spaces",
        f"{prefix}/ключ",
        f"{prefix}%",
        f"{prefix}%2F",
        f"{prefix}?q=1&r=2#frag",
        f"{prefix}+plus",
        f"{prefix}/😀",
        f"{prefix}/..",
    ]
    for index, key in enumerate(keys):
        await put_ok(api, key, index)
    for index, key in enumerate(keys):
        got = await api.get_item(key)
        assert got.status == 200, (key, got)
        assert_item(got.body, key, index)
    scanned = await api.scan({"prefix": prefix})
    assert scanned.status == 200, scanned
    assert [item["key"] for item in scanned.body["items"]] == sorted(keys)
    assert [item["value"] for item in scanned.body["items"]] == [
        keys.index(key) for key in sorted(keys)
    ]
    assert scanned.body["cursor"] is None


async def test_put_if_version_succeeds_once_then_fails_with_412(api: ApiClient) -> None:
    key = unique("ifver")
    version = (await put_ok(api, key, "v1"))["version"]
    ok = await api.put_item(key, "v2", {"version": version})
    assert ok.status == 200, ok
    assert ok.body["version"] == version + 1
    stale = await api.put_item(key, "v3", {"version": version})
    error = assert_error(stale, "ConditionFailed")
    assert error["retryable"] is False
    got = await api.get_item(key)
    assert_item(got.body, key, "v2")
    assert got.body["version"] == version + 1


async def test_put_if_exists_creates_only_when_absent(api: ApiClient) -> None:
    key = unique("ifexists")
    assert_error(await api.put_item(key, 0, {"exists": True}), "ConditionFailed")
    assert (await api.get_item(key)).status == 404
    created = await api.put_item(key, 1, {"exists": False})
    assert created.status == 200, created
    assert_error(await api.put_item(key, 2, {"exists": False}), "ConditionFailed")
    replaced = await api.put_item(key, 3, {"exists": True})
    assert replaced.status == 200, replaced
    assert replaced.body["version"] == created.body["version"] + 1
    assert_item((await api.get_item(key)).body, key, 3)


async def test_put_if_path_comparisons_hold_or_fail_with_412(api: ApiClient) -> None:
    key = unique("ifpath")
    value = {"a": {"b": 5}, "s": "m", "flag": True}
    version = (await put_ok(api, key, value))["version"]
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"path": "a.b", "eq": 5}, True),
        ({"path": "a.b", "eq": 5.0}, True),
        ({"path": "a.b", "ne": 5}, False),
        ({"path": "a.b", "ne": 6}, True),
        ({"path": "a.b", "lt": 6}, True),
        ({"path": "a.b", "lt": 5}, False),
        ({"path": "a.b", "le": 5}, True),
        ({"path": "a.b", "gt": 5}, False),
        ({"path": "a.b", "gt": 4}, True),
        ({"path": "a.b", "ge": 5}, True),
        ({"path": "s", "gt": "l"}, True),
        ({"path": "s", "lt": "l"}, False),
        ({"path": "s", "lt": 10}, False),  # other types never order
        ({"path": "flag", "eq": 1}, False),  # a bool is not a number
        ({"path": "a", "eq": {"b": 5}}, True),
        ({"path": "", "eq": value}, True),
        ({"path": "missing", "ne": 1}, False),  # a missing path is false for every operator
        ({"path": "a.b.c", "eq": 5}, False),
        ({"not": {"path": "missing", "eq": 1}}, True),
    ]
    for condition, holds in cases:
        reply = await api.put_item(key, value, condition)
        if holds:
            assert reply.status == 200, (condition, reply)
            version += 1
            assert reply.body["version"] == version, (condition, reply)
        else:
            assert_error(reply, "ConditionFailed")
        got = await api.get_item(key)
        assert_item(got.body, key, value)
        assert got.body["version"] == version, condition


async def test_path_comparison_on_an_absent_item_is_false_even_for_ne(api: ApiClient) -> None:
    key = unique("ifabsent")
    assert_error(await api.put_item(key, 1, {"path": "a", "ne": 1}), "ConditionFailed")
    assert_error(await api.put_item(key, 1, {"version": 0}), "ConditionFailed")
    assert (await api.get_item(key)).status == 404


async def test_delete_without_body_then_again_reports_deleted_true_then_false(
    api: ApiClient,
) -> None:
    key = unique("del")
    put = await put_ok(api, key, "x")
    first = await api.delete_item(key)
    assert first.status == 200, first
    assert set(first.body) == {"deleted", "ts"}
    assert first.body["deleted"] is True
    assert ts_order(first.body["ts"]) > ts_order(put["ts"])
    assert_error(await api.get_item(key), "NotFound")
    second = await api.delete_item(key)
    assert second.status == 200, second
    assert second.body["deleted"] is False
    ts_order(second.body["ts"])
    never = await api.delete_item(unique("never-written"))
    assert never.status == 200, never
    assert never.body["deleted"] is False
    again = await put_ok(api, key, "y")  # versions never go back after a delete
    assert again["version"] > put["version"]


async def test_delete_with_an_if_body_applies_only_when_it_holds(api: ApiClient) -> None:
    key = unique("delif")
    version = (await put_ok(api, key, {"n": 1}))["version"]
    refused = await api.delete_item(key, {"if": {"version": version + 7}})
    assert_error(refused, "ConditionFailed")
    assert_item((await api.get_item(key)).body, key, {"n": 1})
    refused = await api.delete_item(key, {"if": {"path": "n", "gt": 1}})
    assert_error(refused, "ConditionFailed")
    assert (await api.get_item(key)).status == 200
    empty = await api.request("DELETE", f"/v1/kv/{quote_all(key)}", data=b"{}")
    assert empty.status == 200 and empty.body["deleted"] is True, empty
    absent = await api.delete_item(key, {"if": {"exists": True}})
    assert_error(absent, "ConditionFailed")
    version = (await put_ok(api, key, {"n": 2}))["version"]
    deleted = await api.delete_item(key, {"if": {"all": [{"version": version}, {"exists": True}]}})
    assert deleted.status == 200 and deleted.body["deleted"] is True, deleted
    assert (await api.get_item(key)).status == 404


# --- POST /v1/txn ----------------------------------------------------------------------------


async def test_multi_partition_txn_applies_put_delete_and_every_update_action(
    cluster: LocalNodes, api: ApiClient
) -> None:
    k_put, k_del, k_upd, k_new, k_whole_add, k_whole_append = keys_on_distinct_partitions(
        cluster, unique("txn"), 6
    )
    await put_ok(api, k_del, "doomed")
    await put_ok(api, k_upd, {"keep": 1, "gone": {"x": 1}, "n": 40, "log": ["a"], "o": {}})
    before = await api.read([k_upd])
    upd_version = before.body["items"][0]["version"]
    body = await committed(
        api,
        [
            {"op": "put", "key": k_put, "value": {"hello": "world"}},
            {"op": "delete", "key": k_del},
            {
                "op": "update",
                "key": k_upd,
                "set": {"o.p.q": "deep", "new": [1]},
                "remove": ["gone"],
                "add": {"n": 2, "fresh": 1.5},
                "append": {"log": ["b", "c"], "o.list": [0]},
            },
            {"op": "update", "key": k_new, "add": {"count": 3}, "append": {"items": ["x"]}},
            {"op": "update", "key": k_whole_add, "add": {"": 7}},
            {"op": "update", "key": k_whole_append, "append": {"": [1, 2]}},
        ],
    )
    ts = body["ts"]
    read = await api.read([k_put, k_del, k_upd, k_new, k_whole_add, k_whole_append])
    assert read.status == 200, read
    put_item, del_item, upd_item, new_item, add_item, append_item = read.body["items"]
    assert_item(put_item, k_put, {"hello": "world"})
    assert del_item == {"key": k_del, "found": False}
    assert_item(
        upd_item,
        k_upd,
        {
            "keep": 1,
            "n": 42,
            "fresh": 1.5,
            "log": ["a", "b", "c"],
            "o": {"p": {"q": "deep"}, "list": [0]},
            "new": [1],
        },
    )
    assert upd_item["version"] == upd_version + 1
    assert_item(new_item, k_new, {"count": 3, "items": ["x"]})
    assert_item(add_item, k_whole_add, 7)
    assert_item(append_item, k_whole_append, [1, 2])
    for item in (put_item, upd_item, new_item, add_item, append_item):
        assert item["ts"] == ts, item  # every write of one transaction has its timestamp


async def test_check_ops_and_all_any_not_conditions_gate_a_txn(
    cluster: LocalNodes, api: ApiClient
) -> None:
    guard, target, other = keys_on_distinct_partitions(cluster, unique("check"), 3)
    version = (await put_ok(api, guard, {"state": "open", "n": 3}))["version"]
    condition = {
        "all": [
            {"exists": True},
            {"any": [{"version": version + 100}, {"path": "state", "eq": "open"}]},
            {"not": {"path": "n", "gt": 3}},
        ]
    }
    await committed(
        api,
        [
            {"op": "check", "key": guard, "if": condition},
            {"op": "put", "key": target, "value": 1, "if": {"not": {"exists": True}}},
            {"op": "update", "key": other, "set": {"a": 1}},
        ],
    )
    got = await api.get_item(guard)
    assert got.body["version"] == version  # a check writes nothing
    assert_item((await api.get_item(target)).body, target, 1)
    assert_item((await api.get_item(other)).body, other, {"a": 1})


async def test_cancelled_txn_has_one_reason_per_op_and_applies_nothing(
    cluster: LocalNodes, api: ApiClient
) -> None:
    prefix = unique("cancel")
    a, b, c = keys_on_distinct_partitions(cluster, prefix, 3)
    # Both failing ops on one partition: its one "no" vote carries both reasons.
    d = key_on_partition_of(cluster, prefix + "-d", b)
    await put_ok(api, b, {"state": "closed"})
    await put_ok(api, d, {"n": 1})
    b_item = (await api.get_item(b)).body
    d_before = (await api.get_item(d)).body
    reply = await api.txn(
        [
            {"op": "put", "key": a, "value": "should not appear"},
            {"op": "check", "key": b, "if": {"path": "state", "eq": "open"}, "return_item": True},
            {"op": "delete", "key": c, "return_item": True},
            {"op": "update", "key": d, "add": {"n": 1}, "if": {"exists": False}},
        ]
    )
    error = cancelled(reply, ["None", "ConditionFailed", "None", "ConditionFailed"])
    assert error["reasons"][1]["item"] == b_item  # return_item: the current item
    assert "item" not in error["reasons"][3]  # not asked for
    assert "item" not in error["reasons"][0] and "item" not in error["reasons"][2]
    assert [reason["key"] for reason in error["reasons"]] == [a, b, c, d]
    assert f'op 1 (key "{b}"): ConditionFailed' in error["message"]
    assert f'op 3 (key "{d}"): ConditionFailed' in error["message"]
    read = await api.read([a, b, c, d])
    assert read.body["items"] == [
        {"key": a, "found": False},
        b_item,
        {"key": c, "found": False},
        d_before,
    ]


async def test_every_partitions_failed_condition_is_reported(
    cluster: LocalNodes, api: ApiClient
) -> None:
    """Failing conditions on four different partitions: four ConditionFailed reasons, each with
    its item, whichever partition votes first."""
    keys = keys_on_distinct_partitions(cluster, unique("allreasons"), 4)
    for key in keys:
        await put_ok(api, key, {"v": 1})
    ops = [{"op": "check", "key": k, "if": {"version": 99}, "return_item": True} for k in keys]
    for _ in range(5):  # votes race differently each time
        error = cancelled(await api.txn(ops), ["ConditionFailed"] * 4)
        assert [reason["item"]["key"] for reason in error["reasons"]] == keys


async def test_return_item_on_an_absent_key_gives_no_item(api: ApiClient) -> None:
    key = unique("retabsent")
    reply = await api.txn(
        [{"op": "check", "key": key, "if": {"exists": True}, "return_item": True}]
    )
    error = cancelled(reply, ["ConditionFailed"])
    assert "item" not in error["reasons"][0]


async def test_a_client_reads_its_own_write_right_after_a_commit(
    cluster: LocalNodes, api: ApiClient
) -> None:
    keys = keys_on_distinct_partitions(cluster, unique("ryw"), 4)
    for round_ in range(15):
        body = await committed(
            api, [{"op": "put", "key": key, "value": [round_, key]} for key in keys]
        )
        for key in keys:  # a single GET, on each partition, right after the 200
            got = await api.get_item(key)
            assert got.status == 200, got
            assert got.body["value"] == [round_, key], (round_, got)
            assert got.body["ts"] == body["ts"]
        read = await api.read(keys)
        assert [item["value"] for item in read.body["items"]] == [[round_, k] for k in keys]


# --- idempotency tokens ------------------------------------------------------------------------


async def test_the_same_token_and_ops_apply_once_and_return_the_original_outcome(
    cluster: LocalNodes, api: ApiClient
) -> None:
    counter, log = keys_on_distinct_partitions(cluster, unique("idem"), 2)
    token = unique("tok")
    ops = [
        {"op": "update", "key": counter, "add": {"": 1}},
        {"op": "update", "key": log, "append": {"": ["once"]}},
    ]
    first = await committed(api, ops, token)
    for _ in range(2):
        again = await committed(api, ops, token)
        assert again == first  # the same txn_id and ts
    read = await api.read([counter, log])
    assert [item["value"] for item in read.body["items"]] == [1, ["once"]]
    assert all(item["ts"] == first["ts"] for item in read.body["items"])


async def test_concurrent_submissions_of_one_token_apply_once(
    cluster: LocalNodes, api: ApiClient
) -> None:
    keys = keys_on_distinct_partitions(cluster, unique("idemc"), 3)
    token = unique("tokc")
    ops = [{"op": "update", "key": key, "add": {"n": 1}} for key in keys]
    replies = await asyncio.gather(*(api.txn(ops, token) for _ in range(6)))
    txn_ids = set()
    for reply in replies:
        if reply.status == 200:
            txn_ids.add(reply.body["txn_id"])
        else:  # the first submission still running
            assert assert_error(reply, "TransactionInProgress")["retryable"] is True
    assert len(txn_ids) == 1, replies
    final = await committed(api, ops, token)
    assert {final["txn_id"]} == txn_ids
    read = await api.read(keys)
    assert "items" in read.body, read.body
    assert [item["value"] for item in read.body["items"]] == [{"n": 1}] * 3


async def test_the_same_token_with_other_ops_is_422_idempotency_mismatch(
    cluster: LocalNodes, api: ApiClient
) -> None:
    a, b = keys_on_distinct_partitions(cluster, unique("mismatch"), 2)
    token = unique("tokm")
    await committed(api, [{"op": "put", "key": a, "value": 1}], token)
    other = await api.txn([{"op": "put", "key": a, "value": 2}], token)
    assert_error(other, "IdempotencyMismatch")
    more = await api.txn(
        [{"op": "put", "key": a, "value": 1}, {"op": "put", "key": b, "value": 1}], token
    )
    assert_error(more, "IdempotencyMismatch")
    read = await api.read([a, b])
    assert read.body["items"][0]["value"] == 1
    assert read.body["items"][1] == {"key": b, "found": False}


# Regression: a token used to be checked only on its first key's partition, so the same token
# with ops anchored elsewhere committed a second time; tokened transactions now anchor at the
# token's home partition (WriteTxn token_home).
async def test_the_same_token_with_ops_anchored_elsewhere_is_still_422(
    cluster: LocalNodes, api: ApiClient
) -> None:
    first, elsewhere = keys_on_distinct_partitions(cluster, unique("mismatch-far"), 2)
    token = unique("tokf")
    original = await committed(api, [{"op": "put", "key": first, "value": 1}], token)
    other = await api.txn([{"op": "put", "key": elsewhere, "value": 2}], token)
    assert_error(other, "IdempotencyMismatch")
    assert (await api.get_item(elsewhere)).status == 404
    outcome = await api.txn_outcome(token)
    assert outcome.status == 200, outcome
    assert outcome.body["txn_id"] == original["txn_id"]


async def test_a_cancelled_txn_resubmitted_with_its_token_gives_the_same_409(
    cluster: LocalNodes, api: ApiClient
) -> None:
    target, guard = keys_on_distinct_partitions(cluster, unique("idemx"), 2)
    token = unique("tokx")
    ops = [
        {"op": "put", "key": target, "value": "no"},
        {"op": "check", "key": guard, "if": {"exists": True}},
    ]
    first = cancelled(await api.txn(ops, token), ["None", "ConditionFailed"])
    await put_ok(api, guard, "now it exists")  # the condition would hold now
    second = cancelled(await api.txn(ops, token), ["None", "ConditionFailed"])
    assert (second["txn_id"], second["ts"], second["reasons"]) == (
        first["txn_id"],
        first["ts"],
        first["reasons"],
    )
    assert (await api.get_item(target)).status == 404


async def wait_completed(api: ApiClient, token: str) -> dict[str, Any]:
    """The recorded outcome once ``completed`` (bounded polling of observable state)."""
    deadline = time.monotonic() + OUTCOME_WAIT_S
    while True:
        reply = await api.txn_outcome(token)
        assert reply.status == 200, reply
        body: dict[str, Any] = reply.body
        assert body["state"] in {"PREPARING", "STAGING", "COMMITTED", "CANCELLED"}, body
        assert isinstance(body["completed"], bool)
        if body["completed"]:
            return body
        assert time.monotonic() < deadline, f"not completed in {OUTCOME_WAIT_S}s: {body}"
        await asyncio.sleep(0.02)


async def test_txn_outcome_by_token_reports_committed_and_cancelled(
    cluster: LocalNodes, api: ApiClient
) -> None:
    a, b = keys_on_distinct_partitions(cluster, unique("outcome"), 2)
    two = unique("two partitions/with space")
    body = await committed(
        api, [{"op": "put", "key": a, "value": 1}, {"op": "put", "key": b, "value": 2}], two
    )
    outcome = await wait_completed(api, two)
    assert outcome == {
        "token": two,
        "txn_id": body["txn_id"],
        "ts": body["ts"],
        "state": "COMMITTED",
        "completed": True,
    }

    one = unique("one partition")
    body = await committed(api, [{"op": "put", "key": unique("outcome-single"), "value": 1}], one)
    outcome = await wait_completed(api, one)
    assert (outcome["state"], outcome["txn_id"], outcome["ts"]) == (
        "COMMITTED",
        body["txn_id"],
        body["ts"],
    )

    lost = unique("cancelled/one")
    error = cancelled(
        await api.txn(
            [{"op": "put", "key": a, "value": 3}, {"op": "check", "key": b, "if": {"version": 0}}],
            lost,
        ),
        ["None", "ConditionFailed"],
    )
    outcome = await wait_completed(api, lost)
    assert outcome["state"] == "CANCELLED"
    assert (outcome["token"], outcome["txn_id"], outcome["ts"]) == (
        lost,
        error["txn_id"],
        error["ts"],
    )
    assert [reason["code"] for reason in outcome["reasons"]] == ["None", "ConditionFailed"]


async def test_txn_outcome_of_an_unknown_token_is_404(api: ApiClient) -> None:
    assert_error(await api.txn_outcome(unique("never used")), "NotFound")
    assert_error(await api.txn_outcome("x/y"), "NotFound")


# --- POST /v1/read ---------------------------------------------------------------------------


async def test_read_answers_in_request_order_with_found_and_missing_entries(
    cluster: LocalNodes, api: ApiClient
) -> None:
    keys = keys_on_distinct_partitions(cluster, unique("read"), 5)
    await put_ok(api, keys[1], {"one": 1})
    await put_ok(api, keys[3], "three")
    wanted = [keys[4], keys[3], keys[2], keys[1], keys[0]]
    reply = await api.read(wanted)
    assert reply.status == 200, reply
    assert set(reply.body) == {"items"}
    items = reply.body["items"]
    assert [item["key"] for item in items] == wanted
    assert items[0] == {"key": keys[4], "found": False}
    assert_item(items[1], keys[3], "three")
    assert items[2] == {"key": keys[2], "found": False}
    assert_item(items[3], keys[1], {"one": 1})
    assert items[4] == {"key": keys[0], "found": False}
    for item in (items[1], items[3]):
        got = await api.get_item(item["key"])
        assert got.body == item


async def test_read_sees_each_transaction_whole(cluster: LocalNodes, api: ApiClient) -> None:
    keys = keys_on_distinct_partitions(cluster, unique("snapshot"), 3)
    await committed(api, [{"op": "put", "key": key, "value": {"gen": 0}} for key in keys])
    generations = 20
    writer_done = asyncio.Event()

    async def writer() -> None:
        try:
            for gen in range(1, generations + 1):
                await committed(
                    api, [{"op": "put", "key": key, "value": {"gen": gen}} for key in keys]
                )
        finally:
            writer_done.set()

    async def reader() -> list[int]:
        seen: list[int] = []
        while not writer_done.is_set():
            reply = await api.read(keys)
            if reply.status == 409:  # no stable snapshot in 4 rounds: allowed, retryable
                assert assert_error(reply, "TransactionConflict")["retryable"] is True
                continue
            assert reply.status == 200, reply
            items = reply.body["items"]
            gens = {item["value"]["gen"] for item in items}
            assert len(gens) == 1, items  # never part of one transaction and part of another
            assert len({item["ts"] for item in items}) == 1, items
            seen.append(gens.pop())
        return seen

    _, seen = await asyncio.gather(writer(), reader())
    assert seen == sorted(seen)  # a later read never sees an older transaction
    final = await api.read(keys)
    assert [item["value"] for item in final.body["items"]] == [{"gen": generations}] * 3


# --- GET /v1/scan ----------------------------------------------------------------------------


async def test_scan_by_prefix_returns_items_in_code_point_order(api: ApiClient) -> None:
    prefix = unique("scanorder")
    suffixes = ["a", "B", "b", "é", "\u00ff", "\ue000", "\uffff", "\U0001f600", "z", "~", " "]
    for suffix in suffixes:
        await put_ok(api, prefix + suffix, suffix)
    await put_ok(api, prefix[:-1], "outside")  # a shorter key is not in the prefix
    reply = await api.scan({"prefix": prefix})
    assert reply.status == 200, reply
    assert set(reply.body) == {"items", "cursor"}
    items = reply.body["items"]
    assert [item["key"] for item in items] == sorted(prefix + s for s in suffixes)
    for item in items:
        assert_item(item, item["key"], item["key"][len(prefix) :])
    assert reply.body["cursor"] is None


async def test_scan_start_and_end_bound_the_range_and_intersect_with_prefix(
    api: ApiClient,
) -> None:
    prefix = unique("scanrange")
    keys = [f"{prefix}/{letter}" for letter in "abcdefgh"]
    for key in keys:
        await put_ok(api, key, key[-1])

    async def keys_of(query: dict[str, str]) -> list[str]:
        reply = await api.scan(query)
        assert reply.status == 200, reply
        assert reply.body["cursor"] is None
        return [item["key"] for item in reply.body["items"]]

    assert await keys_of({"start": f"{prefix}/c", "end": f"{prefix}/f"}) == keys[2:5]
    assert await keys_of({"start": f"{prefix}/g", "end": f"{prefix}0"}) == keys[6:]
    assert await keys_of({"prefix": prefix, "start": f"{prefix}/e"}) == keys[4:]
    assert await keys_of({"prefix": prefix, "end": f"{prefix}/b"}) == keys[:1]
    assert (
        await keys_of({"prefix": f"{prefix}/", "start": prefix, "end": f"{prefix}/d"}) == (keys[:3])
    )
    assert await keys_of({"start": f"{prefix}/f", "end": f"{prefix}/c"}) == []
    assert await keys_of({"prefix": f"{prefix}/zz"}) == []


async def test_scan_pages_follow_the_cursor_through_every_key_once(api: ApiClient) -> None:
    prefix = unique("scanpages")
    keys = sorted(f"{prefix}/{index:03d}{'é' if index % 3 else ''}" for index in range(47))
    await committed(api, [{"op": "put", "key": key, "value": key} for key in keys[:40]])
    await committed(api, [{"op": "put", "key": key, "value": key} for key in keys[40:]])
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query = {"prefix": prefix, "limit": "10", **({"cursor": cursor} if cursor else {})}
        reply = await api.scan(query)
        assert reply.status == 200, reply
        page = [item["key"] for item in reply.body["items"]]
        assert len(page) <= 10
        pages.append(page)
        cursor = reply.body["cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor
        assert len(pages) < 20, "the cursor never ends"
    collected = [key for page in pages for key in page]
    assert collected == keys  # in order, each key exactly once
    assert len(pages) >= 5
    assert all(len(page) == 10 for page in pages[:4])
    assert await api.scan_all({"prefix": prefix, "limit": 1}) == keys


async def test_scan_default_limit_is_100(api: ApiClient) -> None:
    prefix = unique("scandefault")
    keys = [f"{prefix}/{index:03d}" for index in range(101)]
    await committed(api, [{"op": "put", "key": key, "value": 0} for key in keys[:100]])
    await put_ok(api, keys[100], 0)
    first = await api.scan({"prefix": prefix})
    assert [item["key"] for item in first.body["items"]] == keys[:100]
    assert isinstance(first.body["cursor"], str)
    rest = await api.scan({"prefix": prefix, "cursor": first.body["cursor"]})
    assert [item["key"] for item in rest.body["items"]] == keys[100:]
    assert rest.body["cursor"] is None
    full = await api.scan({"prefix": prefix, "limit": "1000"})
    assert len(full.body["items"]) == 101 and full.body["cursor"] is None


async def test_scan_limit_out_of_range_is_400(api: ApiClient) -> None:
    for limit in ("0", "1001", "-1", "abc", "1.5", ""):
        reply = await api.scan({"prefix": "x", "limit": limit})
        error = assert_error(reply, "ValidationError")
        assert error["field"] == "limit", reply


# --- authentication and roles -----------------------------------------------------------------


async def test_a_missing_or_unknown_token_is_401_with_www_authenticate(
    cluster: LocalNodes, api: ApiClient
) -> None:
    key = unique("auth")
    await put_ok(api, key, "secret")
    wrong = "kvt_" + "A" * 43
    for headers in ({}, {"Authorization": f"Bearer {wrong}"}):
        for method, target, body in (
            ("GET", f"/v1/kv/{key}", None),
            ("PUT", f"/v1/kv/{key}", b'{"value": "stolen"}'),
            ("POST", "/v1/read", f'{{"keys": ["{key}"]}}'.encode()),
            ("GET", "/metrics", None),
            ("GET", "/v1/openapi.json", None),
            ("POST", "/v1/admin/recover", b'{"dry_run": true}'),
        ):
            reply = await api.request(method, target, data=body, token=None, headers=headers)
            assert_error(reply, "Unauthorized")
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", f"Bearer {wrong}x", "kvt_x"):
        reply = await api.get_item(key, token=None, headers={"Authorization": header})
        assert_error(reply, "Unauthorized")
    assert_item((await api.get_item(key)).body, key, "secret")


async def test_a_read_only_token_reads_but_cannot_write(
    cluster: LocalNodes, api: ApiClient
) -> None:
    key, other = keys_on_distinct_partitions(cluster, unique("ro"), 2)
    token = unique("ro-token")
    version = (await put_ok(api, key, "original"))["version"]
    read_only = cluster.tokens["read-only"]
    got = await api.get_item(key, token=read_only)
    assert got.status == 200 and got.body["value"] == "original", got
    read = await api.read([key, other], token=read_only)
    assert read.status == 200, read
    scan = await api.scan({"prefix": key}, token=read_only)
    assert scan.status == 200 and scan.body["items"][0]["key"] == key, scan
    assert_error(await api.txn_outcome(token, token=read_only), "NotFound")

    assert_error(await api.put_item(key, "changed", token=read_only), "Forbidden")
    assert_error(await api.put_item(other, "new", token=read_only), "Forbidden")
    assert_error(await api.delete_item(key, token=read_only), "Forbidden")
    refused = await api.txn([{"op": "put", "key": other, "value": 1}], token, token=read_only)
    assert_error(refused, "Forbidden")

    got = await api.get_item(key)
    assert got.body["value"] == "original" and got.body["version"] == version
    assert (await api.get_item(other)).status == 404
    assert_error(await api.txn_outcome(token), "NotFound")  # the txn never ran


async def test_an_admin_token_may_do_everything(cluster: LocalNodes, api: ApiClient) -> None:
    key = unique("admin")
    admin = cluster.tokens["admin"]
    assert (await api.put_item(key, 1, token=admin)).status == 200
    assert (await api.get_item(key, token=admin)).body["value"] == 1
    assert (await api.txn([{"op": "delete", "key": key}], token=admin)).status == 200
    assert (await api.delete_item(key, token=admin)).body["deleted"] is False
    assert (await api.request("GET", "/metrics", token=admin)).status == 200
    recovered = await api.request(
        "POST", "/v1/admin/recover", json_body={"dry_run": True}, token=admin
    )
    assert recovered.status == 200 and recovered.body["dry_run"] is True, recovered


async def test_health_needs_no_token(api: ApiClient) -> None:
    reply = await api.request("GET", "/v1/health", token=None)
    assert reply.status == 200, reply
    assert reply.body == {
        "status": "ok",
        "role": "coordinator",
        "id": "c1",
        "partitions": 8,
        "epoch": 1,
    }


async def test_metrics_need_a_token_of_any_role_and_are_prometheus_text(
    cluster: LocalNodes, api: ApiClient
) -> None:
    await committed(api, [{"op": "put", "key": unique("metrics"), "value": 1}])
    assert_error(await api.request("GET", "/metrics", token=None), "Unauthorized")
    for role in ("read-only", "read-write", "admin"):
        reply = await api.request("GET", "/metrics", token=cluster.tokens[role])
        assert reply.status == 200, (role, reply)
    reply = await api.request("GET", "/metrics", token=cluster.tokens["metrics"])
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.raw.decode("utf-8")
    assert "# TYPE kvstore_coordinator_txns_total counter" in text
    assert 'kvstore_coordinator_txns_total{outcome="committed"' in text


async def test_a_metrics_token_may_scrape_and_call_nothing_else(
    cluster: LocalNodes, api: ApiClient
) -> None:
    key = unique("metrics-only")
    await put_ok(api, key, "private")
    scraper = cluster.tokens["metrics"]
    assert (await api.request("GET", "/metrics", token=scraper)).status == 200
    for method, target, body in (
        ("GET", f"/v1/kv/{key}", None),
        ("POST", "/v1/read", f'{{"keys": ["{key}"]}}'.encode()),
        ("GET", f"/v1/scan?prefix={key}", None),
        ("GET", "/v1/openapi.json", None),
        ("PUT", f"/v1/kv/{key}", b'{"value": "changed"}'),
        ("POST", "/v1/admin/recover", b'{"dry_run": true}'),
    ):
        reply = await api.request(method, target, data=body, token=scraper)
        error = assert_error(reply, "Forbidden")
        assert "private" not in reply.raw.decode(), reply
        assert "metrics" in error["message"], reply
    assert_item((await api.get_item(key)).body, key, "private")


async def test_the_openapi_document_is_served_byte_for_byte(
    cluster: LocalNodes, api: ApiClient
) -> None:
    if not OPENAPI_FILE.exists():
        pytest.skip(f"{OPENAPI_FILE} does not exist yet")
    reply = await api.request("GET", "/v1/openapi.json", token=cluster.tokens["read-only"])
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.raw == OPENAPI_FILE.read_bytes()
    assert reply.body["openapi"].startswith("3.1")


# --- the error envelope ----------------------------------------------------------------------


async def test_every_error_has_the_envelope_and_the_catalogue_status(
    cluster: LocalNodes, api: ApiClient
) -> None:
    key = unique("errors")
    version = (await put_ok(api, key, 1))["version"]
    token, other = unique("tok-errors"), unique("errors-other")
    await committed(api, [{"op": "put", "key": other, "value": 1}], token)
    cases = [
        ("ValidationError", await api.request("PUT", f"/v1/kv/{key}", data=b"{")),
        ("Unauthorized", await api.get_item(key, token=None)),
        ("Forbidden", await api.put_item(key, 2, token=cluster.tokens["read-only"])),
        ("NotFound", await api.get_item(unique("errors-absent"))),
        ("NotFound", await api.request("GET", "/v1/nothing-here")),
        ("ConditionFailed", await api.put_item(key, 2, {"version": version + 1})),
        (
            "TransactionCanceled",
            await api.txn([{"op": "check", "key": key, "if": {"version": version + 1}}]),
        ),
        ("IdempotencyMismatch", await api.txn([{"op": "delete", "key": other}], token)),
    ]
    for code, reply in cases:
        assert_error(reply, code)
    wrong_method = await api.request("POST", f"/v1/kv/{key}", data=b"{}")
    assert_error(wrong_method, "ValidationError", status=405)
    assert set(wrong_method.headers["Allow"].replace(" ", "").split(",")) == {
        "GET",
        "PUT",
        "DELETE",
    }
    got = await api.get_item(key)
    assert got.body["value"] == 1 and got.body["version"] == version
