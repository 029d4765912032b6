"""The versions a partition's writes replaced, kept for snapshot reads and backups.

Theory of operation
-------------------
A partition stores only each key's latest committed version. To answer a read *as of* a
timestamp ``at`` (a snapshot read, a backup's page) it also needs, for every key written after
``at``, the version the first such write replaced. :class:`VersionHistory` keeps those
*replaced versions*: each is the key's version before a write at ``superseded`` (its commit
timestamp), recorded by the partition core as it applies the write.

The version of ``key`` as of ``at`` is the replaced version of the first write after ``at``
(the smallest ``superseded > at``) if there is one, else the current version. That is exact
when no write after ``at`` has gone unrecorded, which holds for every ``at`` at or above the
**horizon**:

* The history only knows the writes applied through it. Writes it did not see (before a
  restart, as a follower, by a restore or a snapshot install) leave a partition whose largest
  write timestamp (``max_write_ts``, in the partition's meta row) is above what the history saw;
  :meth:`resync` then forgets everything and moves the horizon up to that timestamp.
* Forgetting a replaced version whose ``superseded`` is at or below the horizon loses nothing a
  reader at or above the horizon needs. :meth:`collect` moves the horizon up to the start of the
  window (``now - window``) and forgets what fell below it, except what a **pin** needs: a backup
  pins its ``at`` (for a while, renewed by each page) and every replaced version that is the
  key's version as of a pinned ``at`` (the first one replaced after ``at``) is kept.
* Past :data:`~kvstore.limits.SNAPSHOT_VERSIONS_MAX` versions the oldest goes regardless: the
  horizon rises past it and pins below the new horizon are dropped (their reads then fail with
  ``SnapshotTooOld`` instead of reading a wrong version).

:meth:`readable` says whether ``at`` may be read: at or above the horizon, or pinned. Pure: no
I/O, no clock (callers pass ``now_us``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sortedcontainers import SortedList

from kvstore import limits
from kvstore.types import TIMESTAMP_ZERO, Key, Timestamp, Value

__all__ = ["Version", "VersionHistory"]

_US_PER_MS = 1000


@dataclass(frozen=True, slots=True)
class Version:
    """A key's committed state: absent (``exists=False``) or a value, with its version number
    and the commit timestamp of the write that left it."""

    exists: bool
    value: Value
    version: int
    write_ts: Timestamp


@dataclass(frozen=True, slots=True)
class _Replaced:
    superseded: Timestamp  # commit timestamp of the write that replaced it
    before: Version


class VersionHistory:
    """Replaced versions of one partition's keys (see the module)."""

    def __init__(self, versions_max: int = limits.SNAPSHOT_VERSIONS_MAX) -> None:
        self.horizon: Timestamp = TIMESTAMP_ZERO
        self._seen: Timestamp = TIMESTAMP_ZERO  # the largest write timestamp recorded
        self._versions_max = versions_max
        self._by_key: dict[Key, list[_Replaced]] = {}  # ascending ``superseded``
        self._keys: SortedList = SortedList()  # keys of _by_key, for range reads
        self._order: deque[tuple[Timestamp, Key]] = deque()  # recording order, for collection
        self._count = 0
        self._pins: dict[Timestamp, int] = {}  # at -> pinned until (us)

    def __len__(self) -> int:
        return self._count

    # --- writes ---------------------------------------------------------------------------

    def record(self, key: Key, before: Version, superseded: Timestamp) -> None:
        """A write at ``superseded`` replaced ``before`` on ``key``."""
        entries = self._by_key.get(key)
        if entries is None:
            entries = self._by_key[key] = []
            self._keys.add(key)
        entries.append(_Replaced(superseded, before))
        if len(entries) > 1 and entries[-2].superseded > superseded:
            entries.sort(key=lambda entry: entry.superseded)
        self._order.append((superseded, key))
        self._count += 1
        self._seen = max(self._seen, superseded)
        while self._count > self._versions_max:
            self._drop_oldest()

    def resync(self, max_write_ts: Timestamp) -> bool:
        """Forget everything when the partition holds writes this history did not see
        (``max_write_ts``, the partition's largest write timestamp, is above what it recorded);
        returns whether it did."""
        if max_write_ts <= self._seen:
            return False
        self._by_key.clear()
        self._keys.clear()
        self._order.clear()
        self._count = 0
        self._seen = max_write_ts
        self._raise_horizon(max_write_ts)
        self._pins = {at: until for at, until in self._pins.items() if at >= self.horizon}
        return True

    # --- reads ----------------------------------------------------------------------------

    def readable(self, at: Timestamp) -> bool:
        """Whether versions as of ``at`` are exact here."""
        return at >= self.horizon or at in self._pins

    def pin(self, at: Timestamp, until_us: int) -> None:
        """Keep what a read at ``at`` needs until ``until_us`` (renewed by each call)."""
        self._pins[at] = max(until_us, self._pins.get(at, 0))

    def version_at(self, key: Key, at: Timestamp, current: Version) -> Version:
        """``key``'s version as of ``at``, given its ``current`` one (``readable(at)`` first)."""
        for entry in self._by_key.get(key, ()):
            if entry.superseded > at:
                return entry.before
        return current

    def keys_between(self, start: Key, end: Key | None) -> list[Key]:
        """Keys with replaced versions, ``start <= key < end`` (``None``: no bound), in order."""
        if end is None:
            return list(self._keys.irange(start))
        return list(self._keys.irange(start, end, inclusive=(True, False)))

    # --- collection -----------------------------------------------------------------------

    def collect(self, now_us: int, window_ms: int = limits.SNAPSHOT_WINDOW_MS) -> None:
        """Drop expired pins, raise the horizon to the window's start, forget what no reader
        at or above it and no pin needs."""
        self._pins = {at: until for at, until in self._pins.items() if until > now_us}
        start = Timestamp(now_us - window_ms * _US_PER_MS, 0, 0)
        self._raise_horizon(start)
        kept: list[tuple[Timestamp, Key]] = []
        while self._order and self._order[0][0] <= self.horizon:
            superseded, key = self._order.popleft()
            if not self._forget(key, superseded, pinned_only=True):
                kept.append((superseded, key))
        self._order.extendleft(reversed(kept))

    def _pins_reading(self, entries: list[_Replaced], index: int) -> list[Timestamp]:
        """The pinned timestamps that read ``entries[index]``: those it is the first version
        replaced after (``after <= at < superseded``, ``after`` being the replacement before
        it, if any is still kept). Not ``before.write_ts <= at``: that ``write_ts`` need not be
        when the version became visible (a tombstone left by a check of an absent key carries
        the partition watermark). With an earlier replacement already forgotten the range is
        wider than needed, which only keeps more."""
        superseded = entries[index].superseded
        after = entries[index - 1].superseded if index else None
        return [at for at in self._pins if at < superseded and (after is None or after <= at)]

    def _forget(self, key: Key, superseded: Timestamp, *, pinned_only: bool) -> bool:
        """Forget ``key``'s version replaced at ``superseded`` unless a pin needs it
        (``pinned_only``); returns whether it is gone."""
        entries = self._by_key.get(key)
        if not entries:
            return True
        for index, entry in enumerate(entries):
            if entry.superseded == superseded:
                if pinned_only and self._pins_reading(entries, index):
                    return False
                del entries[index]
                self._count -= 1
                break
        if not entries:
            del self._by_key[key]
            self._keys.remove(key)
        return True

    def _drop_oldest(self) -> None:
        """Forget the oldest version even if a pin needs it: that pin goes too."""
        superseded, key = self._order.popleft()
        self._raise_horizon(superseded)
        entries = self._by_key.get(key, [])
        for index, entry in enumerate(entries):
            if entry.superseded == superseded:
                for at in self._pins_reading(entries, index):
                    del self._pins[at]
                break
        self._forget(key, superseded, pinned_only=False)

    def _raise_horizon(self, ts: Timestamp) -> None:
        self.horizon = max(self.horizon, ts)
