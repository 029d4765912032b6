"""The admin role's call, ``POST /v1/admin/recover``, against real processes.

A cluster of 2 storage nodes (2 partitions) and coordinator ``c1`` whose nodes wait ten minutes
before they finish a transaction on their own (``intent_stale_ms``), so what happens to a stuck
transaction here is what the API call did, not the nodes' background work. The transaction is
made stuck over the internal RPC: prepared on both partitions, decided COMMITTED at its anchor,
and never delivered (the coordinator that would have delivered it "died"). Tests share the
cluster and look only at their own transactions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from support.api import ApiClient, api_client, assert_error
from support.cluster import LocalNodes

from kvstore.types import PartitionId

pytestmark = pytest.mark.asyncio

P0, P1 = PartitionId(0), PartitionId(1)
STALE_MS = 600_000  # the nodes' own recovery never starts within a test
RECOVER = "/v1/admin/recover"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    nodes = LocalNodes(
        tmp_path_factory.mktemp("api-admin"),
        ("n1", "n2"),
        partitions=2,
        timing={"intent_stale_ms": STALE_MS, "ledger_decision_deadline_ms": 2 * STALE_MS},
        coordinator_ids=("c1",),
    )
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


@pytest_asyncio.fixture
async def api(cluster: LocalNodes) -> AsyncIterator[ApiClient]:
    """A client with the admin token."""
    async with api_client(cluster.api("c1"), cluster.tokens["admin"]) as client:
        yield client


def key_on(cluster: LocalNodes, pid: PartitionId, prefix: str) -> str:
    partition_of = cluster.config.cluster_map.partitions.partition_of
    return next(f"{prefix}/{i}" for i in range(10_000) if partition_of(f"{prefix}/{i}") == pid)


async def recover(api: ApiClient, body: dict[str, Any] | None, **kwargs: Any) -> Any:
    reply = await api.request(
        "POST", RECOVER, **({} if body is None else {"json_body": body}), **kwargs
    )
    assert reply.status == 200, reply
    assert set(reply.body) == {"older_than_ms", "dry_run", "transactions"}, reply
    return reply.body


async def test_only_an_admin_token_may_recover_and_a_refusal_changes_nothing(
    cluster: LocalNodes, api: ApiClient
) -> None:
    key0, key1 = key_on(cluster, P0, "refused"), key_on(cluster, P1, "refused")
    txn = await cluster.stuck_transaction(key0, key1, decided=True)
    assert_error(await api.request("POST", RECOVER, json_body={}, token=None), "Unauthorized")
    for role in ("read-write", "read-only", "metrics"):
        reply = await api.request(
            "POST", RECOVER, json_body={"older_than_ms": 0}, token=cluster.tokens[role]
        )
        error = assert_error(reply, "Forbidden")
        assert role in error["message"] and "admin" in error["message"], reply
    listed = await recover(api, {"older_than_ms": 0, "dry_run": True})
    [stuck] = [t for t in listed["transactions"] if t["txn_id"] == txn]
    assert stuck["driven"] is None  # still stuck: none of the refused calls drove it


async def test_recover_lists_then_delivers_a_decided_transaction(
    cluster: LocalNodes, api: ApiClient
) -> None:
    key0, key1 = key_on(cluster, P0, "stuck"), key_on(cluster, P1, "stuck")
    txn = await cluster.stuck_transaction(key0, key1, decided=True)

    # No body: the cluster's stale-intent time, which this young transaction is below.
    default = await recover(api, None)
    assert default == {"older_than_ms": STALE_MS, "dry_run": False, "transactions": []}

    listed = await recover(api, {"older_than_ms": 0, "dry_run": True})
    assert listed["dry_run"] is True and listed["older_than_ms"] == 0
    [stuck] = [t for t in listed["transactions"] if t["txn_id"] == txn]
    assert (stuck["anchor"], stuck["state"], stuck["driven"]) == (0, "COMMITTED", None)
    intents = [(i["partition"], i["key"]) for i in stuck["intents"]]
    assert (1, key1) in intents and set(intents) <= {(0, key0), (1, key1)}, stuck
    assert isinstance(stuck["age_ms"], int) and stuck["age_ms"] >= 0
    again = await recover(api, {"older_than_ms": 0, "dry_run": True})
    assert txn in [t["txn_id"] for t in again["transactions"]]  # a dry run drove nothing

    driven = await recover(api, {"older_than_ms": 0})
    [done] = [t for t in driven["transactions"] if t["txn_id"] == txn]
    assert done["driven"] == {"state": "COMMITTED", "completed": True, "error": None}

    for key in (key0, key1):
        got = await api.get_item(key, token=cluster.tokens["read-only"])
        assert got.status == 200 and got.body["value"] == "v", got
    after = await recover(api, {"older_than_ms": 0, "dry_run": True})
    assert txn not in [t["txn_id"] for t in after["transactions"]]


async def test_recover_refuses_a_bad_body(api: ApiClient) -> None:
    for body, field in (
        ({"older_than_ms": -1}, "older_than_ms"),
        ({"older_than_ms": "5"}, "older_than_ms"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"force": True}, "force"),
    ):
        reply = await api.request("POST", RECOVER, json_body=body)
        assert assert_error(reply, "ValidationError")["field"] == field, reply
    assert_error(await api.request("POST", RECOVER, data=b"[1]"), "ValidationError")
