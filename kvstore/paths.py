"""Attribute paths into object values (DESIGN section 3).

Theory of operation
-------------------
A path names an attribute inside a value by a dotted list of object member names: ``"a.b"`` is
``value["a"]["b"]``. The empty string is the empty path, the whole value. A :data:`Path` is the
tuple of member names; it is what conditions and update actions carry, and :func:`format_path`
turns it back into the text :func:`parse_path` read, exactly. Member names cannot contain a dot
and cannot be empty, so members with such names are stored fine but cannot be addressed.

Paths descend through objects only: there is no list indexing. :func:`get_at` reports a path
that runs into a missing member or through a non-object as not found, never as an error; the
callers (conditions, updates) decide what not found means for them.
"""

from __future__ import annotations

from typing import TypeAlias

from kvstore.errors import ValidationError
from kvstore.limits import PATH_BYTES_MAX, PATH_SEGMENTS_MAX
from kvstore.types import Value

__all__ = ["Path", "ROOT", "parse_path", "format_path", "get_at", "is_prefix"]

Path: TypeAlias = tuple[str, ...]
ROOT: Path = ()


def parse_path(text: object, field: str = "path") -> Path:
    """Parse a dotted attribute path; ``""`` is the whole value. Raises ValidationError."""
    if not isinstance(text, str):
        raise ValidationError(field, f"a path must be a string, not {type(text).__name__}")
    if len(text) > PATH_BYTES_MAX:  # every character is at least one byte
        raise ValidationError(field, f"a path is at most {PATH_BYTES_MAX} bytes of UTF-8")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(
            field, "the path is not valid UTF-8 (it contains a lone surrogate)"
        ) from None
    if size > PATH_BYTES_MAX:
        raise ValidationError(
            field, f"a path is at most {PATH_BYTES_MAX} bytes of UTF-8, this one is {size}"
        )
    if text == "":
        return ROOT
    segments = tuple(text.split("."))
    if "" in segments:
        raise ValidationError(
            field, f"empty attribute name in path {text!r} (leading, trailing or double dot)"
        )
    if len(segments) > PATH_SEGMENTS_MAX:
        raise ValidationError(
            field,
            f"a path has at most {PATH_SEGMENTS_MAX} attribute names, this one has {len(segments)}",
        )
    return segments


def format_path(path: Path) -> str:
    """The dotted text of ``path`` (``""`` for the whole value); inverse of parse_path."""
    return ".".join(path)


def is_prefix(prefix: Path, path: Path) -> bool:
    """True if ``prefix`` equals ``path`` or names an object enclosing it."""
    return len(prefix) <= len(path) and path[: len(prefix)] == prefix


def get_at(value: Value, path: Path) -> tuple[bool, Value]:
    """``(True, attribute)`` if ``path`` leads through objects to an attribute, else
    ``(False, None)``. The empty path finds the whole value."""
    current = value
    for name in path:
        if not isinstance(current, dict) or name not in current:
            return False, None
        current = current[name]
    return True, current
