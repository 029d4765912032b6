"""A coordinator and the anchor's recovery (or a rival) race to decide one transaction; the
anchor's ledger CAS picks one winner, and rule 5a (parallel commit) says which one it may be.

Real storage node processes (three nodes, 8 partitions, SQLite) and two coordinator library
instances in the test process, each with its own RPC pool. Coordinator A's transport is gated:
the test holds A's chosen requests until it releases them, so the order in which A's decision
and a rival's reach the anchor is chosen by the test, not by luck:

* A: A's prepare to the other participant is held past the anchor's decision deadline; the
  anchor's recovery asks that participant, which refuses the transaction for good, and cancels
  it; the released prepare is refused and A adopts CANCELLED.
* B: A's COMMITTED lands first; the rival's CANCELLED gets the COMMITTED record back.
* C: every participant voted yes, A's decision (and in one case its commits) held past the
  deadline: the anchor's recovery finds every participant holding or having applied its
  intents and commits the transaction, and A adopts that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from support.cluster import PATIENT_TIMING, LocalNodes
from support.partition import add, put
from support.workload import key_apart

from kvstore.coordinator.engine import Coordinator
from kvstore.errors import TransactionCanceled
from kvstore.messages import (
    CommitRequest,
    DecideRequest,
    LedgerLookupRequest,
    LedgerRecord,
    LedgerReply,
    PrepareReply,
    PrepareRequest,
    Reply,
    Request,
    TxnState,
)
from kvstore.partitioning import PartitionMap
from kvstore.rpc import RpcPool
from kvstore.timestamps import HybridClock, random_origin, system_clock_us
from kvstore.transport import PartitionTransport
from kvstore.types import PartitionId, TxnId, Value

pytestmark = pytest.mark.asyncio

NODES = ("n1", "n2", "n3")
PARTITIONS = 8
CALL_TIMEOUT_MS = 30_000  # a guard: an RPC answers at once unless held by the test
# Guards against a hang, not measurements: a loaded machine is slow, not wrong.
WAIT_S = 60.0
# FAST_TIMING: ledger_decision_deadline_ms 1500; node maintenance every 200 ms.
POLL_S = 0.05
RECOVERY_WAIT_S = 60.0


class GatedTransport:
    """A real :class:`PartitionTransport` whose requests of chosen types wait for a release.

    ``hold(T)`` closes the gate for requests of type ``T``; they are kept (``held``) and wait
    until ``release(T)``. Every request that went through is logged with its reply.
    """

    def __init__(self, inner: PartitionTransport) -> None:
        self._inner = inner
        self._gates: dict[type[Request], asyncio.Event] = {}
        self._only: dict[type[Request], PartitionId] = {}
        self.held: list[Request] = []
        self.replies: list[tuple[Request, Reply]] = []
        self._changed = asyncio.Event()

    def hold(self, kind: type[Request], partition: PartitionId | None = None) -> None:
        """Hold requests of ``kind`` (only those to ``partition``, when given)."""
        self._gates[kind] = asyncio.Event()
        if partition is not None:
            self._only[kind] = partition

    def release(self, kind: type[Request]) -> None:
        self._gates[kind].set()

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        gate = self._gates.get(type(request))
        only = self._only.get(type(request))
        if gate is not None and only is not None and request.partition != only:
            gate = None
        if gate is not None and not gate.is_set():
            self.held.append(request)
            self._notify()
            await gate.wait()
        reply = await self._inner.call(request, timeout_ms)
        self.replies.append((request, reply))
        self._notify()
        return reply

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, found: Callable[[], object], timeout_s: float = WAIT_S) -> object:
        """Wait (bounded) until ``found()`` returns something truthy; return it."""
        async with asyncio.timeout(timeout_s):
            while not (result := found()):
                await self._changed.wait()
        return result

    async def first_held(self, kind: type[Request]) -> Request:
        found = await self.wait_for(lambda: [r for r in self.held if isinstance(r, kind)])
        assert isinstance(found, list)
        request: Request = found[0]
        return request

    def ledger_states(self, txn_id: TxnId) -> list[TxnState]:
        """The states of every ledger record this transport saw come back for ``txn_id``."""
        return [
            reply.record.state
            for _, reply in self.replies
            if isinstance(reply, LedgerReply)
            and reply.txn_id == txn_id
            and reply.record is not None
        ]


class Side:
    """One coordinator library instance with its own clock, RPC pool and gated transport."""

    def __init__(self, cluster: LocalNodes) -> None:
        cluster_map = cluster.config.cluster_map
        clock = HybridClock(system_clock_us, random_origin())
        self.pool = RpcPool(cluster.secret, on_clock=clock.observe)
        self.transport = GatedTransport(PartitionTransport(cluster_map, self.pool))
        self.coordinator = Coordinator(
            cluster_map, cluster.secret, clock=clock, transport=self.transport
        )

    async def call(self, request: Request) -> Reply:
        return await self.transport.call(request, CALL_TIMEOUT_MS)

    async def ledger(self, anchor: PartitionId, txn_id: TxnId) -> LedgerRecord | None:
        reply = await self.call(LedgerLookupRequest(partition=anchor, txn_id=txn_id))
        assert isinstance(reply, LedgerReply)
        return reply.record

    async def decide(self, anchor: PartitionId, txn_id: TxnId, state: TxnState) -> LedgerRecord:
        reply = await self.call(DecideRequest(partition=anchor, txn_id=txn_id, decision=state))
        assert isinstance(reply, LedgerReply) and reply.record is not None, reply
        assert reply.record.txn_id == txn_id
        return reply.record

    async def value(self, key: str) -> Value | None:
        item = await self.coordinator.get(key)
        return None if item is None else item.value

    async def close(self) -> None:
        await self.coordinator.close()
        await self.pool.close()


@contextlib.contextmanager
def started_cluster(root: Path, timing: dict[str, int] | None) -> Iterator[LocalNodes]:
    nodes = LocalNodes(root, NODES, partitions=PARTITIONS, timing=timing)
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    """FAST_TIMING: the anchor's own recovery cancels an undecided record after 1.5 s."""
    with started_cluster(tmp_path_factory.mktemp("decide-race"), None) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def patient_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    """PATIENT_TIMING: for a race the anchor's recovery must not enter, however long a loaded
    machine takes between A's prepare and its released decision."""
    with started_cluster(tmp_path_factory.mktemp("decide-race-patient"), PATIENT_TIMING) as nodes:
        yield nodes


