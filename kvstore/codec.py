"""Internal messages to and from msgpack primitives, for the RPC wire and for SQLite records.

Theory of operation
-------------------
Every request and reply of :mod:`kvstore.messages` has one encoder and one decoder here, kept
in tables keyed by class and by wire method name. Encoders produce only ``None``, ``bool``,
``int``, ``float``, ``str``, ``bytes``, ``list`` and ``dict`` with ``str`` keys; the transport
packs those with msgpack and the storage node stores ledger records the same way.

Forms: a dataclass is an object whose members are its field names; a member whose value is
the field's default may be left out (encoders leave out ``outcomes=()``, ``error=None`` and the
like to keep frames small) and decoders fill the default back in. A :class:`Timestamp` is the
list ``[physical_us, logical, origin]``; tuples are lists; ``ReasonCode`` and ``TxnState`` are
their string values; an ``ErrorCode`` is its member name; an ``Op`` is the public JSON form of
:func:`kvstore.ops.op_to_json`, so outside data has one parser.

Decoders face whatever a peer or a damaged database sends, so they are strict and total: any
malformed input (wrong type, missing or unknown member, out-of-range integer, bool where an
integer belongs, unknown method) raises :class:`ValidationError` naming the offending field by
its dotted path (``ops[2].key``, ``ledger.ts``, ``entries[0].value.a``) and nothing else ever
escapes. Nothing is recursive beyond the fixed nesting of the messages themselves; values go
through the iterative :func:`validate_value` and ops through :func:`op_from_json` (bounded), and
every list is length-checked before its elements are looked at, so hostile input costs bounded
work. Write transactions are checked as a whole by :func:`validate_txn_ops` at the ceiling
``TXN_OPS_MAX_CEILING``; the configured, lower limit is the coordinator's business.

Trusted decoding
----------------
``decode_request(method, body, trusted=True)`` is the storage node's path: its callers passed
the cluster secret in the RPC handshake, and their ops were parsed and checked by a coordinator
at the public edge. It is as total as the strict path (only :class:`ValidationError`, bounded
work) and, for every body whose transaction is within ``TXN_BYTES_MAX``, gives the same message
or the same refusal, field and message included (the unit tests hold it to that). What it drops
is the repeated work, not the checks that protect the node:

* Still checked: the shape of every object; partition ids, transaction id, timestamp, token,
  fingerprint and a prepare's ledger record, as above; the op list's length (at most
  ``TXN_OPS_MAX_CEILING``, which bounds the work), at least one op, distinct keys; each op's
  kind, members, key, ``return_item``, a check's condition; the structure of conditions (node
  count and nesting, which the recursive evaluation relies on) and of update actions; and every
  value and comparison operand gets exactly :func:`validate_value`'s verdict. Values cannot be
  taken on trust: the node stores each op in its intent and reads intents back at every start
  through the strict :func:`decode_op` (its database may be damaged), so a value validate_value
  refuses (a NaN, 65 levels deep, over 400 KiB) would leave a partition the node cannot open.
* Not checked again: the transaction's total encoded size (:func:`validate_txn_ops` packs every
  op once more, about 2 µs an op). The coordinator enforced it, a call is bounded by the frame
  size (``RPC_FRAME_BYTES_MAX``, twice the limit) anyway, and nothing stored depends on it.
* Built directly: puts, deletes and checks of the usual shape (an ASCII key; no condition, or
  one ``exists``, ``version`` or path comparison leaf) become an :class:`Op` without the generic
  parser, and an error path is never formatted unless something is wrong. A value is judged by
  ``_value_ok``: one walk over the containers (types, object keys, finite floats, nesting) and
  one msgpack packing (integer range, UTF-8, the exact encoded size): about 1.2 µs for a
  100-byte document, where validate_value spends 11 µs formatting every member's error path as
  it goes. Every other op (updates, compound conditions, other keys) and every op the fast path
  doubts goes through decode_op, which accepts it or raises naming the field.

Ranges: partition ids ``0..PARTITIONS_MAX-1``; versions ``0..2**63-1`` (SQLite INTEGER);
timestamp parts, microsecond times and counts ``0..2**64-1``; transaction ids, node ids and
fingerprints at most 128 characters; lists at most their limit (ops and outcomes
``TXN_OPS_MAX_CEILING``, a node execute's ``placement`` one partition id per op, read keys and
entries ``READ_KEYS_MAX``, scan items ``SCAN_PAGE_ITEMS_MAX``, a replicate message's batches
``REPL_BATCHES_PER_MESSAGE_MAX``, each table of rows ``RPC_FRAME_BYTES_MAX``: every row takes at
least a byte of the frame that carried it, so the frame's size is their bound).

Replication
-----------
``replicate`` and ``position`` are addressed to a node (``node``), not to the partition's owner
(:mod:`kvstore.transport`). A replicate message carries whole rows of the store
(:mod:`kvstore.storage_node.store`): write batches (:class:`ShippedBatch` of a
:class:`PartitionBatch`) or a :class:`Snapshot`. Rows travel by the thousand, so a row is a list
of its fields in their dataclass order rather than an object (member names would double a small
row); errors still name a row's fields by name (``batches[0].rows.items[3].value``):

* item ``[key, exists, value, version, write_ts, read_ts]``;
* intent ``[key, txn_id, ts, op, new_exists, new_value, anchor, created_us]``;
* token ``[token, txn_id, fingerprint, created_us]``;
* meta ``[max_delete_ts, max_deleted_version, epoch, seq, promised, read_floor, max_write_ts]``;
* a ledger record is :func:`encode_ledger_record`'s object.

A batch's or a snapshot's tables (``items``, ``intents``, ``ledger``, ``tokens``; left out when
empty) list rows, each under its own key (``key``, ``txn_id``, ``token``), a key at most once; in
a batch a deletion is the deleted key itself, a string, in place of a row. Rows are checked as
a node must check rows it will store: keys, ids and tokens as above; values get exactly
:func:`validate_value`'s verdict (through ``_value_ok`` first, as on the trusted path); ops as on
the trusted path; and every integer a node keeps in a SQLite INTEGER column (versions,
``epoch``, ``seq``, ``promised``, created and completed times) in ``0..2**63-1``, so a decoded
row can always be written, except that every ``seq`` may also be -1 (a poisoned replica's,
:mod:`kvstore.runtime.replica`). Strict and trusted decoding are one and the same here.

These are not the SQLite store's row encodings (``item_params`` / ``decode_item`` and the like
in :mod:`kvstore.storage_node.sqlite_schema`), though the fields are the same and so are the
inner forms (an intent's body there holds this module's timestamp and op forms; a ledger body is
:func:`encode_ledger_record`'s). Those decoders trust their input, the node's own database (a
value is unpacked, not validated; ``new_exists`` goes through ``bool()``; anchors, token rows and
meta are not checked; a short blob raises ``struct.error``), so the wire would need a strict
check of every column before them and of the unpacked contents after, i.e. this decoder again.
Their columns are shaped for SQLite (timestamps as 24-byte big-endian blobs so that blob order
is timestamp order, values and bodies as msgpack blobs to be packed once more inside the frame,
a derived ``tomb_ts``), where the wire's timestamps are lists. And that module imports this one
for the inner forms: importing it back would be a cycle, and would load SQLite into the SDK.

This is the hot path of every internal call, so the functions are plain and explicit: no
reflection at run time, one subset test of an object's member names against its precomputed
shape, ``type(x) is int`` checks (which also keep bools out), and a member's error path
(``ledger.ts``) is formatted only once something is wrong.

Measured (``bench/codec_bench.py``, µs per call, fastest of 7 interleaved rounds, puts of a
100-byte document under a ``version`` condition; "+ frame" adds the RPC frame's msgpack
unpacking, :func:`kvstore.rpc.frames.decode_frame`): strict / trusted decoding of an execute
with 1 put 18 / 6.1 (+ frame 23 / 9.2), a prepare with 2 puts 33 / 9.4 (41 / 14), with 10 puts
147 / 34 (167 / 50), a singleton write 13 / 4.1 (16 / 7.0); commit and get 0.9-1.0 on both.
Encoding those requests costs 0.1-7 µs.

msgspec was measured and not taken. Its typed msgpack decoding into Structs mirroring these
bodies (the frame's envelope with the body left raw, then the body's Struct, converted to the
messages here with the same value and condition checks) takes 5.9 µs for the 1-put execute,
9.5 and 36 for the 2- and 10-put prepares, 4.3 for the write and 0.9 for commit and get, against
9.2, 14, 50, 7.0 and 2.3 for the frame plus the trusted path: 1.4-1.7x on the requests that
carry ops, 2.6x (1.4 µs) only on the smallest, where a node spends about 120 µs of CPU per get
in all. Below the 2x that would pay for a new dependency and a second decoder for the frame
layer, every message and their error paths.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar, cast

import msgpack

from kvstore import limits
from kvstore.conditions import (
    VERSION_MAX,
    Compare,
    CompareOperator,
    Condition,
    Exists,
    VersionEquals,
)
from kvstore.errors import ErrorCode, ValidationError
from kvstore.messages import (
    CancelReply,
    CancelRequest,
    CommitReply,
    CommitRequest,
    CompleteRequest,
    DecideRequest,
    ExecuteReply,
    ExecuteRequest,
    GetReply,
    GetRequest,
    ItemView,
    LedgerLookupRequest,
    LedgerRecord,
    LedgerReply,
    NodeExecuteRequest,
    OpOutcome,
    PositionReply,
    PositionRequest,
    PrepareReply,
    PrepareRequest,
    PreventRequest,
    ReadEntry,
    ReadReply,
    ReadRequest,
    ReasonCode,
    ReplicateReply,
    ReplicateRequest,
    Reply,
    Request,
    RestoreReply,
    RestoreRequest,
    ScanReply,
    ScanRequest,
    ShippedBatch,
    Snapshot,
    TokenHit,
    TokenLookupReply,
    TokenLookupRequest,
    TxnState,
    WriteReply,
    WriteRequest,
)
from kvstore.ops import Op, OpKind, op_from_json, op_to_json, validate_token, validate_txn_ops
from kvstore.paths import parse_path
from kvstore.storage_node.overlay import PartitionBatch
from kvstore.storage_node.store import Intent, ItemRow, PartitionMeta, TokenRow
from kvstore.types import Key, NodeId, PartitionId, Timestamp, TxnId, Value, timestamp_from_wire
from kvstore.values import validate_key, validate_value

__all__ = [
    "METHODS",
    "REPLY_OF",
    "method_of",
    "encode_request",
    "decode_request",
    "encode_reply",
    "decode_reply",
    "encode_timestamp",
    "decode_timestamp",
    "encode_ledger_record",
    "decode_ledger_record",
    "encode_op",
    "decode_op",
]

_U64_MAX: Final = (1 << 64) - 1
_SQL_INT_MAX: Final = (1 << 63) - 1  # a SQLite INTEGER: what a stored row's integers must fit
_SEQ_MIN: Final = -1  # a poisoned replica's seq (kvstore.runtime.replica.POISONED_SEQ)
_TXN_ID_CHARS_MAX: Final = 128
_NODE_ID_CHARS_MAX: Final = 128
_FINGERPRINT_CHARS_MAX: Final = 128
_NAME_SHOWN_CHARS: Final = 64  # of an unknown member's name, in an error's field
_OUTCOMES_MAX: Final = limits.TXN_OPS_MAX_CEILING  # one per op
# Rows of one table in a replicate message: at most one per byte of its frame.
_ROWS_MAX: Final = limits.RPC_FRAME_BYTES_MAX

_T = TypeVar("_T")
_K = TypeVar("_K", bound=str)
_Obj: TypeAlias = dict[str, object]
_Get = Callable[[_Obj, str, str], _T]  # (object, its field, member name) -> member value


# --- wire forms ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    """The member names of one wire object: those it must have and all it may have."""

    required: frozenset[str]
    members: frozenset[str]


def _shape(required: str, optional: str = "") -> _Shape:
    names = frozenset(required.split())
    return _Shape(names, names | frozenset(optional.split()))


def _fields(names: str) -> tuple[str, ...]:
    return tuple(names.split())


# The members each object must have, then those it may have. ``ts`` is a timestamp list,
# ``ops`` / ``op`` are op_to_json forms, ``ledger`` / ``record`` a ledger record (``record`` may be
# null), ``item`` an item view (may be null), ``outcomes`` a list of outcome objects.

_ITEM: Final = _shape("key value version ts")
_OUTCOME: Final = _shape("", "code message item")
_LEDGER: Final = _shape(
    "txn_id ts state participants", "created_us deadline_us token fingerprint outcomes completed_us"
)
_TOKEN_HIT: Final = _shape("txn_id same_content")
_PREPARE: Final = _shape("partition txn_id ts ops anchor", "ledger")
_EXECUTE: Final = _shape("partition txn_id ts ops", "token fingerprint")
_NODE_EXECUTE: Final = _shape("partition txn_id ts ops placement", "token fingerprint")
_TXN_CALL: Final = _shape("partition txn_id")  # commit, cancel, complete
_DECIDE: Final = _shape("partition txn_id decision", "outcomes")
_LEDGER_LOOKUP: Final = _shape("partition txn_id", "resolve")
_PREVENT: Final = _shape("partition txn_id anchor")
_TOKEN_LOOKUP: Final = _shape("partition token")
_READ: Final = _shape("partition keys", "at")
_GET: Final = _shape("partition key")
_WRITE: Final = _shape("partition op")
_SCAN: Final = _shape("partition start end limit", "at reverse bytes_max")  # end may be null
_RESTORE: Final = _shape("partition items floor deleted_version")
_RESTORE_REPLY: Final = _shape("restored")
_PREPARE_REPLY: Final = _shape("txn_id accepted", "outcomes error token_hit")
_EXECUTE_REPLY: Final = _shape("txn_id committed", "outcomes error token_hit")
_COMMIT_REPLY: Final = _shape("txn_id applied")
_CANCEL_REPLY: Final = _shape("txn_id cleared")
_LEDGER_REPLY: Final = _shape("txn_id record")
_TOKEN_LOOKUP_REPLY: Final = _shape("token record")
_READ_REPLY: Final = _shape("entries")
_READ_ENTRY: Final = _shape("key exists value version ts pending")
_GET_REPLY: Final = _shape("item")
_WRITE_REPLY: Final = _shape("outcome", "existed version ts previous")
_SCAN_REPLY: Final = _shape("items next_start", "deleted_version")  # next_start may be null
_REPLICATE: Final = _shape(
    "partition node leader leader_epoch prev_epoch prev_seq batches", "snapshot"
)
_SHIPPED_BATCH: Final = _shape("epoch seq rows")
_PARTITION_BATCH: Final = _shape("", "items intents ledger tokens meta")  # meta may be null
_SNAPSHOT: Final = _shape("meta", "items intents ledger tokens")
_POSITION: Final = _shape("partition node epoch")
_REPLICATE_REPLY: Final = _shape("accepted epoch seq promised")
_POSITION_REPLY: Final = _shape("epoch seq promised")
# The fields of each row, in the order of its list (module docstring, "Replication").
_ITEM_ROW: Final = _fields("key exists value version write_ts read_ts")
_INTENT_ROW: Final = _fields("key txn_id ts op new_exists new_value anchor created_us")
_TOKEN_ROW: Final = _fields("token txn_id fingerprint created_us")
_META_ROW: Final = _fields(
    "max_delete_ts max_deleted_version epoch seq promised read_floor max_write_ts"
)


# --- members --------------------------------------------------------------------------------


def _join(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def _record(raw: object, field: str, shape: _Shape) -> _Obj:
    """``raw`` as an object with all required and no unknown members."""
    if not isinstance(raw, dict):
        raise ValidationError(field or "body", f"must be an object, not {type(raw).__name__}")
    keys = raw.keys()
    if not (shape.required <= keys <= shape.members):
        missing = sorted(shape.required.difference(keys))
        if missing:
            raise ValidationError(_join(field, missing[0]), "is required")
        name = next(name for name in raw if name not in shape.members)
        shown = name[:_NAME_SHOWN_CHARS] if isinstance(name, str) else f"<{type(name).__name__}>"
        raise ValidationError(_join(field, shown), "unknown member")
    return raw


def _opt(obj: _Obj, field: str, name: str, get: _Get[_T]) -> _T | None:
    """A member whose default is ``None`` (absent or ``None`` both mean the default)."""
    return None if obj.get(name) is None else get(obj, field, name)


def _or(obj: _Obj, field: str, name: str, get: _Get[_T], default: _T) -> _T:
    """A member with a non-``None`` default: absent means the default."""
    return get(obj, field, name) if name in obj else default


def _list(obj: _Obj, field: str, name: str, most: int) -> list[object]:
    value = obj[name]
    if type(value) is not list:
        raise ValidationError(_join(field, name), f"must be a list, not {type(value).__name__}")
    if len(value) > most:
        raise ValidationError(_join(field, name), f"at most {most} elements, got {len(value)}")
    return value


# --- scalar members -----------------------------------------------------------------------


def _int_error(value: object, field: str, low: int, high: int) -> ValidationError:
    if type(value) is not int:
        return ValidationError(field, f"must be an integer, not {type(value).__name__}")
    return ValidationError(field, f"must lie in {low}..{high}, got {value}")


def _u64(obj: _Obj, field: str, name: str) -> int:
    value = obj[name]
    if type(value) is int and 0 <= value <= _U64_MAX:
        return value
    raise _int_error(value, _join(field, name), 0, _U64_MAX)


def _version(obj: _Obj, field: str, name: str) -> int:
    value = obj[name]
    if type(value) is int and 0 <= value <= VERSION_MAX:
        return value
    raise _int_error(value, _join(field, name), 0, VERSION_MAX)


def _sql_int(obj: _Obj, field: str, name: str) -> int:
    """An integer a node stores in a SQLite INTEGER column: positions, row times."""
    value = obj[name]
    if type(value) is int and 0 <= value <= _SQL_INT_MAX:
        return value
    raise _int_error(value, _join(field, name), 0, _SQL_INT_MAX)


def _seq(obj: _Obj, field: str, name: str) -> int:
    """A position's ``seq``: a SQLite integer, or -1 for a poisoned replica."""
    value = obj[name]
    if type(value) is int and _SEQ_MIN <= value <= _SQL_INT_MAX:
        return value
    raise _int_error(value, _join(field, name), _SEQ_MIN, _SQL_INT_MAX)


