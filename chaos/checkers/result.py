"""Result types shared by every checker, and the anomaly-to-consistency-model table.

Theory of operation
-------------------
A checker reports :class:`Anomaly` records: a ``kind`` (Elle's names: ``G0``, ``G1a``,
``G-single-realtime``, ``lost-update``, ...), a human-readable explanation and the ops involved.
Whether a kind is fatal depends on the consistency model under test. Following Elle's
``consistency_model.clj``:

* ``serializable`` prohibits G0, G1a/b/c, G-single, G-nonadjacent, G2-item and the non-cycle
  anomalies (internal, lost-update, dirty-update, incompatible-order, future-read,
  duplicate-elements, cyclic-versions, garbage-read, ...);
* ``strong-session-serializable`` additionally prohibits the ``-process`` cycle variants;
* ``strict-serializable`` additionally prohibits the ``-realtime`` variants (a process edge is
  also a real-time edge, so ``-process`` anomalies fail strict too).

:func:`verdicts` maps a set of kinds to one boolean per model, and :class:`CheckResult` carries
those verdicts plus ``valid`` for the model the caller asked about.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from chaos.history import Op

__all__ = [
    "MODELS",
    "Anomaly",
    "CheckResult",
    "prohibits",
    "verdicts",
    "make_result",
    "merge",
]

MODELS: tuple[str, ...] = (
    "serializable",
    "strong-session-serializable",
    "strict-serializable",
)

# Kinds that mean "could not decide" rather than "violated".
_UNKNOWN_KINDS = frozenset({"cycle-search-timeout"})


@dataclass(frozen=True)
class Anomaly:
    """One thing a checker found wrong (or, for ``cycle-search-timeout``, could not decide)."""

    kind: str
    explanation: str
    ops: tuple[Op, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}: {self.explanation}"


def prohibits(model: str, kind: str) -> bool:
    """Whether ``model`` forbids an anomaly of ``kind``."""
    if model not in MODELS:
        raise ValueError(f"unknown consistency model {model!r}")
    if kind in _UNKNOWN_KINDS:
        return False
    if kind.endswith("-realtime"):
        return model == "strict-serializable"
    if kind.endswith("-process"):
        return model != "serializable"
    return True


def verdicts(kinds: Iterable[str]) -> dict[str, bool]:
    """``{model: holds}`` for every model in :data:`MODELS`."""
    found = set(kinds)
    return {m: not any(prohibits(m, k) for k in found) for m in MODELS}


@dataclass
class CheckResult:
    """Outcome of one checker run (or of several, merged)."""

    valid: bool
    anomalies: list[Anomaly]
    model: str = "serializable"
    checker: str = ""
    verdict: dict[str, bool] = field(default_factory=dict)
    unknown: bool = False
    notes: list[str] = field(default_factory=list)

    def kinds(self) -> set[str]:
        """The distinct anomaly kinds reported."""
        return {a.kind for a in self.anomalies}

    def of_kind(self, kind: str) -> list[Anomaly]:
        """The anomalies of one kind."""
        return [a for a in self.anomalies if a.kind == kind]

    def not_models(self) -> list[str]:
        """Models ruled out, weakest first (Elle's ``not`` plus ``also-not``)."""
        return [m for m in MODELS if not self.verdict.get(m, True)]

    def summary(self) -> str:
        """A multi-line report suitable for a test failure message."""
        head = f"{self.checker or 'check'}: {'valid' if self.valid else 'INVALID'} ({self.model})"
        if self.unknown:
            head += " [unknown: search incomplete]"
        shown = [f"  {a}".replace("\n", "\n    ") for a in self.anomalies]
        lines = [head, *shown, *(f"  note: {n}" for n in self.notes)]
        return "\n".join(lines)


def make_result(
    checker: str,
    anomalies: list[Anomaly],
    model: str = "serializable",
    notes: list[str] | None = None,
) -> CheckResult:
    """Build a :class:`CheckResult`, deriving verdicts and ``valid`` from the anomaly kinds."""
    kinds = {a.kind for a in anomalies}
    verdict = verdicts(kinds)
    unknown = bool(kinds & _UNKNOWN_KINDS) and verdict[model]
    return CheckResult(
        valid=verdict[model] and not unknown,
        anomalies=anomalies,
        model=model,
        checker=checker,
        verdict=verdict,
        unknown=unknown,
        notes=list(notes or []),
    )


def merge(checker: str, results: Iterable[CheckResult], model: str = "serializable") -> CheckResult:
    """Combine several results into one (anomalies concatenated, verdicts re-derived)."""
    parts = list(results)
    anomalies = [a for r in parts for a in r.anomalies]
    notes = [f"{r.checker}: {n}" for r in parts for n in r.notes]
    out = make_result(checker, anomalies, model, notes)
    if any(r.unknown for r in parts) and out.valid:
        out.valid, out.unknown = False, True
    return out