@contextlib.asynccontextmanager
async def two_sides(cluster: LocalNodes) -> AsyncIterator[tuple[Side, Side]]:
    a, b = Side(cluster), Side(cluster)
    try:
        yield a, b
    finally:
        for side in (a, b):
            side.transport.release_all()  # nothing may stay blocked behind a gate
            await side.close()


@pytest_asyncio.fixture
async def sides(cluster: LocalNodes) -> AsyncIterator[tuple[Side, Side]]:
    async with two_sides(cluster) as both:
        yield both


@pytest_asyncio.fixture
async def patient_sides(patient_cluster: LocalNodes) -> AsyncIterator[tuple[Side, Side]]:
    async with two_sides(patient_cluster) as both:
        yield both


def keys_for(cluster: LocalNodes, prefix: str) -> tuple[str, str]:
    """An anchor key and a second key on a partition owned by another node."""
    pmap: PartitionMap = cluster.config.cluster_map.partitions
    anchor = f"{prefix}/anchor"
    owner = cluster.owner(pmap.partition_of(anchor))
    others = {p for p in range(PARTITIONS) if cluster.owner(p) == owner}
    return anchor, key_apart(pmap, f"{prefix}/other", others)


async def wait_settled(cluster: LocalNodes, timeout_s: float = WAIT_S) -> None:
    """Every node reports no intent and no ledger record waiting for acknowledgements."""
    deadline = time.monotonic() + timeout_s
    for node in NODES:
        client = cluster.client(node)
        try:
            await client.wait_until(settled, max(0.0, deadline - time.monotonic()))
        finally:
            await client.close()


def settled(stats: dict[str, object]) -> bool:
    partitions = stats["partitions"]
    assert isinstance(partitions, dict)
    return all(p["intents"] == 0 and p["open_ledger_records"] == 0 for p in partitions.values())


def cas_lost(side: Side) -> float:
    value = side.coordinator.metrics.registry.get_sample_value(
        "kvstore_coordinator_ledger_cas_lost_total"
    )
    return 0.0 if value is None else value


async def seed_values(side: Side, anchor_key: str, other_key: str) -> None:
    await side.coordinator.write(put(anchor_key, "before"))
    await side.coordinator.write(put(other_key, {"n": 10}))


