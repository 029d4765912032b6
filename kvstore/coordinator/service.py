"""The coordinator process: the public HTTP JSON API over the coordinator library.

Theory of operation
-------------------
:class:`CoordinatorService` is a thin shell (DESIGN section 2): it loads nothing durable of its
own, only the cluster file, the cluster secret and the API token file, and wires together a
:class:`~kvstore.coordinator.engine.Coordinator` (the library), a
:class:`~kvstore.api.tokens.TokenStore` and the aiohttp application of :mod:`kvstore.api.app`,
served on the coordinator's address from the cluster file (127.0.0.1 unless told otherwise).

Being stateless is what makes it safe to kill: every transaction's truth is its ledger record on
a storage node, and the nodes finish or cancel whatever a dead coordinator left (recovery and
stale-intent resolution). Any number of coordinators may serve the same nodes at once.

Stopping (SIGTERM) stops accepting requests, lets requests in progress answer for up to
``SHUTDOWN_GRACE_S``, then closes the library, which lets running cores finish for up to
``CLOSE_DRAIN_MS`` and stops the rest (recovery on the nodes finishes their transactions).
"""

from __future__ import annotations

import logging
import os

from aiohttp import web

from kvstore.api.app import build_app
from kvstore.api.tokens import TokenStore
from kvstore.config import ClusterConfig
from kvstore.coordinator.engine import Coordinator
from kvstore.coordinator.metrics import CoordinatorMetrics
from kvstore.logs import log_event

__all__ = ["CoordinatorService", "SHUTDOWN_GRACE_S"]

_log = logging.getLogger("kvstore.coordinator")
SHUTDOWN_GRACE_S = 5.0


class CoordinatorService:
    """One coordinator process; see the module docstring."""

    def __init__(self, config: ClusterConfig, coordinator_id: str) -> None:
        self.config = config
        self.spec = config.coordinator(coordinator_id)
        self.coordinator_id = coordinator_id
        self.metrics = CoordinatorMetrics(coordinator_id)
        self.coordinator = Coordinator.from_config(config, metrics=self.metrics)
        self.tokens = TokenStore(config.api_tokens_file)
        self._web: web.AppRunner | None = None

    async def start(self) -> None:
        app = build_app(self.coordinator, self.tokens, self.coordinator_id)
        self._web = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        await self._web.setup()
        host, _, port = self.spec.address.rpartition(":")
        site = web.TCPSite(self._web, host, int(port), reuse_address=True)
        await site.start()
        if not self.config.api_tokens_file.exists():
            log_event(
                _log,
                "coordinator.no_tokens",
                logging.WARNING,
                path=str(self.config.api_tokens_file),
                hint="every request but /v1/health gets 401 until a token is created",
            )
        log_event(
            _log,
            "coordinator.started",
            coordinator=self.coordinator_id,
            address=self.spec.address,
            epoch=self.config.cluster_map.epoch,
            pid=os.getpid(),
        )

    async def stop(self) -> None:
        if self._web is not None:
            await self._web.cleanup()
            self._web = None
        await self.coordinator.close()
        log_event(_log, "coordinator.stopped", coordinator=self.coordinator_id)
