"""Client operations for the simulator, written as scripts, and how they are recorded.

Theory of operation
-------------------
A client operation is a generator (a *script*) that yields steps and returns a
:class:`Completion`. The client that runs it sends each step to a coordinator, which runs the
core production runs for it, and sends the result back in:

========================  ==========================================  ========================
step                      core (``kvstore.coordinator``)              result sent back
========================  ==========================================  ========================
:class:`Read`             ``read.new_read`` (conflict retries)        ``ReadResult``
:class:`Write`            ``core.new_write_txn`` (2PC / one round)    ``TxnResult``
:class:`Get`              ``singleton.new_get``                       ``CallResult[GetReply]``
:class:`Put`              ``singleton.new_singleton_write``           ``CallResult[WriteReply]``
:class:`ScanKeys`         ``scan.Scan`` (one page)                    ``ScanResult``
========================  ==========================================  ========================

An interactive transaction cancelled because what it read changed (or by conflicts) yields
:class:`Rerun` and, when the client allows it (the SDK's ``run`` policy), reads and writes again;
every attempt's transaction is known to the checker, and only the last one's reads are recorded.
If the coordinator is lost during a write step (``Write``, ``Put``) the operation becomes
``info`` (it may still take effect), during any other step ``fail`` (a read changes nothing).
The script's *invoke value* is recorded first, its completion last, in Jepsen form:

* **list-append**: transactions of ``["append", k, v]`` (unique ``v``, an ``update`` with
  ``append`` on attribute ``l``) and ``["r", k, list]``. Reads come from read-only transactions
  (two rounds, no timestamp), or from *interactive* transactions: a read, then a write
  transaction whose ops carry conditions on the versions read, so the reads hold at the write's
  commit timestamp (the SDK's interactive transactions, DESIGN section 6). A *checked read* is
  the write step made only of ``check`` ops: a read placed at a timestamp.
* **rw-register**: ``["w", k, v]`` puts of unique ``v``, ``["w", k, None]`` deletes, and reads
  of ``v`` or ``None``, in the same three shapes.
* Both also run **singletons**: a singleton write is a one-op write transaction
  ``[["append", k, v]]`` / ``[["w", k, v]]`` stamped with the node's timestamp, checked like any
  transaction; a get is recorded with ``f="get"`` as ``[["r", k, v]]``. And **scans**: one page
  over a range of the workload's keys, recorded with ``f="scan"`` as ``["r", k, v]`` for every key
  of the range the page covers (absent keys read as ``[]`` / ``None``). Neither is a snapshot
  taken at one instant of the transactions' order (a page reads each partition at its own
  instant, and both ignore pending intents), so before checking, :func:`unanchor_reads` turns
  each into single-key reads checked for serializability only (see there).
* **bank**: ``transfer`` (two ``add`` updates, the debit conditioned on ``bal >= amount``; run
  again, with a fresh token, when only conflicts cancelled it) and ``read`` of every account,
  recorded as ``{account: balance}``.

A committed write step completes ``ok`` with the commit ``ts`` and ``txn_id``; an error the
catalogue calls ambiguous (3xxx) completes ``info``; any other error ``fail``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from chaos.checkers.result import Anomaly
from chaos.history import History
from chaos.history import Op as HistoryOp
from kvstore.conditions import Compare, CompareOperator, Condition, Exists, VersionEquals
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.coordinator.scan import ScanResult
from kvstore.coordinator.singleton import CallResult
from kvstore.errors import ErrorCode
from kvstore.limits import READ_KEYS_MAX
from kvstore.messages import GetReply, ItemView, ReadEntry, ReasonCode, WriteReply
from kvstore.ops import Op, OpKind
from kvstore.types import Timestamp, TxnId
from kvstore.updates import ActionKind, UpdateAction

__all__ = [
    "Read",
    "Write",
    "Get",
    "Put",
    "ScanKeys",
    "Rerun",
    "Step",
    "Completion",
    "Script",
    "Workload",
    "SetInserts",
    "make_workload",
    "unanchor_reads",
    "stale_own_gets",
]


@dataclass(frozen=True)
class Read:
    keys: list[str]


@dataclass(frozen=True)
class Write:
    ops: list[Op]
    token: str | None = None  # idempotency token: ambiguous answers are retried with it


@dataclass(frozen=True)
class Get:
    key: str


@dataclass(frozen=True)
class Put:
    """A singleton write (put, delete or update) at the owning node's timestamp."""

    op: Op


