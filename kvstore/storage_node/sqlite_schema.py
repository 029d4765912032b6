"""A node's SQLite database: schema, statements, connections, row encodings, flush writes, and
the import of the per-partition files of older releases.

Theory of operation
-------------------
``node.db`` holds every partition of a node (schema version 5). Each table is keyed like the
corresponding map of a partition, with ``partition`` as the first column of its primary key and
of each index, so one partition's rows form one contiguous range of every b-tree and a
partition's query is a range scan of it:

* ``items(partition, key, live, version, ts, value, tomb_ts)``: ``live`` is the row's ``exists``
  (0 for a tombstone); ``ts`` is ``write_ts`` then ``read_ts``; ``value`` is msgpack. ``tomb_ts``
  is ``max(write_ts, read_ts)`` on tombstones and NULL on live rows; the partial index
  ``(partition, tomb_ts, key) WHERE live = 0`` serves ``tombstones()``.
* ``intents(partition, key, txn_id, created_us, body)`` and no secondary index (the store mirrors
  them in memory); ``body`` is msgpack ``[ts, op, new_exists, new_value, anchor]`` (the op and
  the timestamp in :mod:`kvstore.codec`'s wire form).
* ``ledger(partition, txn_id, created_us, completed_us, body)`` with partial indexes on
  ``(partition, created_us, txn_id)`` for open records (``completed_us IS NULL``) and on
  ``(partition, completed_us, txn_id)`` for completed ones; ``body`` is msgpack of
  :func:`kvstore.codec.encode_ledger_record`.
* ``tokens(partition, token, txn_id, fingerprint, created_us)`` with an index
  ``(partition, created_us, token)``.
* ``meta(partition, max_delete_ts, max_deleted_version, epoch, seq, promised, read_floor,
  max_write_ts)``: one row per partition: its watermark, replication position, and the read floor
  and largest write timestamp of snapshot reads (docs/backup.md).
* ``migrated(file)``: the per-partition files of older releases already imported (below).

Timestamp columns hold **24-byte blobs**: ``physical_us``, ``logical`` and ``origin`` as unsigned
64-bit big-endian integers. SQLite integers are signed, so this is the one encoding that keeps
all three parts' full unsigned range *and* makes SQLite's blob order (``memcmp``) equal to
:class:`~kvstore.types.Timestamp` tuple order: ``ORDER BY tomb_ts`` sorts tombstones by
``max(write_ts, read_ts)`` exactly as :func:`~kvstore.storage_node.overlay.tombstone_order`
does. Keys, transaction ids and tokens are TEXT under the BINARY collation, which compares UTF-8
bytes: the same order as Python's ``str`` comparison. Every listing breaks ties on the table's
key, so its order is total.

:func:`stage_batch` writes one flush job (every partition's rows) into an open
``BEGIN IMMEDIATE`` transaction: per table, one ``executemany`` of deletions and one of upserts
(``INSERT OR REPLACE``) over all partitions; :func:`commit_rows` commits it (the fsync). Either
rolls back on failure.

``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`; :func:`ensure_schema` creates the schema in
an empty file and refuses any other version, or another program's file, with
:class:`SchemaError`.

**Upgrade** from releases with one file per partition (``p0007.db``: schema version 1 or 2, the
columns of the tables above without ``partition``; version 1 had two more indexes):
:func:`import_partition_files` finds them in the data directory, opens each read-write (so that
SQLite replays a WAL left by ``kill -9``: committed rows may exist only there) and copies every
row of every table into ``node.db``, the partition number taken from the file name, all files in
ONE transaction that also lists their names in ``migrated``. Only after that commit (with
``synchronous=FULL``, whatever the node runs with) and an fsync of the directory does it delete
the old files with their ``-wal`` and ``-shm``. A crash anywhere leaves either nothing imported
(the old files intact, imported again next time) or everything imported and listed, and a file
listed in ``migrated`` is never imported again (``node.db`` may hold newer rows by then), only
deleted. Every file found is imported, owned partitions or not: nothing may be lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
from kvstore.storage_node.overlay import NodeBatch
from kvstore.storage_node.store import Intent, ItemRow, PartitionMeta, TokenRow
from kvstore.types import Key, PartitionId, Timestamp, TxnId

__all__ = [
    "SCHEMA_VERSION",
    "NODE_DB",
    "SchemaError",
    "connect",
    "set_synchronous",
    "ensure_schema",
    "Migration",
    "import_partition_files",
    "partition_file_id",
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
    "decode_meta",
    "stage_batch",
    "commit_rows",
    "BUSY_TIMEOUT_S",
    "WAL_SIZE_LIMIT_BYTES",
]

SCHEMA_VERSION: Final = 5
# Version 3 lacked meta's replication position (version 4): added in place, zeros.
_ADD_POSITION: Final = tuple(
    f"ALTER TABLE meta ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
    for column in ("epoch", "seq", "promised")
)
# Version 4 lacked meta's read floor and largest write timestamp (version 5; docs/backup.md):
# added in place, zero timestamps.
_ZERO_TS_SQL: Final = "x'" + "00" * 24 + "'"  # TIMESTAMP_ZERO as a blob literal
_ADD_SNAPSHOT_META: Final = tuple(
    f"ALTER TABLE meta ADD COLUMN {column} BLOB NOT NULL DEFAULT {_ZERO_TS_SQL}"
    for column in ("read_floor", "max_write_ts")
)
NODE_DB: Final = "node.db"  # the node's database, in its data directory
_PARTITION_FILE_VERSIONS: Final = (1, 2)  # schema versions of the per-partition files imported
_PARTITION_FILE: Final = re.compile(r"p([0-9]{4,})\.db")  # as older releases named them
_OLD_FILE_SUFFIXES: Final = ("-wal", "-shm", "")  # deleted in this order: the .db goes last

# Extra constants of this module (not protocol limits, so not in kvstore.limits):
# how long a connection waits for a lock held by another process before failing (seconds); the
# node database has one writer, so this only matters for an operator's tool holding the file.
BUSY_TIMEOUT_S: Final = 5.0
# Bytes of WAL file kept after a checkpoint; a larger WAL left by a burst is truncated to this.
WAL_SIZE_LIMIT_BYTES: Final = 64 * 1024 * 1024

_TS: Final = struct.Struct(">QQQ")
_TS2: Final = struct.Struct(">QQQQQQ")

_DDL: Final = (
    """CREATE TABLE items (
        partition INTEGER NOT NULL,
        key TEXT NOT NULL,
        live INTEGER NOT NULL,
        version INTEGER NOT NULL,
        ts BLOB NOT NULL,
        value BLOB NOT NULL,
        tomb_ts BLOB,
        PRIMARY KEY (partition, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX items_tombstones ON items (partition, tomb_ts, key) WHERE live = 0",
    """CREATE TABLE intents (
        partition INTEGER NOT NULL,
        key TEXT NOT NULL,
        txn_id TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (partition, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE ledger (
        partition INTEGER NOT NULL,
        txn_id TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        completed_us INTEGER,
        body BLOB NOT NULL,
        PRIMARY KEY (partition, txn_id)
    ) WITHOUT ROWID""",
    """CREATE INDEX ledger_open ON ledger (partition, created_us, txn_id)
        WHERE completed_us IS NULL""",
    """CREATE INDEX ledger_completed ON ledger (partition, completed_us, txn_id)
        WHERE completed_us IS NOT NULL""",
    """CREATE TABLE tokens (
        partition INTEGER NOT NULL,
        token TEXT NOT NULL,
        txn_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        PRIMARY KEY (partition, token)
    ) WITHOUT ROWID""",
    "CREATE INDEX tokens_by_created ON tokens (partition, created_us, token)",
    """CREATE TABLE meta (
        partition INTEGER PRIMARY KEY NOT NULL,
        max_delete_ts BLOB NOT NULL,
        max_deleted_version INTEGER NOT NULL,
        epoch INTEGER NOT NULL DEFAULT 0,
        seq INTEGER NOT NULL DEFAULT 0,
        promised INTEGER NOT NULL DEFAULT 0,
        read_floor BLOB NOT NULL DEFAULT """
    + _ZERO_TS_SQL
    + """,
        max_write_ts BLOB NOT NULL DEFAULT """
    + _ZERO_TS_SQL
    + """
    )""",
    "CREATE TABLE migrated (file TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID",
)

# The tables of a per-partition file (versions 1 and 2) and their columns, in node.db's order
# less the leading ``partition``.
_PARTITION_FILE_TABLES: Final = {
    "items": ("key", "live", "version", "ts", "value", "tomb_ts"),
    "intents": ("key", "txn_id", "created_us", "body"),
    "ledger": ("txn_id", "created_us", "completed_us", "body"),
    "tokens": ("token", "txn_id", "fingerprint", "created_us"),
    "meta": ("max_delete_ts", "max_deleted_version"),
}


class SchemaError(RuntimeError):
    """The file is not a database this version of kvstore can open or import."""


class Sql:
    """Every statement the store runs (kept verbatim so ``sqlite3`` caches them). The first
    parameter of each is the partition."""

    _ITEM: Final = "SELECT key, live, version, ts, value FROM items WHERE partition = ?"
    GET_ITEM: Final = "SELECT live, version, ts, value FROM items WHERE partition = ? AND key = ?"
    PUT_ITEM: Final = (
        "INSERT OR REPLACE INTO items (partition, key, live, version, ts, value, tomb_ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    DELETE_ITEM: Final = "DELETE FROM items WHERE partition = ? AND key = ?"
    TOMBSTONES: Final = f"{_ITEM} AND live = 0 ORDER BY tomb_ts, key LIMIT ?"
    SCAN_FROM: Final = f"{_ITEM} AND key >= ? AND live = 1 ORDER BY key LIMIT ?"
    SCAN_RANGE: Final = f"{_ITEM} AND key >= ? AND key < ? AND live = 1 ORDER BY key LIMIT ?"
    SCAN_FROM_DESC: Final = f"{_ITEM} AND key >= ? AND live = 1 ORDER BY key DESC LIMIT ?"
    SCAN_RANGE_DESC: Final = (
        f"{_ITEM} AND key >= ? AND key < ? AND live = 1 ORDER BY key DESC LIMIT ?"
    )
    COUNT_LIVE_ITEMS: Final = "SELECT count(*) FROM items WHERE partition = ? AND live = 1"
    ITEM_LIVE: Final = "SELECT live FROM items WHERE partition = ? AND key = ?"

    ALL_INTENTS: Final = "SELECT key, txn_id, created_us, body FROM intents WHERE partition = ?"
    PUT_INTENT: Final = (
        "INSERT OR REPLACE INTO intents (partition, key, txn_id, created_us, body)"
        " VALUES (?, ?, ?, ?, ?)"
    )
    DELETE_INTENT: Final = "DELETE FROM intents WHERE partition = ? AND key = ?"

    _LEDGER: Final = "SELECT txn_id, body FROM ledger WHERE partition = ?"
    GET_LEDGER: Final = f"{_LEDGER} AND txn_id = ?"
    PUT_LEDGER: Final = (
        "INSERT OR REPLACE INTO ledger (partition, txn_id, created_us, completed_us, body)"
        " VALUES (?, ?, ?, ?, ?)"
    )
    DELETE_LEDGER: Final = "DELETE FROM ledger WHERE partition = ? AND txn_id = ?"
    LEDGER_OPEN: Final = f"{_LEDGER} AND completed_us IS NULL ORDER BY created_us, txn_id LIMIT ?"
    LEDGER_COMPLETED_BEFORE: Final = (
        f"{_LEDGER} AND completed_us IS NOT NULL AND completed_us < ?"
        " ORDER BY completed_us, txn_id LIMIT ?"
    )

    _TOKEN: Final = "SELECT token, txn_id, fingerprint, created_us FROM tokens WHERE partition = ?"
    GET_TOKEN: Final = f"{_TOKEN} AND token = ?"
    PUT_TOKEN: Final = (
        "INSERT OR REPLACE INTO tokens (partition, token, txn_id, fingerprint, created_us)"
        " VALUES (?, ?, ?, ?, ?)"
    )
    DELETE_TOKEN: Final = "DELETE FROM tokens WHERE partition = ? AND token = ?"
    TOKENS_BEFORE: Final = f"{_TOKEN} AND created_us < ? ORDER BY created_us, token LIMIT ?"

    GET_META: Final = (
        "SELECT max_delete_ts, max_deleted_version, epoch, seq, promised, read_floor,"
        " max_write_ts FROM meta WHERE partition = ?"
    )
    PUT_META: Final = (
        "INSERT OR REPLACE INTO meta"
        " (partition, max_delete_ts, max_deleted_version, epoch, seq, promised, read_floor,"
        " max_write_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )

    MIGRATED: Final = "SELECT file FROM migrated"
    ADD_MIGRATED: Final = "INSERT INTO migrated (file) VALUES (?)"


# --- connections and schema -----------------------------------------------------------------


def connect(path: Path, *, writer: bool, synchronous_full: bool = True) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) with the store's pragmas.

    The writer may be used from any one thread at a time (``check_same_thread=False``: a flush
    thread); a reader belongs to the thread that opened it.
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
            set_synchronous(conn, full=synchronous_full)
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        else:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def set_synchronous(conn: sqlite3.Connection, *, full: bool) -> None:
    """``FULL``: a commit is fsynced; ``NORMAL``: safe against process crashes only."""
    conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")


def ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty file; refuse a file of another version or another program."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if objects:
                raise SchemaError(
                    f"{path}: not a kvstore node database (user_version 0, {objects} schema "
                    "objects)"
                )
            for statement in _DDL:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version in (3, 4):
            for statement in (_ADD_POSITION if version == 3 else ()) + _ADD_SNAPSHOT_META:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise SchemaError(
                f"{path}: node database schema version {version}, this kvstore reads only "
                f"version {SCHEMA_VERSION}; use the kvstore release that wrote it"
            )
        conn.execute("COMMIT")
    except BaseException:
        _roll_back(conn)
        raise


# --- the upgrade from one file per partition -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """What :func:`import_partition_files` did: the files it imported now, and the old files it
    deleted (those imported now and those an earlier open imported but did not delete)."""

    imported: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


def partition_file_id(name: str) -> PartitionId | None:
    """The partition of an older release's file name (``p0007.db``), else ``None``."""
    match = _PARTITION_FILE.fullmatch(name)
    if match is None or name != f"p{int(match[1]):04d}.db":
        return None
    return PartitionId(int(match[1]))


def import_partition_files(conn: sqlite3.Connection, data_dir: Path) -> Migration:
    """Import the per-partition files of older releases found in ``data_dir`` into the node
    database open on ``conn`` (its writer, with ``synchronous=FULL``), then delete them (module
    docstring). Raises :class:`SchemaError`, importing nothing, if one cannot be imported."""
    found = sorted(
        (pid, path)
        for path in data_dir.iterdir()
        if (pid := partition_file_id(path.name)) is not None
    )
    done = {name for (name,) in conn.execute(Sql.MIGRATED)}
    todo = [(pid, path) for pid, path in found if path.name not in done]
    if todo:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for pid, path in todo:
                _import_partition_file(conn, pid, path)
                conn.execute(Sql.ADD_MIGRATED, (path.name,))
            conn.execute("COMMIT")
        except BaseException:
            _roll_back(conn)
            raise
        _fsync_dir(data_dir)
    deleted = []
    for name in sorted(done | {path.name for _, path in todo}):
        removed = False
        for suffix in _OLD_FILE_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                (data_dir / f"{name}{suffix}").unlink()
                removed = True
        if removed:
            deleted.append(name)
    if deleted:
        _fsync_dir(data_dir)
    return Migration(imported=tuple(path.name for _, path in todo), deleted=tuple(deleted))


def _import_partition_file(conn: sqlite3.Connection, pid: PartitionId, path: Path) -> None:
    """Copy every row of one old partition file into the open transaction on ``conn``."""
    for table in _PARTITION_FILE_TABLES:
        held = conn.execute(f"SELECT 1 FROM {table} WHERE partition = ? LIMIT 1", (pid,))
        if held.fetchone() is not None:
            raise SchemaError(
                f"{path}: {NODE_DB} already holds rows of partition {pid}; not importing this "
                "file over them (move one of the two away)"
            )
    # Read-write, so that SQLite replays the file's WAL (a writer killed before a checkpoint
    # left its committed rows only there); "mode=rw" never creates a file.
    old = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        version = old.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and not old.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            return  # created and never written: no rows
        if version not in _PARTITION_FILE_VERSIONS:
            raise SchemaError(
                f"{path}: not a kvstore partition database this release can import (schema "
                f"version {version}; it imports versions "
                f"{', '.join(map(str, _PARTITION_FILE_VERSIONS))})"
            )
        for table, columns in _PARTITION_FILE_TABLES.items():
            listed = ", ".join(columns)
            marks = ", ".join("?" * (len(columns) + 1))
            rows = old.execute(f"SELECT {listed} FROM {table}")
            conn.executemany(
                f"INSERT INTO {table} (partition, {listed}) VALUES ({marks})",
                ((pid, *row) for row in rows),
            )
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{path}: cannot import this partition file: {exc}") from exc
    finally:
        old.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- flush writes ----------------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


def stage_batch(conn: sqlite3.Connection, batch: NodeBatch) -> None:
    """Open a transaction and write one flush job's rows (every partition's) into it, without
    committing (no disk wait: the pages stay in SQLite's cache or go to the WAL unsynced). On
    failure: roll back, raise."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        parts = batch.items()
        _write_table(
            conn, ((p, b.items) for p, b in parts), Sql.PUT_ITEM, Sql.DELETE_ITEM, item_params
        )
        _write_table(
            conn,
            ((p, b.intents) for p, b in parts),
            Sql.PUT_INTENT,
            Sql.DELETE_INTENT,
            intent_params,
        )
        _write_table(
            conn,
            ((p, b.ledger) for p, b in parts),
            Sql.PUT_LEDGER,
            Sql.DELETE_LEDGER,
            ledger_params,
        )
        _write_table(
            conn, ((p, b.tokens) for p, b in parts), Sql.PUT_TOKEN, Sql.DELETE_TOKEN, token_params
        )
        metas = [meta_params(pid, part.meta) for pid, part in parts if part.meta is not None]
        if metas:
            conn.executemany(Sql.PUT_META, metas)
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
    tables: Iterable[tuple[PartitionId, Mapping[K, V | None]]],
    put_sql: str,
    delete_sql: str,
    params: Callable[[PartitionId, V], tuple[object, ...]],
) -> None:
    """One ``executemany`` of the deletions and one of the upserts of every partition."""
    deleted: list[tuple[object, ...]] = []
    written: list[tuple[object, ...]] = []
    for pid, rows in tables:
        for key, row in rows.items():
            if row is None:
                deleted.append((pid, key))
            else:
                written.append(params(pid, row))
    if deleted:
        conn.executemany(delete_sql, deleted)
    if written:
        conn.executemany(put_sql, written)


def decode_meta(row: tuple[bytes, int, int, int, int, bytes, bytes] | None) -> PartitionMeta:
    if row is None:
        return PartitionMeta()
    return PartitionMeta(
        max_delete_ts=_ts(row[0]),
        max_deleted_version=row[1],
        epoch=row[2],
        seq=row[3],
        promised=row[4],
        read_floor=_ts(row[5]),
        max_write_ts=_ts(row[6]),
    )


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


def item_params(pid: PartitionId, row: ItemRow) -> tuple[object, ...]:
    w, r = row.write_ts, row.read_ts
    tomb = None if row.exists else _TS.pack(*max(w, r))
    ts = _TS2.pack(w[0], w[1], w[2], r[0], r[1], r[2])
    return (pid, row.key, int(row.exists), row.version, ts, pack(row.value), tomb)


def decode_item(key: Key, live: int, version: int, ts: bytes, value: bytes) -> ItemRow:
    return ItemRow(
        key=key,
        exists=bool(live),
        value=unpack(value),
        version=version,
        write_ts=_ts(ts),
        read_ts=_ts(ts, _TS.size),
    )


def intent_params(pid: PartitionId, intent: Intent) -> tuple[object, ...]:
    body = [
        encode_timestamp(intent.ts),
        encode_op(intent.op),
        intent.new_exists,
        intent.new_value,
        intent.anchor,
    ]
    return (pid, intent.key, intent.txn_id, intent.created_us, pack(body))


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


def ledger_params(pid: PartitionId, record: LedgerRecord) -> tuple[object, ...]:
    body = pack(encode_ledger_record(record))
    return (pid, record.txn_id, record.created_us, record.completed_us, body)


def decode_ledger(txn_id: str, body: bytes) -> LedgerRecord:
    del txn_id  # the body holds it too
    return decode_ledger_record(unpack(body))


def token_params(pid: PartitionId, row: TokenRow) -> tuple[object, ...]:
    return (pid, row.token, row.txn_id, row.fingerprint, row.created_us)


def decode_token(token: str, txn_id: str, fingerprint: str, created_us: int) -> TokenRow:
    return TokenRow(
        token=token, txn_id=TxnId(txn_id), fingerprint=fingerprint, created_us=created_us
    )


def meta_params(pid: PartitionId, meta: PartitionMeta) -> tuple[object, ...]:
    return (
        pid,
        _TS.pack(*meta.max_delete_ts),
        meta.max_deleted_version,
        meta.epoch,
        meta.seq,
        meta.promised,
        _TS.pack(*meta.read_floor),
        _TS.pack(*meta.max_write_ts),
    )
