"""Find stuck transactions across a cluster and drive them to completion (``kvctl recover``).

Theory of operation
-------------------
Storage nodes finish whatever a dead coordinator left on their own (every
``MAINTAIN_INTERVAL_MS``: stale-intent resolution, recovery of decided ledger records). This
module lets an operator see that work and trigger it at once, with the same cores the nodes run:

* :func:`find_stuck` asks every node, for every partition it owns, for its oldest intents and
  its open ledger records (the node's ``inspect`` RPC method, bounded per partition) and keeps
  what is older than ``older_than_ms``: one :class:`Stuck` per transaction, with where it waits.
* :func:`drive` takes each stuck transaction's ledger record from its anchor. A PREPARING record
  past its decision deadline (or an absent one) is resolved to CANCELLED by the anchor's own
  compare-and-set (``LedgerLookupRequest(resolve=True)``; a PREPARING record not yet past its
  deadline is left alone: its coordinator may still decide it). A STAGING record is left to its
  anchor, whose maintenance decides it past its deadline by asking every participant (DESIGN
  section 6, rule 5a); it is reported undecided until then. A decided record is handed to a
  :class:`~kvstore.coordinator.recovery.Recovery`, which delivers the decision to every
  participant and completes the record. Everything goes over the internal RPC with the cluster
  secret, at most ``RECOVER_TXNS_MAX`` transactions per call.

Nothing here can decide a transaction that its coordinator could still commit: the only
decisions taken are the anchor's deadline rule and recovery of what is already decided.

:func:`report_to_json` is the one JSON form of a run, shared by ``kvctl recover --json`` and
the API's ``POST /v1/admin/recover``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.codec import method_of
from kvstore.config import ClusterConfig
from kvstore.coordinator.recovery import Recovery
from kvstore.coordinator.results import RecoveryResult
from kvstore.errors import KvError, ProtocolViolation
from kvstore.limits import INSPECT_ROWS_MAX, RECOVER_TXNS_MAX, RPC_TIMEOUT_MS
from kvstore.messages import LedgerLookupRequest, LedgerReply
from kvstore.rpc import RpcPool
from kvstore.runtime.aio import ActorRunner
from kvstore.timestamps import system_clock_us
from kvstore.transport import PartitionTransport
from kvstore.types import PartitionId, TxnId

__all__ = ["Stuck", "Driven", "find_stuck", "drive", "report_to_json"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Stuck:
    txn_id: TxnId
    anchor: PartitionId
    state: str  # the anchor record's state as listed ("PREPARING", ...), or "intent" only
    age_ms: int  # the oldest sign of it: intent or record
    intents: tuple[tuple[PartitionId, str], ...] = ()  # (partition, key) of listed intents
    past_deadline: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Driven:
    txn_id: TxnId
    state: str  # the record's state after driving ("COMMITTED", "CANCELLED", "PREPARING", "absent")
    completed: bool
    error: str | None = None  # the catalogue code of what stopped it ("Unavailable", ...)


async def _inspect_all(config: ClusterConfig, pool: RpcPool) -> list[dict[str, Any]]:
    cluster_map = config.cluster_map

    async def one(pid: PartitionId) -> dict[str, Any]:
        client = pool.client(cluster_map.address_of(cluster_map.owner_of(pid)))
        body = {"partition": int(pid), "limit": INSPECT_ROWS_MAX}
        reply = await client.call("inspect", body, RPC_TIMEOUT_MS)
        if not isinstance(reply, dict):
            raise ProtocolViolation(f"inspect of partition {pid}: not an object")
        return reply

    pids = [PartitionId(p) for p in cluster_map.partitions.partitions()]
    return list(await asyncio.gather(*(one(pid) for pid in pids)))


async def find_stuck(config: ClusterConfig, *, older_than_ms: int) -> list[Stuck]:
    """Transactions with an intent or an open ledger record older than ``older_than_ms``."""
    pool = RpcPool(config.secret())
    try:
        pages = await _inspect_all(config, pool)
    finally:
        await pool.close()
    found: dict[TxnId, Stuck] = {}
    for page in pages:
        pid = PartitionId(int(page["partition"]))
        for record in page.get("open_ledger_records", []):
            if int(record["age_ms"]) < older_than_ms:
                continue
            txn_id = TxnId(str(record["txn_id"]))
            earlier = found.get(txn_id)
            found[txn_id] = Stuck(
                txn_id=txn_id,
                anchor=pid,
                state=str(record["state"]),
                age_ms=max(int(record["age_ms"]), earlier.age_ms if earlier else 0),
                intents=earlier.intents if earlier else (),
                past_deadline=bool(record["past_deadline"]),
            )
        for intent in page.get("oldest_intents", []):
            if int(intent["age_ms"]) < older_than_ms:
                continue
            txn_id = TxnId(str(intent["txn_id"]))
            earlier = found.get(txn_id)
            where = (*(earlier.intents if earlier else ()), (pid, str(intent["key"])))
            found[txn_id] = Stuck(
                txn_id=txn_id,
                anchor=earlier.anchor if earlier else PartitionId(int(intent["anchor"])),
                state=earlier.state if earlier else "intent",
                age_ms=max(int(intent["age_ms"]), earlier.age_ms if earlier else 0),
                intents=where,
                past_deadline=earlier.past_deadline if earlier else False,
            )
    return sorted(found.values(), key=lambda s: -s.age_ms)


async def drive(config: ClusterConfig, stuck: list[Stuck]) -> list[Driven]:
    """Resolve expired undecided records and deliver decided ones (see the module docstring)."""
    pool = RpcPool(config.secret())
    transport = PartitionTransport(config.cluster_map, pool)
    runner = ActorRunner(transport, system_clock_us)
    try:
        return list(
            await asyncio.gather(
                *(_drive_one(transport, runner, s) for s in stuck[:RECOVER_TXNS_MAX])
            )
        )
    finally:
        await runner.close()
        await pool.close()


async def _drive_one(transport: PartitionTransport, runner: ActorRunner, stuck: Stuck) -> Driven:
    # An intent whose record was never listed may belong to a record not yet past its deadline:
    # resolve=True only cancels an absent record or an expired PREPARING one, never a live one.
    lookup = LedgerLookupRequest(partition=stuck.anchor, txn_id=stuck.txn_id, resolve=True)
    try:
        reply = await transport.call(lookup, RPC_TIMEOUT_MS)
        if not isinstance(reply, LedgerReply):
            raise ProtocolViolation(f"{method_of(lookup)}: unexpected {type(reply).__name__}")
        record = reply.record
        if record is None:
            return Driven(txn_id=stuck.txn_id, state="absent", completed=False)
        if not record.state.decided:  # the coordinator's, or past its deadline the anchor's
            return Driven(txn_id=stuck.txn_id, state=record.state.value, completed=False)
        result: RecoveryResult = await runner.run(Recovery(record, stuck.anchor, system_clock_us()))
    except KvError as error:
        # The catalogue code only: a message may name internal addresses, and this reaches the
        # public API (POST /v1/admin/recover).
        return Driven(
            txn_id=stuck.txn_id, state=stuck.state, completed=False, error=error.code.name
        )
    return Driven(
        txn_id=stuck.txn_id,
        state=result.state.value,
        completed=result.completed,
        error=result.error.name if result.error is not None else None,
    )


def report_to_json(stuck: Sequence[Stuck], driven: Sequence[Driven]) -> list[dict[str, object]]:
    """One object per stuck transaction; ``driven`` is null for one not driven (a dry run)."""
    outcome = {d.txn_id: d for d in driven}
    return [
        {
            "txn_id": s.txn_id,
            "anchor": s.anchor,
            "state": s.state,
            "age_ms": s.age_ms,
            "intents": [{"partition": p, "key": k} for p, k in s.intents],
            "past_deadline": s.past_deadline,
            "driven": None
            if s.txn_id not in outcome
            else {
                "state": outcome[s.txn_id].state,
                "completed": outcome[s.txn_id].completed,
                "error": outcome[s.txn_id].error,
            },
        }
        for s in stuck
    ]
