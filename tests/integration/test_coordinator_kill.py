"""A coordinator killed with SIGKILL mid-stream: no transaction is half-applied, none is doubled.

Real processes on loopback: three storage nodes (8 partitions, SQLite) and two coordinators
(``c1``, ``c2``) serving the public HTTP API. Clients send multi-partition transactions through
``c1`` while the test kills ``c1`` with ``kill -9`` at random moments and restarts it; a client
whose request failed retries the same ops with the same idempotency token through ``c2`` until
the answer is definite. Afterwards the nodes must settle on their own (stale intents resolved
through the ledger, records driven to completion) within the recovery deadline, and the data
must agree with every answer given.

The fault schedule comes from a seeded ``random.Random``: the seed is printed, and
``KVSTORE_TEST_SEED`` replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.cluster import LocalNodes
from support.workload import Answer, JsonOps, TxnApi, is_definite, key_apart

from kvstore.partitioning import PartitionMap

pytestmark = pytest.mark.asyncio

NODES = ("n1", "n2", "n3")
COORDINATORS = ("c1", "c2")
PARTITIONS = 8
CLIENTS = 8
TXNS_MIN = 150  # the stream runs at least this long, and until every planned kill happened
TXNS_MAX = 400  # ... but never longer than this
COUNTERS = tuple(f"ctr/{i}" for i in range(16))
# A kill comes after this many more first attempts went to the (re)started c1: a point in the
# stream counted in transactions, not seconds, so every planned kill happens (and within
# TXNS_MAX: 4 kills * 40 < 400 - 150) however fast or slow the machine is.
KILL_AFTER_TXNS = (4, 40)
# Guards against a hang only (a loaded machine is slow, not wrong); never measurements.
STREAM_TIMEOUT_S = 200.0
# FAST_TIMING: ledger_decision_deadline_ms 1500, intent_stale_ms 300, node maintenance 200 ms.
SETTLE_TIMEOUT_S = 60.0
RAW_REPLY_TIMEOUT_S = 30.0

DEFAULT_SEED = 20_261_122


def seed_for(name: str) -> int:
    seed = int(os.environ.get("KVSTORE_TEST_SEED", DEFAULT_SEED))
    print(f"{name}: seed {seed} (replay with KVSTORE_TEST_SEED={seed})")
    return seed


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalNodes]:
    nodes = LocalNodes(
        tmp_path / "cluster", NODES, partitions=PARTITIONS, coordinator_ids=COORDINATORS
    )
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


@dataclass
class StreamState:
    next: int = 0  # the next planned transaction to start
    started_on_c1: int = 0  # first attempts sent to c1
    kills: int = 0
    killer_done: bool = False

    def more(self) -> bool:
        """Whether the stream goes on: at least TXNS_MIN, and until the last kill."""
        if self.next >= TXNS_MAX:
            return False
        return self.next < TXNS_MIN or not self.killer_done

    def resumed(self, floor: int) -> Callable[[], bool]:
        return lambda: self.started_on_c1 >= floor or not self.more()


@dataclass(frozen=True)
class Planned:
    index: int
    token: str
    markers: tuple[str, str]
    counters: tuple[str, ...]
    ops: JsonOps


def plan_txn(pmap: PartitionMap, rng: random.Random, prefix: str, i: int, seed: int) -> Planned:
    """Two markers on different partitions, plus ``add 1`` to two counters on different ones."""
    a = f"{prefix}/{i}/a"
    b = key_apart(pmap, f"{prefix}/{i}/b", {pmap.partition_of(a)})
    first = rng.choice(COUNTERS)
    second = rng.choice([c for c in COUNTERS if pmap.partition_of(c) != pmap.partition_of(first)])
    counters = (first, second)
    ops: JsonOps = [
        {"op": "put", "key": a, "value": {"txn": i}},
        {"op": "put", "key": b, "value": {"txn": i}},
        *({"op": "update", "key": c, "add": {"n": 1}} for c in counters),
    ]
    return Planned(i, f"{prefix}-{seed}-{i}", (a, b), counters, ops)


async def wait_settled(cluster: LocalNodes, timeout_s: float) -> float:
    """Poll every node until no partition holds an intent or an open ledger record; the time
    it took (fails past ``timeout_s``)."""
    started = time.monotonic()
    clients = [cluster.client(node) for node in NODES]
    try:
        for client in clients:
            left = timeout_s - (time.monotonic() - started)
            await client.wait_until(settled, timeout_s=max(0.0, left))
    finally:
        for client in clients:
            await client.close()
    return time.monotonic() - started


def settled(stats: dict[str, Any]) -> bool:
    return all(
        p["intents"] == 0 and p["open_ledger_records"] == 0 for p in stats["partitions"].values()
    )


def counter_value(values: dict[str, Any], key: str) -> int:
    value = values.get(key)
    return 0 if value is None else int(value["n"])


async def check_outcomes(
    api: TxnApi, base: str, answers: dict[int, Answer], plan: list[Planned]
) -> None:
    """GET /v1/txn/{token} agrees with every recorded answer (state and txn_id)."""
    disagree = []
    for i, answer in sorted(answers.items()):
        status, record = await api.outcome(base, plan[i].token)
        expected = "COMMITTED" if answer.committed else "CANCELLED"
        if (
            status != 200
            or record["state"] != expected
            or record["txn_id"] != answer.txn_id
            or record["completed"] is not True
        ):
            disagree.append((i, answer.status, answer.txn_id, status, record))
    assert disagree == [], f"{len(disagree)} tokens disagree with their answers: {disagree[:5]}"


async def test_sigkill_coordinator_during_a_stream_of_transactions(cluster: LocalNodes) -> None:
    seed = seed_for("stream")
    rng = random.Random(seed)
    pmap = cluster.config.cluster_map.partitions
    plan = [plan_txn(pmap, rng, "m", i, seed) for i in range(TXNS_MAX)]
    kills_planned = rng.choice((3, 4))
    kill_points = [rng.randint(*KILL_AFTER_TXNS) for _ in range(kills_planned)]
    c1, c2 = cluster.api("c1"), cluster.api("c2")

    answers: dict[int, Answer] = {}
    hit_by_kill: set[int] = set()  # the first attempt (through c1) failed
    c1_up = asyncio.Event()
    c1_up.set()
    resumed = asyncio.Condition()
    state = StreamState()
    more = state.more

    async def client(api: TxnApi) -> None:
        while more():
            await c1_up.wait()  # new transactions go to c1 only (retries go to c2)
            if not more():
                return
            txn = plan[state.next]
            state.next += 1
            async with resumed:
                state.started_on_c1 += 1
                resumed.notify_all()
            failures: list[str] = []
            try:
                status, body = await api.txn(c1, txn.ops, txn.token)
            except (aiohttp.ClientError, TimeoutError) as error:
                failures.append(f"c1: {type(error).__name__}")
            else:
                if is_definite(status, body):
                    answers[txn.index] = Answer(status, body, 1)
                    continue
                failures.append(f"c1: {status} {body.get('error', {}).get('code')}")
            hit_by_kill.add(txn.index)
            answers[txn.index] = await api.until_definite(
                [c2], txn.ops, txn.token, attempts_done=1, failures=failures
            )

    async def killer() -> None:
        try:
            for point in kill_points:
                async with resumed:  # the fault schedule: a random point in the stream
                    await resumed.wait_for(state.resumed(state.started_on_c1 + point))
                if not more():
                    return
                c1_up.clear()
                cluster.kill("c1")
                state.kills += 1
                await asyncio.to_thread(cluster.start, "c1")
                c1_up.set()
        finally:
            state.killer_done = True
            c1_up.set()

    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        api = TxnApi(session, cluster.tokens["admin"])
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            await asyncio.gather(killer(), *(client(api) for _ in range(CLIENTS)))
        stream_s = time.monotonic() - started

        settle_s = await wait_settled(cluster, SETTLE_TIMEOUT_S)

        submitted = plan[: state.next]
        keys = [k for txn in submitted for k in txn.markers] + list(COUNTERS)
        values = await api.read(c2, keys)

        committed = {i for i, a in answers.items() if a.committed}
        cancelled = {i for i, a in answers.items() if not a.committed}
        retried = {i for i, a in answers.items() if a.attempts > 1}
        print(
            f"stream: {len(submitted)} txns in {stream_s:.1f}s, kills {state.kills}, "
            f"committed {len(committed)}, cancelled {len(cancelled)}, retried {len(retried)} "
            f"(hit by a kill {len(hit_by_kill)}), settled in {settle_s:.2f}s"
        )
        assert state.kills == kills_planned
        assert len(answers) == len(submitted) >= TXNS_MIN
        assert committed, "no transaction committed at all"

        present = {t.index for t in submitted if all(k in values for k in t.markers)}
        partial = [
            (t.index, [k in values for k in t.markers])
            for t in submitted
            if any(k in values for k in t.markers) and t.index not in present
        ]
        assert partial == [], f"half-applied transactions: {partial[:5]}"  # (c)
        assert committed - present == set(), "answered 200 but not applied"  # (a)
        assert cancelled & present == set(), "answered 409 but applied"  # (b)
        for i in cancelled:
            error = answers[i].body["error"]
            assert error["retryable"] is True, error  # only conflicts: no condition was used
        for counter in COUNTERS:  # (d) no lost or doubled update
            touched = sum(1 for t in submitted if t.index in present and counter in t.counters)
            assert counter_value(values, counter) == touched, (counter, values.get(counter))

        await check_outcomes(api, c2, answers, plan)  # (e)


# --- a kill right after sending -------------------------------------------------------------

ROUNDS = 6
PER_ROUND = 4  # transactions in flight to c1 when it is killed, each round
SEND_JITTER_S = 0.02  # each transaction is sent at a random point in this window ...
KILL_WINDOW_S = 0.06  # ... and c1 is killed at a random point in this one


def key_on(pmap: PartitionMap, pid: int, prefix: str) -> str:
    return key_apart(pmap, prefix, set(range(PARTITIONS)) - {pid})


async def send_raw(address: str, bearer: str, body: bytes) -> tuple[asyncio.StreamReader, Any]:
    """Connect to the API, to send ``body`` as a ``POST /v1/txn`` later."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /v1/txn HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {bearer}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return reader, (writer, head + body)


