"""A simulated client: runs workload scripts one at a time, retrying as the SDK does.

Theory of operation
-------------------
A :class:`Client` is one application process using the store through a coordinator (a random
live one per call; the final reads always use the first). It records each operation in the
history: the script's invoke value first, its :class:`~chaos.sim.workloads.Completion` last.
After an ``info`` completion the process is retired and the client goes on under a fresh one.

Retries follow the SDK's policy, with its own code: every step gets a
:class:`~kvstore.client.retry.Attempts` (attempt bound, deadline, capped exponential backoff
with full jitter from the run's generator, and the client-wide retry budget), on virtual time.
Which errors a step may retry is the SDK's rule for that call:

* an interactive transaction cancelled because what it read changed asks to run again
  (:class:`~chaos.sim.workloads.Rerun`): the SDK's ``run`` policy, at most
  ``SDK_RUN_ATTEMPTS_MAX`` attempts, outside the retry budget;

* reads (read transactions, gets, scan pages): any retryable error (a read changes nothing);
* a singleton write: only an error that is neither ambiguous nor a call that may have run (a
  refused connection, an admission refusal, a conflict or an old timestamp reported by the
  node): it is never sent again once it may have been applied;
* a write transaction with an idempotency token: any retryable error but a cancellation, with
  the same token (an ambiguous answer included: the token makes the retry safe). When it still
  ends ambiguous, the client asks the token's home for the transaction's ledger record (a token
  lookup, :func:`~kvstore.coordinator.singleton.new_token_lookup`): COMMITTED completes the
  operation ``ok`` with the record's timestamp, CANCELLED ``fail``, anything else leaves it
  ``info``;
* a write transaction without a token: only a refusal that sent nothing (admission).

A coordinator found down when the client submits is a refusal (nothing sent): ``fail`` on a
first attempt, after which the client backs off before its next operation; on a retry of a
tokened write an earlier attempt may have committed, so it stays ambiguous.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chaos.history import Op
from chaos.sim.hosts import CoordinatorHost
from chaos.sim.workloads import (
    Completion,
    Get,
    Put,
    Read,
    Rerun,
    ScanKeys,
    Script,
    Step,
    Write,
)
from kvstore.client.retry import Attempts, RetryBudget, RetryPolicy
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.coordinator.scan import ScanResult
from kvstore.coordinator.singleton import CallResult
from kvstore.errors import ErrorCode, KvError, TransactionConflict, error_from_code
from kvstore.limits import SDK_RUN_ATTEMPTS_MAX, SDK_TIMEOUT_MS_DEFAULT
from kvstore.messages import LedgerRecord, ReasonCode, TokenLookupReply, TxnState, WriteReply

if TYPE_CHECKING:
    from chaos.sim.simulation import Simulation

__all__ = ["Client", "CLIENT_LINK_US", "REFUSED_BACKOFF_US"]

_MS = 1000
CLIENT_LINK_US = 100  # client <-> coordinator, fault-free
REFUSED_BACKOFF_US = 200 * _MS  # after "every coordinator is down"

_REASON_ERRORS = {
    ReasonCode.TRANSACTION_CONFLICT: ErrorCode.TransactionConflict,
    ReasonCode.TIMESTAMP_TOO_OLD: ErrorCode.TimestampTooOld,
}


def _error(code: ErrorCode, sent: bool | None = None) -> KvError:
    details = {} if sent is None else {"sent": sent}
    return error_from_code(code, code.value.summary, details=details)


def _step_error(step: Step, result: Any) -> KvError | None:
    """The error an answered step reports to the SDK's retry policy (None: no error)."""
    if isinstance(result, ReadResult | ScanResult):
        return None if result.error is None else _error(result.error)
    if isinstance(result, CallResult):
        if result.error is not None:  # OutcomeUnknown: the call may have run
            return _error(result.error, sent=result.error is ErrorCode.OutcomeUnknown)
        reply = result.reply
        if isinstance(step, Put) and isinstance(reply, WriteReply):
            code = _REASON_ERRORS.get(reply.outcome.code)
            return None if code is None else _error(code)
    return None


def _may_retry(step: Step, error: KvError) -> bool:
    """The SDK's filter for the call a step stands for (``kvstore.client.client``)."""
    if isinstance(step, Put):  # _retry_singleton_write
        return not error.code.ambiguous and error.details.get("sent") is not True
    return True  # reads: _retry_any


