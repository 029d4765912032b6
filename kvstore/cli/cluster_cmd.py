"""``kvctl cluster up|down|status|env``: a cluster of real processes on this machine.

Theory of operation
-------------------
Thin commands over :class:`kvstore.localcluster.LocalCluster` (which owns the directory layout,
the processes, health and status; read its docstring first). The directory is ``--dir``, else
``$KVSTORE_DIR``, else ``./.kvstore``.

* ``up`` creates the cluster on first use (``--nodes``, ``--coordinators``, ``--partitions``
  apply only then; giving a different shape for an existing cluster is a usage error, not a
  silent no-op), starts whatever is not running, leaves running processes alone, waits until
  every process is healthy, and prints where the API is, the admin token and first requests.
  ``--foreground`` then stays attached: it streams every process's log lines prefixed with the
  process id (text: time, level, event and fields; ``--json``: one ``{"process", "line"}`` object
  per line), reports a process that exits, and on Ctrl-C, SIGTERM or SIGHUP (the terminal went
  away) stops the whole cluster. If
  start-up fails in the foreground, what was started is stopped again before the error is shown.
* ``down`` stops every process (SIGTERM, then SIGKILL after the grace period); data stays.
* ``status`` shows every process (role, id, URL, pid, health, partitions, live items, pending
  intents, requests per second); ``--partitions`` adds a row per partition. Exit status 0 when
  every process is healthy, 6 (unavailable) otherwise, so scripts can wait on it.
* ``env`` prints ``export KV_URL=... KV_TOKEN=...`` lines for ``eval "$(kvctl cluster env)"``.
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
from kvstore.errors import ValidationError
from kvstore.limits import PARTITIONS_DEFAULT
from kvstore.localcluster import (
    DEFAULT_DIR,
    DIR_ENV,
    LocalCluster,
    LogFollower,
    ProcessStatus,
    StopReport,
    UpReport,
    resolve_dir,
)

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands

__all__ = ["register", "NODES_DEFAULT", "COORDINATORS_DEFAULT"]

NODES_DEFAULT: Final = 3
COORDINATORS_DEFAULT: Final = 1
_FOLLOW_INTERVAL_S: Final = 0.1  # log polling of --foreground
_WATCH_INTERVAL_S: Final = 1.0  # how often --foreground checks that every process still runs
_COLOURS: Final = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP)
_LOG_SKIP: Final = frozenset({"ts", "level", "process", "logger", "event"})


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``kvctl cluster ...`` to ``commands``."""
    cluster = commands.add_parser(
        "cluster",
        help="run a local cluster (real processes on 127.0.0.1)",
        description="Run a kvstore cluster on this machine: storage nodes and coordinators as "
        f"real processes on 127.0.0.1, kept in one directory (--dir, ${DIR_ENV}, ./{DEFAULT_DIR}).",
    )
    actions = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)

    up = actions.add_parser(
        "up",
        parents=[common],
        help="create the cluster on first use, start what is not running, wait until healthy",
        description="Create the local cluster on first use (--nodes, --coordinators and "
        "--partitions apply then), start every process that is not running, leave running ones "
        "alone, and wait until all are healthy.",
    )
    up.add_argument(
        "--nodes", type=int, metavar="N", help=f"storage nodes (default {NODES_DEFAULT})"
    )
    up.add_argument(
        "--coordinators",
        type=int,
        metavar="N",
        help=f"coordinators (default {COORDINATORS_DEFAULT})",
    )
    up.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help=f"partitions of the key space (default {PARTITIONS_DEFAULT})",
    )
    up.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached, stream every process's log, stop everything on Ctrl-C",
    )
    up.set_defaults(handler=_up)

    down = actions.add_parser(
        "down",
        parents=[common],
        help="stop every process of the cluster (the data stays)",
        description="Stop every process (SIGTERM, SIGKILL after a grace period). Data, logs, "
        "the secret and the tokens stay; `kvctl cluster up` starts the same cluster again.",
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
        help="also show each partition (owner, live items, intents, open ledger records)",
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
        help="print KV_URL and KV_TOKEN for the SDK and curl",
        description="Print shell exports of KV_URL (the first coordinator's API) and KV_TOKEN "
        '(the admin token): eval "$(kvctl cluster env)".',
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
    )
    if not created:
        _check_shape(cluster, args)
    if not args.foreground:
        with out.spinner(f"starting the cluster in {root} and waiting until it is healthy"):
            report = cluster.up()
            statuses = cluster.status(rates=False)
        _print_up(cluster, created=created, report=report, statuses=statuses, args=args, out=out)
        return EXIT_OK if all(status.healthy for status in statuses) else EXIT_UNAVAILABLE
    session = _Foreground(cluster, out)
    with _sigterm_raises():
        try:
            with out.spinner(f"starting the cluster in {root} and waiting until it is healthy"):
                report = cluster.up()
            _print_up(
                cluster,
                created=created,
                report=report,
                statuses=cluster.status(rates=False),
                args=args,
                out=out,
            )
            session.follow(report)
        except (KeyboardInterrupt, _Stop):
            pass  # the way an attached session ends
        finally:
            session.stop()  # also when start-up failed: leave nothing running behind
    return EXIT_OK


