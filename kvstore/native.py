"""The native protocol: the SDK's calls as msgpack RPCs to the node that holds the data.

Theory of operation
-------------------
Every storage node runs the coordinator library (DESIGN section 2: every node is a gateway) and
serves, besides the partition requests its peers send, one RPC method per SDK call on the same
authenticated connection (:mod:`kvstore.rpc`, cluster secret). A client in native mode
(:mod:`kvstore.client.native`) sends each call to the node owning the call's home partition (the
key's, or for a transaction its token's, which the SDK draws on the first key's partition), so
a transaction whose keys live on that node never leaves its process.

This module is the protocol's one definition: method names, how each request body is checked
(the node checks what a client sent exactly as the HTTP API checks a body: keys, values,
operations, tokens and limits; a malformed body is ``ValidationError``, nothing runs) and how
answers are packed (plain msgpack lists, the SDK's result types in the same order of fields).
``kv.read``'s body is ``{"keys": [K, ...], "at"?: TS}``, ``at`` (a snapshot read) in the text
form items carry their ``ts`` in (``"<physical_us>.<logical>.<origin as 16 hex digits>"``).
Errors travel as the RPC layer's error frames: the catalogue's code, message and details.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple, cast

from kvstore.client.backend import ScanPage
from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.codec import decode_op, encode_op
from kvstore.errors import ProtocolViolation, ValidationError
from kvstore.limits import READ_KEYS_MAX, SCAN_PAGE_ITEMS_MAX, TXN_OPS_MAX_CEILING
from kvstore.ops import Op, validate_token
from kvstore.timestamps import parse_timestamp
from kvstore.types import JsonValue, Timestamp
from kvstore.values import validate_key

__all__ = [
    "METHODS",
    "GET",
    "PUT",
    "DELETE",
    "TRANSACT",
    "READ",
    "SCAN",
    "TXN_OUTCOME",
    "BACKUP_PAGE",
    "RESTORE",
    "PARTITION_PAGE",
    "body_object",
    "body_key",
    "body_op",
    "body_ops",
    "body_keys",
    "body_at",
    "body_token",
    "body_scan",
    "ScanArgs",
    "encode_op_body",
    "encode_read_body",
    "encode_item",
    "decode_item",
    "encode_written",
    "decode_written",
    "encode_deleted",
    "decode_deleted",
    "encode_committed",
    "decode_committed",
    "encode_scan_page",
    "decode_scan_page",
]

GET: Final = "kv.get"
PUT: Final = "kv.put"
DELETE: Final = "kv.delete"
TRANSACT: Final = "kv.transact"
READ: Final = "kv.read"
SCAN: Final = "kv.scan"
TXN_OUTCOME: Final = "kv.txn_outcome"
# For kvctl's backups and restores (docs/backup.md): bodies are the internal ``scan`` (``at``
# optional: the node's clock then picks it) and ``restore`` requests of kvstore.codec.
BACKUP_PAGE: Final = "kv.backup_page"
RESTORE: Final = "kv.restore"
# One page of a partition's committed items, every key included (the store's own namespace too,
# which kv.scan leaves out): the internal ``scan`` request without ``at`` (a restore's check that
# its target is empty).
PARTITION_PAGE: Final = "kv.partition_page"
METHODS: Final = frozenset(
    {GET, PUT, DELETE, TRANSACT, READ, SCAN, TXN_OUTCOME, BACKUP_PAGE, RESTORE, PARTITION_PAGE}
)


# --- request bodies (checked by the node) -------------------------------------------------


def body_object(body: object, allowed: frozenset[str]) -> Mapping[str, object]:
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise ValidationError("body", "must be a map with string keys")
    unknown = set(body) - allowed
    if unknown:
        raise ValidationError("body", f"unknown member {sorted(unknown)[0]!r}")
    return body


def body_key(body: Mapping[str, object]) -> str:
    return validate_key(body.get("key"))


def body_op(body: Mapping[str, object]) -> Op:
    return decode_op(body.get("op"))


def body_ops(body: Mapping[str, object]) -> list[Op]:
    raw = body.get("ops")
    if not isinstance(raw, list) or not 1 <= len(raw) <= TXN_OPS_MAX_CEILING:
        raise ValidationError("ops", f"must be a list of 1..{TXN_OPS_MAX_CEILING} operations")
    return [decode_op(item, f"ops[{i}]") for i, item in enumerate(raw)]


def body_keys(body: Mapping[str, object]) -> list[str]:
    raw = body.get("keys")
    if not isinstance(raw, list) or not 1 <= len(raw) <= READ_KEYS_MAX:
        raise ValidationError("keys", f"must be a list of 1..{READ_KEYS_MAX} keys")
    return [validate_key(key, f"keys[{i}]") for i, key in enumerate(raw)]


def body_at(body: Mapping[str, object]) -> Timestamp | None:
    """A read's optional ``at``: a timestamp in its text form (``str(ts)``, as items carry it)."""
    raw = body.get("at")
    return None if raw is None else parse_timestamp(raw, "at")


