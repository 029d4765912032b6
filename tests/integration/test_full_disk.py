"""A local cluster on a data volume that fills up (issue 17): real processes on a small tmpfs.

* The volume fills (a filler file takes every free byte): puts get the retryable ``DiskFull``
  (HTTP 503 with ``Retry-After``), or, for the write whose flush found the disk full, an
  ambiguous 504 while its reply is held; gets of acknowledged keys keep working; every process
  stays alive and ``kvctl cluster status`` works. The filler is deleted: writes resume within
  5 s (the time is printed), every acknowledged write is there, and so is every write whose
  reply was held (its batch was retried until it committed).
* ``kvctl cluster up`` on a full volume says so in one line naming the pid file, exits 1 and
  leaves no process running and no temporary pid file behind.
* Every file of a fresh cluster is 0600 and every directory 0700 (no tmpfs needed).

Mounting needs root (CI runs as root); without it, or when the mount is refused, those tests
skip and say why. Teardown always stops the processes and unmounts.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.kvctl import kill_leftovers, run_kvctl

from kvstore.localcluster import LocalCluster, process_command_line, read_pid_file

VOLUME_MIB = 16
RESUME_WITHIN_S = 5.0
HTTP_TIMEOUT_S = 10.0
ACKED_KEYS = 24
STALL_PUTS_MAX = 400  # puts of a big value until the disk refuses one
BIG_VALUE = "v" * 16_384


kvctl = run_kvctl


def stop_cluster(root: Path) -> None:
    """``kvctl cluster down``, then SIGKILL whatever a pid file still names."""
    if (root / "kvstore-local.json").exists():
        kvctl("cluster", "down", "--dir", str(root))
    kill_leftovers(root)


def cluster_processes(root: Path) -> list[int]:
    """Pids of live processes whose command line names this cluster's file."""
    config = str(root / "cluster.toml")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = process_command_line(int(entry.name))
            if argv is not None and config in argv:
                found.append(int(entry.name))
    return found


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs of VOLUME_MIB MiB, unmounted (after the cluster in it stopped) at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_MIB}m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs was refused: {mounted.stderr.strip()}")
    root = mount_point / "kv"
    try:
        yield root
    finally:
        try:
            with_space(mount_point)
            stop_cluster(root)
        finally:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def with_space(mount_point: Path) -> None:
    for filler in mount_point.glob("filler*"):
        filler.unlink()


def fill(path: Path) -> int:
    """Write ``path`` until the volume has no byte left; the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break
    finally:
        os.close(fd)
    return written


class Api:
    def __init__(self, cluster: LocalCluster) -> None:
        self.base = cluster.api_url()
        self.token = cluster.admin_token()

    def call(self, method: str, key: str, body: object = None) -> tuple[int, dict[str, Any], Any]:
        """(status, headers, JSON body) of one request; HTTP errors are answers too."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + "/v1/kv/" + urllib.parse.quote(key, safe=""),
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as reply:
                return reply.status, dict(reply.headers), json.load(reply)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), json.load(error)

    def put(self, key: str, value: object) -> tuple[int, dict[str, Any], Any]:
        return self.call("PUT", key, {"value": value})

    def get(self, key: str) -> tuple[int, dict[str, Any], Any]:
        return self.call("GET", key)


def up(root: Path) -> LocalCluster:
    started = kvctl("cluster", "up", "--dir", str(root), "--json")
    assert started.returncode == 0, started.stderr
    return LocalCluster.open(root)


def pids_of(root: Path) -> dict[str, int]:
    pids = {}
    for pid_file in sorted((root / "run").glob("*.pid")):
        pid = read_pid_file(pid_file)
        assert pid is not None, pid_file
        pids[pid_file.stem] = pid
    return pids


def alive(pids: dict[str, int]) -> None:
    for process_id, pid in pids.items():
        assert process_command_line(pid) is not None, f"{process_id} (pid {pid}) exited"


