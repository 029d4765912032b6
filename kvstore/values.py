"""Keys and values of the data model (DESIGN section 3): validation, encoded size, equality.

Theory of operation
-------------------
A key is a ``str`` of 1..``KEY_BYTES_MAX`` UTF-8 bytes. Keys whose first character is U+0000
(:data:`INTERNAL_KEY_PREFIX`) are the store's own namespace (the DynamoDB endpoint's tables and
items, :mod:`kvstore.dynamodb.keys`): the public API and the SDK refuse them, and public scans
start at :data:`PUBLIC_KEY_MIN`, above all of them; inside the cluster (the codec, the
coordinator) they are valid up to ``INTERNAL_KEY_BYTES_MAX`` bytes (``internal=True``). A value
is JSON-compatible data plus ``bytes``: ``None``, ``bool``, ``int`` in the range msgpack can
encode (``INT_MIN``..``INT_MAX``), finite ``float``, ``str``, ``bytes``, ``list`` and ``dict``
with ``str`` keys. Tuples, sets, bytearrays and every other type are refused, so what is stored
is exactly what comes back.

:func:`validate_value` walks the value with an explicit stack, never with recursion, so hostile
input (deep nesting, self-referencing lists) cannot exhaust the interpreter's stack: it refuses
anything nested deeper than ``VALUE_DEPTH_MAX`` before looking further down. While walking it
adds up the exact msgpack-encoded size (the same number :func:`value_size_bytes` gets from
``msgpack.packb``) and stops as soon as the running total passes ``VALUE_BYTES_MAX``, so an
oversized value costs at most about the limit's worth of work. Error fields point into the
structure: ``value.a.b``, ``value.items[3]``, ``value["odd.key"]``.

:func:`values_equal` is JSON equality: a bool is never equal to a number, ``1 == 1.0``, bytes
equal only bytes, containers compare element-wise. It too is iterative.
"""

from __future__ import annotations

import json
import math
from typing import Final, cast

import msgpack

from kvstore.errors import ValidationError
from kvstore.limits import (
    INTERNAL_KEY_BYTES_MAX,
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    VALUE_DEPTH_MAX,
)
from kvstore.types import Value

__all__ = [
    "INT_MIN",
    "INT_MAX",
    "INTERNAL_KEY_PREFIX",
    "PUBLIC_KEY_MIN",
    "validate_key",
    "validate_value",
    "value_size_bytes",
    "values_equal",
    "is_number",
    "member_field",
    "index_field",
]

INTERNAL_KEY_PREFIX: Final = "\x00"  # the first character of every key of the store's own.
PUBLIC_KEY_MIN: Final = "\x01"  # the smallest key the public API may use (a public scan's start).
INT_MIN: Final = -(1 << 63)  # smallest integer msgpack encodes (int64).
INT_MAX: Final = (1 << 64) - 1  # largest integer msgpack encodes (uint64).

# Display only: how much of an odd member name goes into an error's field.
_FIELD_NAME_SHOWN_CHARS: Final = 64
_PLAIN_NAME_FORBIDDEN: Final = frozenset('.[]"\\')


def member_field(field: str, name: object) -> str:
    """``field.name`` for a plain member name, ``field["odd.name"]`` otherwise (for errors)."""
    if isinstance(name, str):
        shown = name[:_FIELD_NAME_SHOWN_CHARS]
        suffix = "..." if len(name) > _FIELD_NAME_SHOWN_CHARS else ""
        if shown and shown.isprintable() and not (_PLAIN_NAME_FORBIDDEN & set(shown)):
            return f"{field}.{shown}{suffix}"
        quoted = json.dumps(shown)  # escapes quotes, control characters and lone surrogates
        return f"{field}[{quoted[:-1]}{suffix}{quoted[-1]}]"
    return f"{field}[{type(name).__name__}]"


def index_field(field: str, index: int) -> str:
    """``field[index]`` (for errors)."""
    return f"{field}[{index}]"


def is_number(value: object) -> bool:
    """True for ``int`` and ``float``, false for ``bool`` (which is never a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _utf8_length(text: str, field: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(
            field, f"{what} is not valid UTF-8 (it contains a lone surrogate)"
        ) from None


def validate_key(key: object, field: str = "key", *, internal: bool = False) -> str:
    """Return ``key`` if it is a valid key, else raise :class:`ValidationError`. With
    ``internal``, keys of the store's own namespace are valid too (inside the cluster)."""
    if not isinstance(key, str):
        raise ValidationError(field, f"a key must be a string, not {type(key).__name__}")
    own = key.startswith(INTERNAL_KEY_PREFIX)
    if own and not internal:
        raise ValidationError(
            field,
            "keys starting with U+0000 are reserved for the store's own tables"
            " (the DynamoDB endpoint's)",
        )
    bytes_max = INTERNAL_KEY_BYTES_MAX if own else KEY_BYTES_MAX
    if len(key) > bytes_max:  # every character is at least one byte
        raise ValidationError(field, f"a key is at most {bytes_max} bytes of UTF-8")
    size = _utf8_length(key, field, "the key")
    if size == 0:
        raise ValidationError(field, "a key must not be empty")
    if size > bytes_max:
        raise ValidationError(
            field, f"a key is at most {bytes_max} bytes of UTF-8, this one is {size}"
        )
    return key


