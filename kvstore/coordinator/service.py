"""The coordinator process: the public HTTP JSON API over the coordinator library.

Theory of operation
-------------------
:class:`CoordinatorService` is a thin shell (DESIGN section 2): it loads nothing durable of its
own, only the cluster file, the cluster secret and the API token file, and wires together a
:class:`~kvstore.coordinator.engine.Coordinator` (the library), a
:class:`~kvstore.api.tokens.TokenStore` and the aiohttp application of :mod:`kvstore.api.app`,
served on the coordinator's address from the cluster file (127.0.0.1 unless told otherwise).
The token file is read strictly at start: a coordinator does not come up behind a broken one.

Being stateless is what makes it safe to kill: every transaction's truth is its ledger record on
a storage node, and the nodes finish or cancel whatever a dead coordinator left (recovery and
stale-intent resolution). Any number of coordinators may serve the same nodes at once.

Stopping (SIGTERM) stops accepting requests, lets requests in progress answer for up to
``SHUTDOWN_GRACE_S``, then closes the library, which lets running cores finish for up to
``CLOSE_DRAIN_MS`` and stops the rest (recovery on the nodes finishes their transactions).

Only in a process started for chaos runs (``KVSTORE_CHAOS_CONTROL=1``, :mod:`kvstore.chaos_control`)
the library reads wall time through the control's offset clock, its RPC pool refuses blocked
nodes, its read core and clock get the armed mutants, and ``GET``/``POST /chaos`` is mounted on
the API app outside ``ROUTES`` (no API token: the cluster secret; not in the OpenAPI document).
"""

from __future__ import annotations

import logging
import os

from aiohttp import web

from kvstore.api.app import AUTO_DECOMPRESS, build_app
from kvstore.api.tokens import TokenStore
from kvstore.chaos_control import enabled_from_env
from kvstore.config import ClusterConfig
from kvstore.coordinator.engine import Coordinator
from kvstore.coordinator.metrics import CoordinatorMetrics
from kvstore.limits import API_LISTEN_BACKLOG
from kvstore.logs import log_event
from kvstore.rpc import RpcPool
from kvstore.timestamps import HybridClock, random_origin

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
        self.chaos = enabled_from_env()  # test-only faults; None unless started for chaos
        if self.chaos is None:
            self.coordinator = Coordinator.from_config(
                config, metrics=self.metrics, refuse_when_behind=True
            )
        else:
            chaos = self.chaos
            clock = HybridClock(chaos.physical_clock_us, random_origin(), mutants=chaos.mutants)
            pool = RpcPool(
                config.secret(), on_clock=clock.observe, logger=_log, blocked=chaos.refuses
            )
            chaos.on_block(pool.disconnect)
            self.coordinator = Coordinator.from_config(
                config,
                metrics=self.metrics,
                clock=clock,
                physical_clock=chaos.physical_clock_us,
                mutants=chaos.mutants,
                pool=pool,
                refuse_when_behind=True,
            )
        self.tokens = TokenStore(config.api_tokens_file)
        self._web: web.AppRunner | None = None

    async def start(self) -> None:
        app = build_app(
            self.coordinator,
            self.tokens,
            self.coordinator_id,
            self.config,
            requests_in_flight_max=self.config.api_requests_in_flight_max,
        )
        if self.chaos is not None:  # outside ROUTES: the API's token checks do not apply
            peers = [spec.address for spec in self.config.nodes.values()]
            self.chaos.mount(app, self.config.secret(), peers)
        self._web = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE_S,
            auto_decompress=AUTO_DECOMPRESS,
        )
        await self._web.setup()
        host, _, port = self.spec.address.rpartition(":")
        site = web.TCPSite(
            self._web, host, int(port), reuse_address=True, backlog=API_LISTEN_BACKLOG
        )
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
        if self.chaos is not None:
            log_event(
                _log,
                "chaos.enabled",
                logging.WARNING,
                coordinator=self.coordinator_id,
                mutants=[m.value for m in self.chaos.mutants],
            )

    async def stop(self) -> None:
        if self._web is not None:
            await self._web.cleanup()
            self._web = None
        await self.coordinator.close()
        log_event(_log, "coordinator.stopped", coordinator=self.coordinator_id)
