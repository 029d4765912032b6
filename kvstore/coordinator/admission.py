"""Coordinator admission: a bounded number of cores at once, beyond that a retryable refusal.

Theory of operation
-------------------
Overload is an answer (DESIGN section 8): a coordinator runs at most ``limit`` cores at once
(``COORDINATOR_TXNS_IN_FLIGHT_MAX`` by default), counting cores that still run after their
caller was answered (cancels retried, the final completion). :func:`admit` is the check every
runtime makes before starting a core (the coordinator library, and the simulator's
coordinators with a small limit of their own): it raises ``Overloaded``, which clients retry
after a backoff, rather than queue without bound.
"""

from __future__ import annotations

from kvstore.errors import Overloaded

__all__ = ["admit"]


def admit(running: int, limit: int) -> None:
    """Raise ``Overloaded`` when ``running`` cores already fill ``limit``."""
    if running >= limit:
        raise Overloaded(
            f"{running} transactions in flight; back off and retry", details={"limit": limit}
        )
