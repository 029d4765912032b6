"""What a backup at ``T`` must hold, checked against the history of the run it was taken in.

Theory of operation
-------------------
A backup at ``T`` holds exactly the effects of the transactions committed at or before ``T``
(docs/backup.md). Against a history this means, for list-append (every appended element unique,
each from one transaction):

* every element of a transaction known committed (``ok``) with commit timestamp ``<= T`` is in
  its list, and the known-committed elements of a list appear in commit-timestamp order;
* no element of a transaction known committed with a timestamp ``> T`` is anywhere, nor any
  element of a transaction known to have failed;
* the other elements (transactions whose outcome is unknown, or whose timestamp the client never
  learned) may be there or not;
* every list is a prefix of the key's final list, read after the run (lists only grow, so the
  state at ``T`` is a prefix of every later one: no element is out of place or invented).

For a bank: the accounts present in the backup are exactly the workload's and their balances sum
to the total. Each function returns a list of problems, empty when the backup is right.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Appended", "check_bank_backup", "check_list_append_backup"]

Ts = tuple[int, ...]  # a timestamp as a tuple (physical_us, logical, origin)


@dataclass(frozen=True, slots=True)
class Appended:
    """One write transaction of a list-append history: what it appended where, how it ended
    (``ok``, ``fail`` or ``info``) and, when known, its commit timestamp."""

    appends: Mapping[str, Sequence[object]]
    outcome: str
    ts: Ts | None


def check_bank_backup(
    balances: Mapping[str, object], accounts: Iterable[str], total: int
) -> list[str]:
    """The restored accounts are exactly ``accounts`` and sum to ``total``."""
    problems = []
    expected = set(accounts)
    if set(balances) != expected:
        missing = sorted(expected - set(balances))[:5]
        extra = sorted(set(balances) - expected)[:5]
        problems.append(f"accounts differ: missing {missing}, unexpected {extra}")
    numbers = [value for value in balances.values() if isinstance(value, int)]
    if len(numbers) != len(balances):
        problems.append("a balance is not an integer")
    elif sum(numbers) != total:
        problems.append(f"balances sum to {sum(numbers)}, not {total}")
    return problems


def check_list_append_backup(
    restored: Mapping[str, Sequence[object]],
    final: Mapping[str, Sequence[object]],
    history: Iterable[Appended],
    at: Ts,
) -> list[str]:
    """The backup's lists against the run's transactions (see the module)."""
    problems: list[str] = []
    by_element: dict[tuple[str, object], Appended] = {}
    for txn in history:
        for key, elements in txn.appends.items():
            for element in elements:
                by_element[(key, _hashable(element))] = txn
    for key, elements in restored.items():
        whole = list(final.get(key, ()))
        if list(elements) != whole[: len(elements)]:
            problems.append(f"{key}: the backup's list is not a prefix of the final one")
        last_ts: Ts | None = None
        for element in elements:
            found = by_element.get((key, _hashable(element)))
            if found is None:
                problems.append(f"{key}: element {element!r} was never appended")
                continue
            txn = found
            if txn.outcome == "fail":
                problems.append(f"{key}: element {element!r} of a failed transaction")
            if txn.outcome == "ok" and txn.ts is not None:
                if txn.ts > at:
                    problems.append(f"{key}: element {element!r} committed at {txn.ts} > {at}")
                if last_ts is not None and txn.ts < last_ts:
                    problems.append(f"{key}: element {element!r} out of commit order")
                last_ts = txn.ts
    present = {(key, _hashable(e)) for key, elements in restored.items() for e in elements}
    for (key, element), txn in by_element.items():
        known = txn.outcome == "ok" and txn.ts is not None and txn.ts <= at
        if known and (key, element) not in present:
            problems.append(f"{key}: element {element!r} committed at {txn.ts} is missing")
    return problems


def _hashable(value: object) -> object:
    return repr(value) if isinstance(value, list | dict) else value
