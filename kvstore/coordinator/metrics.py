"""A coordinator's Prometheus metrics, in a registry of its own.

Theory of operation
-------------------
One :class:`CoordinatorMetrics` per :class:`~kvstore.coordinator.engine.Coordinator` (a service
process, or an SDK in direct mode), on its own ``CollectorRegistry`` so several can live in one
process. The engine reports each transaction's outcome with its participant count, the time each
core spends in each state (the *phases*: EXECUTING, PREPARING, DECIDING, COMMITTING, ...),
re-sent messages (retries), ledger compare-and-set races lost to recovery, and repeated
idempotency tokens answered by following the original transaction. The HTTP layer counts
requests by route and status. Label values are bounded: outcomes are ``committed`` or a catalogue
code, participant counts are capped at ``PARTICIPANTS_LABEL_MAX`` (``"9+"`` above), phases are
core state names, methods are RPC method names, routes the API's route names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CoordinatorMetrics", "CONTENT_TYPE", "PARTICIPANTS_LABEL_MAX"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PARTICIPANTS_LABEL_MAX = 8

_LATENCY_BUCKETS_S = (
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
    5.0,
    10.0,
)


def participants_label(count: int) -> str:
    return str(count) if count <= PARTICIPANTS_LABEL_MAX else f"{PARTICIPANTS_LABEL_MAX + 1}+"


class CoordinatorMetrics:
    def __init__(self, coordinator_id: str = "embedded") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.txns = Counter(
            "kvstore_coordinator_txns",
            "Write transactions answered, by outcome ('committed' or an error code) and "
            "participant partitions",
            ["outcome", "participants"],
            registry=r,
        )
        self.txn_seconds = Histogram(
            "kvstore_coordinator_txn_seconds",
            "Time from receiving a transaction (write or read) to its answer",
            ["kind"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.phase_seconds = Histogram(
            "kvstore_coordinator_phase_seconds",
            "Time a transaction core spent in one state (phase)",
            ["phase"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.reads = Counter(
            "kvstore_coordinator_reads",
            "Read-only transactions answered, by outcome ('ok' or an error code)",
            ["outcome"],
            registry=r,
        )
        self.read_rounds = Histogram(
            "kvstore_coordinator_read_rounds",
            "Read rounds a read-only transaction needed",
            buckets=(1, 2, 3, 4, 5, 6, 8),
            registry=r,
        )
        self.retries = Counter(
            "kvstore_coordinator_retries",
            "Messages re-sent to a partition that was sent the same kind of message before",
            ["method"],
            registry=r,
        )
        self.cas_lost = Counter(
            "kvstore_coordinator_ledger_cas_lost",
            "Decisions where the ledger record had been decided otherwise (by recovery)",
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "kvstore_coordinator_http_requests_in_flight",
            "HTTP API requests being served (those counted against api_requests_in_flight_max)",
            registry=r,
        )
        self.refusals = Counter(
            "kvstore_coordinator_refusals",
            "Cores not started because the coordinator was full or behind (Overloaded)",
            registry=r,
        )
        self.follows = Counter(
            "kvstore_coordinator_token_follows",
            "Repeated idempotency tokens answered with the original transaction's outcome",
            registry=r,
        )
        self.singletons = Counter(
            "kvstore_coordinator_singletons",
            "Singleton operations (get, put, delete, update, scan page), by result",
            ["op", "outcome"],
            registry=r,
        )
        self.requests = Counter(
            "kvstore_coordinator_http_requests",
            "HTTP API requests answered, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kvstore_coordinator_http_request_seconds",
            "HTTP API request latency, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.info = Counter(
            "kvstore_coordinator_starts", "Coordinator starts", ["coordinator"], registry=r
        )
        self.info.labels(coordinator=coordinator_id).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
