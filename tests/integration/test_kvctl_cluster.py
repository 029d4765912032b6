"""``kvctl cluster`` end to end: real node and coordinator processes started by the command line.

One cluster directory goes through a whole life: ``up`` (created, healthy, private files),
``status``, data written and read through the HTTP API, ``up`` again (nothing restarted), a
node killed with SIGKILL and ``up`` restarting only it, ``down`` (nothing left), ``up`` again
(the data is intact), ``env``. Error cases (no cluster, a foreign directory, a directory mixing
two clusters) need no processes. ``up --foreground`` (``make run``) is run as a child whose output
a thread reads: it ends with status 0 and one line when ``cluster down`` runs elsewhere or on
SIGINT (Ctrl-C), a second one is refused while it runs, and it ends with status 6 when every
process dies on its own. Every test cleans up in teardown whatever happened: SIGKILL of the
foreground children, then ``kvctl cluster down`` and SIGKILL of any pid left in ``run/``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.kvctl import COMMAND_TIMEOUT_S, KVCTL, clean_env, kill_leftovers, run_kvctl

from kvstore.localcluster import MARKER_FILE, LocalCluster, process_command_line, read_pid_file

KEYS = 24


def kvctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = run_kvctl(*args)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, f"kvctl {' '.join(args)}: {result.stderr}"
    return result


def kvctl_json(*args: str) -> Any:
    return json.loads(kvctl(*args, "--json").stdout)


def cleanup(root: Path) -> None:
    """Stop whatever a test left running in ``root``: kvctl first, then SIGKILL by pid file."""
    if (root / MARKER_FILE).exists():
        subprocess.run(
            [*KVCTL, "cluster", "down", "--dir", str(root)],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    kill_leftovers(root)


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "kv"
    try:
        yield root
    finally:
        cleanup(root)


def api(base: str, token: str, method: str, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def key_path(key: str) -> str:
    return "/v1/kv/" + urllib.parse.quote(key, safe="")


def alive(pid: int) -> bool:
    return process_command_line(pid) is not None


def by_id(statuses: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {status["id"]: status for status in statuses}


def test_cluster_life_cycle(cluster_dir: Path) -> None:
    root = str(cluster_dir)

    # up: made on first use, every process healthy, private files private.
    up = kvctl_json("cluster", "up", "--dir", root)
    assert up["created"] is True and up["healthy"] is True
    assert up["started"] == ["n1", "n2", "n3"] and up["already_running"] == []
    pids = {status["id"]: status["pid"] for status in up["processes"]}
    for name in ("secret", "api_tokens.toml", "admin.token"):
        assert stat.S_IMODE((cluster_dir / name).stat().st_mode) == 0o600, name
    for process_id, pid in pids.items():
        assert read_pid_file(cluster_dir / "run" / f"{process_id}.pid") == pid
        assert (cluster_dir / "logs" / f"{process_id}.log").exists()
    token = (cluster_dir / "admin.token").read_text().strip()
    assert up["token"] == token

    # status: 3 nodes (every one serving the API; no coordinator process by default), healthy,
    # owning all 16 partitions.
    statuses = kvctl_json("cluster", "status", "--dir", root)
    assert [(s["role"], s["id"]) for s in statuses] == [
        ("node", "n1"),
        ("node", "n2"),
        ("node", "n3"),
    ]
    assert all(s["health"] == "ok" and s["pid"] == pids[s["id"]] for s in statuses)
    # Request rates come from every process's /metrics, which needs the (admin) API token.
    assert all(isinstance(s["requests_per_s"], float) for s in statuses), statuses
    nodes = [s for s in statuses if s["role"] == "node"]
    owned = sorted(p["partition"] for s in nodes for p in s["partitions"])
    assert owned == list(range(16))
    assert sum(s["items"] for s in nodes) == 0

    # Data through the public API with the admin token.
    base = up["api"]
    for i in range(KEYS):
        api(base, token, "PUT", key_path(f"user/{i}"), {"value": {"n": i}})
    assert api(base, token, "GET", key_path("user/7"))["value"] == {"n": 7}
    for status in statuses:  # every node's API URL works
        node_url = f"http://{status['address']}"
        assert api(node_url, token, "GET", key_path("user/5"))["value"] == {"n": 5}
    # ... and through kvctl's data commands, which find the cluster and its token by --dir.
    kvctl_json("put", "--dir", root, "cli/note", '{"via": "kvctl"}')
    assert kvctl_json("get", "--dir", root, "user/7")["value"] == {"n": 7}
    statuses = kvctl_json("cluster", "status", "--dir", root, "--no-rates")
    assert sum(s["items"] for s in statuses if s["role"] == "node") == KEYS + 1

    # The text table shows every process.
    table = kvctl("cluster", "status", "--dir", root, "--no-rates").stdout
    for process_id in pids:
        assert f" {process_id} " in table
    assert "3/3 healthy" in table

    # up again: nothing restarted.
    again = kvctl_json("cluster", "up", "--dir", root)
    assert again["created"] is False and again["started"] == []
    assert {s["id"]: s["pid"] for s in again["processes"]} == pids

    # SIGKILL one node: status says so (exit 6); up restarts it and only it.
    os.kill(pids["n2"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pids["n2"]):
        assert time.monotonic() < deadline
        time.sleep(0.02)  # until the kernel has the process gone; bounded
    down_status = kvctl("cluster", "status", "--dir", root, "--json", "--no-rates", check=False)
    assert down_status.returncode == 6
    assert by_id(json.loads(down_status.stdout))["n2"]["health"] == "down"
    restarted = kvctl_json("cluster", "up", "--dir", root)
    assert restarted["started"] == ["n2"]
    new_pids = {s["id"]: s["pid"] for s in restarted["processes"]}
    assert new_pids["n2"] != pids["n2"]
    assert {k: v for k, v in new_pids.items() if k != "n2"} == {
        k: v for k, v in pids.items() if k != "n2"
    }
    assert api(base, token, "GET", key_path("user/3"))["value"] == {"n": 3}

    # down: no process left, pid files gone.
    stopped = kvctl_json("cluster", "down", "--dir", root)
    assert sorted(stopped["terminated"]) == ["n1", "n2", "n3"]
    assert not any(alive(pid) for pid in new_pids.values())
    assert not list((cluster_dir / "run").glob("*.pid"))
    assert kvctl_json("cluster", "down", "--dir", root)["not_running"] == ["n1", "n2", "n3"]

    # up again on the same directory: same cluster, data intact.
    back = kvctl_json("cluster", "up", "--dir", root)
    assert back["created"] is False and back["started"] == ["n1", "n2", "n3"]
    assert back["api"] == base
    read = api(base, token, "POST", "/v1/read", {"keys": [f"user/{i}" for i in range(KEYS)]})
    assert [item["value"] for item in read["items"]] == [{"n": i} for i in range(KEYS)]
    assert kvctl_json("get", "--dir", root, "cli/note")["value"] == {"via": "kvctl"}

    # env: shell exports and JSON.
    exports = kvctl("cluster", "env", "--dir", root).stdout.splitlines()
    aws = {
        "AWS_ENDPOINT_URL_DYNAMODB": base,
        "AWS_ACCESS_KEY_ID": "admin",
        "AWS_SECRET_ACCESS_KEY": token,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert exports == [
        f"export KV_URL={base}",
        f"export KV_TOKEN={token}",
        *(f"export {name}={value}" for name, value in aws.items()),
    ]
    assert kvctl_json("cluster", "env", "--dir", root) == {
        "KV_URL": base,
        "KV_TOKEN": token,
        **aws,
    }


def test_up_prints_the_api_and_first_requests(cluster_dir: Path) -> None:
    out = kvctl("cluster", "up", "--dir", str(cluster_dir), "--nodes", "1", "--partitions", "2")
    token = (cluster_dir / "admin.token").read_text().strip()
    url = LocalCluster.open(cluster_dir).api_url()
    assert f"API    {url}" in out.stdout
    assert token in out.stdout
    assert "curl -s -X PUT" in out.stdout
    assert "kvstore.connect_sync()" in out.stdout
    # The shape is fixed once made: a different one is a usage error, not silently ignored.
    changed = kvctl("cluster", "up", "--dir", str(cluster_dir), "--nodes", "3", check=False)
    assert changed.returncode == 2
    assert changed.stderr.startswith("kvctl: --nodes: the cluster in")


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvctl: ")
    return lines[0]


@pytest.mark.parametrize("command", ["status", "down", "env"])
def test_no_cluster_is_a_one_line_error(tmp_path: Path, command: str) -> None:
    result = kvctl("cluster", command, "--dir", str(tmp_path / "none"), check=False)
    assert result.returncode == 3
    line = one_line_error(result)
    assert f"no cluster in {tmp_path / 'none'}; run `kvctl cluster up --dir" in line
    assert not (tmp_path / "none").exists()


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "cluster.toml").write_text('epoch = 1\n[nodes.x]\naddress = "127.0.0.1:9"\n')
    for command in ("up", "status", "down"):
        result = kvctl("cluster", command, "--dir", str(foreign), check=False)
        assert result.returncode == 2, command
        assert "is not a local cluster directory" in one_line_error(result)
    assert [p.name for p in foreign.iterdir()] == ["cluster.toml"]
    # A marker of another cluster beside this cluster's file.
    one = LocalCluster.create(tmp_path / "one", nodes=1, partitions=1)
    two = LocalCluster.create(tmp_path / "two", nodes=1, partitions=1)
    (two.root / MARKER_FILE).write_bytes((one.root / MARKER_FILE).read_bytes())
    result = kvctl("cluster", "up", "--dir", str(two.root), "--json", check=False)
    assert result.returncode == 2
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "ValidationError" and "mixes two clusters" in error["message"]
    assert not list((two.root / "run").glob("*.pid"))


# --- up --foreground (make run) ----------------------------------------------------------------

ATTACHED = "Attached: streaming every process's log below."


class Foreground:
    """``kvctl cluster up --foreground`` as a child; a thread reads its stdout line by line."""

    def __init__(self, root: Path, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [*KVCTL, "cluster", "up", "--foreground", "--dir", str(root)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=clean_env(),
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, needle: str) -> None:
        """Read lines until one contains ``needle``; fail at the end of the output (or after
        COMMAND_TIMEOUT_S without a line: a hung child)."""
        while True:
            try:
                line = self.lines.get(timeout=COMMAND_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"no {needle!r} after {COMMAND_TIMEOUT_S} s: {self.seen}")
            if line is None:
                pytest.fail(f"output ended without {needle!r}: {self.seen} {self.stderr()}")
            self.seen.append(line)
            if needle in line:
                return

    def finish(self) -> tuple[int, list[str], str]:
        """Wait for the child to exit: its status, the rest of its stdout, its stderr."""
        status = self.proc.wait(COMMAND_TIMEOUT_S)
        self.reader.join(COMMAND_TIMEOUT_S)
        rest: list[str] = []
        while (line := self.lines.get_nowait()) is not None:
            rest.append(line)
        return status, rest, self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(COMMAND_TIMEOUT_S)
        self.reader.join(COMMAND_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def foreground(cluster_dir: Path, tmp_path: Path) -> Iterator[list[Foreground]]:
    """Start with ``foreground.append(Foreground(...))``; every child is SIGKILLed in teardown
    (before ``cluster_dir``'s teardown stops the cluster processes)."""
    children: list[Foreground] = []
    try:
        yield children
    finally:
        for child in children:
            child.kill()


def start_foreground(root: Path, children: list[Foreground]) -> Foreground:
    child = Foreground(root, root.parent / f"foreground-{len(children)}.err")
    children.append(child)
    child.expect(ATTACHED)
    return child


def small_cluster(root: Path) -> None:
    LocalCluster.create(root, nodes=1, coordinators=1, partitions=2)


def test_foreground_ends_when_cluster_down_runs_elsewhere(
    cluster_dir: Path, foreground: list[Foreground]
) -> None:
    small_cluster(cluster_dir)
    fg = start_foreground(cluster_dir, foreground)
    pids = LocalCluster.open(cluster_dir).running()
    assert set(pids) == {"n1", "c1"}

    down = kvctl("cluster", "down", "--dir", str(cluster_dir))
    assert down.stdout.splitlines() == [
        f"stopped c1 n1; the data stays in {cluster_dir}",
        f"The attached `kvctl cluster up --foreground` (pid {fg.pid}) was told to exit; "
        "waiting for it",
        f"It has exited (pid {fg.pid}).",
    ]
    status, rest, stderr = fg.finish()
    assert status == 0, (rest, stderr)
    assert stderr == ""
    said = [line.split(" | ", 1)[1] for line in rest if line.startswith("kvctl | ")]
    assert len(said) == 2, rest
    assert said[0].startswith("`kvctl cluster down` (pid ")
    assert said[0].endswith(") is stopping the cluster; this session ends when it is done")
    assert said[1].endswith(f"): stopped c1 n1; the data stays in {cluster_dir}")
    assert not any(alive(pid) for pid in pids.values())
    # Nothing reports the stopped processes as exits of their own, nothing asks for Ctrl-C.
    assert not any("starts it again" in line or "Ctrl-C" in line for line in rest), rest


def test_a_second_foreground_is_refused_and_the_first_runs_on(
    cluster_dir: Path, foreground: list[Foreground]
) -> None:
    small_cluster(cluster_dir)
    fg = start_foreground(cluster_dir, foreground)
    cluster = LocalCluster.open(cluster_dir)
    before = cluster.running()

    second = kvctl("cluster", "up", "--foreground", "--dir", str(cluster_dir), check=False)
    assert second.returncode == 4  # refused
    line = one_line_error(second)  # and nothing on stdout: no banner, no log lines
    assert f"`kvctl cluster up --foreground` (pid {fg.pid}, since " in line
    assert f"is already attached to the cluster in {cluster_dir}" in line
    assert f"Ctrl-C in its terminal or `kvctl cluster down --dir {cluster_dir}`" in line
    assert fg.proc.poll() is None
    assert cluster.running() == before
    refused = kvctl(
        "cluster", "up", "--foreground", "--dir", str(cluster_dir), "--json", check=False
    )
    error = json.loads(refused.stderr)["error"]
    assert (error["code"], error["attached_pid"], error["exit_status"]) == (
        "ConditionFailed",
        fg.pid,
        4,
    )

    # A plain `up` has nothing to start, and names the attached session.
    up = kvctl_json("cluster", "up", "--dir", str(cluster_dir))
    assert up["started"] == [] and up["attached_session"]["pid"] == fg.pid
    assert fg.proc.poll() is None
    assert cluster.running() == before


def test_ctrl_c_stops_the_whole_cluster_it_shows(
    cluster_dir: Path, foreground: list[Foreground]
) -> None:
    small_cluster(cluster_dir)
    # Started in the background first: the foreground adopts it, says so, and stops it too.
    assert kvctl_json("cluster", "up", "--dir", str(cluster_dir))["started"] == ["n1", "c1"]
    fg = start_foreground(cluster_dir, foreground)
    assert "(also n1 c1, already running when it attached)" in fg.seen[-1]
    pids = LocalCluster.open(cluster_dir).running()

    fg.proc.send_signal(signal.SIGINT)
    status, rest, stderr = fg.finish()
    assert status == 0, (rest, stderr)
    assert stderr == ""
    said = [line.split(" | ", 1)[1] for line in rest if line.startswith("kvctl | ")]
    assert said == [
        f"Ctrl-C: stopping the cluster in {cluster_dir}",
        f"stopped c1 n1; the data stays in {cluster_dir}",
    ]
    assert not any(alive(pid) for pid in pids.values())
    assert not list((cluster_dir / "run").glob("*.pid"))
    # The attachment ended with it: the next foreground may attach.
    after = LocalCluster.open(cluster_dir)
    assert after.attach().pid == os.getpid()
    after.detach()


def test_foreground_ends_with_status_6_when_every_process_dies(
    cluster_dir: Path, foreground: list[Foreground]
) -> None:
    small_cluster(cluster_dir)
    fg = start_foreground(cluster_dir, foreground)
    for pid in LocalCluster.open(cluster_dir).running().values():
        os.kill(pid, signal.SIGKILL)
    status, rest, stderr = fg.finish()
    assert status == 6
    assert stderr.splitlines() == [
        f"kvctl: every process of the cluster in {cluster_dir} has exited on its own "
        "(n1 was killed by SIGKILL, c1 was killed by SIGKILL); the logs are in "
        f"{cluster_dir / 'logs'}; `kvctl cluster up --dir {cluster_dir}` starts them again"
    ]
    reported = [line for line in rest if "was killed by SIGKILL; see" in line]
    assert len(reported) == 2, rest
