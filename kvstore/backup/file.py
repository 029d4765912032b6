"""The backup file: one SQLite file holding every item of a cluster as of one timestamp.

Theory of operation
-------------------
A backup (issue 20, docs/backup.md "File format") is one SQLite file, format version 1, that
``sqlite3``, ``sqlite-utils`` or Datasette open as they are. The tables are made and filled with
``sqlite-utils``; the file is plain SQLite, so nothing of it is needed to read one.

* ``items``: one row per item, ``key TEXT PRIMARY KEY``; ``value_json TEXT``, the value as compact
  JSON for people, NULL when the value holds bytes (JSON has none); ``value_msgpack BLOB``, always
  ``msgpack.packb(value, use_bin_type=True)``, the exact value (readers decode this column, never
  the JSON); ``version INTEGER``; ``commit_ts TEXT``, the timestamp's API text
  ``"<physical_us>.<logical>.<origin as 16 hex digits>"``; ``partition INTEGER``, the item's
  partition in the source cluster.
* ``meta``: ``name TEXT PRIMARY KEY, value TEXT`` holding JSON: ``format_version``, ``at``,
  ``cluster``, ``created_at``, ``partitions``, ``partition_map``, ``kvstore_version`` (written by
  :meth:`BackupWriter.create`), then ``deleted_version``, ``items``, ``checksum`` and, last,
  ``complete`` = ``true`` (written by :meth:`BackupWriter.finish`).
* ``partitions``: ``partition INTEGER PRIMARY KEY, items INTEGER, checksum TEXT``: one row per
  source partition, the empty ones included.
* The index ``items_partition_key`` on ``items (partition, key)``, made by ``finish``, serves
  reads of one source partition (:meth:`BackupReader.items` with ``partition``).

Checksums. Each partition's checksum is a running BLAKE2b-256 over its items in the order
written, each item contributing :func:`item_record` (its key as UTF-8, its version in decimal,
its ``commit_ts`` text and its ``value_msgpack``, each preceded by its length as 8 bytes
big-endian). The writer takes a partition's items in ascending key order, each key once (the order
a partition's scan pages come in), so the order written is the key order and a reader recomputes
every checksum in one pass over the file in key order, whatever happened to its row ids. The file
checksum (meta ``checksum``) is BLAKE2b-256 over the 32-byte partition digests in partition order
(:func:`file_checksum`). Checksums find damage and truncation; they are not a signature: whoever
can write the file can compute them again.

Writing. :meth:`BackupWriter.create` makes the file with ``O_EXCL`` and mode 0600 (it never
overwrites anything) and writes the first meta rows. :meth:`BackupWriter.add` streams items
through ``Table.insert_all`` in batches of ``BACKUP_FILE_INSERT_ROWS``, inside a transaction that
ends after the ``add`` call that reaches ``BACKUP_FILE_COMMIT_ROWS`` rows, with SQLite's rollback
journal off and ``synchronous=OFF``: nothing is fsync'd until :meth:`BackupWriter.finish`, which
writes the partition rows and counts, fsyncs the file, only then writes ``complete`` = ``true``,
and fsyncs the file and its directory. A crash at any point before that leaves a file without
``complete`` (or one SQLite calls malformed): :class:`BackupReader` and :func:`verify` refuse it.
Any failure inside ``add`` or ``finish`` leaves the writer failed: only :meth:`BackupWriter.abort`
(close and delete the partial file) remains. Memory is bounded by the page cache
(``BACKUP_FILE_CACHE_KIB``) and one batch, never by the backup's size.

Reading. :meth:`BackupReader.open` refuses what is not a complete backup of a format version this
code reads, with :class:`BackupInvalid` (a ``ValidationError``; kvctl exit status 2) naming what is
wrong. :meth:`BackupReader.items` and :meth:`BackupReader.batches` stream rows in key order through
a cursor; every row is checked and decoded by one function (types, the timestamp text, the value
decoded from msgpack and validated as a store value, ``value_json`` equal to the JSON of that
value). :func:`verify` reads every row that way, recomputes every partition's count and checksum
and the file checksum, and compares them with the ``partitions`` table and the meta rows.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import importlib.metadata
import json
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, TypeAlias, cast

import msgpack
import sqlite_utils

from kvstore.errors import KvError, NotFound, ValidationError
from kvstore.limits import (
    BACKUP_FILE_CACHE_KIB,
    BACKUP_FILE_COMMIT_ROWS,
    BACKUP_FILE_INSERT_ROWS,
    BACKUP_FILE_PROGRESS_ITEMS,
    BACKUP_FILE_READ_ROWS,
    PARTITIONS_MAX,
    VALUE_BYTES_MAX,
    VALUE_DEPTH_MAX,
)
from kvstore.messages import ItemView
from kvstore.types import ORIGIN_MAX, JsonValue, Key, Timestamp, Value, timestamp_from_text
from kvstore.values import validate_value

__all__ = [
    "FORMAT_VERSION",
    "DIGEST_BYTES",
    "Progress",
    "BackupRow",
    "BackupInvalid",
    "BackupMeta",
    "VerifyReport",
    "BackupWriter",
    "BackupReader",
    "item_record",
    "file_checksum",
    "verify",
]

FORMAT_VERSION: Final = 1
DIGEST_BYTES: Final = 32  # BLAKE2b-256

# Called with the number of items written (or checked) so far, every
# BACKUP_FILE_PROGRESS_ITEMS items and once at the end.
Progress: TypeAlias = Callable[[int], None]
# One item as BackupReader.items yields it: (key, value, version, commit timestamp).
BackupRow: TypeAlias = tuple[Key, Value, int, Timestamp]

_LENGTH: Final = struct.Struct(">Q")
_VERSION_MAX: Final = (1 << 63) - 1  # the largest SQLite INTEGER
_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_KEY_SHOWN_CHARS: Final = 60  # a longer key is cut in messages
_META_NAMES: Final = (
    "format_version",
    "at",
    "cluster",
    "created_at",
    "partitions",
    "partition_map",
    "deleted_version",
    "items",
    "checksum",
    "complete",
    "kvstore_version",
)
_ITEM_COLUMNS: Final = 'key, value_msgpack, version, commit_ts, "partition", value_json'
_PARTITION_INDEX: Final = "items_partition_key"  # one partition's items in key order
_NOT_JSON: Final = object()  # a meta value that is not JSON text


class BackupInvalid(ValidationError):
    """The file is not a complete, intact backup of a format version this code reads.

    ``reason`` says which check failed, one of: ``not_backup`` (not SQLite, or SQLite without
    the backup's tables), ``unreadable`` (SQLite cannot read it: damaged), ``format_version``,
    ``incomplete`` (no ``complete`` = ``true``: the writer did not finish), ``meta`` (a meta row
    is missing or malformed), ``row`` (an ``items`` row is malformed), ``count``, ``checksum``.
    ``details`` carry ``path``, ``reason`` and, where known, ``partition``, ``key``,
    ``expected`` and ``found``."""

    def __init__(self, path: Path, reason: str, problem: str, **details: JsonValue) -> None:
        super().__init__(
            "backup", problem, details={"path": str(path), "reason": reason, **details}
        )
        self.message = f"invalid backup {path}: {problem}"
        self.args = (self.message,)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupMeta:
    """The meta rows of a complete backup, decoded."""

    format_version: int
    at: Timestamp  # every item is as of this timestamp
    cluster: str  # what the source cluster is, as the backup's maker named it
    created_at: str  # ISO-8601 UTC wall time of the backup's start
    partitions: int  # the source cluster's partition count
    partition_map: JsonValue  # the source cluster's partition map, as its maker gave it
    deleted_version: int  # the largest deleted-key version in the source cluster
    items: int
    checksum: str  # the file checksum, 64 hex digits
    complete: bool
    kvstore_version: str  # the kvstore release that wrote the file

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "format_version": self.format_version,
            "at": str(self.at),
            "cluster": self.cluster,
            "created_at": self.created_at,
            "partitions": self.partitions,
            "partition_map": self.partition_map,
            "deleted_version": self.deleted_version,
            "items": self.items,
            "checksum": self.checksum,
            "complete": self.complete,
            "kvstore_version": self.kvstore_version,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """What :func:`verify` checked: every row, every partition's count and checksum, the file
    checksum, the format version and completeness. Only a valid file gets a report."""

    path: Path
    meta: BackupMeta
    items: int
    partitions: int

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "path": str(self.path),
            "valid": True,
            "items": self.items,
            "partitions": self.partitions,
            "checksum": self.meta.checksum,
            "meta": self.meta.to_json(),
        }


# --- the canonical encodings ---------------------------------------------------------------


def item_record(key: str, version: int, commit_ts: str, value_msgpack: bytes) -> bytes:
    """The bytes one item adds to its partition's checksum: its key (UTF-8), version (decimal
    ASCII), ``commit_ts`` text and ``value_msgpack``, each preceded by its length as an
    unsigned 8-byte big-endian integer. The writer and :func:`verify` both use this."""
    key_bytes = key.encode("utf-8")
    version_bytes = b"%d" % version
    ts_bytes = commit_ts.encode("ascii")
    return b"".join(
        (
            _LENGTH.pack(len(key_bytes)),
            key_bytes,
            _LENGTH.pack(len(version_bytes)),
            version_bytes,
            _LENGTH.pack(len(ts_bytes)),
            ts_bytes,
            _LENGTH.pack(len(value_msgpack)),
            value_msgpack,
        )
    )


def file_checksum(partition_digests: Iterable[bytes]) -> str:
    """The file checksum: BLAKE2b-256 over the 32-byte partition digests in partition order,
    as 64 hex digits."""
    hasher = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for digest in partition_digests:
        hasher.update(digest)
    return hasher.hexdigest()


def _value_json(value: Value) -> str | None:
    """The value as compact JSON (member order kept), or None when it holds bytes."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None


