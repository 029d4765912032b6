"""``kvctl backup verify``: backup files (docs/backup.md).

Theory of operation
-------------------
One command group, ``kvctl backup``, with a subcommand per action; each adds its parser in
:func:`register` and has a handler here. A backup file is the SQLite file of
:mod:`kvstore.backup.file`.

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
from pathlib import Path
from typing import TYPE_CHECKING

from kvstore.backup.file import BackupReader, VerifyReport
from kvstore.cli.output import EXIT_OK, Output

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands

__all__ = ["register"]


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``kvctl backup ...`` to ``commands``."""
    backup = commands.add_parser(
        "backup",
        help="check backup files",
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
