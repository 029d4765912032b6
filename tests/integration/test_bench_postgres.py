"""kvstore.bench.postgres: a throwaway PostgreSQL server driven by pgbench.

The server tests skip (with the reason) where PostgreSQL is not installed; the rest always run.
Every server lives in a ``with TempPostgres(...)`` block, so a failing test leaves no process or
directory behind.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.bench import postgres
from kvstore.bench.postgres import (
    INSTALL_HINT,
    PgBinaries,
    PostgresMissing,
    TempPostgres,
    find_binaries,
    parse_pgbench_logs,
    pgbench_script,
)
from kvstore.bench.workloads import INITIAL_BALANCE, Workload, workload
from kvstore.cli.output import EXIT_NOT_FOUND, exit_status
from kvstore.errors import ErrorCode, InternalError, NotFound, ValidationError

EXIT_WAIT_S = 60.0  # a guard: killed processes vanish at once, a loaded machine only delays it


def _binaries() -> PgBinaries:
    try:
        return find_binaries()
    except PostgresMissing as error:
        pytest.skip(f"PostgreSQL is not installed: {error.message}")


@pytest.fixture(scope="module")
def pg() -> Iterator[TempPostgres]:
    with TempPostgres(_binaries(), max_connections=20) as server:
        yield server


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


# --- the server ----------------------------------------------------------------------------


def test_transfer_conserves_money(pg: TempPostgres) -> None:
    pg.load(200)
    seen: list[float] = []
    started = time.monotonic()
    result = pg.run(
        Workload("transfer", "transfer", 200, "transfer over 200"),
        clients=4,
        duration_s=2,
        warmup_s=1,
        progress=seen.append,
    )
    run_s = time.monotonic() - started
    assert result.system == "postgresql"
    assert result.workload == "transfer"
    assert result.completed > 0
    assert result.p50_ms > 0
    assert result.p99_ms >= result.p50_ms
    # The measured window (first transaction's start to the last one's end) lies within the
    # run; how close it comes to the 2 s asked for depends on the machine's load.
    assert 0 < result.duration_s <= run_s
    assert result.condition_failed == -1
    assert result.retries >= result.retried >= 0
    assert result.detail["version"].startswith("PostgreSQL ")
    assert result.detail["client"].startswith("pgbench -M prepared -j ")
    assert pg.check_total(200) == 200 * INITIAL_BALANCE
    # Money moved (the second UPDATE ran), and progress went from the start to the end.
    assert pg._sql(["SELECT count(*) FROM accounts WHERE balance <> 1000"]).strip() != "0"
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


def test_contention_conserves_money(pg: TempPostgres) -> None:
    pg.load(200)
    result = pg.run(workload("contention"), clients=4, duration_s=2, warmup_s=1)
    assert result.workload == "contention"
    assert result.completed > 0
    assert pg.check_total(200) == 200 * INITIAL_BALANCE
    # Only the 100 hot accounts moved.
    assert pg._sql(["SELECT count(*) FROM accounts WHERE id > 100 AND balance <> 1000"]) == "0\n"


def test_refused_transfers_move_nothing(pg: TempPostgres) -> None:
    """Half the accounts are empty: their transfers are refused and must not credit ``b`` (a
    stale ``ok`` from an earlier transaction would), the others must debit and credit."""
    pg.load(10)
    pg._sql(["UPDATE accounts SET balance = 0 WHERE id % 2 = 1"])
    small = Workload("transfer10", "transfer", 10, "transfer over 10")
    result = pg.run(small, clients=2, duration_s=1, warmup_s=0)
    assert result.completed > 0
    assert pg.check_total(10) == 5 * INITIAL_BALANCE
    assert int(pg._sql(["SELECT min(balance) FROM accounts"])) >= 0


@pytest.mark.parametrize("name", ["get", "put", "read2"])
def test_other_workloads_run(pg: TempPostgres, name: str) -> None:
    pg.load(50)
    w = workload(name)
    result = pg.run(Workload(w.name, w.kind, 50, w.summary), clients=2, duration_s=1, warmup_s=0)
    assert result.completed > 0
    assert result.failed == 0


@pytest.mark.parametrize("accounts", [2, 3, 7])
def test_second_account_always_differs(pg: TempPostgres, accounts: int) -> None:
    """pgbench itself draws ``a`` and ``b`` with the script's own lines; ``1/0`` aborts the
    client (pgbench exits non-zero) if they are ever equal, and ``b`` stays in range."""
    assert pg.directory is not None
    script = pg.directory / f"pick-{accounts}.sql"
    script.write_text(
        postgres._two_accounts(accounts)
        + f"\\if :a = :b or :b < 1 or :b > {accounts}\nSELECT 1 / 0;\n\\endif\n"
    )
    script.chmod(0o644)
    pg._call(
        [
            str(pg.binaries.pgbench),
            "-n",
            "-t",
            "300",
            "-f",
            str(script),
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            postgres.SUPERUSER,
            postgres.DATABASE,
        ],
        timeout_s=30,
        what="pgbench",
    )


def test_interrupted_run_kills_pgbench(pg: TempPostgres) -> None:
    pg.load(100)

    def interrupt(_fraction: float) -> None:
        raise KeyboardInterrupt

    assert pg.directory is not None
    with pytest.raises(KeyboardInterrupt):
        pg.run(workload("contention"), clients=2, duration_s=30, warmup_s=0, progress=interrupt)
    deadline = time.monotonic() + EXIT_WAIT_S
    while _processes_mentioning(f"{pg.directory}/run-") and time.monotonic() < deadline:
        time.sleep(0.05)  # until the killed processes are gone; bounded by the deadline
    assert _processes_mentioning(f"{pg.directory}/run-") == []
    assert pg.check_total(100) == 100 * INITIAL_BALANCE  # the server is still fine


def test_run_validates_its_arguments(pg: TempPostgres) -> None:
    pg.load(50)
    with pytest.raises(ValidationError, match="load"):
        pg.run(workload("get"), clients=1, duration_s=1, warmup_s=0)  # 10,000 accounts
    with pytest.raises(ValidationError):
        pg.run(workload("get"), clients=0, duration_s=1, warmup_s=0)
    with pytest.raises(ValidationError):
        pg.run(workload("get"), clients=21, duration_s=1, warmup_s=0)
    with pytest.raises(ValidationError):
        pg.run(workload("get"), clients=1, duration_s=0, warmup_s=0)


def test_exit_leaves_nothing_behind() -> None:
    server = TempPostgres(_binaries(), max_connections=5)
    with pytest.raises(RuntimeError), server:
        assert server.directory is not None and server.pid is not None
        directory, pid, port = server.directory, server.pid, server.port
        backends = postgres._children(pid)
        assert backends  # checkpointer, walwriter, ...
        assert _processes_mentioning(str(directory))
        raise RuntimeError("the with block fails")
    assert not directory.exists()
    assert not postgres._alive(pid)
    assert not [child for child in backends if postgres._alive(child)]
    assert _processes_mentioning(str(directory)) == []
    assert _processes_mentioning(f"port={port}") == []
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(1)
        probe.connect(("127.0.0.1", port))


def test_server_that_will_not_stop_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No time for the fast shutdown: the postmaster and its children are SIGKILLed."""
    monkeypatch.setattr(postgres, "BENCH_SERVER_STOP_TIMEOUT_MS", 0)
    killed: list[int] = []
    kill = postgres._kill_postmaster

    def recording_kill(proc: subprocess.Popen[bytes]) -> None:
        killed.append(proc.pid)
        kill(proc)

    monkeypatch.setattr(postgres, "_kill_postmaster", recording_kill)
    with TempPostgres(_binaries(), max_connections=5) as server:
        assert server.directory is not None and server.pid is not None
        directory, pid = server.directory, server.pid
        backends = postgres._children(pid)
        assert backends
    assert killed == [pid]
    assert not directory.exists()
    assert not postgres._alive(pid)
    assert not [child for child in backends if postgres._alive(child)]
    assert _processes_mentioning(str(directory)) == []


