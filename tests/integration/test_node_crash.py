"""Real node processes killed with SIGKILL: nothing acknowledged is lost, nothing is left undecided.

Every test starts ``python -m kvstore.storage_node`` processes on loopback ports with their own
SQLite files, drives them through the internal RPC, kills them with ``kill -9`` at a chosen moment
and restarts them from the same data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import FAST_TIMING, PATIENT_TIMING, LocalNodes, NodeClient
from support.partition import put

from kvstore.errors import KvError
from kvstore.messages import (
    GetReply,
    GetRequest,
    LedgerLookupRequest,
    LedgerReply,
    ReasonCode,
    TxnState,
    WriteReply,
    WriteRequest,
)
from kvstore.partitioning import PartitionMap
from kvstore.types import PartitionId
from kvstore.values import Value

pytestmark = pytest.mark.asyncio

WRITERS = 16
WRITES_PER_WRITER_MAX = 5_000
ACKS_WAIT_S = 120.0  # a guard: 1500 fsynced writes take long on a loaded machine, not forever


def key_on(pmap: PartitionMap, pid: int, prefix: str) -> str:
    for i in range(100_000):
        key = f"{prefix}-{i}"
        if pmap.partition_of(key) == pid:
            return key
    raise AssertionError(f"no key for partition {pid}")


@contextlib.contextmanager
def two_nodes(tmp_path: Path, timing: dict[str, int]) -> Iterator[LocalNodes]:
    nodes = LocalNodes(tmp_path / "cluster", ("n1", "n2"), partitions=4, timing=timing)
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


async def get_value(client: NodeClient, pmap: PartitionMap, key: str) -> Value | None:
    reply = await client.request(GetRequest(partition=pmap.partition_of(key), key=key))
    assert isinstance(reply, GetReply)
    return None if reply.item is None else reply.item.value


@pytest.mark.parametrize("kill_after_acks", [1, 300, 1500])
async def test_kill9_during_a_stream_of_writes_loses_no_acknowledged_write(
    tmp_path: Path, kill_after_acks: int
) -> None:
    nodes = LocalNodes(tmp_path / "cluster", ("n1",), partitions=16)
    try:
        nodes.start_all()
        pmap = nodes.config.cluster_map.partitions
        client = nodes.client("n1")
        acked: dict[str, int] = {}
        enough = asyncio.Event()

        async def writer(w: int) -> None:
            for i in range(WRITES_PER_WRITER_MAX):
                key = f"w{w}-{i}"
                request = WriteRequest(partition=pmap.partition_of(key), op=put(key, i))
                try:
                    reply = await client.request(request)
                except KvError:
                    return  # the node is gone: this write was never acknowledged
                assert isinstance(reply, WriteReply)
                assert reply.outcome.code is ReasonCode.NONE
                acked[key] = i
                if len(acked) >= kill_after_acks:
                    enough.set()

        writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
        await asyncio.wait_for(enough.wait(), ACKS_WAIT_S)
        nodes.kill("n1")
        await asyncio.wait_for(asyncio.gather(*writers), ACKS_WAIT_S)
        await client.close()
        assert len(acked) >= kill_after_acks

        nodes.start("n1")
        client = nodes.client("n1")
        try:
            missing = [k for k, v in acked.items() if await get_value(client, pmap, k) != v]
        finally:
            await client.close()
        assert missing == [], f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    finally:
        nodes.close()


# (stage, expected): "anchor-only": only the anchor prepared, undecided (rule 5a: the other
# participant's durable refusal cancels it); "prepared": both prepared, undecided (rule 5a: every
# participant holds its intents, so it is committed); "committed": decided COMMITTED.
STAGES = [
    ("anchor-only", TxnState.CANCELLED),
    ("prepared", TxnState.COMMITTED),
    ("committed", TxnState.COMMITTED),
]


@pytest.mark.parametrize(("stage", "expected"), STAGES, ids=[s for s, _ in STAGES])
@pytest.mark.parametrize("victims", [("n2",), ("n1",), ("n1", "n2")])
async def test_kill9_between_prepare_and_commit_resolves_on_every_participant(
    tmp_path: Path, stage: str, expected: TxnState, victims: tuple[str, ...]
) -> None:
    # A decision must land however slow the machine is, so the anchor's decision deadline is
    # kept out of its way; without one the test waits for that deadline to recover it.
    decided = stage == "committed"
    with two_nodes(tmp_path, PATIENT_TIMING if decided else FAST_TIMING) as nodes:
        pmap = nodes.config.cluster_map.partitions
        anchor, other = PartitionId(0), PartitionId(1)
        assert (nodes.owner(anchor), nodes.owner(other)) == ("n1", "n2")
        k_anchor, k_other = key_on(pmap, anchor, "a"), key_on(pmap, other, "b")
        txn_id = await nodes.stuck_transaction(
            k_anchor, k_other, decided=decided, anchor_only=stage == "anchor-only"
        )

        for victim in victims:
            nodes.kill(victim)
        for victim in victims:
            nodes.start(victim)

        n1, n2 = nodes.client("n1"), nodes.client("n2")
        try:
            for client in (n1, n2):
                await client.wait_until(settled)
            lookup = LedgerLookupRequest(partition=anchor, txn_id=txn_id)
            record = await n1.request(lookup)
            assert isinstance(record, LedgerReply) and record.record is not None
            assert record.record.state is expected
            value = "v" if expected is TxnState.COMMITTED else None
            assert await get_value(n1, pmap, k_anchor) == value
            assert await get_value(n2, pmap, k_other) == value
        finally:
            await n1.close()
            await n2.close()


def settled(stats: dict[str, object]) -> bool:
    """No intent and no ledger record waiting for acknowledgements on any partition."""
    partitions = stats["partitions"]
    assert isinstance(partitions, dict)
    return all(p["intents"] == 0 and p["open_ledger_records"] == 0 for p in partitions.values())
