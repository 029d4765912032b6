"""``kvctl bench`` end to end: a real temporary cluster (and PostgreSQL when installed).

Each run is short (1-2 s measured) with few clients: these tests check that the command works
and that its figures are consistent, not how fast anything is (figures belong in docs/bench.md).
The command's temporary directories go under the test's own ``TMPDIR``, so teardown can tell
that nothing was left behind: no directory and no process whose command line names it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvstore.bench.postgres import PostgresMissing, find_binaries
from kvstore.bench.results import percentile_ms, summarize
from kvstore.cli.bench_cmd import ratios
from kvstore.localcluster import process_command_line

KVCTL = (sys.executable, "-m", "kvstore.cli.kvctl")
COMMAND_TIMEOUT_S = 120.0


def _ours(root: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = process_command_line(int(entry.name))
            if argv and any(str(root) in part for part in argv):
                found.append(int(entry.name))
    return found


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    left = _ours(tmp_path)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"processes left behind: {left}"
    assert list(tmp_path.iterdir()) == [], "temporary directories left behind"


def bench(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("KVSTORE_DIR", None)
    result = subprocess.run(
        [*KVCTL, "bench", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def bench_json(tmp: Path, *args: str) -> Any:
    result = bench(tmp, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_transfer_on_the_store_conserves_money_and_reports_its_figures(tmp: Path) -> None:
    doc = bench_json(tmp, "--workload", "transfer", "--clients", "4", "--duration", "2")
    assert doc["workload"] == "transfer" and doc["clients"] == 4 and "ratio" not in doc
    (result,) = doc["results"]
    assert result["system"] == "kvstore"
    assert result["completed"] > 0 and result["failed"] == 0
    assert result["detail"]["conserved"] == "yes"
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["throughput_per_s"] == pytest.approx(
        result["completed"] / result["duration_s"], rel=0.01
    )


def test_text_output_has_a_table_per_system(tmp: Path) -> None:
    result = bench(tmp, "--workload", "read1", "--clients", "2", "--duration", "1")
    assert result.returncode == 0, result.stderr
    assert "kvstore, 2 clients" in result.stdout
    assert "throughput" in result.stdout and "p99 latency" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--clients", "0"), "--clients"),
        (("--duration", "0"), "--duration"),
        (("--clients", "100000"), "--clients"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(
    tmp: Path, args: tuple[str, ...], message: str
) -> None:
    result = bench(tmp, "--workload", "get", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == ""  # refused up front: no run, no table
    assert list(tmp.iterdir()) == []  # and no temporary cluster was ever made


def test_compare_postgres_prints_both_systems_and_the_ratio(tmp: Path) -> None:
    try:
        find_binaries()
    except PostgresMissing as missing:
        pytest.skip(f"PostgreSQL is not installed: {missing.message}")
    doc = bench_json(
        tmp, "--workload", "transfer", "--clients", "4", "--duration", "2", "--compare-postgres"
    )
    systems = [r["system"] for r in doc["results"]]
    assert systems == ["kvstore", "postgresql"]
    assert all(r["completed"] > 0 and r["detail"]["conserved"] == "yes" for r in doc["results"])
    ours, theirs = doc["results"]
    assert doc["ratio"]["throughput"] == pytest.approx(
        ours["throughput_per_s"] / theirs["throughput_per_s"], rel=0.01
    )


def test_missing_postgres_is_one_line_with_the_install_command(tmp: Path) -> None:
    empty = tmp / "no-postgres"
    empty.mkdir()
    env_dir = str(empty)
    result = subprocess.run(
        [*KVCTL, "bench", "--workload", "get", "--compare-postgres", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env={**os.environ, "TMPDIR": str(tmp), "KVSTORE_BENCH_PG_BIN": env_dir},
        check=False,
    )
    empty.rmdir()
    assert result.returncode == 3, result.stderr
    assert "apt-get install" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_figures_are_nearest_rank_percentiles_and_ratios() -> None:
    assert percentile_ms([], 0.5) == 0.0
    assert percentile_ms([1000, 2000, 3000, 4000], 0.5) == 2.0
    assert percentile_ms([1000, 2000, 3000, 4000], 0.99) == 4.0
    ours = summarize(
        "kvstore", "get", 1, 2.0, [3000, 1000], condition_failed=0, retried=0, retries=0, failed=0
    )
    theirs = summarize(
        "postgresql",
        "get",
        1,
        1.0,
        [500, 1500, 1000, 1000],
        condition_failed=-1,
        retried=1,
        retries=2,
        failed=0,
    )
    assert ours.throughput_per_s == 1.0 and theirs.throughput_per_s == 4.0
    assert ratios(ours, theirs) == {"throughput": 0.25, "p50": 1.0, "p99": 2.0}


def test_sigterm_mid_run_removes_the_temporary_cluster(tmp: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [*KVCTL, "bench", "--workload", "get", "--duration", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while len(_ours(tmp)) < 3:  # 3 nodes up (each coordinating; no coordinator process)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the cluster never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
