"""Interactive transactions: read, decide, write, and commit it all as one transaction.

Theory of operation
-------------------
The store has one-shot transactions (a list of ops with conditions, all or nothing) and
snapshot reads. An interactive :class:`Transaction` builds a one-shot transaction out of what
its code did, optimistically:

* ``await tx.get(key)`` reads the committed item (the client's ``get``) and remembers what it
  saw: ``(exists, version)``. A key read twice returns the first answer (repeatable reads). A
  key the transaction itself wrote reads back as written (read-your-writes): a put's value, None
  after a delete, an update applied to the item read (read first when it was not), with no
  version or timestamp yet (:data:`~kvstore.client.results.UNCOMMITTED_VERSION`, ``ts == ""``).
* ``tx.put`` / ``tx.delete`` / ``tx.update`` / ``tx.check`` only record. A key is written once:
  a second put or delete replaces the first; an update after a put or delete is folded into it
  (computed here with the store's own :func:`kvstore.ops.apply_op`); an update after an update
  is refused (combine them). Conditions given to a key's ops, checks included, are ANDed; they
  are evaluated on the committed item at commit time, not on the transaction's own writes.
* On commit, :func:`commit_plan` turns that into one transaction. Every key that was read gets
  an implicit condition that it is still as read: ``{"version": v}`` when it existed,
  ``{"exists": false}`` when absent. A written key carries it ANDed with its own conditions; a
  key read and not written gets a ``check`` op with it. Versions never repeat, so the commit
  succeeds only if nothing the transaction read has changed since: the transaction is
  serializable at its commit timestamp. Ops come in the order their keys were first written
  (the first one anchors the transaction and its token), then the read-only checks.
* A transaction that only read (no write, no check) sends no write transaction but still
  validates its reads: with two or more keys read, one snapshot read (the client's ``read``, a
  read-only transaction: no writes, no ledger record) must show every key as it was read, and
  then every read is what the store held at that snapshot's instant; one key read alone is its
  own snapshot. Check ops would also do, but they are a write transaction on every partition
  read (2PC, a ledger record, read timestamps raised on the items): dearer, and they delay
  writers.

A commit cancelled because something it read changed raises
:class:`~kvstore.errors.TransactionConflict` (retryable: run it again on fresh reads) rather
than ``TransactionCanceled``. A read changed when an op carrying only the implicit condition
failed it, or when an op carrying both (which asks for the current item with ``return_item``)
failed and the current item is not as read. When anything read changed, every other reason is
moot, since the code decided on stale data, so that is a conflict whatever else failed. A
cancellation whose failed reasons are all ``TransactionConflict`` / ``TimestampTooOld`` is a
conflict too. Otherwise (a condition of the code's own failed on data it saw as current, a
validation failure) the ``TransactionCanceled`` is raised as is. The conflict carries the
reasons, ``stale_keys``, ``txn_id`` and ``ts`` in its details.

Leaving ``async with kv.transaction() as tx`` normally commits; leaving it with an exception
discards everything (nothing was sent). :meth:`~kvstore.client.client.Client.run` wraps this in
a retry loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from kvstore.client.builders import Check, Delete, JsonCondition, Put, Update
from kvstore.client.results import UNCOMMITTED_VERSION, Committed, Item
from kvstore.client.typed import checker, to_value, typed_item
from kvstore.coordinator.answers import value_to_json
from kvstore.errors import KvError, TransactionCanceled, TransactionConflict, ValidationError
from kvstore.ops import apply_op, op_from_json, ops_from_json
from kvstore.types import Value, ValueInput
from kvstore.values import validate_key

if TYPE_CHECKING:
    from kvstore.client.client import Client

__all__ = ["ReadMark", "PlannedOp", "CommitPlan", "commit_plan", "Transaction"]

V = TypeVar("V")

_RETRYABLE_REASONS = frozenset({"TransactionConflict", "TimestampTooOld"})


@dataclass(frozen=True, slots=True)
class ReadMark:
    """What a transaction saw of a key: whether it existed, and its version if so."""

    exists: bool
    version: int = 0

    def condition(self) -> dict[str, object]:
        """The condition that holds exactly while the key is as seen."""
        return {"version": self.version} if self.exists else {"exists": False}

    def matches(self, item: Mapping[str, object] | Item[Any] | None) -> bool:
        """Whether ``item`` (an Item, its JSON form, or None for absent) is as seen."""
        if item is None:
            return not self.exists
        version = item.version if isinstance(item, Item) else item.get("version")
        return self.exists and version == self.version


@dataclass(slots=True)
class _Entry:
    """One key's pending op: its write (JSON form, no condition) and its own conditions."""

    write: dict[str, object] | None = None
    conditions: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PlannedOp:
    """One op of a commit and why it is there."""

    op: dict[str, object]
    mark: ReadMark | None  # the implicit read condition it carries, if any
    own_conditions: bool  # it also carries conditions the code gave


