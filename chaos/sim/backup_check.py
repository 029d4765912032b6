"""The simulator's backup check: a completed backup at ``T`` is the store exactly as of ``T``.

Theory of operation
-------------------
This is the check the simulator runs on the backups its operator takes (:mod:`chaos.sim.backup`)
against the run's history, where every committed write carries its commit timestamp (the
simulator resolves ``info`` ones from the ledgers and the nodes). The real-process tests
(tests/integration/test_backup.py) run the same checks on a restored cluster and their
client's history. It reports :class:`~chaos.checkers.result.Anomaly` records like the other
checks.

A backup at ``T`` is one very large read-only transaction at ``T`` (docs/backup.md, "The rule"):
every key's version as of ``T``, from every partition, though the partitions were paged at
different instants while writes went on. A :class:`BackupImage` is what one completed backup
returned: its ``at``, and for each key present the workload's value (a list for list-append, a
balance for bank) and the item's ``ts`` (the commit timestamp of its last write). Absent keys are
simply not in it. The checks are pure functions of the image and the history the other checkers
read (``info`` writes carrying their commit ``ts`` wherever the harness learned it):

* **bank** (:func:`check_bank`): a transfer moves money between two accounts, usually on two
  partitions, so an image that holds one side of a transfer and not the other has the wrong
  total. Every account must be present, the balances must sum to the invariant total, none may
  be negative.
* **list-append** (:func:`check_list_append`): appends carry unique values and a committed
  transaction's commit ``ts`` (``ok`` completions, and ``info`` ones resolved by the harness), so
  the list each key must hold as of ``T`` is known exactly: the values appended by the committed
  transactions with ``ts <= T``, in ``ts`` order. A transaction whose fate is unknown (an
  ``info`` without ``ts``) may or may not appear, anywhere (its ``ts``, if it committed, is not
  known). So for each key: every known committed append at or below ``T`` is present
  (``backup-lost-write``: what a write accepted below the snapshot after its page shows), none
  above ``T`` is (``backup-future-write``), no value of a failed transaction is
  (``backup-aborted-write``), every value was written by someone (``backup-garbage``), none
  twice (``backup-duplicate``), the known ones are in ``ts`` order (``backup-wrong-order``), and
  the item's ``ts`` is at most ``T`` (``backup-future-version``) and, when the list's last value
  has a known ``ts``, equal to it (``backup-wrong-version-ts``).

* **rw-register** (:func:`check_register`): puts of unique values and deletes, each committed
  at a known ``ts`` or of unknown fate, as above. A key's version as of ``T`` is its last
  committed write at or below ``T``: a present key must hold the value of a write that did not
  fail, with that write's ``ts`` (the item's ``ts`` says when an unknown one committed), at most
  ``T``, and no known committed write of the key may fall between it and ``T``
  (``backup-lost-write``: a later write below ``T`` missing); an absent key must have a delete
  (or no write) as its last known write at or below ``T``, unless a delete of unknown fate may
  have come after it.

Each anomaly names the backup (``number``) and its ``at``; its ops are the history ops involved
(the writes missing, misplaced or present when they must not be).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from chaos.checkers.result import Anomaly
from chaos.history import History, Op

__all__ = ["BackupImage", "check_bank", "check_list_append", "check_register", "check_backup"]

Ts = tuple[int, ...]


@dataclass(frozen=True)
class BackupImage:
    """What one completed backup returned: key -> (workload value, item ts), as of ``at``."""

    number: int
    at: Ts
    values: Mapping[str, Any] = field(default_factory=dict)
    item_ts: Mapping[str, Ts] = field(default_factory=dict)

    def where(self) -> str:
        return f"backup {self.number} at {list(self.at)}"


def check_bank(image: BackupImage, total: int, accounts: Iterable[str]) -> list[Anomaly]:
    """Every account present, balances summing to ``total``, none negative."""
    expected = set(accounts)
    balances = dict(image.values)
    found: list[Anomaly] = []
    if set(balances) != expected:
        missing = sorted(expected - set(balances))
        extra = sorted(set(balances) - expected)
        found.append(
            Anomaly(
                "backup-wrong-accounts",
                f"{image.where()} holds accounts missing {missing}, unexpected {extra}",
            )
        )
    numbers = {k: b for k, b in balances.items() if isinstance(b, int) and not isinstance(b, bool)}
    if len(numbers) != len(balances):
        found.append(Anomaly("backup-nil-balance", f"{image.where()} holds {balances!r}"))
        return found
    got = sum(numbers.values())
    if got != total:
        found.append(
            Anomaly(
                "backup-wrong-total",
                f"{image.where()} totals {got}, expected {total}: {dict(sorted(numbers.items()))}",
            )
        )
    negative = {k: b for k, b in sorted(numbers.items()) if b < 0}
    if negative:
        found.append(
            Anomaly("backup-negative-balance", f"{image.where()} holds negative {negative}")
        )
    return found


@dataclass(frozen=True)
class _Append:
    """One append of a unique value, with what the history says of its transaction."""

    key: str
    value: Any
    op: Op  # the transaction's completion
    committed: bool | None  # True: ok, or info with a ts; False: fail; None: unknown
    ts: Ts | None


def _fate(done: Op) -> bool | None:
    """A transaction's fate: committed (ok, or info with a ts), failed, or unknown (None)."""
    if done.type == "ok":
        return True
    if done.type == "fail":
        return False
    return True if done.ts is not None else None


