"""The backup file (kvstore/backup/file.py): round trips, the meta rows, the checksums and every
way verify refuses a file; the writer's refusals, mode 0600, abort, and a crash mid-write."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from kvstore.backup.file import (
    FORMAT_VERSION,
    BackupInvalid,
    BackupReader,
    BackupWriter,
    file_checksum,
    item_record,
    verify,
)
from kvstore.errors import NotFound, ValidationError
from kvstore.limits import BACKUP_FILE_PROGRESS_ITEMS
from kvstore.messages import ItemView
from kvstore.types import Timestamp, Value

AT = Timestamp(1_700_000_000_123_456, 7, 0x0123_4567_89AB_CDEF)
PARTITIONS = 4
PARTITION_MAP = {"partitions": PARTITIONS, "owners": {"0": "n1", "1": "n2", "2": "n1", "3": "n3"}}

# Per partition, its items in ascending key order: bytes, nested JSON, unicode keys, floats, an
# empty partition (2), and values of every type.
ITEMS: dict[int, list[ItemView]] = {
    0: [
        ItemView(key="acct/1", value={"balance": 100, "tags": ["a", "b"]}, version=3, ts=AT),
        ItemView(key="acct/2", value={"nested": {"deep": [1, 2.5, None, True]}}, version=1, ts=AT),
        ItemView(key="blob", value=b"\x00\xffbinary", version=7, ts=Timestamp(1, 0, 0)),
    ],
    1: [
        ItemView(key="mixed", value={"raw": b"\x01\x02", "text": "t"}, version=2, ts=AT),
        ItemView(key="zahl", value=-(2**63), version=9, ts=Timestamp(5, 1, 2**64 - 1)),
        ItemView(key="ключ/ü", value="ünïcödé ✓", version=1, ts=AT),
        ItemView(key="键🔑", value=[[], {}, "", 0, 1e-300], version=4, ts=AT),
    ],
    2: [],
    3: [
        ItemView(key="empty-list", value=[], version=1, ts=AT),
        ItemView(key="null", value=None, version=5, ts=AT),
        ItemView(key='odd.key "quoted"', value={"": False, "a.b": 2**64 - 1}, version=6, ts=AT),
    ],
}
ALL_ITEMS = sorted((item for items in ITEMS.values() for item in items), key=lambda i: i.key)
PARTITION_OF = {item.key: partition for partition, items in ITEMS.items() for item in items}


def write_backup(path: Path, *, deleted_version: int = 42) -> Path:
    """The backup of ITEMS, written interleaved: the first item of each partition, then the
    rest of each, as pages of several partitions arrive."""
    writer = BackupWriter.create(
        path, at=AT, cluster="test-cluster", partitions=PARTITIONS, partition_map=PARTITION_MAP
    )
    with writer:
        for partition, items in ITEMS.items():
            writer.add(partition, items[:1])
        for partition, items in reversed(ITEMS.items()):
            writer.add(partition, iter(items[1:]))
        writer.finish(deleted_version)
    return path


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    return write_backup(tmp_path / "backup.db")


def tamper(path: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())
        conn.commit()
    finally:
        conn.close()


def invalid(path: Path) -> BackupInvalid:
    with pytest.raises(BackupInvalid) as caught:
        verify(path)
    assert caught.value.message.startswith(f"invalid backup {path}: ")
    assert caught.value.details["reason"] == caught.value.reason
    return caught.value


# --- round trip ---------------------------------------------------------------------------


def test_round_trip_reads_back_every_item_exactly_in_key_order(backup: Path) -> None:
    with BackupReader.open(backup) as reader:
        rows = list(reader.items())
        batches = list(reader.batches(2))
    assert rows == [(i.key, i.value, i.version, i.ts) for i in ALL_ITEMS]
    for (_, value, _, _), item in zip(rows, ALL_ITEMS, strict=True):
        assert type(value) is type(item.value)  # bytes stay bytes, ints stay ints
    assert [len(batch) for batch in batches] == [2, 2, 2, 2, 2]
    assert [item for batch in batches for item in batch] == ALL_ITEMS


def test_items_and_batches_of_one_partition(backup: Path) -> None:
    with BackupReader.open(backup) as reader:
        for partition, items in ITEMS.items():
            assert [row[0] for row in reader.items(partition)] == [i.key for i in items]
            assert [i for b in reader.batches(100, partition=partition) for i in b] == items
        with pytest.raises(ValidationError):
            list(reader.items(PARTITIONS))
        with pytest.raises(ValidationError):
            list(reader.batches(0))


def test_meta_rows(backup: Path) -> None:
    with BackupReader.open(backup) as reader:
        meta = reader.meta
    assert meta.format_version == FORMAT_VERSION == 1
    assert meta.at == AT
    assert meta.cluster == "test-cluster"
    assert meta.partitions == PARTITIONS
    assert meta.partition_map == PARTITION_MAP
    assert meta.deleted_version == 42
    assert meta.items == len(ALL_ITEMS)
    assert meta.complete is True
    assert meta.created_at.endswith("Z") and "T" in meta.created_at
    assert meta.kvstore_version
    assert len(meta.checksum) == 64
    conn = sqlite3.connect(backup)
    raw = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    conn.close()
    assert {name: json.loads(value) for name, value in raw.items()} == meta.to_json()
    assert raw["at"] == json.dumps(str(AT)) == '"1700000000123456.7.0123456789abcdef"'


def test_rows_are_readable_by_plain_sqlite(backup: Path) -> None:
    conn = sqlite3.connect(backup)
    rows = {
        key: (value_json, packed, version, commit_ts, partition)
        for key, value_json, packed, version, commit_ts, partition in conn.execute(
            "SELECT key, value_json, value_msgpack, version, commit_ts, partition FROM items"
        )
    }
    partition_rows = conn.execute("SELECT partition, items FROM partitions ORDER BY 1").fetchall()
    conn.close()
    for item in ALL_ITEMS:
        value_json, packed, version, commit_ts, partition = rows[item.key]
        assert msgpack.unpackb(packed, raw=False) == item.value
        assert packed == msgpack.packb(item.value, use_bin_type=True)
        has_bytes = item.key in ("blob", "mixed")
        assert value_json is None if has_bytes else json.loads(value_json) == item.value
        assert (version, commit_ts, partition) == (
            item.version,
            str(item.ts),
            PARTITION_OF[item.key],
        )
    assert partition_rows == [(p, len(items)) for p, items in ITEMS.items()]


def test_checksums_follow_the_documented_definition(backup: Path) -> None:
    digests = []
    for partition in range(PARTITIONS):
        hasher = hashlib.blake2b(digest_size=32)
        for item in ITEMS[partition]:
            packed = msgpack.packb(item.value, use_bin_type=True)
            hasher.update(item_record(item.key, item.version, str(item.ts), packed))
        digests.append(hasher.digest())
    conn = sqlite3.connect(backup)
    recorded = conn.execute("SELECT checksum FROM partitions ORDER BY partition").fetchall()
    conn.close()
    assert [row[0] for row in recorded] == [d.hex() for d in digests]
    with BackupReader.open(backup) as reader:
        assert reader.meta.checksum == file_checksum(digests)
        assert (
            reader.meta.checksum == hashlib.blake2b(b"".join(digests), digest_size=32).hexdigest()
        )


def test_item_record_is_length_prefixed_fields() -> None:
    assert item_record("ké", 12, "1.2.0000000000000003", b"\xc0") == (
        b"\x00\x00\x00\x00\x00\x00\x00\x03k\xc3\xa9"
        b"\x00\x00\x00\x00\x00\x00\x00\x0212"
        b"\x00\x00\x00\x00\x00\x00\x00\x141.2.0000000000000003"
        b"\x00\x00\x00\x00\x00\x00\x00\x01\xc0"
    )


def test_verify_passes_and_reports_progress(tmp_path: Path) -> None:
    many = BACKUP_FILE_PROGRESS_ITEMS + 5
    written: list[int] = []
    path = tmp_path / "many.db"
    with BackupWriter.create(
        path, at=AT, cluster="c", partitions=2, partition_map=None, progress=written.append
    ) as writer:
        items = (ItemView(key=f"k{i:06d}", value=i, version=1, ts=AT) for i in range(many))
        assert writer.add(1, items) == many
        assert writer.items == many
        writer.finish(0)
    assert written == [BACKUP_FILE_PROGRESS_ITEMS, many]
    checked: list[int] = []
    report = verify(path, progress=checked.append)
    assert checked == [BACKUP_FILE_PROGRESS_ITEMS, many]
    assert (report.items, report.partitions, report.meta.items) == (many, 2, many)
    assert report.to_json()["valid"] is True


def test_an_empty_backup_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    with BackupWriter.create(path, at=AT, cluster="c", partitions=3, partition_map={}) as writer:
        meta = writer.finish(0)
    empty = hashlib.blake2b(digest_size=32).digest()
    assert meta.checksum == file_checksum([empty] * 3)
    assert verify(path).items == 0


def test_verify_passes_on_the_backup(backup: Path) -> None:
    report = verify(backup)
    assert report.items == len(ALL_ITEMS)
    assert report.meta.checksum == report.to_json()["checksum"]


# --- verify refuses ------------------------------------------------------------------------


def test_verify_catches_a_changed_value(backup: Path) -> None:
    # A different, well-formed value with its matching JSON: only the checksum can tell.
    tamper(
        backup,
        "UPDATE items SET value_msgpack = ?, value_json = '{\"balance\":1000000}' "
        "WHERE key = 'acct/1'",
        params=(msgpack.packb({"balance": 1000000}),),
    )
    error = invalid(backup)
    assert error.reason == "checksum"
    assert error.details["partition"] == 0
    assert "partition 0: the partitions table says checksum" in error.message


def test_verify_catches_a_changed_value_json(backup: Path) -> None:
    tamper(backup, "UPDATE items SET value_json = '{\"balance\":5}' WHERE key = 'acct/1'")
    error = invalid(backup)
    assert (error.reason, error.details["key"]) == ("row", "acct/1")
    assert "value_json does not match value_msgpack" in error.message


def test_verify_catches_a_damaged_value(backup: Path) -> None:
    tamper(backup, "UPDATE items SET value_msgpack = x'c1' WHERE key = 'blob'")
    error = invalid(backup)
    assert error.reason == "row" and "value_msgpack is not msgpack" in error.message


def test_verify_catches_a_changed_version(backup: Path) -> None:
    tamper(backup, "UPDATE items SET version = 4 WHERE key = 'null'")
    error = invalid(backup)
    assert (error.reason, error.details["partition"]) == ("checksum", 3)


def test_verify_catches_a_deleted_row(backup: Path) -> None:
    tamper(backup, "DELETE FROM items WHERE key = 'zahl'")
    error = invalid(backup)
    assert error.reason == "count"
    assert error.details | {"partition": 1, "expected": 4, "found": 3} == error.details
    assert "partition 1: the partitions table says 4 items, the file holds 3" in error.message


def test_verify_catches_a_changed_count(backup: Path) -> None:
    tamper(backup, "UPDATE partitions SET items = items + 1 WHERE partition = 3")
    error = invalid(backup)
    assert (error.reason, error.details["partition"]) == ("count", 3)


def test_verify_catches_a_changed_total(backup: Path) -> None:
    tamper(backup, "UPDATE meta SET value = '11' WHERE name = 'items'")
    error = invalid(backup)
    assert error.reason == "count" and "the meta table says 11 items, the file holds 10" in str(
        error
    )


def test_verify_catches_a_changed_partition_checksum(backup: Path) -> None:
    tamper(backup, f"UPDATE partitions SET checksum = '{'0' * 64}' WHERE partition = 2")
    error = invalid(backup)
    assert (error.reason, error.details["partition"], error.details["expected"]) == (
        "checksum",
        2,
        "0" * 64,
    )


def test_verify_catches_a_changed_file_checksum(backup: Path) -> None:
    tamper(backup, f"UPDATE meta SET value = '\"{'a' * 64}\"' WHERE name = 'checksum'")
    error = invalid(backup)
    assert error.reason == "checksum" and "the meta table says checksum aaaa" in error.message


def test_verify_catches_a_row_moved_to_another_partition(backup: Path) -> None:
    tamper(backup, "UPDATE items SET partition = 2 WHERE key = 'null'")
    assert invalid(backup).reason in ("count", "checksum")


def test_verify_catches_a_row_out_of_the_partitions(backup: Path) -> None:
    tamper(backup, "UPDATE items SET partition = 9 WHERE key = 'null'")
    error = invalid(backup)
    assert error.reason == "row" and "partition 9 is not one of 0..3" in error.message


def test_verify_catches_a_missing_partition_row(backup: Path) -> None:
    tamper(backup, "DELETE FROM partitions WHERE partition = 2")
    error = invalid(backup)
    assert error.reason == "count" and "partition 2: no row in the partitions table" in str(error)


def test_verify_catches_a_bad_timestamp(backup: Path) -> None:
    tamper(backup, "UPDATE items SET commit_ts = '1.2.3' WHERE key = 'null'")
    assert "commit_ts '1.2.3' is not a timestamp" in invalid(backup).message


def test_verify_refuses_a_file_without_complete(backup: Path) -> None:
    tamper(backup, "DELETE FROM meta WHERE name = 'complete'")
    error = invalid(backup)
    assert error.reason == "incomplete"
    assert "did not finish" in error.message
    with pytest.raises(BackupInvalid, match="incomplete"):
        BackupReader.open(backup)


def test_verify_refuses_complete_false(backup: Path) -> None:
    tamper(backup, "UPDATE meta SET value = 'false' WHERE name = 'complete'")
    assert invalid(backup).reason == "incomplete"


@pytest.mark.parametrize("version", ["2", "0", '"1"', "1.0", "not json"])
def test_verify_refuses_an_unknown_format_version(backup: Path, version: str) -> None:
    tamper(backup, "UPDATE meta SET value = ? WHERE name = 'format_version'", params=(version,))
    error = invalid(backup)
    assert error.reason == "format_version"
    assert "is not one this kvstore reads (it reads 1)" in error.message


def test_verify_refuses_a_sqlite_file_that_is_no_backup(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    tamper(other, "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)")
    error = invalid(other)
    assert error.reason == "not_backup" and "it has no meta table" in error.message
    tamper(other, "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    assert "no format_version" in invalid(other).message


def test_verify_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    for name, content in (("text.db", b"hello, world\n" * 100), ("empty.db", b"")):
        path = tmp_path / name
        path.write_bytes(content)
        error = invalid(path)
        assert error.reason == "not_backup" and "not a SQLite file" in error.message


def test_verify_refuses_a_truncated_file(backup: Path) -> None:
    data = backup.read_bytes()
    backup.write_bytes(data[: len(data) // 2])
    assert invalid(backup).reason in ("unreadable", "count", "checksum", "row")


def test_verify_says_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no backup file"):
        verify(tmp_path / "missing.db")


def test_verify_refuses_a_broken_meta_row(backup: Path) -> None:
    tamper(backup, "UPDATE meta SET value = '\"yesterday\"' WHERE name = 'at'")
    error = invalid(backup)
    assert (error.reason, error.details["meta"]) == ("meta", "at")


# --- the writer ----------------------------------------------------------------------------


def test_create_refuses_an_existing_path(tmp_path: Path) -> None:
    path = tmp_path / "taken.db"
    path.write_text("precious")
    with pytest.raises(ValidationError, match="exists already"):
        BackupWriter.create(path, at=AT, cluster="c", partitions=1, partition_map=None)
    assert path.read_text() == "precious"
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "nowhere.db")
    with pytest.raises(ValidationError, match="exists already"):
        BackupWriter.create(link, at=AT, cluster="c", partitions=1, partition_map=None)
    assert not (tmp_path / "nowhere.db").exists()


def test_the_file_has_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_backup(tmp_path / "mode.db")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_abort_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "aborted.db"
    writer = BackupWriter.create(path, at=AT, cluster="c", partitions=2, partition_map=None)
    writer.add(0, ITEMS[0])
    assert path.exists()
    writer.abort()
    assert not path.exists()
    writer.abort()  # twice is fine
    with pytest.raises(ValidationError, match="aborted"):
        writer.add(0, ITEMS[0])


def test_leaving_the_with_block_without_finish_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "left.db"
    with (
        pytest.raises(RuntimeError),
        BackupWriter.create(path, at=AT, cluster="c", partitions=2, partition_map=None) as writer,
    ):
        writer.add(1, ITEMS[0])
        raise RuntimeError("the cluster went away")
    assert not path.exists()


def test_abort_after_finish_keeps_the_backup(backup: Path) -> None:
    writer = BackupWriter.create(
        backup.with_name("second.db"), at=AT, cluster="c", partitions=1, partition_map=None
    )
    writer.finish(0)
    writer.abort()
    assert verify(backup.with_name("second.db")).items == 0
    with pytest.raises(ValidationError, match="finished"):
        writer.finish(0)


def items_of(*keys: str) -> Iterator[ItemView]:
    return (ItemView(key=key, value=1, version=1, ts=AT) for key in keys)


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (("b",), ("a",), "'a' after 'b'"),
        (("a", "a"), (), "'a' after 'a'"),
        (("a",), ("a",), "'a' after 'a'"),
    ],
)
def test_a_partition_must_come_in_ascending_key_order(
    tmp_path: Path, first: tuple[str, ...], second: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "order.db"
    with BackupWriter.create(path, at=AT, cluster="c", partitions=2, partition_map=None) as writer:
        with pytest.raises(ValidationError, match=message):
            writer.add(0, items_of(*first))
            writer.add(0, items_of(*second))
        with pytest.raises(ValidationError, match="failed earlier"):
            writer.finish(0)
    assert not path.exists()


def test_a_key_in_two_partitions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.db"
    with BackupWriter.create(path, at=AT, cluster="c", partitions=2, partition_map=None) as writer:
        writer.add(0, items_of("a", "b"))
        with pytest.raises(ValidationError, match="a key is in the backup twice"):
            writer.add(1, items_of("b"))


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (ItemView(key="k", value=(1, 2), version=1, ts=AT), "value"),  # type: ignore[arg-type]
        (ItemView(key="k", value={1: "a"}, version=1, ts=AT), "value"),  # type: ignore[dict-item]
        (ItemView(key="k", value=float("nan"), version=1, ts=AT), "value"),
        (ItemView(key="k", value=1, version=-1, ts=AT), "version"),
        (ItemView(key="k", value=1, version=1, ts=(1, 2, 3)), "ts"),  # type: ignore[arg-type]
        (ItemView(key="", value=1, version=1, ts=AT), "key"),
        (ItemView(key="\ud800", value=1, version=1, ts=AT), "key"),
    ],
)
def test_the_writer_refuses_what_it_could_not_read_back(
    tmp_path: Path, item: ItemView, field: str
) -> None:
    with BackupWriter.create(
        tmp_path / "bad.db", at=AT, cluster="c", partitions=1, partition_map=None
    ) as writer:
        with pytest.raises(ValidationError) as caught:
            writer.add(0, [item])
        assert caught.value.field == field


def test_create_refuses_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "args.db"
    with pytest.raises(ValidationError, match="partitions"):
        BackupWriter.create(path, at=AT, cluster="c", partitions=0, partition_map=None)
    with pytest.raises(ValidationError, match="partition_map"):
        BackupWriter.create(path, at=AT, cluster="c", partitions=1, partition_map={1j})
    with pytest.raises(ValidationError, match="at"):
        BackupWriter.create(path, at=(1, 2, 3), cluster="c", partitions=1, partition_map=None)  # type: ignore[arg-type]
    assert not path.exists()
    with BackupWriter.create(path, at=AT, cluster="c", partitions=2, partition_map=None) as writer:
        with pytest.raises(ValidationError, match="partition"):
            writer.add(2, [])
        with pytest.raises(ValidationError, match="deleted_version"):
            writer.finish(-1)
        writer.finish(0)


def test_a_crash_mid_write_leaves_a_file_verify_refuses(tmp_path: Path) -> None:
    path = tmp_path / "crashed.db"
    script = textwrap.dedent(
        f"""
        import os
        from kvstore.backup.file import BackupWriter
        from kvstore.messages import ItemView
        from kvstore.types import Timestamp
        at = Timestamp(1, 0, 1)
        writer = BackupWriter.create({str(path)!r}, at=at, cluster="c", partitions=1,
                                     partition_map=None)
        writer.add(0, (ItemView(key=f"k{{i:06d}}", value=i, version=1, ts=at)
                       for i in range(1_000)))
        writer.add(0, [ItemView(key="z", value=0, version=1, ts=at)])
        os._exit(9)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120, check=False)
    assert done.returncode == 9
    assert path.exists()
    assert invalid(path).reason in ("incomplete", "unreadable")


def test_values_survive_exactly(tmp_path: Path) -> None:
    values: list[Value] = [
        0.1,
        1.0,
        -0.0,
        2**64 - 1,
        -(2**63),
        "",
        b"",
        [b"x", [b"y"]],
        {"z": {"y": {"x": None}}},
        True,
    ]
    path = tmp_path / "values.db"
    with BackupWriter.create(path, at=AT, cluster="c", partitions=1, partition_map=None) as writer:
        writer.add(
            0, (ItemView(key=f"v{i:02d}", value=v, version=1, ts=AT) for i, v in enumerate(values))
        )
        writer.finish(0)
    with BackupReader.open(path) as reader:
        read = [value for _, value, _, _ in reader.items()]
    assert [msgpack.packb(v, use_bin_type=True) for v in read] == [
        msgpack.packb(v, use_bin_type=True) for v in values
    ]
    assert verify(path).items == len(values)