@dataclass(frozen=True, slots=True)
class CommitPlan:
    ops: tuple[PlannedOp, ...]

    def ops_json(self) -> list[dict[str, object]]:
        return [planned.op for planned in self.ops]

    def stale_keys(self, reasons: Sequence[Mapping[str, object]]) -> list[str]:
        """The keys whose implicit read condition failed, by the cancelled commit's reasons."""
        stale: list[str] = []
        for planned, reason in zip(self.ops, reasons, strict=False):
            if reason.get("code") != "ConditionFailed" or planned.mark is None:
                continue
            item = reason.get("item")
            if not planned.own_conditions or not planned.mark.matches(
                item if isinstance(item, Mapping) else None
            ):
                stale.append(str(planned.op["key"]))
        return stale


def _pending(key: str, value: object) -> Item:
    """A value this transaction wrote, read back before it commits."""
    return Item(
        key=key, value=value_to_json(cast(Value, value)), version=UNCOMMITTED_VERSION, ts=""
    )


def _and(conditions: list[dict[str, object]]) -> dict[str, object]:
    return conditions[0] if len(conditions) == 1 else {"all": conditions}


def commit_plan(reads: Mapping[str, ReadMark], entries: Mapping[str, _Entry]) -> CommitPlan:
    """The one transaction a transaction's reads and ops commit as (see the module)."""
    planned: list[PlannedOp] = []
    for key, entry in entries.items():
        mark = reads.get(key)
        conditions = ([mark.condition()] if mark is not None else []) + entry.conditions
        op: dict[str, object] = {"op": "check", "key": key}
        if entry.write is not None:
            op = dict(entry.write)
        if conditions:
            op["if"] = _and(conditions)
        own = bool(entry.conditions)
        if mark is not None and own:
            op["return_item"] = True  # to tell a stale read from a failed own condition
        planned.append(PlannedOp(op=op, mark=mark, own_conditions=own))
    for key, mark in reads.items():
        if key not in entries:
            check: dict[str, object] = {"op": "check", "key": key, "if": mark.condition()}
            planned.append(PlannedOp(op=check, mark=mark, own_conditions=False))
    return CommitPlan(ops=tuple(planned))


def _conflict(plan: CommitPlan, error: KvError) -> KvError:
    """The error a cancelled commit raises: a conflict or the cancellation itself."""
    found = error.details.get("reasons")
    reasons = [r for r in found if isinstance(r, Mapping)] if isinstance(found, list) else []
    stale = plan.stale_keys(reasons)
    failed = {str(reason.get("code")) for reason in reasons} - {"None"}
    if not stale and not (failed and failed <= _RETRYABLE_REASONS):
        return error
    what = f"read keys changed: {', '.join(repr(k) for k in stale[:3])}" if stale else error.message
    return TransactionConflict(
        f"the transaction conflicted ({what}); run it again",
        details={**error.details, "stale_keys": stale, "retryable": True},
    )


