"""Fork the test process and get a result back from the child, leaving no process behind.

:func:`run_forked` forks; the child runs ``child()`` and writes what it returns (bytes) to a
file, then always leaves with ``os._exit`` (0 on success, 1 with the traceback in the file on an
exception), never through pytest's own teardown. Meanwhile the parent runs ``parent()``; then it
waits for the child at most ``timeout_s`` and kills it if it is still there (a hang is a
failure, never a stuck test run). Whatever happens in the parent, the child is reaped.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["Forked", "run_forked", "pack_ts", "TS_BYTES"]

T = TypeVar("T")

TS_BYTES = 24  # a packed timestamp: physical, logical, origin as three big-endian u64


def pack_ts(out: bytearray, index: int, ts: tuple[int, int, int]) -> None:
    """Write ``ts`` as record ``index`` of ``out`` (big-endian: byte order is ts order)."""
    start = index * TS_BYTES
    out[start : start + 8] = ts[0].to_bytes(8, "big")
    out[start + 8 : start + 16] = ts[1].to_bytes(8, "big")
    out[start + 16 : start + 24] = ts[2].to_bytes(8, "big")


@dataclass(frozen=True)
class Forked(Generic[T]):
    parent: T  # what ``parent()`` returned
    child: bytes  # what ``child()`` returned


def _fork() -> int:
    # Python 3.12+ warns when a process with threads forks; these tests want a real fork.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
        return os.fork()


def _reap(pid: int, timeout_s: float) -> int | None:
    """The child's exit code, or None if it had to be killed after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


def run_forked(
    child: Callable[[], bytes], parent: Callable[[], T], *, timeout_s: float = 60.0
) -> Forked[T]:
    """Fork; run ``child()`` in the child and ``parent()`` here at the same time (see module)."""
    fd, name = tempfile.mkstemp(prefix="kv-fork-")
    os.close(fd)
    path = Path(name)
    try:
        pid = _fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                try:
                    data = child()
                    code = 0
                except BaseException:  # reported to the parent, then exit
                    data = traceback.format_exc().encode()
                path.write_bytes(data)
            finally:
                os._exit(code)
        reaped = False
        try:
            result = parent()
            code = _reap(pid, timeout_s)
            reaped = True
        finally:
            if not reaped:
                _reap(pid, 0)  # the parent failed: kill and reap the child
        assert code is not None, f"the forked child did not finish within {timeout_s} s"
        data = path.read_bytes()
        assert code == 0, f"the forked child failed:\n{data.decode(errors='replace')}"
        return Forked(result, data)
    finally:
        path.unlink(missing_ok=True)
