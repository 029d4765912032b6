"""The control plane's interface (etcd in production) and its in-memory model.

Theory of operation
-------------------
A replicated cluster keeps its live map (nodes, each partition's replicas, leader and epoch) in
one key of a linearizable store, and every node keeps a liveness key there that vanishes a TTL
after the node stops renewing it. :class:`ControlPlane` is all the runtime needs of that store,
in the callback style of the rest of the runtime (no coroutine), so the same code runs over
etcd in production (:class:`~kvstore.replication.etcd.EtcdControlPlane`) and over
:class:`MemoryControlPlane` in the simulator and unit tests:

* ``read(key)``: a linearizable read: the value and its ``mod_revision``, or ``None`` when absent.
* ``write_if(key, value, mod_revision)``: compare-and-set; succeeds iff the key's current
  ``mod_revision`` equals the one given (``0``: the key must be absent). The answer is ``True``
  (written) or ``False`` (someone else changed it first: read again).
* ``beat(key, value, ttl_ms)``: keep ``key`` alive with ``value``: the first beat (or one after the
  key's lease ran out) creates it under a fresh lease of ``ttl_ms``; later beats renew the lease.
  The key disappears about ``ttl_ms`` after the last successful beat (etcd may stretch that; the
  liveness key only *detects* failures, it never proves a process stopped).
* ``list(prefix)``: every key under ``prefix`` with its value (a linearizable range read).

Every answer is ``(result, None)`` or ``(None, error)`` where ``error`` is a short text for logs
(unreachable, timed out, a gateway error). A call may fail after it took effect (a write whose
answer was lost): callers read again rather than assume. Answers come later, never from inside
the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Versioned", "ControlPlane", "Answer", "MemoryControlPlane"]


@dataclass(frozen=True, slots=True)
class Versioned:
    """A key's value and the revision of its last change (etcd's ``mod_revision``)."""

    value: bytes
    mod_revision: int


Answer = Callable[[object | None, str | None], None]


class ControlPlane(Protocol):
    """See the module docstring."""

    def read(self, key: str, done: Callable[[Versioned | None, str | None], None]) -> None: ...

    def write_if(
        self,
        key: str,
        value: bytes,
        mod_revision: int,
        done: Callable[[bool | None, str | None], None],
    ) -> None: ...

    def beat(
        self, key: str, value: bytes, ttl_ms: int, done: Callable[[bool | None, str | None], None]
    ) -> None: ...

    def list(
        self, prefix: str, done: Callable[[dict[str, bytes] | None, str | None], None]
    ) -> None: ...

    def close(self) -> None: ...


Later = Callable[[int, Callable[[], None]], None]
"""Schedule a callback after a delay in microseconds (the simulator's loop, or a test's)."""
Now = Callable[[], int]


class MemoryControlPlane:
    """A linearizable store with leases in memory: the simulator's model of etcd.

    Each call takes effect when it is made and is answered ``latency_us`` later through
    ``later``; while :attr:`up` is false every call fails after the latency (etcd has lost its
    quorum, or this client cannot reach it). Leases are timed on ``now`` (the model's own clock,
    the virtual time): a key whose lease ran out is gone for every later call.
    """

    def __init__(self, later: Later, now: Now, latency_us: int = 500) -> None:
        self._later = later
        self._now = now
        self._latency_us = latency_us
        self.revision = 0
        self.up = True
        self._keys: dict[str, tuple[bytes, int, int | None]] = {}  # value, mod_rev, expires_us

    def _live(self, key: str) -> tuple[bytes, int, int | None] | None:
        entry = self._keys.get(key)
        if entry is not None and entry[2] is not None and entry[2] <= self._now():
            del self._keys[key]
            return None
        return entry

    def _answer(self, done: Callable[[object, str | None], None], result: object) -> None:
        if not self.up:
            self._later(self._latency_us, lambda: done(None, "control plane unavailable"))
            return
        self._later(self._latency_us, lambda: done(result, None))

    def read(self, key: str, done: Callable[[Versioned | None, str | None], None]) -> None:
        if not self.up:
            self._answer(done, None)  # type: ignore[arg-type]
            return
        entry = self._live(key)
        found = None if entry is None else Versioned(entry[0], entry[1])
        self._answer(done, found)  # type: ignore[arg-type]

    def write_if(
        self,
        key: str,
        value: bytes,
        mod_revision: int,
        done: Callable[[bool | None, str | None], None],
    ) -> None:
        if not self.up:
            self._answer(done, None)  # type: ignore[arg-type]
            return
        entry = self._live(key)
        current = 0 if entry is None else entry[1]
        if current != mod_revision:
            self._answer(done, False)  # type: ignore[arg-type]
            return
        self.revision += 1
        self._keys[key] = (value, self.revision, None)
        self._answer(done, True)  # type: ignore[arg-type]

    def beat(
        self, key: str, value: bytes, ttl_ms: int, done: Callable[[bool | None, str | None], None]
    ) -> None:
        if not self.up:
            self._answer(done, None)  # type: ignore[arg-type]
            return
        entry = self._live(key)
        expires_us = self._now() + ttl_ms * 1000
        if entry is None or entry[0] != value:
            self.revision += 1
            self._keys[key] = (value, self.revision, expires_us)
        else:
            self._keys[key] = (entry[0], entry[1], expires_us)
        self._answer(done, True)  # type: ignore[arg-type]

    def list(
        self, prefix: str, done: Callable[[dict[str, bytes] | None, str | None], None]
    ) -> None:
        if not self.up:
            self._answer(done, None)  # type: ignore[arg-type]
            return
        found = {}
        for key in sorted(self._keys):
            if key.startswith(prefix):
                entry = self._live(key)
                if entry is not None:
                    found[key] = entry[0]
        self._answer(done, found)  # type: ignore[arg-type]

    def close(self) -> None:
        pass
