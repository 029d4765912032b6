"""A running node against bad input: typed errors, refused connections, and a frame fuzzer.

Each bad request must get a typed error reply (or a refused connection), be counted in
``/metrics``, and leave the node serving everyone else with its data intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgpack
import pytest
import pytest_asyncio
from support.cluster import LocalNodes, NodeClient
from support.partition import check, put

from kvstore import limits
from kvstore.codec import encode_request
from kvstore.errors import ClockSkew, Unauthorized, ValidationError, WrongOwner
from kvstore.messages import (
    ExecuteReply,
    ExecuteRequest,
    GetReply,
    GetRequest,
    ReasonCode,
    WriteReply,
    WriteRequest,
)
from kvstore.rpc import RpcClient
from kvstore.timestamps import new_txn_id, system_clock_us
from kvstore.types import PartitionId, Timestamp

pytestmark = pytest.mark.asyncio

FUZZ_FRAMES = 1_500
SEEDED_KEYS = 40
WAIT_S = 30.0  # a guard on one request or reply, not a measurement


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    # n1 owns partitions 0 and 2; n2 (never started) owns 1 and 3.
    nodes = LocalNodes(tmp_path_factory.mktemp("inputs"), ("n1", "n2"), partitions=4)
    try:
        nodes.start_all("n1")
        yield nodes
    finally:
        nodes.close()


@pytest_asyncio.fixture
async def client(node: LocalNodes) -> AsyncIterator[NodeClient]:
    c = node.client("n1")
    try:
        yield c
    finally:
        await c.close()


def owned_key(node: LocalNodes, prefix: str, i: int) -> tuple[PartitionId, str]:
    pmap = node.config.cluster_map.partitions
    n = 0
    while True:
        key = f"{prefix}-{i}-{n}"
        pid = pmap.partition_of(key)
        if node.owner(pid) == "n1":
            return pid, key
        n += 1


async def fetch(
    node: LocalNodes, path: str, authorization: str | None = None
) -> tuple[int, str, str | None]:
    """Status, body and ``WWW-Authenticate`` of ``GET path`` on n1."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            node.url("n1", path), headers=headers, timeout=aiohttp.ClientTimeout(total=WAIT_S)
        ) as reply,
    ):
        return reply.status, await reply.text(), reply.headers.get("WWW-Authenticate")


async def metrics(node: LocalNodes) -> str:
    status, text, _ = await fetch(node, "/metrics", f"Bearer {node.tokens['metrics']}")
    assert status == 200, text
    return text