def test_failed_start_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the server is up but before ``__enter__`` returns: no ``__exit__`` will
    come, so ``__enter__`` cleans up itself."""
    started: list[tuple[Path, int]] = []

    def interrupted(self: TempPostgres, *_args: object, **_kwargs: object) -> str:
        assert self.directory is not None and self.pid is not None
        started.append((self.directory, self.pid))
        raise KeyboardInterrupt

    monkeypatch.setattr(TempPostgres, "_sql", interrupted)
    with pytest.raises(KeyboardInterrupt), TempPostgres(_binaries(), max_connections=5):
        pytest.fail("__enter__ returned")
    [(directory, pid)] = started
    assert not directory.exists()
    assert not postgres._alive(pid)
    assert _processes_mentioning(str(directory)) == []


# --- finding the binaries ------------------------------------------------------------------


def _nothing_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(postgres, "DEBIAN_BIN_GLOB", str(tmp_path / "none" / "*" / "bin"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))


def test_missing_binaries_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _nothing_anywhere(monkeypatch, tmp_path)
    monkeypatch.delenv(postgres.BIN_DIR_ENV, raising=False)
    with pytest.raises(PostgresMissing) as caught:
        find_binaries()
    error = caught.value
    assert isinstance(error, NotFound) and error.code is ErrorCode.NotFound
    assert exit_status(error.code) == EXIT_NOT_FOUND
    assert INSTALL_HINT in error.message
    assert "\n" not in error.message
    assert error.details["install"] == INSTALL_HINT


def test_empty_bin_dir_is_missing_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _nothing_anywhere(monkeypatch, tmp_path)
    empty = tmp_path / "pgbin"
    empty.mkdir()
    monkeypatch.setenv(postgres.BIN_DIR_ENV, str(empty))
    with pytest.raises(PostgresMissing) as caught:
        find_binaries()
    assert INSTALL_HINT in caught.value.message
    assert str(empty) in caught.value.message


def _fake_bin(directory: Path, pgbench_says: str, tools: tuple[str, ...]) -> None:
    directory.mkdir(parents=True)
    for tool in tools:
        path = directory / tool
        path.write_text(f"#!/bin/sh\necho '{pgbench_says}'\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_highest_complete_debian_version_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _nothing_anywhere(monkeypatch, tmp_path)
    monkeypatch.delenv(postgres.BIN_DIR_ENV, raising=False)
    root = tmp_path / "lib"
    all_tools = ("initdb", "postgres", "pgbench", "psql")
    _fake_bin(root / "9.6" / "bin", "pgbench (PostgreSQL) 9.6.24", all_tools)
    _fake_bin(root / "15" / "bin", "pgbench (PostgreSQL) 15.3", all_tools)
    _fake_bin(root / "16" / "bin", "psql (PostgreSQL) 16.1", ("psql",))  # client only
    monkeypatch.setattr(postgres, "DEBIAN_BIN_GLOB", str(root / "*" / "bin"))
    found = find_binaries()
    assert found.pgbench == root / "15" / "bin" / "pgbench"
    assert found.pgbench_version == "15.3"


def test_old_pgbench_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _nothing_anywhere(monkeypatch, tmp_path)
    old = tmp_path / "old"
    _fake_bin(old, "pgbench (PostgreSQL) 14.9", ("initdb", "postgres", "pgbench", "psql"))
    monkeypatch.setenv(postgres.BIN_DIR_ENV, str(old))
    with pytest.raises(PostgresMissing, match="pgbench 15 or later"):
        find_binaries()


# --- scripts and logs ----------------------------------------------------------------------


def test_transfer_script_shape() -> None:
    script = pgbench_script(workload("contention"))
    assert "random(1, 100)" in script
    assert "\\set ok 0" in script
    assert script.index("\\set ok 0") < script.index("\\aset")
    assert "BEGIN ISOLATION LEVEL SERIALIZABLE;" in script
    with pytest.raises(ValidationError):
        pgbench_script(Workload("x", "transfer", 1, ""))
    with pytest.raises(ValidationError):
        pgbench_script(Workload("x", "scan", 10, ""))


def test_log_parsing(tmp_path: Path) -> None:
    (tmp_path / "txn.1").write_text(
        "0 1 1500 0 1700000000 000500 0\n"
        "0 2 2500 0 1700000000 010000 3\n"
        "1 1 failed 0 1700000001 000000 99\n"
    )
    (tmp_path / "txn.1.1").write_text("2 1 1000 0 1700000000 500000 1\n\n")
    log = parse_pgbench_logs(sorted(tmp_path.glob("txn.*")))
    assert sorted(log.latencies_us) == [1000, 1500, 2500]
    assert (log.retried, log.retries, log.failed) == (3, 103, 1)
    assert log.first_start_us == 1_700_000_000_000_500 - 1500
    assert log.last_end_us == 1_700_000_001_000_000
    assert log.window_s == pytest.approx(1.001)


def test_log_parsing_refuses_unknown_formats(tmp_path: Path) -> None:
    (tmp_path / "txn.1").write_text("0 1 1500 0 1700000000 000500 0 7\n")
    with pytest.raises(InternalError, match="8 fields"):
        parse_pgbench_logs([tmp_path / "txn.1"])
    (tmp_path / "txn.2").write_text("0 1 skipped 0 1700000000 000500 0\n")
    with pytest.raises(InternalError):
        parse_pgbench_logs([tmp_path / "txn.2"])
