"""Public errors with a storage node down: they name the partition and the node id, never an
internal address or a Python repr, and the coordinator's log does not repeat the failure per
request.

A real 3-node cluster with coordinator ``c1`` (``support.api.api_cluster``); node ``n2`` is
killed with SIGKILL and requests for its partitions go through the public HTTP API.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import pytest_asyncio
from support.api import ApiClient, api_client, api_cluster, assert_error, unique
from support.cluster import LocalNodes

from kvstore.limits import RPC_FAILURE_LOG_INTERVAL_MS

pytestmark = pytest.mark.asyncio

DOWN: Final = "n2"
REQUESTS: Final = 20
# What must never reach a caller: addresses, URLs, reprs of exceptions or connection keys.
LEAKS: Final = re.compile(r"127\.0\.0\.1|ws://|http://|:\d{4,5}\b|Error\(|ConnectionKey|<|>")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalNodes]:
    with api_cluster(tmp_path / "cluster") as nodes:
        yield nodes


@pytest_asyncio.fixture
async def api(cluster: LocalNodes) -> AsyncIterator[ApiClient]:
    async with api_client(cluster.api("c1"), cluster.tokens["read-write"]) as client:
        yield client


def key_owned_by(cluster: LocalNodes, node_id: str, prefix: str) -> tuple[str, int]:
    partition_of = cluster.config.cluster_map.partitions.partition_of
    for index in range(10_000):
        key = f"{prefix}/{index}"
        pid = int(partition_of(key))
        if cluster.owner(pid) == node_id:
            return key, pid
    raise AssertionError(f"no key on a partition of {node_id}")


def assert_public(error: dict[str, Any], pid: int) -> None:
    message = error["message"]
    assert f"partition {pid}" in message and f"node {DOWN}" in message, error
    assert not LEAKS.search(message), error
    assert not LEAKS.search(str(error.get("details", ""))), error


async def test_an_unreachable_node_is_named_by_id_and_logged_once(
    cluster: LocalNodes, api: ApiClient
) -> None:
    key, pid = key_owned_by(cluster, DOWN, unique("down"))
    assert (await api.put_item(key, {"value": 1})).status == 200
    cluster.kill(DOWN)
    started = time.monotonic()
    for _ in range(REQUESTS):
        assert_public(assert_error(await api.get_item(key), "Unavailable"), pid)
    assert_public(assert_error(await api.put_item(key, {"value": 2}), "Unavailable"), pid)
    scan = assert_error(await api.scan({"prefix": key}), "Unavailable")
    assert not LEAKS.search(scan["message"]), scan
    assert_public(assert_error(await api.read([key]), "Unavailable"), pid)
    txn = await api.txn([{"op": "put", "key": key, "value": 3}])
    assert txn.status >= 400, txn
    assert not LEAKS.search(txn.body["error"]["message"]), txn
    elapsed_s = time.monotonic() - started
    # The log keeps the address (operators need it) but not one line per request: the first
    # failure, then at most one line per RPC_FAILURE_LOG_INTERVAL_MS while the node stays down.
    log = (cluster.root / "c1.log").read_text(errors="replace")
    lines = [line for line in log.splitlines() if "cannot connect" in line]
    assert 1 <= len(lines) <= 1 + int(elapsed_s * 1000 // RPC_FAILURE_LOG_INTERVAL_MS), lines
    assert "Error(" not in "\n".join(lines), lines
