"""``python -m kvstore.coordinator --config cluster.toml --id c1``: run one coordinator.

Theory of operation
-------------------
Loads the cluster file, starts :class:`~kvstore.coordinator.service.CoordinatorService` on
uvloop and serves the public API until SIGTERM or SIGINT. A bad configuration (unknown id,
unreadable secret, address in use) exits with status 2 and one clear line, no traceback.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from kvstore.config import load_cluster
from kvstore.coordinator.service import CoordinatorService
from kvstore.process_main import run_process

__all__ = ["main"]


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
    return run_process(argv, role="coordinator", serve=_serve)


if __name__ == "__main__":
    sys.exit(main())