class Transaction:
    """An interactive transaction of ``client`` (see the module)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._reads: dict[str, ReadMark] = {}
        self._read_items: dict[str, Item | None] = {}
        self._entries: dict[str, _Entry] = {}
        self._done = False
        self.committed: Committed | None = None

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.commit()
        else:
            self.discard()

    def _check_open(self) -> None:
        if self._done:
            raise ValidationError("transaction", "already committed or discarded")

    # --- reads ----------------------------------------------------------------------------

    async def _read(self, key: str) -> Item | None:
        if key in self._read_items:
            return self._read_items[key]
        item = await self._client.get(key)
        self._read_items[key] = item
        self._reads[key] = ReadMark(True, item.version) if item is not None else ReadMark(False)
        return item

    @overload
    async def get(self, key: str) -> Item | None: ...
    @overload
    async def get(self, key: str, value_type: type[V]) -> Item[V] | None: ...
    async def get(self, key: str, value_type: type[Any] | None = None) -> Item[Any] | None:
        """The item at ``key`` as this transaction sees it (see the module); ``value_type`` as
        for :meth:`Client.get <kvstore.client.client.Client.get>` (its own writes are checked
        too)."""
        self._check_open()
        validate_key(key)
        if value_type is not None:
            checker(value_type)
        item = await self._get(key)
        return item if value_type is None else typed_item(item, value_type)

    async def _get(self, key: str) -> Item | None:
        entry = self._entries.get(key)
        write = entry.write if entry is not None else None
        if write is None:
            return await self._read(key)
        if write["op"] == "put":
            return _pending(key, write["value"])
        if write["op"] == "delete":
            return None
        base = await self._read(key)
        exists, value = apply_op(
            op_from_json(write),
            exists=base is not None,
            value=cast(Value, base.value) if base is not None else None,
        )
        return _pending(key, value) if exists else None

    # --- writes ---------------------------------------------------------------------------

    def _entry(self, key: str) -> _Entry:
        self._check_open()
        return self._entries.setdefault(key, _Entry())

    def _record(self, key: str, write: dict[str, object], if_: JsonCondition | None) -> None:
        entry = self._entry(key)
        entry.write = write
        if if_ is not None:
            entry.conditions.append(dict(if_))

    def put(self, key: str, value: ValueInput, *, if_: JsonCondition | None = None) -> None:
        """Write ``value`` at ``key`` when the transaction commits."""
        plain = to_value(value)
        Put(key, plain, if_)  # validates
        self._record(key, {"op": "put", "key": key, "value": plain}, if_)

    def delete(self, key: str, *, if_: JsonCondition | None = None) -> None:
        """Delete ``key`` when the transaction commits."""
        Delete(key, if_)
        self._record(key, {"op": "delete", "key": key}, if_)

    def update(
        self,
        key: str,
        *,
        set: Mapping[str, ValueInput] | None = None,  # the API's member name, hence the builtin's
        remove: Sequence[str] | None = None,
        add: Mapping[str, int | float] | None = None,
        append: Mapping[str, Sequence[ValueInput]] | None = None,
        if_: JsonCondition | None = None,
    ) -> None:
        """Apply update actions to ``key`` when the transaction commits (see the module)."""
        built = Update(key, set=set, remove=remove, add=add, append=append)
        if_ = dict(if_) if if_ is not None else None
        if if_ is not None:
            Check(key, if_)  # validates the condition
        entry = self._entry(key)
        previous = entry.write
        if previous is None:
            self._record(key, built.to_json(), if_)
            return
        if previous["op"] == "update":
            raise ValidationError(
                "update", f"key {key!r} is already updated in this transaction; combine them"
            )
        exists, value = apply_op(
            op_from_json(built.to_json()),
            exists=previous["op"] == "put",
            value=cast(Value, previous.get("value")),  # validated when it was recorded
        )
        write: dict[str, object] = {"op": "put", "key": key, "value": value}
        self._record(key, write if exists else {"op": "delete", "key": key}, if_)

    def check(self, key: str, if_: JsonCondition) -> None:
        """Commit only if ``if_`` holds on ``key`` at commit time."""
        Check(key, if_)
        self._entry(key).conditions.append(dict(if_))

    # --- the end --------------------------------------------------------------------------

    def plan(self) -> CommitPlan:
        """What :meth:`commit` would send."""
        return commit_plan(self._reads, self._entries)

    def discard(self) -> None:
        """Drop everything; nothing was sent and nothing will be."""
        self._done = True

    async def commit(self) -> Committed | None:
        """Commit as one transaction (see the module); None when there was nothing to write.
        A second call returns the first's answer."""
        if self._done:
            return self.committed
        self._done = True
        if not self._entries:  # it only read: validate the reads, send no write transaction
            await self._validate_reads()
            return None
        plan = self.plan()
        ops = ops_from_json(plan.ops_json(), txn_ops_max=self._client.backend.txn_ops_max)
        try:
            self.committed = await self._client.transact_ops(ops)
        except TransactionCanceled as error:
            raise _conflict(plan, error) from None
        return self.committed

    async def _validate_reads(self) -> None:
        if len(self._reads) < 2:
            return
        keys = list(self._reads)
        items = await self._client.read(keys)
        stale = [
            key for key, item in zip(keys, items, strict=True) if not self._reads[key].matches(item)
        ]
        if stale:
            raise TransactionConflict(
                f"read keys changed: {', '.join(repr(k) for k in stale[:3])}; run it again",
                details={"stale_keys": stale, "retryable": True},
            )
