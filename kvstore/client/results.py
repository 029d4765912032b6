"""What SDK calls return: items, write answers, commits; and the reasons of a cancelled transaction.

Theory of operation
-------------------
The SDK answers with small frozen values in the public API's terms (docs/api.md), the same in
gateway mode (HTTP JSON) and direct mode (the embedded coordinator library): values are JSON
values (bytes written through msgpack clients come back as base64 text), timestamps are the
opaque ``"<physical_us>.<logical>.<origin>"`` strings. Failures are the error catalogue's typed
exceptions (:mod:`kvstore.errors`); :func:`reasons` reads the per-op reasons a cancelled
transaction carries, since the catalogue's classes are shared and get no SDK-only members.

An :class:`Item` is generic in its value's type: ``Item`` alone is ``Item[JsonValue]``, what every
read gives without ``value_type=``; with it, ``Item[YourType]`` after the SDK checked the value
(:mod:`kvstore.client.typed`).

An :class:`Item` that an interactive transaction wrote itself and reads back before committing
has no version or timestamp yet: it comes back with ``version == UNCOMMITTED_VERSION`` (0, below
every committed version) and ``ts == ""``; :attr:`Item.committed` tells the two apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Generic

from typing_extensions import TypeVar

from kvstore.errors import KvError, ProtocolViolation
from kvstore.types import JsonValue

__all__ = [
    "UNCOMMITTED_VERSION",
    "Item",
    "Written",
    "Deleted",
    "Committed",
    "reasons",
    "item_from_json",
]

V = TypeVar("V", default=JsonValue)
"""The type of an item's value: JSON unless a read was given ``value_type=``."""

UNCOMMITTED_VERSION: Final = 0
"""The version of an item a transaction wrote and has not committed (committed ones are >= 1)."""


@dataclass(frozen=True, slots=True)
class Item(Generic[V]):
    """A stored item: ``version`` grows with every write of the key, ``ts`` is its last write's.
    ``value`` is a :data:`~kvstore.types.JsonValue`, or of the ``value_type`` the read asked for
    (checked when it arrived)."""

    key: str
    value: V
    version: int
    ts: str

    @property
    def committed(self) -> bool:
        """False for an item an open transaction wrote and reads back (see the module)."""
        return self.version != UNCOMMITTED_VERSION


@dataclass(frozen=True, slots=True)
class Written:
    """The answer to a put: the item's new version and the write's timestamp."""

    version: int
    ts: str


@dataclass(frozen=True, slots=True)
class Deleted:
    """The answer to a delete: whether an item was there, and the write's timestamp (None when
    nothing was deleted and the node reported none)."""

    deleted: bool
    ts: str | None


@dataclass(frozen=True, slots=True)
class Committed:
    """A committed write transaction: its id and commit timestamp."""

    txn_id: str
    ts: str


def reasons(error: KvError) -> list[dict[str, object]]:
    """The per-op reasons of a cancelled transaction (``TransactionCanceled``, or the
    ``TransactionConflict`` of an interactive transaction), one per op in request order, each
    ``{"code": ..., "key": ..., "message"?: ..., "item"?: ...}``; empty for any other error."""
    found = error.details.get("reasons")
    if not isinstance(found, list):
        return []
    return [dict(reason) for reason in found if isinstance(reason, Mapping)]


def item_from_json(obj: object) -> Item:
    """An item in the API's JSON form; ``ProtocolViolation`` when the server sent another shape."""
    if not isinstance(obj, Mapping):
        raise ProtocolViolation(f"expected an item object, got {type(obj).__name__}")
    key, version, ts = obj.get("key"), obj.get("version"), obj.get("ts")
    if (
        not isinstance(key, str)
        or isinstance(version, bool)
        or not isinstance(version, int)
        or not isinstance(ts, str)
        or "value" not in obj
    ):
        raise ProtocolViolation("an item needs key, value, version and ts")
    value: JsonValue = obj["value"]
    return Item(key=key, value=value, version=version, ts=ts)
