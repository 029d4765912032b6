"""kvctl on a full disk (issue 17), without a real full disk: pid files are replaced atomically
and never leave a temporary file behind, a process whose pid file cannot be written is stopped
again, and ``no space left on device`` is one plain line with exit status 1.
(``tests/integration/test_full_disk.py`` does the same on a real full tmpfs when run as root.)"""

from __future__ import annotations

import argparse
import errno
import io
import os
import stat
from pathlib import Path

import pytest

from kvstore import localcluster
from kvstore.cli.output import EXIT_FAILURE, Output, run_handler
from kvstore.localcluster import LocalCluster, process_command_line, read_pid_file


def enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_pid_file_is_replaced_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "n1.pid"
    localcluster._replace_file(path, "123\n")
    assert read_pid_file(path) == 123 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1.pid"]


def test_a_failed_replace_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "n1.pid"
    localcluster._replace_file(path, "123\n")
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError) as raised:
        localcluster._replace_file(path, "456\n")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert read_pid_file(path) == 123
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1.pid"]


def test_a_process_whose_pid_file_cannot_be_written_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = LocalCluster.create(tmp_path / "kv", nodes=1, coordinators=1, partitions=1)
    spawned: list[int] = []

    def no_space(self: LocalCluster, process_id: str, pid: int) -> None:
        spawned.append(pid)
        raise OSError(errno.ENOSPC, "No space left on device", str(self.pid_path(process_id)))

    monkeypatch.setattr(LocalCluster, "_write_pid", no_space)
    with pytest.raises(OSError) as raised:
        cluster._spawn(cluster.process("n1"))
    assert raised.value.errno == errno.ENOSPC
    [pid] = spawned
    assert process_command_line(pid) is None, "the process runs without its pid file"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: not left as a zombie either
    assert cluster.running() == {}


def test_no_space_left_is_one_plain_line_naming_the_path() -> None:
    def handler(args: argparse.Namespace, out: Output) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/v/kv/run/n1.pid")

    stderr = io.StringIO()
    status = run_handler(handler, argparse.Namespace(), Output(json_mode=False, stderr=stderr))
    assert status == EXIT_FAILURE
    assert stderr.getvalue() == (
        "kvctl: no space left on device writing /v/kv/run/n1.pid: free space on that file "
        "system, then retry\n"
    )
