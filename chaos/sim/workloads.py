"""Client operations for the simulator, written as scripts, and how they are recorded.

Theory of operation
-------------------
A client operation is a generator (a *script*) that yields :class:`Read` and :class:`Write` steps
and returns a :class:`Completion`. The client that runs it sends each step to a coordinator and
sends the result back in; if the coordinator is lost during a ``Write`` step the operation becomes
``info`` (it may still commit), during a ``Read`` step ``fail`` (a read changes nothing). The
script's *invoke value* is recorded first, its completion last, in Jepsen form:

* **list-append**: transactions of ``["append", k, v]`` (unique ``v``, an ``update`` with
  ``append`` on attribute ``l``) and ``["r", k, list]``. Reads come from read-only transactions
  (two rounds, no timestamp), or from *interactive* transactions: a read, then a write
  transaction whose ops carry conditions on the versions read, so the reads hold at the write's
  commit timestamp (the SDK's interactive transactions, DESIGN section 6). A *checked read* is
  the write step made only of ``check`` ops: a read placed at a timestamp.
* **rw-register**: ``["w", k, v]`` puts of unique ``v``, ``["w", k, None]`` deletes, and reads
  of ``v`` or ``None``, in the same three shapes.
* **bank**: ``transfer`` (two ``add`` updates, the debit conditioned on ``bal >= amount``) and
  ``read`` of every account, recorded as ``{account: balance}``.

A committed write step completes ``ok`` with the commit ``ts`` and ``txn_id``; an error the
catalogue calls ambiguous (3xxx) completes ``info``; any other error ``fail``.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from kvstore.conditions import Compare, CompareOperator, Condition, Exists, VersionEquals
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.errors import ErrorCode
from kvstore.limits import READ_KEYS_MAX
from kvstore.messages import ReadEntry
from kvstore.ops import Op, OpKind
from kvstore.types import TxnId
from kvstore.updates import ActionKind, UpdateAction

__all__ = [
    "Read",
    "Write",
    "Completion",
    "Script",
    "Workload",
    "SetInserts",
    "make_workload",
]


@dataclass(frozen=True)
class Read:
    keys: list[str]


@dataclass(frozen=True)
class Write:
    ops: list[Op]
    token: str | None = None  # idempotency token: ambiguous answers are retried with it


@dataclass(frozen=True)
class Completion:
    type: str  # ok | fail | info
    value: Any
    ts: tuple[int, ...] | None = None
    txn_id: TxnId | None = None
    error: str | None = None


TOKEN_SHARE = 0.5

Script = Generator[Read | Write, Any, Completion]


def write_completion(result: TxnResult, value: Any) -> Completion:
    """How a write step's result is recorded."""
    if result.committed:
        return Completion("ok", value, ts=tuple(result.ts), txn_id=result.txn_id)
    error = result.error or ErrorCode.TransactionCanceled
    kind = "info" if error.ambiguous else "fail"
    return Completion(kind, value, txn_id=result.txn_id, error=error.name)


def version_condition(entry: ReadEntry) -> Condition:
    """The condition that holds exactly while ``entry``'s read is still current."""
    return VersionEquals(entry.version) if entry.exists else Exists(False)


class Workload:
    """Generates scripts for one workload and knows how to read its values."""

    name = ""

    def __init__(self, keys: int) -> None:
        self.keys = [f"{self.prefix}{i}" for i in range(keys)]
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
            return write_completion(result, value)

        return "txn", invoke, run()

    def _generic(self, rng: random.Random) -> tuple[str, Any, Script]:
        roll = rng.random()
        if roll < 0.35:
            keys = self._sample(rng, 1, 3)
            return self._blind_write([self._mop(k, rng) for k in keys], self.token(rng))
        if roll < 0.6:
            return self._read_only(self._sample(rng, 1, 4))
        if roll < 0.8:
            return self._interactive(self._sample(rng, 1, 3), [])
        read_keys = self._sample(rng, 1, 2)
        write_keys = self._sample(rng, 1, 2)
        return self._interactive(read_keys, [self._mop(k, rng) for k in write_keys])

    def _finals(self) -> list[tuple[str, Any, Script]]:
        return [self._read_only(list(self.keys)), self._interactive(list(self.keys), [])]


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

    def __init__(self, keys: int, total: int) -> None:
        super().__init__(keys)
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
        amount = rng.randint(1, max(1, self.total // len(self.keys)))
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
            result: TxnResult = yield Write([debit, credit], token)
            return write_completion(result, value)

        return "transfer", value, run()

    def script(self, rng: random.Random) -> tuple[str, Any, Script]:
        return self._read_all() if rng.random() < 0.4 else self._transfer(rng)

    def final_scripts(self) -> list[tuple[str, Any, Script]]:
        return [self._read_all()]


def make_workload(name: str, keys: int, bank_total: int) -> Workload:
    if name == "list-append":
        return ListAppend(keys)
    if name == "rw-register":
        return Register(keys)
    if name == "bank":
        return Bank(keys, bank_total)
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
