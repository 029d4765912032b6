"""What the client needs from whatever carries its calls: one attempt of each operation.

Theory of operation
-------------------
:class:`~kvstore.client.client.Client` validates arguments, draws idempotency tokens, retries
and runs interactive transactions; a :class:`Backend` makes exactly one attempt of one call and
either answers in the SDK's terms (:mod:`kvstore.client.results`) or raises the catalogue's
typed error. Three implement it:

* :class:`~kvstore.client.http.HttpBackend` (gateway mode): the public HTTP JSON API of a
  coordinator.
* :class:`~kvstore.client.direct.DirectBackend` (direct mode): an embedded
  :class:`~kvstore.coordinator.engine.Coordinator` talking to the storage nodes.
* :class:`~kvstore.client.memory.MemoryBackend`: a single-process store in memory with the same
  semantics, for tests of code that uses the SDK.

Every method gets the time the attempt may take (``timeout_s``, what is left of the call's
deadline). A backend reports a failure to reach its server as ``Unavailable`` with
``details["sent"]``: False when nothing reached the server (nothing can have happened), True when
the request went out and no answer came back (it may have been applied). Operations arrive
validated (:class:`~kvstore.ops.Op`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.ops import Op
from kvstore.types import Timestamp

__all__ = ["Backend", "ScanPage"]


@dataclass(frozen=True, slots=True)
class ScanPage:
    """Items in key order, and the cursor of the next page (None: the range is exhausted)."""

    items: tuple[Item, ...]
    cursor: str | None


class Backend(Protocol):
    """One attempt of each SDK call (see the module)."""

    @property
    def txn_ops_max(self) -> int:
        """The most operations a transaction may have, as far as this backend knows."""
        ...

    async def partition_count(self, timeout_s: float) -> int:
        """The cluster's partition count (it decides each key's and token's home)."""
        ...

    async def get(self, key: str, timeout_s: float) -> Item | None: ...

    async def put(self, op: Op, timeout_s: float) -> Written:
        """A singleton put (not a transaction); ``ConditionFailed`` when ``op``'s condition
        does not hold."""
        ...

    async def delete(self, op: Op, timeout_s: float) -> Deleted:
        """A singleton delete, like :meth:`put`."""
        ...

    async def transact(self, ops: Sequence[Op], token: str, timeout_s: float) -> Committed:
        """One write transaction; a repeated ``token`` gets the original outcome."""
        ...

    async def read(
        self, keys: Sequence[str], timeout_s: float, at: Timestamp | None = None
    ) -> list[Item | None]:
        """A read-only transaction: the items of ``keys`` at one instant, in request order;
        with ``at``, as of that timestamp (a snapshot read, docs/api.md)."""
        ...

    async def scan(
        self,
        *,
        prefix: str | None,
        start: str | None,
        end: str | None,
        limit: int,
        cursor: str | None,
        timeout_s: float,
    ) -> ScanPage:
        """One page of at most ``limit`` items of the range, after ``cursor``."""
        ...

    async def txn_outcome(self, token: str, timeout_s: float) -> dict[str, object] | None:
        """The recorded outcome of the transaction that used ``token`` (docs/api.md)."""
        ...

    async def close(self) -> None: ...
