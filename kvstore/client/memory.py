"""An in-memory backend with the store's semantics, for tests of code that uses the SDK.

Theory of operation
-------------------
:class:`MemoryBackend` implements :class:`~kvstore.client.backend.Backend` in one process with
no I/O: ``Client(MemoryBackend())`` behaves like a client of a one-node cluster, so application
tests (and the SDK's own unit tests) need no cluster. Semantics come from the store's own
modules, not a re-implementation: conditions are :func:`kvstore.conditions.evaluate`, op effects
:func:`kvstore.ops.apply_op`, idempotency fingerprints :func:`kvstore.ops.txn_fingerprint`.

* Every write bumps the key's version by one from the highest it ever had (so versions never
  repeat, across deletes too) and gets the next timestamp of a hybrid clock on the wall clock
  ``now_us`` (injectable; origin 0): microseconds, then a counter within one microsecond, in the
  store's text form.
* Reads as of a timestamp (``read(..., at=...)``): every write also appends the key's new state
  to that key's version list, and a read at ``at`` answers each key's last state at or before
  ``at``. ``at`` is checked as a coordinator checks it
  (:func:`~kvstore.coordinator.read.check_snapshot_at`: not after the clock, not older than
  ``SNAPSHOT_WINDOW_MS``). A key's list drops states replaced longer ago than the window, and
  keeps at most ``MEMORY_VERSIONS_PER_KEY``; a read at a timestamp before a key's oldest kept
  state when older ones were dropped is ``SnapshotTooOld``, never a wrong answer.
* A transaction applies all its ops or none; a cancelled one raises ``TransactionCanceled``
  with one reason per op in the API's JSON form, like a coordinator.
* A token seen before returns its recorded outcome (or ``IdempotencyMismatch`` for other ops).

Tests steer it with :meth:`MemoryBackend.inject` (the next call of a method raises an error,
optionally after applying its effect, as a lost answer would) and read :attr:`calls` (every
call's method name and main argument, tokens included) to see what the client sent.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from kvstore.client.backend import ScanPage
from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.conditions import evaluate
from kvstore.coordinator.answers import cancel_message, value_to_json
from kvstore.coordinator.read import check_snapshot_at
from kvstore.errors import (
    ConditionFailed,
    IdempotencyMismatch,
    KvError,
    SnapshotTooOld,
    TransactionCanceled,
    ValidationError,
)
from kvstore.limits import PARTITIONS_DEFAULT, SNAPSHOT_WINDOW_MS, TXN_OPS_MAX_DEFAULT
from kvstore.ops import Op, OpKind, apply_op, txn_fingerprint, validate_txn_ops
from kvstore.timestamps import PhysicalClock, system_clock_us
from kvstore.types import TIMESTAMP_ZERO, Timestamp, Value

__all__ = ["MemoryBackend", "MEMORY_VERSIONS_PER_KEY"]

_ORIGIN: Final = 0
_US_PER_MS: Final = 1000
MEMORY_VERSIONS_PER_KEY: Final = 1000
"""States one key's version list keeps for reads at a timestamp (the newest ones)."""


@dataclass(slots=True)
class _Stored:
    value: Value
    version: int
    ts: str


@dataclass(slots=True)
class _State:
    """A key's state from ``since`` on (the timestamp of the write that made it)."""

    since: Timestamp
    stored: _Stored | None  # None: absent


@dataclass(slots=True)
class _Fault:
    error: KvError
    after_apply: bool


@dataclass(slots=True)
class _Outcome:
    fingerprint: str
    record: dict[str, object]
    committed: Committed | None = None
    error: KvError | None = None


