"""Where the keys of a transaction live, and the way back to request order.

Theory of operation
-------------------
A transaction names keys in the client's order. :class:`KeyLayout` groups their positions by
partition, keeping request order inside each group, so each partition gets one message with its
slice. Replies come back per partition, one entry per key of the slice, and :meth:`place` writes
them back at the keys' request positions: answers are always given in the client's order.
The *anchor* is the home of the transaction's ledger record: the partition of the first key, or
the one the caller names (a transaction with an idempotency token is anchored at the token's home
partition, so every submission of one token meets the same record). A named anchor that holds
none of the keys is still a participant, with an empty slice: it carries only the ledger record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from kvstore.types import PartitionId

__all__ = ["KeyLayout"]

T = TypeVar("T")


class KeyLayout:
    """Positions of request keys grouped by partition."""

    def __init__(
        self,
        keys: Sequence[str],
        partition_of: Callable[[str], PartitionId],
        anchor: PartitionId | None = None,
    ) -> None:
        groups: dict[PartitionId, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(partition_of(key), []).append(index)
        self.size = len(keys)
        self.anchor: PartitionId = partition_of(keys[0]) if anchor is None else anchor
        groups.setdefault(self.anchor, [])
        self._groups = {partition: tuple(indices) for partition, indices in groups.items()}
        # Anchor first (its message creates the ledger record), then the rest in ascending order.
        others = sorted(p for p in self._groups if p != self.anchor)
        self.partitions: tuple[PartitionId, ...] = (self.anchor, *others)
        self.participants: tuple[PartitionId, ...] = tuple(sorted(self._groups))
        placement = [self.anchor] * self.size
        for partition, indices in self._groups.items():
            for index in indices:
                placement[index] = partition
        self.placement: tuple[PartitionId, ...] = tuple(placement)  # each key's, request order

    @property
    def single(self) -> bool:
        return len(self._groups) == 1

    def indices(self, partition: PartitionId) -> tuple[int, ...]:
        """Request positions of the keys on ``partition``, in request order."""
        return self._groups[partition]

    def pick(self, partition: PartitionId, items: Sequence[T]) -> tuple[T, ...]:
        """The slice of request-ordered ``items`` that belongs to ``partition``."""
        return tuple(items[i] for i in self._groups[partition])

    def place(self, partition: PartitionId, values: Sequence[T], into: list[T]) -> bool:
        """Write ``partition``'s per-key ``values`` at their request positions.

        Returns False (and writes nothing) when ``values`` has not one entry per key of the slice.
        """
        indices = self._groups[partition]
        if len(values) != len(indices):
            return False
        for index, value in zip(indices, values, strict=True):
            into[index] = value
        return True
