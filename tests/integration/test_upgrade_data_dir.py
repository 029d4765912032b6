"""Upgrade of a data directory written by the release before ``node.db`` (one file per partition).

``tests/fixtures/data-dir-v2/`` was written by the code of commit c027b48 (its generator,
``tests/fixtures/make_data_dir_v2.py``, says how, and defines the rows as writes). Each test
copies it into ``tmp_path`` and opens it with today's ``SqliteNodeStore``; the expected contents
of a partition are those writes applied to a ``MemoryStore``. Between them the files cover a clean
close, a writer killed before any checkpoint (rows only in the ``-wal``), rows in both the ``.db``
and the ``-wal``, and an empty partition.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from fixtures.make_data_dir_v2 import PARTITIONS, apply, file_name, phases

from kvstore.messages import TxnState
from kvstore.storage_node import sqlite_schema
from kvstore.storage_node.sqlite_store import NODE_DB, SchemaError, SqliteNodeStore
from kvstore.storage_node.store import ItemRow, MemoryStore, PartitionMeta, PartitionStore
from kvstore.types import PartitionId, Timestamp, TxnId

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "data-dir-v2"
ALL = tuple(PartitionId(p) for p in PARTITIONS)
OWNED = (PartitionId(0), PartitionId(1))
OLD_FILES = tuple(file_name(p) for p in PARTITIONS)
BIG = 1 << 62


def copy_fixture(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(FIXTURE, data_dir)
    return data_dir


def expected(pid: PartitionId) -> MemoryStore:
    store = MemoryStore(pid)
    for writes in phases(pid):
        apply(store, writes)
    store.commit()
    return store


def touched(pid: PartitionId) -> tuple[list[str], list[TxnId], list[str]]:
    """The keys, transactions and tokens some write of the partition names (deleted ones too)."""
    keys: set[str] = set()
    txns: set[TxnId] = set()
    tokens: set[str] = set()
    for writes in phases(pid):
        for method, arg in writes:
            table = method.split("_", 1)[1]
            if table in {"item", "intent"}:
                keys.add(arg if isinstance(arg, str) else getattr(arg, "key"))  # noqa: B009
            elif table == "ledger":
                txns.add(TxnId(arg if isinstance(arg, str) else getattr(arg, "txn_id")))  # noqa: B009
            elif table == "token":
                tokens.add(arg if isinstance(arg, str) else getattr(arg, "token"))  # noqa: B009
    return sorted(keys), sorted(txns), sorted(tokens)


def dump(store: PartitionStore, pid: PartitionId) -> dict[str, object]:
    """Everything the partition holds, as listings and point reads."""
    keys, txns, tokens = touched(pid)
    return {
        "items": store.scan_items("", None, BIG),
        "tombstones": store.tombstones(BIG),
        "item_count": store.item_count(),
        "intents": store.intents_created_before(BIG, BIG),
        "intent_count": store.intent_count(),
        "open ledger": store.open_ledger_records(BIG),
        "completed ledger": store.ledger_completed_before(BIG, BIG),
        "tokens": store.tokens_created_before(BIG, BIG),
        "meta": store.get_meta(),
        "by key": {k: (store.get_item(k), store.get_intent(k)) for k in keys},
        "by txn": {t: (store.get_ledger(t), store.intents_of(t)) for t in txns},
        "by token": {t: store.get_token(t) for t in tokens},
    }


def check_imported(store: SqliteNodeStore, pid: PartitionId) -> None:
    view = store.partition(pid)
    assert dump(view, pid) == dump(expected(pid), pid), f"partition {pid}"
    if pid in (3,):  # the empty partition
        assert view.scan_items("", None, 10) == [] and view.get_meta() == PartitionMeta()
        return
    # A few facts spelled out, so an empty or half-written fixture cannot pass.
    assert [r.key for r in view.scan_items("", None, 10)] == ["a", "b", "over", "é"]
    assert [r.key for r in view.tombstones(10)] == ["tomb-old", "tomb", "b-tomb"]
    over = view.get_item("over")
    assert over is not None and over.value == {"new": True} and over.version == 2
    assert view.get_item("gone") is None
    assert sorted(i.key for i in view.intents_created_before(BIG, 10)) == ["a", "é"]
    assert {r.state for r in view.open_ledger_records(10)} == {
        TxnState.PREPARING,
        TxnState.COMMITTED,
    }
    assert len(view.ledger_completed_before(BIG, 10)) == 2
    assert [t.token for t in view.tokens_created_before(BIG, 10)] == ["tok-1", "tok-3", "tok 2"]
    assert view.get_meta().max_deleted_version == 9 + pid


def test_every_row_of_every_partition_survives_the_upgrade(tmp_path: Path) -> None:
    data_dir = copy_fixture(tmp_path)
    assert (data_dir / "p0001.db-wal").exists() and not (data_dir / "p0001.db-shm").exists()
    with SqliteNodeStore.open(data_dir, OWNED) as store:
        assert store.migrated_files == OLD_FILES
        assert store.deleted_files == OLD_FILES
        assert {p.name for p in data_dir.iterdir()} <= {NODE_DB, f"{NODE_DB}-wal", f"{NODE_DB}-shm"}
        for pid in OWNED:
            check_imported(store, pid)
    with SqliteNodeStore.open(data_dir, ALL) as store:  # partitions not owned were imported too
        assert store.migrated_files == () and store.deleted_files == ()
        for pid in ALL:
            check_imported(store, pid)
    assert (data_dir / NODE_DB).stat().st_mode & 0o777 == 0o600


def test_old_files_left_by_a_crash_after_the_commit_are_deleted_not_imported(
    tmp_path: Path,
) -> None:
    data_dir = copy_fixture(tmp_path)
    p0, p2 = PartitionId(0), PartitionId(2)
    newer = ItemRow(
        key="a", exists=True, value="newer", version=7, write_ts=Timestamp(1 << 40, 0, 1),
        read_ts=Timestamp(0, 0, 0),
    )  # fmt: skip
    with SqliteNodeStore.open(data_dir, ALL) as store:
        for pid in (p0, p2):
            store.partition(pid).put_item(newer)
            store.partition(pid).delete_item("b")
            store.partition(pid).delete_intent("a")
        store.commit()
    # The state a crash between the import's commit and the deletions leaves: the old files are
    # back (one of them only in part: its -wal without its .db), and node.db lists them.
    for name in OLD_FILES:
        if name != file_name(1):
            shutil.copy(FIXTURE / name, data_dir / name)
    shutil.copy(FIXTURE / f"{file_name(1)}-wal", data_dir / f"{file_name(1)}-wal")
    shutil.copy(FIXTURE / f"{file_name(2)}-wal", data_dir / f"{file_name(2)}-wal")
    with SqliteNodeStore.open(data_dir, ALL) as store:
        assert store.migrated_files == ()
        assert store.deleted_files == OLD_FILES
        assert {p.name for p in data_dir.iterdir()} <= {NODE_DB, f"{NODE_DB}-wal", f"{NODE_DB}-shm"}
        for pid in (p0, p2):  # the newer rows, not the imported ones again
            view = store.partition(pid)
            assert view.get_item("a") == newer
            assert view.get_item("b") is None
            assert view.get_intent("a") is None
            assert view.get_meta().max_deleted_version == 9 + pid
        for pid in ALL:
            if pid not in (p0, p2):
                check_imported(store, pid)


def test_a_failed_import_imports_nothing_and_the_next_open_imports_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = copy_fixture(tmp_path)
    real = sqlite_schema._import_partition_file

    def failing(conn: sqlite3.Connection, pid: PartitionId, path: Path) -> None:
        if pid == 2:
            raise OSError("crash in the middle of the import")
        real(conn, pid, path)

    monkeypatch.setattr(sqlite_schema, "_import_partition_file", failing)
    with pytest.raises(OSError, match="crash in the middle"):
        SqliteNodeStore.open(data_dir, OWNED)
    monkeypatch.undo()
    assert all((data_dir / name).exists() for name in OLD_FILES)
    conn = sqlite3.connect(data_dir / NODE_DB)
    try:
        for table in ("items", "intents", "ledger", "tokens", "meta", "migrated"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
    finally:
        conn.close()
    with SqliteNodeStore.open(data_dir, ALL) as store:
        assert store.migrated_files == OLD_FILES
        for pid in ALL:
            check_imported(store, pid)


def test_a_version_1_file_is_imported(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / file_name(0)
    shutil.copy(FIXTURE / file_name(0), path)
    conn = sqlite3.connect(path)  # make it the version-1 file an older release wrote
    conn.execute("CREATE INDEX intents_by_created ON intents (created_us, key)")
    conn.execute("CREATE INDEX intents_by_txn ON intents (txn_id, key)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with SqliteNodeStore.open(data_dir, (PartitionId(0),)) as store:
        assert store.migrated_files == (file_name(0),)
        check_imported(store, PartitionId(0))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("CREATE TABLE t (x)", r"p0004\.db: not a kvstore partition database .*version 0"),
        ("PRAGMA user_version = 7", r"p0004\.db: not a kvstore partition database .*version 7"),
        ("garbage", r"p0004\.db: cannot import this partition file: file is not a database"),
        ("CREATE TABLE items (key); PRAGMA user_version = 2", r"p0004\.db: cannot import"),
    ],
)
def test_a_file_that_cannot_be_imported_stops_the_open_and_changes_nothing(
    tmp_path: Path, make: str, message: str
) -> None:
    data_dir = copy_fixture(tmp_path)
    bad = data_dir / file_name(4)
    if make == "garbage":
        bad.write_bytes(b"not a database at all" * 100)
    else:
        conn = sqlite3.connect(bad)
        conn.executescript(make)
        conn.close()
    with pytest.raises(SchemaError, match=message):
        SqliteNodeStore.open(data_dir, OWNED)
    assert all((data_dir / name).exists() for name in (*OLD_FILES, bad.name))
    bad.unlink()
    with SqliteNodeStore.open(data_dir, OWNED) as store:
        assert store.migrated_files == OLD_FILES


def test_an_old_file_is_not_imported_over_rows_of_its_partition(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with SqliteNodeStore.open(data_dir, (PartitionId(0),)) as store:
        store.partition(PartitionId(0)).put_meta(PartitionMeta(max_deleted_version=1))
        store.commit()
    shutil.copy(FIXTURE / file_name(0), data_dir / file_name(0))
    with pytest.raises(SchemaError, match="already holds rows of partition 0"):
        SqliteNodeStore.open(data_dir, (PartitionId(0),))
    assert (data_dir / file_name(0)).exists()


def test_other_names_are_left_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    others = ("p12.db", "p0001.db.bak", "q0001.db", "p-001.db", "notes.txt")
    for name in others:
        (data_dir / name).write_text("not ours")
    with SqliteNodeStore.open(data_dir, (PartitionId(0),)) as store:
        assert store.migrated_files == () and store.deleted_files == ()
    assert all((data_dir / name).read_text() == "not ours" for name in others)
