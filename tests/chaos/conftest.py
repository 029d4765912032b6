"""Fixtures for the chaos checker tests: a compact builder for hand-written histories.

Transactions are written as their *completed* micro-op lists, e.g.
``[["append", "x", 1], ["r", "y", [1]]]``; the builder derives the invocation (reads become
``None``) and assigns fresh process ids unless one is given.
"""

from __future__ import annotations

from typing import Any

import pytest

from chaos.history import History, Op, OpType

Mops = list[list[Any]]


def invocation(mops: Mops) -> Mops:
    """The invoke value of a completed transaction: reads are unknown (``None``)."""
    return [[f, k, None if f == "r" else v] for f, k, v in mops]


class Builder:
    """Builds a :class:`History` of ``txn`` ops with a fake, strictly increasing clock."""

    def __init__(self) -> None:
        self.history = History()
        self._clock = 0
        self._next_process = 0

    def _now(self) -> int:
        self._clock += 10
        return self._clock

    def fresh_process(self) -> int:
        """A process id never used before."""
        self._next_process += 1
        return self._next_process - 1

    def invoke(self, mops: Mops, process: int | None = None) -> Op:
        """Invoke a transaction (on a fresh process unless ``process`` is given)."""
        p = self.fresh_process() if process is None else process
        self._next_process = max(self._next_process, p + 1)
        return self.history.invoke(p, "txn", invocation(mops), time_ns=self._now())

    def complete(
        self, inv: Op, mops: Mops, type: OpType = "ok", ts: tuple[int, ...] | None = None
    ) -> Op:
        """Complete ``inv``; ``fail``/``info`` completions keep the invocation's value."""
        value = mops if type == "ok" else invocation(mops)
        return self.history.complete(inv, type, value, time_ns=self._now(), ts=ts)

    def txn(
        self,
        mops: Mops,
        type: OpType = "ok",
        process: int | None = None,
        ts: tuple[int, ...] | None = None,
    ) -> Op:
        """A transaction invoked and completed before anything else happens."""
        return self.complete(self.invoke(mops, process), mops, type, ts)

    def concurrent(self, *txns: Mops | tuple[Mops, OpType]) -> History:
        """Invoke all transactions, then complete them all: no real-time order between them."""
        specs = [t if isinstance(t, tuple) else (t, "ok") for t in txns]
        invs = [self.invoke(mops) for mops, _ in specs]
        for inv, (mops, type_) in zip(invs, specs, strict=True):
            self.complete(inv, mops, type_)
        return self.history


@pytest.fixture
def build() -> Builder:
    """A fresh history builder."""
    return Builder()