@dataclass(slots=True)
class MemoryBackend:
    """A one-process store (see the module). ``partitions`` only shapes token drawing."""

    partitions: int = PARTITIONS_DEFAULT
    txn_ops_max: int = TXN_OPS_MAX_DEFAULT
    calls: list[tuple[str, object]] = field(default_factory=list)
    _items: dict[str, _Stored] = field(default_factory=dict)
    _versions: dict[str, int] = field(default_factory=dict)  # highest version ever, per key
    _outcomes: dict[str, _Outcome] = field(default_factory=dict)
    _faults: dict[str, deque[_Fault]] = field(default_factory=dict)
    now_us: PhysicalClock = system_clock_us  # the wall clock its timestamps follow
    _last: Timestamp = TIMESTAMP_ZERO  # the last timestamp issued
    _states: dict[str, deque[_State]] = field(default_factory=dict)  # per key, oldest first
    _kept_from: dict[str, Timestamp] = field(default_factory=dict)  # keys that dropped states
    closed: bool = False

    # --- steering ---------------------------------------------------------------------------

    def inject(self, method: str, error: KvError, *, after_apply: bool = False) -> None:
        """The next call of ``method`` (``"get"``, ``"transact"``...) raises ``error``; with
        ``after_apply`` it first takes effect (an answer lost on the way back)."""
        self._faults.setdefault(method, deque()).append(_Fault(error, after_apply))

    def _fault(self, method: str, argument: object) -> _Fault | None:
        self.calls.append((method, argument))
        queue = self._faults.get(method)
        fault = queue.popleft() if queue else None
        if fault is not None and not fault.after_apply:
            raise fault.error
        return fault

    # --- state ------------------------------------------------------------------------------

    def _tick(self) -> Timestamp:
        """The next timestamp of the hybrid clock (see the module)."""
        physical_us = max(self.now_us(), self._last.physical_us)
        logical = self._last.logical + 1 if physical_us == self._last.physical_us else 0
        self._last = Timestamp(physical_us, logical, _ORIGIN)
        return self._last

    def _record(self, key: str, stored: _Stored | None, since: Timestamp) -> None:
        """Append ``key``'s new state (written at ``since``) to its version list, dropping the
        states no read within the window can need and those beyond the bound."""
        states = self._states.setdefault(key, deque())
        states.append(_State(since, stored))
        oldest_us = self.now_us() - SNAPSHOT_WINDOW_MS * _US_PER_MS
        dropped = False
        while len(states) > 1 and (
            len(states) > MEMORY_VERSIONS_PER_KEY or states[1].since.physical_us < oldest_us
        ):
            states.popleft()  # replaced before the window (or beyond the bound)
            dropped = True
        if dropped:
            self._kept_from[key] = states[0].since

    def _item_at(self, key: str, at: Timestamp) -> Item | None:
        kept_from = self._kept_from.get(key)
        if kept_from is not None and at < kept_from:
            raise SnapshotTooOld(
                f"the versions of {key!r} as of {at} are no longer kept (the window, or more "
                f"than {MEMORY_VERSIONS_PER_KEY} writes of the key since)",
                details={"key": key, "at": str(at)},
            )
        found: _State | None = None
        for state in reversed(self._states.get(key, ())):
            if state.since <= at:
                found = state
                break
        if found is None or found.stored is None:
            return None
        stored = found.stored
        value = value_to_json(copy.deepcopy(stored.value))
        return Item(key=key, value=value, version=stored.version, ts=stored.ts)

    def _item(self, key: str) -> Item | None:
        stored = self._items.get(key)
        if stored is None:
            return None
        value = value_to_json(copy.deepcopy(stored.value))  # bytes read back as base64, as in JSON
        return Item(key=key, value=value, version=stored.version, ts=stored.ts)

    def _holds(self, op: Op) -> bool:
        stored = self._items.get(op.key)
        return evaluate(
            op.condition,
            exists=stored is not None,
            value=stored.value if stored is not None else None,
            version=stored.version if stored is not None else 0,
        )

    def _result(self, op: Op) -> tuple[bool, Value]:
        stored = self._items.get(op.key)
        exists, value = apply_op(
            op, exists=stored is not None, value=stored.value if stored is not None else None
        )
        return exists, copy.deepcopy(value)

    def _apply(self, op: Op, result: tuple[bool, Value], ts: Timestamp) -> int:
        exists, value = result
        if op.kind is OpKind.CHECK:
            return self._versions.get(op.key, 0)
        version = self._versions.get(op.key, 0) + 1
        self._versions[op.key] = version
        if exists:
            self._items[op.key] = _Stored(value=value, version=version, ts=str(ts))
        else:
            self._items.pop(op.key, None)
        self._record(op.key, self._items.get(op.key), ts)
        return version

    def _reason(self, op: Op) -> dict[str, object]:
        """The op's reason in a cancelled transaction, or ``{"code": "None", "key": ...}``."""
        if not self._holds(op):
            reason: dict[str, object] = {
                "code": "ConditionFailed",
                "key": op.key,
                "message": "condition failed",
            }
            item = self._item(op.key)
            if op.return_item and item is not None:
                reason["item"] = {
                    "key": item.key,
                    "value": item.value,
                    "version": item.version,
                    "ts": item.ts,
                }
            return reason
        try:
            self._result(op)
        except ValidationError as error:
            return {"code": "ValidationError", "key": op.key, "message": error.message}
        return {"code": "None", "key": op.key}

    # --- the Backend protocol ---------------------------------------------------------------

    async def partition_count(self, timeout_s: float) -> int:
        self._fault("partition_count", None)
        return self.partitions

    async def get(self, key: str, timeout_s: float) -> Item | None:
        fault = self._fault("get", key)
        item = self._item(key)
        if fault is not None:
            raise fault.error
        return item

    async def _write(self, method: str, op: Op) -> tuple[bool, str, int]:
        fault = self._fault(method, op)
        if not self._holds(op):
            details: dict[str, object] = {"key": op.key}
            raise ConditionFailed("the condition did not hold", details=details)
        existed = op.key in self._items
        ts = self._tick()
        version = self._apply(op, self._result(op), ts)
        if fault is not None:
            raise fault.error
        return existed, str(ts), version

    async def put(self, op: Op, timeout_s: float) -> Written:
        _, ts, version = await self._write("put", op)
        return Written(version=version, ts=ts)

    async def delete(self, op: Op, timeout_s: float) -> Deleted:
        existed, ts, _ = await self._write("delete", op)
        return Deleted(deleted=existed, ts=ts)

    async def transact(self, ops: Sequence[Op], token: str, timeout_s: float) -> Committed:
        fault = self._fault("transact", (tuple(ops), token))
        validate_txn_ops(ops, txn_ops_max=self.txn_ops_max)
        fingerprint = txn_fingerprint(ops)
        seen = self._outcomes.get(token)
        if seen is None:
            seen = self._run(ops, token, fingerprint)
        elif seen.fingerprint != fingerprint:
            raise IdempotencyMismatch("the token was used with other ops", details={"token": token})
        if fault is not None:
            raise fault.error
        if seen.error is not None:
            raise seen.error
        assert seen.committed is not None
        return seen.committed

    def _run(self, ops: Sequence[Op], token: str, fingerprint: str) -> _Outcome:
        txn_id = f"{len(self._outcomes) + 1:032x}"
        stamp = self._tick()
        ts = str(stamp)
        record: dict[str, object] = {"token": token, "txn_id": txn_id, "ts": ts, "completed": True}
        reasons = [self._reason(op) for op in ops]
        outcome = _Outcome(fingerprint=fingerprint, record=record)
        if any(reason["code"] != "None" for reason in reasons):
            record.update(state="CANCELLED", reasons=reasons)
            outcome.error = TransactionCanceled(
                cancel_message(reasons),
                details={"txn_id": txn_id, "ts": ts, "reasons": reasons, "retryable": False},
            )
        else:
            results = [self._result(op) for op in ops]
            for op, result in zip(ops, results, strict=True):
                self._apply(op, result, stamp)
            record["state"] = "COMMITTED"
            outcome.committed = Committed(txn_id=txn_id, ts=ts)
        self._outcomes[token] = outcome
        return outcome

    async def read(
        self, keys: Sequence[str], timeout_s: float, at: Timestamp | None = None
    ) -> list[Item | None]:
        fault = self._fault("read", tuple(keys) if at is None else (tuple(keys), at))
        if at is None:
            items = [self._item(key) for key in keys]
        else:
            check_snapshot_at(at, self._tick(), self.now_us())
            items = [self._item_at(key, at) for key in keys]
        if fault is not None:
            raise fault.error
        return items

    async def scan(
        self,
        *,
        prefix: str | None,
        start: str | None,
        end: str | None,
        limit: int,
        cursor: str | None,
        timeout_s: float,
    ) -> ScanPage:
        self._fault("scan", (prefix, start, end, cursor))
        keys = sorted(
            key
            for key in self._items
            if key.startswith(prefix or "")
            and (start is None or key >= start)
            and (end is None or key < end)
            and (cursor is None or key > cursor)
        )
        page = keys[:limit]
        items = tuple(item for item in map(self._item, page) if item is not None)
        return ScanPage(items=items, cursor=page[-1] if len(keys) > limit else None)

    async def txn_outcome(self, token: str, timeout_s: float) -> dict[str, object] | None:
        self._fault("txn_outcome", token)
        seen = self._outcomes.get(token)
        return dict(seen.record) if seen is not None else None

    async def close(self) -> None:
        self.closed = True
