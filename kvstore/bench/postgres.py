"""PostgreSQL for ``kvctl bench``: a throwaway server, the workloads as pgbench scripts, figures.

Theory of operation
-------------------
**Binaries.** :func:`find_binaries` looks for ``initdb``, ``postgres``, ``pgbench`` and ``psql``
in ``$KVSTORE_BENCH_PG_BIN`` when it is set (and only there: a directory asked for by name is
never silently replaced by another), else in the highest-versioned complete
``/usr/lib/postgresql/<version>/bin`` (Debian's layout), else on ``PATH``. pgbench must be 15 or
later (``--max-tries``). Nothing found is :class:`PostgresMissing`, a ``NotFound`` (kvctl exit
status 3: retrying will not help, installing will) whose one-line message carries the install
command. On Debian 12, ``dpkg -S`` says pgbench ships in the server package ``postgresql-15``
(psql in ``postgresql-client-15``; ``postgresql-contrib`` is a virtual package the server
provides); releases have moved pgbench between the contrib, client and server packages, and
``apt-get install -y postgresql postgresql-contrib`` gets all four programs wherever it lives.

**Who runs it.** PostgreSQL refuses to run as root. When we are root, every PostgreSQL program
runs as ``$KVSTORE_BENCH_PG_USER`` (default ``postgres``) through :class:`subprocess.Popen`'s
``user=``/``group=``/``extra_groups=[]`` (setuid/setgid/setgroups between fork and exec: no
``runuser``/PAM wrapper in between, so the pid we hold *is* the postmaster); the temporary
directory is chowned to that user. Otherwise they run as the current user. Their environment is
minimal (no ``PG*`` variables from ours, ``HOME`` is the temporary directory, ``LC_ALL=C``).

**The server.** :class:`TempPostgres` is a context manager. ``__enter__`` makes a ``mkdtemp``
directory (in ``/tmp`` when the other user cannot reach the usual temporary directory), runs
``initdb -A trust`` (``--no-sync``: that only skips initdb's own final flush of a directory we
throw away), then starts ``postgres`` itself (not ``pg_ctl start``) in a session of
its own, on a free ``127.0.0.1`` port, with ``unix_socket_directories`` in the directory, the
requested ``max_connections`` and the durability defaults spelled out (``fsync``,
``synchronous_commit``, ``full_page_writes`` on: every commit waits for its WAL flush, as the
store's writes wait for SQLite's fsync). It is ready when ``postmaster.pid`` says ``ready``; all
of this within ``BENCH_SERVER_START_TIMEOUT_MS``. A port taken between our probe and the
server's bind is retried on another port. Then it creates the database ``kvbench``.
``__exit__`` (and a failing ``__enter__``) sends SIGINT, which is PostgreSQL's fast shutdown
(what ``pg_ctl stop -m fast`` sends), waits ``BENCH_SERVER_STOP_TIMEOUT_MS``, then SIGKILLs the
postmaster and its children (backends are session leaders of their own, so they are found by
parent pid in ``/proc``) and removes the directory, whatever exception is on its way, Ctrl-C
included. A Ctrl-C typed in the terminal never reaches the server (its own session): shutdown is
ours alone.

**Running a workload.** :meth:`TempPostgres.run` writes the workload's pgbench script
(:func:`pgbench_script`) and runs ``pgbench -n -M prepared -c C -j min(C, cpus) -T D
--max-tries=BENCH_TXN_ATTEMPTS_MAX``: first ``warmup_s`` seconds without logging, then the
measured ``duration_s`` seconds with ``-l`` (one line per transaction). pgbench retries a
transaction that hit a serialization failure or a deadlock from the first command of the script,
with the same random draws, so a retried transfer is the same transfer, and the ``\\set ok 0`` at
the top re-runs before the ``\\aset`` that may set it again. pgbench runs under
:class:`subprocess.Popen` and the calling thread polls it, calling ``progress`` about every
``BENCH_PROGRESS_INTERVAL_MS`` with the fraction of the measured window elapsed; it is killed
when it outlives its window by ``BENCH_RUN_GRACE_MS``.

**The per-transaction log** (checked against pgbench 15.18 here) has one line per transaction::

    client_id transaction_no time script_no time_epoch time_us retries

``time`` is the latency in microseconds from the first attempt to the end of the last one,
retries included (or ``failed``; ``serialization``/``deadlock`` with ``--failures-detailed``);
``time_epoch time_us`` is when it ended; ``retries`` is present because ``--max-tries`` is not 1
(there is no ``schedule_lag`` column: we never pass ``--rate``). There is one file per pgbench
thread (``<prefix>.<pid>`` and ``<prefix>.<pid>.<thread>``). The measured window runs from the
start of the first completed transaction to the end of the last logged one. A transaction whose
try failed after the ``-T`` deadline is not logged at all (pgbench just stops the client), so
``failed`` counts only give-ups inside the window. pgbench cannot tell whether the condition of a
transfer held, so ``condition_failed`` is ``-1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from kvstore.bench.results import RunResult, summarize
from kvstore.bench.workloads import AMOUNT_MAX, INITIAL_BALANCE, Workload
from kvstore.errors import InternalError, NotFound, Unavailable, ValidationError
from kvstore.limits import (
    BENCH_DURATION_S_MAX,
    BENCH_PROGRESS_INTERVAL_MS,
    BENCH_RUN_GRACE_MS,
    BENCH_SERVER_START_TIMEOUT_MS,
    BENCH_SERVER_STOP_TIMEOUT_MS,
    BENCH_SQL_TIMEOUT_MS,
    BENCH_TXN_ATTEMPTS_MAX,
    LOCAL_LOG_TAIL_LINES,
    LOCAL_POLL_MAX_MS,
)

__all__ = [
    "BIN_DIR_ENV",
    "USER_ENV",
    "DEFAULT_USER",
    "DEBIAN_BIN_GLOB",
    "INSTALL_HINT",
    "DATABASE",
    "SUPERUSER",
    "PostgresMissing",
    "PgBinaries",
    "find_binaries",
    "pgbench_script",
    "PgbenchLog",
    "parse_pgbench_logs",
    "TempPostgres",
]

BIN_DIR_ENV: Final = "KVSTORE_BENCH_PG_BIN"
USER_ENV: Final = "KVSTORE_BENCH_PG_USER"
DEFAULT_USER: Final = "postgres"
DEBIAN_BIN_GLOB: Final = "/usr/lib/postgresql/*/bin"  # read at call time: tests point it away
INSTALL_HINT: Final = "apt-get update && apt-get install -y postgresql postgresql-contrib"
DATABASE: Final = "kvbench"
SUPERUSER: Final = "kvbench"  # initdb's bootstrap superuser, whoever runs the server

_TOOLS: Final = ("initdb", "postgres", "pgbench", "psql")
_PGBENCH_MAJOR_MIN: Final = 15  # --max-tries, retries in the log
_HOST: Final = "127.0.0.1"
_PORT_ATTEMPTS: Final = 5  # a port taken between our probe and the server's bind: try another
_PROGRESS_INTERVAL_S: Final = BENCH_PROGRESS_INTERVAL_MS / 1000
_KILL_WAIT_S: Final = 5.0  # how long SIGKILLed processes may take to vanish
_TOOL_TIMEOUT_S: Final = 10.0  # `pgbench --version`
_VERSION_RE: Final = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_LOG_FAILED: Final = frozenset({"failed", "serialization", "deadlock"})


class PostgresMissing(NotFound):
    """PostgreSQL (server binaries and pgbench 15+) is not installed where we look."""


@dataclass(frozen=True)
class PgBinaries:
    """Absolute paths of the PostgreSQL programs the bench runs."""

    initdb: Path
    postgres: Path
    pgbench: Path
    psql: Path
    pgbench_version: str = ""  # e.g. "15.18"

    @classmethod
    def in_dir(cls, directory: Path) -> PgBinaries:
        return cls.of([directory / tool for tool in _TOOLS])

    @classmethod
    def of(cls, paths: Sequence[Path], pgbench_version: str = "") -> PgBinaries:
        """From the paths of ``initdb``, ``postgres``, ``pgbench`` and ``psql``, in order."""
        initdb, postgres, pgbench, psql = paths
        return cls(initdb, postgres, pgbench, psql, pgbench_version)


def _is_tool(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _missing_message(where: str) -> str:
    return (
        f"PostgreSQL is needed for the comparison and was not found ({where}); install it with "
        f"`{INSTALL_HINT}`, or set {BIN_DIR_ENV} to a directory with {', '.join(_TOOLS)}"
    )


def _debian_dirs(pattern: str) -> list[Path]:
    """``/usr/lib/postgresql/<version>/bin`` directories, highest version first."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        try:
            return tuple(int(part) for part in name.split("."))
        except ValueError:
            return ()

    found = [p for p in glob.glob(pattern) if version(p)]
    return [Path(p) for p in sorted(found, key=version, reverse=True)]


