"""A local cluster: real node and coordinator processes on 127.0.0.1, kept in one directory.

Theory of operation
-------------------
``kvctl cluster up/down/status/env`` (``kvstore/cli/cluster_cmd.py``) is a thin shell over
:class:`LocalCluster`; the SDK and tests may use it directly. The directory (:func:`resolve_dir`:
``--dir``, else ``$KVSTORE_DIR``, else ``./.kvstore``) holds everything::

    kvstore-local.json   {"kind": "kvstore-local-cluster", "format": 1, "cluster_id", "created"}
                         (a replicated cluster's also {"etcd": {"client_port", "peer_port"}})
    cluster.toml         the cluster file (kvstore.config), first line naming the cluster id;
                         nodes n1..nN and coordinators c1..cM on 127.0.0.1 ports chosen once
    secret               the cluster secret (0600)
    api_tokens.toml      API token digests (0600), one token named "admin"
    admin.token          that admin token in plaintext (0600): the one place it is kept
    data/<node id>/      SQLite partition files (the node creates and locks its directory)
    logs/<id>.log        stdout and stderr of each process (JSON lines), appended across runs
    run/<id>.pid         the pid of each running process (written atomically: temporary file,
                         fsync, rename); run/kvctl.lock serialises kvctl
    run/foreground.lock  held by the attached ``up --foreground`` (its pid; see Attachment)
    run/foreground.stop  a stop notice from ``cluster down`` to that attached session
    etcd/                a replicated cluster's private etcd (0700): its data (``etcd/etcd``,
                         fsync on) and its log (``etcd/etcd.log``); run/etcd.pid its pid

**Identity.** :meth:`LocalCluster.create` builds the whole layout in a fresh 0700 sibling
directory and renames it into place, so a directory is either absent/empty or complete, never
half made. ``kvstore-local.json`` carries a random ``cluster_id`` that the cluster file's first
line repeats. :meth:`LocalCluster.open` refuses, with a sentence saying what to do, a missing or
empty directory (``NotFound``: "run `kvctl cluster up`"), and a directory without the marker, with
a broken marker or whose cluster file names another cluster (``ValidationError``): kvctl never
starts processes against, or writes into, a directory it did not create.

**Processes.** Each process is ``python -P -m kvstore.storage_node|kvstore.coordinator --config
<abs cluster.toml> --id <id>`` spawned with :func:`os.posix_spawn` in a session of its own
(``setsid``, what ``start_new_session=True`` does) with default signal dispositions and an empty
signal mask, umask 077 (every file under the directory is 0600, every directory 0700), stdin
from ``/dev/null`` and stdout/stderr appended to its log. If its pid file cannot be written (a
full disk), the process just started is killed again and the error names the pid file: a process
never runs without its pid file. ``PYTHONPATH``
leads with the directory kvctl's own ``kvstore`` package was imported from, so the processes run
the same code as kvctl whatever the working directory (``-P`` keeps the working directory itself
off ``sys.path``). A process counts as *running* when
its pid file names a live process whose command line has ``-m <module>``, ``--config <this
cluster file>`` and ``--id <id>``; a pid reused by an unrelated program or a zombie does not
count. When a pid file is missing or stale, one scan of the process table (``/proc``, else
``ps``) finds a matching process anyway and the pid file is rewritten, so a lost pid file never
leads to a second process on the same ports and data.

:meth:`LocalCluster.up` holds ``run/kvctl.lock`` (``flock``; a second kvctl waits at most
``LOCAL_LOCK_WAIT_MS``), starts the nodes and then the coordinators that are not running,
leaves running ones alone, and waits until every process answers its health page (nodes
``GET /health``, coordinators ``GET /v1/health``) within ``LOCAL_READY_TIMEOUT_MS``, polling with
capped backoff. A process that exits first, or a deadline that passes, is ``Unavailable`` naming
the process, the URL and the last ``LOCAL_LOG_TAIL_LINES`` lines its log got in this run.
:meth:`LocalCluster.down` sends SIGTERM to the coordinators, then to the nodes (so no coordinator
works against half-stopped nodes), waits ``LOCAL_STOP_TIMEOUT_MS`` for each group, then SIGKILLs
what is left (a node that is killed loses nothing acknowledged: every reply waits for fsync), and
removes the pid files. Processes this object spawned are reaped with ``waitpid`` so their exit
status can be reported; others are watched through the process table.

**Attachment.** At most one ``kvctl cluster up --foreground`` is attached to a cluster: it holds
an exclusive ``flock`` on ``run/foreground.lock`` for as long as it runs (the kernel releases it
when the session dies, however it dies) and writes its pid, start time and a random session id
into that file. :meth:`LocalCluster.attach` takes it under ``run/kvctl.lock``, and every probe of
it (:meth:`LocalCluster.up`, :meth:`LocalCluster.down`) runs under that lock too, so a probe never
makes an attach fail by accident; a second attach is ``ConditionFailed`` naming the attached pid.
:meth:`LocalCluster.down` run by anyone but the attached session itself first writes
``run/foreground.stop`` (the session id, the stopping kvctl's pid), then stops the processes,
then completes the notice with what it stopped, all under ``run/kvctl.lock``: the session, which
polls :meth:`LocalCluster.stop_notice`, learns that its processes are going away on purpose
before the first one exits, waits for the lock (``down`` is done when it gets it) and exits.
:meth:`LocalCluster.wait_detached` lets ``down`` then wait, bounded by ``LOCAL_DETACH_WAIT_MS``,
until that session's process is gone.

**Replicated clusters** (``create(..., replication_factor=N)``, ``N > 1``; ``kvctl cluster up
--replication-factor N``): the cluster file gets a ``[replication]`` table naming a private etcd
on two loopback ports chosen at creation (kept in the marker) and the key prefix
``/kvstore/<cluster id>``. :meth:`LocalCluster.up` starts that etcd first
(:class:`~kvstore.replication.local_etcd.LocalEtcd`, fsync on, data under ``etcd/``), unless it
runs already (its pid file, else the process table, names a process whose ``--data-dir`` is this
cluster's), writes its pid file and leaves it running after kvctl exits; after every process is
healthy it waits, bounded by ``LOCAL_LEADERS_TIMEOUT_MS``, until every partition has a leader
serving it (each node's ``/health`` lists the partitions it serves; a fresh cluster elects and
waits out one lease, 2-3 s). :meth:`LocalCluster.down` stops etcd last (after the nodes, which
still use it while they stop): SIGTERM, then SIGKILL after the grace period; an etcd that is not
running is left alone, so both stay idempotent. Status shows etcd as a process of role
``etcd`` and, per node, the replicator's view of each partition it holds
(:class:`ReplicaView`); :func:`replication_summary` folds those into one row per partition.

**Status** (:meth:`LocalCluster.status`) is cheap and bounded: one concurrent round of probes,
each bounded by ``LOCAL_PROBE_TIMEOUT_MS`` (health pages; for nodes the ``stats`` RPC with the
cluster secret, giving per-partition live items, pending intents and open ledger records), and,
when asked, request rates from two ``/metrics`` samples ``LOCAL_RATE_SAMPLE_MS`` apart, read with
the admin token (every process's ``/metrics`` needs an API token; nodes:
``kvstore_node_requests_total`` without the ``stats`` method; coordinators:
``kvstore_coordinator_http_requests_total`` without the health and metrics routes, so the probes
do not count themselves). A probe that fails shows as a missing value, never as an error.

**Env** (:meth:`LocalCluster.env`): ``KV_URL`` (the first coordinator) and ``KV_TOKEN`` (the
admin token), what the SDK, curl and kvctl's data commands read; and for boto3 and the AWS CLI
(the DynamoDB endpoint on the same base URL, docs/dynamodb.md) ``AWS_ENDPOINT_URL_DYNAMODB``,
``AWS_ACCESS_KEY_ID`` (the admin token's name), ``AWS_SECRET_ACCESS_KEY`` (the admin token) and
``AWS_DEFAULT_REGION`` (``us-east-1``: any region is accepted, but the SDKs need one). A cluster
made before the token file stored secrets gets its admin token's secret added by the next
:meth:`LocalCluster.up` (:func:`~kvstore.api.tokens.store_secret`), so SigV4 works with it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeVar

import aiohttp
import tomli_w

import kvstore
from kvstore.api.tokens import Role, create_token, store_secret
from kvstore.config import (
    ClusterConfig,
    ReplicationSpec,
    load_cluster,
    read_secret,
    write_cluster_file,
    write_secret,
)
from kvstore.errors import ConditionFailed, KvError, NotFound, Unavailable, ValidationError
from kvstore.limits import (
    LOCAL_COORDINATORS_MAX,
    LOCAL_DETACH_WAIT_MS,
    LOCAL_LEADERS_TIMEOUT_MS,
    LOCAL_LIVENESS_TIMEOUT_MS,
    LOCAL_LOCK_WAIT_MS,
    LOCAL_LOG_FOLLOW_BYTES_MAX,
    LOCAL_LOG_TAIL_LINES,
    LOCAL_NODES_MAX,
    LOCAL_POLL_MAX_MS,
    LOCAL_PROBE_TIMEOUT_MS,
    LOCAL_RATE_SAMPLE_MS,
    LOCAL_READY_TIMEOUT_MS,
    LOCAL_STOP_TIMEOUT_MS,
    PARTITIONS_DEFAULT,
    PARTITIONS_MAX,
)
from kvstore.replication.operator import MoveOperator, MoveReport, RpcStatusSource
from kvstore.replication.placement import initial_placement
from kvstore.rpc import RpcClient
from kvstore.types import NodeId, PartitionId

if TYPE_CHECKING:
    from kvstore.replication.local_etcd import LocalEtcd

__all__ = [
    "DIR_ENV",
    "DEFAULT_DIR",
    "MARKER_FILE",
    "CLUSTER_FILE",
    "SECRET_FILE",
    "API_TOKENS_FILE",
    "ADMIN_TOKEN_FILE",
    "ADMIN_TOKEN_NAME",
    "DYNAMODB_REGION",
    "ProcessRole",
    "ProcessSpec",
    "PartitionStatus",
    "ProcessStatus",
    "ReplicaView",
    "PartitionReplication",
    "EtcdPorts",
    "UpReport",
    "StopReport",
    "NodeAdded",
    "NodeRemoved",
    "Attachment",
    "StopNotice",
    "LogFollower",
    "LocalCluster",
    "resolve_dir",
    "read_pid_file",
    "process_command_line",
    "command_matches",
    "free_ports",
    "tail_lines",
    "replication_summary",
    "ETCD_ID",
]

T = TypeVar("T")

DIR_ENV: Final = "KVSTORE_DIR"
DEFAULT_DIR: Final = ".kvstore"
MARKER_FILE: Final = "kvstore-local.json"
CLUSTER_FILE: Final = "cluster.toml"
SECRET_FILE: Final = "secret"
API_TOKENS_FILE: Final = "api_tokens.toml"
ADMIN_TOKEN_FILE: Final = "admin.token"
ADMIN_TOKEN_NAME: Final = "admin"
DYNAMODB_REGION: Final = "us-east-1"  # AWS_DEFAULT_REGION of `kvctl cluster env` (any works)
DATA_DIR: Final = "data"
LOGS_DIR: Final = "logs"
RUN_DIR: Final = "run"
LOCK_FILE: Final = "kvctl.lock"
ATTACH_FILE: Final = "foreground.lock"
NOTICE_FILE: Final = "foreground.stop"
ETCD_DIR: Final = "etcd"
ETCD_ID: Final = "etcd"  # its pid file run/etcd.pid, its row in status, its name in reports

_DIR_FIELD: Final = "--dir"  # what errors about the directory name: the option that picks it
_MARKER_KIND: Final = "kvstore-local-cluster"
_MARKER_FORMAT: Final = 1
_CLUSTER_ID_PATTERN: Final = re.compile(r"lc-[0-9a-f]{16}")
_HEADER_PATTERN: Final = re.compile(r"# kvstore local cluster (lc-[0-9a-f]{16})\b")
_NODE_ID_PATTERN: Final = re.compile(r"n([0-9]{1,6})")
_HOST: Final = "127.0.0.1"
_MODULES: Final[Mapping[str, str]] = {
    "node": "kvstore.storage_node",
    "coordinator": "kvstore.coordinator",
}
_HEALTH_PATHS: Final[Mapping[str, str]] = {
    "node": "/health",
    "coordinator": "/v1/health",
    "etcd": "/health",
}
_KILL_GRACE_S: Final = 2.0  # after SIGKILL, how long to wait for the process table to agree
_TAIL_READ_BYTES: Final = 64 * 1024
_PROCESS_UMASK: Final = 0o077  # a spawned process's files (data, logs it makes): owner only
_RESET_SIGNALS: Final = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTERM,
)

ProcessRole = Literal["node", "coordinator", "etcd"]

_probe_log = logging.getLogger("kvstore.localcluster.probe")
_probe_log.addHandler(logging.NullHandler())
_probe_log.propagate = False  # a down node during `status` is an answer, not a warning


# --- pure helpers ----------------------------------------------------------------------------


def resolve_dir(
    given: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Path:
    """The cluster directory, absolute: ``given`` (``--dir``), else ``$KVSTORE_DIR``, else
    ``./.kvstore``."""
    env = os.environ if environ is None else environ
    raw = given if given is not None and str(given) != "" else env.get(DIR_ENV) or DEFAULT_DIR
    return Path(raw).expanduser().resolve()


def read_pid_file(path: Path) -> int | None:
    """The pid a pid file holds; None when it is missing, unreadable or not one positive int."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if pid > 0 else None


