"""The benchmark workloads, defined once for both systems.

Theory of operation
-------------------
Every workload runs over ``ACCOUNTS`` accounts (``contention``: the first ``HOT_ACCOUNTS``),
each starting at ``{"balance": INITIAL_BALANCE}``; in PostgreSQL they are rows of
``accounts(id int primary key, balance int)``. Random draws are uniform:

* ``transfer``: move ``1..AMOUNT_MAX`` from account ``a`` to a different account ``b`` in one
  transaction, on condition that ``a``'s balance covers it (here a one-shot transaction with a
  ``balance >= amount`` condition; there ``UPDATE ... WHERE balance >= amount`` and, when a row
  was updated, the second ``UPDATE``, in a SERIALIZABLE transaction, retried on serialization
  failures). A refused condition is a completed transaction that moved nothing, in both systems.
* ``get``: read one account (a singleton get; a one-statement ``SELECT``).
* ``put``: write one account durably (a singleton put; an upsert).
* ``read2``: read two different accounts in one read-only transaction (``read``; a SERIALIZABLE
  READ ONLY transaction of two ``SELECT``s).
* ``contention``: ``transfer`` over the hot accounts, where conflicts, aborts and retries show.
* ``txn1`` and ``read1``: ``put`` as a one-item write transaction and ``get`` as a one-item
  read-only transaction (``transact`` and ``read`` of one key; ``BEGIN ISOLATION LEVEL
  SERIALIZABLE [READ ONLY]``, the statement, ``END``), for the latency of a transaction against
  its singleton.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ACCOUNTS",
    "HOT_ACCOUNTS",
    "INITIAL_BALANCE",
    "AMOUNT_MAX",
    "Workload",
    "WORKLOADS",
    "workload",
    "account_key",
]

ACCOUNTS: Final = 10_000
HOT_ACCOUNTS: Final = 100
INITIAL_BALANCE: Final = 1000
AMOUNT_MAX: Final = 100


@dataclass(frozen=True)
class Workload:
    """One workload: its name, its kind of step, and how many accounts it draws from."""

    name: str
    kind: str  # "transfer", "get", "put", "read2", "txn1" or "read1"
    accounts: int
    summary: str


WORKLOADS: Final[dict[str, Workload]] = {
    w.name: w
    for w in (
        Workload("transfer", "transfer", ACCOUNTS, "2-account transfer with a balance condition"),
        Workload("get", "get", ACCOUNTS, "single-key read"),
        Workload("put", "put", ACCOUNTS, "durable single-key write"),
        Workload("read2", "read2", ACCOUNTS, "read-only transaction of 2 accounts"),
        Workload("contention", "transfer", HOT_ACCOUNTS, "transfer over 100 hot accounts"),
        Workload("txn1", "txn1", ACCOUNTS, "one-item write transaction (a put)"),
        Workload("read1", "read1", ACCOUNTS, "one-item read-only transaction (a get)"),
    )
}


def workload(name: str) -> Workload:
    """The workload called ``name`` (``KeyError`` when there is none)."""
    return WORKLOADS[name]


def account_key(index: int) -> str:
    """The store key of account ``index`` (0-based); PostgreSQL's row id is ``index + 1``."""
    return f"acct/{index:05d}"