@dataclass(frozen=True)
class ScanKeys:
    start: str
    end: str | None
    limit: int


@dataclass(frozen=True)
class Rerun:
    """Ask to run an interactive transaction again after a conflict (the SDK's ``run``): the
    client answers True after the SDK's backoff, or False when its attempts are spent."""


Step = Read | Write | Get | Put | ScanKeys | Rerun


@dataclass(frozen=True)
class Completion:
    type: str  # ok | fail | info
    value: Any
    ts: tuple[int, ...] | None = None
    txn_id: TxnId | None = None
    error: str | None = None


TOKEN_SHARE = 0.5

Script = Generator[Step, Any, Completion]


def write_completion(result: TxnResult, value: Any) -> Completion:
    """How a write step's result is recorded."""
    if result.committed:
        return Completion("ok", value, ts=tuple(result.ts), txn_id=result.txn_id)
    error = result.error or ErrorCode.TransactionCanceled
    kind = "info" if error.ambiguous else "fail"
    return Completion(kind, value, txn_id=result.txn_id, error=error.name)


def singleton_completion(result: CallResult[WriteReply], value: Any) -> Completion:
    """How a singleton write's result is recorded: applied (ok, the node's ts), a refusal
    (fail: nothing was applied), or a call that may have run (info)."""
    reply = result.reply
    if reply is not None:
        if reply.outcome.code is ReasonCode.NONE and reply.ts is not None:
            return Completion("ok", value, ts=tuple(reply.ts))
        return Completion("fail", value, error=reply.outcome.code.value)
    error = result.error or ErrorCode.InternalError
    return Completion("info" if error.ambiguous else "fail", value, error=error.name)


def version_condition(entry: ReadEntry) -> Condition:
    """The condition that holds exactly while ``entry``'s read is still current."""
    return VersionEquals(entry.version) if entry.exists else Exists(False)