def _partition_id(value: object, field: str) -> PartitionId:
    if type(value) is int and 0 <= value < limits.PARTITIONS_MAX:
        return PartitionId(value)
    raise _int_error(value, field, 0, limits.PARTITIONS_MAX - 1)


def _partition(obj: _Obj, field: str, name: str) -> PartitionId:
    value = obj[name]
    if type(value) is int and 0 <= value < limits.PARTITIONS_MAX:
        return PartitionId(value)
    return _partition_id(value, _join(field, name))


def _bool(obj: _Obj, field: str, name: str) -> bool:
    value = obj[name]
    if type(value) is bool:
        return value
    raise ValidationError(_join(field, name), f"must be true or false, not {type(value).__name__}")


def _str(obj: _Obj, field: str, name: str) -> str:
    value = obj[name]
    if type(value) is str:
        return value
    raise ValidationError(_join(field, name), f"must be a string, not {type(value).__name__}")


def _txn_id(obj: _Obj, field: str, name: str) -> TxnId:
    value = obj[name]
    if type(value) is str and 0 < len(value) <= _TXN_ID_CHARS_MAX:
        return TxnId(value)
    raise ValidationError(
        _join(field, name), f"a transaction id is a string of 1..{_TXN_ID_CHARS_MAX} characters"
    )