def parse_response(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    """A complete HTTP response with a JSON body, or None (nothing, or cut off)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = headers.get("content-length")
    if length is None or len(body) < int(length):
        return None
    return status, json.loads(body[: int(length)])


async def test_token_retry_after_a_kill_returns_the_original_outcome(cluster: LocalNodes) -> None:
    seed = seed_for("retry-after-kill")
    rng = random.Random(seed)
    pmap = cluster.config.cluster_map.partitions
    c1_address, c2 = cluster.address("c1"), cluster.api("c2")
    bearer = cluster.tokens["admin"]
    stats = dict.fromkeys(
        ("answered_before_kill", "cut_off", "committed", "cancelled", "cancelled_by_recovery"), 0
    )
    restart: asyncio.Future[None] | None = None
    warm_keys = [key_on(pmap, pid, "warm") for pid in range(PARTITIONS)]

    async with aiohttp.ClientSession() as session:
        api = TxnApi(session, bearer)
        try:
            for r in range(ROUNDS):
                if restart is not None:
                    await restart
                # Warm the restarted c1 up (its connections to every node), so that the kill
                # window below spans the life of a transaction, not the first connects.
                await api.read(cluster.api("c1"), warm_keys)
                txns = []
                for j in range(PER_ROUND):
                    i = r * PER_ROUND + j
                    a = f"k/{i}/a"
                    b = key_apart(pmap, f"k/{i}/b", {pmap.partition_of(a)})
                    counter = key_apart(pmap, f"kctr/{i}", {pmap.partition_of(a)})
                    ops: JsonOps = [
                        {"op": "put", "key": a, "value": i},
                        {"op": "put", "key": b, "value": i},
                        {"op": "update", "key": counter, "add": {"n": 1}},
                    ]
                    txns.append((f"rk-{seed}-{i}", ops, (a, b), counter))
                conns = [
                    await send_raw(
                        c1_address, bearer, json.dumps({"ops": ops, "token": tok}).encode()
                    )
                    for tok, ops, _, _ in txns
                ]

                async def send_later(
                    writer: asyncio.StreamWriter, data: bytes, delay: float
                ) -> None:
                    await asyncio.sleep(delay)  # a random point of the fault schedule
                    try:
                        writer.write(data)
                        await writer.drain()
                    except ConnectionError:
                        pass  # c1 died first: this attempt never reached it

                sends = [
                    asyncio.create_task(send_later(w, data, rng.uniform(0, SEND_JITTER_S)))
                    for _, (w, data) in conns
                ]
                await asyncio.sleep(rng.uniform(0, KILL_WINDOW_S))  # the fault schedule
                cluster.kill("c1")
                restart = asyncio.ensure_future(asyncio.to_thread(cluster.start, "c1"))
                await asyncio.gather(*sends)

                for (token, ops, markers, counter), (reader, (writer, _)) in zip(
                    txns, conns, strict=True
                ):
                    try:
                        raw = await asyncio.wait_for(reader.read(), RAW_REPLY_TIMEOUT_S)
                    except ConnectionError:
                        raw = b""
                    finally:
                        writer.close()
                        with contextlib.suppress(ConnectionError):
                            await writer.wait_closed()
                    first = parse_response(raw)
                    if first is not None and is_definite(*first):
                        stats["answered_before_kill"] += 1
                    else:
                        stats["cut_off"] += 1
                        first = None
                    answer = await api.until_definite([c2], ops, token)
                    stats["committed" if answer.committed else "cancelled"] += 1
                    if not answer.committed and "recovery" in json.dumps(answer.body):
                        stats["cancelled_by_recovery"] += 1
                    if first is not None:  # the retry reports what the first attempt said
                        first_answer = Answer(first[0], first[1], 1)
                        assert (answer.status, answer.txn_id) == (
                            first_answer.status,
                            first_answer.txn_id,
                        ), (token, first, answer)
                    values = await api.read(c2, [*markers, counter])
                    applied = [k in values for k in markers]
                    expected = [answer.committed] * 2
                    assert applied == expected, (token, answer.status, values)
                    assert counter_value(values, counter) == int(answer.committed), (
                        token,
                        answer.status,
                        values,
                    )
                    status, record = await api.outcome(c2, token)
                    assert status == 200, (token, record)
                    assert record["txn_id"] == answer.txn_id, (token, answer, record)
                    expected_state = "COMMITTED" if answer.committed else "CANCELLED"
                    assert record["state"] == expected_state, (token, answer, record)
        finally:
            if restart is not None:
                await asyncio.gather(restart, return_exceptions=True)
    settle_s = await wait_settled(cluster, SETTLE_TIMEOUT_S)
    print(f"retry-after-kill: {ROUNDS} kills, {stats}, settled in {settle_s:.2f}s")
    assert stats["committed"] + stats["cancelled"] == ROUNDS * PER_ROUND
