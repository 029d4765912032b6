"""A private single-member etcd on loopback for local clusters and tests: :class:`LocalEtcd`.

Theory of operation
-------------------
:meth:`LocalEtcd.start` runs the ``etcd`` binary found on ``PATH`` (:func:`etcd_binary`; Debian's
``etcd-server`` package, 3.4) as one member named ``n1`` with the flags of the replication
reference (``../shared/reference/replication.md``, section 3): client and peer URLs on two free
``127.0.0.1`` ports (:func:`kvstore.localcluster.free_ports`), ``--logger zap``, and
``--heartbeat-interval 10 --election-timeout 100``, which lowers etcd's minimum lease TTL (1.5
election timeouts, rounded up to whole seconds) from 2 s to 1 s. ``fsync=False`` adds
``--unsafe-no-fsync`` (tests that do not crash the machine). ``client_port`` and ``peer_port``
fix the ports (a local cluster keeps its etcd at the URL its cluster file names). The caller's
``data_dir`` (made 0700) holds::

    etcd/       the member's data (``--data-dir``)
    etcd.log    its stdout and stderr, appended across starts

The process runs in a session of its own with stdin from ``/dev/null`` and without the caller's
``ETCD_*`` variables (etcd reads every flag from one). ``start`` waits until ``GET /health``
answers ``{"health": "true"}``, polling with a capped backoff for at most ``ready_timeout_ms``;
a process that exits first or stays silent is stopped and reported as ``Unavailable`` with the
end of its log. On its first start it picks its ports afresh, up to
``LOCAL_ETCD_START_ATTEMPTS_MAX`` times, when another process took one meanwhile ("address
already in use"), unless they were given; later starts keep its ports, so a restart is the same
member at the same URLs.

:meth:`LocalEtcd.stop` sends SIGTERM, waits ``stop_timeout_ms``, then SIGKILLs, and always reaps
the process; the context manager stops it on the way out, and a finalizer kills a process
still running when the object is collected or the interpreter exits, so none is left behind.
:meth:`LocalEtcd.detach` drops that finalizer for a member that must outlive the object (``kvctl
cluster up`` returns and leaves it running; ``kvctl cluster down`` stops it by pid).
A missing binary is ``Unavailable`` saying to ``apt-get install etcd-server``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import Final

from kvstore.errors import Unavailable
from kvstore.limits import (
    LOCAL_ETCD_START_ATTEMPTS_MAX,
    LOCAL_LOG_TAIL_LINES,
    LOCAL_POLL_MAX_MS,
    LOCAL_PROBE_TIMEOUT_MS,
    LOCAL_READY_TIMEOUT_MS,
    LOCAL_STOP_TIMEOUT_MS,
)
from kvstore.localcluster import free_ports, tail_lines

__all__ = ["INSTALL_HINT", "LocalEtcd", "etcd_binary"]

INSTALL_HINT: Final = "apt-get install etcd-server"
_HOST: Final = "127.0.0.1"
_MEMBER: Final = "n1"
_HEARTBEAT_MS: Final = 10
_ELECTION_MS: Final = 100
_KILL_GRACE_S: Final = 5.0  # after SIGKILL: the kernel frees a process at once
_PORT_TAKEN: Final = "address already in use"


def etcd_binary() -> str | None:
    """The path of the ``etcd`` executable on ``PATH``, or None."""
    return shutil.which("etcd")


class _PortTaken(Exception):
    pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=LOCAL_PROBE_TIMEOUT_MS / 1000) as reply:
            body = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("health") in ("true", True)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """The finalizer's last resort: a running process is killed and reaped."""
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(_KILL_GRACE_S)