def find_binaries() -> PgBinaries:
    """The PostgreSQL programs: ``$KVSTORE_BENCH_PG_BIN``, else the highest Debian version, else
    ``PATH``; :class:`PostgresMissing` with the install command when none has them all."""
    explicit = os.environ.get(BIN_DIR_ENV, "")
    if explicit:
        directory = Path(explicit)
        missing = [tool for tool in _TOOLS if not _is_tool(directory / tool)]
        if missing:
            raise PostgresMissing(
                _missing_message(f"{BIN_DIR_ENV}={explicit} has no {', '.join(missing)}"),
                details={"dir": explicit, "missing": missing, "install": INSTALL_HINT},
            )
        return _checked(PgBinaries.in_dir(directory.absolute()))
    for directory in _debian_dirs(DEBIAN_BIN_GLOB):
        if all(_is_tool(directory / tool) for tool in _TOOLS):
            return _checked(PgBinaries.in_dir(directory))
    on_path = [shutil.which(tool) for tool in _TOOLS]
    if all(on_path):
        return _checked(PgBinaries.of([Path(str(p)).absolute() for p in on_path]))
    missing = [tool for tool, p in zip(_TOOLS, on_path, strict=True) if not p]
    raise PostgresMissing(
        _missing_message(f"not in {DEBIAN_BIN_GLOB}, and PATH has no {', '.join(missing)}"),
        details={"missing": missing, "install": INSTALL_HINT},
    )


