"""The simulated network: per-message delay, loss, duplication, reordering and partitions.

Theory of operation
-------------------
Hosts never call each other; every request and every reply is an :class:`Envelope` handed to
:class:`Network`, which decides its fate with the run's random generator and the current
:class:`~chaos.sim.config.FaultProfile`: lost (drop probability, or a cut link), delivered once
or twice, after a normal or a *slow* delay (slow messages overtake nothing and are overtaken by
everything, which is how reordering happens). A request that reaches a crashed node is refused: the
sender learns it after one more delay (connection refused), the only failure a sender is told
about; every other loss is found by the sender's own deadline. Messages a host sends to itself
(a node resolving its own intents) take a short, fault-free path.

A singleton write (``WriteRequest``) is never duplicated: it is not idempotent (each delivery
would apply it at a new timestamp), and production never delivers a request twice (one ordered
connection per peer; the coordinator re-sends a singleton write only when a conflict refused it,
nothing applied). Nor is an ``ExecuteRequest`` (one partition) or a ``NodeExecuteRequest``
(several partitions of one node): the coordinator reads a refusal of it as "nothing ran" (its
answer to the client is that refusal, definite), which a second copy refused after the first one
applied would contradict; production's connection never makes that
second copy. Every other request is idempotent by transaction id, or a read.

``quiet`` (the heal phase) turns loss, duplication and slowness off; cut links are healed by the
nemesis itself. Links are symmetric and named by the pair of host names.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chaos.sim.config import FaultProfile
from chaos.sim.loop import EventLoop, Trace
from kvstore.errors import KvError, Unavailable
from kvstore.messages import ExecuteRequest, NodeExecuteRequest, Reply, Request, WriteRequest
from kvstore.runtime.actors import Answer
from kvstore.types import PartitionId, Timestamp

if TYPE_CHECKING:
    from chaos.sim.hosts import Host

__all__ = ["Envelope", "Network"]

_NEVER_DUPLICATED: frozenset[type[Request]] = frozenset(
    {WriteRequest, ExecuteRequest, NodeExecuteRequest}
)

LOOPBACK_US = 20


@dataclass(frozen=True, slots=True)
class Envelope:
    """A request on its way, with where its answer must come back to."""

    src: str
    incarnation: int  # of the sending host; answers to an older incarnation are discarded
    request: Request
    answer: Answer  # the sending actor's callback (kvstore.runtime.actors)


def _describe(request: Request | Reply | KvError) -> str:
    name = type(request).__name__
    txn = getattr(request, "txn_id", None)
    return f"{name}({txn})" if txn is not None else name


class Network:
    """Carries envelopes between hosts under the run's faults."""

    def __init__(
        self, loop: EventLoop, rng: random.Random, trace: Trace, profile: FaultProfile
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.trace = trace
        self.profile = profile
        self.hosts: dict[str, Host] = {}
        self.owner: dict[PartitionId, str] = {}
        self.cut: set[tuple[str, str]] = set()
        self.quiet = False
        self.sent = 0
        self.dropped = 0
        self.counts: dict[str, int] = {}  # notable events of the hosts, for the statistics

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # --- links -------------------------------------------------------------------------

    @staticmethod
    def link(a: str, b: str) -> tuple[str, str]:
        return (a, b) if a <= b else (b, a)

    def is_cut(self, a: str, b: str) -> bool:
        return self.link(a, b) in self.cut

    # --- sending -------------------------------------------------------------------------

    def send_request(self, envelope: Envelope) -> None:
        request = envelope.request
        dst = getattr(request, "node", None) or self.owner[request.partition]
        self._transmit(
            envelope.src,
            dst,
            _describe(request),
            lambda: self._arrive_request(dst, envelope),
            duplicable=type(request) not in _NEVER_DUPLICATED,
        )

    def _transmit(
        self,
        src: str,
        dst: str,
        what: str,
        deliver: Callable[[], None],
        *,
        duplicable: bool = True,
    ) -> None:
        self.sent += 1
        if src == dst:
            self.loop.after(LOOPBACK_US, deliver)
            return
        profile = self.profile
        if self.is_cut(src, dst) or (not self.quiet and self.rng.random() < profile.drop_p):
            self.dropped += 1
            self.trace.add(self.loop.now_us, f"drop {src}->{dst} {what}")
            return
        delay_us = self._delay_us()
        if duplicable and not self.quiet and self.rng.random() < profile.dup_p:
            again_us = self._delay_us()
            self.trace.add(
                self.loop.now_us, f"send {src}->{dst} {what} in {delay_us}us+{again_us}us"
            )
            self.loop.after(again_us, deliver)
        else:
            self.trace.add(self.loop.now_us, f"send {src}->{dst} {what} in {delay_us}us")
        self.loop.after(delay_us, deliver)

    def _delay_us(self) -> int:
        profile = self.profile
        if not self.quiet and profile.slow_p and self.rng.random() < profile.slow_p:
            return self.rng.randint(profile.delay_us, max(profile.delay_us, profile.slow_us))
        return 1 + int(self.rng.expovariate(1.0 / profile.delay_us))

    def _arrive_request(self, dst: str, envelope: Envelope) -> None:
        node = self.hosts[dst]
        if node.up and node.paused_until_us > self.loop.now_us:  # read when it resumes
            self.loop.at(node.paused_until_us, lambda: self._arrive_request(dst, envelope))
            return
        if not node.up:
            self.trace.add(self.loop.now_us, f"refused {envelope.src}->{dst}")
            sender = self.hosts[envelope.src]
            refused = Unavailable("connection refused")
            self.loop.after(self._delay_us(), lambda: sender.answer(envelope, None, refused, None))
            return
        node.receive(envelope, lambda outcome: self._send_reply(dst, envelope, outcome))

    def _send_reply(self, src: str, envelope: Envelope, outcome: Reply | KvError) -> None:
        sender = self.hosts[envelope.src]
        clock: Timestamp = self.hosts[src].clock.now()  # the responder's reading, as sent
        if isinstance(outcome, KvError):
            deliver = lambda: sender.answer(envelope, None, outcome, clock)  # noqa: E731
        else:
            deliver = lambda: sender.answer(envelope, outcome, None, clock)  # noqa: E731
        self._transmit(src, envelope.src, _describe(outcome), deliver)