def _txn_id_at(value: object, field: str) -> TxnId:
    if type(value) is str and 0 < len(value) <= _TXN_ID_CHARS_MAX:
        return TxnId(value)
    raise ValidationError(
        field, f"a transaction id is a string of 1..{_TXN_ID_CHARS_MAX} characters"
    )


def _node(obj: _Obj, field: str, name: str) -> NodeId:
    value = obj[name]
    if type(value) is str and 0 < len(value) <= _NODE_ID_CHARS_MAX:
        return NodeId(value)
    raise ValidationError(
        _join(field, name), f"a node id is a string of 1..{_NODE_ID_CHARS_MAX} characters"
    )


def _token(obj: _Obj, field: str, name: str) -> str:
    value = obj[name]
    if (  # printable ASCII is exactly " ".."~", what validate_token asks for, checked in C
        type(value) is str
        and 0 < len(value) <= limits.TOKEN_BYTES_MAX
        and value.isascii()
        and value.isprintable()
    ):
        return value
    return validate_token(value, _join(field, name))


def _token_at(value: object, field: str) -> str:
    if (
        type(value) is str
        and 0 < len(value) <= limits.TOKEN_BYTES_MAX
        and value.isascii()
        and value.isprintable()
    ):
        return value
    return validate_token(value, field)


def _fingerprint(obj: _Obj, field: str, name: str) -> str:
    value = obj[name]
    if type(value) is str and len(value) <= _FINGERPRINT_CHARS_MAX:
        return value
    raise ValidationError(
        _join(field, name), f"a fingerprint is a string of at most {_FINGERPRINT_CHARS_MAX} chars"
    )


def _key_at(value: object, field: str) -> Key:
    if type(value) is str and value.isascii() and 0 < len(value) <= limits.KEY_BYTES_MAX:
        return value  # the common case, without formatting the field
    return validate_key(value, field, internal=True)


def _key(obj: _Obj, field: str, name: str) -> Key:
    value = obj[name]
    if type(value) is str and value.isascii() and 0 < len(value) <= limits.KEY_BYTES_MAX:
        return value
    return validate_key(value, _join(field, name), internal=True)


def _scan_bound(obj: _Obj, field: str, name: str) -> Key:
    """A scan bound: a key, or ``""`` for the start of the key space."""
    return "" if obj[name] == "" else _key(obj, field, name)


def _value(obj: _Obj, field: str, name: str) -> Value:
    return validate_value(obj[name], _join(field, name))


def _ts(obj: _Obj, field: str, name: str) -> Timestamp:
    value = obj[name]
    ts = timestamp_from_wire(value)
    if ts is not None:
        return ts
    return decode_timestamp(value, _join(field, name))  # raises, naming the bad part


def _lookup(table: Mapping[str, _T], what: str) -> _Get[_T]:
    """A member holding one of the names of ``table``."""

    def get(obj: _Obj, field: str, name: str) -> _T:
        value = obj[name]
        found = table.get(value) if type(value) is str else None
        if found is None:
            raise ValidationError(_join(field, name), f"not {what}")
        return found

    return get


_reason = _lookup({code.value: code for code in ReasonCode}, "a reason code")
_txn_state = _lookup({state.value: state for state in TxnState}, "a transaction state")
_error_code = _lookup(dict(ErrorCode.__members__), "an error code name")


# --- records ------------------------------------------------------------------------------


def encode_timestamp(ts: Timestamp) -> list[int]:
    return [ts.physical_us, ts.logical, ts.origin]


def decode_timestamp(raw: object, field: str = "ts") -> Timestamp:
    """``[physical_us, logical, origin]``, each an integer in ``0..2**64-1``."""
    if type(raw) is not list or len(raw) != 3:
        raise ValidationError(field, "a timestamp is a list [physical_us, logical, origin]")
    for index, part in enumerate(raw):
        if type(part) is not int or not 0 <= part <= _U64_MAX:
            raise _int_error(part, f"{field}[{index}]", 0, _U64_MAX)
    return Timestamp(raw[0], raw[1], raw[2])


def encode_op(op: Op) -> dict[str, object]:
    return op_to_json(op)


def decode_op(raw: object, field: str = "op") -> Op:
    # op_from_json formats an odd ``op`` member with repr(), which may recurse without bound.
    if not isinstance(raw, dict):
        raise ValidationError(field, f"an operation must be an object, not {type(raw).__name__}")
    if type(raw.get("op")) is not str:
        raise ValidationError(f"{field}.op", "expected one of put, delete, update, check")
    return op_from_json(raw, field, internal=True)


def _txn_ops(obj: _Obj, field: str, name: str) -> tuple[Op, ...]:
    raw = _list(obj, field, name, limits.TXN_OPS_MAX_CEILING)
    where = _join(field, name)
    ops = tuple(decode_op(item, f"{where}[{index}]") for index, item in enumerate(raw))
    validate_txn_ops(ops, field=where, txn_ops_max=limits.TXN_OPS_MAX_CEILING)
    return ops


# --- the trusted path (see "Trusted decoding" in the module docstring) ---------------------

# The op kinds built here, with the members each may have (those of kvstore.ops' parser); an
# update, and every op of another shape, goes through decode_op.
_TRUSTED_OPS: Final[Mapping[str, tuple[OpKind, frozenset[str]]]] = {
    "put": (OpKind.PUT, frozenset({"op", "key", "value", "if", "return_item"})),
    "delete": (OpKind.DELETE, frozenset({"op", "key", "if", "return_item"})),
    "check": (OpKind.CHECK, frozenset({"op", "key", "if", "return_item"})),
}
_OPERATOR_OF: Final[Mapping[object, CompareOperator]] = {op.value: op for op in CompareOperator}
_PLAIN: Final = frozenset({str, int, bool, bytes, type(None)})  # what packing alone checks
_local: Final = threading.local()  # one reusable msgpack.Packer per thread