def body_token(body: Mapping[str, object]) -> str:
    return validate_token(body.get("token"))


def body_scan(body: Mapping[str, object]) -> ScanArgs:
    """The arguments of one scan page: ``prefix``, ``start``, ``end`` and ``cursor`` (keys, or
    None where open; the cursor is the last key of the previous page) and ``limit``."""
    bounds: dict[str, str | None] = {}
    for name in ("prefix", "start", "end", "cursor"):
        raw = body.get(name)
        bounds[name] = None if raw is None or raw == "" else validate_key(raw, name)
    limit = body.get("limit")
    if type(limit) is not int or not 1 <= limit <= SCAN_PAGE_ITEMS_MAX:
        raise ValidationError("limit", f"must be an integer in 1..{SCAN_PAGE_ITEMS_MAX}")
    return ScanArgs(bounds["prefix"], bounds["start"], bounds["end"], limit, bounds["cursor"])


class ScanArgs(NamedTuple):
    prefix: str | None
    start: str | None
    end: str | None
    limit: int
    cursor: str | None


def encode_op_body(op: Op) -> dict[str, object]:
    return {"op": encode_op(op)}


def encode_read_body(keys: Sequence[str], at: Timestamp | None) -> dict[str, object]:
    """``kv.read``'s body: ``{"keys": [K, ...], "at"?: "<ts text>"}``."""
    body: dict[str, object] = {"keys": list(keys)}
    if at is not None:
        body["at"] = str(at)
    return body


# --- answers (packed by the node, unpacked by the client) ----------------------------------


def _fields(raw: object, count: int, what: str) -> Sequence[object]:
    if not isinstance(raw, list) or len(raw) != count:
        raise ProtocolViolation(f"malformed {what} in a node's answer")
    return raw


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolViolation(f"malformed {what} in a node's answer")
    return value


def _int(value: object, what: str) -> int:
    if type(value) is not int:
        raise ProtocolViolation(f"malformed {what} in a node's answer")
    return value


def encode_item(item: Item | None) -> object:
    return None if item is None else [item.key, item.value, item.version, item.ts]


def decode_item(raw: object) -> Item | None:
    if raw is None:
        return None
    key, value, version, ts = _fields(raw, 4, "item")
    json_value = cast(JsonValue, value)  # a node packs only JSON-shaped values
    return Item(_str(key, "key"), json_value, _int(version, "version"), _str(ts, "ts"))


def encode_written(written: Written) -> object:
    return [written.version, written.ts]


def decode_written(raw: object) -> Written:
    version, ts = _fields(raw, 2, "put answer")
    return Written(version=_int(version, "version"), ts=_str(ts, "ts"))


def encode_deleted(deleted: Deleted) -> object:
    return [deleted.deleted, deleted.ts]


def decode_deleted(raw: object) -> Deleted:
    existed, ts = _fields(raw, 2, "delete answer")
    if type(existed) is not bool:
        raise ProtocolViolation("malformed delete answer from a node")
    return Deleted(deleted=existed, ts=None if ts is None else _str(ts, "ts"))


def encode_committed(committed: Committed) -> object:
    return [committed.txn_id, committed.ts]


def decode_committed(raw: object) -> Committed:
    txn_id, ts = _fields(raw, 2, "transaction answer")
    return Committed(txn_id=_str(txn_id, "txn_id"), ts=_str(ts, "ts"))


def encode_scan_page(page: ScanPage) -> object:
    return [[encode_item(item) for item in page.items], page.cursor]


def decode_scan_page(raw: object) -> ScanPage:
    items, cursor = _fields(raw, 2, "scan page")
    if not isinstance(items, list):
        raise ProtocolViolation("malformed scan page from a node")
    decoded = tuple(decode_item(item) for item in items)
    if any(item is None for item in decoded):
        raise ProtocolViolation("malformed scan page from a node")
    return ScanPage(
        items=tuple(item for item in decoded if item is not None),
        cursor=None if cursor is None else _str(cursor, "cursor"),
    )
