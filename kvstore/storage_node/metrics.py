"""A storage node's Prometheus metrics, in a registry of its own.

Theory of operation
-------------------
One :class:`NodeMetrics` per node process, on its own ``CollectorRegistry`` (not the global one,
so several nodes can live in one test process). The service updates counters and histograms on
the request path and in the flush loop; gauges that would cost a query on every request (pending
intents, queue depths) are computed when scraped, through callbacks. ``GET /metrics`` serves
:meth:`NodeMetrics.render` in the Prometheus text format. Label values are bounded: methods are
the RPC method names (unknown ones are counted as ``"unknown"``), codes the error catalogue's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvstore import native
from kvstore.codec import METHODS
from kvstore.types import PartitionId

__all__ = ["NodeMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kvstore_node_requests",
            "RPC requests answered, by method and result code ('ok' or an error code)",
            ["method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kvstore_node_request_seconds",
            "Time from decoding a request to its reply being released (incl. durability wait)",
            ["method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_writes = Histogram(
            "kvstore_node_batch_writes",
            "Row writes made durable by one flush (group commit batch size)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_waiters = Histogram(
            "kvstore_node_batch_waiters",
            "Replies released by one flush",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.fsyncs = Counter("kvstore_node_fsyncs", "SQLite commits (each one fsync)", registry=r)
        self.fsync_seconds = Histogram(
            "kvstore_node_fsync_seconds",
            "Duration of one flush: write the batch and commit it",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.rpc_events = Counter(
            "kvstore_node_rpc_events",
            "Connection-level events: refusals, malformed or oversize frames, overload",
            ["event"],
            registry=r,
        )
        self.stale_intents_resolved = Counter(
            "kvstore_node_stale_intents_resolved",
            "Stale-intent resolutions finished, by outcome (commit, cancel, wait, unreachable)",
            ["outcome"],
            registry=r,
        )
        self.records_driven = Counter(
            "kvstore_node_ledger_records_driven",
            "Ledger records driven to completion by this node, by result",
            ["result"],
            registry=r,
        )
        self.background_actors = Gauge(
            "kvstore_node_background_actors",
            "Resolutions and recoveries running now",
            registry=r,
        )
        self.disk_full = Gauge(
            "kvstore_node_disk_full",
            "1 while the node refuses writes because its disk is full (reads are served)",
            registry=r,
        )
        self.queue_depth = Gauge(
            "kvstore_node_queue_depth",
            "Requests in progress or waiting on a partition",
            ["partition"],
            registry=r,
        )
        self.intents_pending = Gauge(
            "kvstore_node_intents_pending",
            "Pending intents on a partition",
            ["partition"],
            registry=r,
        )
        info = Gauge("kvstore_node_info", "This node", ["node"], registry=r)
        info.labels(node=node_id).set(1)
        # Children for the hot path, looked up once (``labels()`` takes a lock and builds a key).
        methods = (*METHODS, *native.METHODS, "stats", "inspect")
        self._ok = {m: self.requests.labels(m, "ok") for m in methods}
        self._seconds = {m: self.request_seconds.labels(m) for m in methods}

    def answered(self, method: str, seconds: float) -> None:
        """Count one successful answer to a known method and its latency."""
        self._ok[method].inc()
        self._seconds[method].observe(seconds)

    def track_partitions(
        self,
        queue_depths: Mapping[PartitionId, Callable[[], int]],
        intent_counts: Mapping[PartitionId, Callable[[], int]],
    ) -> None:
        for pid, depth in queue_depths.items():
            self.queue_depth.labels(partition=str(pid)).set_function(depth)
        for pid, count in intent_counts.items():
            self.intents_pending.labels(partition=str(pid)).set_function(count)

    def method_label(self, method: str) -> str:
        return method if method in self._ok else "unknown"

    def render(self) -> bytes:
        return generate_latest(self.registry)
