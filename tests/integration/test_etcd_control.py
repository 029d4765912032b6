"""EtcdControlPlane against a real etcd (LocalEtcd, no mocks): the control plane's shared
behaviour checks (tests/support/control_plane.py, also run on MemoryControlPlane), then what only
etcd has: outages, a stalled member, endpoint failover, closing, and LocalEtcd itself.

Without etcd these tests skip, or fail when CI=true (support.etcd.require_etcd). Every etcd
started here is stopped and its directory removed by a fixture's ``finally``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import stat
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import refusing_port
from support.control_plane import (
    LoopDriver,
    ask,
    check_beat_keeps_key_alive_then_it_expires,
    check_beat_updates_value,
    check_close_answers_calls_in_flight,
    check_compare_and_set,
    check_create_if_absent,
    check_list_by_prefix,
    check_outage,
    check_read_absent_then_present,
    poll_until,
)
from support.etcd import require_etcd, running_etcd

from kvstore.errors import Unavailable
from kvstore.limits import CONTROL_CALL_TIMEOUT_MS
from kvstore.replication.etcd import EtcdControlPlane
from kvstore.replication.local_etcd import INSTALL_HINT, LocalEtcd

# A call answers within CONTROL_CALL_TIMEOUT_MS by design; the driver's bound is a guard on top.
ANSWER_TIMEOUT_S = CONTROL_CALL_TIMEOUT_MS / 1000 + 10
# Twice etcd's minimum with the election timeout LocalEtcd sets (1 s), so that beats every
# TTL / 5 survive a loaded machine's pauses of over a second.
TTL_MS = 2_000
# etcd's lessor looks for expired leases every 500 ms; the rest is a guard, not a measurement.
EXPIRY_BOUND_MS = 2 * TTL_MS + 3_000
RECOVERY_BOUND_MS = 10_000
CALL_TIMEOUT_SHORT_MS = 300  # for a stalled etcd: the answer is "timed out" after this


@pytest.fixture(scope="module")
def etcd() -> Iterator[LocalEtcd]:
    with running_etcd() as server:
        yield server


@pytest.fixture
def own_etcd() -> Iterator[LocalEtcd]:
    """An etcd for one test, which may stop or stall it."""
    with running_etcd() as server:
        yield server


@pytest.fixture
def driver() -> Iterator[LoopDriver]:
    loop = asyncio.new_event_loop()
    try:
        yield LoopDriver(loop, ANSWER_TIMEOUT_S)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@contextlib.contextmanager
def _plane(driver: LoopDriver, endpoints: list[str], **options: int) -> Iterator[EtcdControlPlane]:
    """A plane on ``driver``'s loop, closed (the session too) however the block ends."""
    plane = EtcdControlPlane(endpoints, **options)
    try:
        yield plane
    finally:
        driver.loop.run_until_complete(plane.aclose())


@pytest.fixture
def plane(etcd: LocalEtcd, driver: LoopDriver) -> Iterator[EtcdControlPlane]:
    with _plane(driver, etcd.endpoints) as plane:
        yield plane


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex}/"  # the module's tests share one etcd


# --- the shared behaviour ------------------------------------------------------------------


def test_read_absent_then_present(plane: EtcdControlPlane, driver: LoopDriver, prefix: str) -> None:
    check_read_absent_then_present(plane, driver, prefix)


def test_create_if_absent(plane: EtcdControlPlane, driver: LoopDriver, prefix: str) -> None:
    check_create_if_absent(plane, driver, prefix)


def test_compare_and_set(plane: EtcdControlPlane, driver: LoopDriver, prefix: str) -> None:
    check_compare_and_set(plane, driver, prefix)


def test_list_by_prefix(plane: EtcdControlPlane, driver: LoopDriver, prefix: str) -> None:
    check_list_by_prefix(plane, driver, prefix)


def test_beat_keeps_key_alive_then_it_expires(
    plane: EtcdControlPlane, driver: LoopDriver, prefix: str
) -> None:
    check_beat_keeps_key_alive_then_it_expires(plane, driver, prefix, TTL_MS, EXPIRY_BOUND_MS)


def test_beat_updates_value(plane: EtcdControlPlane, driver: LoopDriver, prefix: str) -> None:
    check_beat_updates_value(plane, driver, prefix, TTL_MS)


def test_outage(own_etcd: LocalEtcd, driver: LoopDriver, prefix: str) -> None:
    with _plane(driver, own_etcd.endpoints) as plane:
        check_outage(
            plane,
            driver,
            prefix,
            take_down=own_etcd.stop,
            bring_up=own_etcd.start,
            recovery_bound_ms=RECOVERY_BOUND_MS,
        )


def test_close_answers_calls_in_flight(
    plane: EtcdControlPlane, driver: LoopDriver, prefix: str
) -> None:
    answers = check_close_answers_calls_in_flight(plane, driver, prefix)
    assert [error for _, error in answers] == ["etcd control plane closed"] * 4
    after = ask(driver, lambda d: plane.read(prefix + "k", d))
    assert after == (None, "etcd control plane closed")
    driver.loop.run_until_complete(plane.aclose())  # the session's close has finished


# --- etcd only -----------------------------------------------------------------------------


def test_close_answers_calls_stuck_on_a_stalled_etcd(
    own_etcd: LocalEtcd, driver: LoopDriver
) -> None:
    with _plane(driver, own_etcd.endpoints) as plane:

        def read_ok() -> bool:  # connected (a loaded machine may need more than one try)
            return ask(driver, lambda d: plane.read("k", d)) == (None, None)

        assert poll_until(driver, read_ok, RECOVERY_BOUND_MS, every_ms=50)
        pid = own_etcd.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = driver.now_ms()
            answers = driver.ask_all(
                [lambda d: plane.read("k", d), lambda d: plane.beat("live", b"n1", TTL_MS, d)],
                then=lambda: asyncio.get_running_loop().call_later(0.2, plane.close),
            )
            assert answers == [(None, "etcd control plane closed")] * 2
            assert driver.now_ms() - started < CONTROL_CALL_TIMEOUT_MS  # not by their timeout
        finally:
            os.kill(pid, signal.SIGCONT)


