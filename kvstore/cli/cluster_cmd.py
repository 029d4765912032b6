"""``kvctl cluster up|down|status|env``: a cluster of real processes on this machine.

Theory of operation
-------------------
Thin commands over :class:`kvstore.localcluster.LocalCluster` (which owns the directory layout,
the processes, health and status; read its docstring first). The directory is ``--dir``, else
``$KVSTORE_DIR``, else ``./.kvstore``.

* ``up`` creates the cluster on first use (``--nodes``, ``--coordinators``, ``--partitions``,
  ``--replication-factor`` apply only then; giving a different shape for an existing cluster is
  a usage error, not a silent no-op), starts whatever is not running, leaves running processes
  alone, waits until every process is healthy, and prints where the API is, the admin token and
  first requests. A replication factor above 1 keeps each partition on that many nodes with a
  private etcd as the control plane, started first and stopped last; ``up`` then also waits
  until every partition has a serving leader.
* ``up --foreground`` (what ``make run`` runs) first *attaches* to the cluster
  (:meth:`LocalCluster.attach`): one attached session per cluster; a second one is refused
  (``ConditionFailed``, exit 4) naming the attached pid and how to stop it, and touches nothing.
  Attached, it owns the whole cluster, also processes that were already running (the banner names
  them), and streams every process's log lines prefixed with the process id (text: time, level,
  event and fields; ``--json``: one ``{"process", "line"}`` object per line). It ends in one of
  three ways, each with one closing line:

  - Ctrl-C, SIGTERM or SIGHUP (the terminal went away): it stops the whole cluster, says what it
    stopped, exit status 0. The first such signal starts the stop; later ones are ignored so that
    a second Ctrl-C cannot leave half of the cluster running.
  - ``kvctl cluster down`` from elsewhere: ``down`` leaves a stop notice before it signals any
    process; the session sees it (polled every ``LOCAL_FOLLOW_INTERVAL_MS``), waits for ``down``
    to finish (the kvctl lock), says who stopped what, exit status 0.
  - every process exited on its own: each exit is reported as it is seen (every
    ``LOCAL_WATCH_INTERVAL_MS``), and when none is left the session ends with ``Unavailable``
    (exit 6) naming how each one exited. One process exiting only gets its line: ``kvctl cluster
    up`` elsewhere starts it again, and the session keeps following it.

  If start-up fails in the foreground, what was started is stopped again before the error is
  shown.
* ``down`` stops every process (SIGTERM, then SIGKILL after the grace period); data stays. When a
  foreground session is attached, ``down`` tells it first and then waits (at most
  ``LOCAL_DETACH_WAIT_MS``) until it has exited, and says so.
* ``status`` shows every process (role, id, URL, pid, health, partitions, live items, pending
  intents, requests per second); ``--partitions`` adds a row per partition. Exit status 0 when
  every process is healthy, 6 (unavailable) otherwise, so scripts can wait on it. A node whose
  disk is full shows health ``disk full`` (it refuses writes, serves reads, and resumes by
  itself once space is freed), and the closing line says to free space. A replicated cluster
  also shows its etcd (role ``etcd``) and a row per partition: replicas, leader, epoch, whether
  the leader serves, and each follower's lag in batches (from the nodes' ``stats``); a learner
  that a move (``kvctl partition move``) is filling shows as ``+NODE`` after the replicas.
* On a full disk kvctl itself says ``no space left on device writing PATH`` in one line (exit
  status 1, :func:`kvstore.cli.output.run_handler`); ``up`` never leaves a process it started
  without its pid file (:class:`~kvstore.localcluster.LocalCluster`).
* ``env`` prints ``export KV_URL=... KV_TOKEN=...`` lines for ``eval "$(kvctl cluster env)"``,
  and the AWS SDKs' ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION`` for the DynamoDB endpoint (the admin
  token as SigV4 credentials), so boto3 and ``aws dynamodb`` work unmodified.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Final

from rich.text import Text

from kvstore.cli.output import EXIT_OK, EXIT_UNAVAILABLE, Output
from kvstore.errors import Unavailable, ValidationError
from kvstore.limits import (
    LOCAL_DETACH_WAIT_MS,
    LOCAL_FOLLOW_INTERVAL_MS,
    LOCAL_WATCH_INTERVAL_MS,
    PARTITIONS_DEFAULT,
)
from kvstore.localcluster import (
    DEFAULT_DIR,
    DIR_ENV,
    Attachment,
    LocalCluster,
    LogFollower,
    PartitionReplication,
    ProcessStatus,
    StopNotice,
    StopReport,
    UpReport,
    replication_summary,
    resolve_dir,
)

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands

__all__ = ["register", "NODES_DEFAULT", "COORDINATORS_DEFAULT"]

NODES_DEFAULT: Final = 3
COORDINATORS_DEFAULT: Final = 0
_COLOURS: Final = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SIGNAL_NAMES: Final = {
    signal.SIGINT: "Ctrl-C",
    signal.SIGTERM: "SIGTERM",
    signal.SIGHUP: "SIGHUP (the terminal went away)",
}
_LOG_SKIP: Final = frozenset({"ts", "level", "process", "logger", "event"})


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``kvctl cluster ...`` to ``commands``."""
    cluster = commands.add_parser(
        "cluster",
        help="run a local cluster (real processes on 127.0.0.1)",
        description="Run a kvstore cluster on this machine: storage nodes (each serving the API) "
        "and optional coordinators as "
        f"real processes on 127.0.0.1, kept in one directory (--dir, ${DIR_ENV}, ./{DEFAULT_DIR}).",
    )
    actions = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)

    up = actions.add_parser(
        "up",
        parents=[common],
        help="create the cluster on first use, start what is not running, wait until healthy",
        description="Create the local cluster on first use (--nodes, --coordinators, "
        "--partitions and --replication-factor apply then), start every process that is not "
        "running, leave running ones alone, and wait until all are healthy (and, replicated, "
        "until every partition has a serving leader). With --foreground (what `make run` runs) "
        "it then stays attached to the cluster.",
    )
    up.add_argument(
        "--nodes", type=int, metavar="N", help=f"storage nodes (default {NODES_DEFAULT})"
    )
    up.add_argument(
        "--coordinators",
        type=int,
        metavar="N",
        help=f"standalone coordinator processes (default {COORDINATORS_DEFAULT}: every node "
        "serves the API and coordinates)",
    )
    up.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help=f"partitions of the key space (default {PARTITIONS_DEFAULT})",
    )
    up.add_argument(
        "--replication-factor",
        type=int,
        metavar="N",
        help="copies of each partition, 1..nodes (default 1); above 1 a private etcd holds the "
        "live map and leader leases, and a partition survives the loss of a minority of its "
        "copies",
    )
    up.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached (one session per cluster; a second is refused, status 4) and stream "
        "every process's log; Ctrl-C stops the whole cluster, also processes that were already "
        "running (status 0); `kvctl cluster down` from elsewhere stops it and ends the session "
        "(status 0); if every process exits on its own the session ends with status 6",
    )
    up.set_defaults(handler=_up)

    down = actions.add_parser(
        "down",
        parents=[common],
        help="stop every process of the cluster (the data stays)",
        description="Stop every process (SIGTERM, SIGKILL after a grace period). Data, logs, "
        "the secret and the tokens stay; `kvctl cluster up` starts the same cluster again. An "
        "attached `kvctl cluster up --foreground` (make run) is told first, and `down` waits "
        f"up to {LOCAL_DETACH_WAIT_MS / 1000:g} s until it has exited.",
    )
    down.set_defaults(handler=_down)

    status = actions.add_parser(
        "status",
        parents=[common],
        help="every process: health, partitions, items, intents, request rates",
        description="Show every process of the cluster. Exit status 0 when all are healthy, "
        "6 otherwise.",
    )
    status.add_argument(
        "--partitions",
        action="store_true",
        help="also show each partition on each node (live items, intents, open ledger records)",
    )
    status.add_argument(
        "--no-rates",
        dest="rates",
        action="store_false",
        help="skip the request rates (they take two samples 0.5 s apart)",
    )
    status.set_defaults(handler=_status)

    env = actions.add_parser(
        "env",
        parents=[common],
        help="print KV_URL and KV_TOKEN (SDK, curl) and AWS_* variables (boto3, AWS CLI)",
        description="Print shell exports of KV_URL (the first coordinator's API) and KV_TOKEN "
        "(the admin token), and of AWS_ENDPOINT_URL_DYNAMODB (the same URL: the DynamoDB "
        "endpoint), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the admin token's name and the "
        'token) and AWS_DEFAULT_REGION: eval "$(kvctl cluster env)".',
    )
    env.set_defaults(handler=_env)


