"""The local cluster directory and kvctl's shared output, without starting kvstore processes.

Layout and modes of a new directory, the identity checks that refuse foreign or mixed
directories, the pid-file liveness rules (against stand-in processes whose command line looks
like a node's), stopping with SIGTERM and SIGKILL, the one attached foreground session and the
stop notice ``down`` leaves it, env, log following, and the one mapping from every catalogue code
to an exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from kvstore.api.tokens import Role, TokenStore, load_token_file, revoke_token
from kvstore.cli.output import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_STATUS_BY_CODE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Output,
    exit_status,
    run_handler,
)
from kvstore.config import load_cluster, read_secret
from kvstore.errors import (
    ConditionFailed,
    ErrorCode,
    KvError,
    NotFound,
    ValidationError,
    error_from_code,
)
from kvstore.localcluster import (
    ADMIN_TOKEN_FILE,
    API_TOKENS_FILE,
    CLUSTER_FILE,
    DEFAULT_DIR,
    DIR_ENV,
    ETCD_ID,
    MARKER_FILE,
    SECRET_FILE,
    Attachment,
    LocalCluster,
    LogFollower,
    ProcessSpec,
    ProcessStatus,
    ReplicaView,
    command_matches,
    process_command_line,
    read_pid_file,
    replication_summary,
    resolve_dir,
)

# A stand-in process: with "ignore-term" among its arguments it ignores SIGTERM; says "ready"
# once set up, then sleeps far longer than any test (the fixture kills it; a slow machine must
# not see it exit by itself mid-test).
SLEEPER = """
import signal, sys, time
if "ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def cluster(tmp_path: Path) -> LocalCluster:
    return LocalCluster.create(tmp_path / "kv", nodes=2, coordinators=1, partitions=4)


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Stand-in processes; killed and reaped whatever the test did."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def fake_process(
    procs: list[subprocess.Popen[bytes]], cluster: LocalCluster, process_id: str, *extra: str
) -> subprocess.Popen[bytes]:
    """A process whose command line looks like ``process_id``'s of ``cluster``."""
    spec = cluster.process(process_id)
    module = "kvstore.storage_node" if spec.role == "node" else "kvstore.coordinator"
    argv = [sys.executable, "-c", SLEEPER, module, "--config", str(cluster.config_path)]
    proc = subprocess.Popen([*argv, "--id", process_id, *extra], stdout=subprocess.PIPE)
    procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


# --- directory and identity --------------------------------------------------------------------


def test_create_writes_the_layout_with_private_modes(cluster: LocalCluster) -> None:
    root = cluster.root
    assert mode(root) == 0o700
    for name in (SECRET_FILE, API_TOKENS_FILE, ADMIN_TOKEN_FILE, MARKER_FILE):
        assert mode(root / name) == 0o600, name
    for name in ("data", "logs", "run"):
        assert (root / name).is_dir() and mode(root / name) == 0o700
    config = load_cluster(root / CLUSTER_FILE)
    assert list(config.nodes) == ["n1", "n2"]
    assert list(config.coordinators) == ["c1"]
    assert config.cluster_map.partitions.partition_count == 4
    assert config.api_tokens_file == root / API_TOKENS_FILE
    assert config.nodes["n1"].data_dir == root / "data" / "n1"
    addresses = [spec.address for spec in cluster.processes()]
    assert all(address.startswith("127.0.0.1:") for address in addresses)
    assert len(set(addresses)) == 3
    assert len(read_secret(config.secret_file)) >= 16
    marker = json.loads((root / MARKER_FILE).read_text())
    assert marker["cluster_id"] == cluster.cluster_id
    assert (
        (root / CLUSTER_FILE)
        .read_text()
        .startswith(f"# kvstore local cluster {cluster.cluster_id},")
    )
    # The admin token in admin.token is the one the token file knows, with the admin role.
    token = (root / ADMIN_TOKEN_FILE).read_text().strip()
    entry = TokenStore(root / API_TOKENS_FILE).authorize(f"Bearer {token}", Role.ADMIN)
    assert entry.name == "admin"
    assert not list(root.parent.glob(".kv.creating-*"))  # the staging directory is gone


