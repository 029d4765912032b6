"""kvctl as a subprocess in tests, and stopping what a test left of a local cluster.

:func:`run_kvctl` runs ``python -m kvstore.cli.kvctl`` with the environment cleaned of the
variables that would point it at another cluster, bounded by ``COMMAND_TIMEOUT_S``.
:func:`kill_leftovers` SIGKILLs every process a pid file under ``root/run`` names, if its command
line mentions ``root`` (so a reused pid is never hit): the last resort of a test's teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

from kvstore.localcluster import process_command_line, read_pid_file

KVCTL: Final = (sys.executable, "-m", "kvstore.cli.kvctl")
COMMAND_TIMEOUT_S: Final = 90.0


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("KVSTORE_DIR", "KV_URL", "KV_TOKEN")}


def run_kvctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVCTL, *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=clean_env(),
        check=False,
    )


def kill_leftovers(root: Path) -> None:
    run = root / "run"
    for pid_file in run.glob("*.pid") if run.is_dir() else ():
        pid = read_pid_file(pid_file)
        argv = process_command_line(pid) if pid is not None else None
        if pid is not None and argv is not None and str(root) in " ".join(argv):
            os.kill(pid, signal.SIGKILL)