def _packed_size(value: object) -> int | None:
    """The msgpack-encoded size of ``value``, None when it cannot be packed."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        return len(packer.pack(value))
    except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
        _local.packer = None  # start afresh after an error
        return None


def _value_ok(value: object) -> bool:
    """True only if :func:`validate_value` accepts ``value`` (False: let it decide, and say why).

    The same verdict, faster for the values peers send: a walk of the containers, level by
    level, checks types, object keys, float finiteness and nesting, then packing the value
    checks the integer range and UTF-8 and gives the encoded size exactly (the number
    validate_value adds up). The walk visits at most as many elements as the size limit has
    bytes, each being at least one byte, so even a list that holds itself costs bounded work.
    """
    kind = type(value)
    if kind is dict or kind is list:
        budget = limits.VALUE_BYTES_MAX
        level: list[Any] = [value]
        depth = 1
        while level:
            if depth > limits.VALUE_DEPTH_MAX:
                return False
            deeper: list[Any] = []
            for container in level:
                budget -= len(container)
                if budget < 0:
                    return False
                elements: Collection[object] = container
                if type(container) is dict:
                    for name in container:
                        if type(name) is not str:
                            return False
                    elements = container.values()
                for element in elements:
                    kind = type(element)
                    if kind in _PLAIN:
                        continue
                    if kind is dict or kind is list:
                        deeper.append(element)
                    elif kind is not float or not math.isfinite(element):  # type: ignore[arg-type]
                        return False
            level = deeper
            depth += 1
    elif kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    elif kind not in _PLAIN:
        return False
    size = _packed_size(value)
    return size is not None and size <= limits.VALUE_BYTES_MAX


_EXISTS: Final = {True: Exists(True), False: Exists(False)}  # immutable, shared
_MISSING: Final = object()  # an absent member


def _trusted_condition(raw: object) -> Condition | None:
    """A one-leaf condition (exists, version, or a path comparison), or None for any other
    shape and anything doubtful, which the caller hands to the strict parser."""
    if type(raw) is not dict:
        return None
    size = len(raw)
    if size == 1:
        version = raw.get("version")
        if type(version) is int:
            return VersionEquals(version) if 0 <= version <= VERSION_MAX else None
        exists = raw.get("exists")
        return _EXISTS[exists] if type(exists) is bool else None
    if size == 2:
        text = raw.get("path")
        if type(text) is str:
            for name, operand in raw.items():
                operator = _OPERATOR_OF.get(name)
                if operator is not None:
                    if not _value_ok(operand):
                        return None
                    try:
                        path = parse_path(text)
                    except ValidationError:
                        return None
                    return Compare(path, operator, operand)
    return None


def _trusted_op(raw: object) -> Op | None:
    """A put, delete or check of the usual shape, or None for any other op and anything
    doubtful, which the caller hands to :func:`decode_op` (to accept or to refuse it)."""
    if type(raw) is not dict:
        return None
    name = raw.get("op")
    found = _TRUSTED_OPS.get(name) if type(name) is str else None
    if found is None or not raw.keys() <= found[1]:
        return None
    kind = found[0]
    key = raw.get("key")
    if not (type(key) is str and key.isascii() and 0 < len(key) <= limits.KEY_BYTES_MAX):
        return None
    condition_raw = raw.get("if", _MISSING)
    condition = None if condition_raw is _MISSING else _trusted_condition(condition_raw)
    if condition is None and (condition_raw is not _MISSING or kind is OpKind.CHECK):
        return None
    return_item = raw.get("return_item", False)
    if type(return_item) is not bool:
        return None
    if kind is OpKind.PUT:
        value = raw.get("value", _MISSING)
        if value is _MISSING or not _value_ok(value):
            return None
        return Op(kind=kind, key=key, value=value, condition=condition, return_item=return_item)
    return Op(kind=kind, key=key, condition=condition, return_item=return_item)


def _trusted_txn_ops(obj: _Obj, field: str, name: str) -> tuple[Op, ...]:
    raw = _list(obj, field, name, limits.TXN_OPS_MAX_CEILING)
    ops = tuple(
        [
            _trusted_op(item) or decode_op(item, f"{_join(field, name)}[{index}]")
            for index, item in enumerate(raw)
        ]
    )
    if not ops or len({op.key for op in ops}) != len(ops):
        # No op, or a key used twice: the strict rules raise, naming the field.
        validate_txn_ops(ops, field=_join(field, name), txn_ops_max=limits.TXN_OPS_MAX_CEILING)
    return ops


def _enc_item(item: ItemView) -> dict[str, object]:
    return {"key": item.key, "value": item.value, "version": item.version, "ts": list(item.ts)}


def _dec_item(raw: object, field: str) -> ItemView:
    obj = _record(raw, field, _ITEM)
    return ItemView(
        key=_key(obj, field, "key"),
        value=_value(obj, field, "value"),
        version=_version(obj, field, "version"),
        ts=_ts(obj, field, "ts"),
    )


def _item(obj: _Obj, field: str, name: str) -> ItemView:
    return _dec_item(obj[name], _join(field, name))


def _enc_outcome(outcome: OpOutcome) -> dict[str, object]:
    out: dict[str, object] = {}
    if outcome.code is not ReasonCode.NONE:
        out["code"] = outcome.code.value
    if outcome.message:
        out["message"] = outcome.message
    if outcome.item is not None:
        out["item"] = _enc_item(outcome.item)
    return out


def _enc_outcomes(outcomes: tuple[OpOutcome, ...]) -> list[object]:
    return [_enc_outcome(outcome) for outcome in outcomes]


def _dec_outcome(raw: object, field: str) -> OpOutcome:
    obj = _record(raw, field, _OUTCOME)
    return OpOutcome(
        code=_or(obj, field, "code", _reason, ReasonCode.NONE),
        message=_or(obj, field, "message", _str, ""),
        item=_opt(obj, field, "item", _item),
    )


def _outcome(obj: _Obj, field: str, name: str) -> OpOutcome:
    return _dec_outcome(obj[name], _join(field, name))


def _outcomes(obj: _Obj, field: str, name: str) -> tuple[OpOutcome, ...]:
    raw = _list(obj, field, name, _OUTCOMES_MAX)
    where = _join(field, name)
    return tuple(_dec_outcome(item, f"{where}[{index}]") for index, item in enumerate(raw))


def encode_ledger_record(record: LedgerRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "txn_id": record.txn_id,
        "ts": list(record.ts),
        "state": record.state.value,
        "participants": list(record.participants),
    }
    if record.created_us:
        out["created_us"] = record.created_us
    if record.deadline_us:
        out["deadline_us"] = record.deadline_us
    if record.token is not None:
        out["token"] = record.token
    if record.fingerprint is not None:
        out["fingerprint"] = record.fingerprint
    if record.outcomes:
        out["outcomes"] = _enc_outcomes(record.outcomes)
    if record.completed_us is not None:
        out["completed_us"] = record.completed_us
    return out


def decode_ledger_record(raw: object, field: str = "record") -> LedgerRecord:
    obj = _record(raw, field, _LEDGER)
    participants = _list(obj, field, "participants", limits.PARTITIONS_MAX)
    where = _join(field, "participants")
    return LedgerRecord(
        txn_id=_txn_id(obj, field, "txn_id"),
        ts=_ts(obj, field, "ts"),
        state=_txn_state(obj, field, "state"),
        participants=tuple(_partition_id(p, f"{where}[{i}]") for i, p in enumerate(participants)),
        created_us=_or(obj, field, "created_us", _u64, 0),
        deadline_us=_or(obj, field, "deadline_us", _u64, 0),
        token=_opt(obj, field, "token", _token),
        fingerprint=_opt(obj, field, "fingerprint", _fingerprint),
        outcomes=_or(obj, field, "outcomes", _outcomes, ()),
        completed_us=_opt(obj, field, "completed_us", _u64),
    )


def _ledger(obj: _Obj, field: str, name: str) -> LedgerRecord:
    return decode_ledger_record(obj[name], _join(field, name))


def _token_hit(obj: _Obj, field: str, name: str) -> TokenHit:
    where = _join(field, name)
    hit = _record(obj[name], where, _TOKEN_HIT)
    return TokenHit(
        txn_id=_txn_id(hit, where, "txn_id"), same_content=_bool(hit, where, "same_content")
    )


# --- requests -----------------------------------------------------------------------------
# Decoders take (raw body, field of the body) and encoders one message; "" is the top level.


def _enc_prepare(r: PrepareRequest) -> dict[str, object]:
    out: dict[str, object] = {
        "partition": r.partition,
        "txn_id": r.txn_id,
        "ts": list(r.ts),
        "ops": [op_to_json(op) for op in r.ops],
        "anchor": r.anchor,
    }
    if r.ledger is not None:
        out["ledger"] = encode_ledger_record(r.ledger)
    return out


def _prepare_decoder(txn_ops: _Get[tuple[Op, ...]]) -> Callable[[object, str], PrepareRequest]:
    def decode(raw: object, field: str) -> PrepareRequest:
        obj = _record(raw, field, _PREPARE)
        ledger = _opt(obj, field, "ledger", _ledger)
        # The anchor may hold none of the keys (a token's home): it prepares only the ledger.
        ledger_only = ledger is not None and obj.get("ops") == []
        return PrepareRequest(
            partition=_partition(obj, field, "partition"),
            txn_id=_txn_id(obj, field, "txn_id"),
            ts=_ts(obj, field, "ts"),
            ops=() if ledger_only else txn_ops(obj, field, "ops"),
            anchor=_partition(obj, field, "anchor"),
            ledger=ledger,
        )

    return decode


_dec_prepare: Final = _prepare_decoder(_txn_ops)
_dec_prepare_trusted: Final = _prepare_decoder(_trusted_txn_ops)


def _enc_execute(r: ExecuteRequest | NodeExecuteRequest) -> dict[str, object]:
    out: dict[str, object] = {
        "partition": r.partition,
        "txn_id": r.txn_id,
        "ts": list(r.ts),
        "ops": [op_to_json(op) for op in r.ops],
    }
    if r.token is not None:
        out["token"] = r.token
    if r.fingerprint is not None:
        out["fingerprint"] = r.fingerprint
    return out


def _execute_decoder(txn_ops: _Get[tuple[Op, ...]]) -> Callable[[object, str], ExecuteRequest]:
    def decode(raw: object, field: str) -> ExecuteRequest:
        obj = _record(raw, field, _EXECUTE)
        return ExecuteRequest(
            partition=_partition(obj, field, "partition"),
            txn_id=_txn_id(obj, field, "txn_id"),
            ts=_ts(obj, field, "ts"),
            ops=txn_ops(obj, field, "ops"),
            token=_opt(obj, field, "token", _token),
            fingerprint=_opt(obj, field, "fingerprint", _fingerprint),
        )

    return decode


_dec_execute: Final = _execute_decoder(_txn_ops)
_dec_execute_trusted: Final = _execute_decoder(_trusted_txn_ops)


def _enc_node_execute(r: NodeExecuteRequest) -> dict[str, object]:
    out = _enc_execute(r)  # the same members, plus the placement
    out["placement"] = list(r.placement)
    return out


def _placement(obj: _Obj, field: str, name: str, ops: int) -> tuple[PartitionId, ...]:
    """One partition id per op."""
    raw = _list(obj, field, name, limits.TXN_OPS_MAX_CEILING)
    where = _join(field, name)
    if len(raw) != ops:
        raise ValidationError(where, f"must name one partition per op ({ops}), got {len(raw)}")
    return tuple(_partition_id(pid, f"{where}[{index}]") for index, pid in enumerate(raw))


def _node_execute_decoder(
    txn_ops: _Get[tuple[Op, ...]],
) -> Callable[[object, str], NodeExecuteRequest]:
    def decode(raw: object, field: str) -> NodeExecuteRequest:
        obj = _record(raw, field, _NODE_EXECUTE)
        partition = _partition(obj, field, "partition")
        txn_id = _txn_id(obj, field, "txn_id")
        ts = _ts(obj, field, "ts")
        ops = txn_ops(obj, field, "ops")
        return NodeExecuteRequest(
            partition=partition,
            txn_id=txn_id,
            ts=ts,
            ops=ops,
            placement=_placement(obj, field, "placement", len(ops)),
            token=_opt(obj, field, "token", _token),
            fingerprint=_opt(obj, field, "fingerprint", _fingerprint),
        )

    return decode


_dec_node_execute: Final = _node_execute_decoder(_txn_ops)
_dec_node_execute_trusted: Final = _node_execute_decoder(_trusted_txn_ops)


def _enc_txn_call(r: CommitRequest | CancelRequest | CompleteRequest) -> dict[str, object]:
    return {"partition": r.partition, "txn_id": r.txn_id}


_TxnCall = TypeVar("_TxnCall", CommitRequest, CancelRequest, CompleteRequest)


def _dec_txn_call(cls: type[_TxnCall]) -> Callable[[object, str], _TxnCall]:
    def decode(raw: object, field: str) -> _TxnCall:
        obj = _record(raw, field, _TXN_CALL)
        return cls(
            partition=_partition(obj, field, "partition"), txn_id=_txn_id(obj, field, "txn_id")
        )

    return decode


def _enc_decide(r: DecideRequest) -> dict[str, object]:
    out: dict[str, object] = {
        "partition": r.partition,
        "txn_id": r.txn_id,
        "decision": r.decision.value,
    }
    if r.outcomes:
        out["outcomes"] = _enc_outcomes(r.outcomes)
    return out


def _dec_decide(raw: object, field: str) -> DecideRequest:
    obj = _record(raw, field, _DECIDE)
    return DecideRequest(
        partition=_partition(obj, field, "partition"),
        txn_id=_txn_id(obj, field, "txn_id"),
        decision=_txn_state(obj, field, "decision"),
        outcomes=_or(obj, field, "outcomes", _outcomes, ()),
    )


def _enc_prevent(r: PreventRequest) -> dict[str, object]:
    return {"partition": r.partition, "txn_id": r.txn_id, "anchor": r.anchor}


def _dec_prevent(raw: object, field: str) -> PreventRequest:
    obj = _record(raw, field, _PREVENT)
    return PreventRequest(
        partition=_partition(obj, field, "partition"),
        txn_id=_txn_id(obj, field, "txn_id"),
        anchor=_partition(obj, field, "anchor"),
    )


def _enc_ledger_lookup(r: LedgerLookupRequest) -> dict[str, object]:
    out: dict[str, object] = {"partition": r.partition, "txn_id": r.txn_id}
    if r.resolve:
        out["resolve"] = True
    return out


def _dec_ledger_lookup(raw: object, field: str) -> LedgerLookupRequest:
    obj = _record(raw, field, _LEDGER_LOOKUP)
    return LedgerLookupRequest(
        partition=_partition(obj, field, "partition"),
        txn_id=_txn_id(obj, field, "txn_id"),
        resolve=_or(obj, field, "resolve", _bool, False),
    )


def _enc_token_lookup(r: TokenLookupRequest) -> dict[str, object]:
    return {"partition": r.partition, "token": r.token}


def _dec_token_lookup(raw: object, field: str) -> TokenLookupRequest:
    obj = _record(raw, field, _TOKEN_LOOKUP)
    return TokenLookupRequest(
        partition=_partition(obj, field, "partition"), token=_token(obj, field, "token")
    )


def _enc_read(r: ReadRequest) -> dict[str, object]:
    out: dict[str, object] = {"partition": r.partition, "keys": list(r.keys)}
    if r.at is not None:
        out["at"] = list(r.at)
    return out


def _dec_read(raw: object, field: str) -> ReadRequest:
    obj = _record(raw, field, _READ)
    keys = _list(obj, field, "keys", limits.READ_KEYS_MAX)
    where = _join(field, "keys")
    return ReadRequest(
        partition=_partition(obj, field, "partition"),
        keys=tuple(_key_at(key, f"{where}[{index}]") for index, key in enumerate(keys)),
        at=_opt(obj, field, "at", _ts),
    )


def _enc_get(r: GetRequest) -> dict[str, object]:
    return {"partition": r.partition, "key": r.key}


def _dec_get(raw: object, field: str) -> GetRequest:
    obj = _record(raw, field, _GET)
    return GetRequest(partition=_partition(obj, field, "partition"), key=_key(obj, field, "key"))


def _enc_write(r: WriteRequest) -> dict[str, object]:
    return {"partition": r.partition, "op": op_to_json(r.op)}


def _dec_write(raw: object, field: str) -> WriteRequest:
    obj = _record(raw, field, _WRITE)
    return WriteRequest(
        partition=_partition(obj, field, "partition"), op=decode_op(obj["op"], _join(field, "op"))
    )


def _dec_write_trusted(raw: object, field: str) -> WriteRequest:
    obj = _record(raw, field, _WRITE)
    partition = _partition(obj, field, "partition")  # first, as on the strict path
    op = _trusted_op(obj["op"]) or decode_op(obj["op"], _join(field, "op"))
    return WriteRequest(partition=partition, op=op)


def _enc_scan(r: ScanRequest) -> dict[str, object]:
    out: dict[str, object] = {
        "partition": r.partition,
        "start": r.start,
        "end": r.end,
        "limit": r.limit,
    }
    if r.at is not None:
        out["at"] = list(r.at)
    if r.reverse:
        out["reverse"] = True
    if r.bytes_max:
        out["bytes_max"] = r.bytes_max
    return out


def _dec_scan(raw: object, field: str) -> ScanRequest:
    obj = _record(raw, field, _SCAN)
    limit = obj["limit"]
    if type(limit) is not int:  # the partition core checks the range
        raise _int_error(limit, _join(field, "limit"), 1, limits.SCAN_PAGE_ITEMS_MAX)
    return ScanRequest(
        partition=_partition(obj, field, "partition"),
        start=_scan_bound(obj, field, "start"),
        end=_opt(obj, field, "end", _scan_bound),
        limit=limit,
        at=_opt(obj, field, "at", _ts),
        reverse=_or(obj, field, "reverse", _bool, False),
        bytes_max=_or(obj, field, "bytes_max", _page_bytes, 0),
    )


def _page_bytes(obj: _Obj, field: str, name: str) -> int:
    value = obj[name]
    if type(value) is not int or not 0 <= value <= limits.RPC_FRAME_BYTES_MAX:
        raise _int_error(value, _join(field, name), 0, limits.RPC_FRAME_BYTES_MAX)
    return value


def _enc_restore(r: RestoreRequest) -> dict[str, object]:
    return {
        "partition": r.partition,
        "items": [_enc_item(item) for item in r.items],
        "floor": list(r.floor),
        "deleted_version": r.deleted_version,
    }


def _dec_restore(raw: object, field: str) -> RestoreRequest:
    obj = _record(raw, field, _RESTORE)
    items = _list(obj, field, "items", limits.RESTORE_ROWS_MAX)
    where = _join(field, "items")
    return RestoreRequest(
        partition=_partition(obj, field, "partition"),
        items=tuple(_dec_item(item, f"{where}[{index}]") for index, item in enumerate(items)),
        floor=_ts(obj, field, "floor"),
        deleted_version=_version(obj, field, "deleted_version"),
    )


# --- replies ------------------------------------------------------------------------------


def _enc_vote(out: dict[str, object], r: PrepareReply | ExecuteReply) -> dict[str, object]:
    """Adds the members PrepareReply and ExecuteReply share to ``out``."""
    if r.outcomes:
        out["outcomes"] = _enc_outcomes(r.outcomes)
    if r.error is not None:
        out["error"] = r.error.name
    if r.token_hit is not None:
        hit = r.token_hit
        out["token_hit"] = {"txn_id": hit.txn_id, "same_content": hit.same_content}
    return out


def _enc_prepare_reply(r: PrepareReply) -> dict[str, object]:
    return _enc_vote({"txn_id": r.txn_id, "accepted": r.accepted}, r)


def _dec_prepare_reply(raw: object, field: str) -> PrepareReply:
    obj = _record(raw, field, _PREPARE_REPLY)
    return PrepareReply(
        txn_id=_txn_id(obj, field, "txn_id"),
        accepted=_bool(obj, field, "accepted"),
        outcomes=_or(obj, field, "outcomes", _outcomes, ()),
        error=_opt(obj, field, "error", _error_code),
        token_hit=_opt(obj, field, "token_hit", _token_hit),
    )


def _enc_execute_reply(r: ExecuteReply) -> dict[str, object]:
    return _enc_vote({"txn_id": r.txn_id, "committed": r.committed}, r)


def _dec_execute_reply(raw: object, field: str) -> ExecuteReply:
    obj = _record(raw, field, _EXECUTE_REPLY)
    return ExecuteReply(
        txn_id=_txn_id(obj, field, "txn_id"),
        committed=_bool(obj, field, "committed"),
        outcomes=_or(obj, field, "outcomes", _outcomes, ()),
        error=_opt(obj, field, "error", _error_code),
        token_hit=_opt(obj, field, "token_hit", _token_hit),
    )


def _enc_commit_reply(r: CommitReply) -> dict[str, object]:
    return {"txn_id": r.txn_id, "applied": r.applied}


def _dec_commit_reply(raw: object, field: str) -> CommitReply:
    obj = _record(raw, field, _COMMIT_REPLY)
    return CommitReply(txn_id=_txn_id(obj, field, "txn_id"), applied=_u64(obj, field, "applied"))


def _enc_cancel_reply(r: CancelReply) -> dict[str, object]:
    return {"txn_id": r.txn_id, "cleared": r.cleared}


def _dec_cancel_reply(raw: object, field: str) -> CancelReply:
    obj = _record(raw, field, _CANCEL_REPLY)
    return CancelReply(txn_id=_txn_id(obj, field, "txn_id"), cleared=_u64(obj, field, "cleared"))


def _enc_ledger_reply(r: LedgerReply) -> dict[str, object]:
    record = None if r.record is None else encode_ledger_record(r.record)
    return {"txn_id": r.txn_id, "record": record}


def _dec_ledger_reply(raw: object, field: str) -> LedgerReply:
    obj = _record(raw, field, _LEDGER_REPLY)
    return LedgerReply(
        txn_id=_txn_id(obj, field, "txn_id"), record=_opt(obj, field, "record", _ledger)
    )


def _enc_token_lookup_reply(r: TokenLookupReply) -> dict[str, object]:
    record = None if r.record is None else encode_ledger_record(r.record)
    return {"token": r.token, "record": record}


def _dec_token_lookup_reply(raw: object, field: str) -> TokenLookupReply:
    obj = _record(raw, field, _TOKEN_LOOKUP_REPLY)
    return TokenLookupReply(
        token=_token(obj, field, "token"), record=_opt(obj, field, "record", _ledger)
    )


def _enc_read_reply(r: ReadReply) -> dict[str, object]:
    entries = [
        {
            "key": e.key,
            "exists": e.exists,
            "value": e.value,
            "version": e.version,
            "ts": list(e.ts),
            "pending": e.pending,
        }
        for e in r.entries
    ]
    return {"entries": entries}


def _dec_read_entry(raw: object, field: str) -> ReadEntry:
    obj = _record(raw, field, _READ_ENTRY)
    return ReadEntry(
        key=_key(obj, field, "key"),
        exists=_bool(obj, field, "exists"),
        value=_value(obj, field, "value"),
        version=_version(obj, field, "version"),
        ts=_ts(obj, field, "ts"),
        pending=_bool(obj, field, "pending"),
    )


def _dec_read_reply(raw: object, field: str) -> ReadReply:
    obj = _record(raw, field, _READ_REPLY)
    entries = _list(obj, field, "entries", limits.READ_KEYS_MAX)
    where = _join(field, "entries")
    return ReadReply(
        entries=tuple(_dec_read_entry(e, f"{where}[{index}]") for index, e in enumerate(entries))
    )


def _enc_get_reply(r: GetReply) -> dict[str, object]:
    return {"item": None if r.item is None else _enc_item(r.item)}


def _dec_get_reply(raw: object, field: str) -> GetReply:
    obj = _record(raw, field, _GET_REPLY)
    return GetReply(item=_opt(obj, field, "item", _item))


def _enc_write_reply(r: WriteReply) -> dict[str, object]:
    out: dict[str, object] = {"outcome": _enc_outcome(r.outcome)}
    if r.existed:
        out["existed"] = True
    if r.version:
        out["version"] = r.version
    if r.ts is not None:
        out["ts"] = list(r.ts)
    if r.previous is not None:
        out["previous"] = r.previous
    return out


def _dec_write_reply(raw: object, field: str) -> WriteReply:
    obj = _record(raw, field, _WRITE_REPLY)
    return WriteReply(
        outcome=_outcome(obj, field, "outcome"),
        existed=_or(obj, field, "existed", _bool, False),
        version=_or(obj, field, "version", _version, 0),
        ts=_opt(obj, field, "ts", _ts),
        previous=_opt(obj, field, "previous", _stored_value),
    )


def _enc_scan_reply(r: ScanReply) -> dict[str, object]:
    out: dict[str, object] = {
        "items": [_enc_item(item) for item in r.items],
        "next_start": r.next_start,
    }
    if r.deleted_version:
        out["deleted_version"] = r.deleted_version
    return out


def _dec_scan_reply(raw: object, field: str) -> ScanReply:
    obj = _record(raw, field, _SCAN_REPLY)
    items = _list(obj, field, "items", limits.SCAN_PAGE_ITEMS_MAX)
    where = _join(field, "items")
    return ScanReply(
        items=tuple(_dec_item(item, f"{where}[{index}]") for index, item in enumerate(items)),
        next_start=_opt(obj, field, "next_start", _key),
        deleted_version=_or(obj, field, "deleted_version", _version, 0),
    )


def _enc_restore_reply(r: RestoreReply) -> dict[str, object]:
    return {"restored": r.restored}


def _dec_restore_reply(raw: object, field: str) -> RestoreReply:
    obj = _record(raw, field, _RESTORE_REPLY)
    return RestoreReply(restored=_sql_int(obj, field, "restored"))


# --- replication (see "Replication" in the module docstring) -------------------------------

_Row = TypeVar("_Row")


def _row(raw: object, field: str, names: tuple[str, ...], what: str) -> _Obj:
    """A row's list as an object keyed by its field ``names``, so that errors name the field."""
    if type(raw) is not list or len(raw) != len(names):
        raise ValidationError(field, f"{what} is a list [{', '.join(names)}]")
    return dict(zip(names, raw, strict=True))


