"""Clone safety of the production clocks across a real ``os.fork()`` (DESIGN section 4).

Goal: a forked child never issues a timestamp its parent issues, whichever production clock it
copied. Method: build the clock exactly as production does (a storage node's through
``NodeService``, the coordinator library's through ``Coordinator.from_config``, which the
coordinator service and the SDK's direct mode use), draw from it, fork, and let parent and child
each draw 1,000,000 timestamps at the same time; the child sends its draws back packed, and the
parent counts the ones it drew too. Before the fix (a clock on ``random_origin()`` kept its
origin in the child) such a clock gave 9,860 duplicates in 100,000 draws each; the count must be
0. A second run first makes each clock observe a timestamp 10 s ahead (a reply from a node whose
clock is ahead): both copies are then in the HLC's logical regime, where a clock that kept its
origin repeats *every* timestamp, so a missing re-draw cannot hide behind scheduling luck. The
``NO_FORK_REDRAW`` mutant shows the test can fail: with it every such draw is a duplicate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import LocalNodes
from support.forking import TS_BYTES, pack_ts, run_forked

from kvstore.coordinator.engine import Coordinator
from kvstore.mutants import ARMING_ENV, ARMING_VALUE, Mutant, Mutants
from kvstore.storage_node.service import NodeService
from kvstore.timestamps import HybridClock, random_origin, system_clock_us
from kvstore.types import Timestamp

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

DRAWS = 1_000_000
AHEAD_US = 10_000_000


def draw_packed(clock: HybridClock, n: int) -> bytes:
    out = bytearray(n * TS_BYTES)
    now = clock.now
    for i in range(n):
        pack_ts(out, i, now())
    return bytes(out)


def fork_and_draw(clock: HybridClock, n: int = DRAWS, *, ahead: bool = False) -> dict[str, int]:
    """Parent and child draw ``n`` each at once; their duplicates and both origins."""
    clock.now()
    if ahead:
        clock.observe(Timestamp(system_clock_us() + AHEAD_US, 0, 1))

    def child() -> bytes:
        return clock.origin.to_bytes(8, "big") + draw_packed(clock, n)

    forked = run_forked(child, lambda: draw_packed(clock, n), timeout_s=120)
    child_origin = int.from_bytes(forked.child[:8], "big")
    theirs = forked.child[8:]
    assert len(theirs) == n * TS_BYTES
    seen = {theirs[i : i + TS_BYTES] for i in range(0, len(theirs), TS_BYTES)}
    ours = forked.parent
    duplicates = sum(ours[i : i + TS_BYTES] in seen for i in range(0, len(ours), TS_BYTES))
    return {"duplicates": duplicates, "parent_origin": clock.origin, "child_origin": child_origin}


def assert_fork_safe(clock: HybridClock, *, ahead: bool = False) -> None:
    outcome = fork_and_draw(clock, ahead=ahead)
    assert outcome["child_origin"] != outcome["parent_origin"], outcome
    assert outcome["duplicates"] == 0, outcome


@pytest.fixture
def cluster_config(tmp_path: Path) -> Iterator[LocalNodes]:
    yield LocalNodes(tmp_path, ("n1",))  # the files only: no process is started


@pytest.mark.parametrize("ahead", [False, True], ids=["wall", "ahead"])
def test_a_storage_node_clock_never_repeats_in_a_forked_child(
    cluster_config: LocalNodes, ahead: bool
) -> None:
    service = NodeService(cluster_config.config, "n1")
    assert service.clock.redrawn_at_fork
    assert_fork_safe(service.clock, ahead=ahead)


@pytest.mark.parametrize("ahead", [False, True], ids=["wall", "ahead"])
def test_the_coordinator_engine_clock_never_repeats_in_a_forked_child(
    cluster_config: LocalNodes, ahead: bool
) -> None:
    coordinator = Coordinator.from_config(cluster_config.config)
    assert coordinator.clock.redrawn_at_fork
    assert_fork_safe(coordinator.clock, ahead=ahead)


def test_a_clock_with_an_explicit_origin_is_left_alone_in_a_forked_child() -> None:
    clock = HybridClock(system_clock_us, 12345)  # the simulator's kind: deterministic
    assert not clock.redrawn_at_fork
    outcome = fork_and_draw(clock, 1_000)
    assert outcome["child_origin"] == outcome["parent_origin"] == 12345


def test_the_no_fork_redraw_mutant_fails_the_fork_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ARMING_ENV, ARMING_VALUE)
    mutants = Mutants.arm(Mutant.NO_FORK_REDRAW)
    # As storage_node/service.py builds its clock, with the mutant armed as chaos runs arm it.
    clock = HybridClock(system_clock_us, random_origin(), mutants=mutants)
    with pytest.raises(AssertionError):
        assert_fork_safe(clock, ahead=True)
    outcome = fork_and_draw(clock, 10_000, ahead=True)
    assert outcome["child_origin"] == outcome["parent_origin"]
    assert outcome["duplicates"] == 10_000  # every timestamp issued twice
