"""Operator recovery tools (kvstore.recover) against real node processes: a transaction left
decided but undelivered, and one left undecided past its deadline, are found and finished."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import PATIENT_TIMING, LocalNodes

from kvstore.messages import (
    GetReply,
    GetRequest,
)
from kvstore.recover import drive, find_stuck
from kvstore.types import PartitionId

pytestmark = pytest.mark.asyncio
P0, P1 = PartitionId(0), PartitionId(1)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[LocalNodes]:
    # PATIENT_TIMING: a decision lands however slow the machine is (no anchor cancels first).
    cluster = LocalNodes(tmp_path, ("n1", "n2"), partitions=2, timing=PATIENT_TIMING)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


async def test_a_decided_transaction_is_found_and_delivered(nodes: LocalNodes) -> None:
    txn = await nodes.stuck_transaction("a0", "b0", decided=True)
    stuck = await find_stuck(nodes.config, older_than_ms=0)
    mine = [s for s in stuck if s.txn_id == txn]
    # The nodes' own maintenance may have finished it already; if listed, it is on the anchor.
    assert all(s.anchor == P0 for s in mine)
    driven = await drive(nodes.config, mine)
    assert [(d.txn_id, d.state, d.completed) for d in driven] == [
        (txn, "COMMITTED", True) for _ in mine
    ]
    for pid, key in ((P0, "a0"), (P1, "b0")):
        client = nodes.client(nodes.owner(pid))
        try:
            got = await client.request(GetRequest(partition=pid, key=key))
        finally:
            await client.close()
        assert isinstance(got, GetReply) and got.item is not None and got.item.value == "v"


async def test_an_undecided_transaction_is_left_alone_until_its_deadline(
    nodes: LocalNodes,
) -> None:
    txn = await nodes.stuck_transaction("a1", "b1", decided=False)
    [stuck] = [s for s in await find_stuck(nodes.config, older_than_ms=0) if s.txn_id == txn]
    assert stuck.state == "STAGING" and stuck.anchor == P0
    assert {pid for pid, _ in stuck.intents} == {P0, P1}
    [driven] = await drive(nodes.config, [stuck])
    # Left to its anchor, which decides it once past the deadline: both participants hold their
    # intents, so COMMITTED (rule 5a).
    assert driven.state in ("STAGING", "COMMITTED")
