"""The shared ``main`` of the store's server processes (storage node, coordinator).

Theory of operation
-------------------
Each process is started as ``python -m kvstore.<role> --config cluster.toml --id <id>``.
:func:`run_process` parses those two arguments, installs the JSON log format with the process
name (``node:n1``, ``coordinator:c1``), runs the role's ``serve`` coroutine on uvloop (with the C
allocator and a periodic trim of its free pages, :mod:`kvstore.memory`) and turns a
configuration problem (a :class:`~kvstore.errors.KvError` such as an unknown id or a readable
secret, or an ``OSError`` such as an address in use) into one line on stderr and exit status
``EXIT_CONFIG``, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from kvstore.errors import KvError
from kvstore.logs import configure_logging
from kvstore.memory import MemoryTrimmer, use_system_malloc

__all__ = ["EXIT_CONFIG", "run_process"]

EXIT_CONFIG = 2

Serve = Callable[[str, str], Coroutine[Any, Any, int]]


def run_process(argv: list[str] | None, *, role: str, serve: Serve) -> int:
    """Parse ``--config`` and ``--id``, then run ``serve(config_path, id)`` on uvloop."""
    parser = argparse.ArgumentParser(prog=f"python -m kvstore.{role}")
    parser.add_argument("--config", required=True, help="the cluster file (cluster.toml)")
    parser.add_argument("--id", required=True, help=f"this {role}'s id in the cluster file")
    args = parser.parse_args(argv)
    use_system_malloc(f"kvstore.{role}", sys.argv[1:] if argv is None else argv)
    short = "node" if role == "storage_node" else role
    configure_logging(f"{short}:{args.id}")
    try:
        return uvloop.run(_trimmed(serve(args.config, args.id)))
    except KvError as error:
        print(f"kvstore {short}: {error.message}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:  # the address is taken, the data directory is not writable...
        print(f"kvstore {short}: {error}", file=sys.stderr)
        return EXIT_CONFIG


async def _trimmed(serving: Coroutine[Any, Any, int]) -> int:
    trimmer = MemoryTrimmer()
    trimmer.start()
    try:
        return await serving
    finally:
        trimmer.stop()