def test_list_everything(plane: EtcdControlPlane, driver: LoopDriver, prefix: str) -> None:
    key = prefix + "k"
    assert ask(driver, lambda d: plane.write_if(key, b"v", 0, d)) == (True, None)
    everything, error = ask(driver, lambda d: plane.list("", d))
    assert error is None and everything is not None and everything[key] == b"v"


def test_beat_restores_a_key_deleted_under_its_live_lease(
    plane: EtcdControlPlane, etcd: LocalEtcd, driver: LoopDriver, prefix: str
) -> None:
    key = prefix + "live"
    assert ask(driver, lambda d: plane.beat(key, b"n1", 30_000, d)) == (True, None)
    # Delete it behind the beating client's back, as an operator's `etcdctl del` would.
    _gateway(etcd, "/v3/kv/deleterange", {"key": base64.b64encode(key.encode()).decode()})
    assert ask(driver, lambda d: plane.read(key, d)) == (None, None)
    assert ask(driver, lambda d: plane.beat(key, b"n1", 30_000, d)) == (True, None)
    found, _ = ask(driver, lambda d: plane.read(key, d))
    assert found is not None and found.value == b"n1"


def test_stalled_etcd_answers_timed_out(own_etcd: LocalEtcd, driver: LoopDriver) -> None:
    with _plane(driver, own_etcd.endpoints, call_timeout_ms=CALL_TIMEOUT_SHORT_MS) as plane:

        def read_ok() -> bool:  # connected (a loaded machine may need more than one try)
            return ask(driver, lambda d: plane.read("k", d)) == (None, None)

        assert poll_until(driver, read_ok, RECOVERY_BOUND_MS, every_ms=50)
        pid = own_etcd.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = driver.now_ms()
            answer = ask(driver, lambda d: plane.read("k", d))
            assert answer == (None, f"etcd call timed out after {CALL_TIMEOUT_SHORT_MS} ms")
            assert driver.now_ms() - started >= CALL_TIMEOUT_SHORT_MS * 0.9  # coarse timers
        finally:
            os.kill(pid, signal.SIGCONT)


def test_next_endpoint_when_one_refuses(etcd: LocalEtcd, driver: LoopDriver, prefix: str) -> None:
    with (
        refusing_port() as port,
        _plane(driver, [f"http://127.0.0.1:{port}", *etcd.endpoints]) as plane,
    ):
        key = prefix + "k"
        assert ask(driver, lambda d: plane.write_if(key, b"v", 0, d)) == (True, None)
        found, error = ask(driver, lambda d: plane.read(key, d))
        assert error is None and found is not None and found.value == b"v"


def test_no_endpoint_answers(driver: LoopDriver) -> None:
    with refusing_port() as first, refusing_port() as second:
        urls = [f"http://127.0.0.1:{first}", f"http://127.0.0.1:{second}"]
        with _plane(driver, urls) as plane:
            result, error = ask(driver, lambda d: plane.list("", d))
            assert result is None and error is not None
            assert error.startswith("etcd unreachable: ") and urls[0] in error and urls[1] in error


# --- LocalEtcd -----------------------------------------------------------------------------


def test_local_etcd_lifecycle() -> None:
    require_etcd()
    with tempfile.TemporaryDirectory(prefix="kvstore-etcd-") as root:
        data = Path(root) / "etcd"
        server = LocalEtcd(data, fsync=True)
        try:
            with server:
                pid = server.pid
                assert pid is not None and server.running
                assert stat.S_IMODE(data.stat().st_mode) == 0o700
                assert (data / "etcd" / "member").is_dir()
                assert "--unsafe-no-fsync" not in server.argv("etcd")
            assert not server.running and server.pid is None
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # reaped, not a zombie
            log = server.log_path.read_text()
            assert "became leader" in log
            assert "closed etcd server" in log  # stopped by SIGTERM, cleanly
        finally:
            server.stop()


def test_local_etcd_grants_one_second_leases(etcd: LocalEtcd) -> None:
    """Its election timeout (100 ms) lowers etcd's minimum TTL from 2 s to 1 s; below, etcd
    grants its minimum; the reply's int64 fields are strings."""
    assert _gateway(etcd, "/v3/lease/grant", {"TTL": "1"})["TTL"] == "1"
    assert _gateway(etcd, "/v3/lease/grant", {"TTL": "0"})["TTL"] == "1"


def test_local_etcd_restart_on_a_taken_port_reports_the_log(own_etcd: LocalEtcd) -> None:
    own_etcd.stop()
    port = int(own_etcd.client_url.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(Unavailable) as caught:
            own_etcd.start(ready_timeout_ms=10_000)
    assert "address already in use" in caught.value.message
    assert str(own_etcd.log_path) in caught.value.message
    assert not own_etcd.running


def test_local_etcd_without_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with tempfile.TemporaryDirectory(prefix="kvstore-etcd-") as root:
        with pytest.raises(Unavailable) as caught:
            LocalEtcd(Path(root) / "etcd").start()
        assert INSTALL_HINT in caught.value.message
        assert not (Path(root) / "etcd").exists()


def _gateway(etcd: LocalEtcd, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        etcd.client_url + path, data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_S) as reply:
        answer: dict[str, object] = json.loads(reply.read())
    return answer
