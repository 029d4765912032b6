"""Snapshot reads (``POST /v1/read`` with ``at``, ``kv.read(keys, at=...)``) against a real
cluster: 3 storage nodes, 8 partitions and one coordinator, all separate processes, through
every door (the SDK's native, gateway and direct modes, and the HTTP API itself).

Goal: docs/api.md's promise for a read at a timestamp. Method: one cluster for the module; each
test under its own key prefix.

* A read as of an earlier commit's ``ts`` sees that commit's values on every partition while a
  plain read sees the latest; a read at the latest commit's ``ts`` sees the latest.
* ``at`` a minute old is ``SnapshotTooOld`` (409, not retried); ``at`` after the clock is a
  ``ValidationError`` (400); a malformed one is a 400 naming ``at``.
* A transaction prepared on the key above ``at`` (straight on the node, as a coordinator would,
  and left undecided) does not make the read at ``at`` fail or wait for it, while a plain read
  of the key conflicts with it. The read raised the partition's read floor to ``at``: a
  prepare at ``at`` on another key of that partition is refused ``TIMESTAMP_TOO_OLD``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from support.api import (
    api_client,
    api_cluster,
    assert_error,
    key_on_partition_of,
    keys_on_distinct_partitions,
    unique,
)
from support.cluster import LocalNodes
from support.partition import put

import kvstore
from kvstore import Put, RetryPolicy
from kvstore.client import Client
from kvstore.errors import SnapshotTooOld, TransactionConflict, ValidationError
from kvstore.limits import INTENT_WAIT_MS, SNAPSHOT_WINDOW_MS
from kvstore.messages import (
    DecideRequest,
    LedgerRecord,
    LedgerReply,
    PrepareReply,
    PrepareRequest,
    ReasonCode,
    TxnState,
)
from kvstore.timestamps import new_txn_id, system_clock_us
from kvstore.types import PartitionId, Timestamp, timestamp_from_text

MODES = ("native", "gateway", "direct")
MINUTE_US = 60_000_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    with api_cluster(tmp_path_factory.mktemp("snapshot-reads")) as nodes:
        yield nodes


def connect(cluster: LocalNodes, mode: str, retry: RetryPolicy | None = None) -> Client:
    if mode in ("direct", "native"):
        return kvstore.connect(cluster=cluster.config_path, mode=mode, retry=retry)
    return kvstore.connect(cluster.api("c1"), cluster.tokens["admin"], retry=retry)


@pytest_asyncio.fixture(params=MODES)
async def kv(cluster: LocalNodes, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    async with connect(cluster, str(request.param)) as client:
        yield client


def ts_of(text: str) -> Timestamp:
    parsed = timestamp_from_text(text)
    assert parsed is not None, text
    return parsed


def values(items: list[kvstore.Item | None]) -> list[object]:
    return [item.value if item is not None else None for item in items]


@pytest.mark.asyncio
async def test_a_read_as_of_a_commit_sees_it_on_every_partition_a_plain_read_the_latest(
    kv: Client, cluster: LocalNodes
) -> None:
    a, b, c = keys_on_distinct_partitions(cluster, unique("snap"), 3)
    first = await kv.transact([Put(a, "v1"), Put(b, "v1")])
    second = await kv.transact([Put(a, "v2"), Put(b, "v2"), Put(c, "new")])
    as_of_first = await kv.read([a, b, c], at=first.ts)
    assert values(as_of_first) == ["v1", "v1", None]  # c did not exist yet
    assert [item.ts for item in as_of_first if item is not None] == [first.ts, first.ts]
    assert values(await kv.read([a, b, c])) == ["v2", "v2", "new"]
    assert values(await kv.read([c, a], at=ts_of(second.ts))) == ["new", "v2"]  # a Timestamp
    deleted = await kv.delete(a)
    assert deleted.ts is not None
    assert values(await kv.read([a, b], at=second.ts)) == ["v2", "v2"]
    assert values(await kv.read([a, b], at=deleted.ts)) == [None, "v2"]


@pytest.mark.asyncio
async def test_an_at_older_than_the_window_or_after_the_clock_is_refused(kv: Client) -> None:
    key = unique("snap-window")
    written = ts_of((await kv.put(key, 1)).ts)
    minute_ago = Timestamp(written.physical_us - MINUTE_US, 0, written.origin)
    started = time.monotonic()
    with pytest.raises(SnapshotTooOld, match=f"{SNAPSHOT_WINDOW_MS} ms") as too_old:
        await kv.read([key], at=minute_ago)
    assert not too_old.value.retryable
    assert time.monotonic() - started < 5  # answered at once: never retried (a guard, not a bound)
    in_an_hour = Timestamp(written.physical_us + 60 * MINUTE_US, 0, written.origin)
    with pytest.raises(ValidationError, match="in the future"):
        await kv.read([key], at=in_an_hour)
    with pytest.raises(ValidationError, match="at: must be a timestamp"):
        await kv.read([key], at="an hour ago")


@pytest.mark.asyncio
async def test_a_transaction_pending_above_at_does_not_fail_a_read_at(
    kv: Client, cluster: LocalNodes
) -> None:
    key = unique("snap-intent")
    written = await kv.put(key, "v1")
    at = ts_of(written.ts)
    pid = cluster.config.cluster_map.partitions.partition_of(key)
    node = cluster.client(cluster.owner(pid))
    txn = new_txn_id()
    above = Timestamp(max(system_clock_us(), at.physical_us + 1), 0, 77)
    ledger = LedgerRecord(txn_id=txn, ts=above, state=TxnState.STAGING, participants=(pid,))
    prepare = PrepareRequest(
        partition=pid, txn_id=txn, ts=above, ops=(put(key, "v2"),), anchor=pid, ledger=ledger
    )
    try:
        prepared = await node.request(prepare)
        assert isinstance(prepared, PrepareReply) and prepared.accepted, prepared
        started = time.monotonic()
        assert values(await kv.read([key], at=written.ts)) == ["v1"]
        # Not even the node's wait for intents: the intent is above ``at`` (a loose guard).
        assert time.monotonic() - started < 20 * INTENT_WAIT_MS / 1000
        # The read raised the partition's floor to ``at``: a write at ``at`` is refused there.
        other = key_on_partition_of(cluster, unique("snap-floor"), key)
        late = PrepareRequest(
            partition=pid, txn_id=new_txn_id(), ts=at, ops=(put(other, 1),), anchor=pid
        )
        refused = await node.request(late)
        assert isinstance(refused, PrepareReply) and not refused.accepted
        assert [o.code for o in refused.outcomes] == [ReasonCode.TIMESTAMP_TOO_OLD]
    finally:
        decided = await node.request(
            DecideRequest(partition=pid, txn_id=txn, decision=TxnState.CANCELLED)
        )
        await node.close()
    assert isinstance(decided, LedgerReply) and decided.record is not None
    assert decided.record.state is TxnState.CANCELLED
    assert values(await kv.read([key])) == ["v1"]


@pytest.mark.asyncio
async def test_the_http_api_reads_at_answers_at_and_refuses_what_docs_api_md_says(
    cluster: LocalNodes,
) -> None:
    key = unique("snap-http")
    async with api_client(cluster.api("c1"), cluster.tokens["read-write"]) as api:
        first = await api.put_item(key, {"n": 1})
        assert first.status == 200, first
        at = first.body["ts"]
        assert (await api.put_item(key, {"n": 2})).status == 200
        body = {"keys": [key, key + "/none"], "at": at}
        then = await api.request("POST", "/v1/read", json_body=body)
        assert then.status == 200, then
        assert then.body == {
            "items": [
                {"key": key, "value": {"n": 1}, "version": first.body["version"], "ts": at},
                {"key": key + "/none", "found": False},
            ],
            "at": at,
        }
        latest = await api.read([key])
        assert latest.status == 200 and set(latest.body) == {"items"}, latest
        assert latest.body["items"][0]["value"] == {"n": 2}
        old = ts_of(at)
        minute_ago = str(Timestamp(old.physical_us - MINUTE_US, old.logical, old.origin))
        refused = await api.request("POST", "/v1/read", json_body={"keys": [key], "at": minute_ago})
        error = assert_error(refused, "SnapshotTooOld", status=409)
        assert (error["at"], error["window_ms"]) == (minute_ago, SNAPSHOT_WINDOW_MS)
        future = str(Timestamp(old.physical_us + 60 * MINUTE_US, 0, old.origin))
        refused = await api.request("POST", "/v1/read", json_body={"keys": [key], "at": future})
        assert assert_error(refused, "ValidationError")["field"] == "at"


@pytest.mark.asyncio
async def test_a_plain_read_conflicts_with_the_pending_transaction_a_read_at_ignores(
    cluster: LocalNodes,
) -> None:
    """The contrast, once (gateway mode): the same intent makes a plain read give up."""
    key = unique("snap-contrast")
    async with connect(cluster, "gateway", RetryPolicy(attempts_max=1)) as kv:
        written = await kv.put(key, "v1")
        at = ts_of(written.ts)
        pid = PartitionId(cluster.config.cluster_map.partitions.partition_of(key))
        node = cluster.client(cluster.owner(pid))
        txn = new_txn_id()
        above = Timestamp(max(system_clock_us(), at.physical_us + 1), 0, 78)
        ledger = LedgerRecord(txn_id=txn, ts=above, state=TxnState.STAGING, participants=(pid,))
        try:
            prepared = await node.request(
                PrepareRequest(
                    partition=pid,
                    txn_id=txn,
                    ts=above,
                    ops=(put(key, "v2"),),
                    anchor=pid,
                    ledger=ledger,
                )
            )
            assert isinstance(prepared, PrepareReply) and prepared.accepted, prepared
            with pytest.raises(TransactionConflict):
                await kv.read([key])
            assert values(await kv.read([key], at=at)) == ["v1"]
        finally:
            await node.request(
                DecideRequest(partition=pid, txn_id=txn, decision=TxnState.CANCELLED)
            )
            await node.close()
