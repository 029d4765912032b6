"""The test-only chaos control (kvstore/chaos_control.py) in real node and coordinator processes.

Off unless ``KVSTORE_CHAOS_CONTROL=1``: then ``/chaos`` does not exist. On: the cluster secret
guards it, bodies are validated strictly, blocking a peer cuts the process's calls to it (and
heals when lifted), a clock offset moves the process's timestamps, and mutants are armed only
with the arming variable (else the process refuses to start: exit 2, one line).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from support.api import ApiClient, api_client, assert_error, ts_order, unique
from support.cluster import COORDINATOR_COMMAND, NODE_COMMAND, PATIENT_TIMING, LocalNodes

from kvstore.chaos_control import CONTROL_ENV, CONTROL_VALUE, MUTANTS_ENV, ChaosControl
from kvstore.errors import Unavailable
from kvstore.limits import CHAOS_BLOCKED_MAX, CHAOS_BODY_BYTES_MAX, CHAOS_CLOCK_OFFSET_MS_MAX
from kvstore.mutants import ARMING_ENV, ARMING_VALUE, Mutant
from kvstore.process_main import EXIT_CONFIG
from kvstore.rpc import AsyncHandler, RpcPool, RpcServer
from kvstore.timestamps import system_clock_us
from kvstore.types import Timestamp

pytestmark = pytest.mark.timeout(120)

CHAOS_ENV = {CONTROL_ENV: CONTROL_VALUE}
WAIT_S = 60.0  # a guard on waiting for background work (recovery) to show up, no measurement
EXIT_WAIT_S = 30.0
EMPTY_STATE = {"blocked": [], "clock_offset_ms": 0, "mutants": [], "refused_calls": {}}


def _without_chaos_env() -> dict[str, str]:
    names = {CONTROL_ENV, MUTANTS_ENV, ARMING_ENV}
    return {name: value for name, value in os.environ.items() if name not in names}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    """n1, n2 (4 partitions) and c1, every process with the chaos control on. PATIENT_TIMING:
    decided records are driven at once, and no undecided one is cancelled by its deadline under
    a transaction a test expects to commit, however slow the machine."""
    nodes = LocalNodes(
        tmp_path_factory.mktemp("chaos"),
        ("n1", "n2"),
        partitions=4,
        coordinator_ids=("c1",),
        env=CHAOS_ENV,
        timing=PATIENT_TIMING,
    )
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


@pytest_asyncio.fixture
async def control(cluster: LocalNodes) -> AsyncIterator[ApiClient]:
    """A client with the cluster secret; every process is healed on the way out."""
    async with api_client("", cluster.secret) as client:
        yield client
        for process in ("n1", "n2", "c1"):
            await post(client, cluster, process, {"blocked": [], "clock_offset_ms": 0})


@pytest_asyncio.fixture
async def api(cluster: LocalNodes) -> AsyncIterator[ApiClient]:
    async with api_client(cluster.api("c1"), cluster.tokens["read-write"]) as client:
        yield client


def base(nodes: LocalNodes, process: str) -> str:
    return f"http://{nodes.address(process)}"


async def get(client: ApiClient, nodes: LocalNodes, process: str) -> dict[str, Any]:
    reply = await client.request("GET", base(nodes, process) + "/chaos")
    assert reply.status == 200, reply
    assert set(reply.body) == set(EMPTY_STATE), reply
    return dict(reply.body)


async def post(
    client: ApiClient, nodes: LocalNodes, process: str, body: dict[str, Any]
) -> dict[str, Any]:
    reply = await client.request("POST", base(nodes, process) + "/chaos", json_body=body)
    assert reply.status == 200, reply
    return dict(reply.body)


def key_on(nodes: LocalNodes, node_id: str, prefix: str) -> str:
    """A key starting with ``prefix`` on a partition ``node_id`` owns."""
    partition_of = nodes.config.cluster_map.partitions.partition_of
    for index in range(10_000):
        key = f"{prefix}/{index}"
        if nodes.owner(int(partition_of(key))) == node_id:
            return key
    raise AssertionError(f"no key on {node_id}")


# --- off unless asked for ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_without_the_env_var_chaos_is_404_on_node_and_coordinator(tmp_path: Path) -> None:
    assert CONTROL_ENV not in os.environ
    nodes = LocalNodes(tmp_path, ("n1",), partitions=2, coordinator_ids=("c1",))
    try:
        nodes.start_all()
        async with api_client("", nodes.secret) as client:
            for process in ("n1", "c1"):
                for method in ("GET", "POST"):
                    json_body: Any = {"blocked": []} if method == "POST" else None
                    kwargs = {"json_body": json_body} if json_body is not None else {}
                    reply = await client.request(method, base(nodes, process) + "/chaos", **kwargs)
                    assert reply.status == 404, (process, method, reply)
            assert_error(
                await client.request("GET", base(nodes, "c1") + "/chaos"), "NotFound"
            )  # the coordinator answers with its usual error envelope
    finally:
        nodes.close()


# --- the endpoint ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_reports_the_initial_state_on_node_and_coordinator(
    cluster: LocalNodes, control: ApiClient
) -> None:
    for process in ("n1", "n2", "c1"):
        assert await get(control, cluster, process) == EMPTY_STATE


@pytest.mark.asyncio
async def test_a_missing_or_wrong_secret_is_401_and_changes_nothing(
    cluster: LocalNodes, control: ApiClient
) -> None:
    n2 = cluster.address("n2")
    wrong = [None, "not-the-secret", cluster.secret + "x", cluster.tokens["admin"]]
    for process in ("n1", "c1"):
        url = base(cluster, process) + "/chaos"
        for token in wrong:
            for method in ("GET", "POST"):
                reply = await control.request(method, url, json_body={"blocked": [n2]}, token=token)
                assert_error(reply, "Unauthorized")
        reply = await control.request(
            "GET", url, headers={"Authorization": f"Basic {cluster.secret}"}, token=None
        )
        assert_error(reply, "Unauthorized")
        assert await get(control, cluster, process) == EMPTY_STATE


@pytest.mark.asyncio
async def test_invalid_bodies_are_400_and_change_nothing(
    cluster: LocalNodes, control: ApiClient
) -> None:
    n1, n2 = cluster.address("n1"), cluster.address("n2")
    bad_bodies: list[bytes | object] = [
        b"not json",
        b'{"blocked": [], "blocked": []}',
        b'{"clock_offset_ms": NaN}',
        b"\xff\xfe",
        [],
        "blocked",
        {"block": [n2]},
        {"blocked": n2},
        {"blocked": [n2, n2]},
        {"blocked": [7]},
        {"blocked": ["127.0.0.1"]},
        {"blocked": ["127.0.0.1:0"]},
        {"blocked": ["127.0.0.1:99999"]},
        {"blocked": ["127.0.0.1:1"]},  # well-formed, but not a node of the cluster
        {"blocked": [n1] * (CHAOS_BLOCKED_MAX + 1)},
        {"clock_offset_ms": 1.5},
        {"clock_offset_ms": True},
        {"clock_offset_ms": "100"},
        {"clock_offset_ms": CHAOS_CLOCK_OFFSET_MS_MAX + 1},
        {"clock_offset_ms": -CHAOS_CLOCK_OFFSET_MS_MAX - 1},
        {"blocked": [n2], "clock_offset_ms": None},
    ]
    for process in ("n1", "c1"):
        url = base(cluster, process) + "/chaos"
        for body in bad_bodies:
            if isinstance(body, bytes):
                reply = await control.request("POST", url, data=body)
            else:
                reply = await control.request("POST", url, json_body=body)
            assert reply.status == 400, (body, reply)
            assert_error(reply, "ValidationError")
        huge = b'{"blocked": [' + b" " * CHAOS_BODY_BYTES_MAX + b"]}"
        assert_error(await control.request("POST", url, data=huge), "TooLarge")
        assert await get(control, cluster, process) == EMPTY_STATE


@pytest.mark.asyncio
async def test_members_are_replaced_one_at_a_time(cluster: LocalNodes, control: ApiClient) -> None:
    n1, n2 = cluster.address("n1"), cluster.address("n2")
    state = await post(control, cluster, "c1", {"blocked": [n2, n1]})
    assert state["blocked"] == sorted([n1, n2]) and state["clock_offset_ms"] == 0
    state = await post(control, cluster, "c1", {"clock_offset_ms": -250})
    assert state["blocked"] == sorted([n1, n2]) and state["clock_offset_ms"] == -250
    state = await post(control, cluster, "c1", {"blocked": [n1]})
    assert state["blocked"] == [n1] and state["clock_offset_ms"] == -250
    assert await post(control, cluster, "c1", {}) == state  # nothing given: nothing changes
    assert await get(control, cluster, "c1") == state


# --- partitions --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_blocked_peers_are_cut_off_until_healed(
    cluster: LocalNodes, control: ApiClient, api: ApiClient
) -> None:
    n1, n2 = cluster.address("n1"), cluster.address("n2")
    prefix = unique("partition")
    on_n1, on_n2 = key_on(cluster, "n1", prefix), key_on(cluster, "n2", prefix)
    ops = [{"op": "put", "key": on_n1, "value": 1}, {"op": "put", "key": on_n2, "value": 2}]

    # n2 cut off from c1, and n1 and n2 from each other.
    await post(control, cluster, "c1", {"blocked": [n2]})
    await post(control, cluster, "n1", {"blocked": [n2]})
    await post(control, cluster, "n2", {"blocked": [n1]})

    reply = await api.txn(ops)  # anchored on n1 (its first key), which c1 still reaches
    assert reply.status in (409, 503), reply
    if reply.status == 503:
        assert_error(reply, "Unavailable")
    else:
        assert_error(reply, "TransactionCanceled")
    assert_error(await api.put_item(on_n2, 3), "Unavailable")  # refused before it was sent
    assert (await api.put_item(on_n1, 4)).status == 200  # n1 is still reachable
    c1_refused = (await get(control, cluster, "c1"))["refused_calls"]
    assert c1_refused.get(n2, 0) >= 2, c1_refused

    # n1 finishes the cancelled transaction in the background: its calls to n2 are refused.
    deadline = time.monotonic() + WAIT_S
    while (await get(control, cluster, "n1"))["refused_calls"].get(n2, 0) == 0:
        assert time.monotonic() < deadline, "n1 never tried to reach n2"
        await asyncio.sleep(0.1)  # polling observable state, bounded by the deadline

    # Healed: everything works again, and the counts of refused calls are gone.
    for process in ("c1", "n1", "n2"):
        assert (await post(control, cluster, process, {"blocked": []}))["refused_calls"] == {}
    reply = await api.txn(ops)
    assert reply.status == 200, reply
    item = await api.value_of(on_n2)
    assert isinstance(item, dict) and item["value"] == 2


@pytest.mark.asyncio
async def test_blocking_fails_calls_in_flight_as_sent_and_later_calls_as_unsent() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(method: str, body: object, timeout_ms: int) -> object:
        del timeout_ms
        if method == "wait":
            started.set()
            await release.wait()
        return body

    secret = "chaos-control-test-secret"
    server = RpcServer(AsyncHandler(handler), secret=secret, clock=lambda: Timestamp(1, 0, 1))
    app = web.Application()
    server.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    control = ChaosControl()
    pool = RpcPool(secret, blocked=control.refuses)
    control.on_block(pool.disconnect)
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        address = f"127.0.0.1:{runner.addresses[0][1]}"
        async with asyncio.timeout(WAIT_S):
            assert await pool.client(address).call("echo", "before", 5_000) == "before"
            in_flight = asyncio.ensure_future(pool.client(address).call("wait", "x", 30_000))
            await started.wait()
            await control.update(blocked=[address])
            with pytest.raises(Unavailable) as lost:
                await in_flight
            assert lost.value.details["sent"] is True
            with pytest.raises(Unavailable) as refused:
                await pool.client(address).call("echo", "during", 5_000)
            assert refused.value.details["sent"] is False
            assert control.state()["refused_calls"] == {address: 1}
            release.set()
            await control.update(blocked=[])
            assert await pool.client(address).call("echo", "after", 5_000) == "after"
    finally:
        release.set()
        await pool.close()
        await server.close(grace_ms=100)
        await runner.cleanup()


# --- clocks --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_clock_offset_moves_the_nodes_timestamps(tmp_path: Path) -> None:
    # A cluster of its own: the offset also moves c1's clock (it observes n1's replies), which
    # other nodes would refuse as too far ahead until their own clocks caught up.
    nodes = LocalNodes(tmp_path, ("n1",), partitions=2, coordinator_ids=("c1",), env=CHAOS_ENV)
    try:
        nodes.start_all()
        async with (
            api_client(nodes.api("c1"), nodes.tokens["read-write"]) as api,
            api_client("", nodes.secret) as control,
        ):
            key = unique("clock")

            async def written_at() -> tuple[int, int]:
                reply = await api.put_item(key, 1)
                assert reply.status == 200, reply
                return ts_order(reply.body["ts"])

            # The bounds below use the wall clock the processes read too (so they hold however
            # long a loaded machine takes): every physical time stamped between t0 and t1 lies
            # in [t0, t1 + offset].
            t0_us = system_clock_us()
            before, _ = await written_at()
            offset_ms = 30_000
            await post(control, nodes, "n1", {"clock_offset_ms": offset_ms})
            ahead, _ = await written_at()
            elapsed_us = system_clock_us() - t0_us
            assert offset_ms * 1000 <= ahead - before <= offset_ms * 1000 + elapsed_us, (
                ahead - before,
                elapsed_us,
            )

            # Back to the system clock: the hybrid clock holds its high-water mark instead of
            # going backwards (it may have moved on with n1's offset clock until the reset).
            await post(control, nodes, "n1", {"clock_offset_ms": 0})
            reset_us = system_clock_us() - t0_us
            again = await written_at()
            after_us = system_clock_us() - t0_us
            assert again > (ahead, 0), (again, ahead)
            moved_on_us = max(reset_us, after_us - offset_ms * 1000)
            assert again[0] - ahead <= moved_on_us, (again, ahead, moved_on_us)
    finally:
        nodes.close()


# --- mutants -------------------------------------------------------------------------------


def _run_to_exit(
    nodes: LocalNodes, process: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``process`` expecting it to exit by itself (killed after ``EXIT_WAIT_S`` if not)."""
    command = COORDINATOR_COMMAND if process in nodes.config.coordinators else NODE_COMMAND
    return subprocess.run(
        [*command, "--config", str(nodes.config_path), "--id", process],
        capture_output=True,
        text=True,
        env={**_without_chaos_env(), **env},
        timeout=EXIT_WAIT_S,
        check=False,
    )


