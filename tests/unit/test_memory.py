"""kvstore.memory: the periodic trim runs on the loop and stops; an operator's PYTHONMALLOC is
kept (no re-exec). That server processes do run with the C allocator is checked on real
processes in tests/integration/test_overload.py."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.memory import MemoryTrimmer, use_system_malloc


@pytest.mark.asyncio
async def test_the_trimmer_trims_every_interval_until_stopped() -> None:
    trimmer = MemoryTrimmer(interval_ms=5)
    three = asyncio.Event()
    trim = trimmer._trim
    assert trim is not None  # glibc, as on every machine this runs on

    def counted() -> object:
        if trimmer.trims >= 2:  # this is the third
            three.set()
        return trim()

    trimmer._trim = counted
    trimmer.start()
    async with asyncio.timeout(10):
        await three.wait()
    trimmer.stop()
    trims = trimmer.trims
    await asyncio.sleep(0.03)  # six intervals: a running trimmer would have trimmed
    assert trimmer.trims == trims


def test_an_operator_s_pythonmalloc_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    use_system_malloc("kvstore.coordinator", ["--config", "x", "--id", "c1"])  # returns: no exec