class Client:
    """One simulated client: runs scripts one at a time through random coordinators."""

    def __init__(self, sim: Simulation, process: int) -> None:
        self.sim = sim
        self.process = process
        self.busy = False
        self.final = False  # final reads: always through the first coordinator
        self.auto = True  # begin the next operation after a pause (off when a test drives)
        self.policy = RetryPolicy()
        self.budget = RetryBudget(self.policy, self._clock_s)
        self._reruns: Attempts | None = None  # the current operation's re-runs (SDK ``run``)

    def _clock_s(self) -> float:
        return self.sim.loop.now_us / 1e6

    def _attempts(self, attempts_max: int | None = None) -> Attempts:
        timeout_s = SDK_TIMEOUT_MS_DEFAULT / 1000
        policy = self.policy
        if attempts_max is not None:
            policy = dataclasses.replace(policy, attempts_max=attempts_max)
        return Attempts(policy, self.budget, self._clock_s, self.sim.rng, timeout_s)

    def begin(self) -> None:
        sim = self.sim
        if self.busy or sim.stopping or sim.ops_started >= sim.config.ops_max:
            return
        sim.ops_started += 1
        sim.op_started()
        f, value, script = sim.workload.script(sim.rng)
        self.run(f, value, script)

    def run(self, f: str, value: Any, script: Script) -> None:
        sim = self.sim
        self.busy = True
        self._reruns = None
        invoke = sim.history.invoke(self.process, f, value, time_ns=sim.loop.now_us * 1000)
        sim.trace.add(sim.loop.now_us, f"client {self.process} invoke {f} {value}")
        self._step(invoke, script, None)

    def _step(self, invoke: Op, script: Script, answer: Any) -> None:
        try:
            step = script.send(answer)
        except StopIteration as stop:
            self._complete(invoke, stop.value)
            return
        if isinstance(step, Write):
            self._submit_write(invoke, script, step, self._attempts())
        elif isinstance(step, Rerun):
            self._rerun(invoke, script)
        else:
            if isinstance(step, Put):
                self.sim.singletons[invoke.index] = step.op
            self.sim.count(f"step {type(step).__name__}")
            self._submit(invoke, script, step, self._attempts())

    def _coordinator(self) -> CoordinatorHost:
        """Final reads use the first coordinator; others pick a live one (clients fail over)."""
        sim = self.sim
        if self.final:
            return sim.coordinators[0]
        return sim.rng.choice([c for c in sim.coordinators if c.up] or sim.coordinators)

    def _end(self, invoke: Op, script: Script, done: Completion) -> None:
        script.close()
        self._complete(invoke, done)

    def _later(self, delay_s: float, then: Callable[[], None]) -> None:
        self.sim.loop.after(int(delay_s * 1e6), then)

    def _rerun(self, invoke: Op, script: Script) -> None:
        """The SDK's ``run``: again after a conflict, with backoff, outside the retry budget."""
        if self._reruns is None:
            self._reruns = self._attempts(SDK_RUN_ATTEMPTS_MAX)
        conflict = TransactionConflict("the transaction conflicted; run it again")
        delay_s = self._reruns.retry_delay_s(conflict, spend_budget=False)
        if delay_s is None:
            self._step(invoke, script, False)
            return
        self.sim.count("rerun")
        self._later(delay_s, lambda: self._step(invoke, script, True))

    # --- every step but a write transaction -------------------------------------------------

    def _submit(self, invoke: Op, script: Script, step: Step, attempts: Attempts) -> None:
        sim = self.sim
        coordinator = self._coordinator()
        writes = isinstance(step, Put)

        def deliver(result: Any) -> None:
            sim.loop.after(
                CLIENT_LINK_US, lambda: self._answered(invoke, script, step, attempts, result)
            )

        def lost() -> None:  # the connection broke: a read changed nothing, a write may have
            kind = "info" if writes else "fail"
            self._end(invoke, script, Completion(kind, invoke.value, error="connection lost"))

        def submit() -> None:
            if not coordinator.up:  # refused: nothing was sent
                self._end(invoke, script, Completion("fail", invoke.value, error="refused"))
                return
            try:
                _send(coordinator, step, deliver, lost)
            except KvError as refused:  # admission: nothing was sent
                self._answered(invoke, script, step, attempts, refused)

        sim.loop.after(CLIENT_LINK_US, submit)

    def _answered(
        self, invoke: Op, script: Script, step: Step, attempts: Attempts, result: Any
    ) -> None:
        error = result if isinstance(result, KvError) else _step_error(step, result)
        if error is not None and _may_retry(step, error):
            delay_s = attempts.retry_delay_s(error)
            if delay_s is not None:
                self._later(delay_s, lambda: self._submit(invoke, script, step, attempts))
                return
        if isinstance(result, KvError):
            self._end(invoke, script, Completion("fail", invoke.value, error=result.code.name))
            return
        self._step(invoke, script, result)

    # --- write transactions ---------------------------------------------------------------

    def _submit_write(self, invoke: Op, script: Script, step: Write, attempts: Attempts) -> None:
        """Send a write; retry what the SDK retries (see the module)."""
        sim = self.sim
        coordinator = self._coordinator()
        retry = attempts.made > 1  # an earlier attempt may have committed

        def again_or(error: KvError, final: Callable[[], None]) -> None:
            delay_s = attempts.retry_delay_s(error)
            if delay_s is None:
                final()
                return
            sim.trace.add(sim.loop.now_us, f"client {self.process} retries {step.token}")
            self._later(delay_s, lambda: self._submit_write(invoke, script, step, attempts))

        def ambiguous(why: str) -> None:
            if step.token is None:
                self._end(invoke, script, Completion("info", invoke.value, error=why))
            else:
                self._look_up(invoke, script, step.token, why)

        def deliver(result: TxnResult) -> None:
            def answer() -> None:
                code = result.error
                if code is None or code is ErrorCode.TransactionCanceled or step.token is None:
                    self._step(invoke, script, result)
                elif code.ambiguous or retry:
                    again_or(_error(code), lambda: ambiguous(code.name))
                else:
                    again_or(_error(code), lambda: self._step(invoke, script, result))

            sim.loop.after(CLIENT_LINK_US, answer)

        def lost() -> None:  # the connection broke with the request in flight
            if step.token is None:
                ambiguous("connection lost")
            else:
                again_or(_error(ErrorCode.Unavailable, sent=True), lambda: ambiguous("lost"))

        def submit() -> None:
            if not coordinator.up:
                if not retry:  # refused: nothing was sent
                    self._end(invoke, script, Completion("fail", invoke.value, error="refused"))
                else:
                    refused = _error(ErrorCode.Unavailable, sent=False)
                    again_or(refused, lambda: ambiguous("refused on retry"))
                return
            txn_id = coordinator.new_txn_id()
            try:
                coordinator.write(txn_id, step.ops, deliver, lost, step.token)
            except KvError as refused:  # admission: nothing was sent
                if retry:
                    again_or(refused, lambda: ambiguous(refused.code.name))
                else:
                    fail = Completion("fail", invoke.value, error=refused.code.name)
                    again_or(refused, lambda: self._end(invoke, script, fail))
                return
            # Where the ledger record lives: the token's home when there is one (WriteTxn's
            # token_home), else the first key's partition.
            anchor = sim.pmap.partition_of(step.token or step.ops[0].key)
            sim.writes.setdefault(invoke.index, []).append((txn_id, anchor))

        sim.loop.after(CLIENT_LINK_US, submit)

    def _look_up(self, invoke: Op, script: Script, token: str, why: str) -> None:
        """Ask the token's home what became of an ambiguous tokened write (see the module)."""
        sim = self.sim
        coordinator = self._coordinator()
        unknown = Completion("info", invoke.value, error=why)

        def deliver(result: CallResult[TokenLookupReply]) -> None:
            reply = result.reply
            record = None if reply is None else reply.record
            sim.loop.after(CLIENT_LINK_US, lambda: self._looked_up(invoke, script, record, why))

        def submit() -> None:
            if not coordinator.up:
                self._end(invoke, script, unknown)
                return
            sim.count("token lookup")
            try:
                coordinator.lookup(token, deliver, lambda: self._end(invoke, script, unknown))
            except KvError:
                self._end(invoke, script, unknown)

        sim.loop.after(CLIENT_LINK_US, submit)

    def _looked_up(self, invoke: Op, script: Script, record: LedgerRecord | None, why: str) -> None:
        if record is None or not record.state.decided:
            self._end(invoke, script, Completion("info", invoke.value, error=why))
            return
        self.sim.trace.add(
            self.sim.loop.now_us, f"client {self.process} looked up {record.txn_id} {record.state}"
        )
        committed = record.state is TxnState.COMMITTED
        if committed and record.completed_us is None:  # not every participant applied it yet
            self.sim.unapplied_lookups.add(invoke.index)
        result = TxnResult(
            committed=committed,
            txn_id=record.txn_id,
            ts=record.ts,
            error=None if committed else ErrorCode.TransactionCanceled,
        )
        self._step(invoke, script, result)

    # --- completion -----------------------------------------------------------------------

    def _complete(self, invoke: Op, done: Completion) -> None:
        sim = self.sim
        attempts = sim.writes.get(invoke.index)
        txn_id = done.txn_id or (attempts[-1][0] if attempts else None)
        op = sim.history.complete(
            invoke,
            done.type,  # type: ignore[arg-type]
            done.value,
            time_ns=sim.loop.now_us * 1000,
            ts=done.ts,
            txn_id=txn_id,
            error=done.error,
        )
        detail = f"ts={op.ts} " if op.ts is not None else ""
        detail += f"error={op.error} " if op.error is not None else ""
        sim.trace.add(
            sim.loop.now_us, f"client {self.process} {op.type} {op.f} {txn_id} {detail}{op.value}"
        )
        self.busy = False
        if done.type == "info":
            self.process = sim.new_process()
        if self.auto and not self.final:
            pause_us = 1 + int(sim.rng.expovariate(1.0 / sim.profile.think_us))
            if done.error == "refused":  # every coordinator is down: back off
                pause_us += sim.rng.randint(REFUSED_BACKOFF_US // 2, REFUSED_BACKOFF_US)
            sim.loop.after(pause_us, self.begin)


def _send(
    coordinator: CoordinatorHost,
    step: Step,
    deliver: Callable[[Any], None],
    lost: Callable[[], None],
) -> None:
    if isinstance(step, Read):
        coordinator.read(step.keys, deliver, lost)
    elif isinstance(step, Get):
        coordinator.get(step.key, deliver, lost)
    elif isinstance(step, Put):
        coordinator.singleton(step.op, deliver, lost)
    elif isinstance(step, ScanKeys):
        coordinator.scan(step.start, step.end, step.limit, deliver, lost)
    else:
        raise TypeError(f"not a step for a coordinator: {step!r}")