class Workload:
    """Generates scripts for one workload and knows how to read its values."""

    name = ""

    def __init__(self, keys: int, *, every_kind: bool = False) -> None:
        """``every_kind``: also singletons, scans and SDK re-runs (the simulator's clients run
        them; the real-process runner sends only read and write transactions)."""
        self.keys = [f"{self.prefix}{i}" for i in range(keys)]
        self.every_kind = every_kind
        self._next_value = 0

    prefix = "k"

    def unique(self) -> int:
        self._next_value += 1
        return self._next_value

    def script(self, rng: random.Random) -> tuple[str, Any, Script]:
        """``(f, invoke value, script)`` for the next operation."""
        raise NotImplementedError

    def final_scripts(self) -> list[tuple[str, Any, Script]]:
        raise NotImplementedError

    def setup_ops(self) -> list[Op]:
        """Items to write before the run starts (outside the history)."""
        return []

    def read_value(self, entry: ReadEntry) -> Any:
        raise NotImplementedError

    # --- shapes shared by list-append and rw-register ------------------------------------

    def _sample(self, rng: random.Random, low: int, high: int) -> list[str]:
        return rng.sample(self.keys, rng.randint(low, min(high, len(self.keys))))

    def _write_op(self, key: str, mop_value: Any, condition: Condition | None) -> Op:
        raise NotImplementedError

    def _mop(self, key: str, rng: random.Random) -> list[Any]:
        raise NotImplementedError

    def _read_only(self, keys: list[str]) -> tuple[str, Any, Script]:
        invoke = [["r", k, None] for k in keys]

        def run() -> Script:
            result: ReadResult = yield Read(keys)
            if result.error is not None:
                return Completion("fail", invoke, error=result.error.name)
            return Completion("ok", [["r", e.key, self.read_value(e)] for e in result.items])

        return "txn", invoke, run()

    def token(self, rng: random.Random) -> str | None:
        """A fresh idempotency token for about half of the write transactions."""
        return f"tok-{self.unique()}" if rng.random() < TOKEN_SHARE else None

    def _blind_write(self, mops: list[list[Any]], token: str | None) -> tuple[str, Any, Script]:
        def run() -> Script:
            ops = [self._write_op(k, v, None) for _, k, v in mops]
            result: TxnResult = yield Write(ops, token)
            return write_completion(result, mops)

        return "txn", mops, run()

    def _interactive(self, read_keys: list[str], mops: list[list[Any]]) -> tuple[str, Any, Script]:
        """Read ``read_keys``, then write ``mops`` conditioned on every version read."""
        invoke = [["r", k, None] for k in read_keys] + mops

        def run() -> Script:
            while True:
                read: ReadResult = yield Read(read_keys)
                if read.error is not None:
                    return Completion("fail", invoke, error=read.error.name)
                seen = {e.key: e for e in read.items}
                written = {k for _, k, _ in mops}
                ops = [
                    Op(kind=OpKind.CHECK, key=k, condition=version_condition(seen[k]))
                    for k in read_keys
                    if k not in written
                ]
                ops += [self._write_op(k, v, _maybe(seen.get(k))) for _, k, v in mops]
                value = [["r", e.key, self.read_value(e)] for e in read.items] + mops
                result: TxnResult = yield Write(ops)
                done = write_completion(result, value)
                if not self.every_kind or not _conflicted(result, stale=_STALE_READ):
                    return done
                again: bool = yield Rerun()
                if not again:
                    return done

        return "txn", invoke, run()

    def _generic(self, rng: random.Random) -> tuple[str, Any, Script]:
        roll = rng.random() * (1.0 if self.every_kind else 0.56)
        if roll < 0.2:
            keys = self._sample(rng, 1, 3)
            return self._blind_write([self._mop(k, rng) for k in keys], self.token(rng))
        if roll < 0.32:
            return self._read_only(self._sample(rng, 1, 4))
        if roll < 0.42:
            return self._interactive(self._sample(rng, 1, 3), [])
        if roll < 0.56:
            read_keys = self._sample(rng, 1, 2)
            write_keys = self._sample(rng, 1, 2)
            return self._interactive(read_keys, [self._mop(k, rng) for k in write_keys])
        if roll < 0.74:
            return self._singleton(self._mop(rng.choice(self.keys), rng))
        if roll < 0.92:
            return self._get(rng.choice(self.keys))
        return self._scan(rng)

    def item_value(self, item: ItemView | None) -> Any:
        """A committed item as recorded (``None``: absent)."""
        if item is None:
            return self.read_value(
                ReadEntry(key="", exists=False, value=None, version=0, ts=_NO_TS, pending=False)
            )
        return self.read_value(
            ReadEntry(
                key=item.key,
                exists=True,
                value=item.value,
                version=item.version,
                ts=item.ts,
                pending=False,
            )
        )

    def _get(self, key: str) -> tuple[str, Any, Script]:
        invoke = [["r", key, None]]

        def run() -> Script:
            result: CallResult[GetReply] = yield Get(key)
            if result.reply is None:
                error = result.error or ErrorCode.InternalError
                return Completion("fail", invoke, error=error.name)
            item = result.reply.item
            ts = None if item is None else tuple(item.ts)  # for read-your-writes (own_gets)
            return Completion("ok", [["r", key, self.item_value(item)]], ts=ts)

        return "get", invoke, run()

    def _singleton(self, mop: list[Any]) -> tuple[str, Any, Script]:
        _, key, value = mop

        def run() -> Script:
            result: CallResult[WriteReply] = yield Put(self._write_op(key, value, None))
            return singleton_completion(result, [mop])

        return "txn", [mop], run()

    def _scan(self, rng: random.Random) -> tuple[str, Any, Script]:
        """One page from a random key on, of a random size: every key of the range it covers
        is read (present or absent)."""
        keys = sorted(self.keys)
        first = rng.randrange(len(keys))
        start = keys[first]
        end = (
            keys[rng.randrange(first + 1, len(keys))]
            if rng.random() < 0.5 and first + 1 < len(keys)
            else None
        )
        in_range = [k for k in keys if k >= start and (end is None or k < end)]
        limit = rng.randint(1, len(keys))
        invoke = [["r", k, None] for k in in_range]

        def run() -> Script:
            result: ScanResult = yield ScanKeys(start, end, limit)
            page = result.page
            if page is None:
                error = result.error or ErrorCode.InternalError
                return Completion("fail", invoke, error=error.name)
            found = {item.key: item for item in page.items}
            covered = [k for k in in_range if page.after is None or k <= page.after]
            return Completion("ok", [["r", k, self.item_value(found.get(k))] for k in covered])

        return "scan", invoke, run()

    def _finals(self) -> list[tuple[str, Any, Script]]:
        return [self._read_only(list(self.keys)), self._interactive(list(self.keys), [])]