def metric_value(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_health_needs_no_credential_and_metrics_need_an_api_token(node: LocalNodes) -> None:
    status, body, _ = await fetch(node, "/health")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok" and health["node"] == "n1" and health["partitions"] == [0, 2]
    unknown = "kvt_" + "A" * 43
    for authorization in (None, f"Bearer {unknown}", f"Bearer {node.secret}", "Basic eDp5"):
        status, body, challenge = await fetch(node, "/metrics", authorization)
        assert status == 401, (authorization, body)
        assert challenge == 'Bearer realm="kvstore"'
        error = json.loads(body)["error"]
        assert error["code"] == "Unauthorized" and "kvstore_node" not in body
        assert unknown not in body and node.secret not in body
    for role in ("admin", "read-write", "read-only"):  # every role may scrape
        status, body, _ = await fetch(node, "/metrics", f"Bearer {node.tokens[role]}")
        assert status == 200 and "kvstore_node_requests_total" in body, role
    text = await metrics(node)
    assert "# TYPE kvstore_node_requests_total counter" in text
    assert "kvstore_node_fsync_seconds_bucket" in text
    assert "kvstore_node_intents_pending" in text


async def test_wrong_secret_is_refused_and_counted(node: LocalNodes) -> None:
    before = metric_value(
        await metrics(node), 'kvstore_node_rpc_events_total{event="refused_secret"}'
    )
    bad = RpcClient(f"ws://{node.address('n1')}/rpc", "not-the-secret-at-all")
    try:
        with pytest.raises(Unauthorized):
            await bad.call("stats", {}, 2_000)
    finally:
        await bad.close()
    after = metric_value(
        await metrics(node), 'kvstore_node_rpc_events_total{event="refused_secret"}'
    )
    assert after == before + 1


async def test_partition_owned_elsewhere_gets_wrong_owner_with_epoch(
    node: LocalNodes, client: NodeClient
) -> None:
    with pytest.raises(WrongOwner) as caught:
        await client.request(GetRequest(partition=PartitionId(1), key="k"))
    assert caught.value.details["epoch"] == node.config.cluster_map.epoch
    assert caught.value.details["owner"] == "n2"
    with pytest.raises(WrongOwner):
        await client.request(GetRequest(partition=PartitionId(99), key="k"))


async def test_unknown_method_and_wrong_types_are_validation_errors(client: NodeClient) -> None:
    with pytest.raises(ValidationError):
        await client.rpc.call("drop_everything", {}, 2_000)
    with pytest.raises(ValidationError):
        await client.rpc.call("get", {"partition": "zero", "key": 5}, 2_000)
    with pytest.raises(ValidationError):
        await client.rpc.call("get", ["not", "a", "dict"], 2_000)


async def test_a_timestamp_far_in_the_future_is_refused_with_clock_skew(
    node: LocalNodes, client: NodeClient
) -> None:
    pid, key = owned_key(node, "skew", 0)
    future = Timestamp(system_clock_us() + 3_600_000_000, 0, 7)
    request = ExecuteRequest(partition=pid, txn_id=new_txn_id(), ts=future, ops=(put(key, 1),))
    reply = await client.request(request)
    assert isinstance(reply, ExecuteReply)
    assert not reply.committed
    assert reply.error is not None and reply.error.name == ClockSkew.code.name
    got = await client.request(GetRequest(partition=pid, key=key))
    assert isinstance(got, GetReply) and got.item is None


async def test_a_singleton_check_is_a_validation_error(
    node: LocalNodes, client: NodeClient
) -> None:
    pid, key = owned_key(node, "check", 0)
    with pytest.raises(ValidationError):
        await client.request(WriteRequest(partition=pid, op=check(key)))


def junk(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**63), rng.randrange(-(10**6), 10**6)])
    if choice == 3:
        return rng.random() * rng.choice([1, 1e300, -1e-300])
    if choice == 4:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))
    if choice == 5:
        return rng.randbytes(rng.randrange(12))
    if choice == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(5))]
    if choice == 7:
        return {f"k{rng.randrange(9)}": junk(rng, depth + 1) for _ in range(rng.randrange(5))}
    return {"partition": junk(rng, depth + 1), "key": junk(rng, depth + 1)}


