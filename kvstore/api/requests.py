"""Parsing what an HTTP client sends: bodies, keys in paths, scan queries, cursors.

Theory of operation
-------------------
Everything from outside is parsed here, strictly, into the library's values, before anything
reaches a storage node (DESIGN section 6 rule 1). Each function raises only
:class:`~kvstore.errors.ValidationError` naming the offending field; nothing is repaired.

* Bodies must be UTF-8 JSON objects with exactly the members the endpoint allows, no member name
  twice (``{"value": 1, "value": 2}`` is refused rather than silently keeping the last), no
  ``NaN``/``Infinity`` literals. Parsing is bounded: the HTTP layer caps the byte count before
  calling :func:`json_object`, and a nesting too deep for the parser is a ValidationError.
* Keys and tokens in paths are percent-decoded from the *raw* request target (so ``%2F`` is a
  ``/`` inside a key, not a path separator), strictly: a ``%`` not followed by two hex digits, or
  bytes that are not UTF-8, are refused, where lenient decoders would pass them through.
* Scan queries are decoded the same way (``+`` is a space, as in form encoding); an unknown or
  repeated parameter is refused.
* ``POST /v1/read`` takes ``{"keys": [K, ...], "at"?: TS}``; ``at`` is a timestamp in exactly
  the text form the API returns (``"<physical_us>.<logical>.<origin as 16 hex digits>"``,
  :func:`~kvstore.timestamps.parse_timestamp`).
* ``POST /v1/admin/recover`` takes ``{"older_than_ms"?: int >= 0, "dry_run"?: bool}``; an absent
  ``older_than_ms`` is the cluster's stale-intent time.
* A scan cursor is ``c1.`` followed by the URL-safe base64 of the last key returned: opaque to
  clients, versioned so its form can change.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kvstore.errors import ValidationError
from kvstore.limits import SCAN_LIMIT_DEFAULT, SCAN_PAGE_ITEMS_MAX
from kvstore.ops import Op, op_from_json, ops_from_json, validate_token
from kvstore.timestamps import parse_timestamp
from kvstore.types import Key, Timestamp
from kvstore.values import validate_key

__all__ = [
    "json_object",
    "check_members",
    "decode_component",
    "put_op",
    "delete_op",
    "txn_request",
    "ReadQuery",
    "read_request",
    "RecoverRequest",
    "recover_request",
    "ScanQuery",
    "scan_query",
    "encode_cursor",
    "decode_cursor",
    "prefix_end",
]

_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CURSOR_PREFIX = "c1."
_SCAN_PARAMS = frozenset({"prefix", "start", "end", "limit", "cursor"})
_UNICODE_MAX = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for name, value in pairs:
        if name in obj:
            raise ValidationError("body", f"member {name[:64]!r} appears twice")
        obj[name] = value
    return obj


def _no_constants(name: str) -> object:
    raise ValidationError("body", f"{name} is not JSON")


def json_object(raw: bytes, field: str = "body") -> dict[str, object]:
    """``raw`` as a JSON object, parsed strictly (see the module docstring)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(field, "the body is not UTF-8") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as error:
        raise ValidationError(
            field, f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise ValidationError(field, "the JSON is nested too deeply") from None
    except ValueError as error:  # e.g. an integer literal with too many digits
        raise ValidationError(field, f"malformed JSON: {error}") from None
    if not isinstance(obj, dict):
        raise ValidationError(field, "must be a JSON object")
    return obj


def check_members(obj: Mapping[str, object], allowed: frozenset[str], field: str = "") -> None:
    unknown = sorted(name for name in obj if name not in allowed)
    if unknown:
        name = unknown[0][:64]
        raise ValidationError(
            f"{field}.{name}" if field else name,
            f"unknown member; allowed: {', '.join(sorted(allowed))}",
        )


def _percent_decode(raw: str, field: str, *, plus_is_space: bool) -> str:
    try:
        data = raw.encode("utf-8")  # raw UTF-8 in a request target is taken as it is
    except UnicodeEncodeError:
        raise ValidationError(field, "must be percent-encoded UTF-8") from None
    if _PERCENT.search(data):
        raise ValidationError(
            field, "invalid percent-encoding: '%' must be followed by two hex digits"
        )
    if plus_is_space:
        data = data.replace(b"+", b" ")
    decoded = bytearray()
    index = 0
    while index < len(data):
        byte = data[index]
        if byte == ord("%"):
            decoded.append(int(data[index + 1 : index + 3], 16))
            index += 3
        else:
            decoded.append(byte)
            index += 1
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(field, "the percent-decoded bytes are not UTF-8") from None


def decode_component(raw: str, field: str) -> str:
    """One percent-encoded path component (a key, a token)."""
    return _percent_decode(raw, field, plus_is_space=False)


def put_op(key: Key, body: Mapping[str, object]) -> Op:
    """``PUT /v1/kv/{key}``: ``{"value": V, "if"?: C}``."""
    validate_key(key, "key")  # from the path: an error names "key", not "body.key"
    check_members(body, frozenset({"value", "if"}))
    if "value" not in body:
        raise ValidationError("value", "a put needs a value")
    return op_from_json({"op": "put", "key": key, **body}, "body")


def delete_op(key: Key, body: Mapping[str, object]) -> Op:
    """``DELETE /v1/kv/{key}``: an optional ``{"if": C}``."""
    validate_key(key, "key")  # from the path: an error names "key", not "body.key"
    check_members(body, frozenset({"if"}))
    return op_from_json({"op": "delete", "key": key, **body}, "body")


def txn_request(body: Mapping[str, object], txn_ops_max: int) -> tuple[tuple[Op, ...], str | None]:
    """``POST /v1/txn``: ``{"ops": [OP, ...], "token"?: str}``."""
    check_members(body, frozenset({"ops", "token"}))
    if "ops" not in body:
        raise ValidationError("ops", "a transaction needs ops")
    ops = ops_from_json(body["ops"], txn_ops_max=txn_ops_max)
    token = validate_token(body["token"]) if "token" in body else None
    return ops, token


@dataclass(frozen=True, slots=True)
class ReadQuery:
    keys: list[str]
    at: Timestamp | None  # a snapshot read as of this timestamp; None: the latest


def read_request(body: Mapping[str, object]) -> ReadQuery:
    """``POST /v1/read``: ``{"keys": [K, ...], "at"?: TS}`` (the read core checks count and
    uniqueness; the coordinator library checks that ``at`` lies in the snapshot window)."""
    check_members(body, frozenset({"keys", "at"}))
    keys = body.get("keys")
    if not isinstance(keys, list):
        raise ValidationError("keys", "must be a list of keys")
    checked = [validate_key(key, f"keys[{index}]") for index, key in enumerate(keys)]
    at = parse_timestamp(body["at"], "at") if "at" in body else None
    return ReadQuery(keys=checked, at=at)


@dataclass(frozen=True, slots=True)
class RecoverRequest:
    older_than_ms: int
    dry_run: bool


def recover_request(body: Mapping[str, object], default_older_than_ms: int) -> RecoverRequest:
    """``POST /v1/admin/recover``: ``{"older_than_ms"?: int >= 0, "dry_run"?: bool}``."""
    check_members(body, frozenset({"older_than_ms", "dry_run"}))
    older_than_ms = body.get("older_than_ms", default_older_than_ms)
    if type(older_than_ms) is not int or older_than_ms < 0:
        raise ValidationError("older_than_ms", "must be an integer >= 0")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ValidationError("dry_run", "must be true or false")
    return RecoverRequest(older_than_ms=older_than_ms, dry_run=dry_run)


@dataclass(frozen=True, slots=True)
class ScanQuery:
    start: Key  # "" is the start of the key space
    end: Key | None  # exclusive; None: no upper bound
    limit: int
    after: Key | None  # from the cursor


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix`` (None: no bound)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code in _SURROGATES:
            code = _SURROGATES.stop
        if code <= _UNICODE_MAX:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def scan_query(raw_query: str) -> ScanQuery:
    """``GET /v1/scan``'s query string, raw as sent (see the module docstring)."""
    params: dict[str, str] = {}
    for pair in raw_query.split("&") if raw_query else ():
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        name = _percent_decode(raw_name, "query", plus_is_space=True)
        if name not in _SCAN_PARAMS:
            raise ValidationError(
                name[:64], f"unknown query parameter; allowed: {', '.join(sorted(_SCAN_PARAMS))}"
            )
        if name in params:
            raise ValidationError(name, "given more than once")
        params[name] = _percent_decode(raw_value, name, plus_is_space=True)
    start = params.get("start", "")
    end = params.get("end") or None
    for name in ("start", "end"):
        if params.get(name):
            validate_key(params[name], name)
    prefix = params.get("prefix", "")
    if prefix:
        validate_key(prefix, "prefix")
        start = max(start, prefix)
        bound = prefix_end(prefix)
        if bound is not None:
            end = bound if end is None else min(end, bound)
    limit_text = params.get("limit")
    limit = SCAN_LIMIT_DEFAULT
    if limit_text is not None:
        if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 6):
            raise ValidationError("limit", f"must be an integer in 1..{SCAN_PAGE_ITEMS_MAX}")
        limit = int(limit_text)
        if not 1 <= limit <= SCAN_PAGE_ITEMS_MAX:
            raise ValidationError("limit", f"must be an integer in 1..{SCAN_PAGE_ITEMS_MAX}")
    cursor = params.get("cursor")
    after = decode_cursor(cursor) if cursor else None
    return ScanQuery(start=start, end=end, limit=limit, after=after)


def encode_cursor(after: Key) -> str:
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(after.encode("utf-8")).decode("ascii")


def decode_cursor(cursor: str) -> Key:
    if not cursor.startswith(_CURSOR_PREFIX):
        raise ValidationError("cursor", "not a cursor this API returned")
    try:
        raw = base64.urlsafe_b64decode(cursor[len(_CURSOR_PREFIX) :].encode("ascii"))
        key = raw.decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise ValidationError("cursor", "not a cursor this API returned") from None
    try:
        return validate_key(key, "cursor")
    except ValidationError:
        raise ValidationError("cursor", "not a cursor this API returned") from None