def _mops(history: History, kind: str) -> Iterator[tuple[Op, bool | None, str, Any]]:
    """``(completion, fate, key, value)`` of every micro-op ``[kind, key, value]`` of every
    completed transaction."""
    for _, done in history.pairs():
        if done.f != "txn" or not isinstance(done.value, list):
            continue
        committed = _fate(done)
        for mop in done.value:
            if isinstance(mop, list) and len(mop) == 3 and mop[0] == kind:
                yield done, committed, mop[1], mop[2]


def _appends(history: History) -> dict[Any, _Append]:
    """Every appended value (values are unique) -> its append, from every completed txn."""
    return {
        value: _Append(key, value, done, committed, done.ts)
        for done, committed, key, value in _mops(history, "append")
    }


def check_list_append(image: BackupImage, history: History) -> list[Anomaly]:
    """Each key's list is exactly the committed appends at or below ``at``, in ts order."""
    at = image.at
    appends = _appends(history)
    found: list[Anomaly] = []
    where = image.where()
    expected: dict[str, list[_Append]] = {}
    for candidate in appends.values():
        if candidate.committed and candidate.ts is not None and candidate.ts <= at:
            expected.setdefault(candidate.key, []).append(candidate)
    for key in sorted(set(expected) | set(image.values)):
        raw = image.values.get(key, [])
        listed = list(raw) if isinstance(raw, list | tuple) else [raw]
        seen: set[Any] = set()
        known: list[_Append] = []  # listed values with a known ts, in list order
        for value in listed:
            hit = appends.get(value)
            if value in seen:
                found.append(Anomaly("backup-duplicate", f"{where}: {key!r} lists {value!r} twice"))
                continue
            seen.add(value)
            if hit is None or hit.key != key:
                found.append(
                    Anomaly("backup-garbage", f"{where}: {key!r} lists {value!r}, never appended")
                )
            elif hit.committed is False:
                found.append(
                    Anomaly(
                        "backup-aborted-write",
                        f"{where}: {key!r} lists {value!r} of a failed transaction "
                        f"(op {hit.op.index})",
                        (hit.op,),
                    )
                )
            elif hit.ts is not None and hit.ts > at:
                found.append(
                    Anomaly(
                        "backup-future-write",
                        f"{where}: {key!r} lists {value!r}, committed at {list(hit.ts)} "
                        f"after the backup's timestamp (op {hit.op.index})",
                        (hit.op,),
                    )
                )
            elif hit.ts is not None:
                known.append(hit)
        for append in expected.get(key, []):
            if append.value not in seen:
                found.append(
                    Anomaly(
                        "backup-lost-write",
                        f"{where}: {key!r} lacks {append.value!r}, committed at "
                        f"{list(append.ts or ())} at or below the backup's timestamp "
                        f"(op {append.op.index})",
                        (append.op,),
                    )
                )
        in_order = sorted(known, key=lambda a: a.ts or ())
        if known != in_order:
            found.append(
                Anomaly(
                    "backup-wrong-order",
                    f"{where}: {key!r} lists {[a.value for a in known]}, in ts order "
                    f"{[a.value for a in in_order]}",
                    tuple(a.op for a in known),
                )
            )
        item_ts = image.item_ts.get(key)
        if item_ts is not None and item_ts > at:
            found.append(
                Anomaly(
                    "backup-future-version",
                    f"{where}: {key!r} is the version written at {list(item_ts)}",
                )
            )
        last = appends.get(listed[-1]) if listed else None
        if item_ts is not None and last is not None and last.ts is not None and last.ts != item_ts:
            found.append(
                Anomaly(
                    "backup-wrong-version-ts",
                    f"{where}: {key!r} carries ts {list(item_ts)}, its last value {last.value!r} "
                    f"was appended at {list(last.ts)} (op {last.op.index})",
                    (last.op,),
                )
            )
    return found


