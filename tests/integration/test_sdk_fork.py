"""An SDK client built before ``os.fork()`` works in both processes (DESIGN section 4).

Goal: a blocking client (``kvstore.connect_sync``) that has already talked to the cluster keeps
working in the parent after a fork, works in the child too (before the fix the child's first
call waited forever for the loop thread the fork did not copy), and the two processes never
issue the same timestamp or transaction id.

Method: a real cluster (3 node processes, coordinator ``c1``). The client commits once, then the
test forks (:func:`support.forking.run_forked`: the child always leaves through ``os._exit`` and
is killed if it is not done within ``CHILD_TIMEOUT_S``). In direct mode both processes draw
1,000,000 timestamps at the same time from the client's own clock (the embedded coordinator's,
the one every transaction of this client is stamped with) and the parent counts the ones both
drew (before the fix: 64,214 such duplicates; now there must be none); then each process
commits transactions and a put, reads them back, and the parent checks that the txn ids and
commit timestamps of the two processes differ and that it sees the child's writes. Gateway mode
(HTTP to the coordinator, whose clock stamps the transactions) checks only that both processes
keep working: the ids come from the coordinator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from support.api import api_cluster, unique
from support.cluster import LocalNodes
from support.forking import TS_BYTES, pack_ts, run_forked

import kvstore
from kvstore.client import SyncClient
from kvstore.client.builders import Put
from kvstore.client.direct import DirectBackend

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

DRAWS = 1_000_000
TXNS = 5  # per process, after the fork
CHILD_TIMEOUT_S = 90.0  # only against a hang: the child's calls take well under a second


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    with api_cluster(tmp_path_factory.mktemp("sdk-fork")) as nodes:
        yield nodes


def connect_sync(cluster: LocalNodes, mode: str) -> SyncClient:
    if mode == "direct":
        return kvstore.connect_sync(cluster=cluster.config_path, direct=True, timeout_s=10)
    return kvstore.connect_sync(cluster.api("c1"), cluster.tokens["admin"], timeout_s=10)


def work(kv: SyncClient, prefix: str) -> dict[str, Any]:
    """Commit ``TXNS`` transactions and one put under ``prefix``; read them back."""
    txns = [kv.transact([Put(f"{prefix}/t{i}", {"i": i})]) for i in range(TXNS)]
    written = kv.put(f"{prefix}/p", {"by": prefix})
    items = kv.read([f"{prefix}/t{i}" for i in range(TXNS)] + [f"{prefix}/p"])
    assert [None if item is None else item.value for item in items] == [
        *({"i": i} for i in range(TXNS)),
        {"by": prefix},
    ]
    return {
        "txn_ids": [t.txn_id for t in txns],
        "ts": [t.ts for t in txns] + [written.ts],
        "pid": os.getpid(),
    }


def clock_draws(kv: SyncClient) -> bytes:
    backend = kv.client.backend
    assert isinstance(backend, DirectBackend)
    clock = backend.coordinator.clock
    out = bytearray(DRAWS * TS_BYTES)
    now = clock.now
    for i in range(DRAWS):
        pack_ts(out, i, now())
    return clock.origin.to_bytes(8, "big") + bytes(out)


@pytest.mark.parametrize("mode", ["direct", "gateway"])
def test_a_client_forked_after_connecting_works_in_both_processes(
    cluster: LocalNodes, mode: str
) -> None:
    parent_prefix, child_prefix = unique("fork-parent"), unique("fork-child")
    with connect_sync(cluster, mode) as kv:
        kv.put(unique("fork-before"), 1)  # connections open, loop thread running: then fork
        if mode == "direct":
            backend = kv.client.backend
            assert isinstance(backend, DirectBackend)
            assert backend.coordinator.clock.redrawn_at_fork

        def child() -> bytes:
            draws = clock_draws(kv) if mode == "direct" else b""
            report = json.dumps(work(kv, child_prefix)).encode()
            return len(report).to_bytes(8, "big") + report + draws

        def parent() -> tuple[bytes, dict[str, Any]]:
            draws = clock_draws(kv) if mode == "direct" else b""
            return draws, work(kv, parent_prefix)

        forked = run_forked(child, parent, timeout_s=CHILD_TIMEOUT_S)
        size = int.from_bytes(forked.child[:8], "big")
        theirs = json.loads(forked.child[8 : 8 + size])
        their_draws = forked.child[8 + size :]
        our_draws, ours = forked.parent
        assert theirs["pid"] != ours["pid"]
        assert not set(theirs["txn_ids"]) & set(ours["txn_ids"])
        assert not set(theirs["ts"]) & set(ours["ts"])
        # The parent keeps working, and sees what the child committed.
        child_item = kv.get(f"{child_prefix}/p")
        assert child_item is not None and child_item.value == {"by": child_prefix}
        assert kv.transact([Put(f"{parent_prefix}/after", 1)]).txn_id not in theirs["txn_ids"]

    if mode == "direct":
        seen = {their_draws[i : i + TS_BYTES] for i in range(8, len(their_draws), TS_BYTES)}
        assert len(seen) == DRAWS
        duplicates = sum(
            our_draws[i : i + TS_BYTES] in seen for i in range(8, len(our_draws), TS_BYTES)
        )
        same_origin = their_draws[:8] == our_draws[:8]
        assert (duplicates, same_origin) == (0, False)