def _stored_value(obj: _Obj, field: str, name: str) -> Value:
    """A value: validate_value's verdict (and error), at ``_value_ok``'s cost when it is good."""
    value = obj[name]
    if _value_ok(value):
        return cast(Value, value)
    return validate_value(value, _join(field, name))


def _stored_op(obj: _Obj, field: str, name: str) -> Op:
    raw = obj[name]
    return _trusted_op(raw) or decode_op(raw, _join(field, name))


def _enc_item_row(row: ItemRow) -> list[object]:
    return [row.key, row.exists, row.value, row.version, list(row.write_ts), list(row.read_ts)]


def _dec_item_row(raw: object, field: str) -> ItemRow:
    obj = _row(raw, field, _ITEM_ROW, "an item row")
    return ItemRow(
        key=_key(obj, field, "key"),
        exists=_bool(obj, field, "exists"),
        value=_stored_value(obj, field, "value"),
        version=_version(obj, field, "version"),
        write_ts=_ts(obj, field, "write_ts"),
        read_ts=_ts(obj, field, "read_ts"),
    )


def _enc_intent_row(intent: Intent) -> list[object]:
    return [
        intent.key,
        intent.txn_id,
        list(intent.ts),
        op_to_json(intent.op),
        intent.new_exists,
        intent.new_value,
        intent.anchor,
        intent.created_us,
    ]