def _checked(binaries: PgBinaries) -> PgBinaries:
    """``binaries`` with pgbench's version, which must be at least 15."""
    try:
        done = subprocess.run(
            [str(binaries.pgbench), "--version"],
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT_S,
            check=False,
        )
        output = done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as error:
        output = str(error)
    match = _VERSION_RE.search(output)
    if match is None or int(match.group(1)) < _PGBENCH_MAJOR_MIN:
        found = output.strip().splitlines()[0] if output.strip() else "no version"
        raise PostgresMissing(
            f"pgbench {_PGBENCH_MAJOR_MIN} or later is needed (for --max-tries); "
            f"{binaries.pgbench} says {found!r}; install it with `{INSTALL_HINT}`, "
            f"or set {BIN_DIR_ENV}",
            details={"pgbench": str(binaries.pgbench), "install": INSTALL_HINT},
        )
    version = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return dataclasses.replace(binaries, pgbench_version=version)


# --- scripts -------------------------------------------------------------------------------


def _two_accounts(accounts: int) -> str:
    """pgbench lines drawing ``a`` and a different ``b`` uniformly from ``1..accounts``:
    ``b = 1 + (a + r) % N`` with ``r`` in ``0..N-2`` equals ``a`` only for ``r = N-1``."""
    return (
        f"\\set a random(1, {accounts})\n"
        f"\\set b 1 + (:a + random(0, {accounts} - 2)) % {accounts}\n"
    )