def test_create_into_an_empty_directory_and_refuse_an_existing_cluster(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    made = LocalCluster.create(root, nodes=1, coordinators=1, partitions=1)
    assert LocalCluster.open(root).cluster_id == made.cluster_id
    with pytest.raises(ValidationError, match="already exists"):
        LocalCluster.create(root)
    again, created = LocalCluster.open_or_create(root)
    assert not created and again.cluster_id == made.cluster_id


@pytest.mark.parametrize(
    ("shape", "field"),
    [  # nodes, coordinators, partitions, replication factor
        ((0, 1, 16, 1), "--nodes"),
        ((17, 1, 16, 1), "--nodes"),
        ((3, -1, 16, 1), "--coordinators"),
        ((3, 9, 16, 1), "--coordinators"),
        ((4, 1, 3, 1), "--partitions"),
        ((3, 0, 16, 0), "--replication-factor"),
        ((3, 0, 16, 4), "--replication-factor"),  # more copies than nodes
        ((3, 1, 16, 3), "--coordinators"),  # they would not follow the leaders
    ],
)
def test_create_checks_the_shape(
    tmp_path: Path, shape: tuple[int, int, int, int], field: str
) -> None:
    nodes, coordinators, partitions, factor = shape
    with pytest.raises(ValidationError) as caught:
        LocalCluster.create(
            tmp_path / "kv",
            nodes=nodes,
            coordinators=coordinators,
            partitions=partitions,
            replication_factor=factor,
        )
    assert caught.value.field == field
    assert not (tmp_path / "kv").exists()


def test_open_a_missing_or_empty_directory_says_run_up(tmp_path: Path) -> None:
    for root in (tmp_path / "missing", tmp_path):
        with pytest.raises(NotFound, match=r"no cluster in .*; run `kvctl cluster up"):
            LocalCluster.open(root)


def test_open_refuses_a_directory_kvctl_did_not_make(tmp_path: Path) -> None:
    (tmp_path / CLUSTER_FILE).write_text('epoch = 1\n[nodes.a]\naddress = "127.0.0.1:1"\n')
    with pytest.raises(
        ValidationError, match=r"not a local cluster directory .*kvstore-local.json"
    ):
        LocalCluster.open(tmp_path)
    with pytest.raises(ValidationError, match="not a local cluster directory"):
        LocalCluster.create(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLUSTER_FILE]  # nothing written
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValidationError, match="not a directory"):
        LocalCluster.open(tmp_path / "file")


def test_open_refuses_a_marker_of_another_cluster(tmp_path: Path) -> None:
    one = LocalCluster.create(tmp_path / "one", nodes=1, partitions=1)
    two = LocalCluster.create(tmp_path / "two", nodes=1, partitions=1)
    (two.root / MARKER_FILE).write_bytes((one.root / MARKER_FILE).read_bytes())
    with pytest.raises(ValidationError, match=f"mixes two clusters: .*{one.cluster_id}"):
        LocalCluster.open(two.root)


@pytest.mark.parametrize(
    "marker",
    [
        "not json",
        "[]",
        '{"kind": "other"}',
        '{"kind": "kvstore-local-cluster", "format": 9}',
        '{"kind": "kvstore-local-cluster", "format": 1, "cluster_id": "x"}',
    ],
)
def test_open_refuses_a_broken_marker(cluster: LocalCluster, marker: str) -> None:
    (cluster.root / MARKER_FILE).write_text(marker)
    with pytest.raises(ValidationError) as caught:
        LocalCluster.open(cluster.root)
    assert caught.value.field == "--dir"


def test_resolve_dir_prefers_the_option_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_dir(None, {}) == tmp_path / DEFAULT_DIR
    assert resolve_dir(None, {DIR_ENV: str(tmp_path / "env")}) == tmp_path / "env"
    assert resolve_dir("given", {DIR_ENV: str(tmp_path / "env")}) == tmp_path / "given"
    assert resolve_dir("", {DIR_ENV: "x"}) == tmp_path / "x"


# --- pid files and liveness --------------------------------------------------------------------


def test_read_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "n1.pid"
    assert read_pid_file(path) is None
    for text, expected in (("123\n", 123), ("0", None), ("-5", None), ("12x", None), ("", None)):
        path.write_text(text)
        assert read_pid_file(path) == expected, text