def _dec_intent_row(raw: object, field: str) -> Intent:
    obj = _row(raw, field, _INTENT_ROW, "an intent row")
    return Intent(
        key=_key(obj, field, "key"),
        txn_id=_txn_id(obj, field, "txn_id"),
        ts=_ts(obj, field, "ts"),
        op=_stored_op(obj, field, "op"),
        new_exists=_bool(obj, field, "new_exists"),
        new_value=_stored_value(obj, field, "new_value"),
        anchor=_partition(obj, field, "anchor"),
        created_us=_sql_int(obj, field, "created_us"),
    )


def _dec_ledger_row(raw: object, field: str) -> LedgerRecord:
    """A ledger record whose times fit their SQLite columns."""
    record = decode_ledger_record(raw, field)
    for name, value in (("created_us", record.created_us), ("completed_us", record.completed_us)):
        if value is not None and value > _SQL_INT_MAX:
            raise _int_error(value, _join(field, name), 0, _SQL_INT_MAX)
    return record


def _enc_token_row(row: TokenRow) -> list[object]:
    return [row.token, row.txn_id, row.fingerprint, row.created_us]


def _dec_token_row(raw: object, field: str) -> TokenRow:
    obj = _row(raw, field, _TOKEN_ROW, "a token row")
    return TokenRow(
        token=_token(obj, field, "token"),
        txn_id=_txn_id(obj, field, "txn_id"),
        fingerprint=_fingerprint(obj, field, "fingerprint"),
        created_us=_sql_int(obj, field, "created_us"),
    )