_NO_TS = Timestamp(0, 0, 0)
_CONFLICTS = frozenset({ReasonCode.TRANSACTION_CONFLICT, ReasonCode.TIMESTAMP_TOO_OLD})
_STALE_READ = frozenset({ReasonCode.CONDITION_FAILED})


def _conflicted(result: TxnResult, stale: frozenset[ReasonCode]) -> bool:
    """Cancelled only by conflicts, or by conditions in ``stale`` (an interactive transaction's
    conditions are all version checks of what it read: a failed one means a stale read). The
    SDK's ``run`` runs such a transaction again; any other cancellation is the answer."""
    if result.error is not ErrorCode.TransactionCanceled:
        return False
    failed = {o.code for o in result.outcomes} - {ReasonCode.NONE}
    return bool(failed) and failed <= _CONFLICTS | stale


def _maybe(entry: ReadEntry | None) -> Condition | None:
    return None if entry is None else version_condition(entry)


class ListAppend(Workload):
    name = "list-append"

    def read_value(self, entry: ReadEntry) -> Any:
        if not entry.exists or not isinstance(entry.value, dict):
            return []
        items = entry.value.get("l", [])
        return list(items) if isinstance(items, list) else items

    def _mop(self, key: str, rng: random.Random) -> list[Any]:
        return ["append", key, self.unique()]

    def _write_op(self, key: str, mop_value: Any, condition: Condition | None) -> Op:
        action = UpdateAction(ActionKind.APPEND, ("l",), [mop_value])
        return Op(kind=OpKind.UPDATE, key=key, actions=(action,), condition=condition)

    def script(self, rng: random.Random) -> tuple[str, Any, Script]:
        return self._generic(rng)

    def final_scripts(self) -> list[tuple[str, Any, Script]]:
        return self._finals()


class Register(Workload):
    name = "rw-register"

    def read_value(self, entry: ReadEntry) -> Any:
        if not entry.exists or not isinstance(entry.value, dict):
            return None
        return entry.value.get("v")

    def _mop(self, key: str, rng: random.Random) -> list[Any]:
        return ["w", key, None if rng.random() < 0.2 else self.unique()]

    def _write_op(self, key: str, mop_value: Any, condition: Condition | None) -> Op:
        if mop_value is None:
            return Op(kind=OpKind.DELETE, key=key, condition=condition)
        return Op(kind=OpKind.PUT, key=key, value={"v": mop_value}, condition=condition)

    def script(self, rng: random.Random) -> tuple[str, Any, Script]:
        return self._generic(rng)

    def final_scripts(self) -> list[tuple[str, Any, Script]]:
        return self._finals()


