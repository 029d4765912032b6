"""``python -m kvstore.coordinator --config cluster.toml --id c1``: run one coordinator.

Theory of operation
-------------------
Loads the cluster file, starts :class:`~kvstore.coordinator.service.CoordinatorService` on
uvloop and serves the public API until SIGTERM or SIGINT. A bad configuration (unknown id,
unreadable secret, address in use) exits with status 2 and one clear line, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from kvstore.config import load_cluster
from kvstore.coordinator.service import CoordinatorService
from kvstore.errors import KvError
from kvstore.logs import configure_logging

__all__ = ["main"]

EXIT_CONFIG = 2


async def _serve(config_path: str, coordinator_id: str) -> int:
    service = CoordinatorService(load_cluster(config_path), coordinator_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvstore.coordinator")
    parser.add_argument("--config", required=True, help="the cluster file (cluster.toml)")
    parser.add_argument("--id", required=True, help="this coordinator's id in the cluster file")
    args = parser.parse_args(argv)
    configure_logging(f"coordinator:{args.id}")
    try:
        return uvloop.run(_serve(args.config, args.id))
    except KvError as error:
        print(f"kvstore coordinator: {error.message}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:  # the address is taken
        print(f"kvstore coordinator: {error}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
