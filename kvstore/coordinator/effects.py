"""What the coordinator cores ask their shell to do: send a request, or give the answer.

Theory of operation
-------------------
A coordinator core (write transaction, read transaction, recovery) never performs I/O. Each event
it is given returns a list of effects, to be carried out by the shell in list order:

* :class:`Send` asks for one request to one partition. ``call_id`` is allocated by the core and is
  unique within that core object; the shell hands the reply back with ``step_reply(call_id, ...)``,
  or reports ``step_failed(call_id, ...)`` when the call timed out at ``deadline_us`` or the peer
  was unreachable (then the request may or may not have been applied).
* :class:`Finish` carries the client's answer. Each core emits it exactly once, possibly before the
  core is done (cancels may still be retried after the client was told "cancelled").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from kvstore.messages import Request

__all__ = ["Send", "Finish", "ResultT"]

ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Send ``request`` (it names its partition); give up on it at ``deadline_us``."""

    call_id: int
    request: Request
    deadline_us: int


@dataclass(frozen=True, slots=True)
class Finish(Generic[ResultT]):
    """The answer for the client; emitted exactly once per core object."""

    result: ResultT
