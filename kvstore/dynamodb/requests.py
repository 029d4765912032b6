"""Members of a DynamoDB request body, checked with DynamoDB's words.

Theory of operation
-------------------
botocore checks a request's types and minimums before it sends it, never its maximums
(reference ``dynamodb-api.md`` section 1), and hand-written requests check nothing; so every
operation reads its members through these functions, which refuse a wrong JSON type as
DynamoDB's ``SerializationException`` and a bad value as ``ValidationException`` in AWS's own
phrasing ("1 validation error detected: Value ... at 'tableName' failed to satisfy constraint:
..."). They never evaluate anything: the operations decide what a member means.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from kvstore.dynamodb.attributes import serialization_error
from kvstore.errors import ValidationError

__all__ = [
    "Body",
    "invalid",
    "constraint",
    "optional_str",
    "required_str",
    "optional_bool",
    "optional_int",
    "optional_enum",
    "optional_object",
    "required_object",
    "optional_list",
    "required_list",
    "table_name",
]

Body = Mapping[str, object]

TABLE_NAME_CHARS_MIN: Final = 3
TABLE_NAME_CHARS_MAX: Final = 255  # DynamoDB's table name rule, not a limit of ours
_TABLE_NAME: Final = re.compile(r"[a-zA-Z0-9_.\-]+")
_SHOWN_CHARS: Final = 100  # of a bad value, in a message


def invalid(message: str) -> ValidationError:
    """A ValidationException with exactly AWS's message."""
    return ValidationError("", message)


def constraint(member: str, value: object, rule: str) -> ValidationError:
    """AWS's one-constraint message: ``Value 'x' at 'member' failed to satisfy constraint``."""
    shown = "null" if value is None else str(value)[:_SHOWN_CHARS]
    return invalid(
        f"1 validation error detected: Value '{shown}' at '{_lower_first(member)}' failed to "
        f"satisfy constraint: {rule}"
    )


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _wrong_type(member: str, expected: str) -> ValidationError:
    return serialization_error(f"Unexpected value type for '{member}': expected {expected}")


def optional_str(body: Body, member: str) -> str | None:
    raw = body.get(member)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _wrong_type(member, "a string")
    return raw


def required_str(body: Body, member: str) -> str:
    raw = optional_str(body, member)
    if raw is None:
        raise constraint(member, None, "Member must not be null")
    return raw


def optional_bool(body: Body, member: str, default: bool) -> bool:
    raw = body.get(member)
    if raw is None:
        return default
    if not isinstance(raw, bool):
        raise _wrong_type(member, "a boolean")
    return raw


def optional_int(body: Body, member: str, low: int, high: int) -> int | None:
    raw = body.get(member)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _wrong_type(member, "an integer")
    if raw < low:
        raise constraint(member, raw, f"Member must have value greater than or equal to {low}")
    if raw > high:
        raise constraint(member, raw, f"Member must have value less than or equal to {high}")
    return raw


def optional_enum(body: Body, member: str, allowed: Sequence[str], default: str) -> str:
    raw = optional_str(body, member)
    if raw is None:
        return default
    if raw not in allowed:
        raise constraint(member, raw, f"Member must satisfy enum value set: [{', '.join(allowed)}]")
    return raw


def optional_object(body: Body, member: str) -> Mapping[str, object] | None:
    raw = body.get(member)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _wrong_type(member, "an object")
    return raw


def required_object(body: Body, member: str) -> Mapping[str, object]:
    raw = optional_object(body, member)
    if raw is None:
        raise constraint(member, None, "Member must not be null")
    return raw


def optional_list(body: Body, member: str) -> list[object] | None:
    raw = body.get(member)
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _wrong_type(member, "a list")
    return raw


def required_list(body: Body, member: str) -> list[object]:
    raw = optional_list(body, member)
    if raw is None:
        raise constraint(member, None, "Member must not be null")
    return raw


def table_name(body: Body, member: str = "TableName") -> str:
    """A table name: 3..255 characters of ``[a-zA-Z0-9_.-]``."""
    name = required_str(body, member)
    if not TABLE_NAME_CHARS_MIN <= len(name) <= TABLE_NAME_CHARS_MAX:
        raise constraint(
            member,
            name,
            f"Member must have length less than or equal to {TABLE_NAME_CHARS_MAX}"
            if len(name) > TABLE_NAME_CHARS_MAX
            else f"Member must have length greater than or equal to {TABLE_NAME_CHARS_MIN}",
        )
    if not _TABLE_NAME.fullmatch(name):
        raise constraint(
            member, name, "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        )
    return name
