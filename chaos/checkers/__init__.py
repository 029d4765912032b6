"""Offline history checkers: Elle-style list-append and rw-register, bank, ts replay, oracle.

Theory of operation
-------------------
Each checker reads a :class:`chaos.history.History` and returns a :class:`CheckResult` listing
:class:`Anomaly` records and a verdict per consistency model (serializable, strong-session
serializable, strict serializable). :func:`check_all` runs the checkers that apply to a workload.
Shared pieces: :mod:`.txn` (parsing), :mod:`.graph` (dependency graphs, process and real-time
edges), :mod:`.cycles` (cycle search and classification) and :mod:`.result` (model table).
"""

from chaos.checkers.result import MODELS, Anomaly, CheckResult
from chaos.checkers.suite import WORKLOADS, check_all

__all__ = ["MODELS", "WORKLOADS", "Anomaly", "CheckResult", "check_all"]