@pytest.mark.parametrize("process", ["n1", "c1"])
def test_mutants_without_arming_or_control_refuse_to_start_with_one_line(
    tmp_path: Path, process: str
) -> None:
    nodes = LocalNodes(tmp_path, ("n1",), partitions=2, coordinator_ids=("c1",))
    mutant = Mutant.SKIP_READ_TS_CHECK.value
    cases = {
        "not armed": ({**CHAOS_ENV, MUTANTS_ENV: mutant}, ARMING_ENV),
        "no control": ({MUTANTS_ENV: mutant, ARMING_ENV: ARMING_VALUE}, CONTROL_ENV),
        "unknown name": (
            {**CHAOS_ENV, MUTANTS_ENV: "no-such-bug", ARMING_ENV: ARMING_VALUE},
            "no-such-bug",
        ),
    }
    for case, (env, mentioned) in cases.items():
        proc = _run_to_exit(nodes, process, env)
        out, err = proc.stdout, proc.stderr
        assert proc.returncode == EXIT_CONFIG, (case, proc.returncode, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (case, err)
        assert mentioned in lines[0], (case, lines)
        assert "Traceback" not in out + err


@pytest.mark.asyncio
async def test_armed_mutants_are_reported_by_node_and_coordinator(tmp_path: Path) -> None:
    names = [Mutant.SKIP_READ_TS_CHECK.value, Mutant.NO_TS_TIE_BREAK.value]
    env = {**CHAOS_ENV, MUTANTS_ENV: f" {names[0]} ,{names[1]}", ARMING_ENV: ARMING_VALUE}
    nodes = LocalNodes(tmp_path, ("n1",), partitions=2, coordinator_ids=("c1",), env=env)
    try:
        nodes.start_all()
        async with api_client("", nodes.secret) as control:
            for process in ("n1", "c1"):
                state = await get(control, nodes, process)
                assert state == {**EMPTY_STATE, "mutants": sorted(names)}, state
        async with api_client(nodes.api("c1"), nodes.tokens["read-write"]) as api:
            reply = await api.put_item(unique("mutant"), 1)
            assert reply.status == 200, reply
            # no-ts-tie-break: every clock stamps origin 1.
            assert reply.body["ts"].endswith("." + f"{1:016x}"), reply
    finally:
        nodes.close()
