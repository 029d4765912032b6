"""Transactions as the checkers see them: an invoke/completion pair with parsed micro-ops.

Theory of operation
-------------------
A transaction op's ``value`` is a list of micro-ops ``[f, key, value]`` (``f`` is ``"r"``,
``"append"`` or ``"w"``). The completion's value is authoritative: it has the reads filled in.
A read value of ``None`` in an ``info`` or ``fail`` completion means "unknown", never "empty".
This module turns history pairs into :class:`Txn` records and renders them for explanations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chaos.history import History, Op

__all__ = ["Mop", "Txn", "transactions", "describe", "show_list"]

Mop = tuple[str, Any, Any]


def _key(k: Any) -> Any:
    return tuple(_key(x) for x in k) if isinstance(k, list) else k


def _read_value(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


@dataclass(frozen=True)
class Txn:
    """One transaction: its invoke, its completion, and its micro-ops (reads as tuples)."""

    invoke: Op
    op: Op
    mops: tuple[Mop, ...]

    @property
    def type(self) -> str:
        """``ok``, ``fail`` or ``info``."""
        return self.op.type

    @property
    def index(self) -> int:
        """The node id: the completion's index."""
        return self.op.index

    def __str__(self) -> str:
        return f"op {self.op.index} ({self.op.type}, process {self.op.process})"


def _parse(value: Any) -> tuple[Mop, ...]:
    if not isinstance(value, list):
        raise ValueError(f"transaction value must be a list of micro-ops, got {value!r}")
    out = []
    for m in value:
        if not isinstance(m, list) or len(m) != 3:
            raise ValueError(f"micro-op must be [f, key, value], got {m!r}")
        f, k, v = m
        out.append((str(f), _key(k), _read_value(v) if f == "r" else v))
    return tuple(out)


def transactions(history: History, f: str = "txn") -> Iterator[Txn]:
    """Every completed operation named ``f``, in invoke order."""
    for inv, done in history.pairs():
        if inv.f == f:
            yield Txn(inv, done, _parse(done.value))


def show_list(vs: Any, limit: int = 4) -> str:
    """A short rendering of a read list: ``[1, 2, 3]`` or ``[... 7, 8, 9]``."""
    if not isinstance(vs, tuple | list):
        return repr(vs)
    items = list(vs)
    if len(items) <= limit:
        return "[" + ", ".join(map(repr, items)) + "]"
    return "[... " + ", ".join(map(repr, items[-(limit - 1) :])) + "]"


def describe(value: Any) -> str:
    """Render a micro-op list as ``[append 'x' 1] [r 'y' [1]]``."""
    if not isinstance(value, list):
        return repr(value)
    parts = []
    for m in value:
        if isinstance(m, list) and len(m) == 3:
            f, k, v = m
            parts.append(f"[{f} {k!r} {show_list(v) if f == 'r' else repr(v)}]")
        else:
            parts.append(repr(m))
    return " ".join(parts)