def _enc_meta_row(meta: PartitionMeta) -> list[object]:
    return [
        list(meta.max_delete_ts),
        meta.max_deleted_version,
        meta.epoch,
        meta.seq,
        meta.promised,
        list(meta.read_floor),
        list(meta.max_write_ts),
    ]


def _meta(obj: _Obj, field: str, name: str) -> PartitionMeta:
    where = _join(field, name)
    row = _row(obj[name], where, _META_ROW, "a meta row")
    return PartitionMeta(
        max_delete_ts=_ts(row, where, "max_delete_ts"),
        max_deleted_version=_version(row, where, "max_deleted_version"),
        epoch=_sql_int(row, where, "epoch"),
        seq=_seq(row, where, "seq"),
        promised=_sql_int(row, where, "promised"),
        read_floor=_ts(row, where, "read_floor"),
        max_write_ts=_ts(row, where, "max_write_ts"),
    )


def _enc_table(table: Mapping[_K, _Row | None], encode: Callable[[_Row], object]) -> list[object]:
    """A batch's table: each row, or for a deletion its key."""
    return [key if row is None else encode(row) for key, row in table.items()]


def _table(
    obj: _Obj,
    field: str,
    name: str,
    decode: Callable[[object, str], _Row],
    key_of: Callable[[_Row], _K],
    *,
    deleted: Callable[[object, str], _K] | None = None,
) -> dict[_K, _Row | None]:
    """The rows of a table by key, each key once (absent: none); with ``deleted``, a string is
    a deleted key (``None``), checked by it."""
    if name not in obj:
        return {}
    raw = _list(obj, field, name, _ROWS_MAX)
    where = _join(field, name)
    table: dict[_K, _Row | None] = {}
    for index, entry in enumerate(raw):
        row: _Row | None = None
        if deleted is not None and type(entry) is str:
            key = deleted(entry, f"{where}[{index}]")
        else:
            row = decode(entry, f"{where}[{index}]")
            key = key_of(row)
        if key in table:
            raise ValidationError(f"{where}[{index}]", "a key listed twice")
        table[key] = row
    return table


def _rows(
    obj: _Obj,
    field: str,
    name: str,
    decode: Callable[[object, str], _Row],
    key_of: Callable[[_Row], _K],
) -> tuple[_Row, ...]:
    """A snapshot's table: rows only, each key once."""
    table = _table(obj, field, name, decode, key_of)
    return tuple(row for row in table.values() if row is not None)


def _enc_partition_batch(batch: PartitionBatch) -> dict[str, object]:
    out: dict[str, object] = {}
    if batch.items:
        out["items"] = _enc_table(batch.items, _enc_item_row)
    if batch.intents:
        out["intents"] = _enc_table(batch.intents, _enc_intent_row)
    if batch.ledger:
        out["ledger"] = _enc_table(batch.ledger, encode_ledger_record)
    if batch.tokens:
        out["tokens"] = _enc_table(batch.tokens, _enc_token_row)
    if batch.meta is not None:
        out["meta"] = _enc_meta_row(batch.meta)
    return out


def _dec_partition_batch(raw: object, field: str) -> PartitionBatch:
    obj = _record(raw, field, _PARTITION_BATCH)
    return PartitionBatch(
        items=_table(obj, field, "items", _dec_item_row, _key_of_item, deleted=_key_at),
        intents=_table(obj, field, "intents", _dec_intent_row, _key_of_intent, deleted=_key_at),
        ledger=_table(obj, field, "ledger", _dec_ledger_row, _key_of_record, deleted=_txn_id_at),
        tokens=_table(obj, field, "tokens", _dec_token_row, _key_of_token, deleted=_token_at),
        meta=_opt(obj, field, "meta", _meta),
    )


def _key_of_item(row: ItemRow) -> Key:
    return row.key


def _key_of_intent(intent: Intent) -> Key:
    return intent.key


def _key_of_record(record: LedgerRecord) -> TxnId:
    return record.txn_id


def _key_of_token(row: TokenRow) -> str:
    return row.token


def _enc_shipped_batch(batch: ShippedBatch) -> dict[str, object]:
    return {"epoch": batch.epoch, "seq": batch.seq, "rows": _enc_partition_batch(batch.rows)}


def _dec_shipped_batch(raw: object, field: str) -> ShippedBatch:
    obj = _record(raw, field, _SHIPPED_BATCH)
    return ShippedBatch(
        epoch=_sql_int(obj, field, "epoch"),
        seq=_seq(obj, field, "seq"),
        rows=_dec_partition_batch(obj["rows"], _join(field, "rows")),
    )


def _batches(obj: _Obj, field: str, name: str) -> tuple[ShippedBatch, ...]:
    raw = _list(obj, field, name, limits.REPL_BATCHES_PER_MESSAGE_MAX)
    where = _join(field, name)
    return tuple(_dec_shipped_batch(batch, f"{where}[{index}]") for index, batch in enumerate(raw))


def _enc_snapshot(snapshot: Snapshot) -> dict[str, object]:
    out: dict[str, object] = {"meta": _enc_meta_row(snapshot.meta)}
    if snapshot.items:
        out["items"] = [_enc_item_row(row) for row in snapshot.items]
    if snapshot.intents:
        out["intents"] = [_enc_intent_row(intent) for intent in snapshot.intents]
    if snapshot.ledger:
        out["ledger"] = [encode_ledger_record(record) for record in snapshot.ledger]
    if snapshot.tokens:
        out["tokens"] = [_enc_token_row(row) for row in snapshot.tokens]
    return out


def _snapshot(obj: _Obj, field: str, name: str) -> Snapshot:
    where = _join(field, name)
    snapshot = _record(obj[name], where, _SNAPSHOT)
    return Snapshot(
        items=_rows(snapshot, where, "items", _dec_item_row, _key_of_item),
        intents=_rows(snapshot, where, "intents", _dec_intent_row, _key_of_intent),
        ledger=_rows(snapshot, where, "ledger", _dec_ledger_row, _key_of_record),
        tokens=_rows(snapshot, where, "tokens", _dec_token_row, _key_of_token),
        meta=_meta(snapshot, where, "meta"),
    )


def _enc_replicate(r: ReplicateRequest) -> dict[str, object]:
    out: dict[str, object] = {
        "partition": r.partition,
        "node": r.node,
        "leader": r.leader,
        "leader_epoch": r.leader_epoch,
        "prev_epoch": r.prev_epoch,
        "prev_seq": r.prev_seq,
        "batches": [_enc_shipped_batch(batch) for batch in r.batches],
    }
    if r.snapshot is not None:
        out["snapshot"] = _enc_snapshot(r.snapshot)
    return out


