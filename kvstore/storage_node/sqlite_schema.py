"""One partition's SQLite file: schema, statements, connections, row encodings, flush writes.

Theory of operation
-------------------
A partition's file holds five tables, each keyed like the corresponding map of
:class:`~kvstore.storage_node.store.MemoryStore`, plus the indexes its listings need:

* ``items(key, live, version, ts, value, tomb_ts)``: ``live`` is the row's ``exists`` (0 for a
  tombstone); ``ts`` is ``write_ts`` then ``read_ts``; ``value`` is msgpack. ``tomb_ts`` is
  ``max(write_ts, read_ts)`` on tombstones and NULL on live rows; the partial index
  ``(tomb_ts, key) WHERE live = 0`` serves ``tombstones()``.
* ``intents(key, txn_id, created_us, body)`` and no secondary index (the store mirrors it in
  memory and looks intents up there); ``body`` is msgpack ``[ts, op, new_exists, new_value,
  anchor]`` (the op and the timestamp in :mod:`kvstore.codec`'s wire form).
* ``ledger(txn_id, created_us, completed_us, body)`` with partial indexes on ``created_us`` for
  open records (``completed_us IS NULL``) and on ``completed_us`` for completed ones; ``body`` is
  msgpack of :func:`kvstore.codec.encode_ledger_record`.
* ``tokens(token, txn_id, fingerprint, created_us)`` with an index ``(created_us, token)``.
* ``meta(id = 0, max_delete_ts, max_deleted_version)``: the partition watermark.

Timestamp columns hold **24-byte blobs**: ``physical_us``, ``logical`` and ``origin`` as unsigned
64-bit big-endian integers. SQLite integers are signed, so this is the one encoding that keeps
all three parts' full unsigned range *and* makes SQLite's blob order (``memcmp``) equal to
:class:`~kvstore.types.Timestamp` tuple order: ``ORDER BY tomb_ts`` sorts tombstones by
``max(write_ts, read_ts)`` exactly as ``MemoryStore`` does (physical microseconds first, then the
logical counter and the origin). Keys, transaction ids and tokens are TEXT under the BINARY
collation, which compares UTF-8 bytes: the same order as Python's ``str`` comparison. Every
listing breaks ties on the table's key, so its order is total.

:func:`stage_rows` writes one flush job into an open ``BEGIN IMMEDIATE`` transaction: deletions
and upserts (``INSERT OR REPLACE``, with ``executemany``) of every table; :func:`commit_rows`
commits it (the fsync). Either rolls back on failure.

``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`; :func:`ensure_schema` creates the schema in
an empty file, upgrades an older version in place (``_UPGRADES``) and refuses any other version
with :class:`SchemaError`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import msgpack

from kvstore.codec import (
    decode_ledger_record,
    decode_op,
    decode_timestamp,
    encode_ledger_record,
    encode_op,
    encode_timestamp,
)
from kvstore.limits import SQLITE_CACHE_KIB
from kvstore.messages import LedgerRecord
from kvstore.storage_node.store import Intent, ItemRow, PartitionMeta, TokenRow
from kvstore.types import Key, PartitionId, Timestamp, TxnId

__all__ = [
    "SCHEMA_VERSION",
    "SchemaError",
    "connect",
    "ensure_schema",
    "load_meta",
    "Sql",
    "pack",
    "unpack",
    "item_params",
    "decode_item",
    "intent_params",
    "decode_intent",
    "ledger_params",
    "decode_ledger",
    "token_params",
    "decode_token",
    "meta_params",
    "stage_rows",
    "commit_rows",
    "BUSY_TIMEOUT_S",
    "WAL_SIZE_LIMIT_BYTES",
]

SCHEMA_VERSION: Final = 2

# Extra constants of this module (not protocol limits, so not in kvstore.limits):
# how long a connection waits for a lock held by another process before failing (seconds); a
# partition file has one writer, so this only matters for an operator's tool holding the file.
BUSY_TIMEOUT_S: Final = 5.0
# Bytes of WAL file kept after a checkpoint; a larger WAL left by a burst is truncated to this.
WAL_SIZE_LIMIT_BYTES: Final = 64 * 1024 * 1024

_TS: Final = struct.Struct(">QQQ")
_TS2: Final = struct.Struct(">QQQQQQ")

_DDL: Final = (
    """CREATE TABLE items (
        key TEXT PRIMARY KEY NOT NULL,
        live INTEGER NOT NULL,
        version INTEGER NOT NULL,
        ts BLOB NOT NULL,
        value BLOB NOT NULL,
        tomb_ts BLOB
    ) WITHOUT ROWID""",
    "CREATE INDEX items_tombstones ON items (tomb_ts, key) WHERE live = 0",
    """CREATE TABLE intents (
        key TEXT PRIMARY KEY NOT NULL,
        txn_id TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        body BLOB NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE ledger (
        txn_id TEXT PRIMARY KEY NOT NULL,
        created_us INTEGER NOT NULL,
        completed_us INTEGER,
        body BLOB NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX ledger_open ON ledger (created_us, txn_id) WHERE completed_us IS NULL",
    """CREATE INDEX ledger_completed ON ledger (completed_us, txn_id)
        WHERE completed_us IS NOT NULL""",
    """CREATE TABLE tokens (
        token TEXT PRIMARY KEY NOT NULL,
        txn_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_us INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX tokens_by_created ON tokens (created_us, token)",
    """CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        max_delete_ts BLOB NOT NULL,
        max_deleted_version INTEGER NOT NULL
    )""",
)


class SchemaError(RuntimeError):
    """The file is not a partition database this version of kvstore can open."""


class Sql:
    """Every statement the store runs (kept verbatim so ``sqlite3`` caches them)."""

    _ITEM: Final = "SELECT key, live, version, ts, value FROM items"
    GET_ITEM: Final = "SELECT live, version, ts, value FROM items WHERE key = ?"
    PUT_ITEM: Final = (
        "INSERT OR REPLACE INTO items (key, live, version, ts, value, tomb_ts)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )
    DELETE_ITEM: Final = "DELETE FROM items WHERE key = ?"
    TOMBSTONES: Final = f"{_ITEM} WHERE live = 0 ORDER BY tomb_ts, key LIMIT ?"
    SCAN_FROM: Final = f"{_ITEM} WHERE key >= ? AND live = 1 ORDER BY key LIMIT ?"
    SCAN_RANGE: Final = f"{_ITEM} WHERE key >= ? AND key < ? AND live = 1 ORDER BY key LIMIT ?"

    _INTENT: Final = "SELECT key, txn_id, created_us, body FROM intents"
    PUT_INTENT: Final = (
        "INSERT OR REPLACE INTO intents (key, txn_id, created_us, body) VALUES (?, ?, ?, ?)"
    )
    DELETE_INTENT: Final = "DELETE FROM intents WHERE key = ?"
    COUNT_LIVE_ITEMS: Final = "SELECT count(*) FROM items WHERE live = 1"
    ITEM_LIVE: Final = "SELECT live FROM items WHERE key = ?"
    ALL_INTENTS: Final = _INTENT

    _LEDGER: Final = "SELECT txn_id, body FROM ledger"
    GET_LEDGER: Final = f"{_LEDGER} WHERE txn_id = ?"
    PUT_LEDGER: Final = (
        "INSERT OR REPLACE INTO ledger (txn_id, created_us, completed_us, body) VALUES (?, ?, ?, ?)"
    )
    DELETE_LEDGER: Final = "DELETE FROM ledger WHERE txn_id = ?"
    LEDGER_OPEN: Final = f"{_LEDGER} WHERE completed_us IS NULL ORDER BY created_us, txn_id LIMIT ?"
    LEDGER_COMPLETED_BEFORE: Final = (
        f"{_LEDGER} WHERE completed_us IS NOT NULL AND completed_us < ?"
        " ORDER BY completed_us, txn_id LIMIT ?"
    )

    _TOKEN: Final = "SELECT token, txn_id, fingerprint, created_us FROM tokens"
    GET_TOKEN: Final = f"{_TOKEN} WHERE token = ?"
    PUT_TOKEN: Final = (
        "INSERT OR REPLACE INTO tokens (token, txn_id, fingerprint, created_us) VALUES (?, ?, ?, ?)"
    )
    DELETE_TOKEN: Final = "DELETE FROM tokens WHERE token = ?"
    TOKENS_BEFORE: Final = f"{_TOKEN} WHERE created_us < ? ORDER BY created_us, token LIMIT ?"

    GET_META: Final = "SELECT max_delete_ts, max_deleted_version FROM meta WHERE id = 0"
    PUT_META: Final = (
        "INSERT OR REPLACE INTO meta (id, max_delete_ts, max_deleted_version) VALUES (0, ?, ?)"
    )


# --- connections and schema -----------------------------------------------------------------


def connect(path: Path, *, writer: bool, synchronous_full: bool = True) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) with the store's pragmas.

    The writer may be used from any one thread at a time (``check_same_thread=False``: the
    store's flush thread); a reader belongs to the thread that opened it.
    """
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=not writer
    )
    try:
        conn.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        if writer:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SchemaError(f"{path}: SQLite refused WAL mode (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous_full else 'NORMAL'}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        else:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


# In-place upgrades to SCHEMA_VERSION, by the version found. Version 1 had two indexes on intents
# (by creation time, by transaction); the store now mirrors durable intents in memory and never
# queries them, so version 2 drops them: two fewer index pages written per intent.
_UPGRADES: Final[dict[int, tuple[str, ...]]] = {
    1: ("DROP INDEX IF EXISTS intents_by_created", "DROP INDEX IF EXISTS intents_by_txn"),
}


def ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty file; refuse a file of another version or another program."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise SchemaError(
                    f"{path}: not a kvstore partition database (user_version 0, {tables} "
                    "schema objects)"
                )
            for statement in _DDL:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version in _UPGRADES:
            for statement in _UPGRADES[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise SchemaError(
                f"{path}: partition schema version {version}, this kvstore reads only version "
                f"{SCHEMA_VERSION}; use the kvstore release that wrote it"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


K = TypeVar("K")
V = TypeVar("V")


def stage_rows(
    conn: sqlite3.Connection,
    *,
    items: Mapping[Key, ItemRow | None],
    intents: Mapping[Key, Intent | None],
    ledger: Mapping[TxnId, LedgerRecord | None],
    tokens: Mapping[str, TokenRow | None],
    meta: PartitionMeta | None,
) -> None:
    """Open a transaction and write one flush job's rows into it, without committing (no disk
    wait: the pages stay in SQLite's cache or go to the WAL unsynced). On failure: roll back,
    raise."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        _write_table(conn, items, Sql.PUT_ITEM, Sql.DELETE_ITEM, item_params)
        _write_table(conn, intents, Sql.PUT_INTENT, Sql.DELETE_INTENT, intent_params)
        _write_table(conn, ledger, Sql.PUT_LEDGER, Sql.DELETE_LEDGER, ledger_params)
        _write_table(conn, tokens, Sql.PUT_TOKEN, Sql.DELETE_TOKEN, token_params)
        if meta is not None:
            conn.execute(Sql.PUT_META, meta_params(meta))
    except BaseException:
        _roll_back(conn)
        raise


def commit_rows(conn: sqlite3.Connection) -> None:
    """Commit the staged transaction: with ``synchronous=FULL`` the WAL is fsynced before this
    returns. CPython releases the GIL for the whole COMMIT. On failure: roll back, raise."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        _roll_back(conn)
        raise


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _write_table(
    conn: sqlite3.Connection,
    rows: Mapping[K, V | None],
    put_sql: str,
    delete_sql: str,
    params: Callable[[V], tuple[object, ...]],
) -> None:
    if not rows:
        return
    deleted = [(key,) for key, row in rows.items() if row is None]
    if deleted:
        conn.executemany(delete_sql, deleted)
    if len(deleted) < len(rows):
        conn.executemany(put_sql, [params(row) for row in rows.values() if row is not None])


def load_meta(conn: sqlite3.Connection) -> PartitionMeta:
    row = conn.execute(Sql.GET_META).fetchone()
    if row is None:
        return PartitionMeta()
    return PartitionMeta(max_delete_ts=_ts(row[0]), max_deleted_version=row[1])


# --- row encodings --------------------------------------------------------------------------

_packb: Callable[..., bytes] = msgpack.packb
_unpackb: Callable[..., Any] = msgpack.unpackb


def pack(obj: object) -> bytes:
    return _packb(obj, use_bin_type=True)


def unpack(blob: bytes) -> Any:
    return _unpackb(blob, raw=False)


_new_tuple: Final = tuple.__new__  # Timestamp(*parts) without NamedTuple's __new__ wrapper


def _ts(blob: bytes, offset: int = 0) -> Timestamp:
    return _new_tuple(Timestamp, _TS.unpack_from(blob, offset))


def item_params(row: ItemRow) -> tuple[object, ...]:
    w, r = row.write_ts, row.read_ts
    tomb = None if row.exists else _TS.pack(*max(w, r))
    ts = _TS2.pack(w[0], w[1], w[2], r[0], r[1], r[2])
    return (row.key, int(row.exists), row.version, ts, pack(row.value), tomb)


def decode_item(key: Key, live: int, version: int, ts: bytes, value: bytes) -> ItemRow:
    return ItemRow(
        key=key,
        exists=bool(live),
        value=unpack(value),
        version=version,
        write_ts=_ts(ts),
        read_ts=_ts(ts, _TS.size),
    )


def intent_params(intent: Intent) -> tuple[object, ...]:
    body = [
        encode_timestamp(intent.ts),
        encode_op(intent.op),
        intent.new_exists,
        intent.new_value,
        intent.anchor,
    ]
    return (intent.key, intent.txn_id, intent.created_us, pack(body))


def decode_intent(key: Key, txn_id: str, created_us: int, body: bytes) -> Intent:
    ts, op, new_exists, new_value, anchor = unpack(body)
    return Intent(
        key=key,
        txn_id=TxnId(txn_id),
        ts=decode_timestamp(ts),
        op=decode_op(op),
        new_exists=bool(new_exists),
        new_value=new_value,
        anchor=PartitionId(anchor),
        created_us=created_us,
    )


def ledger_params(record: LedgerRecord) -> tuple[object, ...]:
    body = pack(encode_ledger_record(record))
    return (record.txn_id, record.created_us, record.completed_us, body)


def decode_ledger(txn_id: str, body: bytes) -> LedgerRecord:
    del txn_id  # the body holds it too
    return decode_ledger_record(unpack(body))


def token_params(row: TokenRow) -> tuple[object, ...]:
    return (row.token, row.txn_id, row.fingerprint, row.created_us)


def decode_token(token: str, txn_id: str, fingerprint: str, created_us: int) -> TokenRow:
    return TokenRow(
        token=token, txn_id=TxnId(txn_id), fingerprint=fingerprint, created_us=created_us
    )


def meta_params(meta: PartitionMeta) -> tuple[object, ...]:
    return (_TS.pack(*meta.max_delete_ts), meta.max_deleted_version)
