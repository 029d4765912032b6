"""``kvctl backup verify FILE`` as a subprocess, on files written by BackupWriter: a valid file
(exit 0, a summary or the --json report), a tampered, an incomplete and a foreign one (exit 2,
one line naming what is wrong, or the --json error object), a missing one (exit 3). No cluster
is needed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from support.kvctl import run_kvctl

from kvstore.backup.file import BackupWriter
from kvstore.cli.output import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from kvstore.messages import ItemView
from kvstore.types import Timestamp

AT = Timestamp(1_700_000_000_000_000, 3, 0xFEED)
PARTITIONS = 3
ITEMS_PER_PARTITION = 50


def write(path: Path) -> Path:
    with BackupWriter.create(
        path, at=AT, cluster="kv-test", partitions=PARTITIONS, partition_map={"n": PARTITIONS}
    ) as writer:
        for partition in range(PARTITIONS):
            writer.add(
                partition,
                (
                    ItemView(
                        key=f"p{partition}/k{i:03d}",
                        value={"i": i, "raw": b"\x00" * (i % 3)} if i % 2 else [i, "ü"],
                        version=i + 1,
                        ts=AT,
                    )
                    for i in range(ITEMS_PER_PARTITION)
                ),
            )
        writer.finish(deleted_version=5)
    return path


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    return write(tmp_path / "backup.db")


def tamper(path: Path, statement: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def test_a_valid_backup(backup: Path) -> None:
    done = run_kvctl("backup", "verify", str(backup))
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"{backup}: a valid backup: {PARTITIONS * ITEMS_PER_PARTITION} items in {PARTITIONS} "
        "partitions, every count and checksum matches"
    )
    assert any(line.split() == ["cluster:", "kv-test"] for line in lines)
    assert any(line.split() == ["as", "of:", str(AT)] for line in lines)


def test_a_valid_backup_as_json(backup: Path) -> None:
    done = run_kvctl("backup", "verify", "--json", str(backup))
    assert done.returncode == EXIT_OK, done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is True
    assert report["items"] == PARTITIONS * ITEMS_PER_PARTITION
    assert report["partitions"] == PARTITIONS
    assert report["meta"]["at"] == str(AT)
    assert report["meta"]["deleted_version"] == 5
    assert report["meta"]["complete"] is True
    assert report["checksum"] == report["meta"]["checksum"]


def test_a_tampered_value(backup: Path) -> None:
    tamper(backup, "UPDATE items SET value_msgpack = x'01', value_json = '1' WHERE key = 'p1/k007'")
    done = run_kvctl("backup", "verify", str(backup))
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"kvctl: invalid backup {backup}: partition 1: ")
    assert "checksum" in done.stderr and "Traceback" not in done.stderr


def test_a_tampered_value_as_json(backup: Path) -> None:
    tamper(backup, "DELETE FROM items WHERE key = 'p2/k049'")
    done = run_kvctl("backup", "verify", "--json", str(backup))
    assert done.returncode == EXIT_USAGE
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "ValidationError"
    assert error["exit_status"] == EXIT_USAGE
    assert (error["reason"], error["partition"], error["expected"], error["found"]) == (
        "count",
        2,
        ITEMS_PER_PARTITION,
        ITEMS_PER_PARTITION - 1,
    )
    assert error["path"] == str(backup)


def test_an_incomplete_backup(backup: Path) -> None:
    tamper(backup, "DELETE FROM meta WHERE name = 'complete'")
    done = run_kvctl("backup", "verify", str(backup))
    assert done.returncode == EXIT_USAGE
    assert done.stderr == (
        f"kvctl: invalid backup {backup}: incomplete: the backup did not finish (its meta table "
        "has no complete = true)\n"
    )


def test_an_unknown_format_version(backup: Path) -> None:
    tamper(backup, "UPDATE meta SET value = '2' WHERE name = 'format_version'")
    done = run_kvctl("backup", "verify", str(backup))
    assert done.returncode == EXIT_USAGE
    assert "format_version 2 is not one this kvstore reads (it reads 1)" in done.stderr


def test_a_file_that_is_no_backup(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    tamper(other, "CREATE TABLE t (x)")
    done = run_kvctl("backup", "verify", str(other))
    assert done.returncode == EXIT_USAGE
    assert (
        done.stderr
        == f"kvctl: invalid backup {other}: not a kvstore backup: it has no meta table\n"
    )


def test_a_missing_file(tmp_path: Path) -> None:
    done = run_kvctl("backup", "verify", str(tmp_path / "missing.db"))
    assert done.returncode == EXIT_NOT_FOUND
    assert done.stderr == f"kvctl: no backup file {tmp_path / 'missing.db'}\n"


def test_backup_alone_is_a_usage_error() -> None:
    done = run_kvctl("backup")
    assert done.returncode == EXIT_USAGE
    assert "verify" in run_kvctl("backup", "--help").stdout
