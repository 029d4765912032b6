"""Jepsen-style operation histories: the record every checker reads.

Theory of operation
-------------------
A history is a list of events. A client operation produces an ``invoke`` event and, later, exactly
one completion by the same process: ``ok`` (it happened), ``fail`` (it definitely did not) or
``info`` (unknown: it may still take effect at any later time). After an ``info`` the process id
is retired; the worker continues under a fresh id, so each process runs one operation at a time
and process order stays meaningful.

:class:`History` is an append-only builder that enforces those rules as events arrive, and
:meth:`History.validate` re-checks them for histories loaded from disk. Events are :class:`Op`
records, whose ``index`` is their position in the history.

Canonical form. ``value`` is JSON data. Tuples are stored as lists and mappings as ``dict``, so an
op built in memory compares equal to the same op loaded back from JSON Lines. A ``dict`` whose keys
are not all strings (a bank read keyed by account number, say) is written as
``{"~dict": [[key, value], ...]}`` so that its key types survive the round trip. ``ts`` (a commit
timestamp) is a tuple of ints in memory and a JSON list on disk.

Why an operation failed. A ``fail`` or ``info`` completion carries ``error``, the error code
(``ConditionFailed``, ``Unavailable``, ``OutcomeUnknown``, ...), and, for a cancelled transaction,
``reasons``: the per-op cancellation reasons the API returned, in request order (``"None"`` for
an op that did not fail), e.g. ``("None", "ConditionFailed")``. :func:`failure_code` folds both
into the one label the reports count: ``TransactionCanceled(ConditionFailed)``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

__all__ = [
    "OpType",
    "Op",
    "HistoryError",
    "History",
    "canonical",
    "failure_code",
]

OpType = Literal["invoke", "ok", "fail", "info"]
_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})
_COMPLETIONS: frozenset[str] = frozenset({"ok", "fail", "info"})
_DICT_TAG = "~dict"


class HistoryError(ValueError):
    """The events do not form a well-formed history."""


def canonical(value: Any) -> Any:
    """Return ``value`` with tuples turned into lists, recursively (the canonical form)."""
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {k: canonical(v) for k, v in value.items()}
    return value


def _to_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and _DICT_TAG not in value:
            return {k: _to_json(v) for k, v in value.items()}
        return {_DICT_TAG: [[k, _to_json(v)] for k, v in value.items()]}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {_DICT_TAG}:
            return {_hashable(k): _from_json(v) for k, v in value[_DICT_TAG]}
        return {k: _from_json(v) for k, v in value.items()}
    return value


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


@dataclass(frozen=True, eq=True)
class Op:
    """One history event. Completions carry the result ``value`` (reads filled in)."""

    index: int
    type: OpType
    process: int
    time_ns: int
    f: str
    value: Any
    ts: tuple[int, ...] | None = None
    txn_id: str | None = None
    error: str | None = None
    reasons: tuple[str, ...] | None = None  # per-op cancellation reasons, request order

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise HistoryError(f"unknown op type {self.type!r}")
        object.__setattr__(self, "value", canonical(self.value))
        if self.ts is not None:
            object.__setattr__(self, "ts", tuple(int(t) for t in self.ts))
        if self.reasons is not None:
            object.__setattr__(self, "reasons", tuple(str(r) for r in self.reasons))

    def __hash__(self) -> int:
        return hash((self.index, self.type, self.process))

    def to_json(self) -> dict[str, Any]:
        """The JSON object for this op (elle-cli field names plus ``time``/``ts``/...)."""
        out: dict[str, Any] = {
            "index": self.index,
            "type": self.type,
            "process": self.process,
            "time": self.time_ns,
            "f": self.f,
            "value": _to_json(self.value),
        }
        if self.ts is not None:
            out["ts"] = list(self.ts)
        if self.txn_id is not None:
            out["txn_id"] = self.txn_id
        if self.error is not None:
            out["error"] = self.error
        if self.reasons is not None:
            out["reasons"] = list(self.reasons)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Op:
        """Inverse of :meth:`to_json`."""
        ts = obj.get("ts")
        reasons = obj.get("reasons")
        return cls(
            index=int(obj["index"]),
            type=cast(OpType, obj["type"]),
            process=int(obj["process"]),
            time_ns=int(obj.get("time", obj.get("time_ns", 0))),
            f=str(obj["f"]),
            value=_from_json(obj.get("value")),
            ts=None if ts is None else tuple(ts),
            txn_id=obj.get("txn_id"),
            error=obj.get("error"),
            reasons=None if reasons is None else tuple(reasons),
        )


def failure_code(op: Op) -> str:
    """What a ``fail`` or ``info`` completion is counted as: its error code, followed for a
    cancelled transaction by the distinct per-op reasons that were not ``None``, e.g.
    ``TransactionCanceled(ConditionFailed+TransactionConflict)``."""
    code = op.error or "unknown"
    failed = sorted({r for r in op.reasons or () if r != "None"})
    return f"{code}({'+'.join(failed)})" if failed else code


_UNSET: Any = object()


@dataclass
class History:
    """Append-only history builder; also the container every checker consumes."""

    ops: list[Op] = field(default_factory=list)
    _outstanding: dict[int, Op] = field(default_factory=dict, repr=False)
    _retired: set[int] = field(default_factory=set, repr=False)
    _completion_of: dict[int, Op] = field(default_factory=dict, repr=False)

    # -- building -----------------------------------------------------------------------------

    def _now(self, time_ns: int | None) -> int:
        now = time.monotonic_ns() if time_ns is None else time_ns
        if self.ops and now < self.ops[-1].time_ns:
            raise HistoryError(f"time went backwards: {now} < {self.ops[-1].time_ns}")
        return now

    def invoke(self, process: int, f: str, value: Any, time_ns: int | None = None) -> Op:
        """Record the start of an operation by ``process`` and return the invoke event."""
        if process in self._retired:
            raise HistoryError(f"process {process} was retired by an info completion")
        if process in self._outstanding:
            raise HistoryError(f"process {process} already has an operation outstanding")
        op = Op(len(self.ops), "invoke", process, self._now(time_ns), f, value)
        self.ops.append(op)
        self._outstanding[process] = op
        return op

    def complete(
        self,
        invoke_op: Op,
        type: OpType,
        value: Any = _UNSET,
        *,
        time_ns: int | None = None,
        ts: Iterable[int] | None = None,
        txn_id: str | None = None,
        error: str | None = None,
        reasons: Iterable[str] | None = None,
    ) -> Op:
        """Record the completion of ``invoke_op``; ``value`` defaults to the invoke's value."""
        if type not in _COMPLETIONS:
            raise HistoryError(f"{type!r} is not a completion type")
        if self._outstanding.get(invoke_op.process) is not invoke_op:
            raise HistoryError(f"op {invoke_op.index} is not outstanding")
        op = Op(
            len(self.ops),
            type,
            invoke_op.process,
            self._now(time_ns),
            invoke_op.f,
            invoke_op.value if value is _UNSET else value,
            ts=None if ts is None else tuple(ts),
            txn_id=txn_id,
            error=error,
            reasons=None if reasons is None else tuple(reasons),
        )
        self.ops.append(op)
        del self._outstanding[invoke_op.process]
        self._completion_of[invoke_op.index] = op
        if type == "info":
            self._retired.add(invoke_op.process)
        return op

    def close(self, time_ns: int | None = None) -> None:
        """Complete every outstanding operation as ``info`` (end of a test run)."""
        for op in sorted(self._outstanding.values(), key=lambda o: o.index):
            self.complete(op, "info", time_ns=time_ns, error="history closed")

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def from_ops(cls, ops: Iterable[Op]) -> History:
        """Rebuild a history from events, validating it (every invoke must be completed)."""
        h = cls()
        for op in ops:
            if op.index != len(h.ops):
                raise HistoryError(f"op index {op.index} at position {len(h.ops)}")
            if op.type == "invoke":
                h._check_invoke(op)
                h._outstanding[op.process] = op
            else:
                inv = h._outstanding.pop(op.process, None)
                if inv is None:
                    raise HistoryError(f"op {op.index}: completion without an invoke")
                if op.f != inv.f:
                    raise HistoryError(f"op {op.index}: f {op.f!r} != invoked {inv.f!r}")
                h._completion_of[inv.index] = op
                if op.type == "info":
                    h._retired.add(op.process)
            if h.ops and op.time_ns < h.ops[-1].time_ns:
                raise HistoryError(f"op {op.index}: time went backwards")
            h.ops.append(op)
        h.validate()
        return h

    def _check_invoke(self, op: Op) -> None:
        if op.process in self._retired:
            raise HistoryError(f"op {op.index}: process {op.process} was retired by info")
        if op.process in self._outstanding:
            raise HistoryError(f"op {op.index}: process {op.process} already has an op pending")

    def validate(self) -> None:
        """Raise :class:`HistoryError` unless every invoke has exactly one completion."""
        if self._outstanding:
            pending = sorted(op.index for op in self._outstanding.values())
            raise HistoryError(f"invocations without completion: {pending}")

    def completion(self, invoke_op: Op) -> Op | None:
        """The completion of ``invoke_op``, or ``None`` if it is still outstanding."""
        return self._completion_of.get(invoke_op.index)

    def pairs(self) -> Iterator[tuple[Op, Op]]:
        """Yield ``(invoke, completion)`` for every completed operation, in invoke order."""
        for op in self.ops:
            if op.type == "invoke":
                done = self._completion_of.get(op.index)
                if done is not None:
                    yield op, done

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self.ops == other.ops

    __hash__ = None  # type: ignore[assignment]

    # -- JSON Lines -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write one JSON object per line; completes nothing, so validate first if needed."""
        with Path(path).open("w", encoding="utf-8") as fh:
            for op in self.ops:
                fh.write(json.dumps(op.to_json(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Read a history written by :meth:`save` (or elle-cli style JSONL) and validate it."""
        with Path(path).open(encoding="utf-8") as fh:
            ops = [Op.from_json(json.loads(line)) for line in fh if line.strip()]
        return cls.from_ops(ops)
