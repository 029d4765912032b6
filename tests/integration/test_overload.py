"""Overload is an answer: a coordinator full of requests refuses more at once, on every route.

A real cluster (2 storage nodes, coordinator ``c1``) whose cluster file allows the coordinator two
requests at once (``api_requests_in_flight_max = 2``). Two requests are held in flight from raw
sockets that send their headers and only half of their body, so the handler waits for the rest
(a slow client holds its place like a slow transaction would). The test waits for the
coordinator's own gauge to show both, then checks that every data route is refused at once with
a retryable ``Overloaded`` (503, ``Retry-After``) that started no work (the refused put is not
applied), that health and metrics are still served, and that once the held bodies arrive, the
held requests are served and the refused ones succeed when retried.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from support.api import (
    ApiClient,
    api_client,
    assert_error,
    kv_path,
    parse_host_port,
    read_raw_reply,
    unique,
)
from support.cluster import LocalNodes

pytestmark = pytest.mark.asyncio

HELD = 2
WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    nodes = LocalNodes(
        tmp_path_factory.mktemp("overload"),
        ("n1", "n2"),
        partitions=2,
        coordinator_ids=("c1",),
        api_requests_in_flight_max=HELD,
    )
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


@pytest_asyncio.fixture
async def api(cluster: LocalNodes) -> AsyncIterator[ApiClient]:
    async with api_client(cluster.api("c1"), cluster.tokens["admin"]) as client:
        yield client


async def in_flight(api: ApiClient) -> float:
    reply = await api.request("GET", "/metrics")
    assert reply.status == 200, reply
    for line in reply.raw.decode().splitlines():
        if line.startswith("kvstore_coordinator_http_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


async def wait_in_flight(api: ApiClient, expected: float) -> None:
    deadline = time.monotonic() + WAIT_S
    while (seen := await in_flight(api)) != expected:
        assert time.monotonic() < deadline, f"{seen} requests in flight, expected {expected}"
        await asyncio.sleep(0.01)  # polling the coordinator's own gauge, bounded by the deadline


async def test_a_full_coordinator_refuses_every_route_at_once_and_recovers(
    cluster: LocalNodes, api: ApiClient
) -> None:
    host, port = parse_host_port(cluster.api("c1"))
    token = cluster.tokens["admin"]
    held_keys = [unique("held") for _ in range(HELD)]
    bodies = [json.dumps({"value": {"n": i}}).encode() for i in range(HELD)]
    sockets = []
    try:
        for key, body in zip(held_keys, bodies, strict=True):
            reader, writer = await asyncio.open_connection(host, port)
            sockets.append((reader, writer))
            writer.write(
                (
                    f"PUT {kv_path(key)} HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body[:3]
            )
            await writer.drain()
        await wait_in_flight(api, HELD)

        refused_key = unique("refused")
        started = time.monotonic()
        refusals = [
            await api.request("PUT", kv_path(refused_key), json_body={"value": 1}),
            await api.request("GET", kv_path(refused_key)),
            await api.request("DELETE", kv_path(refused_key)),
            await api.request("POST", "/v1/txn", json_body={"ops": [{"op": "check", "key": "k"}]}),
            await api.request("POST", "/v1/read", json_body={"keys": [refused_key]}),
            await api.request("GET", "/v1/scan"),
            await api.request("GET", "/v1/txn/some-token"),
        ]
        answered_s = time.monotonic() - started
        for reply in refusals:
            error = assert_error(reply, "Overloaded")
            assert error["retryable"] is True and reply.status == 503
            # 1 s, doubled each second that refusals outnumber admissions (a slow machine)
            assert reply.headers["Retry-After"] == str(error["retry_after_s"])
            assert error["retry_after_s"] in {1, 2, 4, 8, 16}, reply
            assert error.get("limit") == HELD, reply
        assert answered_s < WAIT_S  # answered, not queued behind the held requests
        assert (await api.request("GET", "/v1/health")).status == 200
        assert await in_flight(api) == HELD  # refusals took no place

        for (reader, writer), body in zip(sockets, bodies, strict=True):
            writer.write(body[3:])
            await writer.drain()
            assert (await read_raw_reply(reader)).status == 200
        await wait_in_flight(api, 0)
    finally:
        for _, writer in sockets:
            writer.close()
    assert (await api.request("GET", kv_path(refused_key))).status == 404  # nothing ran
    for i, key in enumerate(held_keys):
        reply = await api.request("GET", kv_path(key))
        assert reply.status == 200 and reply.body["value"] == {"n": i}, reply
    assert (await api.request("PUT", kv_path(refused_key), json_body={"value": 1})).status == 200
    metrics = (await api.request("GET", "/metrics")).raw.decode()
    assert 'kvstore_coordinator_http_requests_total{route="put",status="503"}' in metrics


async def test_server_processes_run_with_the_c_allocator(cluster: LocalNodes) -> None:
    """kvstore.memory: every server process re-executed itself with PYTHONMALLOC=malloc (same
    pid), so the memory of a burst goes back to the system."""
    for process_id in ("n1", "n2", "c1"):
        pid = cluster.procs[process_id].pid
        environ = (await asyncio.to_thread(Path(f"/proc/{pid}/environ").read_bytes)).split(b"\0")
        assert b"PYTHONMALLOC=malloc" in environ, process_id