def test_command_matches_needs_module_config_and_id(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    spec = ProcessSpec("node", "n1", "127.0.0.1:1")
    argv = spec.argv(config)
    assert command_matches(argv, spec, config)
    assert command_matches(
        ["python", "-m", "kvstore.storage_node", f"--config={config}", "--id=n1"], spec, config
    )
    assert not command_matches([*argv[:-1], "n2"], spec, config)
    assert not command_matches(argv, spec, tmp_path / "other.toml")
    assert not command_matches(argv, ProcessSpec("coordinator", "n1", "127.0.0.1:1"), config)
    assert not command_matches(["python", "--config", str(config), "--id", "n1"], spec, config)


def test_running_needs_a_live_process_with_the_cluster_command_line(
    cluster: LocalCluster, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    assert cluster.running() == {}
    # A pid file naming some other live process (this one) does not count.
    cluster.pid_path("n1").write_text(f"{os.getpid()}\n")
    assert cluster.running() == {}
    # A process with n1's command line counts, through its pid file.
    n1 = fake_process(sleepers, cluster, "n1")
    cluster.pid_path("n1").write_text(f"{n1.pid}\n")
    assert cluster.running() == {"n1": n1.pid}
    # Without a pid file, the process table finds it and the pid file is written again.
    c1 = fake_process(sleepers, cluster, "c1")
    assert cluster.running() == {"n1": n1.pid, "c1": c1.pid}
    assert read_pid_file(cluster.pid_path("c1")) == c1.pid
    # A dead (reaped) process does not count, whatever its pid file says.
    n1.kill()
    n1.wait(10)
    assert cluster.running() == {"c1": c1.pid}
    # Nor a zombie: c1 killed but not reaped yet.
    c1.kill()
    deadline = time.monotonic() + 10
    while process_command_line(c1.pid) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)  # until the kernel has turned it into a zombie; bounded
    assert cluster.running() == {}


def test_down_terminates_then_kills_and_removes_pid_files(
    cluster: LocalCluster, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    n1 = fake_process(sleepers, cluster, "n1")
    stubborn = fake_process(sleepers, cluster, "c1", "ignore-term")
    for proc, process_id in ((n1, "n1"), (stubborn, "c1")):
        cluster.pid_path(process_id).write_text(f"{proc.pid}\n")
    # n1 dies of its SIGTERM at once; the grace must only outlast a loaded machine's scheduling
    # delay (500 ms left little room), though the stubborn c1 makes the test wait all of it.
    report = cluster.down(stop_timeout_ms=5_000)
    assert report.terminated == ("n1",)
    assert report.killed == ("c1",)
    assert report.not_running == ("n2",)
    assert n1.wait(10) == -signal.SIGTERM
    assert stubborn.wait(10) == -signal.SIGKILL
    assert not list((cluster.root / "run").glob("*.pid"))
    assert cluster.down().not_running == ("n1", "n2", "c1")


def test_one_attached_session_which_down_from_elsewhere_notifies(
    cluster: LocalCluster, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    other = LocalCluster.open(cluster.root)  # another kvctl (flock is per open file)
    attachment = cluster.attach()
    assert cluster.attached and attachment.pid == os.getpid()
    with pytest.raises(ConditionFailed) as refused:
        other.attach()
    assert f"(pid {os.getpid()}, since {attachment.started}) is already attached" in str(
        refused.value
    )
    assert refused.value.details["attached_pid"] == os.getpid()
    assert not other.attached
    assert cluster.stop_notice() is None

    # `down` from the other kvctl: the attached session gets a notice with what it stopped.
    n1 = fake_process(sleepers, cluster, "n1")
    cluster.pid_path("n1").write_text(f"{n1.pid}\n")
    report = other.down()
    assert report.attached == attachment
    assert report.terminated == ("n1",)
    notice = cluster.stop_notice()
    assert notice is not None and notice.by_pid == os.getpid()
    assert notice.report is not None and notice.report.terminated == ("n1",)
    assert other.stop_notice() is None  # not attached: no notice is for it

    # Detached: the notice is gone and another may attach; its own `down` notifies nobody.
    cluster.detach()
    assert not cluster.attached
    assert not (cluster.root / "run" / "foreground.stop").exists()
    other.attach()
    assert cluster.down().attached is not None  # from elsewhere: other is told
    assert other.down().attached is None  # the attached session stopping its own cluster
    other.detach()
    assert cluster.down().attached is None


def test_wait_detached_waits_for_the_session_process(
    cluster: LocalCluster, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    session = fake_process(sleepers, cluster, "n1")  # stands in for the attached kvctl
    attached = Attachment(pid=session.pid, started="", session="x")
    assert cluster.wait_detached(attached, timeout_ms=0) is False  # still running
    session.kill()
    session.wait(10)
    assert cluster.wait_detached(attached, timeout_ms=10_000) is True


def test_env_names_the_first_coordinator_and_the_admin_token(cluster: LocalCluster) -> None:
    env = cluster.env()
    url = f"http://{cluster.config.coordinators['c1'].address}"
    token = (cluster.root / ADMIN_TOKEN_FILE).read_text().strip()
    assert env == {
        "KV_URL": url,
        "KV_TOKEN": token,
        "AWS_ENDPOINT_URL_DYNAMODB": url,
        "AWS_ACCESS_KEY_ID": "admin",
        "AWS_SECRET_ACCESS_KEY": token,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert env["KV_TOKEN"].startswith("kvt_")
    # The access key id names the admin token, whose stored secret is the token (SigV4).
    entry = TokenStore(cluster.config.api_tokens_file).entry_by_name(env["AWS_ACCESS_KEY_ID"])
    assert entry is not None
    assert (entry.role, entry.secret) == (Role.ADMIN, token)
    (cluster.root / ADMIN_TOKEN_FILE).chmod(0o644)
    with pytest.raises(ValidationError, match="chmod 600"):
        cluster.env()


def test_a_token_file_without_secrets_gets_the_admin_secret_on_up(cluster: LocalCluster) -> None:
    path = cluster.config.api_tokens_file
    token = cluster.admin_token()
    (entry,) = load_token_file(path).values()
    old = tomli_w.dumps(
        {"tokens": {"admin": {"role": "admin", "sha256": entry.sha256, "created": entry.created}}}
    )
    path.write_text(old, encoding="utf-8")  # as written before secrets were stored
    assert TokenStore(path).entry_by_name("admin") == dataclasses.replace(entry, secret=None)
    cluster._store_admin_secret()  # what up() does first
    assert TokenStore(path).entry_by_name("admin") == entry
    assert entry.secret == token
    cluster._store_admin_secret()  # nothing left to do; a revoked admin token is no error
    revoke_token(path, "admin")
    cluster._store_admin_secret()
    assert load_token_file(path) == {}


def test_status_of_a_stopped_cluster_is_down_with_the_partition_map(
    cluster: LocalCluster,
) -> None:
    statuses = cluster.status(rates=False)
    assert [(s.role, s.process_id, s.health, s.pid) for s in statuses] == [
        ("node", "n1", "down", None),
        ("node", "n2", "down", None),
        ("coordinator", "c1", "down", None),
    ]
    owned = [[p.partition for p in s.partitions or ()] for s in statuses[:2]]
    assert owned == [[0, 2], [1, 3]]
    assert statuses[2].partitions is None
    assert statuses[0].to_json()["healthy"] is False


def test_log_follower_yields_complete_lines_and_survives_truncation(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    log.write_text("old\n")
    follower = LogFollower({"n1": log}, {"n1": log.stat().st_size})
    assert follower.poll() == []
    with log.open("a") as out:
        out.write("one\ntwo\npart")
    assert follower.poll() == [("n1", "one"), ("n1", "two")]
    with log.open("a") as out:
        out.write("ial\n")
    assert follower.poll() == [("n1", "partial")]
    log.write_text("new\n")  # truncated and rewritten
    assert follower.poll() == [("n1", "new")]


# --- exit statuses and output ------------------------------------------------------------------


def test_every_error_code_has_an_exit_status() -> None:
    assert set(EXIT_STATUS_BY_CODE) == set(ErrorCode)
    for code in ErrorCode:
        status = exit_status(code)
        assert 1 <= status <= 7, code
        if code.retryable and not code.ambiguous:
            assert status == EXIT_UNAVAILABLE, code
    assert exit_status(ErrorCode.ValidationError) == EXIT_USAGE
    assert exit_status(ErrorCode.NotFound) == EXIT_NOT_FOUND
    assert exit_status(ErrorCode.ConditionFailed) == 4
    assert exit_status(ErrorCode.TransactionCanceled) == 4
    assert exit_status(ErrorCode.Unauthorized) == exit_status(ErrorCode.Forbidden) == 5
    assert exit_status(ErrorCode.Unavailable) == exit_status(ErrorCode.Overloaded) == 6
    assert exit_status(ErrorCode.OutcomeUnknown) == 7
    assert exit_status(ErrorCode.InternalError) == EXIT_FAILURE


def _run(error: BaseException, *, json_mode: bool = False) -> tuple[int, str, str]:
    def handler(args: argparse.Namespace, out: Output) -> int:
        del args, out
        raise error

    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(json_mode=json_mode, stdout=stdout, stderr=stderr)
    return run_handler(handler, argparse.Namespace(), out), stdout.getvalue(), stderr.getvalue()


@pytest.mark.parametrize("code", list(ErrorCode))
def test_run_handler_turns_each_error_into_one_line_and_its_status(code: ErrorCode) -> None:
    error = error_from_code(code, "what went wrong", details={"field": "f"})
    status, stdout, stderr = _run(error)
    assert status == exit_status(code)
    assert stdout == ""
    assert stderr == "kvctl: what went wrong\n"
    status, _, stderr = _run(error, json_mode=True)
    body = json.loads(stderr)["error"]
    assert (body["code"], body["exit_status"]) == (code.name, exit_status(code))


def test_run_handler_reports_os_errors_and_interrupts() -> None:
    status, _, stderr = _run(PermissionError(13, "Permission denied", "/x/secret"))
    assert (status, stderr) == (EXIT_FAILURE, "kvctl: Permission denied (/x/secret)\n")
    status, _, stderr = _run(KeyboardInterrupt())
    assert (status, stderr) == (EXIT_INTERRUPTED, "kvctl: interrupted\n")
    assert issubclass(NotFound, KvError)


def test_output_table_prints_missing_values_as_dashes() -> None:
    stdout = io.StringIO()
    Output(json_mode=False, stdout=stdout).table(("A", "B"), [(1, None), ("x", 2.5)])
    lines = [line.split() for line in stdout.getvalue().splitlines() if line.strip()]
    assert lines[0] == ["A", "B"]
    assert lines[-2:] == [["1", "-"], ["x", "2.5"]]


# --- replicated clusters (no process started: see tests/integration/test_replication.py) ------


def test_a_replicated_cluster_names_its_private_etcd(tmp_path: Path) -> None:
    made = LocalCluster.create(tmp_path / "kv", nodes=3, partitions=4, replication_factor=3)
    config = load_cluster(made.root / CLUSTER_FILE)
    ports = made.etcd_ports
    assert ports is not None and ports.client != ports.peer
    assert config.replication.factor == 3
    assert config.replication.endpoints == (f"http://127.0.0.1:{ports.client}",)
    assert config.replication.prefix == f"/kvstore/{made.cluster_id}"
    marker = json.loads((made.root / MARKER_FILE).read_text())
    assert marker["etcd"] == {"client_port": ports.client, "peer_port": ports.peer}
    assert mode(made.root / "etcd") == 0o700
    again = LocalCluster.open(made.root)
    assert again.etcd_ports == ports and again.replicated
    assert again.etcd().member_dir == made.root / "etcd" / "etcd" and again.etcd().fsync
    # Every node holds every partition; nothing runs, so status shows each one down.
    assert [made.held_by(node) for node in ("n1", "n2", "n3")] == [(0, 1, 2, 3)] * 3
    statuses = made.status(rates=False)
    assert [(s.role, s.process_id, s.health) for s in statuses][-1] == ("etcd", ETCD_ID, "down")
    assert made.etcd_running() is None
    assert made.down().not_running == ("n1", "n2", "n3", ETCD_ID)


def test_an_unreplicated_cluster_has_no_etcd(cluster: LocalCluster) -> None:
    assert cluster.etcd_ports is None and not cluster.replicated
    assert "etcd" not in json.loads((cluster.root / MARKER_FILE).read_text())
    assert not (cluster.root / "etcd").exists()
    with pytest.raises(ValidationError):
        cluster.etcd()


def test_open_refuses_a_replicated_cluster_without_etcd_ports(tmp_path: Path) -> None:
    made = LocalCluster.create(tmp_path / "kv", nodes=2, partitions=2, replication_factor=2)
    marker = json.loads((made.root / MARKER_FILE).read_text())
    del marker["etcd"]
    (made.root / MARKER_FILE).write_text(json.dumps(marker))
    with pytest.raises(ValidationError, match="damaged"):
        LocalCluster.open(made.root)
    marker["etcd"] = {"client_port": "x"}
    (made.root / MARKER_FILE).write_text(json.dumps(marker))
    with pytest.raises(ValidationError, match="etcd ports"):
        LocalCluster.open(made.root)


def view(node: str, partition: int, leader: str, epoch: int, seq: int, **extra: object) -> object:
    return ReplicaView(
        partition=partition,
        node=node,
        leader=leader,
        replicas=("n1", "n2", "n3"),
        epoch=epoch,
        position=(epoch, seq),
        **extra,  # type: ignore[arg-type]
    )


def node_status(node: str, *views: object) -> ProcessStatus:
    return ProcessStatus(
        role="node",
        process_id=node,
        address="127.0.0.1:1",
        pid=1,
        health="ok",
        log=Path("x"),
        replication=tuple(views),  # type: ignore[arg-type]
    )


def test_replication_summary_takes_the_newest_epoch_and_the_leaders_own_view() -> None:
    statuses = [
        # n1 still believes it leads partition 0 at epoch 3 (it was deposed).
        node_status("n1", view("n1", 0, "n1", 3, 7, serving=False, lag={"n2": 1, "n3": 1})),
        node_status("n2", view("n2", 0, "n2", 5, 9, serving=True, lag={"n1": 2, "n3": 0})),
        node_status("n3", view("n3", 0, "n2", 5, 9)),
        ProcessStatus("etcd", ETCD_ID, "127.0.0.1:2", 2, "ok", Path("y")),
    ]
    [row] = replication_summary(statuses)
    assert (row.partition, row.leader, row.epoch, row.serving) == (0, "n2", 5, True)
    assert row.lag == {"n1": 2, "n3": 0}
    assert row.positions == {"n1": (3, 7), "n2": (5, 9), "n3": (5, 9)}
    # A leader that did not answer: no lag known, not serving as far as anyone can tell.
    [row] = replication_summary(statuses[2:])
    assert (row.leader, row.serving, row.lag) == ("n2", False, None)


def test_moves_and_node_changes_need_a_replicated_cluster(cluster: LocalCluster) -> None:
    for change in (
        lambda: cluster.move_partition(0, "n2"),
        cluster.add_node,
        lambda: cluster.remove_node("n1"),
    ):
        with pytest.raises(ValidationError, match="needs a replicated cluster"):
            change()


def test_bad_moves_are_refused_before_etcd_is_asked(tmp_path: Path) -> None:
    made = LocalCluster.create(tmp_path / "kv", nodes=3, partitions=4, replication_factor=3)
    with pytest.raises(ValidationError, match="no node 'n9'"):
        made.move_partition(0, "n9")
    with pytest.raises(ValidationError, match="no partition 4"):
        made.move_partition(4, "n2")
    with pytest.raises(ValidationError, match="would leave 2 nodes"):
        made.remove_node("n3")
    assert not list((made.root / "run").glob("move-*"))  # no lock taken for a refused move


def test_the_cluster_file_is_edited_in_place_and_new_ids_are_never_reused(
    tmp_path: Path,
) -> None:
    made = LocalCluster.create(tmp_path / "kv", nodes=3, partitions=4, replication_factor=3)
    assert made._next_node_id() == "n4"
    (made.root / "logs" / "n4.log").write_text("")  # a node once added, then removed
    (made.root / "data" / "n6").mkdir()
    assert made._next_node_id() == "n7"
    made._edit_cluster_file(
        lambda doc: doc["nodes"].update(  # type: ignore[union-attr]
            {"n7": {"address": "127.0.0.1:7007", "data_dir": "data/n7"}}
        )
    )
    again = LocalCluster.open(made.root)  # the header naming the cluster is kept
    assert list(again.config.nodes) == ["n1", "n2", "n3", "n7"]
    assert again.config.replication == made.config.replication
    assert mode(made.root / CLUSTER_FILE) == 0o600
    with pytest.raises(ValidationError):  # a change that would not load is not written
        made._edit_cluster_file(lambda doc: doc["replication"].update(factor=9))  # type: ignore[union-attr]
    assert list(LocalCluster.open(made.root).config.nodes) == ["n1", "n2", "n3", "n7"]