def pgbench_script(workload: Workload) -> str:
    """The pgbench script of ``workload`` (``ValidationError`` for an unknown kind, or too few
    accounts for a two-account kind)."""
    n = workload.accounts
    if workload.kind in ("transfer", "read2") and n < 2:
        raise ValidationError("accounts", f"{workload.name} needs at least 2 accounts, not {n}")
    if n < 1:
        raise ValidationError("accounts", f"{workload.name} needs at least 1 account, not {n}")
    if workload.kind == "transfer":
        return (
            _two_accounts(n)
            + f"\\set amt random(1, {AMOUNT_MAX})\n"
            + "\\set ok 0\n"
            + "BEGIN ISOLATION LEVEL SERIALIZABLE;\n"
            + "UPDATE accounts SET balance = balance - :amt"
            + " WHERE id = :a AND balance >= :amt RETURNING 1 AS ok \\aset\n"
            + "\\if :ok\n"
            + "UPDATE accounts SET balance = balance + :amt WHERE id = :b;\n"
            + "\\endif\n"
            + "END;\n"
        )
    if workload.kind == "get":
        return f"\\set a random(1, {n})\nSELECT balance FROM accounts WHERE id = :a;\n"
    if workload.kind == "put":
        return (
            f"\\set a random(1, {n})\n"
            f"\\set v random(0, {2 * INITIAL_BALANCE})\n"
            "INSERT INTO accounts (id, balance) VALUES (:a, :v)"
            " ON CONFLICT (id) DO UPDATE SET balance = excluded.balance;\n"
        )
    if workload.kind == "txn1":
        return (
            f"\\set a random(1, {n})\n"
            f"\\set v random(0, {2 * INITIAL_BALANCE})\n"
            "BEGIN ISOLATION LEVEL SERIALIZABLE;\n"
            "INSERT INTO accounts (id, balance) VALUES (:a, :v)"
            " ON CONFLICT (id) DO UPDATE SET balance = excluded.balance;\n"
            "END;\n"
        )
    if workload.kind == "read1":
        return (
            f"\\set a random(1, {n})\n"
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY;\n"
            "SELECT balance FROM accounts WHERE id = :a;\n"
            "END;\n"
        )
    if workload.kind == "read2":
        return (
            _two_accounts(n)
            + "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY;\n"
            + "SELECT balance FROM accounts WHERE id = :a;\n"
            + "SELECT balance FROM accounts WHERE id = :b;\n"
            + "END;\n"
        )
    raise ValidationError("workload", f"no pgbench script for kind {workload.kind!r}")


# --- logs ----------------------------------------------------------------------------------


@dataclass
class PgbenchLog:
    """What pgbench's per-transaction logs say about one run."""

    latencies_us: list[int] = field(default_factory=list)  # completed transactions
    retried: int = 0  # transactions (completed or failed) that needed more than one try
    retries: int = 0  # extra tries in all
    failed: int = 0  # transactions given up on (serialization/deadlock after max tries)
    first_start_us: int | None = None  # epoch µs: the start of the first completed transaction
    last_end_us: int | None = None  # epoch µs: the end of the last logged transaction

    @property
    def window_s(self) -> float:
        if self.first_start_us is None or self.last_end_us is None:
            return 0.0
        return max(0, self.last_end_us - self.first_start_us) / 1e6


def _parse_line(log: PgbenchLog, line: str, *, has_retries: bool, where: str) -> None:
    fields = line.split()
    expected = 7 if has_retries else 6
    if len(fields) != expected:
        raise InternalError(
            f"unexpected pgbench log line ({len(fields)} fields, not {expected}) in {where}: "
            f"{line.strip()!r}"
        )
    try:
        end_us = int(fields[4]) * 1_000_000 + int(fields[5])
        retries = int(fields[6]) if has_retries else 0
        latency = None if fields[2] in _LOG_FAILED else int(fields[2])
    except ValueError:
        raise InternalError(f"unexpected pgbench log line in {where}: {line.strip()!r}") from None
    if retries:
        log.retried += 1
        log.retries += retries
    if latency is None:
        log.failed += 1
    else:
        log.latencies_us.append(latency)
        start = end_us - latency
        if log.first_start_us is None or start < log.first_start_us:
            log.first_start_us = start
    if log.last_end_us is None or end_us > log.last_end_us:
        log.last_end_us = end_us


def parse_pgbench_logs(paths: Iterable[Path], *, has_retries: bool = True) -> PgbenchLog:
    """Read pgbench ``-l`` files (``has_retries``: run with ``--max-tries`` other than 1)."""
    log = PgbenchLog()
    for path in paths:
        with path.open(encoding="ascii", errors="replace") as file:
            for line in file:
                if line.strip():
                    _parse_line(log, line, has_retries=has_retries, where=str(path))
    return log


# --- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    """The account PostgreSQL's programs run as (uid None: ours, no switching)."""

    name: str
    uid: int | None
    gid: int | None


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        try:
            name = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            name = str(os.geteuid())
        return _RunAs(name, None, None)
    name = os.environ.get(USER_ENV, "") or DEFAULT_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NotFound(
            f"PostgreSQL refuses to run as root and there is no user {name!r} to run it as; "
            f"create one (`useradd --system {name}`) or set {USER_ENV} to another",
            details={"user": name},
        ) from None
    if entry.pw_uid == 0:
        raise ValidationError(USER_ENV, f"{name!r} is root; PostgreSQL refuses to run as root")
    return _RunAs(name, entry.pw_uid, entry.pw_gid)


