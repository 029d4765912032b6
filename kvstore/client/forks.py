"""Clients built before ``os.fork()``: each process uses its own connections (DESIGN section 4).

Theory of operation
-------------------
A forked child inherits the parent's client objects: open sockets, an aiohttp session, an
embedded coordinator with its RPC connections and tasks, an event loop and the thread that ran it
(the thread does not exist in the child). Using them from the child would interleave its bytes
with the parent's on the same sockets, or wait forever for a loop nobody runs; closing them would
send close frames (or TLS alerts) on the parent's connections.

So, as redis-py's connection pool does, each holder of such state records the process that made
it (:class:`ProcessOwner`) and, before each use, compares ``os.getpid()`` with it. In a new
process it calls its ``drop`` callback once, before any other caller of that holder goes on:
the callback hands the inherited objects to :func:`abandon` (kept referenced, never used, never
closed, never collected: a collector would run their ``__del__``, which may close transports on
the parent's loop) and clears them, so the next use connects afresh in the child. The parent
never notices.

Timestamps and ids need nothing here: the clock's origin is re-drawn by the fork hook of
:mod:`kvstore.timestamps`, and transaction ids and idempotency tokens come from ``os.urandom``
on every call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["ProcessOwner", "abandon"]

_abandoned: Final[list[object]] = []
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock  # noqa: PLW0603 - a parent thread may have held it at the fork.
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def abandon(*inherited: object) -> None:
    """Keep a forked child's inherited connection state alive and untouched (see the module)."""
    _abandoned.extend(inherited)


class ProcessOwner:
    """The process that owns some connection state (see the module)."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def adopt(self, drop: Callable[[], None]) -> bool:
        """In a process other than the owner, call ``drop()`` once (under a lock, so no other
        caller goes on before it is done) and become this process's; True if it did."""
        pid = os.getpid()
        if pid == self.pid:
            return False
        with _lock:
            if pid == self.pid:
                return False
            drop()
            self.pid = pid
            return True
