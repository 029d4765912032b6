"""The simulator's clone fault: a coordinator's memory image going on in two processes.

Goal: the fault runs production's clone path (``kvstore.timestamps.redraw_origins``, what the
``os.register_at_fork`` hook runs in a forked child), so a correct clock gives each copy an
origin of its own and the ``NO_FORK_REDRAW`` mutant makes the copies issue equal timestamps that
the ``unique_ts`` checker reports. Method: restore coordinators from one image by hand and look
at their clocks; then run the seed on which ``python -m chaos mutants`` catches the mutant, with
and without it.
"""

from __future__ import annotations

import pytest

from chaos.sim import SimConfig, Simulation, run_seed
from kvstore.mutants import ARMING_ENV, ARMING_VALUE, Mutant, Mutants
from kvstore.types import Timestamp

CAUGHT_SEED, CAUGHT_WORKLOAD = 11, "bank"  # where the mutant hunt catches NO_FORK_REDRAW


def _clone_both(sim: Simulation) -> tuple[int, Timestamp]:
    source, twin = sim.coordinators[0], sim.coordinators[1]
    source.clock.now()
    origin, last = source.clock.origin, source.clock.last
    origins = iter([origin, 77, 78])  # the first draw is the old origin: drawn again

    for copy in (source, twin):
        copy.restore(origin, last, lambda: next(origins))
    return origin, last


def test_each_copy_of_a_cloned_coordinator_gets_an_origin_of_its_own() -> None:
    sim = Simulation(1, SimConfig(faults=False))
    source, twin = sim.coordinators[0], sim.coordinators[1]
    incarnations = (source.incarnation, twin.incarnation)
    origin, last = _clone_both(sim)
    assert origin not in (77, 78)
    assert (source.clock.origin, twin.clock.origin) == (77, 78)
    assert source.clock.last == twin.clock.last == last  # the image's clock state, kept
    assert source.up and twin.up
    assert (source.incarnation, twin.incarnation) == (incarnations[0] + 1, incarnations[1] + 1)
    assert source.clock.now() > last


def test_with_no_fork_redraw_the_copies_keep_the_image_origin_and_collide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ARMING_ENV, ARMING_VALUE)
    sim = Simulation(1, SimConfig(faults=False, mutants=Mutants.arm(Mutant.NO_FORK_REDRAW)))
    source, twin = sim.coordinators[0], sim.coordinators[1]
    origin, _ = _clone_both(sim)
    assert source.clock.origin == twin.clock.origin == origin
    assert source.clock.now() == twin.clock.now()  # same instant, same state: same timestamp


def test_seeds_that_clone_pass_on_the_correct_store() -> None:
    cloned = 0
    for seed in range(CAUGHT_SEED, CAUGHT_SEED + 3):
        result = run_seed(seed, SimConfig(workload=CAUGHT_WORKLOAD))
        assert result.ok, f"seed {seed}: {result.summary()}"
        cloned += sum(n for what, n in result.stats["counts"].items() if what.startswith("clone"))
    assert cloned > 0


def test_the_mutant_hunt_seed_catches_no_fork_redraw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ARMING_ENV, ARMING_VALUE)
    config = SimConfig(workload=CAUGHT_WORKLOAD, mutants=Mutants.arm(Mutant.NO_FORK_REDRAW))
    result = run_seed(CAUGHT_SEED, config)
    assert not result.ok
    assert "duplicate-write-ts" in {a.kind for a in result.anomalies()}