# --- up ----------------------------------------------------------------------------------------


def _up(args: argparse.Namespace, out: Output) -> int:
    root = resolve_dir(args.dir)
    cluster, created = LocalCluster.open_or_create(
        root,
        nodes=NODES_DEFAULT if args.nodes is None else args.nodes,
        coordinators=COORDINATORS_DEFAULT if args.coordinators is None else args.coordinators,
        partitions=PARTITIONS_DEFAULT if args.partitions is None else args.partitions,
        replication_factor=1 if args.replication_factor is None else args.replication_factor,
    )
    if not created:
        _check_shape(cluster, args)
    if not args.foreground:
        with out.spinner(f"starting the cluster in {root} and waiting until it is healthy"):
            report = cluster.up()
            statuses = cluster.status(rates=False)
        _print_up(cluster, created=created, report=report, statuses=statuses, args=args, out=out)
        return EXIT_OK if all(status.healthy for status in statuses) else EXIT_UNAVAILABLE
    return _Foreground(cluster, out, args).run(created=created)


def _check_shape(cluster: LocalCluster, args: argparse.Namespace) -> None:
    config = cluster.config
    shape = {
        "nodes": (len(config.nodes), f"{len(config.nodes)} nodes"),
        "coordinators": (len(config.coordinators), f"{len(config.coordinators)} coordinators"),
        "partitions": (
            config.cluster_map.partitions.partition_count,
            f"{config.cluster_map.partitions.partition_count} partitions",
        ),
        "replication_factor": (
            config.replication.factor,
            f"replication factor {config.replication.factor}",
        ),
    }
    for name, (existing, has) in shape.items():
        given = getattr(args, name)
        if given is not None and given != existing:
            raise ValidationError(
                f"--{name.replace('_', '-')}",
                f"the cluster in {cluster.root} has {has}; its shape is fixed when it "
                f"is created (to start over: kvctl cluster down{_dir_arg(args)}, then delete "
                f"{cluster.root})",
            )


