"""Real storage node processes for integration tests: start, kill -9, restart, clean up.

A :class:`LocalNodes` writes a cluster file with free loopback ports and a 0600 secret under a
temporary directory, starts each node as ``python -m kvstore.storage_node`` and waits until its
``/health`` answers (polling a readiness endpoint, bounded in attempts and time). ``close()``
kills every process it started, whatever state the test left them in; use it through the
``nodes`` fixture or a ``finally``. :class:`NodeClient` speaks the internal RPC with the codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kvstore.api.tokens import Role, create_token
from kvstore.codec import decode_reply, encode_request, method_of
from kvstore.config import ClusterConfig, load_cluster, write_cluster_file, write_secret
from kvstore.messages import (
    DecideRequest,
    LedgerRecord,
    LedgerReply,
    PrepareReply,
    PrepareRequest,
    Reply,
    Request,
    TxnState,
)
from kvstore.rpc import RpcClient
from kvstore.timestamps import new_txn_id, system_clock_us
from kvstore.types import PartitionId, Timestamp
from support.partition import put

NODE_COMMAND = (sys.executable, "-m", "kvstore.storage_node")
COORDINATOR_COMMAND = (sys.executable, "-m", "kvstore.coordinator")
READY_TIMEOUT_S = 60.0  # a guard against a process that never gets ready, not a measurement
STOP_TIMEOUT_S = 30.0
PORT_ATTEMPTS_MAX = 3
CALL_TIMEOUT_MS = 30_000  # a guard on one RPC to a node: answered at once unless the node is gone
PORT_TAKEN = "address already in use"

# Short protocol times so recovery happens within a test's patience.
FAST_TIMING = {
    "intent_stale_ms": 300,
    "ledger_decision_deadline_ms": 1_500,
    "tombstone_retention_ms": 1_000,
}
# FAST_TIMING without the decision deadline (10 minutes): for tests whose decision must land
# however long a loaded machine takes between prepare and decide (with 1.5 s the anchor may
# cancel first). Stale intents are still resolved at once.
PATIENT_TIMING = {**FAST_TIMING, "ledger_decision_deadline_ms": 600_000}


def free_port() -> int:
    """A loopback port that was free a moment ago, for a server started later (racy: see
    :meth:`LocalNodes.start_all`). For "nobody listens here" use :func:`refusing_port`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses every connection for as long as the block runs: it is bound
    (so no other process can take it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class LocalNodes:
    """Node (and coordinator) processes of one test cluster.

    It also writes an API token file with one token per role (``tokens["admin"]``,
    ``tokens["read-write"]``, ``tokens["read-only"]``, ``tokens["metrics"]``): coordinators
    check every API call against it, nodes their ``/metrics``. ``env`` is added
    to every process's environment (e.g. ``KVSTORE_CHAOS_CONTROL=1``).
    """

    def __init__(
        self,
        root: Path,
        node_ids: tuple[str, ...] = ("n1",),
        *,
        partitions: int = 4,
        timing: Mapping[str, int] | None = None,
        coordinator_ids: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        api_requests_in_flight_max: int | None = None,
    ) -> None:
        self.root = root
        self.env = dict(env or {})
        self.config_path = root / "cluster.toml"
        root.mkdir(parents=True, exist_ok=True)
        self._layout = (node_ids, partitions, FAST_TIMING if timing is None else timing)
        self._coordinator_ids = coordinator_ids
        self._api_requests_in_flight_max = api_requests_in_flight_max
        self.config: ClusterConfig = self._write_config()
        self.secret = write_secret(root / "secret")
        self.tokens = {
            role.value: create_token(self.config.api_tokens_file, role.value, role) for role in Role
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def _write_config(self) -> ClusterConfig:
        """Write the cluster file with freshly picked free ports; the loaded config."""
        node_ids, partitions, timing = self._layout
        write_cluster_file(
            self.config_path,
            nodes={nid: f"127.0.0.1:{free_port()}" for nid in node_ids},
            partitions=partitions,
            timing=timing,
            coordinators={cid: f"127.0.0.1:{free_port()}" for cid in self._coordinator_ids},
            api_requests_in_flight_max=self._api_requests_in_flight_max,
        )
        self.config = load_cluster(self.config_path)
        return self.config

    def address(self, node_id: str) -> str:
        if node_id in self.config.coordinators:
            return self.config.coordinator(node_id).address
        return self.config.cluster_map.address_of(node_id)  # type: ignore[arg-type]

    def url(self, node_id: str, path: str) -> str:
        return f"http://{self.address(node_id)}{path}"

    def api(self, coordinator_id: str = "c1") -> str:
        """The base URL of a coordinator's public API."""
        return f"http://{self.address(coordinator_id)}"

    def owner(self, pid: int) -> str:
        return self.config.cluster_map.owner_of(PartitionId(pid))

    def start(self, node_id: str) -> None:
        log = self.root / f"{node_id}.log"
        self.logs[node_id] = log
        with log.open("ab") as out:
            command = COORDINATOR_COMMAND if node_id in self.config.coordinators else NODE_COMMAND
            self.procs[node_id] = subprocess.Popen(
                [*command, "--config", str(self.config_path), "--id", node_id],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        self.wait_healthy(node_id)

    def start_all(self, *node_ids: str) -> None:
        """Start every process (or only ``node_ids``), the first time. A port is picked free but
        bound only by the process, later, so another process on the machine may take it first:
        then they all start again on new ports (bounded). Call it before anything reads ports
        from ``config``; restart a process later with :meth:`start`."""
        for attempt in range(1, PORT_ATTEMPTS_MAX + 1):
            try:
                for node_id in node_ids or (*self.config.nodes, *self.config.coordinators):
                    self.start(node_id)
                return
            except RuntimeError as error:
                if PORT_TAKEN not in str(error) or attempt == PORT_ATTEMPTS_MAX:
                    raise
                self.close()
                self.procs.clear()
                self._write_config()

    def wait_healthy(self, node_id: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        delay_s = 0.01
        while time.monotonic() < deadline:
            proc = self.procs[node_id]
            if proc.poll() is not None:
                raise RuntimeError(f"{node_id} exited with {proc.returncode}: {self.log(node_id)}")
            try:
                health = "/v1/health" if node_id in self.config.coordinators else "/health"
                with urllib.request.urlopen(self.url(node_id, health), timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(delay_s)  # readiness polling with backoff, bounded by the deadline
            delay_s = min(delay_s * 2, 0.2)
        raise RuntimeError(f"{node_id} not healthy in {READY_TIMEOUT_S}s: {self.log(node_id)}")

    def kill(self, node_id: str) -> None:
        """SIGKILL: no flush, no cleanup, exactly like a crash."""
        proc = self.procs[node_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)

    def stop(self, node_id: str) -> int:
        proc = self.procs[node_id]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(STOP_TIMEOUT_S)

    def log(self, node_id: str) -> str:
        path = self.logs.get(node_id)
        return path.read_text(errors="replace")[-4000:] if path and path.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)

    async def stuck_transaction(
        self, key0: str, key1: str, *, decided: bool, anchor_only: bool = False
    ) -> str:
        """The id of a transaction writing ``"v"`` to ``key0`` on partition 0 (its anchor, with
        the ledger record) and to ``key1`` on partition 1, prepared on both (``anchor_only``: on
        the anchor only) and applied nowhere; ``decided``: COMMITTED in its ledger record, else
        still STAGING."""
        anchor, other = PartitionId(0), PartitionId(1)
        txn = new_txn_id()
        ts = Timestamp(system_clock_us(), 0, 77)
        ledger = LedgerRecord(
            txn_id=txn, ts=ts, state=TxnState.STAGING, participants=(anchor, other)
        )
        requests: list[Request] = [
            PrepareRequest(
                partition=pid,
                txn_id=txn,
                ts=ts,
                ops=(put(key, "v"),),
                anchor=anchor,
                ledger=ledger if pid == anchor else None,
            )
            for pid, key in ((anchor, key0), (other, key1))
            if pid == anchor or not anchor_only
        ]
        if decided:
            requests.append(
                DecideRequest(partition=anchor, txn_id=txn, decision=TxnState.COMMITTED)
            )
        for request in requests:
            client = self.client(self.owner(request.partition))
            try:
                answer = await client.request(request)
            finally:
                await client.close()
            if isinstance(request, PrepareRequest):
                assert isinstance(answer, PrepareReply) and answer.accepted, answer
            else:
                assert isinstance(answer, LedgerReply) and answer.record is not None, answer
                assert answer.record.state is TxnState.COMMITTED
        return txn

    def client(self, node_id: str, **kwargs: Any) -> NodeClient:
        return NodeClient(RpcClient(f"ws://{self.address(node_id)}/rpc", self.secret, **kwargs))


class NodeClient:
    """Typed requests over one RPC connection."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc

    async def request(self, request: Request, timeout_ms: int = CALL_TIMEOUT_MS) -> Reply:
        method = method_of(request)
        body = await self.rpc.call(method, encode_request(request), timeout_ms)
        return decode_reply(method, body)

    async def stats(self) -> dict[str, Any]:
        body = await self.rpc.call("stats", {}, CALL_TIMEOUT_MS)
        assert isinstance(body, dict)
        return body

    async def wait_until(self, predicate: Any, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll ``stats`` until ``predicate(stats)`` holds (bounded); return the last stats."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = await self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached in {timeout_s}s; last stats {stats}")
            await asyncio.sleep(0.05)  # polling observable state, bounded by the deadline

    async def close(self) -> None:
        await self.rpc.close()
