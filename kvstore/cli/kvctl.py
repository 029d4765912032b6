"""kvctl, the operator's command line: ``kvctl <group> <command> [options]``.

Theory of operation
-------------------
An argparse program assembled from command modules. Each module has ``register(commands,
common)``: it adds its parsers to ``commands`` (the top-level subparsers), passes ``common`` (the
options every command takes: ``--json`` and ``--dir``) as a parent of each command's parser, and
sets ``handler`` on each: a :data:`kvstore.cli.output.Handler`, ``(args, out) -> int``.
:func:`main` parses, builds the :class:`~kvstore.cli.output.Output` and runs the handler through
:func:`~kvstore.cli.output.run_handler`, which turns every error into one line on stderr and an
exit status from the error catalogue (the table is in ``kvstore/cli/output.py``).

Modules, in the order their commands appear in ``kvctl --help``: ``cluster_cmd`` (``kvctl
cluster up/down/status/env``: a local cluster, see :mod:`kvstore.localcluster`),
``topology_cmd`` (``kvctl partition move``, ``kvctl node add/remove``: a replicated local
cluster's replicas and nodes, changed online), ``data_cmd``
(get, put, delete, scan, txn, read: through the SDK) and ``admin_cmd`` (token, recover,
inspect: through the cluster's files and the nodes' internal RPC), ``backup_cmd`` (backup
verify: backup files, see :mod:`kvstore.backup.file`), ``bench_cmd`` (bench: a temporary cluster
against a temporary PostgreSQL, see :mod:`kvstore.bench`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias

from kvstore.cli import admin_cmd, backup_cmd, bench_cmd, cluster_cmd, data_cmd, topology_cmd
from kvstore.cli.output import EXIT_USAGE, Output, run_handler

__all__ = ["Commands", "Registrar", "REGISTRARS", "common_options", "build_parser", "main"]

if TYPE_CHECKING:
    # The top-level subparsers a module adds its commands to: argparse has no public name for
    # the type, and it is generic only in the type stubs.
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Commands = argparse._SubParsersAction

Registrar: TypeAlias = Callable[[Commands, argparse.ArgumentParser], None]

REGISTRARS: Final[tuple[Registrar, ...]] = (
    cluster_cmd.register,
    topology_cmd.register,
    data_cmd.register,
    admin_cmd.register,
    backup_cmd.register,
    bench_cmd.register,
)


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (a parent parser: pass it in ``parents=[...]``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", help="print JSON for scripts instead of text"
    )
    common.add_argument(
        "--dir",
        metavar="DIR",
        help="the local cluster directory (default: $KVSTORE_DIR, else ./.kvstore)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvctl",
        description="Operate a kvstore cluster. Every command takes --json and --dir.",
        epilog="Exit status: 0 ok, 1 failure, 2 usage, 3 not found, 4 refused, "
        "5 unauthorized/forbidden, 6 unavailable (retry), 7 outcome unknown, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"kvctl {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()
    for register in REGISTRARS:
        register(commands, common)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("kvstore")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(json_mode=bool(getattr(args, "json", False)))
    handler = getattr(args, "handler", None)
    if handler is None:  # a group without its command; argparse normally says so itself
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    return run_handler(handler, args, out)


if __name__ == "__main__":
    sys.exit(main())
