"""The SDK (``kvstore.client``) against a real cluster: 3 storage nodes, 8 partitions and one
coordinator, all separate processes, in every mode.

Goal: every client method behaves as docs/sdk.md says through all three doors, native mode
(msgpack RPC to the node holding the data, which coordinates), gateway mode (HTTP to the
coordinator) and direct mode (the coordinator library embedded in the client), with the same
answers and the same typed errors. Method: one cluster for the module (processes take about a
second each to start), killed in teardown; the ``kv`` fixture is parametrized over the modes;
every test works under its own unique key prefix. The contention test is the point of
interactive transactions: 16 concurrent tasks each doing 10 read-increment-write transactions on
one counter through ``kv.run`` must end at exactly 160 (no lost update).

Connection setup (environment, cluster directory, nothing configured, a wrong token, an
unreachable URL) is tested in gateway mode, the mode it applies to.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from support.api import api_cluster, keys_on_distinct_partitions, unique
from support.cluster import LocalNodes, refusing_port

import kvstore
from kvstore.client import Client, Transaction, reasons
from kvstore.client.direct import DirectBackend
from kvstore.client.http import HttpBackend
from kvstore.errors import (
    ConditionFailed,
    Forbidden,
    IdempotencyMismatch,
    TransactionCanceled,
    TransactionConflict,
    Unauthorized,
    Unavailable,
    ValidationError,
)

MODES = ("native", "gateway", "direct")
UNREACHABLE_TIMEOUT_S = 2.0
SILENT_TIMEOUT_S = 1.0
HANG_GUARD_S = 60.0  # only against a call that never ends: never a measurement


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    with api_cluster(tmp_path_factory.mktemp("sdk")) as nodes:
        yield nodes


def connect(cluster: LocalNodes, mode: str, timeout_s: float = 10.0) -> Client:
    if mode in ("direct", "native"):
        return kvstore.connect(cluster=cluster.config_path, mode=mode, timeout_s=timeout_s)
    return kvstore.connect(cluster.api("c1"), cluster.tokens["admin"], timeout_s=timeout_s)


@pytest_asyncio.fixture(params=MODES)
async def kv(cluster: LocalNodes, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    async with connect(cluster, str(request.param)) as client:
        yield client


# --- singletons --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_put_get_delete_round_trip_with_growing_versions(kv: Client) -> None:
    key = unique("sdk-rt")
    assert await kv.get(key) is None  # absent is None, not NotFound
    first = await kv.put(key, {"n": 1, "tags": ["a"]})
    item = await kv.get(key)
    assert item is not None
    assert (item.key, item.value, item.version, item.ts) == (
        key,
        {"n": 1, "tags": ["a"]},
        first.version,
        first.ts,
    )
    second = await kv.put(key, "two")
    assert second.version > first.version
    deleted = await kv.delete(key)
    assert deleted.deleted is True
    assert await kv.get(key) is None
    again = await kv.delete(key)
    assert again.deleted is False


@pytest.mark.asyncio
async def test_a_failed_condition_on_put_or_delete_raises_condition_failed(kv: Client) -> None:
    key = unique("sdk-cond")
    written = await kv.put(key, 1, if_=kvstore.absent())
    with pytest.raises(ConditionFailed):
        await kv.put(key, 2, if_=kvstore.absent())
    with pytest.raises(ConditionFailed):
        await kv.delete(key, if_=kvstore.version_is(written.version + 5))
    await kv.put(key, 3, if_=kvstore.all_of(kvstore.exists(), kvstore.eq("", 1)))
    item = await kv.get(key)
    assert item is not None and item.value == 3


@pytest.mark.asyncio
async def test_update_applies_its_actions_as_a_one_op_transaction(kv: Client) -> None:
    key = unique("sdk-upd")
    await kv.put(key, {"n": 1, "log": [], "gone": True})
    committed = await kv.update(
        key, set={"name": "x"}, remove=["gone"], add={"n": 2}, append={"log": ["a", "b"]}
    )
    item = await kv.get(key)
    assert item is not None
    assert item.value == {"n": 3, "log": ["a", "b"], "name": "x"}
    assert item.ts == committed.ts
    with pytest.raises(TransactionCanceled) as raised:
        await kv.update(key, add={"n": 1}, if_=kvstore.lt("n", 0))
    assert [r["code"] for r in reasons(raised.value)] == ["ConditionFailed"]


# --- transactions ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_transact_across_partitions_and_a_cancellation_with_reasons(
    kv: Client, cluster: LocalNodes
) -> None:
    a, b, c = keys_on_distinct_partitions(cluster, unique("sdk-txn"), 3)
    committed = await kv.transact(
        [kvstore.Put(a, 1), kvstore.Put(b, 2), kvstore.Update(c, add={"": 5})]
    )
    assert [item.value if item else None for item in await kv.read([a, b, c])] == [1, 2, 5]
    assert all(item and item.ts == committed.ts for item in await kv.read([a, b, c]))
    with pytest.raises(TransactionCanceled) as raised:
        await kv.transact(
            [
                kvstore.Put(a, 10),
                kvstore.Check(b, kvstore.eq("", 99)),
                {"op": "delete", "key": c, "if": {"exists": False}},
            ]
        )
    error = raised.value
    assert [r["code"] for r in reasons(error)] == ["None", "ConditionFailed", "ConditionFailed"]
    assert error.retryable is False
    assert isinstance(error.details["txn_id"], str)
    assert [item.value if item else None for item in await kv.read([a, b, c])] == [1, 2, 5]


@pytest.mark.asyncio
async def test_a_token_applies_once_and_its_outcome_can_be_looked_up(kv: Client) -> None:
    key, token = unique("sdk-tok"), unique("tok")
    first = await kv.transact([kvstore.Update(key, add={"": 1})], token=token)
    again = await kv.transact([kvstore.Update(key, add={"": 1})], token=token)
    assert again == first
    item = await kv.get(key)
    assert item is not None and item.value == 1
    outcome = await kv.txn_outcome(token)
    assert outcome is not None
    assert (outcome["txn_id"], outcome["state"]) == (first.txn_id, "COMMITTED")
    assert await kv.txn_outcome(unique("never")) is None
    with pytest.raises(IdempotencyMismatch):
        await kv.transact([kvstore.Update(key, add={"": 2})], token=token)


@pytest.mark.asyncio
async def test_read_answers_in_request_order_with_none_for_absent_keys(kv: Client) -> None:
    prefix = unique("sdk-read")
    await kv.transact([kvstore.Put(f"{prefix}/a", "A"), kvstore.Put(f"{prefix}/c", "C")])
    items = await kv.read([f"{prefix}/c", f"{prefix}/b", f"{prefix}/a"])
    assert [item.value if item else None for item in items] == ["C", None, "A"]


@pytest.mark.asyncio
async def test_scan_follows_cursors_in_key_order_within_the_range(kv: Client) -> None:
    prefix = unique("sdk-scan")
    keys = [f"{prefix}/{index:02d}" for index in range(7)]
    await kv.transact([kvstore.Put(key, index) for index, key in enumerate(keys)])
    assert [item.key async for item in kv.scan(prefix=prefix, page_size=2)] == keys
    bounded = kv.scan(prefix=prefix, start=keys[2], end=keys[5], page_size=1)
    assert [item.value async for item in bounded] == [2, 3, 4]


@pytest.mark.asyncio
async def test_bad_arguments_raise_validation_error_before_anything_is_sent(
    cluster: LocalNodes,
) -> None:
    # A client of a port nobody listens on: a ValidationError proves nothing was sent.
    with refusing_port() as port:
        async with kvstore.connect(f"http://127.0.0.1:{port}", "token") as kv:
            with pytest.raises(ValidationError):
                await kv.put("", 1)
            with pytest.raises(ValidationError):
                await kv.put("k", 1, if_={"version": "seven"})
            with pytest.raises(ValidationError):
                await kv.transact([kvstore.Put("k", 1), kvstore.Delete("k")])  # one op per key
            with pytest.raises(ValidationError):
                await kv.read(["a", "a"])
            with pytest.raises(ValidationError):
                kv.scan(page_size=0)
            with pytest.raises(ValidationError):
                await kv.transact([kvstore.Put("k", 1)], token="")


async def one_partition_commits(kv: Client, cluster: LocalNodes) -> float:
    """Committed transactions with one participant partition, from the metrics of whatever
    coordinates: the embedded library (direct), the coordinator (gateway), the nodes (native)."""
    if isinstance(kv.backend, DirectBackend):
        texts = [kv.backend.coordinator.metrics.render().decode()]
    else:
        coordinating = ["c1"] if isinstance(kv.backend, HttpBackend) else list(cluster.config.nodes)
        headers = {"Authorization": f"Bearer {cluster.tokens['admin']}"}
        texts = []
        async with aiohttp.ClientSession(headers=headers) as session:
            for process in coordinating:
                async with session.get(cluster.url(process, "/metrics")) as reply:
                    texts.append(await reply.text())
    wanted = 'kvstore_coordinator_txns_total{outcome="committed",participants="1"}'
    return sum(
        float(line.split()[-1])
        for text in texts
        for line in text.splitlines()
        if line.startswith(wanted)
    )


@pytest.mark.asyncio
async def test_drawn_tokens_keep_one_partition_transactions_to_one_participant(
    kv: Client, cluster: LocalNodes
) -> None:
    prefix = unique("sdk-home")
    before = await one_partition_commits(kv, cluster)
    for index in range(10):
        await kv.update(f"{prefix}/{index}", add={"n": 1})  # the token's home is the key's
    assert await one_partition_commits(kv, cluster) - before == 10


# --- interactive transactions --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_interactive_transaction_commits_what_it_read_and_wrote(
    kv: Client, cluster: LocalNodes
) -> None:
    a, b = keys_on_distinct_partitions(cluster, unique("sdk-itx"), 2)
    await kv.put(a, 10)
    async with kv.transaction() as tx:
        item = await tx.get(a)
        assert item is not None
        tx.put(b, item.value)
        tx.update(a, add={"": -10})
        mine = await tx.get(a)
        assert mine is not None and mine.value == 0 and not mine.committed
    assert tx.committed is not None
    assert [item.value if item else None for item in await kv.read([a, b])] == [0, 10]


@pytest.mark.asyncio
async def test_a_changed_read_makes_the_commit_a_conflict_and_an_error_discards(
    kv: Client,
) -> None:
    key, other = unique("sdk-conf"), unique("sdk-conf-other")
    await kv.put(key, 1)
    with pytest.raises(TransactionConflict) as raised:
        async with kv.transaction() as tx:
            await tx.get(key)
            await kv.put(key, 2)  # someone else writes what the transaction read
            tx.put(other, "x")
    assert raised.value.retryable is True
    assert raised.value.details["stale_keys"] == [key]
    assert await kv.get(other) is None
    with pytest.raises(RuntimeError):
        async with kv.transaction() as tx:
            tx.put(other, "y")
            raise RuntimeError("discard")
    assert await kv.get(other) is None


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_concurrent_increments_through_run_lose_no_update(
    cluster: LocalNodes, mode: str
) -> None:
    counter = unique("sdk-counter")
    tasks, increments = 16, 10
    async with connect(cluster, mode, timeout_s=30.0) as kv:
        await kv.put(counter, 0)

        async def increment(tx: Transaction) -> int:
            item = await tx.get(counter)
            assert item is not None
            tx.put(counter, int(str(item.value)) + 1)
            return int(str(item.value)) + 1

        async def worker() -> list[int]:
            return [await kv.run(increment) for _ in range(increments)]

        seen = await asyncio.gather(*(worker() for _ in range(tasks)))
        item = await kv.get(counter)
    assert item is not None and item.value == tasks * increments
    assert sorted(value for values in seen for value in values) == list(range(1, 161))


# --- the sync client and connecting --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_connect_sync_gives_the_same_calls_blocking(cluster: LocalNodes, mode: str) -> None:
    key = unique("sdk-sync")
    if mode in ("direct", "native"):
        client = kvstore.connect_sync(cluster=cluster.config_path, mode=mode)
    else:
        client = kvstore.connect_sync(cluster.api("c1"), cluster.tokens["admin"])
    with client as kv:
        kv.put(key, 1)
        with kv.transaction() as tx:
            item = tx.get(key)
            assert item is not None
            tx.put(key, int(str(item.value)) + 1)
        assert kv.run(lambda tx: tx.get(key)) is not None
        assert [item.value for item in kv.scan(prefix=key)] == [2]
        with pytest.raises(ConditionFailed):
            kv.put(key, 3, if_=kvstore.absent())


@pytest.mark.asyncio
async def test_kv_url_and_kv_token_from_the_environment(
    cluster: LocalNodes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KV_URL", cluster.api("c1"))
    monkeypatch.setenv("KV_TOKEN", cluster.tokens["read-write"])
    monkeypatch.setenv("KVSTORE_DIR", str(tmp_path))  # empty: must not be needed
    async with kvstore.connect() as kv:
        key = unique("sdk-env")
        await kv.put(key, "env")
        item = await kv.get(key)
        assert item is not None and item.value == "env"


@pytest.mark.asyncio
async def test_the_cluster_directory_gives_the_coordinator_and_admin_token(
    cluster: LocalNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KV_URL", raising=False)
    monkeypatch.delenv("KV_TOKEN", raising=False)
    token_file = cluster.root / "admin.token"
    token_file.write_text(cluster.tokens["admin"] + "\n")
    token_file.chmod(0o600)
    monkeypatch.setenv("KVSTORE_DIR", str(cluster.root))
    async with kvstore.connect() as kv:
        assert await kv.get(unique("sdk-dir")) is None


def test_nothing_configured_is_a_clear_validation_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KV_URL", raising=False)
    monkeypatch.delenv("KV_TOKEN", raising=False)
    monkeypatch.delenv("KVSTORE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./.kvstore here
    with pytest.raises(ValidationError, match="set KV_URL and KV_TOKEN, or run `kvctl cluster up`"):
        kvstore.connect()
    with pytest.raises(ValidationError, match="kvctl cluster up"):
        kvstore.connect(direct=True)


@pytest.mark.asyncio
async def test_a_wrong_token_is_unauthorized_and_a_weak_role_forbidden(
    cluster: LocalNodes,
) -> None:
    async with kvstore.connect(cluster.api("c1"), "kvt_wrong") as kv:
        with pytest.raises(Unauthorized):
            await kv.get("anything")
    async with kvstore.connect(cluster.api("c1"), cluster.tokens["read-only"]) as kv:
        assert await kv.get(unique("sdk-ro")) is None
        with pytest.raises(Forbidden):
            await kv.put(unique("sdk-ro"), 1)


@pytest.mark.asyncio
async def test_an_unreachable_url_is_unavailable_quickly(cluster: LocalNodes) -> None:
    # How long the retries take is the retry policy's business (tests/unit/test_sdk_retry.py,
    # on a fake clock); here: the refusal is Unavailable, nothing was sent, and the call ends
    # (HANG_GUARD_S only catches a call that ignores its deadline, it is no measurement).
    del cluster
    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}"
        async with (
            asyncio.timeout(HANG_GUARD_S),
            kvstore.connect(url, "token", timeout_s=UNREACHABLE_TIMEOUT_S) as kv,
        ):
            with pytest.raises(Unavailable) as raised:
                await kv.get("k")
    assert raised.value.details["sent"] is False


@pytest.mark.asyncio
async def test_a_server_that_never_answers_is_unavailable_within_the_deadline() -> None:
    # A socket that accepts connections and never answers: the request is sent, no answer comes.
    # The client waits for its deadline (a lower bound: a loaded machine only makes it later) and
    # then gives up (HANG_GUARD_S only catches a call that never ends).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        async with (
            asyncio.timeout(HANG_GUARD_S),
            kvstore.connect(url, "token", timeout_s=SILENT_TIMEOUT_S) as kv,
        ):
            with pytest.raises(Unavailable) as raised:
                await kv.get("k")
        elapsed_s = time.monotonic() - started
    assert raised.value.details["sent"] is True
    assert elapsed_s >= SILENT_TIMEOUT_S * 0.5, "gave up long before its deadline"