def _check_shape(cluster: LocalCluster, args: argparse.Namespace) -> None:
    shape = {
        "nodes": len(cluster.config.nodes),
        "coordinators": len(cluster.config.coordinators),
        "partitions": cluster.config.cluster_map.partitions.partition_count,
    }
    for name, existing in shape.items():
        given = getattr(args, name)
        if given is not None and given != existing:
            raise ValidationError(
                f"--{name}",
                f"the cluster in {cluster.root} has {existing} {name}; its shape is fixed when it "
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
    if args.foreground:
        out.line("Streaming every process's log below; Ctrl-C stops the whole cluster.")
    else:
        out.line(
            f"More: kvctl cluster status{kvctl_dir} | kvctl cluster env{kvctl_dir} | "
            f"kvctl cluster down{kvctl_dir} (the data stays)"
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


class _Stop(Exception):
    """SIGTERM or SIGHUP (the terminal went away) arrived while attached."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`_Stop` (as Ctrl-C raises KeyboardInterrupt) until
    restored."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        raise _Stop

    previous = {signum: signal.signal(signum, on_signal) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Foreground:
    """An attached ``up --foreground`` session: log lines, exit reports, the final stop."""

    def __init__(self, cluster: LocalCluster, out: Output) -> None:
        self.cluster = cluster
        self.out = out
        ids = [spec.process_id for spec in cluster.processes()]
        self.colours = {pid: _COLOURS[index % len(_COLOURS)] for index, pid in enumerate(ids)}
        self.width = max(len(pid) for pid in ids)
        self.follower: LogFollower | None = None

    def follow(self, report: UpReport) -> None:
        """Stream log lines until Ctrl-C or SIGTERM (which raise); report processes that exit."""
        ids = [spec.process_id for spec in self.cluster.processes()]
        self.follower = LogFollower(
            {pid: self.cluster.log_path(pid) for pid in ids}, report.log_offsets
        )
        running = set(report.pids)
        watched_at = time.monotonic()
        while True:
            self.drain()
            if time.monotonic() - watched_at >= _WATCH_INTERVAL_S:
                watched_at = time.monotonic()
                now = set(self.cluster.running())
                for process_id in sorted(running - now):
                    self._report_exit(process_id)
                running = now
            time.sleep(_FOLLOW_INTERVAL_S)  # log polling while attached; Ctrl-C ends it

    def drain(self) -> None:
        if self.follower is None:
            return
        for process_id, line in self.follower.poll():
            if self.out.json_mode:
                self.out.json_line({"process": process_id, "line": line})
            else:
                prefix = (f"{process_id:<{self.width}} | ", self.colours.get(process_id, ""))
                self.out.line(Text.assemble(prefix, _pretty(line)))

    def _report_exit(self, process_id: str) -> None:
        code = self.cluster.exit_status(process_id)
        if self.out.json_mode:
            self.out.json_line(
                {"process": "kvctl", "event": "exited", "id": process_id, "status": code}
            )
            return
        self.out.line(
            Text.assemble(
                (f"{'kvctl':<{self.width}} | ", "bold red"),
                f"{process_id} {_how_exited(code)}; see {self.cluster.log_path(process_id)}; "
                "`kvctl cluster up` in another terminal starts it again",
            )
        )

    def stop(self) -> None:
        """Stop the whole cluster; a second Ctrl-C must not leave half of it running."""
        previous = {
            signum: signal.signal(signum, signal.SIG_IGN)
            for signum in (signal.SIGINT, *_STOP_SIGNALS)
        }
        try:
            if not self.out.json_mode:
                self.out.line("Stopping the cluster...")
            report = self.cluster.down()
            self.drain()  # the processes' last lines
            if self.out.json_mode:
                self.out.json_line({"process": "kvctl", "event": "stopped", **_stop_json(report)})
            else:
                self.out.line(f"{_stopped_text(report)}; the data stays in {self.cluster.root}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


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
    if out.json_mode:
        out.json({"dir": str(cluster.root), **_stop_json(report)})
    else:
        out.line(f"{_stopped_text(report)}; the data stays in {cluster.root}")
    return EXIT_OK


def _stop_json(report: StopReport) -> dict[str, object]:
    return {
        "terminated": list(report.terminated),
        "killed": list(report.killed),
        "not_running": list(report.not_running),
    }


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
    out.line(f"{up}/{len(statuses)} healthy" + ("" if healthy else _start_hint(args)))
    return EXIT_OK if healthy else EXIT_UNAVAILABLE


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