def _meta_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _shown(key: str) -> str:
    return repr(key if len(key) <= _KEY_SHOWN_CHARS else key[:_KEY_SHOWN_CHARS] + "...")


def _kvstore_version() -> str:
    try:
        return importlib.metadata.version("kvstore")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sqlite_failure(error: sqlite3.Error, path: Path) -> BaseException:
    """A full disk as the OSError kvctl reports as such; any other SQLite error as it is."""
    if isinstance(error, sqlite3.OperationalError) and "full" in str(error):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return error


# --- writing -------------------------------------------------------------------------------


class _PartitionSum:
    """One source partition's running checksum, count and last key, as the writer sees them."""

    __slots__ = ("hasher", "items", "last_key")

    def __init__(self) -> None:
        self.hasher = hashlib.blake2b(digest_size=DIGEST_BYTES)
        self.items = 0
        self.last_key: str | None = None


_WriterState: TypeAlias = Literal["open", "failed", "finished", "aborted"]


class BackupWriter:
    """Writes one backup file; see the module's theory of operation. Make one with
    :meth:`create`, then :meth:`add` items, then :meth:`finish` (or :meth:`abort`). As a context
    manager it aborts on leaving unless :meth:`finish` has returned."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, partitions: int, progress: Progress | None
    ) -> None:
        """Private: use :meth:`create`."""
        self.path = path
        self._conn = conn
        self._db = sqlite_utils.Database(conn)
        self._partitions = partitions
        self._sums = [_PartitionSum() for _ in range(partitions)]
        self._progress = progress
        self._items = 0
        self._uncommitted = 0
        self._state: _WriterState = "open"
        self._failure = ""

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        at: Timestamp,
        cluster: str,
        partitions: int,
        partition_map: object,
        progress: Progress | None = None,
    ) -> BackupWriter:
        """A new backup file at ``path`` (mode 0600; an existing path is refused with a
        ``ValidationError``) of a cluster of ``partitions`` partitions as of ``at``.
        ``partition_map`` is any JSON-compatible description of the source cluster's partitions;
        ``progress`` is called with the items written so far."""
        target = Path(path)
        if type(at) is not Timestamp or not all(0 <= part <= ORIGIN_MAX for part in at):
            raise ValidationError("at", "must be a Timestamp")
        if not isinstance(cluster, str):
            raise ValidationError("cluster", "must be a string")
        if type(partitions) is not int or not 1 <= partitions <= PARTITIONS_MAX:
            raise ValidationError("partitions", f"must be 1..{PARTITIONS_MAX}")
        try:
            map_json = _meta_json(partition_map)
        except (TypeError, ValueError) as error:
            raise ValidationError("partition_map", f"must be JSON-compatible ({error})") from None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(target, flags, 0o600)
        except FileExistsError:
            raise ValidationError(
                "path", f"{target} exists already: a backup never overwrites a file"
            ) from None
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
        finally:
            os.close(fd)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(target, isolation_level=None)
            writer = cls(target, conn, partitions, progress)
            writer._start(
                {
                    "format_version": _meta_json(FORMAT_VERSION),
                    "at": _meta_json(str(at)),
                    "cluster": _meta_json(cluster),
                    "created_at": _meta_json(
                        datetime.datetime.now(datetime.UTC)
                        .isoformat(timespec="milliseconds")
                        .replace("+00:00", "Z")
                    ),
                    "partitions": _meta_json(partitions),
                    "partition_map": map_json,
                    "kvstore_version": _meta_json(_kvstore_version()),
                }
            )
        except BaseException as error:
            if conn is not None:
                conn.close()
            target.unlink(missing_ok=True)
            if isinstance(error, sqlite3.Error):
                raise _sqlite_failure(error, target) from error
            raise
        return writer

    @property
    def items(self) -> int:
        """Items added so far."""
        return self._items

    def _start(self, meta: dict[str, str]) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(f"PRAGMA cache_size=-{BACKUP_FILE_CACHE_KIB}")
        conn.execute("BEGIN")
        self._db.table("items").create(
            {
                "key": str,
                "value_json": str,
                "value_msgpack": bytes,
                "version": int,
                "commit_ts": str,
                "partition": int,
            },
            pk="key",
            not_null={"key", "value_msgpack", "version", "commit_ts", "partition"},
        )
        self._db.table("meta").create({"name": str, "value": str}, pk="name", not_null={"value"})
        self._db.table("partitions").create(
            {"partition": int, "items": int, "checksum": str},
            pk="partition",
            not_null={"items", "checksum"},
        )
        self._db.table("meta").insert_all(
            [{"name": name, "value": value} for name, value in meta.items()]
        )
        self._commit()

    def add(self, partition: int, items: Iterable[ItemView]) -> int:
        """Write ``items`` of source partition ``partition``; returns how many. A partition's
        items may come over many calls, and partitions one after another or interleaved, but
        each partition's items must come in ascending key order, each key once in the backup
        (the order of a partition's scan pages); anything else is a ``ValidationError`` and
        fails the writer."""
        self._check_open("add")
        if type(partition) is not int or not 0 <= partition < self._partitions:
            raise ValidationError(
                "partition", f"must be 0..{self._partitions - 1} (the source cluster's)"
            )
        before = self._items
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN")
            self._db.table("items").insert_all(
                self._rows(partition, items), batch_size=BACKUP_FILE_INSERT_ROWS
            )
            if self._uncommitted >= BACKUP_FILE_COMMIT_ROWS:
                self._commit()
        except BaseException as error:
            raise self._fail(error) from (error if isinstance(error, sqlite3.Error) else None)
        return self._items - before

    def _rows(self, partition: int, items: Iterable[ItemView]) -> Iterator[dict[str, object]]:
        state = self._sums[partition]
        update = state.hasher.update
        progress = self._progress
        for item in items:
            key, version, ts, value = item.key, item.version, item.ts, item.value
            if type(key) is not str or not key:
                raise ValidationError("key", f"must be a non-empty string, not {key!r:.80}")
            if state.last_key is not None and key <= state.last_key:
                raise ValidationError(
                    "key",
                    f"partition {partition}: {_shown(key)} after {_shown(state.last_key)}: a "
                    "partition's items must come in ascending key order, each key once",
                )
            if type(version) is not int or not 0 <= version <= _VERSION_MAX:
                raise ValidationError("version", f"key {_shown(key)}: must be 0..{_VERSION_MAX}")
            if type(ts) is not Timestamp or not (
                0 <= ts[0] <= ORIGIN_MAX and 0 <= ts[1] <= ORIGIN_MAX and 0 <= ts[2] <= ORIGIN_MAX
            ):
                raise ValidationError("ts", f"key {_shown(key)}: must be a Timestamp")
            try:
                validate_value(value)
                packed: bytes = msgpack.packb(value, use_bin_type=True)
                ts_text = str(ts)
                update(item_record(key, version, ts_text, packed))
            except ValidationError as error:
                raise ValidationError("value", f"key {_shown(key)}: {error.message}") from None
            except UnicodeEncodeError:
                raise ValidationError(
                    "key", f"{_shown(key)} is not valid UTF-8 (it has a lone surrogate)"
                ) from None
            state.last_key = key
            state.items += 1
            self._items += 1
            self._uncommitted += 1
            yield {
                "key": key,
                "value_json": _value_json(value),
                "value_msgpack": packed,
                "version": version,
                "commit_ts": ts_text,
                "partition": partition,
            }
            if progress is not None and self._items % BACKUP_FILE_PROGRESS_ITEMS == 0:
                progress(self._items)

    def finish(self, deleted_version: int) -> BackupMeta:
        """Index the items by partition; write the partitions' counts and checksums, the file
        checksum, ``deleted_version`` (the largest deleted-key version of the source cluster)
        and, once all that is on disk, ``complete`` = ``true``; close the file. Returns the meta
        as a reader will see it."""
        self._check_open("finish")
        if type(deleted_version) is not int or not 0 <= deleted_version <= _VERSION_MAX:
            raise ValidationError("deleted_version", f"must be 0..{_VERSION_MAX}")
        digests = [state.hasher.digest() for state in self._sums]
        checksum = file_checksum(digests)
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN")
            self._db.table("partitions").insert_all(
                {"partition": partition, "items": state.items, "checksum": digest.hex()}
                for partition, (state, digest) in enumerate(zip(self._sums, digests, strict=True))
            )
            self._db.table("items").create_index(["partition", "key"], _PARTITION_INDEX)
            self._set_meta(
                deleted_version=_meta_json(deleted_version),
                items=_meta_json(self._items),
                checksum=_meta_json(checksum),
            )
            self._commit()
            _fsync(self.path)  # every row is on disk before the file says it is complete
            self._conn.execute("BEGIN")
            self._set_meta(complete=_meta_json(True))
            self._commit()
            meta = _read_meta(self._conn, self.path)
            self._conn.close()
            _fsync(self.path)
            _fsync(self.path.parent, directory=True)
        except BaseException as error:
            raise self._fail(error) from (error if isinstance(error, sqlite3.Error) else None)
        self._state = "finished"
        if self._progress is not None:
            self._progress(self._items)
        return meta

    def _commit(self) -> None:
        # sqlite-utils 3 commits after each insert batch itself; 4 nests a savepoint in ours.
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._uncommitted = 0

    def _set_meta(self, **values: str) -> None:
        self._db.table("meta").insert_all(
            [{"name": name, "value": value} for name, value in values.items()], replace=True
        )

    def abort(self) -> None:
        """Close and delete the file, unless :meth:`finish` has returned (then nothing)."""
        if self._state in ("finished", "aborted"):
            return
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self.path.unlink(missing_ok=True)
        self._state = "aborted"

    def _check_open(self, what: str) -> None:
        if self._state == "failed":
            raise ValidationError(
                "backup", f"cannot {what}: the writer failed earlier ({self._failure}); abort it"
            )
        if self._state != "open":
            raise ValidationError("backup", f"cannot {what}: the writer is {self._state}")

    def _fail(self, error: BaseException) -> BaseException:
        """Mark the writer failed by ``error``; the exception to raise for it."""
        self._state = "failed"
        if isinstance(error, sqlite3.IntegrityError):
            error = ValidationError(
                "key", f"a key is in the backup twice, in two partitions ({error})"
            )
        elif isinstance(error, sqlite3.Error):
            error = _sqlite_failure(error, self.path)
        self._failure = error.message if isinstance(error, KvError) else str(error)
        return error

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()


# --- reading -------------------------------------------------------------------------------


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path`` once it looks like a SQLite file."""
    if not path.exists():
        raise NotFound(f"no backup file {path}")
    if not path.is_file():
        raise BackupInvalid(path, "not_backup", "not a file")
    with path.open("rb") as file:
        header = file.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        raise BackupInvalid(path, "not_backup", "not a kvstore backup: not a SQLite file")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA trusted_schema=OFF")  # a file's views and triggers run nothing
        conn.execute(f"PRAGMA cache_size=-{BACKUP_FILE_CACHE_KIB}")
    except sqlite3.Error as error:
        conn.close()
        raise BackupInvalid(path, "unreadable", f"SQLite cannot read it ({error})") from None
    return conn


def _read_meta(conn: sqlite3.Connection, path: Path) -> BackupMeta:
    """The meta rows, checked: a backup (format version, then completeness, then the rest)."""
    marks = ", ".join("?" * len(_META_NAMES))
    try:
        rows = conn.execute(
            f"SELECT name, value FROM meta WHERE name IN ({marks})", _META_NAMES
        ).fetchall()
    except sqlite3.DatabaseError as error:
        if "no such" in str(error):
            raise BackupInvalid(
                path, "not_backup", "not a kvstore backup: it has no meta table"
            ) from None
        raise BackupInvalid(path, "unreadable", f"SQLite cannot read it ({error})") from None
    raw: dict[str, object] = {}
    for name, text in rows:
        try:
            raw[str(name)] = json.loads(text) if isinstance(text, str) else _NOT_JSON
        except ValueError:
            raw[str(name)] = _NOT_JSON
    version = raw.get("format_version")
    if version is None:
        raise BackupInvalid(
            path, "not_backup", "not a kvstore backup: its meta table has no format_version"
        )
    if type(version) is not int or version != FORMAT_VERSION:
        raise BackupInvalid(
            path,
            "format_version",
            f"format_version {'(not JSON)' if version is _NOT_JSON else json.dumps(version)} "
            f"is not one this kvstore reads (it reads {FORMAT_VERSION})",
            expected=FORMAT_VERSION,
            found=None if version is _NOT_JSON else cast(JsonValue, version),
        )
    if raw.get("complete") is not True:
        raise BackupInvalid(
            path,
            "incomplete",
            "incomplete: the backup did not finish (its meta table has no complete = true)",
        )
    meta = _Meta(path, raw)
    at = timestamp_from_text(raw.get("at"))
    if at is None:
        raise meta.bad("at", "a timestamp text")
    partitions = meta.integer("partitions")
    if not 1 <= partitions <= PARTITIONS_MAX:
        raise meta.bad("partitions", f"1..{PARTITIONS_MAX}")
    checksum = meta.text("checksum")
    if len(checksum) != 2 * DIGEST_BYTES or checksum.strip("0123456789abcdef"):
        raise meta.bad("checksum", f"{2 * DIGEST_BYTES} hex digits")
    partition_map = raw.get("partition_map", _NOT_JSON)
    if partition_map is _NOT_JSON:
        raise meta.bad("partition_map", "JSON")
    return BackupMeta(
        format_version=version,
        at=at,
        cluster=meta.text("cluster"),
        created_at=meta.text("created_at"),
        partitions=partitions,
        partition_map=cast(JsonValue, partition_map),  # json.loads makes only JSON values
        deleted_version=meta.integer("deleted_version"),
        items=meta.integer("items"),
        checksum=checksum,
        complete=True,
        kvstore_version=meta.text("kvstore_version"),
    )


class _Meta:
    """Typed access to the decoded meta values (``_NOT_JSON`` marks one that is not JSON)."""

    def __init__(self, path: Path, raw: dict[str, object]) -> None:
        self.path = path
        self.raw = raw

    def bad(self, name: str, wanted: str) -> BackupInvalid:
        found = self.raw.get(name)
        shown = "missing" if name not in self.raw else "not JSON" if found is _NOT_JSON else ""
        return BackupInvalid(
            self.path,
            "meta",
            f"meta {name} must be {wanted}" + (f" ({shown})" if shown else ""),
            meta=name,
        )

    def integer(self, name: str) -> int:
        value = self.raw.get(name)
        if type(value) is not int or value < 0:
            raise self.bad(name, "a whole number, 0 or more")
        return value

    def text(self, name: str) -> str:
        value = self.raw.get(name)
        if not isinstance(value, str):
            raise self.bad(name, "a string")
        return value


# One checked ``items`` row: key, value, version, ts, partition, and the raw commit_ts text and
# value_msgpack bytes its checksum covers (a plain tuple: one is made per row).
_Row: TypeAlias = tuple[Key, Value, int, Timestamp, int, str, bytes]


def _bad_row(path: Path, key: str, problem: str) -> BackupInvalid:
    return BackupInvalid(path, "row", f"key {_shown(key)}: {problem}", key=key)


def _check_row(path: Path, row: Sequence[object], partitions: int) -> _Row:
    """An ``items`` row (``_ITEM_COLUMNS``) checked and decoded; the one decoding path of
    :class:`BackupReader` and :func:`verify`."""
    key, packed, version, commit_ts, partition, value_json = row
    if type(key) is not str or not key:
        raise BackupInvalid(path, "row", f"a key is not text: {key!r:.80}", found=repr(key)[:80])
    if type(partition) is not int or not 0 <= partition < partitions:
        raise _bad_row(path, key, f"partition {partition!r} is not one of 0..{partitions - 1}")
    if type(version) is not int or version < 0:
        raise _bad_row(path, key, f"version {version!r} is not a whole number")
    ts = timestamp_from_text(commit_ts)
    if ts is None:
        raise _bad_row(path, key, f"commit_ts {commit_ts!r:.80} is not a timestamp")
    if type(packed) is not bytes:
        raise _bad_row(path, key, "value_msgpack is not a BLOB")
    try:
        value = msgpack.unpackb(packed, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises many types; each one means "damaged"
        raise _bad_row(
            path, key, f"value_msgpack is not msgpack ({type(error).__name__})"
        ) from None
    text = _value_json(value)
    if value_json != text:
        raise _bad_row(path, key, "value_json does not match value_msgpack")
    # Where the JSON text exists, json.dumps has refused bytes, extension types, keys other than
    # strings and non-finite floats, and msgpack's integers are the store's: only the size (at
    # most len(packed)) and the nesting (at most the number of brackets) are left to check.
    if (
        text is None
        or len(packed) > VALUE_BYTES_MAX
        or text.count("[") + text.count("{") > VALUE_DEPTH_MAX
    ):
        try:
            validate_value(value)
        except ValidationError as error:
            raise _bad_row(path, key, f"not a store value ({error.message})") from None
    return key, value, version, ts, partition, cast(str, commit_ts), packed


class BackupReader:
    """Reads a complete backup file: :meth:`open` it, read :attr:`meta`, iterate
    :meth:`items` or :meth:`batches`, :meth:`close` (or use it as a context manager)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: BackupMeta) -> None:
        """Private: use :meth:`open`."""
        self.path = path
        self.meta = meta
        self._conn = conn

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BackupReader:
        """Open a backup; ``NotFound`` when there is no such file, :class:`BackupInvalid` when
        it is not a complete backup of format version 1 (format version first, then
        completeness, then the meta rows)."""
        source = Path(path)
        conn = _connect_read_only(source)
        try:
            meta = _read_meta(conn, source)
        except BaseException:
            conn.close()
            raise
        return cls(source, conn, meta)

    def items(self, partition: int | None = None) -> Iterator[BackupRow]:
        """Every item (or those of source partition ``partition``) in key order, streamed."""
        for key, value, version, ts, *_ in self._rows(partition):
            yield key, value, version, ts

    def batches(
        self, size: int = BACKUP_FILE_READ_ROWS, *, partition: int | None = None
    ) -> Iterator[list[ItemView]]:
        """The items (or those of source partition ``partition``) in key order, ``size`` at a
        time (the last batch may be shorter; no batch is empty)."""
        if type(size) is not int or size < 1:
            raise ValidationError("size", "must be 1 or more")
        batch: list[ItemView] = []
        for key, value, version, ts, *_ in self._rows(partition):
            batch.append(ItemView(key=key, value=value, version=version, ts=ts))
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _rows(self, partition: int | None = None) -> Iterator[_Row]:
        partitions = self.meta.partitions
        params: tuple[int, ...] = ()
        if partition is None:
            sql = f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY key"
        elif type(partition) is int and 0 <= partition < partitions:
            sql = f'SELECT {_ITEM_COLUMNS} FROM items WHERE "partition" = ? ORDER BY key'
            params = (partition,)
        else:
            raise ValidationError("partition", f"must be 0..{partitions - 1}")
        try:
            cursor = self._conn.execute(sql, params)
            while rows := cursor.fetchmany(BACKUP_FILE_READ_ROWS):
                for row in rows:
                    yield _check_row(self.path, row, partitions)
        except sqlite3.DatabaseError as error:
            raise BackupInvalid(
                self.path, "unreadable", f"SQLite cannot read its items ({error})"
            ) from None

    def verify(self, progress: Progress | None = None) -> VerifyReport:
        """:func:`verify` on this open file."""
        partitions = self.meta.partitions
        sums = [_PartitionSum() for _ in range(partitions)]
        total = 0
        for key, _value, version, _ts, partition, commit_ts, packed in self._rows():
            state = sums[partition]
            state.hasher.update(item_record(key, version, commit_ts, packed))
            state.items += 1
            total += 1
            if progress is not None and total % BACKUP_FILE_PROGRESS_ITEMS == 0:
                progress(total)
        digests = [state.hasher.digest() for state in sums]
        recorded = self._partition_rows()
        for partition, (state, digest) in enumerate(zip(sums, digests, strict=True)):
            if partition not in recorded:
                raise BackupInvalid(
                    self.path,
                    "count",
                    f"partition {partition}: no row in the partitions table",
                    partition=partition,
                )
            items, checksum = recorded[partition]
            if items != state.items:
                raise BackupInvalid(
                    self.path,
                    "count",
                    f"partition {partition}: the partitions table says {items} items, the file "
                    f"holds {state.items}",
                    partition=partition,
                    expected=items,
                    found=state.items,
                )
            if checksum != digest.hex():
                raise BackupInvalid(
                    self.path,
                    "checksum",
                    f"partition {partition}: the partitions table says checksum {checksum}, "
                    f"its items hash to {digest.hex()}",
                    partition=partition,
                    expected=checksum,
                    found=digest.hex(),
                )
        extra = sorted(set(recorded) - set(range(partitions)))
        if extra:
            raise BackupInvalid(
                self.path,
                "count",
                f"the partitions table has partition {extra[0]}, beyond the {partitions} "
                "partitions of the meta table",
                partition=extra[0],
            )
        if total != self.meta.items:
            raise BackupInvalid(
                self.path,
                "count",
                f"the meta table says {self.meta.items} items, the file holds {total}",
                expected=self.meta.items,
                found=total,
            )
        checksum = file_checksum(digests)
        if checksum != self.meta.checksum:
            raise BackupInvalid(
                self.path,
                "checksum",
                f"the meta table says checksum {self.meta.checksum}, the partitions hash to "
                f"{checksum}",
                expected=self.meta.checksum,
                found=checksum,
            )
        if progress is not None:
            progress(total)
        return VerifyReport(path=self.path, meta=self.meta, items=total, partitions=partitions)

    def _partition_rows(self) -> dict[int, tuple[int, str]]:
        """The ``partitions`` table: partition -> (items, checksum), each row's types checked."""
        recorded: dict[int, tuple[int, str]] = {}
        try:
            cursor = self._conn.execute('SELECT "partition", items, checksum FROM partitions')
            while rows := cursor.fetchmany(BACKUP_FILE_READ_ROWS):
                for partition, items, checksum in rows:
                    if (
                        type(partition) is not int
                        or type(items) is not int
                        or type(checksum) is not str
                    ):
                        raise BackupInvalid(
                            self.path,
                            "count",
                            f"the partitions table has a malformed row ({partition!r:.40})",
                        )
                    recorded[partition] = (items, checksum)
                if len(recorded) > PARTITIONS_MAX:
                    raise BackupInvalid(
                        self.path, "count", "the partitions table has too many rows"
                    )
        except sqlite3.DatabaseError as error:
            raise BackupInvalid(
                self.path, "unreadable", f"SQLite cannot read its partitions table ({error})"
            ) from None
        return recorded

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> BackupReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def verify(path: str | os.PathLike[str], *, progress: Progress | None = None) -> VerifyReport:
    """Check the backup at ``path`` through and through, streaming: the format version,
    completeness, every row (decoded as :class:`BackupReader` decodes it), every partition's
    count and checksum against the ``partitions`` table, the item count and the file checksum
    against the meta table. Returns a :class:`VerifyReport`; raises :class:`BackupInvalid`
    naming the first thing wrong (``NotFound`` when there is no such file)."""
    with BackupReader.open(path) as reader:
        return reader.verify(progress)
