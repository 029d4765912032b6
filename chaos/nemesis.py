"""Faults for real runs: kill, pause, partition and clock, on a schedule drawn from the seed.

Theory of operation
-------------------
A :class:`Nemesis` acts on the processes of a local cluster (:mod:`kvstore.localcluster`):

* ``kill``: SIGKILL a node or a coordinator; at the end of the window it is started again from
  the same data directory (``LocalCluster.up`` starts exactly what is not running).
* ``pause``: SIGSTOP, then SIGCONT at the end of the window.
* ``partition``: cut the links between one process and a random half of the others, both ways,
  through the processes' chaos control (``POST /chaos`` with the ``blocked`` peers: every call a
  process makes to a blocked peer fails, and calls in flight lose their replies); clients keep
  talking to every coordinator. Healing clears every table.
* ``clock``: move one process's clock by up to ``CLOCK_BUMP_MS_MAX`` either way, or strobe it
  (several quick changes), through the same control; healing sets every offset back to 0.

The control exists only in processes started with ``KVSTORE_CHAOS_CONTROL=1`` and answers only
to the cluster secret. The schedule is a loop bounded by the run's end: wait a random gap, pick a
kind and a target, open the window, wait its random length, close it; no window opens with less
than the shortest window length (``WINDOW_S[0]``) left before the run's end, so no window is cut
short and the report's failure buckets (no wider than the shortest window) stay readable. Every
window is recorded as a :class:`~chaos.report.FaultWindow` for the report. :meth:`Nemesis.heal`
ends whatever is open and returns every process to health; it is called whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from chaos.report import FaultWindow
from kvstore.localcluster import LocalCluster, ProcessSpec

__all__ = ["NEMESES", "Nemesis", "parse_nemeses"]

NEMESES: Final = ("kill", "pause", "partition", "clock")
GAP_S: Final = (1.0, 3.0)  # between two faults
WINDOW_S: Final = (0.5, 3.0)  # how long one fault lasts
CLOCK_BUMP_MS_MAX: Final = 400  # below the nodes' 500 ms skew bound, so mostly a soft fault
CLOCK_STROBES: Final = 5
CONTROL_TIMEOUT_S: Final = 2.0


def parse_nemeses(text: str) -> tuple[str, ...]:
    """``kill,partition`` or ``all`` (or ``none``) as a tuple of fault kinds."""
    if text in ("", "none"):
        return ()
    if text == "all":
        return NEMESES
    kinds = tuple(part.strip() for part in text.split(","))
    unknown = [kind for kind in kinds if kind not in NEMESES]
    if unknown:
        raise ValueError(f"unknown nemesis {unknown[0]!r}; expected {', '.join(NEMESES)} or all")
    return kinds


class Nemesis:
    def __init__(
        self, cluster: LocalCluster, kinds: Sequence[str], rng: random.Random, secret: str
    ) -> None:
        self.cluster = cluster
        self.kinds = tuple(kinds)
        self.rng = rng
        self.secret = secret
        self.windows: list[FaultWindow] = []
        self.counts: dict[str, int] = {}
        self._paused: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    # --- the schedule -----------------------------------------------------------------------

    async def run(self, until_monotonic: float) -> None:
        """Inject faults until ``until_monotonic`` (``time.monotonic()``), one at a time."""
        if not self.kinds:
            return
        while time.monotonic() < until_monotonic:
            await asyncio.sleep(self.rng.uniform(*GAP_S))
            if until_monotonic - time.monotonic() < WINDOW_S[0]:
                return
            kind = self.rng.choice(self.kinds)
            target = self.rng.choice(self.cluster.processes())
            length_s = min(
                self.rng.uniform(*WINDOW_S), max(0.0, until_monotonic - time.monotonic())
            )
            started = time.monotonic_ns()
            await self._open(kind, target)
            try:
                await asyncio.sleep(length_s)
            finally:
                await self._close(kind, target)
            self.windows.append(FaultWindow(started, time.monotonic_ns(), kind, target.process_id))
            self.counts[kind] = self.counts.get(kind, 0) + 1

    async def _open(self, kind: str, target: ProcessSpec) -> None:
        if kind == "kill":
            pid = self.cluster.running().get(target.process_id)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        elif kind == "pause":
            pid = self.cluster.running().get(target.process_id)
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                self._paused.add(target.process_id)
        elif kind == "partition":
            others = [p for p in self.cluster.processes() if p.process_id != target.process_id]
            cut = self.rng.sample(others, max(1, len(others) // 2))
            await self._control(target, {"blocked": [p.address for p in cut]})
            for peer in cut:
                await self._control(peer, {"blocked": [target.address]})
        elif kind == "clock":
            if self.rng.random() < 0.5:
                offset = self.rng.randint(-CLOCK_BUMP_MS_MAX, CLOCK_BUMP_MS_MAX)
                await self._control(target, {"clock_offset_ms": offset})
            else:
                for _ in range(CLOCK_STROBES):
                    offset = self.rng.randint(-CLOCK_BUMP_MS_MAX, CLOCK_BUMP_MS_MAX)
                    await self._control(target, {"clock_offset_ms": offset})
                    await asyncio.sleep(0.05)

    async def _close(self, kind: str, target: ProcessSpec) -> None:
        if kind == "kill":
            await asyncio.to_thread(self.cluster.up)
        elif kind == "pause":
            self._resume(target.process_id)
        elif kind == "partition":
            for process in self.cluster.processes():
                await self._control(process, {"blocked": []})
        elif kind == "clock":
            await self._control(target, {"clock_offset_ms": 0})

    # --- healing ----------------------------------------------------------------------------

    async def heal(self) -> None:
        """Resume, restart and reset everything; safe to call at any time, more than once."""
        for process_id in list(self._paused):
            self._resume(process_id)
        await asyncio.to_thread(self.cluster.up)
        if "partition" in self.kinds or "clock" in self.kinds:
            for process in self.cluster.processes():
                await self._control(process, {"blocked": [], "clock_offset_ms": 0})
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _resume(self, process_id: str) -> None:
        self._paused.discard(process_id)
        pid = self.cluster.running().get(process_id)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    async def _control(self, process: ProcessSpec, body: dict[str, Any]) -> None:
        """``POST /chaos`` on one process; a process that is down or paused is skipped (its
        table is reset when it restarts, or at the heal)."""
        if process.process_id in self._paused:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.secret}"}
            )
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT_S):
                async with self._session.post(f"{process.url}/chaos", json=body) as reply:
                    await reply.read()
        except (TimeoutError, aiohttp.ClientError):
            pass