def _temp_parent(run_as: _RunAs) -> str:
    """Where the temporary directory goes: the usual temporary directory, unless PostgreSQL
    runs as another user who cannot reach it (a private ``$TMPDIR`` such as pytest's): then
    ``/tmp``, which every user can."""
    usual = tempfile.gettempdir()
    if run_as.uid is None:
        return usual
    path = Path(usual).resolve()
    reachable = all(p.stat().st_mode & 0o001 for p in (path, *path.parents))
    return usual if reachable else "/tmp"


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from ``/proc``; empty where there is none)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(entry.path, "stat").read_text()
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _kill_postmaster(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the postmaster and its children, and wait until they are gone.

    Backends are session leaders of their own, out of the postmaster's process group, and would
    notice its death only eventually: they are found by parent pid before it goes (afterwards
    their parent is init) and killed too.
    """
    children = _children(proc.pid)
    _kill(proc.pid)
    proc.wait()
    for child in children:
        _kill(child)
    deadline = time.monotonic() + _KILL_WAIT_S
    for child in children:
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = LOCAL_LOG_TAIL_LINES, offset: int = 0) -> str:
    """The last ``lines`` non-empty lines of ``path`` after byte ``offset``, one-line friendly."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


class TempPostgres:
    """A PostgreSQL server in a temporary directory, alive inside a ``with`` block.

    ``port``, ``version`` (``"PostgreSQL 15.18"``), ``directory`` and ``pid`` (the postmaster)
    are set by ``__enter__``.
    """

    def __init__(self, binaries: PgBinaries, *, max_connections: int) -> None:
        if max_connections < 1:
            raise ValidationError("max_connections", f"must be at least 1, not {max_connections}")
        self.binaries = binaries
        self.max_connections = max_connections
        self.port = 0
        self.version = ""
        self.directory: Path | None = None
        self.pid: int | None = None
        self._as = _run_as()
        self._postmaster: subprocess.Popen[bytes] | None = None
        self._runs = 0

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> TempPostgres:
        if self.directory is not None:
            raise ValidationError("TempPostgres", "already started; use a new one")
        self.directory = Path(tempfile.mkdtemp(prefix="kvbench-pg-", dir=_temp_parent(self._as)))
        try:
            if self._as.uid is not None:
                os.chown(self.directory, self._as.uid, self._as.gid or 0)
            deadline = time.monotonic() + BENCH_SERVER_START_TIMEOUT_MS / 1000
            self._initdb(deadline)
            self._start(deadline)
            shown = self._sql(["SHOW server_version"], database="postgres").strip()
            self.version = f"PostgreSQL {shown.split()[0]}" if shown else "PostgreSQL"
            self._sql([f"CREATE DATABASE {DATABASE}"], database="postgres")
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close()

    def _server_args(self) -> list[str]:
        """The client options that reach this server as its superuser (psql and pgbench)."""
        return ["-h", _HOST, "-p", str(self.port), "-U", SUPERUSER]

    def _close(self) -> None:
        try:
            self._stop_server()
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                if self.directory.exists():  # something was still writing: once more
                    time.sleep(0.1)
                    shutil.rmtree(self.directory, ignore_errors=True)

    def _stop_server(self) -> None:
        proc = self._postmaster
        if proc is None:
            return
        self._postmaster = None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # fast shutdown: what `pg_ctl stop -m fast` sends
                proc.wait(timeout=BENCH_SERVER_STOP_TIMEOUT_MS / 1000)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                _kill_postmaster(proc)

    # --- start ---------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        assert self.directory is not None
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.directory),
            "USER": self._as.name,
            "LOGNAME": self._as.name,
            "LC_ALL": "C",
            "LANG": "C",
        }

    def _popen(
        self, command: Sequence[str], *, stdout: IO[bytes] | int, stderr: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        """Start one PostgreSQL program as ``self._as``, in a session of its own."""
        assert self.directory is not None
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=self.directory,
            env=self._env(),
            start_new_session=True,
            user=self._as.uid,
            group=self._as.gid,
            extra_groups=[] if self._as.uid is not None else None,
        )

    def _call(self, command: Sequence[str], *, timeout_s: float, what: str) -> str:
        """Run one program to its end; its stdout, or ``Unavailable`` with its stderr."""
        proc = self._popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{what} did not finish within {timeout_s:.0f} s") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            message = " | ".join(
                line.strip() for line in err.decode("utf-8", "replace").splitlines()[-5:]
            )
            raise Unavailable(
                f"{what} failed with status {proc.returncode}: {message or 'no message'}",
                details={"exit_status": proc.returncode},
            )
        return out.decode("utf-8", "replace")

    def _initdb(self, deadline: float) -> None:
        assert self.directory is not None
        self._call(
            [
                str(self.binaries.initdb),
                "-D",
                str(self.directory / "data"),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout_s=deadline - time.monotonic(),
            what="initdb",
        )

    def _start(self, deadline: float) -> None:
        assert self.directory is not None
        log_path = self.directory / "server.log"
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port()
            offset = log_path.stat().st_size if log_path.exists() else 0
            with log_path.open("ab") as log:
                proc = self._popen(
                    [
                        str(self.binaries.postgres),
                        "-D",
                        str(self.directory / "data"),
                        "-c",
                        f"listen_addresses={_HOST}",
                        "-c",
                        f"port={port}",
                        "-c",
                        f"unix_socket_directories={self.directory}",
                        "-c",
                        f"max_connections={self.max_connections}",
                        "-c",
                        "fsync=on",
                        "-c",
                        "synchronous_commit=on",
                        "-c",
                        "full_page_writes=on",
                        "-c",
                        "logging_collector=off",
                    ],
                    stdout=log,
                    stderr=log,
                )
            self._postmaster = proc
            self.pid = proc.pid
            if self._wait_ready(proc, deadline):
                self.port = port
                return
            tail = _tail(log_path, offset=offset)
            if proc.poll() is not None and "could not bind" in tail:
                self._postmaster = None
                continue
            self._stop_server()
            how = (
                f"exited with status {proc.returncode}"
                if proc.returncode is not None
                else f"was not ready within {BENCH_SERVER_START_TIMEOUT_MS / 1000:g} s"
            )
            raise Unavailable(
                f"PostgreSQL {how}; the end of {log_path}: {tail or '(empty)'}",
                details={"log": str(log_path)},
            )
        raise Unavailable(f"PostgreSQL found no free port in {_PORT_ATTEMPTS} tries")

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once ``postmaster.pid`` says ``ready``; False when it exits or time is up."""
        assert self.directory is not None
        pid_file = self.directory / "data" / "postmaster.pid"
        delay_s = 0.01
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # Line 8 is the postmaster's status (PG 10+): "starting", "ready", ...
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return True
            time.sleep(delay_s)  # readiness polling, capped backoff, bounded by the deadline
            delay_s = min(delay_s * 2, LOCAL_POLL_MAX_MS / 1000)
        return False

    # --- SQL -----------------------------------------------------------------------------

    def _sql(self, statements: Sequence[str], *, database: str = DATABASE) -> str:
        """Run each statement in its own transaction through psql; the unaligned output."""
        if self._postmaster is None:
            raise ValidationError("TempPostgres", "not started; use it in a `with` block")
        command = [
            str(self.binaries.psql),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            *self._server_args(),
            "-d",
            database,
        ]
        for statement in statements:
            command += ["-c", statement]
        return self._call(command, timeout_s=BENCH_SQL_TIMEOUT_MS / 1000, what="psql")

    def load(self, accounts: int) -> None:
        """A fresh ``accounts`` table with rows ``1..accounts`` at ``INITIAL_BALANCE``."""
        if accounts < 1:
            raise ValidationError("accounts", f"must be at least 1, not {accounts}")
        self._sql(
            [
                "DROP TABLE IF EXISTS accounts",
                "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)",
                "INSERT INTO accounts (id, balance)"
                f" SELECT g, {INITIAL_BALANCE} FROM generate_series(1, {accounts}) AS g",
                "VACUUM ANALYZE accounts",
            ]
        )

    def check_total(self, accounts: int) -> int:
        """SUM(balance) of accounts ``1..accounts`` (a transfer workload keeps it at
        ``accounts * INITIAL_BALANCE``)."""
        out = self._sql(
            [f"SELECT COALESCE(SUM(balance), 0) FROM accounts WHERE id BETWEEN 1 AND {accounts}"]
        )
        return int(out.strip())

    # --- runs ----------------------------------------------------------------------------

    def run(
        self,
        workload: Workload,
        *,
        clients: int,
        duration_s: int,
        warmup_s: int,
        progress: Callable[[float], None] | None = None,
    ) -> RunResult:
        """Run ``workload`` with pgbench: ``warmup_s`` seconds not counted, then ``duration_s``
        measured seconds. ``progress`` is called from this thread about every 0.5 s with the
        fraction of the measured window done."""
        if self._postmaster is None or self.directory is None:
            raise ValidationError("TempPostgres", "not started; use it in a `with` block")
        if not 1 <= clients <= self.max_connections:
            raise ValidationError(
                "clients", f"must be 1..{self.max_connections} (max_connections), not {clients}"
            )
        if not 1 <= duration_s <= BENCH_DURATION_S_MAX:
            raise ValidationError(
                "duration_s", f"must be 1..{BENCH_DURATION_S_MAX}, not {duration_s}"
            )
        if not 0 <= warmup_s <= BENCH_DURATION_S_MAX:
            raise ValidationError("warmup_s", f"must be 0..{BENCH_DURATION_S_MAX}, not {warmup_s}")
        script = pgbench_script(workload)
        n = workload.accounts
        present = self._sql([f"SELECT count(*) FROM accounts WHERE id BETWEEN 1 AND {n}"])
        if int(present.strip()) != n:
            # A transfer to a missing row would destroy money: refuse rather than mislead.
            raise ValidationError(
                "accounts", f"{workload.name} needs accounts 1..{n}; load({n}) first"
            )
        self._runs += 1
        run_dir = self.directory / f"run-{self._runs}-{workload.name}"
        run_dir.mkdir()
        script_path = run_dir / "script.sql"
        script_path.write_text(script, encoding="utf-8")
        if self._as.uid is not None:
            for path in (run_dir, script_path):
                os.chown(path, self._as.uid, self._as.gid or 0)
        threads = min(clients, os.cpu_count() or 1)
        if warmup_s > 0:
            self._pgbench(run_dir, "warmup", clients, threads, warmup_s, log=False, progress=None)
        self._pgbench(run_dir, "measure", clients, threads, duration_s, log=True, progress=progress)
        has_retries = BENCH_TXN_ATTEMPTS_MAX > 1
        log_paths = sorted(run_dir.glob("txn.*"))
        log = parse_pgbench_logs(log_paths, has_retries=has_retries)
        for path in log_paths:  # a long run's logs are large; the figures are all we keep
            path.unlink()
        window_s = log.window_s or float(duration_s)
        return summarize(
            "postgresql",
            workload.name,
            clients,
            window_s,
            log.latencies_us,
            condition_failed=-1,
            retried=log.retried,
            retries=log.retries,
            failed=log.failed,
            detail={"version": self.version, "client": f"pgbench -M prepared -j {threads}"},
        )

    def _pgbench(
        self,
        run_dir: Path,
        phase: str,
        clients: int,
        threads: int,
        duration_s: int,
        *,
        log: bool,
        progress: Callable[[float], None] | None,
    ) -> None:
        command = [
            str(self.binaries.pgbench),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(threads),
            "-T",
            str(duration_s),
            f"--max-tries={BENCH_TXN_ATTEMPTS_MAX}",
            "-f",
            str(run_dir / "script.sql"),
            *self._server_args(),
        ]
        if log:
            command += ["-l", f"--log-prefix={run_dir / 'txn'}"]
        command.append(DATABASE)
        out_path = run_dir / f"pgbench-{phase}.out"
        with out_path.open("wb") as out:
            proc = self._popen(command, stdout=out, stderr=subprocess.STDOUT)
        started = time.monotonic()
        deadline = started + duration_s + BENCH_RUN_GRACE_MS / 1000
        reported = 0.0
        try:
            while True:
                try:
                    proc.wait(timeout=_PROGRESS_INTERVAL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if progress is not None and reported < 1.0:
                    reported = min(1.0, (now - started) / duration_s)
                    progress(reported)
                if now >= deadline:
                    raise Unavailable(
                        f"pgbench ({phase}) was still running {BENCH_RUN_GRACE_MS / 1000:g} s "
                        f"after its {duration_s} s; the end of its output: {_tail(out_path)}"
                    )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise Unavailable(
                f"pgbench ({phase}) failed with status {proc.returncode}: "
                f"{_tail(out_path, lines=5) or 'no output'}",
                details={"exit_status": proc.returncode, "output": str(out_path)},
            )
        if progress is not None and reported < 1.0:
            progress(1.0)
