"""Typed identifiers and the value model's type aliases.

Theory of operation
-------------------
A :class:`Timestamp` is the hybrid-logical-clock reading ``(physical_us, logical, origin)``.
Tuple order is the transaction order of the whole store: physical microseconds first, then the
logical counter, then the issuing process's random 64-bit origin id as the tie-break, so two
processes never issue equal timestamps. ``TIMESTAMP_ZERO`` is below every issued timestamp.

Its text form (``str(ts)``, the public API's) is ``"<physical_us>.<logical>.<origin as 16 hex
digits>"``; :func:`timestamp_from_text` reads exactly that form back (no sign, no leading zeros,
lowercase hex, decimal parts of at most 19 digits), so ``str(timestamp_from_text(text)) == text``
for every text it accepts.

Identifiers are ``NewType``s so that a partition id is never passed where a node id is expected.
Transaction ids are 32 lowercase hex digits (128 random bits) drawn by ``kvstore.timestamps``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple, NewType, TypeAlias

__all__ = [
    "Timestamp",
    "TxnId",
    "PartitionId",
    "NodeId",
    "Key",
    "Value",
    "JsonValue",
    "ValueInput",
    "ORIGIN_MAX",
    "timestamp_from_wire",
    "timestamp_from_text",
    "TIMESTAMP_ZERO",
]

TxnId = NewType("TxnId", str)
PartitionId = NewType("PartitionId", int)
NodeId = NewType("NodeId", str)
Key: TypeAlias = str

# A stored value: JSON-compatible, plus bytes through msgpack clients (base64 in JSON).
Value: TypeAlias = bool | int | float | str | bytes | list["Value"] | dict[str, "Value"] | None
JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
# What the SDK's writes accept for a Value (the static type; values are validated at run time):
# any sequence for a list and any str-keyed mapping for an object, so that a ``list[int]`` or a
# TypedDict type-checks where a value goes (``list`` and ``dict`` are invariant, and a TypedDict
# is only a ``Mapping[str, object]`` to a type checker). The SDK sends them as lists and objects.
ValueInput: TypeAlias = (
    bool | int | float | str | bytes | Sequence["ValueInput"] | Mapping[str, object] | None
)

ORIGIN_MAX: Final = (1 << 64) - 1


class Timestamp(NamedTuple):
    """A totally ordered, cluster-unique hybrid logical clock reading."""

    physical_us: int
    logical: int
    origin: int

    def successor(self, origin: int) -> Timestamp:
        """The smallest timestamp of ``origin`` above ``self`` (same physical time)."""
        if origin > self.origin:
            return Timestamp(self.physical_us, self.logical, origin)
        return Timestamp(self.physical_us, self.logical + 1, origin)

    def __str__(self) -> str:
        return f"{self.physical_us}.{self.logical}.{self.origin:016x}"


TIMESTAMP_ZERO: Final = Timestamp(0, 0, 0)


def timestamp_from_wire(raw: object) -> Timestamp | None:
    """``raw`` as a timestamp when it is ``[physical_us, logical, origin]`` of integers in
    ``0..2**64-1`` (the wire form), else None. Callers that must say what is wrong follow up
    with their own typed error."""
    if type(raw) is list and len(raw) == 3:
        physical_us, logical, origin = raw
        if (
            type(physical_us) is int
            and type(logical) is int
            and type(origin) is int
            and 0 <= physical_us <= ORIGIN_MAX
            and 0 <= logical <= ORIGIN_MAX
            and 0 <= origin <= ORIGIN_MAX
        ):
            return Timestamp(physical_us, logical, origin)
    return None


# str(Timestamp): decimal integers without sign or leading zeros (at most 19 digits, so below
# 2**64; today's microseconds have 16), then 16 lowercase hex digits. The OpenAPI document's
# ``ReadAt`` pattern is this one.
_TS_TEXT: Final = re.compile(r"(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})\.([0-9a-f]{16})")


def timestamp_from_text(raw: object) -> Timestamp | None:
    """``raw`` as a timestamp when it is exactly a timestamp's text form (``str(ts)``: see the
    module), else None."""
    if type(raw) is not str:
        return None
    match = _TS_TEXT.fullmatch(raw)
    if match is None:
        return None
    return Timestamp(int(match[1]), int(match[2]), int(match[3], 16))
