"""Deterministic simulation of a whole cluster: the production cores on virtual time and network.

``run_seed(seed, SimConfig(...))`` runs one seeded scenario and checks its history; see
:mod:`chaos.sim.simulation` for the phases and :mod:`chaos.sim.hosts` for the process shells.
"""

from chaos.sim.config import FaultProfile, SimConfig
from chaos.sim.simulation import SimResult, Simulation, run_seed

__all__ = ["FaultProfile", "SimConfig", "SimResult", "Simulation", "run_seed"]
