"""``python -m kvstore.storage_node --config cluster.toml --id n1``: run one storage node.

Theory of operation
-------------------
Loads the cluster file, starts :class:`~kvstore.storage_node.service.NodeService` on uvloop and
serves until SIGTERM or SIGINT (graceful: buffered writes reach disk first). A flush that fails
for want of space is not fatal: the node refuses writes with ``DiskFull``, serves reads and
retries the flush until space returns (:mod:`kvstore.runtime.node`). Any other failed flush is
fatal: the process exits at once with status 70 without touching the disk again, and a restart
recovers from what is durable. A bad configuration exits with status 2 and one clear line. The
process runs with umask 077: every file it creates is private to its user.

The interpreter's GIL switch interval is lowered to 0.5 ms: the node's flush thread needs the GIL
back after every fsync, and with the default 5 ms a busy event loop can keep each commit waiting
that long (one run of bench/node_bench.py: 5.6k against 4.7k durable puts/s; runs vary by 30%).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from kvstore.config import load_cluster
from kvstore.process_main import EXIT_CONFIG, run_process
from kvstore.storage_node.service import NodeService

__all__ = ["main", "EXIT_CONFIG", "EXIT_FATAL"]

EXIT_FATAL = 70
PROCESS_UMASK = 0o077
SWITCH_INTERVAL_S = 0.0005


async def _serve(config_path: str, node_id: str) -> int:
    # The flush thread hands the GIL back after each fsync; with the default 5 ms switch interval
    # a busy event loop keeps it waiting that long on every commit (measured in the module doc).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    service = NodeService(load_cluster(config_path), node_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await service.start()
    stopping = asyncio.ensure_future(stop.wait())
    fatal = asyncio.ensure_future(service.fatal.wait())
    await asyncio.wait({stopping, fatal}, return_when=asyncio.FIRST_COMPLETED)
    if service.fatal.is_set():
        os._exit(EXIT_FATAL)  # never flush again after a failed fsync; restart recovers
    fatal.cancel()
    await service.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    os.umask(PROCESS_UMASK)  # data files, WAL, locks: owner only (0600), directories 0700
    return run_process(argv, role="storage_node", serve=_serve)


if __name__ == "__main__":
    sys.exit(main())