def _print_up(
    cluster: LocalCluster,
    *,
    created: bool,
    report: UpReport,
    statuses: list[ProcessStatus],
    args: argparse.Namespace,
    out: Output,
) -> None:
    env = cluster.env()
    url, token = env["KV_URL"], env["KV_TOKEN"]
    if out.json_mode:
        document = {
            "dir": str(cluster.root),
            "cluster_id": cluster.cluster_id,
            "created": created,
            "started": list(report.started),
            "already_running": list(report.already_running),
            "api": url,
            "token": token,
            "token_file": str(cluster.admin_token_path),
            "healthy": all(status.healthy for status in statuses),
            "processes": [status.to_json() for status in statuses],
            "attached_session": None if report.attached is None else report.attached.to_json(),
        }
        if args.foreground:
            out.json_line(document)
        else:
            out.json(document)
        return
    config = cluster.config
    shape = ", ".join(
        _count(number, noun)
        for number, noun in (
            (len(config.nodes), "node"),
            (len(config.coordinators), "coordinator"),
            (config.cluster_map.partitions.partition_count, "partition"),
        )
    )
    if cluster.replicated:
        shape += (
            f", replication factor {config.replication.factor} "
            f"(etcd {config.replication.endpoints[0]})"
        )
    started = " ".join(report.started) or "nothing (all were running)"
    kvctl_dir = _dir_arg(args)
    out.line(Text.assemble(("kvstore local cluster ", "bold"), (str(cluster.root), "bold")))
    out.line(f"  {'created' if created else 'existing'}: {shape}; started {started}")
    out.line()
    out.line(Text.assemble("  API    ", (url, "bold green"), "   (OpenAPI: /v1/openapi.json)"))
    out.line(
        Text.assemble("  token  ", (token, "bold"), f"   (admin; in {cluster.admin_token_path})")
    )
    out.line()
    out.line("Try it:")
    out.line(f"  export KV_URL={url} KV_TOKEN={token}")
    out.line(
        '  curl -s -X PUT -H "Authorization: Bearer $KV_TOKEN" '
        '-d \'{"value": {"hello": "world"}}\' "$KV_URL/v1/kv/greeting"'
    )
    out.line('  curl -s -H "Authorization: Bearer $KV_TOKEN" "$KV_URL/v1/kv/greeting"')
    out.line()
    out.line("From Python (standard library; KV_URL and KV_TOKEN exported as above):")
    for line in _PYTHON_EXAMPLE:
        out.line("  " + line)
    out.line()
    out.line('DynamoDB (boto3, the AWS CLI; docs/dynamodb.md), after eval "$(kvctl cluster env)":')
    out.line("""  python -c 'import boto3; print(boto3.client("dynamodb").list_tables())'""")
    out.line()
    if args.foreground:
        adopted = (
            f" (also {' '.join(report.already_running)}, already running when it attached)"
            if report.already_running
            else ""
        )
        out.line(
            "Attached: streaming every process's log below. Ctrl-C here stops the whole "
            f"cluster{adopted}; `kvctl cluster down{kvctl_dir}` in another terminal does too, "
            "and ends this session."
        )
    else:
        out.line(
            f"More: kvctl cluster status{kvctl_dir} | kvctl cluster env{kvctl_dir} | "
            f"kvctl cluster down{kvctl_dir} (the data stays)"
        )
        if report.attached is not None:
            out.line(_attached_text(report.attached, kvctl_dir))


