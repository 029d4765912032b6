"""Where DynamoDB tables and items live in the store's key space.

Theory of operation
-------------------
Every key here belongs to the store's own namespace (first character U+0000, refused by the
public API: :mod:`kvstore.values`), and routes on its part before its first U+0001
(:func:`kvstore.partitioning.routing_key`):

* The catalogue: ``"\\x00c\\x01" + table name``. Every table record shares the routing key
  ``"\\x00c"``, so they live in one partition in name order and ``ListTables`` is one ordered
  read of it.
* Items: ``"\\x00d/" + table id + "/" + hash digest + "\\x01" + sort text``. The table id is a
  random 16-hex-digit identifier drawn at ``CreateTable``, so a re-created table never sees the
  rows of a deleted one. The hash digest is BLAKE2b-128 (32 hex digits) of the hash key's type
  and normalised bytes (numbers by their normalised text, so ``1e3`` and ``1000`` are one key):
  every item of one hash key shares its routing key, hence its partition, and a ``Query`` is
  one range read of one partition. Hash keys may be 2,048 bytes; the digest keeps the store key
  short (two distinct hash keys of one table colliding in 128 bits is not a practical concern).
  Scan order across hash keys is digest order, which DynamoDB leaves unspecified.
* The sort text makes the store's key order (UTF-8 bytes, which is code point order) the sort
  key's order: the sort key's order-preserving bytes (S: its UTF-8, B: itself, N:
  :func:`number_order_bytes`), each byte ``b`` written as the character ``chr(b + 1)``. That map
  is monotonic and never yields U+0000, so ``text + "\\x00"`` is the least key above ``text``
  (an exclusive bound just past one sort key) and no key of the range starts with a character
  above U+0100 (:data:`SORT_TEXT_CEILING` bounds a prefix's range). A table without a sort key
  has an empty sort text.

Ranges (:class:`KeyRange`) are ``[start, end)`` pairs of store keys; :func:`sort_range` maps a
key condition's sort-key test onto one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

__all__ = [
    "CATALOG_PREFIX",
    "ITEM_PREFIX",
    "SORT_TEXT_CEILING",
    "KeyRange",
    "catalog_key",
    "table_prefix",
    "table_range",
    "hash_digest",
    "hash_prefix",
    "hash_range",
    "item_key",
    "number_order_bytes",
    "sort_text",
    "sort_range",
    "digest_slice",
]

CATALOG_PREFIX: Final = "\x00c\x01"
ITEM_PREFIX: Final = "\x00d/"
SORT_TEXT_CEILING: Final = "\u0101"  # above every character of a sort text
_DIGEST_BYTES: Final = 16
_DIGEST_HEX: Final = 2 * _DIGEST_BYTES


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Store keys ``start <= key < end``."""

    start: str
    end: str


def catalog_key(table_name: str) -> str:
    return CATALOG_PREFIX + table_name


def table_prefix(table_id: str) -> str:
    return f"{ITEM_PREFIX}{table_id}/"


def table_range(table_id: str) -> KeyRange:
    """Every item of the table (``"/"`` + 1 is ``"0"``)."""
    return KeyRange(table_prefix(table_id), f"{ITEM_PREFIX}{table_id}0")


def hash_digest(key_type: str, raw: bytes) -> str:
    """32 hex digits naming one hash key (its DynamoDB type and normalised bytes)."""
    hasher = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    hasher.update(key_type.encode("ascii") + b"\x00")
    hasher.update(raw)
    return hasher.hexdigest()


def hash_prefix(table_id: str, digest: str) -> str:
    """The prefix of every item key of one hash key (ends with the U+0001 separator)."""
    return f"{table_prefix(table_id)}{digest}\x01"


def hash_range(table_id: str, digest: str) -> KeyRange:
    prefix = hash_prefix(table_id, digest)
    return KeyRange(prefix, prefix[:-1] + "\x02")


def item_key(table_id: str, digest: str, sort: str) -> str:
    """The store key of one item (``sort``: its sort text, ``""`` without a sort key)."""
    return hash_prefix(table_id, digest) + sort


def number_order_bytes(number: Decimal) -> bytes:
    """Bytes whose order is the numeric order of finite decimals (``number`` normalised).

    One class byte (negative 0x01, zero 0x02, positive 0x03); then, for a positive number, its
    adjusted exponent biased into two bytes and its significant digits as ASCII (trailing zeros
    dropped, so among equal exponents a shorter digit string is the smaller number); for a
    negative one the same, each byte inverted, and a terminator 0xFF so that a longer digit
    string (a larger magnitude) sorts first.
    """
    if number.is_zero():
        return b"\x02"
    sign, digits, _ = number.as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    exponent = number.adjusted() + 0x8000
    body = exponent.to_bytes(2, "big") + text.encode("ascii")
    if not sign:
        return b"\x03" + body
    return b"\x01" + bytes(0xFF - b for b in body) + b"\xff"


def sort_text(raw: bytes) -> str:
    """The order-preserving text of a sort key's order bytes."""
    return "".join([chr(b + 1) for b in raw])


def sort_range(
    table_id: str, digest: str, operator: str | None, low: str = "", high: str = ""
) -> KeyRange:
    """The store keys of one hash key whose sort text satisfies ``operator`` against ``low``
    (and ``high`` for ``BETWEEN``): one of ``None`` (every item), ``=``, ``<``, ``<=``, ``>``,
    ``>=``, ``BETWEEN``, ``begins_with``."""
    whole = hash_range(table_id, digest)
    prefix = whole.start
    if operator is None:
        return whole
    if operator == "=":
        return KeyRange(prefix + low, prefix + low + "\x00")
    if operator == "<":
        return KeyRange(prefix, prefix + low)
    if operator == "<=":
        return KeyRange(prefix, prefix + low + "\x00")
    if operator == ">":
        return KeyRange(prefix + low + "\x00", whole.end)
    if operator == ">=":
        return KeyRange(prefix + low, whole.end)
    if operator == "BETWEEN":
        return KeyRange(prefix + low, prefix + high + "\x00")
    if operator == "begins_with":
        return KeyRange(prefix + low, prefix + low + SORT_TEXT_CEILING)
    raise ValueError(f"not a sort-key operator: {operator}")


def digest_slice(table_id: str, segment: int, total_segments: int) -> KeyRange:
    """The items of a table whose hash digest lies in segment ``segment`` of ``total_segments``
    equal slices of the digest space (a parallel ``Scan``'s share)."""
    space = 1 << (8 * _DIGEST_BYTES)
    prefix = table_prefix(table_id)
    low = segment * space // total_segments
    high = (segment + 1) * space // total_segments
    start = prefix + format(low, f"0{_DIGEST_HEX}x")
    end = table_range(table_id).end if high >= space else prefix + format(high, f"0{_DIGEST_HEX}x")
    return KeyRange(start, end)