def test_a_full_disk_refuses_writes_serves_reads_and_resumes(volume: Path) -> None:
    cluster = up(volume)
    api = Api(cluster)
    pids = pids_of(volume)
    assert set(pids) == {"n1", "n2", "n3"}  # every node serves the API

    acked: dict[str, object] = {}
    for i in range(ACKED_KEYS):
        status, _, body = api.put(f"acked/{i}", {"i": i})
        assert status == 200, body
        acked[f"acked/{i}"] = {"i": i}

    filled = fill(volume.parent / "filler")
    assert filled > 0

    # Puts until one is refused for want of space (a node's WAL may still have a few free
    # pages); each answer is a success, DiskFull, or 504 for a write whose reply is held.
    refused: list[dict[str, Any]] = []
    held: dict[str, object] = {}
    for i in range(STALL_PUTS_MAX):
        key, value = f"big/{i}", {"i": i, "pad": BIG_VALUE}
        status, headers, body = api.put(key, value)
        if status == 200:
            acked[key] = value
        elif status == 504:
            assert body["error"]["code"] == "OutcomeUnknown", body
            held[key] = value
        else:
            assert status == 503, (status, body)
            error = body["error"]
            assert error["code"] == "DiskFull" and error["retryable"] is True, error
            assert int(headers["Retry-After"]) >= 1
            assert "node n" in error["message"], error
            refused.append(error)
            if len(refused) >= 3:
                break
    assert refused, f"no put was refused after {STALL_PUTS_MAX} puts on a full volume"
    big_acked = sum(key.startswith("big/") for key in acked)
    print(f"\nfull volume: {big_acked} puts acknowledged, {len(held)} held (504), then DiskFull")

    # Reads of acknowledged data keep working; every process is alive; status works.
    for key, value in acked.items():
        status, _, body = api.get(key)
        assert status == 200 and body["value"] == value, (key, status, body)
    alive(pids)
    status_run = kvctl("cluster", "status", "--dir", str(volume), "--json")
    assert "Traceback" not in status_run.stderr, status_run.stderr
    assert status_run.returncode == 6, status_run.stderr  # writes are refused: unavailable
    health = {process["id"]: process["health"] for process in json.loads(status_run.stdout)}
    assert set(health.values()) <= {"ok", "disk full"} and "disk full" in health.values(), health
    text = kvctl("cluster", "status", "--dir", str(volume))
    assert "disk full, writes refused until space is freed" in text.stdout, text.stdout

    # Space returns: writes resume by themselves.
    with_space(volume.parent)
    freed = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        key, value = f"after/{attempt}", {"attempt": attempt}
        status, _, body = api.put(key, value)
        if status == 200:
            acked[key] = value
            break
        assert status in (503, 504), (status, body)
        assert time.monotonic() - freed < RESUME_WITHIN_S, f"no write within 5 s: {body}"
        time.sleep(0.05)
    resumed_s = time.monotonic() - freed
    print(f"first write succeeded {resumed_s * 1000:.0f} ms after space returned ({attempt} tries)")
    assert resumed_s < RESUME_WITHIN_S

    # Each node retries its own flush on its own backoff: every one takes writes within 5 s.
    for i in range(ACKED_KEYS):
        key, value = f"acked/{i}", {"i": i, "again": True}
        while (answer := api.put(key, value))[0] != 200:
            assert answer[0] in (503, 504), answer
            assert time.monotonic() - freed < RESUME_WITHIN_S, f"{key} refused 5 s on: {answer}"
            time.sleep(0.05)
        acked[key] = value
    print(f"every node took writes {(time.monotonic() - freed) * 1000:.0f} ms after space returned")
    for key, value in {**held, **acked}.items():
        status, _, body = api.get(key)
        assert status == 200 and body["value"] == value, (key, status, body)
    alive(pids)
    assert pids_of(volume) == pids
    assert kvctl("cluster", "status", "--dir", str(volume)).returncode == 0  # healthy again


def test_kvctl_up_on_a_full_disk_says_so_and_leaves_no_process(volume: Path) -> None:
    up(volume)
    down = kvctl("cluster", "down", "--dir", str(volume))
    assert down.returncode == 0, down.stderr
    fill(volume.parent / "filler")

    started = kvctl("cluster", "up", "--dir", str(volume))
    assert started.returncode == 1, (started.stdout, started.stderr)
    assert "Traceback" not in started.stderr, started.stderr
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1, started.stderr
    print(f"\nkvctl cluster up on a full volume: {lines[0]}")
    assert "no space left on device" in lines[0] and str(volume / "run") in lines[0], lines
    assert cluster_processes(volume) == [], "a process was left running without its pid file"
    assert not list((volume / "run").glob(".*.tmp")), "a temporary pid file was left behind"
    assert not list((volume / "run").glob("*.pid"))

    status = kvctl("cluster", "status", "--dir", str(volume))
    assert "Traceback" not in status.stderr, status.stderr
    assert status.returncode == 6, (status.stdout, status.stderr)  # nothing is running

    with_space(volume.parent)
    cluster = up(volume)
    assert Api(cluster).put("after", 1)[0] == 200


def test_every_file_of_a_fresh_cluster_is_private(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    try:
        cluster = up(root)
        api = Api(cluster)
        for i in range(8):  # node.db-wal and node.db-shm exist once written
            assert api.put(f"k{i}", i)[0] == 200
        files = [path for path in root.rglob("*") if not path.is_dir()]
        assert any(path.name == "node.db-wal" for path in files), files
        wide = {
            str(path.relative_to(root)): oct(stat.S_IMODE(path.stat().st_mode))
            for path in files
            if stat.S_IMODE(path.stat().st_mode) != 0o600
        }
        assert wide == {}, "files readable by others"
        dirs = [root, *(path for path in root.rglob("*") if path.is_dir())]
        wide_dirs = {
            str(path): oct(stat.S_IMODE(path.stat().st_mode))
            for path in dirs
            if stat.S_IMODE(path.stat().st_mode) != 0o700
        }
        assert wide_dirs == {}
    finally:
        stop_cluster(root)
