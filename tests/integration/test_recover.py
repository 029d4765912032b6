"""Operator recovery tools (kvstore.recover) against real node processes: a transaction left
decided but undelivered, and one left undecided past its deadline, are found and finished."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import PATIENT_TIMING, LocalNodes
from support.partition import put

from kvstore.messages import (
    DecideRequest,
    GetReply,
    GetRequest,
    LedgerRecord,
    PrepareRequest,
    TxnState,
)
from kvstore.recover import drive, find_stuck
from kvstore.timestamps import new_txn_id, system_clock_us
from kvstore.types import PartitionId, Timestamp

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


async def _prepare(nodes: LocalNodes, key0: str, key1: str) -> str:
    txn = new_txn_id()
    ts = Timestamp(system_clock_us(), 0, 77)
    ledger = LedgerRecord(txn_id=txn, ts=ts, state=TxnState.PREPARING, participants=(P0, P1))
    for pid, key in ((P0, key0), (P1, key1)):
        client = nodes.client(nodes.owner(pid))
        try:
            request = PrepareRequest(
                partition=pid,
                txn_id=txn,
                ts=ts,
                ops=(put(key, "v"),),
                anchor=P0,
                ledger=ledger if pid == P0 else None,
            )
            await client.request(request)
        finally:
            await client.close()
    return txn


async def test_a_decided_transaction_is_found_and_delivered(nodes: LocalNodes) -> None:
    txn = await _prepare(nodes, "a0", "b0")
    client = nodes.client(nodes.owner(P0))
    try:
        await client.request(DecideRequest(partition=P0, txn_id=txn, decision=TxnState.COMMITTED))
    finally:
        await client.close()
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
    txn = await _prepare(nodes, "a1", "b1")
    [stuck] = [s for s in await find_stuck(nodes.config, older_than_ms=0) if s.txn_id == txn]
    assert stuck.state == "PREPARING" and stuck.anchor == P0
    assert {pid for pid, _ in stuck.intents} == {P0, P1}
    [driven] = await drive(nodes.config, [stuck])
    assert driven.state in ("PREPARING", "CANCELLED")  # cancelled only once past the deadline
    if driven.state == "PREPARING":
        assert not stuck.past_deadline
