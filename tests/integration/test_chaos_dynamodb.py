"""A chaos run driven through boto3: the bank workload on the DynamoDB endpoint under faults.

Goal: issue 21's "a chaos-harness workload driven through boto3": transfers as
``TransactWriteItems`` (the debit conditioned on the balance), reads as ``TransactGetItems`` of
every account, against a real local cluster whose processes are killed and partitioned, checked
by the bank checker (every read totals the same, no balance negative) and by the ledger (every
acknowledged transfer committed under its ``ClientRequestToken``, no refused one did).

Method: ``python -m chaos run --client dynamodb`` as a subprocess (``chaos/dynamodb_client.py``),
35 s of load with a fixed seed, bounded by ``RUN_TIMEOUT_S``; the verdict line must say PASS,
the run must have settled and injected faults, and both kinds of operation must have succeeded
often enough to mean something. Afterwards no process of the run's cluster may be alive (the
pid files under ``<out>/cluster/run`` name them); any found are killed and fail the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
from support.kvctl import kill_leftovers

from kvstore.localcluster import process_command_line, read_pid_file

pytestmark = pytest.mark.timeout(330)

ROOT: Final = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S: Final = 300
DURATION_S: Final = 35
SEED: Final = 2


def _alive(root: Path) -> list[int]:
    """Pids named by the cluster's pid files whose process still runs this cluster."""
    run = root / "run"
    alive = []
    for pid_file in sorted(run.glob("*.pid")) if run.is_dir() else ():
        pid = read_pid_file(pid_file)
        argv = process_command_line(pid) if pid is not None else None
        if pid is not None and argv is not None and str(root) in " ".join(argv):
            alive.append(pid)
    return alive


def test_bank_through_boto3_under_kills_and_partitions(tmp_path: Path) -> None:
    out = tmp_path / "bank-dynamodb"
    command = [
        sys.executable,
        "-m",
        "chaos",
        "run",
        "--workload",
        "bank",
        "--client",
        "dynamodb",
        "--nemesis",
        "kill,partition",
        "--duration",
        str(DURATION_S),
        "--seed",
        str(SEED),
        "--out",
        str(out),
    ]
    try:
        run = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
    finally:
        left = _alive(out / "cluster")
        kill_leftovers(out / "cluster")
    assert not left, f"processes left behind: {left}"
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0, "\n".join(lines[-20:]) + run.stderr[-3000:]
    assert lines[-1].startswith("bank via dynamodb: ") and lines[-1].endswith("— PASS")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["client"] == "dynamodb" and summary["settled"] is True
    assert summary["faults"].get("kill", 0) >= 1 and summary["faults"].get("partition", 0) >= 1
    kinds = summary["kinds"]
    assert kinds["write-txn"]["ok"] >= 200 and kinds["read-txn"]["ok"] >= 50
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    notes = results["notes"]
    assert any(note.startswith("bank: ") and "ok reads checked" in note for note in notes)