class Bank(Workload):
    name = "bank"
    prefix = "acct"

    def __init__(self, keys: int, total: int, *, every_kind: bool = False) -> None:
        super().__init__(keys, every_kind=every_kind)
        self.total = total

    def setup_ops(self) -> list[Op]:
        share, rest = divmod(self.total, len(self.keys))
        return [
            Op(kind=OpKind.PUT, key=k, value={"bal": share + (rest if i == 0 else 0)})
            for i, k in enumerate(self.keys)
        ]

    def read_value(self, entry: ReadEntry) -> Any:
        if not entry.exists or not isinstance(entry.value, dict):
            return None
        return entry.value.get("bal")

    def _read_all(self) -> tuple[str, Any, Script]:
        keys = list(self.keys)

        def run() -> Script:
            result: ReadResult = yield Read(keys)
            if result.error is not None:
                return Completion("fail", None, error=result.error.name)
            return Completion("ok", {e.key: self.read_value(e) for e in result.items})

        return "read", None, run()

    def _transfer(self, rng: random.Random) -> tuple[str, Any, Script]:
        source, target = rng.sample(self.keys, 2)
        token = self.token(rng)
        amount = rng.randint(1, max(1, self.total // len(self.keys) // 3))
        value = {"from": source, "to": target, "amount": amount}

        def run() -> Script:
            debit = Op(
                kind=OpKind.UPDATE,
                key=source,
                actions=(UpdateAction(ActionKind.ADD, ("bal",), -amount),),
                condition=Compare(("bal",), CompareOperator.GE, amount),
            )
            credit = Op(
                kind=OpKind.UPDATE,
                key=target,
                actions=(UpdateAction(ActionKind.ADD, ("bal",), amount),),
                condition=Exists(True),
            )
            attempt_token = token
            while True:
                result: TxnResult = yield Write([debit, credit], attempt_token)
                done = write_completion(result, value)
                if not self.every_kind or not _conflicted(result, stale=frozenset()):
                    return done
                again: bool = yield Rerun()
                if not again:
                    return done
                if token is not None:  # a new transaction: its own token (as the SDK draws)
                    attempt_token = f"tok-{self.unique()}"

        return "transfer", value, run()

    def script(self, rng: random.Random) -> tuple[str, Any, Script]:
        return self._read_all() if rng.random() < 0.3 else self._transfer(rng)

    def final_scripts(self) -> list[tuple[str, Any, Script]]:
        return [self._read_all()]


def make_workload(name: str, keys: int, bank_total: int, *, every_kind: bool = False) -> Workload:
    """The workload ``name``; ``every_kind`` adds singletons, scans and re-runs (simulator)."""
    if name == "list-append":
        return ListAppend(keys, every_kind=every_kind)
    if name == "rw-register":
        return Register(keys, every_kind=every_kind)
    if name == "bank":
        return Bank(keys, bank_total, every_kind=every_kind)
    if name == "set":
        return SetInserts()
    raise ValueError(f"unknown workload {name!r}")


class SetInserts(Workload):
    """``add`` of unique elements (a put of its own key ``set/<n>``), then final reads of every
    key ever attempted, in read-only transactions of at most ``READ_KEYS_MAX`` keys. Checked by
    :mod:`chaos.checkers.sets` (no acknowledged insert lost). Real runs only: the simulator's
    sweep does not draw it."""

    name = "set"
    prefix = "set/"

    def __init__(self) -> None:
        super().__init__(0)
        self.attempted: list[str] = []

    def read_value(self, entry: ReadEntry) -> Any:
        return entry.exists

    def script(self, rng: random.Random) -> tuple[str, Any, Script]:
        element = self.unique()
        key = f"{self.prefix}{element}"
        self.attempted.append(key)
        token = self.token(rng)

        def run() -> Script:
            put = Op(kind=OpKind.PUT, key=key, value={"e": element})
            result: TxnResult = yield Write([put], token)
            return write_completion(result, element)

        return "add", element, run()

    def final_scripts(self) -> list[tuple[str, Any, Script]]:
        chunks = [
            self.attempted[i : i + READ_KEYS_MAX]
            for i in range(0, len(self.attempted), READ_KEYS_MAX)
        ]
        return [self._read_present(chunk) for chunk in chunks]

    def _read_present(self, keys: list[str]) -> tuple[str, Any, Script]:
        def run() -> Script:
            result: ReadResult = yield Read(keys)
            if result.error is not None:
                return Completion("fail", None, error=result.error.name)
            present = [int(e.key[len(self.prefix) :]) for e in result.items if e.exists]
            return Completion("ok", sorted(present))

        return "read", None, run()


_WRITE_MOPS = frozenset({"append", "w"})


def stale_own_gets(history: History, *, unapplied: frozenset[int] = frozenset()) -> list[Anomaly]:
    """Read-your-writes for gets (DESIGN section 6, rule 6): a process's get of a key must return
    an item written at or after the commit ``ts`` of that process's own last acknowledged write
    of the key. A get carries its item's ``ts`` (absent items carry none and are not checked: a
    later delete by another process may have removed the item). The other checkers cannot see
    this: :func:`unanchor_reads` frees gets of every session and real-time edge.

    ``unapplied``: completions (indexes) of writes the client learned were committed from a
    token lookup of a ledger record whose participants had not all applied it yet (the record's
    ``completed`` is unset: rule 6 is the commit answer's, which waits for every participant;
    a lookup says only that the transaction committed). They do not count as the process's
    own acknowledged writes here (found by seed 439 once it took a backup)."""
    own: dict[tuple[int, str], tuple[int, ...]] = {}  # (process, key) -> its last write's ts
    found: list[Anomaly] = []
    for op in history.ops:
        if op.type != "ok" or op.ts is None or not isinstance(op.value, list):
            continue
        if op.f == "get":
            for _, key, _ in op.value:
                wrote = own.get((op.process, key))
                if wrote is not None and op.ts < wrote:
                    found.append(
                        Anomaly(
                            "stale-own-read",
                            f"op {op.index}: process {op.process}'s get of {key!r} returned the "
                            f"item of ts {list(op.ts)}, older than its own write at {list(wrote)}",
                            (op,),
                        )
                    )
        elif op.f == "txn" and op.index not in unapplied:
            for mop in op.value:
                if isinstance(mop, list) and len(mop) == 3 and mop[0] in _WRITE_MOPS:
                    own[(op.process, mop[1])] = op.ts
    return found


def unanchor_reads(history: History) -> History:
    """``history`` as the checkers take it: every ``get`` and ``scan`` turned into single-key
    ``txn`` reads that claim no real-time or process order.

    A scan page reads each partition at its own instant, so its keys must not be checked as one
    snapshot: each key becomes its own read-only transaction (a key the page did not cover, or
    any key of a failed scan, a ``fail`` read: nothing was observed). And a get, like each
    partition's part of a scan, returns the last *applied* value without looking at intents
    (DESIGN section 5): a transaction already decided and visible on one partition may still be
    pending on another, so two such reads, one after the other, may see it and then not (found
    by seed 150 of the first sweep with gets). They are serializable, not strictly
    serializable. So every such read is invoked before the first event of the history and
    completed after the last, on a process of its own: it is checked against every other
    transaction for serializability (Elle's cycles, aborted and intermediate reads, the
    incompatible orders of list-append), with no real-time or session edge.
    """
    floating = {"get", "scan"}
    if not any(op.f in floating for op in history.ops):
        return history
    next_process = max(op.process for op in history.ops) + 1
    first_ns = history.ops[0].time_ns
    last_ns = history.ops[-1].time_ns
    invokes: dict[int, HistoryOp] = {}  # process -> its outstanding get or scan
    front: list[HistoryOp] = []
    middle: list[HistoryOp] = []
    back: list[HistoryOp] = []
    for op in history.ops:
        if op.f not in floating:
            middle.append(op)
            continue
        if op.type == "invoke":
            invokes[op.process] = op
            continue
        invoke = invokes.pop(op.process)
        read = {k: v for _, k, v in op.value} if op.type == "ok" else {}
        for _, key, _ in invoke.value:
            mop = [["r", key, None]]
            front.append(
                dataclasses.replace(
                    invoke, process=next_process, time_ns=first_ns, f="txn", value=mop
                )
            )
            if key in read:
                done = dataclasses.replace(
                    op,
                    process=next_process,
                    time_ns=last_ns,
                    f="txn",
                    value=[["r", key, read[key]]],
                    ts=None,
                )
            else:
                done = dataclasses.replace(
                    op,
                    type="fail",
                    process=next_process,
                    time_ns=last_ns,
                    f="txn",
                    value=mop,
                    error=op.error or "not covered by the page",
                    ts=None,
                )
            back.append(done)
            next_process += 1
    ops = [dataclasses.replace(op, index=i) for i, op in enumerate([*front, *middle, *back])]
    return History.from_ops(ops)