class LocalEtcd:
    """One private etcd member; see the module docstring."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        client_port: int | None = None,
        peer_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.fsync = fsync
        if client_port is None or peer_port is None:
            self._client_port, self._peer_port = free_ports(2)
            self._started_once = False
        else:  # fixed ports are never picked afresh
            self._client_port, self._peer_port = client_port, peer_port
            self._started_once = True
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], LocalEtcd] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{_HOST}:{self._client_port}"

    @property
    def endpoints(self) -> list[str]:
        """The client URLs, for :class:`~kvstore.replication.etcd.EtcdControlPlane`."""
        return [self.client_url]

    @property
    def member_dir(self) -> Path:
        """The member's data (``--data-dir``): names this member in a process's command line."""
        return self.data_dir / "etcd"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def argv(self, binary: str) -> list[str]:
        """The command line that runs this member with ``binary``."""
        peer = f"http://{_HOST}:{self._peer_port}"
        argv = [
            binary,
            *("--name", _MEMBER, "--data-dir", str(self.member_dir)),
            *("--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", f"{_MEMBER}={peer}", "--initial-cluster-state", "new"),
            *("--logger", "zap", "--log-outputs", "stderr"),
            *("--heartbeat-interval", str(_HEARTBEAT_MS), "--election-timeout", str(_ELECTION_MS)),
        ]
        return argv if self.fsync else [*argv, "--unsafe-no-fsync"]

    def start(self, *, ready_timeout_ms: int = LOCAL_READY_TIMEOUT_MS) -> None:
        """Start the member (unless running) and wait until it is healthy."""
        if self.running:
            return
        binary = etcd_binary()
        if binary is None:
            raise Unavailable(
                f"etcd is not installed (no `etcd` on PATH): install it with `{INSTALL_HINT}`",
                details={"binary": "etcd"},
            )
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        for attempt in range(1, LOCAL_ETCD_START_ATTEMPTS_MAX + 1):
            try:
                self._start_once(binary, ready_timeout_ms)
            except _PortTaken as taken:
                if self._started_once or attempt == LOCAL_ETCD_START_ATTEMPTS_MAX:
                    raise Unavailable(str(taken), details={"client_url": self.client_url}) from None
                self._client_port, self._peer_port = free_ports(2)
                continue
            self._started_once = True
            return

    def _start_once(self, binary: str, ready_timeout_ms: int) -> None:
        log_fd = os.open(
            self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        offset = os.fstat(log_fd).st_size
        env = {name: value for name, value in os.environ.items() if not name.startswith("ETCD_")}
        try:
            process = subprocess.Popen(
                self.argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        if self._finalizer is not None:
            self._finalizer.detach()  # the previous process ended (running was false)
        self._process = process
        self._finalizer = weakref.finalize(self, _kill, process)
        try:
            self._wait_healthy(process, offset, ready_timeout_ms)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(
        self, process: subprocess.Popen[bytes], offset: int, ready_timeout_ms: int
    ) -> None:
        url = f"{self.client_url}/health"
        deadline = time.monotonic() + ready_timeout_ms / 1000
        delay_s = 0.02
        while not _healthy(url):
            code = process.poll()
            if code is not None:
                tail = tail_lines(self.log_path, offset, LOCAL_LOG_TAIL_LINES)
                message = f"etcd exited with status {code} before answering {url}"
                if any(_PORT_TAKEN in line for line in tail):
                    raise _PortTaken(message + self._shown(tail))
                raise Unavailable(message + self._shown(tail), details={"exit_status": code})
            if time.monotonic() >= deadline:
                tail = tail_lines(self.log_path, offset, LOCAL_LOG_TAIL_LINES)
                raise Unavailable(
                    f"etcd did not answer {url} within {ready_timeout_ms / 1000:g} s"
                    + self._shown(tail),
                    details={"pid": process.pid},
                )
            time.sleep(delay_s)  # readiness polling, capped backoff, bounded by the deadline
            delay_s = min(delay_s * 2, LOCAL_POLL_MAX_MS / 1000)

    def _shown(self, tail: list[str]) -> str:
        if not tail:
            return f"; its log {self.log_path} has nothing new"
        return f"; the end of {self.log_path}:\n" + "\n".join(f"  | {line}" for line in tail)

    def stop(self, *, stop_timeout_ms: int = LOCAL_STOP_TIMEOUT_MS) -> int | None:
        """Stop the member (SIGTERM, then SIGKILL after ``stop_timeout_ms``) and reap it; its
        exit status, or None when it was never started."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.terminate()
            try:
                process.wait(stop_timeout_ms / 1000)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    process.kill()
                process.wait(_KILL_GRACE_S)
        if self._finalizer is not None:
            self._finalizer.detach()
        return process.returncode

    def detach(self) -> int | None:
        """Let the running member outlive this object (no finalizer kills it any more); its
        pid. :meth:`stop` still stops and reaps it while this object lives."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        return self.pid

    def __enter__(self) -> LocalEtcd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