def process_command_line(pid: int) -> list[str] | None:
    """The argv of a live process; None when there is none (or it is a zombie)."""
    proc = Path("/proc")
    if proc.is_dir():
        try:
            data = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        if not data:
            return None  # a zombie or a kernel thread
        return [part.decode("utf-8", "surrogateescape") for part in data.rstrip(b"\0").split(b"\0")]
    try:  # no /proc (macOS, BSD): ask ps; a path with spaces splits, good enough for a dev box
        result = subprocess.run(
            ["ps", "-ww", "-o", "stat=,command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=LOCAL_PROBE_TIMEOUT_MS / 1000,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) < 2 or fields[0].startswith("Z"):
        return None
    return fields[1:]


def _option(argv: Sequence[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def command_matches(argv: Sequence[str], spec: ProcessSpec, config_path: Path) -> bool:
    """Whether ``argv`` is ``spec``'s process of the cluster whose file is ``config_path``."""
    return (
        _MODULES[spec.role] in argv
        and _option(argv, "--config") == str(config_path)
        and _option(argv, "--id") == spec.process_id
    )


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all sockets held open until every port is known)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((_HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (never wider), failing if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _replace_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically (mode 0600): write a temporary file, fsync it, rename it
    over ``path``. On failure (a full disk) the temporary file is removed and ``path`` is left
    as it was; the error names ``path``."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a temporary file left by an older kvctl may be wider
            data = text.encode("utf-8")
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        if error.filename != str(path):
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def tail_lines(path: Path, offset: int, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` written after byte ``offset``."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            start = max(offset, size - _TAIL_READ_BYTES)
            file.seek(start)
            data = file.read(size - start)
    except OSError:
        return []
    text = data.decode("utf-8", "replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _counter_sum(text: str, name: str, label: str, excluded: frozenset[str]) -> float | None:
    """Sum a Prometheus counter's samples over its label sets, skipping ``label`` in ``excluded``.

    None when ``text`` has no sample of ``name`` at all (the process serves no such counter).
    """
    total = 0.0
    seen = False
    prefix = name + "{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, _, rest = line[len(prefix) :].partition("} ")
        match = re.search(rf'(?:^|,){label}="([^"]*)"', labels)
        if match is not None and match.group(1) in excluded:
            seen = True
            continue
        try:
            total += float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        seen = True
    return total if seen else None


# --- what a cluster is made of ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process of the cluster file."""

    role: ProcessRole
    process_id: str
    address: str  # host:port

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def health_url(self) -> str:
        return self.url + _HEALTH_PATHS[self.role]

    def argv(self, config_path: Path) -> list[str]:
        """The command that runs this process (``-P``: the working directory is not imported)."""
        module = _MODULES[self.role]
        return [
            sys.executable,
            "-P",
            "-m",
            module,
            "--config",
            str(config_path),
            "--id",
            self.process_id,
        ]


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    items: int | None  # live items, from the node's stats; None when the node did not answer
    intents: int | None
    open_ledger_records: int | None

    def to_json(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "items": self.items,
            "intents": self.intents,
            "open_ledger_records": self.open_ledger_records,
        }


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One node's view of one partition it replicates (its replicator's status entry)."""

    partition: int
    node: str  # whose view
    leader: str
    replicas: tuple[str, ...]
    epoch: int  # the leadership's epoch in the map this node follows
    position: tuple[int, int]  # (epoch, seq) of the last batch this node holds
    serving: bool | None = None  # where this node leads: serving now
    lag: Mapping[str, int] | None = None  # where this node leads: batches each follower lacks
    learners: tuple[str, ...] = ()  # replicas being filled by a move (they count in no majority)

    def to_json(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "leader": self.leader,
            "replicas": list(self.replicas),
            "learners": list(self.learners),
            "epoch": self.epoch,
            "position": list(self.position),
            "serving": self.serving,
            "lag": None if self.lag is None else dict(self.lag),
        }


@dataclass(frozen=True, slots=True)
class PartitionReplication:
    """One partition of a replicated cluster, as ``kvctl cluster status`` shows it: from the
    view with the highest epoch, the leader's own view (serving, lag) and every holder's
    position."""

    partition: int
    replicas: tuple[str, ...]
    leader: str
    epoch: int
    serving: bool  # the leader says it serves
    positions: Mapping[str, tuple[int, int]]  # node -> (epoch, seq) it holds
    lag: Mapping[str, int] | None  # follower -> batches behind the leader (None: no leader view)
    learners: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "replicas": list(self.replicas),
            "learners": list(self.learners),
            "leader": self.leader,
            "epoch": self.epoch,
            "serving": self.serving,
            "positions": {node: list(pos) for node, pos in self.positions.items()},
            "lag": None if self.lag is None else dict(self.lag),
        }


@dataclass(frozen=True, slots=True)
class EtcdPorts:
    """The loopback ports of a replicated local cluster's private etcd."""

    client: int
    peer: int


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """What ``kvctl cluster status`` shows of one process."""

    role: ProcessRole
    process_id: str
    address: str
    pid: int | None  # None when not running
    # "ok", "disk full" (a node refusing writes until space is freed: it still serves reads),
    # "failed" (a node after a failed flush), "unreachable", "down"
    health: str
    log: Path
    partitions: tuple[PartitionStatus, ...] | None = None  # nodes only
    requests_per_s: float | None = None
    uptime_s: float | None = None
    replication: tuple[ReplicaView, ...] | None = None  # nodes of a replicated cluster

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def healthy(self) -> bool:
        return self.health == "ok"

    @property
    def items(self) -> int | None:
        return _total(self.partitions, "items")

    @property
    def intents(self) -> int | None:
        return _total(self.partitions, "intents")

    def to_json(self) -> dict[str, object]:
        return {
            "role": self.role,
            "id": self.process_id,
            "address": self.address,
            "url": self.url,
            "pid": self.pid,
            "health": self.health,
            "healthy": self.healthy,
            "requests_per_s": self.requests_per_s,
            "uptime_s": self.uptime_s,
            "items": self.items,
            "intents": self.intents,
            "partitions": None
            if self.partitions is None
            else [partition.to_json() for partition in self.partitions],
            "replication": None
            if self.replication is None
            else [view.to_json() for view in self.replication],
            "log": str(self.log),
        }


def replication_summary(statuses: Sequence[ProcessStatus]) -> list[PartitionReplication]:
    """One row per partition from the nodes' views (see :class:`PartitionReplication`)."""
    views: dict[int, list[ReplicaView]] = {}
    for status in statuses:
        for view in status.replication or ():
            views.setdefault(view.partition, []).append(view)
    rows: list[PartitionReplication] = []
    for partition in sorted(views):
        seen = views[partition]
        newest = max(seen, key=lambda view: view.epoch)
        own = next((v for v in seen if v.node == newest.leader and v.epoch == newest.epoch), None)
        rows.append(
            PartitionReplication(
                partition=partition,
                replicas=newest.replicas,
                leader=newest.leader,
                epoch=newest.epoch,
                serving=own is not None and own.serving is True,
                positions={view.node: view.position for view in seen},
                lag=None if own is None else own.lag,
                learners=newest.learners,
            )
        )
    return rows


def _total(partitions: tuple[PartitionStatus, ...] | None, name: str) -> int | None:
    if partitions is None:
        return None
    total = 0
    for partition in partitions:
        value = getattr(partition, name)
        if not isinstance(value, int):
            return None
        total += value
    return total


@dataclass(frozen=True, slots=True)
class NodeAdded:
    """What ``kvctl node add`` made: the node, its address and its pid."""

    node: str
    address: str
    pid: int

    def to_json(self) -> dict[str, object]:
        return {"node": self.node, "address": self.address, "pid": self.pid}


@dataclass(frozen=True, slots=True)
class NodeRemoved:
    """What ``kvctl node remove`` did: the moves of the replicas the node held, the learner
    copies dropped, and how its process ended (None: it was not running)."""

    node: str
    moves: tuple[MoveReport, ...]
    learners_dropped: tuple[int, ...]
    stopped: Literal["terminated", "killed"] | None

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "moves": [move.to_json() for move in self.moves],
            "learners_dropped": list(self.learners_dropped),
            "stopped": self.stopped,
        }


@dataclass(frozen=True, slots=True)
class Attachment:
    """The ``kvctl cluster up --foreground`` session attached to a cluster."""

    pid: int
    started: str  # RFC 3339
    session: str  # random; a stop notice names it, so it reaches this session only

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "started": self.started}


@dataclass(frozen=True, slots=True)
class UpReport:
    """What :meth:`LocalCluster.up` did."""

    started: tuple[str, ...]
    already_running: tuple[str, ...]
    pids: Mapping[str, int]
    log_offsets: Mapping[str, int]  # where each log stood before this run's processes wrote
    attached: Attachment | None = None  # a foreground session (of another kvctl) attached


@dataclass(frozen=True, slots=True)
class StopReport:
    """What :meth:`LocalCluster.down` did: ids stopped by SIGTERM, by SIGKILL, not running,
    and the attached foreground session it told to exit."""

    terminated: tuple[str, ...]
    killed: tuple[str, ...]
    not_running: tuple[str, ...]
    attached: Attachment | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "terminated": list(self.terminated),
            "killed": list(self.killed),
            "not_running": list(self.not_running),
        }


@dataclass(frozen=True, slots=True)
class StopNotice:
    """``cluster down`` (process ``by_pid``) is stopping, or has stopped (``report``), the
    cluster an attached session runs."""

    by_pid: int
    at: str  # RFC 3339
    report: StopReport | None  # None until the stop is complete


# --- following logs --------------------------------------------------------------------------


class LogFollower:
    """New complete lines of several log files (``kvctl cluster up --foreground``).

    Each :meth:`poll` reads at most ``LOCAL_LOG_FOLLOW_BYTES_MAX`` bytes per file; a file that
    shrank (truncated by hand) is read again from its start.
    """

    def __init__(self, files: Mapping[str, Path], offsets: Mapping[str, int]) -> None:
        self._files = dict(files)
        self._offsets = {process_id: offsets.get(process_id, 0) for process_id in files}

    def poll(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for process_id, path in self._files.items():
            offset = self._offsets[process_id]
            try:
                with path.open("rb") as file:
                    size = file.seek(0, os.SEEK_END)
                    if size < offset:
                        offset = 0
                    if size == offset:
                        continue
                    file.seek(offset)
                    data = file.read(LOCAL_LOG_FOLLOW_BYTES_MAX)
            except OSError:
                continue
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) < LOCAL_LOG_FOLLOW_BYTES_MAX:
                    continue  # a partial line: wait for the rest
                end = len(data) - 1  # one huge line: show it in pieces rather than stall
            chunk = data[: end + 1]
            self._offsets[process_id] = offset + len(chunk)
            for line in chunk.decode("utf-8", "replace").splitlines():
                out.append((process_id, line))
        return out


# --- the cluster -----------------------------------------------------------------------------


@dataclass
class _Probe:
    health: str = "unreachable"
    stats: Mapping[str, object] | None = None
    counter: float | None = None
    counter_at: float = 0.0
    rate: float | None = None


class LocalCluster:
    """One local cluster directory; see the module docstring."""

    def __init__(
        self,
        root: Path,
        cluster_id: str,
        created: str,
        config: ClusterConfig,
        etcd_ports: EtcdPorts | None = None,
    ) -> None:
        self.root = root
        self.cluster_id = cluster_id
        self.created = created
        self.config = config
        self.etcd_ports = etcd_ports  # a replicated cluster's private etcd
        self._etcd: LocalEtcd | None = None  # the member object, once this object used it
        self._children: dict[str, int] = {}  # id -> pid of processes this object spawned
        self._exit_codes: dict[str, int] = {}  # id -> exit status of reaped children
        self._lock_depth = 0
        self._attach_fd: int | None = None  # run/foreground.lock, while this object is attached
        self._attachment: Attachment | None = None

    # --- create and open -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        nodes: int = 3,
        coordinators: int = 0,
        partitions: int = PARTITIONS_DEFAULT,
        replication_factor: int = 1,
    ) -> LocalCluster:
        """Make a new cluster in ``root``, which must be missing or an empty directory. Every
        node serves the API; ``coordinators`` adds standalone coordinator processes; a
        ``replication_factor`` above 1 keeps each partition on that many nodes, with a private
        etcd as the control plane (see the module docstring)."""
        _check_count("--nodes", nodes, 1, LOCAL_NODES_MAX)
        _check_count("--coordinators", coordinators, 0, LOCAL_COORDINATORS_MAX)
        _check_count("--partitions", partitions, nodes, PARTITIONS_MAX)
        _check_count("--replication-factor", replication_factor, 1, nodes)
        if replication_factor > 1 and coordinators:
            raise ValidationError(
                "--coordinators",
                "standalone coordinators do not follow a replicated cluster's leaders yet; "
                "every node serves the API and coordinates (leave out --coordinators)",
            )
        root = root.absolute()
        if root.exists() and not _is_empty_dir(root):
            cls.open(root)  # says why this directory will not do
            raise ValidationError(_DIR_FIELD, f"a cluster already exists in {root}")
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.creating-", dir=root.parent))
        try:
            cluster_id = _populate(staging, nodes, coordinators, partitions, replication_factor)
            try:
                os.rename(staging, root)  # replaces an empty directory; never a non-empty one
            except OSError as error:
                if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise ValidationError(
                        _DIR_FIELD, f"{root} was filled by someone else while kvctl was creating it"
                    ) from None
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        cluster = cls.open(root)
        assert cluster.cluster_id == cluster_id
        return cluster

    @classmethod
    def open(cls, root: Path) -> LocalCluster:
        """The cluster in ``root``; ``NotFound`` when there is none, ``ValidationError`` when the
        directory holds something else."""
        root = root.absolute()
        if not root.exists() or _is_empty_dir(root):
            raise NotFound(
                f"no cluster in {root}; run `kvctl cluster up{_dir_hint(root)}`",
                details={"dir": str(root)},
            )
        if not root.is_dir():
            raise ValidationError(
                _DIR_FIELD, f"{root} is not a directory; pass --dir with another one"
            )
        marker_path = root / MARKER_FILE
        if not marker_path.is_file():
            found = (
                " (it has a cluster.toml kvctl did not write)"
                if (root / CLUSTER_FILE).exists()
                else ""
            )
            raise ValidationError(
                _DIR_FIELD,
                f"{root} is not a local cluster directory{found}: no {MARKER_FILE}; "
                "pass --dir with a new or empty directory",
            )
        cluster_id, created, etcd_ports = _read_marker(marker_path)
        config_path = root / CLUSTER_FILE
        try:
            first_line = config_path.read_text(encoding="utf-8").partition("\n")[0]
        except FileNotFoundError:
            raise ValidationError(
                _DIR_FIELD,
                f"{root} has {MARKER_FILE} but no {CLUSTER_FILE}; the directory is damaged",
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ValidationError(_DIR_FIELD, f"cannot read {config_path}: {error}") from None
        header = _HEADER_PATTERN.match(first_line)
        if header is None or header.group(1) != cluster_id:
            other = (
                "a cluster.toml kvctl did not write"
                if header is None
                else (f"the cluster file of cluster {header.group(1)}")
            )
            raise ValidationError(
                _DIR_FIELD,
                f"{root} mixes two clusters: {MARKER_FILE} names {cluster_id} but {CLUSTER_FILE} "
                f"is {other}; pass --dir with a new or empty directory",
            )
        config = load_cluster(config_path)
        if config.replication.replicated and etcd_ports is None:
            raise ValidationError(
                _DIR_FIELD,
                f"{root}: {CLUSTER_FILE} is replicated but {MARKER_FILE} names no etcd ports; "
                "the directory is damaged",
            )
        return cls(root, cluster_id, created, config, etcd_ports)

    @classmethod
    def open_or_create(
        cls,
        root: Path,
        *,
        nodes: int = 3,
        coordinators: int = 0,
        partitions: int = PARTITIONS_DEFAULT,
        replication_factor: int = 1,
    ) -> tuple[LocalCluster, bool]:
        """The cluster in ``root``, made first when there is none; True when made now."""
        try:
            return cls.open(root), False
        except NotFound:
            pass
        try:
            return cls.create(
                root,
                nodes=nodes,
                coordinators=coordinators,
                partitions=partitions,
                replication_factor=replication_factor,
            ), True
        except ValidationError:
            if (root / MARKER_FILE).is_file():  # a concurrent `up` made it first
                return cls.open(root), False
            raise

    # --- layout --------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.config.path

    @property
    def admin_token_path(self) -> Path:
        return self.root / ADMIN_TOKEN_FILE

    def processes(self) -> list[ProcessSpec]:
        """Nodes, then coordinators, in cluster-file order."""
        nodes = [ProcessSpec("node", nid, spec.address) for nid, spec in self.config.nodes.items()]
        coordinators = [
            ProcessSpec("coordinator", cid, spec.address)
            for cid, spec in self.config.coordinators.items()
        ]
        return [*nodes, *coordinators]

    def process(self, process_id: str) -> ProcessSpec:
        for spec in self.processes():
            if spec.process_id == process_id:
                return spec
        known = ", ".join(spec.process_id for spec in self.processes())
        raise ValidationError(
            "id", f"no process {process_id!r} in {self.root} (processes: {known})"
        )

    def pid_path(self, process_id: str) -> Path:
        return self.root / RUN_DIR / f"{process_id}.pid"

    def log_path(self, process_id: str) -> Path:
        return self.root / LOGS_DIR / f"{process_id}.log"

    def api_url(self) -> str:
        """The public API of the first coordinator, else of the first node (every node
        serves it)."""
        processes = self.processes()
        coordinators = processes[len(self.config.nodes) :]
        return (coordinators or processes)[0].url

    def admin_token(self) -> str:
        """The admin API token (``admin.token``; refused if group or others may read it)."""
        path = self.admin_token_path
        try:
            mode = path.stat().st_mode & 0o777
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ValidationError(
                "admin_token", f"{path} is missing; create a token with kvstore.api.tokens"
            ) from None
        if mode & 0o077:
            raise ValidationError(
                "admin_token", f"{path} is readable by others (mode {mode:o}); chmod 600 it"
            )
        return token

    def env(self) -> dict[str, str]:
        """``KV_URL`` and ``KV_TOKEN`` for the SDK, curl and kvctl's data commands, and the
        AWS SDKs' variables for the DynamoDB endpoint (the admin token as SigV4 credentials)."""
        url, token = self.api_url(), self.admin_token()
        return {
            "KV_URL": url,
            "KV_TOKEN": token,
            "AWS_ENDPOINT_URL_DYNAMODB": url,
            "AWS_ACCESS_KEY_ID": ADMIN_TOKEN_NAME,
            "AWS_SECRET_ACCESS_KEY": token,
            "AWS_DEFAULT_REGION": DYNAMODB_REGION,
        }

    def _store_admin_secret(self) -> None:
        """Give the admin token's entry its secret when the token file predates secrets (see
        the module docstring); nothing when it has one, or the admin token is gone."""
        with contextlib.suppress(ValidationError):  # no admin.token, or revoked: nothing to add
            store_secret(self.config.api_tokens_file, self.admin_token())

    # --- replication -------------------------------------------------------------------------

    @property
    def replicated(self) -> bool:
        return self.config.replication.replicated

    def held_by(self, node: str) -> tuple[PartitionId, ...]:
        """The partitions ``node`` holds: those it owns, or in a replicated cluster those it
        replicates by the first placement (moves change it: the live map is in etcd, and each
        node's status says what it holds now)."""
        spec, cluster_map = self.config.replication, self.config.cluster_map
        if not spec.replicated:
            return cluster_map.partitions_of(NodeId(node))
        placement = initial_placement(
            tuple(self.config.nodes), cluster_map.partitions.partition_count, spec.factor
        )
        return placement.replicated_on(NodeId(node))

    def etcd(self) -> LocalEtcd:
        """The private etcd of this replicated cluster (``ValidationError`` for another)."""
        from kvstore.replication.local_etcd import LocalEtcd  # noqa: PLC0415 - a cycle otherwise

        ports = self.etcd_ports
        if ports is None:
            raise ValidationError(_DIR_FIELD, f"the cluster in {self.root} is not replicated")
        if self._etcd is None:
            self._etcd = LocalEtcd(
                self.root / ETCD_DIR, fsync=True, client_port=ports.client, peer_port=ports.peer
            )
        return self._etcd

    def _etcd_spec(self) -> ProcessSpec:
        return ProcessSpec("etcd", ETCD_ID, self.etcd().client_url.removeprefix("http://"))

    def etcd_running(self) -> int | None:
        """The pid of this cluster's etcd while it runs (its pid file repaired from the process
        table when it is missing or stale); None when it does not run or there is none."""
        if self.etcd_ports is None:
            return None
        etcd = self.etcd()
        member = str(etcd.member_dir)
        pid = read_pid_file(self.pid_path(ETCD_ID))
        if pid is not None and (etcd.pid == pid or _runs_etcd(process_command_line(pid), member)):
            return pid
        for found, argv in _process_table(member):
            if _runs_etcd(argv, member):
                with contextlib.suppress(OSError):  # a repair only (see running())
                    self._write_pid(ETCD_ID, found)
                return found
        return None

    def _start_etcd(self, ready_timeout_ms: int) -> bool:
        """Start the private etcd unless it runs; True when started now."""
        if self.etcd_running() is not None:
            return False
        etcd = self.etcd()
        umask = os.umask(_PROCESS_UMASK)  # its data and log: owner only
        try:
            etcd.start(ready_timeout_ms=ready_timeout_ms)
        finally:
            os.umask(umask)
        pid = etcd.detach()  # it runs on after kvctl exits; `down` stops it by pid
        assert pid is not None
        try:
            self._write_pid(ETCD_ID, pid)
        except OSError:
            etcd.stop()  # never a process without its pid file (see _spawn)
            raise
        return True

    def _stop_etcd(self, stop_timeout_ms: int) -> Literal["terminated", "killed"] | None:
        """Stop the private etcd (SIGTERM, SIGKILL after ``stop_timeout_ms``) if it runs; how."""
        pid = self.etcd_running()
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_path(ETCD_ID).unlink()
            return None
        etcd = self.etcd()
        how: Literal["terminated", "killed"] = "terminated"
        if etcd.pid == pid:  # started by this object: stop and reap it
            how = "killed" if etcd.stop(stop_timeout_ms=stop_timeout_ms) == -signal.SIGKILL else how
        else:
            member = str(etcd.member_dir)

            def gone() -> bool:
                return not _runs_etcd(process_command_line(pid), member)

            _signal(pid, signal.SIGTERM)
            if not _poll_until(gone, stop_timeout_ms / 1000):
                how = "killed"
                _signal(pid, signal.SIGKILL)
                if not _poll_until(gone, _KILL_GRACE_S):
                    raise Unavailable(f"could not stop etcd (pid {pid}), even with SIGKILL")
        with contextlib.suppress(FileNotFoundError):
            self.pid_path(ETCD_ID).unlink()
        return how

    def wait_serving(self, *, timeout_ms: int = LOCAL_LEADERS_TIMEOUT_MS) -> None:
        """Wait until every partition has a leader serving it (each node's ``/health`` lists
        the partitions it serves); ``Unavailable`` naming those without one at the deadline."""
        wanted = set(range(self.config.cluster_map.partitions.partition_count))
        nodes = [spec for spec in self.processes() if spec.role == "node"]
        deadline = time.monotonic() + timeout_ms / 1000
        delay_s = 0.02
        while True:
            serving: set[int] = set()
            for spec in nodes:
                body = _health_body(spec.health_url, LOCAL_PROBE_TIMEOUT_MS / 1000)
                listed = body.get("serving") if body is not None else None
                if isinstance(listed, list):
                    serving.update(pid for pid in listed if isinstance(pid, int))
            missing = sorted(wanted - serving)
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"partitions {missing} have no serving leader after {timeout_ms / 1000:g} s; "
                    f"the nodes' logs are in {self.root / LOGS_DIR}",
                    details={"partitions": missing},
                )
            time.sleep(delay_s)  # leader polling, capped backoff, bounded by the deadline
            delay_s = min(delay_s * 2, LOCAL_POLL_MAX_MS / 1000)

    # --- moves, nodes added and removed ------------------------------------------------------

    def move_partition(
        self,
        pid: int,
        to_node: str,
        from_node: str | None = None,
        *,
        note: Callable[[str], None] | None = None,
    ) -> MoveReport:
        """Move a replica of partition ``pid`` to ``to_node`` (from ``from_node``, else one the
        operator chooses), online; :mod:`kvstore.replication.operator` says how. One move of a
        partition at a time: ``ConditionFailed`` while another kvctl moves it."""
        self._require_replicated("partition move")
        self.config = load_cluster(self.config_path)
        count = self.config.cluster_map.partitions.partition_count
        if isinstance(pid, bool) or not 0 <= pid < count:
            raise ValidationError("partition", f"no partition {pid} (0..{count - 1})")
        for name, node in (("--to", to_node), ("--from", from_node)):
            if node is not None and NodeId(node) not in self.config.nodes:
                raise ValidationError(
                    name, f"no node {node!r} in {self.config_path} ({' '.join(self.config.nodes)})"
                )
        with self._partition_lock(pid):
            return asyncio.run(
                self._operate(lambda op: op.move_replica(pid, to_node, from_node), note)
            )

    def add_node(self, *, ready_timeout_ms: int = LOCAL_READY_TIMEOUT_MS) -> NodeAdded:
        """Make a new node (the next free id, a free loopback port, added to the cluster file),
        start it and wait until it is healthy and live in etcd; it holds no replica until
        ``partition move`` gives it some. On failure nothing of it is left (process, file
        entry)."""
        self._require_replicated("node add")
        with self.locked():
            if len(self.config.nodes) >= LOCAL_NODES_MAX:
                raise ValidationError(
                    "node", f"a local cluster has at most {LOCAL_NODES_MAX} nodes"
                )
            if self.etcd_running() is None:
                raise Unavailable(
                    f"etcd of the cluster in {self.root} is not running; run `kvctl cluster up"
                    f"{_dir_hint(self.root)}` first"
                )
            node = self._next_node_id()
            address = f"{_HOST}:{free_ports(1)[0]}"
            before = self.config_path.read_text(encoding="utf-8")
            self._edit_cluster_file(
                lambda doc: _table_of(doc, "nodes").update(
                    {node: {"address": address, "data_dir": f"{DATA_DIR}/{node}"}}
                )
            )
            pid: int | None = None
            try:
                log = self.log_path(node)
                offset = log.stat().st_size if log.exists() else 0
                pid = self._spawn(self.process(node))
                self.wait_healthy(
                    ready_timeout_ms=ready_timeout_ms,
                    log_offsets={node: offset},
                    process_ids=(node,),
                )
                asyncio.run(self._operate(lambda op: _until_live(op, NodeId(node)), None))
            except BaseException:
                if pid is not None:
                    self._stop_one(node, LOCAL_STOP_TIMEOUT_MS)
                _replace_file(self.config_path, before)
                self.config = load_cluster(self.config_path)
                raise
            return NodeAdded(node=node, address=address, pid=pid)

    def remove_node(
        self,
        node: str,
        *,
        note: Callable[[str], None] | None = None,
        stop_timeout_ms: int = LOCAL_STOP_TIMEOUT_MS,
    ) -> NodeRemoved:
        """Move every replica ``node`` holds to the live node holding the fewest (a learner
        copy is dropped), then stop it and take it out of the cluster file. Its data directory
        and log stay. ``ValidationError`` when fewer nodes than the replication factor would
        remain; ``Unavailable`` when a move cannot finish (the map is left resumable: run the
        same command again)."""
        self._require_replicated("node remove")
        with self.locked():
            if NodeId(node) not in self.config.nodes:
                raise ValidationError(
                    "node",
                    f"no node {node!r} in {self.config_path} ({' '.join(self.config.nodes)})",
                )
            factor = self.config.replication.factor
            if len(self.config.nodes) - 1 < factor:
                raise ValidationError(
                    "node",
                    f"removing {node} would leave {len(self.config.nodes) - 1} nodes for a "
                    f"replication factor of {factor}; add one first (kvctl node add)",
                )
        moves, dropped = asyncio.run(self._operate(lambda op: self._drain(op, NodeId(node)), note))
        with self.locked():
            stopped = self._stop_one(node, stop_timeout_ms)
            self._edit_cluster_file(lambda doc: _table_of(doc, "nodes").pop(node, None))
        return NodeRemoved(
            node=node, moves=tuple(moves), learners_dropped=tuple(dropped), stopped=stopped
        )

    async def _drain(self, op: MoveOperator, node: NodeId) -> tuple[list[MoveReport], list[int]]:
        """Move every replica off ``node``, one partition after the other; the moves, and
        the partitions whose learner copy on it was dropped."""
        moves: list[MoveReport] = []
        dropped: list[int] = []
        partitions = self.config.cluster_map.partitions.partition_count
        for _ in range(2 * partitions + 1):  # a move or a dropped learner per round
            placement, _ = await op.read_map()
            held = placement.replicated_on(node)
            if not held:
                return moves, dropped
            pid = held[0]
            part = placement.of(pid)
            with self._partition_lock(pid):
                if node in part.learners:
                    await op.drop_learner(pid, node)
                    dropped.append(pid)
                    continue
                live = await op.live_nodes()
                order = list(self.config.nodes)
                candidates = [
                    candidate
                    for candidate in order
                    if candidate != node and candidate not in part.holders and candidate in live
                ]
                if not candidates:
                    raise Unavailable(
                        f"no live node can take partition {pid}'s replica from {node} (replicas "
                        f"{' '.join(part.replicas)}; live {' '.join(sorted(live))}); add one "
                        "with `kvctl node add`, or start the stopped ones",
                        details={"partition": pid},
                    )
                target = min(
                    candidates,
                    key=lambda c: (len(placement.replicated_on(c)), order.index(c)),
                )
                moves.append(await op.move_replica(pid, target, node))
        raise Unavailable(f"{node} still holds replicas after moving them away", details={})

    async def _operate(
        self,
        work: Callable[[MoveOperator], Awaitable[T]],
        note: Callable[[str], None] | None,
    ) -> T:
        """``work`` with a move operator on this cluster's etcd and nodes, closed after."""
        from kvstore.replication.etcd import EtcdControlPlane  # noqa: PLC0415 - see etcd()

        spec = self.config.replication
        addresses = {nid: node.address for nid, node in self.config.nodes.items()}
        control = EtcdControlPlane(spec.endpoints)
        statuses = RpcStatusSource(read_secret(self.config.secret_file), addresses)
        operator = MoveOperator(
            control, spec.prefix, statuses, replication_factor=spec.factor, note=note
        )
        try:
            return await work(operator)
        finally:
            await statuses.close()
            await control.aclose()

    def _require_replicated(self, command: str) -> None:
        if not self.replicated:
            raise ValidationError(
                _DIR_FIELD,
                f"`kvctl {command}` needs a replicated cluster (`kvctl cluster up "
                f"--replication-factor N` when it is created); the cluster in {self.root} has "
                "one copy of each partition",
            )

    @contextlib.contextmanager
    def _partition_lock(self, pid: int) -> Iterator[None]:
        """Hold ``run/move-p<pid>.lock``: one move of a partition at a time, across kvctls."""
        path = self.root / RUN_DIR / f"move-p{int(pid)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConditionFailed(
                    f"another kvctl is moving partition {pid} of the cluster in {self.root}; "
                    "let it finish",
                    details={"partition": pid},
                ) from None
            yield
        finally:
            os.close(fd)  # releases the lock

    def _next_node_id(self) -> str:
        """``n<k>`` above every node id the cluster file, the data and the logs have seen, so
        a removed node's data or log is never taken for a new node's."""
        seen: list[str] = [*self.config.nodes]
        for folder in (self.root / DATA_DIR, self.root / LOGS_DIR):
            if folder.is_dir():
                seen += [entry.name.removesuffix(".log") for entry in folder.iterdir()]
        numbers = [int(m.group(1)) for m in map(_NODE_ID_PATTERN.fullmatch, seen) if m]
        return f"n{max(numbers, default=0) + 1}"

    def _edit_cluster_file(self, change: Callable[[dict[str, object]], object]) -> None:
        """Apply ``change`` to the cluster file's document and write it back atomically (its
        header comment kept), after checking that the result loads."""
        text = self.config_path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        header = "".join(
            itertools.takewhile(lambda line: line.startswith("#") or not line.strip(), lines)
        )
        doc: dict[str, object] = tomllib.loads(text)
        change(doc)
        new_text = header + tomli_w.dumps(doc)
        check = self.root / f".{CLUSTER_FILE}.check"
        try:
            _replace_file(check, new_text)
            load_cluster(check)  # what the processes will read must load
        finally:
            with contextlib.suppress(FileNotFoundError):
                check.unlink()
        _replace_file(self.config_path, new_text)
        self.config = load_cluster(self.config_path)

    def _stop_one(
        self, process_id: str, stop_timeout_ms: int
    ) -> Literal["terminated", "killed"] | None:
        """Stop one process of the cluster (SIGTERM, SIGKILL after ``stop_timeout_ms``) and
        remove its pid file; how it ended, None when it was not running."""
        spec = self.process(process_id)
        pid = self.running().get(process_id)
        how: Literal["terminated", "killed"] | None = None
        if pid is not None:
            how = "terminated"
            _signal(pid, signal.SIGTERM)
            left = self._wait_gone({spec: pid}, stop_timeout_ms / 1000)
            if left:
                how = "killed"
                _signal(pid, signal.SIGKILL)
                if self._wait_gone(left, _KILL_GRACE_S):
                    raise Unavailable(f"could not stop {process_id} (pid {pid}), even with SIGKILL")
        with contextlib.suppress(FileNotFoundError):
            self.pid_path(process_id).unlink()
        return how

    # --- which processes run ---------------------------------------------------------------

    def running(self) -> dict[str, int]:
        """id -> pid of every process of this cluster that is running (pid files repaired)."""
        found: dict[str, int] = {}
        missing: list[ProcessSpec] = []
        for spec in self.processes():
            pid = read_pid_file(self.pid_path(spec.process_id))
            if pid is not None and self._is_ours(pid, spec):
                found[spec.process_id] = pid
            else:
                missing.append(spec)
        if missing:
            for spec, pid in self._scan(missing).items():
                found[spec.process_id] = pid
                # A repair only: the scan finds the process again if this fails (a full disk
                # must not stop `status` or `down` from working).
                with contextlib.suppress(OSError):
                    self._write_pid(spec.process_id, pid)
        return found

    def _is_ours(self, pid: int, spec: ProcessSpec) -> bool:
        if self._children.get(spec.process_id) == pid:
            # Our own child: waitpid knows. (Its command line may still read empty for an
            # instant after posix_spawn returns: the kernel wakes the parent before the new
            # program's arguments are in place.)
            return self._reap(spec.process_id) is None
        argv = process_command_line(pid)
        return argv is not None and command_matches(argv, spec, self.config_path)

    def _scan(self, specs: Sequence[ProcessSpec]) -> dict[ProcessSpec, int]:
        """Processes of ``specs`` found in the process table (when pid files do not say)."""
        out: dict[ProcessSpec, int] = {}
        config = str(self.config_path)
        for pid, argv in _process_table(config):
            for spec in specs:
                if spec not in out and command_matches(argv, spec, self.config_path):
                    out[spec] = pid
        return out

    def _write_pid(self, process_id: str, pid: int) -> None:
        _replace_file(self.pid_path(process_id), f"{pid}\n")

    def _reap(self, process_id: str) -> int | None:
        """The exit status of a child this object spawned once it ended; None while it runs."""
        if process_id in self._exit_codes:
            return self._exit_codes[process_id]
        pid = self._children.get(process_id)
        if pid is None:
            return None
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0  # reaped elsewhere; the status is lost
        if done == 0:
            return None
        del self._children[process_id]
        self._exit_codes[process_id] = os.waitstatus_to_exitcode(status)
        return self._exit_codes[process_id]

    # --- up ------------------------------------------------------------------------------

    def up(self, *, ready_timeout_ms: int = LOCAL_READY_TIMEOUT_MS) -> UpReport:
        """Start every process that is not running (a replicated cluster's etcd first), then
        wait until all answer health (and, replicated, until every partition is served)."""
        with self.locked():
            self._store_admin_secret()
            started: list[str] = []
            etcd_running: list[str] = []
            if self.etcd_ports is not None:
                (started if self._start_etcd(ready_timeout_ms) else etcd_running).append(ETCD_ID)
            running = self.running()
            offsets: dict[str, int] = {}
            for spec in self.processes():
                log = self.log_path(spec.process_id)
                offsets[spec.process_id] = log.stat().st_size if log.exists() else 0
                if spec.process_id in running:
                    continue
                running[spec.process_id] = self._spawn(spec)
                started.append(spec.process_id)
            self.wait_healthy(ready_timeout_ms=ready_timeout_ms, log_offsets=offsets)
            if self.etcd_ports is not None:
                self.wait_serving()
            return UpReport(
                started=tuple(started),
                already_running=(
                    *etcd_running,
                    *(name for name in running if name not in started),
                ),
                pids=dict(running),
                log_offsets=offsets,
                attached=self._attached_other(),
            )

    def _spawn(self, spec: ProcessSpec) -> int:
        process_id = spec.process_id
        self._exit_codes.pop(process_id, None)
        log_fd = os.open(
            self.log_path(process_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        umask = os.umask(_PROCESS_UMASK)  # inherited: every file a process creates is private
        try:
            package_root = str(Path(kvstore.__file__).resolve().parent.parent)
            env = dict(os.environ)
            env["PYTHONUNBUFFERED"] = "1"
            env["PYTHONPATH"] = os.pathsep.join(
                part for part in (package_root, env.get("PYTHONPATH", "")) if part
            )
            pid = os.posix_spawn(
                sys.executable,
                spec.argv(self.config_path),
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
                setsid=True,
                # A daemon's start: no blocked signals, default dispositions (kvctl's shell may
                # have ignored SIGINT for a background job; Python ignores SIGPIPE).
                setsigmask=(),
                setsigdef=_RESET_SIGNALS,
            )
        finally:
            os.umask(umask)
            os.close(log_fd)
        self._children[process_id] = pid
        try:
            self._write_pid(process_id, pid)
        except OSError:
            # Never a process without its pid file: stop the one just started (it has
            # answered nothing yet) before the error is reported.
            _signal(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            del self._children[process_id]
            raise
        return pid

    def wait_healthy(
        self,
        *,
        ready_timeout_ms: int = LOCAL_READY_TIMEOUT_MS,
        log_offsets: Mapping[str, int] | None = None,
        process_ids: Collection[str] | None = None,
    ) -> None:
        """Wait until every process (or those of ``process_ids``) answers its health page;
        ``Unavailable`` naming the first that exits or is still silent at the deadline, with
        the end of its log."""
        offsets = log_offsets or {}
        pending = {
            spec.process_id: spec
            for spec in self.processes()
            if process_ids is None or spec.process_id in process_ids
        }
        deadline = time.monotonic() + ready_timeout_ms / 1000
        delay_s = 0.02
        while pending:
            running = self.running()
            for process_id, spec in sorted(pending.items()):
                code = self._exit_codes.get(process_id)
                if process_id not in running:
                    how = f"exited with status {code}" if code is not None else "is not running"
                    raise Unavailable(
                        f"{process_id} {how} before answering {spec.health_url}"
                        + self._log_tail(process_id, offsets.get(process_id, 0)),
                        details={"process": process_id, "process_exit_status": code},
                    )
                if _health_ok(spec.health_url, LOCAL_PROBE_TIMEOUT_MS / 1000):
                    del pending[process_id]
            if not pending:
                return
            if time.monotonic() >= deadline:
                process_id = min(pending)
                raise Unavailable(
                    f"{process_id} did not answer {pending[process_id].health_url} within "
                    f"{ready_timeout_ms / 1000:g} s"
                    + self._log_tail(process_id, offsets.get(process_id, 0)),
                    details={"process": process_id, "waiting_for": sorted(pending)},
                )
            time.sleep(delay_s)  # readiness polling, capped backoff, bounded by the deadline
            delay_s = min(delay_s * 2, LOCAL_POLL_MAX_MS / 1000)

    def _log_tail(self, process_id: str, offset: int) -> str:
        path = self.log_path(process_id)
        lines = tail_lines(path, offset, LOCAL_LOG_TAIL_LINES)
        if not lines:
            return f"; its log {path} has nothing new"
        shown = "\n".join(f"  | {line}" for line in lines)
        return f"; the end of {path}:\n{shown}"

    def exit_status(self, process_id: str) -> int | None:
        """The exit status of a process this object spawned, once it ended; else None."""
        self._reap(process_id)
        return self._exit_codes.get(process_id)

    def exited(self) -> dict[str, int]:
        """Children of this object that ended since the last call: id -> exit status."""
        out: dict[str, int] = {}
        for process_id in list(self._children):
            code = self._reap(process_id)
            if code is not None:
                out[process_id] = code
        return out

    # --- down ----------------------------------------------------------------------------

    def down(self, *, stop_timeout_ms: int = LOCAL_STOP_TIMEOUT_MS) -> StopReport:
        """Stop every process (coordinators first), SIGKILL what outlives the grace period, and
        remove the pid files."""
        with self.locked():
            attached = self._attached_other()
            if attached is not None:  # tell it before its first process goes away
                self._write_notice(attached, None)
            running = self.running()
            terminated: list[str] = []
            killed: list[str] = []
            for role in ("coordinator", "node"):
                group = {
                    spec: running[spec.process_id]
                    for spec in self.processes()
                    if spec.role == role and spec.process_id in running
                }
                for pid in group.values():
                    _signal(pid, signal.SIGTERM)
                left = self._wait_gone(group, stop_timeout_ms / 1000)
                for spec in left:
                    _signal(group[spec], signal.SIGKILL)
                still = self._wait_gone(left, _KILL_GRACE_S)
                if still:
                    names = ", ".join(
                        f"{spec.process_id} (pid {pid})" for spec, pid in still.items()
                    )
                    raise Unavailable(f"could not stop {names}, even with SIGKILL")
                terminated += [spec.process_id for spec in group if spec not in left]
                killed += [spec.process_id for spec in left]
            for spec in self.processes():
                with contextlib.suppress(FileNotFoundError):
                    self.pid_path(spec.process_id).unlink()
            not_running = [
                spec.process_id for spec in self.processes() if spec.process_id not in running
            ]
            if self.etcd_ports is not None:  # last: the nodes use it until they are gone
                how = self._stop_etcd(stop_timeout_ms)
                if how is None:
                    not_running.append(ETCD_ID)
                else:
                    (killed if how == "killed" else terminated).append(ETCD_ID)
            report = StopReport(
                terminated=tuple(terminated),
                killed=tuple(killed),
                not_running=tuple(not_running),
                attached=attached,
            )
            if attached is not None:
                self._write_notice(attached, report)
            return report

    def _wait_gone(
        self, group: Mapping[ProcessSpec, int], timeout_s: float
    ) -> dict[ProcessSpec, int]:
        """Wait until the processes of ``group`` are gone; those still there at the deadline."""
        left = dict(group)

        def gone() -> bool:
            nonlocal left
            left = {spec: pid for spec, pid in left.items() if self._is_ours(pid, spec)}
            return not left

        _poll_until(gone, timeout_s)
        return left

    # --- the lock ------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``run/kvctl.lock``: one kvctl at a time starts or stops this cluster."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        path = self.root / RUN_DIR / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + LOCAL_LOCK_WAIT_MS / 1000
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Unavailable(
                            f"another kvctl has been starting or stopping the cluster in "
                            f"{self.root} for {LOCAL_LOCK_WAIT_MS / 1000:g} s; try again later"
                        ) from None
                    time.sleep(LOCAL_POLL_MAX_MS / 1000)  # waiting on another kvctl, bounded
            self._lock_depth = 1
            try:
                # Another kvctl may have added or removed a node since this object read the
                # cluster file: everything done under the lock goes by the file as it is now.
                self.config = load_cluster(self.config_path)
                yield
            finally:
                self._lock_depth = 0
        finally:
            os.close(fd)  # releases the lock

    # --- the attached foreground session ----------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether this object is the cluster's attached foreground session."""
        return self._attach_fd is not None

    def attach(self) -> Attachment:
        """Become the cluster's one attached foreground session, until :meth:`detach` (or the
        end of this process); ``ConditionFailed`` naming the attached one when there is one."""
        if self._attachment is not None:
            return self._attachment
        with self.locked():
            fd = os.open(
                self.root / RUN_DIR / ATTACH_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_attachment(fd)
                os.close(fd)
                raise ConditionFailed(
                    self._attached_message(holder), details=_holder(holder)
                ) from None
            except BaseException:
                os.close(fd)
                raise
            attachment = Attachment(
                pid=os.getpid(), started=_now_rfc3339(), session=secrets.token_hex(8)
            )
            document = json.dumps(
                {
                    "pid": attachment.pid,
                    "started": attachment.started,
                    "session": attachment.session,
                }
            )
            os.ftruncate(fd, 0)
            os.pwrite(fd, (document + "\n").encode("utf-8"), 0)
            with contextlib.suppress(FileNotFoundError):
                (self.root / RUN_DIR / NOTICE_FILE).unlink()  # for a session that has ended
            self._attach_fd, self._attachment = fd, attachment
            return attachment

    def _attached_message(self, holder: Attachment | None) -> str:
        who = (
            "another `kvctl cluster up --foreground`"
            if holder is None
            else f"`kvctl cluster up --foreground` (pid {holder.pid}, since {holder.started})"
        )
        hint = _dir_hint(self.root)
        return (
            f"{who} is already attached to the cluster in {self.root} and streams its logs; "
            f"stop it with Ctrl-C in its terminal or `kvctl cluster down{hint}`, see the processes "
            f"with `kvctl cluster status{hint}`, their logs in {self.root / LOGS_DIR}"
        )

    def detach(self) -> None:
        """End this object's attachment (nothing happens when it has none)."""
        fd, attachment = self._attach_fd, self._attachment
        if fd is None or attachment is None:
            return
        self._attach_fd = self._attachment = None
        try:
            notice = self.root / RUN_DIR / NOTICE_FILE
            if _notice_session(notice) == attachment.session:
                with contextlib.suppress(FileNotFoundError):
                    notice.unlink()
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def _attached_other(self) -> Attachment | None:
        """The foreground session of another kvctl attached to this cluster, if any. Call with
        the kvctl lock held (an attach takes it too, so this probe never makes one fail)."""
        if self._attach_fd is not None:
            return None
        try:
            fd = os.open(self.root / RUN_DIR / ATTACH_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_attachment(fd)  # None: it is detaching (it empties the file first)
            return None  # nobody holds it; closing the file releases the probe's lock
        finally:
            os.close(fd)

    def _write_notice(self, attached: Attachment, report: StopReport | None) -> None:
        document: dict[str, object] = {
            "session": attached.session,
            "by_pid": os.getpid(),
            "at": _now_rfc3339(),
            "done": report is not None,
        }
        if report is not None:
            document.update(report.to_json())
        _replace_file(self.root / RUN_DIR / NOTICE_FILE, json.dumps(document) + "\n")

    def stop_notice(self) -> StopNotice | None:
        """A stop notice from ``cluster down`` to this object's attached session, if any."""
        if self._attachment is None:
            return None
        try:
            doc = json.loads((self.root / RUN_DIR / NOTICE_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("session") != self._attachment.session:
            return None
        by_pid = doc.get("by_pid")
        report = None
        if doc.get("done") is True:
            report = StopReport(
                terminated=_ids(doc.get("terminated")),
                killed=_ids(doc.get("killed")),
                not_running=_ids(doc.get("not_running")),
            )
        return StopNotice(
            by_pid=by_pid if isinstance(by_pid, int) else 0,
            at=str(doc.get("at", "")),
            report=report,
        )

    def wait_detached(
        self, attached: Attachment, *, timeout_ms: int = LOCAL_DETACH_WAIT_MS
    ) -> bool:
        """Wait until the process of the ``attached`` session has exited; False when it still
        runs at the deadline (a session suspended with Ctrl-Z, say)."""
        return _poll_until(lambda: process_command_line(attached.pid) is None, timeout_ms / 1000)

    # --- status --------------------------------------------------------------------------

    def status(self, *, rates: bool = True) -> list[ProcessStatus]:
        """Every process's status (see the module docstring); at most about two probe timeouts
        plus, with ``rates``, the sampling gap."""
        return asyncio.run(self.status_async(rates=rates))

    async def status_async(self, *, rates: bool = True) -> list[ProcessStatus]:
        self.config = load_cluster(self.config_path)  # nodes may have been added or removed
        running = self.running()
        specs = self.processes()
        etcd_pid = self.etcd_running()
        if self.etcd_ports is not None:
            specs.append(self._etcd_spec())
            if etcd_pid is not None:
                running[ETCD_ID] = etcd_pid
        try:
            secret: str | None = read_secret(self.config.secret_file)
        except KvError:
            secret = None
        try:
            token: str | None = self.admin_token()
        except KvError:
            token = None
        probes = {spec: _Probe() for spec in specs if spec.process_id in running}
        timeout = aiohttp.ClientTimeout(total=LOCAL_PROBE_TIMEOUT_MS / 1000)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(
                *(
                    self._probe(spec, probe, session, secret=secret, token=token, rates=rates)
                    for spec, probe in probes.items()
                )
            )
            if rates and probes:
                await asyncio.sleep(LOCAL_RATE_SAMPLE_MS / 1000)  # the gap between the samples
                await asyncio.gather(
                    *(
                        _sample_rate(spec, probe, session, token)
                        for spec, probe in probes.items()
                        if spec.role != "etcd"
                    )
                )
        return [
            self._status_of(spec, running.get(spec.process_id), probes.get(spec)) for spec in specs
        ]

    async def _probe(
        self,
        spec: ProcessSpec,
        probe: _Probe,
        session: aiohttp.ClientSession,
        *,
        secret: str | None,
        token: str | None,
        rates: bool,
    ) -> None:
        async def health() -> None:
            answer = await _get(session, spec.health_url, None)
            if answer is not None:
                status, text = answer
                try:
                    body = json.loads(text)
                except ValueError:
                    body = None
                ok = status == 200 and _healthy_body(spec.role, body)
                probe.health = "ok" if ok else "failed"
                if ok and isinstance(body, dict) and body.get("disk_full") is True:
                    probe.health = "disk full"

        async def stats() -> None:
            if spec.role != "node" or secret is None:
                return
            client = RpcClient(
                f"ws://{spec.address}/rpc", secret, session=session, logger=_probe_log
            )
            try:
                body = await client.call("stats", {}, LOCAL_PROBE_TIMEOUT_MS)
            except KvError:
                return
            finally:
                await client.close()
            if isinstance(body, dict):
                probe.stats = body

        async def first_sample() -> None:
            if rates and spec.role != "etcd":
                await _sample_rate(spec, probe, session, token)

        await asyncio.gather(health(), stats(), first_sample())

    def _status_of(self, spec: ProcessSpec, pid: int | None, probe: _Probe | None) -> ProcessStatus:
        partitions: tuple[PartitionStatus, ...] | None = None
        uptime: float | None = None
        views: tuple[ReplicaView, ...] | None = None
        log = self.log_path(spec.process_id)
        if spec.role == "etcd":
            log = self.etcd().log_path
        if spec.role == "node":
            stats = probe.stats if probe is not None else None
            if self.replicated:
                raw_views = stats.get("replication") if stats is not None else None
                views = _replica_views(spec.process_id, raw_views)
            # What it holds by the live map (its replicator's status) when it answered.
            owned = (
                self.held_by(spec.process_id)
                if views is None
                else tuple(PartitionId(view.partition) for view in views)
            )
            by_partition = stats.get("partitions") if stats is not None else None
            if not isinstance(by_partition, dict):
                by_partition = {}
            partitions = tuple(
                _partition_status(int(part), by_partition.get(str(part))) for part in owned
            )
            raw_uptime = stats.get("uptime_s") if stats is not None else None
            uptime = float(raw_uptime) if isinstance(raw_uptime, int | float) else None
        health = "down" if pid is None else "unreachable" if probe is None else probe.health
        return ProcessStatus(
            role=spec.role,
            process_id=spec.process_id,
            address=spec.address,
            pid=pid,
            health=health,
            log=log,
            partitions=partitions,
            requests_per_s=probe.rate if probe is not None else None,
            uptime_s=uptime,
            replication=views,
        )


# --- helpers of LocalCluster -----------------------------------------------------------------


def _table_of(doc: dict[str, object], name: str) -> dict[str, object]:
    table = doc.setdefault(name, {})
    if not isinstance(table, dict):
        raise ValidationError("config", f"{name} in the cluster file is not a table")
    return table


async def _until_live(op: MoveOperator, node: NodeId) -> None:
    """Until ``node`` has its liveness key (its first beat), bounded."""
    deadline = time.monotonic() + LOCAL_LIVENESS_TIMEOUT_MS / 1000
    delay_s = 0.02
    while True:
        with contextlib.suppress(Unavailable):
            if node in await op.live_nodes():
                return
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"{node} answers its health page but has no liveness key in etcd after "
                f"{LOCAL_LIVENESS_TIMEOUT_MS / 1000:g} s; see its log",
                details={"node": node},
            )
        await asyncio.sleep(delay_s)  # liveness polling, capped backoff, bounded by the deadline
        delay_s = min(delay_s * 2, LOCAL_POLL_MAX_MS / 1000)


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(name, f"must be an integer in {low}..{high}, got {value!r}")


def _is_empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and next(path.iterdir(), None) is None
    except OSError:
        return False


def _dir_hint(root: Path) -> str:
    """`` --dir X`` when ``root`` is not what kvctl finds without ``--dir``."""
    return "" if root == resolve_dir(None) else f" --dir {root}"


def _populate(
    root: Path, nodes: int, coordinators: int, partitions: int, replication_factor: int
) -> str:
    """Write a new cluster's files into the empty directory ``root``; its cluster id."""
    cluster_id = "lc-" + secrets.token_hex(8)
    created = _now_rfc3339()
    replicated = replication_factor > 1
    ports = free_ports(nodes + coordinators + (2 if replicated else 0))
    replication: ReplicationSpec | None = None
    etcd: dict[str, int] | None = None
    if replicated:
        etcd = {"client_port": ports[-2], "peer_port": ports[-1]}
        replication = ReplicationSpec(
            factor=replication_factor,
            endpoints=(f"http://{_HOST}:{etcd['client_port']}",),
            prefix=f"/kvstore/{cluster_id}",
        )
        (root / ETCD_DIR).mkdir(mode=0o700)
    node_addresses = {f"n{i + 1}": f"{_HOST}:{ports[i]}" for i in range(nodes)}
    coordinator_addresses = {
        f"c{i + 1}": f"{_HOST}:{ports[nodes + i]}" for i in range(coordinators)
    }
    for name in (DATA_DIR, LOGS_DIR, RUN_DIR):
        (root / name).mkdir(mode=0o700)
    config_path = root / CLUSTER_FILE
    write_cluster_file(
        config_path,
        nodes=node_addresses,
        partitions=partitions,
        coordinators=coordinator_addresses,
        secret_file=SECRET_FILE,
        api_tokens_file=API_TOKENS_FILE,
        replication=replication,
    )
    header = (
        f"# kvstore local cluster {cluster_id}, made by `kvctl cluster up` on {created}.\n"
        "# Every process of the cluster reads this file (docs/storage-node.md,\n"
        "# docs/coordinator.md); kvctl checks the id above against kvstore-local.json.\n\n"
    )
    _replace_file(config_path, header + config_path.read_text(encoding="utf-8"))
    write_secret(root / SECRET_FILE)
    token = create_token(root / API_TOKENS_FILE, ADMIN_TOKEN_NAME, Role.ADMIN)
    _write_private(root / ADMIN_TOKEN_FILE, token + "\n")
    marker: dict[str, object] = {
        "kind": _MARKER_KIND,
        "format": _MARKER_FORMAT,
        "cluster_id": cluster_id,
        "created": created,
    }
    if etcd is not None:
        marker["etcd"] = etcd
    _write_private(root / MARKER_FILE, json.dumps(marker, indent=2) + "\n")
    load_cluster(config_path)  # what kvctl wrote, the processes must accept
    return cluster_id


def _read_marker(path: Path) -> tuple[str, str, EtcdPorts | None]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValidationError(
            _DIR_FIELD, f"{path} is not a kvctl cluster marker: {error}"
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != _MARKER_KIND:
        raise ValidationError(
            _DIR_FIELD, f"{path} is not a kvctl cluster marker (no kind {_MARKER_KIND!r})"
        )
    if doc.get("format") != _MARKER_FORMAT:
        raise ValidationError(
            _DIR_FIELD,
            f"{path} has format {doc.get('format')!r}; this kvctl reads format {_MARKER_FORMAT}",
        )
    cluster_id, created = doc.get("cluster_id"), doc.get("created")
    if not isinstance(cluster_id, str) or _CLUSTER_ID_PATTERN.fullmatch(cluster_id) is None:
        raise ValidationError(_DIR_FIELD, f"{path} has no valid cluster_id")
    etcd, ports = doc.get("etcd"), None
    if etcd is not None:
        client = etcd.get("client_port") if isinstance(etcd, dict) else None
        peer = etcd.get("peer_port") if isinstance(etcd, dict) else None
        if not (_is_count(client) and _is_count(peer)):
            raise ValidationError(_DIR_FIELD, f"{path} has no valid etcd ports")
        assert isinstance(client, int) and isinstance(peer, int)
        ports = EtcdPorts(client=client, peer=peer)
    return cluster_id, created if isinstance(created, str) else "", ports


def _process_table(needle: str) -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of the processes whose command line mentions ``needle``."""
    proc = Path("/proc")
    if proc.is_dir():
        encoded = needle.encode("utf-8", "surrogateescape")
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                data = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if encoded in data:
                argv = data.rstrip(b"\0").split(b"\0")
                yield int(entry.name), [part.decode("utf-8", "surrogateescape") for part in argv]
        return
    try:
        result = subprocess.run(
            ["ps", "-ax", "-ww", "-o", "pid=,stat=,command="],
            capture_output=True,
            text=True,
            timeout=LOCAL_PROBE_TIMEOUT_MS / 1000,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return
    for line in result.stdout.splitlines():
        fields = line.split()
        live = len(fields) >= 3 and fields[0].isdigit() and not fields[1].startswith("Z")
        if live and needle in line:
            yield int(fields[0]), fields[2:]


def _read_attachment(fd: int) -> Attachment | None:
    """The attachment an attach lock file describes (None when empty or unreadable)."""
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid, started, session = doc.get("pid"), doc.get("started"), doc.get("session")
    if not isinstance(pid, int) or not isinstance(started, str) or not isinstance(session, str):
        return None
    return Attachment(pid=pid, started=started, session=session)


def _holder(holder: Attachment | None) -> dict[str, object]:
    return {} if holder is None else {"attached_pid": holder.pid, "attached_since": holder.started}


def _notice_session(path: Path) -> object:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc.get("session") if isinstance(doc, dict) else None


def _ids(raw: object) -> tuple[str, ...]:
    return tuple(str(item) for item in raw) if isinstance(raw, list) else ()


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _poll_until(done: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``done()`` became true within ``timeout_s``: process-exit polling with a capped
    backoff (10 ms doubling up to ``LOCAL_POLL_MAX_MS``), bounded by the deadline."""
    deadline = time.monotonic() + timeout_s
    delay_s = 0.01
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, LOCAL_POLL_MAX_MS / 1000)
    return True


def _health_body(url: str, timeout_s: float) -> dict[str, object] | None:
    """The JSON object a health page answers with status 200; None otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            body = json.loads(reply.read())
            return body if reply.status == 200 and isinstance(body, dict) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _health_ok(url: str, timeout_s: float) -> bool:
    body = _health_body(url, timeout_s)
    return body is not None and body.get("status") == "ok"


def _healthy_body(role: ProcessRole, body: object) -> bool:
    """Whether a health page's body says healthy (etcd answers ``{"health": "true"}``)."""
    if not isinstance(body, dict):
        return False
    if role == "etcd":
        return body.get("health") in ("true", True)
    return body.get("status") == "ok"


def _runs_etcd(argv: Sequence[str] | None, member_dir: str) -> bool:
    """Whether ``argv`` is an etcd serving the member data in ``member_dir``."""
    return (
        argv is not None
        and bool(argv)
        and Path(argv[0]).name == "etcd"
        and _option(argv, "--data-dir") == member_dir
    )


def _replica_views(node: str, raw: object) -> tuple[ReplicaView, ...] | None:
    """A node's replicator status (the ``stats`` RPC's ``replication``) as views; malformed
    entries are skipped, a missing list is None."""
    if not isinstance(raw, list):
        return None
    views: list[ReplicaView] = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        partition, leader, epoch = entry.get("partition"), entry.get("leader"), entry.get("epoch")
        replicas, position = entry.get("replicas"), entry.get("position")
        lag, serving, learners = entry.get("lag"), entry.get("serving"), entry.get("learners")
        if not (
            _is_count(partition)
            and isinstance(leader, str)
            and _is_count(epoch)
            and isinstance(replicas, list)
            and isinstance(position, list)
            and len(position) == 2
            and all(isinstance(value, int) for value in position)
        ):
            continue
        assert isinstance(partition, int) and isinstance(epoch, int)
        views.append(
            ReplicaView(
                partition=partition,
                node=node,
                leader=leader,
                replicas=tuple(str(replica) for replica in replicas),
                epoch=epoch,
                position=(int(position[0]), int(position[1])),
                serving=serving if isinstance(serving, bool) else None,
                lag=(
                    {str(k): v for k, v in lag.items() if _is_count(v)}
                    if isinstance(lag, dict)
                    else None
                ),
                learners=(
                    tuple(str(node) for node in learners) if isinstance(learners, list) else ()
                ),
            )
        )
    return tuple(views)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def _get(
    session: aiohttp.ClientSession, url: str, token: str | None
) -> tuple[int, str] | None:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        async with session.get(url, headers=headers) as response:
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
        return None


_RATE_COUNTERS: Final[Mapping[str, tuple[str, str, frozenset[str]]]] = {
    "node": ("kvstore_node_requests_total", "method", frozenset({"stats"})),
    "coordinator": (
        "kvstore_coordinator_http_requests_total",
        "route",
        frozenset({"health", "metrics"}),
    ),
}


async def _sample_rate(
    spec: ProcessSpec, probe: _Probe, session: aiohttp.ClientSession, token: str | None
) -> None:
    """Read the request counter; from the second sample on, set the rate since the previous."""
    if token is None:
        return
    answer = await _get(session, spec.url + "/metrics", token)
    now = time.monotonic()
    if answer is None or answer[0] != 200:
        return
    name, label, excluded = _RATE_COUNTERS[spec.role]
    value = _counter_sum(answer[1], name, label, excluded)
    value = 0.0 if value is None else value
    if probe.counter is not None and now > probe.counter_at:
        probe.rate = round(max(0.0, value - probe.counter) / (now - probe.counter_at), 1)
    probe.counter, probe.counter_at = value, now


def _partition_status(partition: int, raw: object) -> PartitionStatus:
    def number(name: str) -> int | None:
        value = raw.get(name) if isinstance(raw, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return PartitionStatus(
        partition=partition,
        items=number("items"),
        intents=number("intents"),
        open_ledger_records=number("open_ledger_records"),
    )