def _dec_replicate(raw: object, field: str) -> ReplicateRequest:
    obj = _record(raw, field, _REPLICATE)
    return ReplicateRequest(
        partition=_partition(obj, field, "partition"),
        node=_node(obj, field, "node"),
        leader=_node(obj, field, "leader"),
        leader_epoch=_sql_int(obj, field, "leader_epoch"),
        prev_epoch=_sql_int(obj, field, "prev_epoch"),
        prev_seq=_seq(obj, field, "prev_seq"),
        batches=_batches(obj, field, "batches"),
        snapshot=_opt(obj, field, "snapshot", _snapshot),
    )


def _enc_position(r: PositionRequest) -> dict[str, object]:
    return {"partition": r.partition, "node": r.node, "epoch": r.epoch}


def _dec_position(raw: object, field: str) -> PositionRequest:
    obj = _record(raw, field, _POSITION)
    return PositionRequest(
        partition=_partition(obj, field, "partition"),
        node=_node(obj, field, "node"),
        epoch=_sql_int(obj, field, "epoch"),
    )


def _enc_replicate_reply(r: ReplicateReply) -> dict[str, object]:
    return {"accepted": r.accepted, "epoch": r.epoch, "seq": r.seq, "promised": r.promised}


def _dec_replicate_reply(raw: object, field: str) -> ReplicateReply:
    obj = _record(raw, field, _REPLICATE_REPLY)
    return ReplicateReply(
        accepted=_bool(obj, field, "accepted"),
        epoch=_sql_int(obj, field, "epoch"),
        seq=_seq(obj, field, "seq"),
        promised=_sql_int(obj, field, "promised"),
    )


def _enc_position_reply(r: PositionReply) -> dict[str, object]:
    return {"epoch": r.epoch, "seq": r.seq, "promised": r.promised}


def _dec_position_reply(raw: object, field: str) -> PositionReply:
    obj = _record(raw, field, _POSITION_REPLY)
    return PositionReply(
        epoch=_sql_int(obj, field, "epoch"),
        seq=_seq(obj, field, "seq"),
        promised=_sql_int(obj, field, "promised"),
    )


# --- tables and entry points --------------------------------------------------------------

METHODS: Final[Mapping[str, type[Request]]] = {
    "prepare": PrepareRequest,
    "execute": ExecuteRequest,
    "node_execute": NodeExecuteRequest,
    "commit": CommitRequest,
    "cancel": CancelRequest,
    "decide": DecideRequest,
    "ledger_lookup": LedgerLookupRequest,
    "complete": CompleteRequest,
    "prevent": PreventRequest,
    "token_lookup": TokenLookupRequest,
    "read": ReadRequest,
    "get": GetRequest,
    "write": WriteRequest,
    "scan": ScanRequest,
    "restore": RestoreRequest,
    "replicate": ReplicateRequest,
    "position": PositionRequest,
}

REPLY_OF: Final[Mapping[type[Request], type[Reply]]] = {
    PrepareRequest: PrepareReply,
    ExecuteRequest: ExecuteReply,
    NodeExecuteRequest: ExecuteReply,
    CommitRequest: CommitReply,
    CancelRequest: CancelReply,
    DecideRequest: LedgerReply,
    LedgerLookupRequest: LedgerReply,
    CompleteRequest: LedgerReply,
    PreventRequest: LedgerReply,
    TokenLookupRequest: TokenLookupReply,
    ReadRequest: ReadReply,
    GetRequest: GetReply,
    WriteRequest: WriteReply,
    ScanRequest: ScanReply,
    RestoreRequest: RestoreReply,
    ReplicateRequest: ReplicateReply,
    PositionRequest: PositionReply,
}

_Encoder: TypeAlias = Callable[[Any], dict[str, object]]  # Any: each takes its own class

_REQUEST_CODECS: Final[dict[type[Request], tuple[_Encoder, Callable[[object, str], Request]]]] = {
    PrepareRequest: (_enc_prepare, _dec_prepare),
    ExecuteRequest: (_enc_execute, _dec_execute),
    NodeExecuteRequest: (_enc_node_execute, _dec_node_execute),
    CommitRequest: (_enc_txn_call, _dec_txn_call(CommitRequest)),
    CancelRequest: (_enc_txn_call, _dec_txn_call(CancelRequest)),
    DecideRequest: (_enc_decide, _dec_decide),
    LedgerLookupRequest: (_enc_ledger_lookup, _dec_ledger_lookup),
    CompleteRequest: (_enc_txn_call, _dec_txn_call(CompleteRequest)),
    PreventRequest: (_enc_prevent, _dec_prevent),
    TokenLookupRequest: (_enc_token_lookup, _dec_token_lookup),
    ReadRequest: (_enc_read, _dec_read),
    GetRequest: (_enc_get, _dec_get),
    WriteRequest: (_enc_write, _dec_write),
    ScanRequest: (_enc_scan, _dec_scan),
    RestoreRequest: (_enc_restore, _dec_restore),
    ReplicateRequest: (_enc_replicate, _dec_replicate),
    PositionRequest: (_enc_position, _dec_position),
}

_REPLY_CODECS: Final[dict[type[Reply], tuple[_Encoder, Callable[[object, str], Reply]]]] = {
    PrepareReply: (_enc_prepare_reply, _dec_prepare_reply),
    ExecuteReply: (_enc_execute_reply, _dec_execute_reply),
    CommitReply: (_enc_commit_reply, _dec_commit_reply),
    CancelReply: (_enc_cancel_reply, _dec_cancel_reply),
    LedgerReply: (_enc_ledger_reply, _dec_ledger_reply),
    TokenLookupReply: (_enc_token_lookup_reply, _dec_token_lookup_reply),
    ReadReply: (_enc_read_reply, _dec_read_reply),
    GetReply: (_enc_get_reply, _dec_get_reply),
    WriteReply: (_enc_write_reply, _dec_write_reply),
    ScanReply: (_enc_scan_reply, _dec_scan_reply),
    RestoreReply: (_enc_restore_reply, _dec_restore_reply),
    ReplicateReply: (_enc_replicate_reply, _dec_replicate_reply),
    PositionReply: (_enc_position_reply, _dec_position_reply),
}

# Derived lookups for the entry points: one dict access per call.
_METHOD_OF: Final = {cls: name for name, cls in METHODS.items()}
_REQUEST_ENCODERS: Final = {cls: codec[0] for cls, codec in _REQUEST_CODECS.items()}
_REPLY_ENCODERS: Final = {cls: codec[0] for cls, codec in _REPLY_CODECS.items()}
_REQUEST_DECODERS: Final = {name: _REQUEST_CODECS[cls][1] for name, cls in METHODS.items()}
_REPLY_DECODERS: Final = {name: _REPLY_CODECS[REPLY_OF[cls]][1] for name, cls in METHODS.items()}
# The trusted path differs only where ops travel; every other method decodes as above.
_TRUSTED_REQUEST_DECODERS: Final[dict[str, Callable[[object, str], Request]]] = {
    **_REQUEST_DECODERS,
    "prepare": _dec_prepare_trusted,
    "execute": _dec_execute_trusted,
    "node_execute": _dec_node_execute_trusted,
    "write": _dec_write_trusted,
}


def method_of(request: Request) -> str:
    """The wire method name of ``request``."""
    return _METHOD_OF[type(request)]


def encode_request(request: Request) -> dict[str, object]:
    """The body of ``request`` (its method travels separately: :func:`method_of`)."""
    encoder = _REQUEST_ENCODERS.get(type(request))
    if encoder is None:
        raise TypeError(f"not a request: {type(request).__name__}")
    return encoder(request)


def decode_request(method: str, body: object, *, trusted: bool = False) -> Request:
    """The request of ``method`` in ``body``; raises only :class:`ValidationError`.

    ``trusted`` (the storage node, for calls from peers that passed the cluster secret): values
    are taken as they are and the transaction's size is not re-checked; see "Trusted decoding"
    in the module docstring for exactly what is and is not checked.
    """
    decoders = _TRUSTED_REQUEST_DECODERS if trusted else _REQUEST_DECODERS
    decoder = decoders.get(method) if isinstance(method, str) else None
    if decoder is None:
        raise ValidationError("method", "unknown method")
    return decoder(body, "")


def encode_reply(reply: Reply) -> object:
    """The body of ``reply``."""
    encoder = _REPLY_ENCODERS.get(type(reply))
    if encoder is None:
        raise TypeError(f"not a reply: {type(reply).__name__}")
    return encoder(reply)


def decode_reply(method: str, body: object) -> Reply:
    """The reply to a ``method`` call in ``body``; raises only :class:`ValidationError`."""
    decoder = _REPLY_DECODERS.get(method) if isinstance(method, str) else None
    if decoder is None:
        raise ValidationError("method", "unknown method")
    return decoder(body, "")