@dataclass(frozen=True)
class _Write:
    """One register write (``value`` None: a delete), with its transaction's fate."""

    key: str
    value: Any
    op: Op
    committed: bool | None
    ts: Ts | None


def _register_writes(history: History) -> dict[str, list[_Write]]:
    """Every register write of every completed txn, by key."""
    out: dict[str, list[_Write]] = {}
    for done, committed, key, value in _mops(history, "w"):
        out.setdefault(key, []).append(_Write(key, value, done, committed, done.ts))
    return out


def check_register(image: BackupImage, history: History, keys: Iterable[str]) -> list[Anomaly]:
    """Each key holds its last committed write at or below ``at`` (absent: a delete)."""
    at = image.at
    where = image.where()
    writes = _register_writes(history)
    found: list[Anomaly] = []
    for key in sorted(set(keys) | set(image.values)):
        mine = writes.get(key, [])
        known = [w for w in mine if w.committed and w.ts is not None and w.ts <= at]
        last = max(known, key=lambda w: w.ts or ()) if known else None
        unknown_deletes = [w for w in mine if w.committed is None and w.value is None]
        if key not in image.values:
            if last is not None and last.value is not None and not unknown_deletes:
                found.append(
                    Anomaly(
                        "backup-lost-write",
                        f"{where}: {key!r} is absent, its last write at or below the backup's "
                        f"timestamp put {last.value!r} at {list(last.ts or ())} "
                        f"(op {last.op.index})",
                        (last.op,),
                    )
                )
            continue
        value = image.values[key]
        item_ts = image.item_ts.get(key)
        if item_ts is not None and item_ts > at:
            found.append(
                Anomaly(
                    "backup-future-version",
                    f"{where}: {key!r} is the version written at {list(item_ts)}",
                )
            )
        source = [w for w in mine if w.value == value and value is not None]
        if not source:
            found.append(
                Anomaly("backup-garbage", f"{where}: {key!r} holds {value!r}, never written")
            )
            continue
        write = source[0]
        if write.committed is False:
            found.append(
                Anomaly(
                    "backup-aborted-write",
                    f"{where}: {key!r} holds {value!r} of a failed transaction "
                    f"(op {write.op.index})",
                    (write.op,),
                )
            )
            continue
        written_at = write.ts if write.ts is not None else item_ts
        if write.ts is not None and item_ts is not None and write.ts != item_ts:
            found.append(
                Anomaly(
                    "backup-wrong-version-ts",
                    f"{where}: {key!r} holds {value!r} with ts {list(item_ts)}, written at "
                    f"{list(write.ts)} (op {write.op.index})",
                    (write.op,),
                )
            )
        if write.ts is not None and write.ts > at:
            found.append(
                Anomaly(
                    "backup-future-write",
                    f"{where}: {key!r} holds {value!r}, written at {list(write.ts)} after the "
                    f"backup's timestamp (op {write.op.index})",
                    (write.op,),
                )
            )
        elif (
            last is not None
            and written_at is not None
            and last.ts is not None
            and last.ts > written_at
        ):
            found.append(
                Anomaly(
                    "backup-lost-write",
                    f"{where}: {key!r} holds {value!r} of {list(written_at)}, but "
                    f"{'a delete' if last.value is None else repr(last.value)} committed at "
                    f"{list(last.ts)}, at or below the backup's timestamp (op {last.op.index})",
                    (write.op, last.op),
                )
            )
    return found


def check_backup(
    image: BackupImage,
    history: History,
    workload: str,
    *,
    total: int | None = None,
    accounts: Iterable[str] = (),
) -> list[Anomaly]:
    """The checks of ``workload`` on one completed backup (none for other workloads);
    ``accounts``: the workload's keys (bank accounts, registers)."""
    if workload == "bank":
        if total is None:
            raise ValueError("the bank backup check needs total=")
        return check_bank(image, total, accounts)
    if workload == "list-append":
        return check_list_append(image, history)
    if workload == "rw-register":
        return check_register(image, history, accounts)
    return []