def _int_size(value: int) -> int:
    if value >= 0:
        if value < 0x80:
            return 1
        if value <= 0xFF:
            return 2
        if value <= 0xFFFF:
            return 3
        if value <= 0xFFFF_FFFF:
            return 5
        return 9
    if value >= -32:
        return 1
    if value >= -0x80:
        return 2
    if value >= -0x8000:
        return 3
    if value >= -0x8000_0000:
        return 5
    return 9


def _str_header_size(length: int) -> int:
    if length < 32:
        return 1
    if length <= 0xFF:
        return 2
    if length <= 0xFFFF:
        return 3
    return 5


def _bin_header_size(length: int) -> int:
    if length <= 0xFF:
        return 2
    if length <= 0xFFFF:
        return 3
    return 5


def _container_header_size(length: int) -> int:
    if length < 16:
        return 1
    if length <= 0xFFFF:
        return 3
    return 5


def _too_large(field: str, at_least: int) -> ValidationError:
    return ValidationError(
        field,
        f"the encoded value is larger than the limit of {VALUE_BYTES_MAX} bytes"
        f" (at least {at_least} bytes)",
        details={"limit_bytes": VALUE_BYTES_MAX},
    )


def validate_value(value: object, field: str = "value") -> Value:
    """Return ``value`` unchanged if it is a valid value, else raise :class:`ValidationError`.

    Checks types, integer range, float finiteness, UTF-8 of strings and object keys, nesting
    (at most ``VALUE_DEPTH_MAX`` lists/objects deep) and the encoded size.
    """
    size = 0
    # (item, field of the item, number of containers enclosing the item)
    stack: list[tuple[object, str, int]] = [(value, field, 0)]
    while stack:
        item, where, depth = stack.pop()
        if item is None or isinstance(item, bool):
            size += 1
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise ValidationError(where, f"integers must lie in {INT_MIN}..{INT_MAX} (64 bits)")
            size += _int_size(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(where, f"floats must be finite, not {item!r}")
            size += 9
        elif isinstance(item, str):
            if len(item) > VALUE_BYTES_MAX:
                raise _too_large(where, size + len(item))
            length = _utf8_length(item, where, "the string")
            size += _str_header_size(length) + length
        elif isinstance(item, bytes):
            size += _bin_header_size(len(item)) + len(item)
        elif isinstance(item, list | dict):
            if depth >= VALUE_DEPTH_MAX:
                raise ValidationError(
                    where, f"values are nested at most {VALUE_DEPTH_MAX} lists/objects deep"
                )
            size += _container_header_size(len(item))
            if size + len(item) > VALUE_BYTES_MAX:  # every element is at least one byte
                raise _too_large(where, size + len(item))
            if isinstance(item, list):
                for index in range(len(item) - 1, -1, -1):
                    stack.append((item[index], index_field(where, index), depth + 1))
            else:
                for name in reversed(item):
                    if not isinstance(name, str):
                        raise ValidationError(
                            where, f"object keys must be strings, not {type(name).__name__}"
                        )
                    if len(name) > VALUE_BYTES_MAX:
                        raise _too_large(where, size + len(name))
                    length = _utf8_length(name, member_field(where, name), "the object key")
                    size += _str_header_size(length) + length
                    if size > VALUE_BYTES_MAX:
                        raise _too_large(field, size)
                    stack.append((item[name], member_field(where, name), depth + 1))
        else:
            kind = type(item).__name__
            hint = " (use a list)" if isinstance(item, tuple) else ""
            raise ValidationError(where, f"unsupported value type {kind}{hint}")
        if size > VALUE_BYTES_MAX:
            raise _too_large(field, size)
    return cast(Value, value)


def value_size_bytes(value: Value) -> int:
    """The msgpack-encoded size of ``value`` (what the size limit counts)."""
    return len(msgpack.packb(value, use_bin_type=True))


def values_equal(a: Value, b: Value) -> bool:
    """JSON equality: ``True != 1``, ``1 == 1.0``, bytes only equal bytes; element-wise."""
    stack: list[tuple[Value, Value]] = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, bool) or isinstance(y, bool):
            if not (isinstance(x, bool) and isinstance(y, bool) and x == y):
                return False
        elif is_number(x) or is_number(y):
            if not (is_number(x) and is_number(y) and x == y):
                return False
        elif x is None or y is None:
            if not (x is None and y is None):
                return False
        elif isinstance(x, str) or isinstance(y, str):
            if not (isinstance(x, str) and isinstance(y, str) and x == y):
                return False
        elif isinstance(x, bytes) or isinstance(y, bytes):
            if not (isinstance(x, bytes) and isinstance(y, bytes) and x == y):
                return False
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, dict) and isinstance(y, dict):
            if len(x) != len(y):
                return False
            for name, item in x.items():
                if name not in y:
                    return False
                stack.append((item, y[name]))
        else:
            return False
    return True