async def test_a_prepare_late_past_the_deadline_is_refused_for_good_and_the_committer_adopts_it(
    cluster: LocalNodes, sides: tuple[Side, Side]
) -> None:
    a, b = sides
    k_anchor, k_other = keys_for(cluster, "race-a")
    await seed_values(b, k_anchor, k_other)
    pmap = cluster.config.cluster_map.partitions
    anchor, other = pmap.partition_of(k_anchor), pmap.partition_of(k_other)
    a.transport.hold(PrepareRequest, other)
    task = asyncio.create_task(
        a.coordinator.transact([put(k_anchor, "A"), add(k_other, ("n",), 1)])
    )
    try:
        held = await a.transport.first_held(PrepareRequest)
        assert isinstance(held, PrepareRequest) and held.partition == other
        txn_id = held.txn_id
        # The anchor prepared (STAGING); past its deadline its recovery asks the other
        # participant, which never saw the transaction: it refuses it for good, so CANCELLED.
        # (A's own prepare deadline may pass first: then A cancels it itself. Either way.)
        record = await wait_decided(b, anchor, txn_id)
        assert record.state is TxnState.CANCELLED, record
        a.transport.release(PrepareRequest)

        with pytest.raises(TransactionCanceled) as raised:
            await asyncio.wait_for(task, WAIT_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert raised.value.details["txn_id"] == txn_id

    await wait_settled(cluster)
    assert await b.value(k_anchor) == "before"
    assert await b.value(k_other) == {"n": 10}
    record = await b.ledger(anchor, txn_id)
    assert record is not None and record.state is TxnState.CANCELLED
    assert (await b.decide(anchor, txn_id, TxnState.COMMITTED)).state is TxnState.CANCELLED
    # The late prepare, delivered again, is refused: the other participant's no is final.
    again = await b.call(held)
    assert isinstance(again, PrepareReply) and not again.accepted, again


async def wait_decided(side: Side, anchor: PartitionId, txn_id: TxnId) -> LedgerRecord:
    """Poll the anchor's record (bounded) until it is decided."""
    deadline = time.monotonic() + RECOVERY_WAIT_S
    while True:
        record = await side.ledger(anchor, txn_id)
        if record is not None and record.state.decided:
            return record
        assert time.monotonic() < deadline, f"the anchor left {txn_id} undecided: {record}"
        await asyncio.sleep(POLL_S)  # polling the ledger record, bounded by the deadline


async def test_committer_lands_first_and_the_rival_cancel_gets_committed(
    patient_cluster: LocalNodes, patient_sides: tuple[Side, Side]
) -> None:
    cluster, (a, b) = patient_cluster, patient_sides
    k_anchor, k_other = keys_for(cluster, "race-b")
    await seed_values(b, k_anchor, k_other)
    a.transport.hold(DecideRequest)
    a.transport.hold(CommitRequest)  # A stays in COMMITTING while the rival tries to cancel
    task = asyncio.create_task(
        a.coordinator.transact([put(k_anchor, "A"), add(k_other, ("n",), 1)])
    )
    try:
        held = await a.transport.first_held(DecideRequest)
        assert isinstance(held, DecideRequest) and held.decision is TxnState.COMMITTED
        txn_id, anchor = held.txn_id, held.partition
        a.transport.release(DecideRequest)
        await a.transport.wait_for(lambda: a.transport.ledger_states(txn_id))
        assert a.transport.ledger_states(txn_id) == [TxnState.COMMITTED]
        await a.transport.first_held(CommitRequest)
        assert not task.done()  # a commit is answered only once every participant applied it

        rival = await b.decide(anchor, txn_id, TxnState.CANCELLED)
        assert rival.state is TxnState.COMMITTED
        a.transport.release(CommitRequest)

        result = await asyncio.wait_for(task, WAIT_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert result.committed and result.txn_id == txn_id

    assert await b.value(k_anchor) == "A"
    assert await b.value(k_other) == {"n": 11}
    await wait_settled(cluster)
    record = await b.ledger(anchor, txn_id)
    assert record is not None and record.state is TxnState.COMMITTED
    assert cas_lost(a) == 0


@pytest.mark.parametrize("held_kinds", ["decide", "decide+commits"])
async def test_decision_held_past_the_deadline_is_committed_by_the_anchor(
    cluster: LocalNodes, sides: tuple[Side, Side], held_kinds: str
) -> None:
    """Every participant voted yes, so rule 5a commits the transaction: the anchor's recovery
    finds the other participant holding its intents (commits held too) or having applied them
    (its applied mark), and decides COMMITTED; A's held decide then gets COMMITTED back."""
    a, b = sides
    k_anchor, k_other = keys_for(cluster, f"race-c-{held_kinds}")
    await seed_values(b, k_anchor, k_other)
    a.transport.hold(DecideRequest)
    if held_kinds == "decide+commits":
        a.transport.hold(CommitRequest)
    started = time.monotonic()
    task = asyncio.create_task(
        a.coordinator.transact([put(k_anchor, "A"), add(k_other, ("n",), 1)])
    )
    try:
        held = await a.transport.first_held(DecideRequest)
        assert isinstance(held, DecideRequest) and held.decision is TxnState.COMMITTED
        txn_id, anchor = held.txn_id, held.partition

        # No coordinator decides: the anchor's own recovery must (STAGING past its deadline).
        record = await wait_decided(b, anchor, txn_id)
        recovered_s = time.monotonic() - started
        assert record.state is TxnState.COMMITTED, record
        assert not task.done()
        a.transport.release_all()

        result = await asyncio.wait_for(task, WAIT_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    print(f"the anchor committed the held transaction after {recovered_s:.2f}s")
    assert result.committed and result.txn_id == txn_id
    assert set(a.transport.ledger_states(txn_id)) == {TxnState.COMMITTED}
    assert cas_lost(a) == 0

    await wait_settled(cluster)
    assert await b.value(k_anchor) == "A"
    assert await b.value(k_other) == {"n": 11}
    record = await b.ledger(anchor, txn_id)
    assert record is not None and record.state is TxnState.COMMITTED
