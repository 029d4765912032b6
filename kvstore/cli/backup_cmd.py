"""``kvctl backup create/verify/restore``: online backups and restores (docs/backup.md).

Theory of operation
-------------------
One command group, ``kvctl backup``, with a subcommand per action; each adds its parser in
:func:`register` and has a handler here. A backup file is the SQLite file of
:mod:`kvstore.backup.file`.

* ``backup create [--out FILE] [--at TS]`` reads every partition of the cluster (``--config``,
  else the local cluster directory) as of one timestamp through the native protocol
  (:mod:`kvstore.backup.create`, :mod:`kvstore.backup.remote`) into a new file (refused if it
  exists; default ``kvstore-<UTC time>.kvbackup``). A failed backup leaves no file and says why
  in one line (exit status 1, or the catalogue code's).
* ``backup restore FILE [--force]`` writes a backup into a cluster
  (:mod:`kvstore.backup.restore`), refusing one that holds any item unless ``--force``; the file
  is verified first (a damaged backup is never half restored).
* ``backup verify FILE`` opens the file with :class:`~kvstore.backup.file.BackupReader`, which
  refuses at once what is no complete backup, and reads it whole once, streaming, with its
  ``verify`` (:func:`kvstore.backup.file.verify`): the format version, completeness, every row,
  every source partition's item count and checksum, the item count and the file checksum. A rich
  progress bar runs on stderr while it reads (only on a terminal, never with ``--json``). A valid
  file: a summary (``--json``: the report object), exit status 0. Anything wrong: one line
  ``kvctl: invalid backup FILE: <what is wrong>`` naming the partition, expected and found where
  there are such (``--json``: the error object with ``reason``, ``partition``, ``expected``,
  ``found``), exit status 2 (``ValidationError``); no such file: exit status 3.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
from pathlib import Path
from typing import TYPE_CHECKING

from kvstore.backup.create import BackupFailed, create_backup
from kvstore.backup.file import BackupReader, BackupWriter, VerifyReport
from kvstore.backup.remote import NativePages, NativeSink
from kvstore.backup.restore import restore_backup
from kvstore.cli.output import EXIT_FAILURE, EXIT_OK, Output
from kvstore.client.native import NativeBackend
from kvstore.config import ClusterConfig, load_cluster
from kvstore.errors import ValidationError
from kvstore.localcluster import LocalCluster, resolve_dir
from kvstore.timestamps import parse_timestamp
from kvstore.types import Timestamp

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands

__all__ = ["register"]

BACKUP_NICE = 10  # how much kvctl backup create lowers its own CPU priority (nice(2))


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``kvctl backup ...`` to ``commands``."""
    backup = commands.add_parser(
        "backup",
        help="online backups: create, verify, restore",
        description="Backup files: one SQLite file per backup, readable with sqlite3, "
        "sqlite-utils or Datasette (docs/backup.md, 'File format').",
    )
    actions = backup.add_subparsers(dest="backup_command", metavar="COMMAND", required=True)
    check = actions.add_parser(
        "verify",
        parents=[common],
        help="check that a backup file is complete and intact",
        description="Read the whole backup file once and check it: its format version, that "
        "its writer finished it, every row, every source partition's item count and checksum, "
        "the item count and the file checksum. Exit status 0 when it is valid; 2 with one line "
        "saying what is wrong when it is not; 3 when there is no such file.",
    )
    check.add_argument("file", metavar="FILE", help="the backup file")
    check.set_defaults(handler=_verify)
    create = actions.add_parser(
        "create",
        parents=[common],
        help="back the whole store up as of one timestamp, online",
        description="Write every item of the store as of one timestamp (default: now) into a "
        "new backup file, while clients keep reading and writing: exactly the transactions "
        "committed at or before it, each all or nothing. A failed backup leaves no file.",
    )
    _cluster_arguments(create)
    create.add_argument("--out", metavar="FILE", help="the new file (default: kvstore-<time>)")
    create.add_argument(
        "--at",
        metavar="TS",
        help="the timestamp, as the API shows them (<physical_us>.<logical>.<origin>), at most "
        "10 s old (default: the serving node's clock at the first page)",
    )
    create.set_defaults(handler=_create)
    restore = actions.add_parser(
        "restore",
        parents=[common],
        help="write a backup into a fresh cluster",
        description="Verify FILE, then write its items into the cluster as they were (versions "
        "and commit timestamps kept; every partition's clock and floors moved past the "
        "backup's timestamp). Refuses a cluster that holds any item unless --force.",
    )
    restore.add_argument("file", metavar="FILE", help="the backup file")
    _cluster_arguments(restore)
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore into a cluster that is not empty (the backup's keys are overwritten)",
    )
    restore.set_defaults(handler=_restore)


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="a cluster file (default: the local cluster's, see --dir)"
    )


def _config(args: argparse.Namespace) -> ClusterConfig:
    if args.config is not None:
        return load_cluster(Path(args.config))
    return LocalCluster.open(resolve_dir(args.dir)).config


def _identity(config: ClusterConfig) -> str:
    """The source cluster, for the file's metadata: its etcd prefix, else its file's place."""
    prefix = config.replication.prefix if config.replication.replicated else None
    return prefix or str(config.path.resolve())