def mutate(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    field = rng.choice(sorted(out))
    roll = rng.randrange(3)
    if roll == 0:
        del out[field]
    elif roll == 1:
        out[field] = junk(rng)
    else:
        out[f"extra{rng.randrange(3)}"] = junk(rng)
    return out


def fuzz_frame(rng: random.Random, valid: list[tuple[str, dict[str, Any]]], call_id: int) -> bytes:
    roll = rng.randrange(6)
    if roll == 0:  # raw random bytes
        return rng.randbytes(rng.randrange(1, 64))
    if roll == 1:  # a valid frame with bytes flipped
        method, body = rng.choice(valid)
        data = bytearray(msgpack.packb([[0, call_id, method, body, 1000]], use_bin_type=True))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if roll == 2:  # a valid method with a mutated body
        method, body = rng.choice(valid)
        return msgpack.packb([[0, call_id, method, mutate(rng, body), 1000]], use_bin_type=True)
    if roll == 3:  # a structurally wrong message
        return msgpack.packb([junk(rng)], use_bin_type=True)
    if roll == 4:  # an unknown method with junk
        return msgpack.packb([[0, call_id, junk(rng), junk(rng), 1000]], use_bin_type=True)
    return msgpack.packb(junk(rng), use_bin_type=True)


async def test_fuzzed_frames_leave_the_node_serving_with_its_data_intact(
    node: LocalNodes, client: NodeClient
) -> None:
    seeded: dict[str, tuple[PartitionId, int]] = {}
    for i in range(SEEDED_KEYS):
        pid, key = owned_key(node, "fuzz", i)
        reply = await client.request(WriteRequest(partition=pid, op=put(key, i)))
        assert isinstance(reply, WriteReply) and reply.outcome.code is ReasonCode.NONE
        seeded[key] = (pid, i)
    pid, key = next(iter(seeded.values()))[0], next(iter(seeded))
    valid = [
        ("get", encode_request(GetRequest(partition=pid, key=key))),
        ("write", encode_request(WriteRequest(partition=pid, op=put("fuzz-w", 1)))),
        (
            "execute",
            encode_request(
                ExecuteRequest(
                    partition=pid,
                    txn_id=new_txn_id(),
                    ts=Timestamp(system_clock_us(), 0, 9),
                    ops=(put("fuzz-x", [1, 2]),),
                )
            ),
        ),
    ]
    before = await metrics(node)
    rng = random.Random(20261122)
    headers = {"Kvstore-Protocol": str(limits.RPC_PROTOCOL_VERSION)}
    headers["Authorization"] = f"Bearer {node.secret}"
    url = f"ws://{node.address('n1')}/rpc"
    replies = 0
    async with aiohttp.ClientSession() as session:
        sent = 0
        while sent < FUZZ_FRAMES:
            async with session.ws_connect(url, headers=headers, max_msg_size=0) as ws:
                while sent < FUZZ_FRAMES and not ws.closed:
                    sent += 1
                    await ws.send_bytes(fuzz_frame(rng, valid, sent))
                    if sent % 50 == 0:  # a clean ping through the same connection
                        await ws.send_bytes(msgpack.packb([[0, 10**9 + sent, "stats", {}, 1000]]))
                        async with asyncio.timeout(WAIT_S):
                            async for message in ws:
                                if message.type != aiohttp.WSMsgType.BINARY:
                                    break
                                batch = msgpack.unpackb(message.data, raw=False)
                                replies += len(batch)
                                if any(m[1] == 10**9 + sent for m in batch):
                                    break
    assert replies > FUZZ_FRAMES // 4

    # The node still answers, and every seeded item is exactly as written.
    for key, (pid, value) in seeded.items():
        got = await client.request(GetRequest(partition=pid, key=key))
        assert isinstance(got, GetReply) and got.item is not None
        assert got.item.value == value, key
    after = await metrics(node)
    for counter in (
        'kvstore_node_rpc_events_total{event="malformed_frame"}',
        'kvstore_node_requests_total{code="ValidationError"',
    ):
        assert metric_value(after, counter) > metric_value(before, counter), counter
    assert (await fetch(node, "/health"))[0] == 200


async def test_an_oversize_frame_is_refused_before_decoding(node: LocalNodes) -> None:
    headers = {
        "Kvstore-Protocol": str(limits.RPC_PROTOCOL_VERSION),
        "Authorization": f"Bearer {node.secret}",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://{node.address('n1')}/rpc", headers=headers) as ws,
    ):
        with contextlib.suppress(ConnectionError):  # the node may close it mid-send
            await ws.send_bytes(b"\x00" * (limits.RPC_FRAME_BYTES_MAX + 16))
        message = await ws.receive(timeout=WAIT_S)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    text = await metrics(node)
    assert metric_value(text, 'kvstore_node_rpc_events_total{event="oversize_frame"}') >= 1


async def test_a_broken_token_file_costs_only_metrics_until_it_is_fixed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The token file serves only ``/metrics`` on a node: a group-readable one at start is
    logged and leaves every scrape 401, while the node serves its data; a chmod repairs it."""
    nodes = LocalNodes(tmp_path_factory.mktemp("tokens"), ("n1",), partitions=1)
    try:
        token_file = nodes.config.api_tokens_file
        token_file.chmod(0o640)
        nodes.start("n1")
        assert "api_tokens.load_failed" in nodes.log("n1")
        scrape = f"Bearer {nodes.tokens['metrics']}"
        assert (await fetch(nodes, "/metrics", scrape))[0] == 401
        client = nodes.client("n1")
        try:
            key = "still-serving"
            written = await client.request(WriteRequest(partition=PartitionId(0), op=put(key, 1)))
            assert isinstance(written, WriteReply)
            got = await client.request(GetRequest(partition=PartitionId(0), key=key))
            assert isinstance(got, GetReply) and got.item is not None and got.item.value == 1
        finally:
            await client.close()
        token_file.chmod(0o600)
        # The node re-reads the file at most once per reload interval: poll, bounded.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20 * limits.TOKEN_FILE_RELOAD_INTERVAL_MS / 1000
        status = 401
        while status != 200 and loop.time() < deadline:
            await asyncio.sleep(limits.TOKEN_FILE_RELOAD_INTERVAL_MS / 4000)
            status = (await fetch(nodes, "/metrics", scrape))[0]
        assert status == 200
    finally:
        nodes.close()