def _attached_text(attached: Attachment, kvctl_dir: str) -> str:
    return (
        f"Attached: `kvctl cluster up --foreground` (pid {attached.pid}) streams the logs; "
        f"Ctrl-C there or `kvctl cluster down{kvctl_dir}` stops the cluster and ends it."
    )


_PYTHON_EXAMPLE: Final = (
    "import kvstore  # .venv/bin/python; finds KV_URL/KV_TOKEN or ./.kvstore",
    "with kvstore.connect_sync() as kv:",
    '    kv.put("greeting", {"hello": "world"})',
    '    print(kv.get("greeting"))',
)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _dir_arg(args: argparse.Namespace) -> str:
    return "" if args.dir is None else f" --dir {shlex.quote(str(args.dir))}"


class _Stop(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP arrived while attached. (A KeyboardInterrupt, so that one
    arriving where the session cannot catch it still ends kvctl as an interrupt would.)"""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def reason(self) -> str:
        return _SIGNAL_NAMES.get(signal.Signals(self.signum), f"signal {self.signum}")


class _Signals:
    """While installed, the first Ctrl-C, SIGTERM or SIGHUP raises :class:`_Stop`; later ones,
    and all of them once the session is :attr:`ending`, are ignored: the session is stopping the
    cluster, and a second Ctrl-C must not leave half of it running."""

    def __init__(self) -> None:
        self.ending = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.ending:
            return
        self.ending = True
        raise _Stop(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class _Foreground:
    """An attached ``up --foreground`` session: attach, start, stream log lines and exit
    reports, and end in one of the three ways of the module docstring."""

    def __init__(self, cluster: LocalCluster, out: Output, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.out = out
        self.args = args
        ids = [spec.process_id for spec in cluster.processes()]
        self.colours = {pid: _COLOURS[index % len(_COLOURS)] for index, pid in enumerate(ids)}
        self.width = max(len(pid) for pid in ids)
        self.follower: LogFollower | None = None
        self.signals = _Signals()

    def run(self, *, created: bool) -> int:
        cluster = self.cluster
        try:
            with self.signals.installed():
                try:
                    with cluster.locked():  # no `down` between attaching and starting
                        cluster.attach()  # refused: nothing was started, nothing is stopped
                        with self.out.spinner(
                            f"starting the cluster in {cluster.root} and waiting until it is "
                            "healthy"
                        ):
                            report = cluster.up()
                    _print_up(
                        cluster,
                        created=created,
                        report=report,
                        statuses=cluster.status(rates=False),
                        args=self.args,
                        out=self.out,
                    )
                    ending = self.follow(report)  # returns with signals.ending set
                except _Stop as stop:
                    if not cluster.attached:
                        raise KeyboardInterrupt from None  # before attaching: nothing to stop
                    self.stop(stop.reason)
                    return EXIT_OK
                except BaseException:
                    self.signals.ending = True
                    if cluster.attached:
                        self.stop(None)  # start-up failed: leave nothing running behind
                    raise
                if ending is not None:
                    self.finish_stopped_elsewhere(ending)
                    return EXIT_OK
                raise self.all_exited()
        finally:
            cluster.detach()

    def follow(self, report: UpReport) -> StopNotice | None:
        """Stream log lines and report processes that exit, until a ``cluster down`` from
        elsewhere (its notice) or until no process is left (None). Signals raise ``_Stop``
        until it returns; from then on they are ignored (the session is ending)."""
        ids = [spec.process_id for spec in self.cluster.processes()]
        self.follower = LogFollower(
            {pid: self.cluster.log_path(pid) for pid in ids}, report.log_offsets
        )
        running = set(report.pids)
        watched_at = time.monotonic()
        while True:
            notice = self.cluster.stop_notice()
            if notice is not None:
                self.signals.ending = True
                return notice
            self.drain()
            if time.monotonic() - watched_at >= LOCAL_WATCH_INTERVAL_MS / 1000:
                watched_at = time.monotonic()
                now = set(self.cluster.running())
                notice = self.cluster.stop_notice()  # `down` writes it before any exit
                if notice is not None:
                    self.signals.ending = True
                    return notice
                for process_id in sorted(running - now):
                    self._report_exit(process_id)
                running = now
                if not running:
                    self.signals.ending = True
                    return None
            time.sleep(LOCAL_FOLLOW_INTERVAL_MS / 1000)  # log and notice polling; bounded

    def drain(self) -> None:
        if self.follower is None:
            return
        for process_id, line in self.follower.poll():
            if self.out.json_mode:
                self.out.json_line({"process": process_id, "line": line})
            else:
                prefix = (f"{process_id:<{self.width}} | ", self.colours.get(process_id, ""))
                self.out.line(Text.assemble(prefix, _pretty(line)))

    def _say(self, text: str) -> None:
        """A kvctl line among the log lines (text mode); a terminal that went away is no
        reason to leave the cluster running, so write errors are ignored."""
        if self.out.json_mode:
            return
        with contextlib.suppress(OSError):
            self.out.line(Text.assemble((f"{'kvctl':<{self.width}} | ", "bold"), text))

    def _event(self, document: dict[str, object]) -> None:
        if self.out.json_mode:
            with contextlib.suppress(OSError):
                self.out.json_line({"process": "kvctl", **document})

    def _report_exit(self, process_id: str) -> None:
        code = self.cluster.exit_status(process_id)
        self._event({"event": "exited", "id": process_id, "status": code})
        if self.out.json_mode:
            return
        with contextlib.suppress(OSError):
            self.out.line(
                Text.assemble(
                    (f"{'kvctl':<{self.width}} | ", "bold red"),
                    f"{process_id} {_how_exited(code)}; see {self.cluster.log_path(process_id)}; "
                    f"`kvctl cluster up{_dir_arg(self.args)}` in another terminal starts it again",
                )
            )

    def stop(self, reason: str | None) -> None:
        """Stop the whole cluster (``reason``: the signal; None: start-up failed)."""
        root = self.cluster.root
        if reason is not None:
            self._say(f"{reason}: stopping the cluster in {root}")
        self._event({"event": "stopping", "by": reason or "start-up failed"})
        report = self.cluster.down()
        self.drain()  # the processes' last lines
        self._event({"event": "stopped", "by": reason or "start-up failed", **report.to_json()})
        self._say(f"{_stopped_text(report)}; the data stays in {root}")

    def finish_stopped_elsewhere(self, notice: StopNotice) -> None:
        """``cluster down`` from elsewhere is stopping the cluster: wait until it is done (it
        holds the kvctl lock until then), show the processes' last lines, say who stopped what;
        ``Unavailable`` when that ``down`` failed (it showed why)."""
        by = f"`kvctl cluster down` (pid {notice.by_pid})"
        self._say(f"{by} is stopping the cluster; this session ends when it is done")
        with self.cluster.locked():
            final = self.cluster.stop_notice() or notice
            self.cluster.exited()  # reap the processes this session started
        self.drain()
        report = final.report
        if report is None:  # that `down` failed (it said why); the session ends all the same
            raise Unavailable(
                f"{by} did not finish stopping the cluster in {self.cluster.root}; this session "
                f"has detached; `kvctl cluster status{_dir_arg(self.args)}` shows what still runs"
            )
        self._event(
            {
                "event": "stopped",
                "by": "kvctl cluster down",
                "by_pid": notice.by_pid,
                **report.to_json(),
            }
        )
        self._say(f"{by}: {_stopped_text(report)}; the data stays in {self.cluster.root}")

    def all_exited(self) -> Unavailable:
        """The error that ends a session whose every process exited on its own."""
        codes = {
            spec.process_id: self.cluster.exit_status(spec.process_id)
            for spec in self.cluster.processes()
        }
        self.drain()
        how = ", ".join(f"{pid} {_how_exited(code)}" for pid, code in codes.items())
        return Unavailable(
            f"every process of the cluster in {self.cluster.root} has exited on its own ({how}); "
            f"the logs are in {self.cluster.root / 'logs'}; `kvctl cluster up"
            f"{_dir_arg(self.args)}` starts them again",
            details={"exit_statuses": codes},
        )


def _how_exited(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _pretty(line: str) -> Text:
    """A JSON log line as ``HH:MM:SS.mmm level event key=value ...``; other lines as they are."""
    try:
        record = json.loads(line)
    except ValueError:
        return Text(line)
    if not isinstance(record, dict) or "event" not in record:
        return Text(line)
    ts = str(record.get("ts", ""))
    clock = ts[11:23] if len(ts) >= 23 else ts
    level = str(record.get("level", ""))
    style = {"warning": "yellow", "error": "bold red", "critical": "bold red"}.get(level, "")
    fields = " ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
        for key, value in record.items()
        if key not in _LOG_SKIP
    )
    return Text.assemble(
        (clock, "dim"),
        " ",
        (f"{level:<7}", style),
        " ",
        (str(record["event"]), "bold"),
        " ",
        fields,
    )


# --- down, status, env ---------------------------------------------------------------------


def _down(args: argparse.Namespace, out: Output) -> int:
    cluster = LocalCluster.open(resolve_dir(args.dir))
    report = cluster.down()
    attached = report.attached
    if attached is not None and not out.json_mode:
        out.line(f"{_stopped_text(report)}; the data stays in {cluster.root}")
        out.line(
            f"The attached `kvctl cluster up --foreground` (pid {attached.pid}) was told to exit; "
            "waiting for it"
        )
    exited = attached is not None and cluster.wait_detached(attached)
    if out.json_mode:
        session = None if attached is None else {**attached.to_json(), "exited": exited}
        out.json({"dir": str(cluster.root), **report.to_json(), "attached_session": session})
    elif attached is None:
        out.line(f"{_stopped_text(report)}; the data stays in {cluster.root}")
    elif exited:
        out.line(f"It has exited (pid {attached.pid}).")
    else:
        out.line(
            f"It is still running after {LOCAL_DETACH_WAIT_MS / 1000:g} s (suspended with "
            f"Ctrl-Z?); it exits once it runs again (pid {attached.pid})."
        )
    return EXIT_OK


def _stopped_text(report: StopReport) -> str:
    parts = []
    if report.terminated:
        parts.append("stopped " + " ".join(report.terminated))
    if report.killed:
        parts.append("killed " + " ".join(report.killed) + " (no answer to SIGTERM in time)")
    return "; ".join(parts) if parts else "nothing was running"


def _status(args: argparse.Namespace, out: Output) -> int:
    cluster = LocalCluster.open(resolve_dir(args.dir))
    with out.spinner("probing every process"):
        statuses = cluster.status(rates=args.rates)
    healthy = all(status.healthy for status in statuses)
    if out.json_mode:
        out.json([status.to_json() for status in statuses])
        return EXIT_OK if healthy else EXIT_UNAVAILABLE
    rows = [
        (
            status.role,
            status.process_id,
            status.url,
            status.pid,
            _health_text(status.health),
            None if status.partitions is None else len(status.partitions),
            status.items,
            status.intents,
            status.requests_per_s,
        )
        for status in statuses
    ]
    out.table(
        ("ROLE", "ID", "URL", "PID", "HEALTH", "PARTITIONS", "ITEMS", "INTENTS", "REQ/S"),
        rows,
        title=f"kvstore local cluster {cluster.root}",
        right=("PID", "PARTITIONS", "ITEMS", "INTENTS", "REQ/S"),
    )
    if cluster.replicated:
        _replication_table(replication_summary(statuses), out)
    if args.partitions:
        partition_rows = [
            (part.partition, status.process_id, part.items, part.intents, part.open_ledger_records)
            for status in statuses
            for part in status.partitions or ()
        ]
        partition_rows.sort(key=lambda row: int(str(row[0])))
        out.table(
            ("PARTITION", "NODE", "ITEMS", "INTENTS", "OPEN LEDGER"),
            partition_rows,
            right=("PARTITION", "ITEMS", "INTENTS", "OPEN LEDGER"),
        )
    up = sum(status.healthy for status in statuses)
    full = [status.process_id for status in statuses if status.health == "disk full"]
    hint = "" if healthy else _start_hint(args)
    if full:
        hint = f"; {', '.join(full)}: disk full, writes refused until space is freed" + (
            hint if len(full) + up < len(statuses) else ""
        )
    out.line(f"{up}/{len(statuses)} healthy" + hint)
    return EXIT_OK if healthy else EXIT_UNAVAILABLE


def _replication_table(rows: list[PartitionReplication], out: Output) -> None:
    """One row per partition of a replicated cluster (see the module docstring)."""

    def lag(row: PartitionReplication) -> str:
        if row.lag is None:
            return "?"
        return " ".join(f"{node}:{behind}" for node, behind in sorted(row.lag.items())) or "-"

    out.table(
        ("PARTITION", "REPLICAS", "LEADER", "EPOCH", "SERVING", "POSITION", "LAG"),
        [
            (
                row.partition,
                " ".join([*row.replicas, *(f"+{node}" for node in row.learners)]),
                row.leader,
                row.epoch,
                "yes" if row.serving else "no",
                "/".join(str(part) for part in row.positions.get(row.leader, ())) or "?",
                lag(row),
            )
            for row in rows
        ],
        title="replication (lag: batches behind; +NODE: a learner)",
        right=("PARTITION", "EPOCH"),
    )


def _start_hint(args: argparse.Namespace) -> str:
    return f"; `kvctl cluster up{_dir_arg(args)}` starts what is down"


def _health_text(health: str) -> Text:
    return Text(health, style="green" if health == "ok" else "bold red")


def _env(args: argparse.Namespace, out: Output) -> int:
    cluster = LocalCluster.open(resolve_dir(args.dir))
    env = cluster.env()
    if out.json_mode:
        out.json(env)
    else:
        for name, value in env.items():
            out.line(f"export {name}={shlex.quote(value)}")
    return EXIT_OK