# --- create ---------------------------------------------------------------------------------


def _create(args: argparse.Namespace, out: Output) -> int:
    config = _config(args)
    at = None if args.at is None else parse_timestamp(args.at, "--at")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(args.out) if args.out is not None else Path(f"kvstore-{stamp}.kvbackup")
    if path.exists():
        raise ValidationError("--out", f"{path} exists already: a backup never overwrites a file")
    os.nice(BACKUP_NICE)  # background work: on a shared machine the store's processes go first
    return asyncio.run(_create_async(config, path, at, out))


async def _create_async(
    config: ClusterConfig, path: Path, at: Timestamp | None, out: Output
) -> int:
    partitions = config.cluster_map.partitions.partition_count
    backend = NativeBackend(config)
    writer: BackupWriter | None = None
    finished = 0

    def open_sink(chosen: Timestamp) -> BackupWriter:
        nonlocal writer
        writer = BackupWriter.create(
            path,
            at=chosen,
            cluster=_identity(config),
            partitions=partitions,
            partition_map={"epoch": config.cluster_map.epoch, "partitions": partitions},
        )
        return writer

    try:
        with out.progress(f"backing up into {path.name}") as update:

            def partition_done() -> None:
                nonlocal finished
                finished += 1
                update(finished / partitions)

            summary = await create_backup(
                NativePages(backend), open_sink, partitions, at=at, partition_done=partition_done
            )
            assert writer is not None
            writer.finish(summary.deleted_version)
    except BackupFailed as failed:
        if writer is not None:
            writer.abort()
        return out.error(
            f"backup failed: {failed.message}", status=EXIT_FAILURE, kv_error=failed.cause
        )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        await backend.close()
    text = (
        f"backed up {summary.items} items of {partitions} partitions as of {summary.at} "
        f"into {path} in {summary.seconds:.1f} s"
    )
    return _done(
        out,
        text,
        path=path,
        at=summary.at,
        items=summary.items,
        partitions=summary.partitions,
        seconds=summary.seconds,
    )


def _done(
    out: Output,
    text: str,
    *,
    path: Path,
    at: Timestamp,
    items: int,
    partitions: int,
    seconds: float,
) -> int:
    """A finished create or restore: ``text``, or with ``--json`` the same as an object."""
    if out.json_mode:
        out.json(
            {
                "file": str(path),
                "at": str(at),
                "items": items,
                "partitions": partitions,
                "seconds": round(seconds, 3),
            }
        )
    else:
        out.line(text)
    return EXIT_OK


# --- restore --------------------------------------------------------------------------------


def _restore(args: argparse.Namespace, out: Output) -> int:
    config = _config(args)
    path = Path(args.file)
    with BackupReader.open(path) as reader:
        total = max(reader.meta.items, 1)
        with out.progress(f"verifying {path.name}") as update:
            reader.verify(progress=lambda done: update(min(done / total, 1.0)))
        return asyncio.run(_restore_async(config, reader, args.force, out))


async def _restore_async(
    config: ClusterConfig, reader: BackupReader, force: bool, out: Output
) -> int:
    meta = reader.meta
    partitioning = config.cluster_map.partitions
    backend = NativeBackend(config)
    restored = 0
    try:
        with out.progress(f"restoring {reader.path.name}") as update:

            def advance(rows: int) -> None:
                nonlocal restored
                restored += rows
                update(min(restored / max(meta.items, 1), 1.0))

            summary = await restore_backup(
                NativeSink(backend),
                reader.batches(),
                at=meta.at,
                deleted_version=meta.deleted_version,
                partition_of=partitioning.partition_of,
                partitions=partitioning.partition_count,
                force=force,
                progress=advance,
            )
    except BackupFailed as failed:
        return out.error(
            f"restore failed: {failed.message}", status=EXIT_FAILURE, kv_error=failed.cause
        )
    finally:
        await backend.close()
    text = (
        f"restored {summary.items} items as of {meta.at} into {summary.partitions} "
        f"partitions in {summary.seconds:.1f} s"
    )
    return _done(
        out,
        text,
        path=reader.path,
        at=meta.at,
        items=summary.items,
        partitions=summary.partitions,
        seconds=summary.seconds,
    )


def _verify(args: argparse.Namespace, out: Output) -> int:
    path = Path(args.file)
    with BackupReader.open(path) as reader:  # refuses a file that is no complete backup, early
        total = max(reader.meta.items, 1)
        with out.progress(f"verifying {path.name}") as update:
            report = reader.verify(progress=lambda done: update(min(done / total, 1.0)))
    if out.json_mode:
        out.json(report.to_json())
    else:
        _print_report(report, out)
    return EXIT_OK


def _print_report(report: VerifyReport, out: Output) -> None:
    meta = report.meta
    out.line(
        f"{report.path}: a valid backup: {report.items} items in {report.partitions} "
        "partitions, every count and checksum matches"
    )
    for name, value in (
        ("cluster", meta.cluster),
        ("as of", str(meta.at)),
        ("created", meta.created_at),
        ("deleted version", str(meta.deleted_version)),
        ("checksum", meta.checksum),
        ("format", f"{meta.format_version}, written by kvstore {meta.kvstore_version}"),
    ):
        out.line(f"  {name + ':':<17}{value}")
