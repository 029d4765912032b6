"""The async client: validation, idempotency tokens, retries, and the calls of the SDK.

Theory of operation
-------------------
A :class:`Client` wraps one :class:`~kvstore.client.backend.Backend` (HTTP to a coordinator, or
an embedded coordinator) and adds what every call needs, in this order:

1. **Validation before sending.** Arguments are parsed with the store's own parsers
   (:func:`kvstore.ops.ops_from_json`, :func:`kvstore.values.validate_key`...); a bad one raises
   ``ValidationError`` and nothing is sent.
2. **An idempotency token** for every write transaction: the caller's, or one drawn so that its
   home partition is the first key's (:func:`kvstore.client.tokens.draw_token`; the partition
   count is learnt once, from ``GET /v1/health`` or the cluster map). Every attempt of one
   :meth:`Client.transact` sends the same token, so a retry after an ambiguous outcome
   (``OutcomeUnknown``, a lost connection, a 5xx) gets the original outcome instead of applying
   twice. The token is in ``details["token"]`` of an error :meth:`transact` raises, for
   :meth:`txn_outcome`.
3. **Retries** (:mod:`kvstore.client.retry`): only retryable errors, capped exponential backoff
   with full jitter, at most ``attempts_max`` attempts within the call's ``timeout_s``, within a
   client-wide retry budget. Per call, what may be retried is narrower still:

   * reads (``get``, ``read``, ``scan`` pages, ``txn_outcome``): every retryable error;
   * ``transact`` / ``update``: every retryable error except a definite cancellation
     (``TransactionCanceled`` is never retried here, even when its reasons are conflicts:
     re-running a transaction on fresh reads is :meth:`run`'s job);
   * singleton ``put`` / ``delete``: only errors that say nothing was applied. After a lost
     answer (``Unavailable`` with ``sent=True``) the write may have been applied and a repeat
     could apply it twice, so that is raised as ``OutcomeUnknown`` instead (use a transaction,
     which has a token, when a write must be retried blindly).

``read`` takes an optional ``at``: a snapshot read as of that timestamp (docs/sdk.md, "Reading
as of a timestamp"), checked here (its form) and by the coordinator (its window).

Reads take an optional ``value_type`` (``await kv.get("acct/1", Account)``): the answer is then
an ``Item[Account]`` whose value was checked against the type (:mod:`kvstore.client.typed`).
Writes take :data:`~kvstore.types.ValueInput`.

Interactive transactions (:meth:`transaction`, :meth:`run`) are in
:mod:`kvstore.client.transaction`; they use the same calls.

A client built before ``os.fork()`` works in both processes: each backend drops the connections
it inherited and connects afresh in the child (:mod:`kvstore.client.forks`), and the client's own
retry-jitter generator is re-seeded there, so parent and child do not back off in step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from kvstore.client.backend import Backend, ScanPage
from kvstore.client.builders import Delete, JsonCondition, Put, TxnOp, Update, op_json
from kvstore.client.forks import ProcessOwner
from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.client.retry import (
    Attempts,
    Clock,
    RetryBudget,
    RetryPolicy,
    validate_timeout_s,
)
from kvstore.client.tokens import draw_token
from kvstore.client.typed import checker, typed_item, typed_items
from kvstore.errors import (
    ErrorCode,
    KvError,
    OutcomeUnknown,
    TimestampTooOld,
    TransactionConflict,
    Unavailable,
    ValidationError,
)
from kvstore.limits import (
    READ_KEYS_MAX,
    SCAN_LIMIT_DEFAULT,
    SCAN_PAGE_ITEMS_MAX,
    SDK_RUN_ATTEMPTS_MAX,
    SDK_TIMEOUT_MS_DEFAULT,
)
from kvstore.ops import Op, op_from_json, ops_from_json, validate_token
from kvstore.partitioning import PartitionMap
from kvstore.timestamps import parse_timestamp
from kvstore.types import Timestamp, ValueInput
from kvstore.values import validate_key

if TYPE_CHECKING:
    from kvstore.client.transaction import Transaction

__all__ = ["Client", "Sleep"]

T = TypeVar("T")
V = TypeVar("V")
Sleep = Callable[[float], Awaitable[None]]


def _retry_any(error: KvError) -> bool:
    del error
    return True


def _retry_in_transact(error: KvError) -> bool:
    return error.code is not ErrorCode.TransactionCanceled


def _may_have_run(error: KvError) -> bool:
    """The attempt that failed with ``error`` may have been applied."""
    return error.code.ambiguous or error.details.get("sent") is True


def _says_nothing_of_the_token(error: KvError) -> bool:
    """A refusal of one attempt (busy, unreachable, full...), which tells nothing about what an
    earlier attempt with the same token did; a cancel or a mismatch is the token's answer."""
    return error.retryable and error.code is not ErrorCode.TransactionCanceled


def _retry_singleton_write(error: KvError) -> bool:
    return not error.code.ambiguous and error.details.get("sent") is not True


def _retry_in_run(error: KvError) -> bool:
    """Errors that mean "run the transaction again on fresh reads"."""
    return isinstance(error, TransactionConflict | TimestampTooOld)


def _optional_key(value: object, field: str) -> str | None:
    return None if value is None else validate_key(value, field)


@dataclass(frozen=True, slots=True)
class _ScanRange:
    prefix: str | None
    start: str | None
    end: str | None
    page_size: int
    value_type: type[Any] | None  # None: no check


class Client:
    """The async SDK client (see the module). Use ``kvstore.connect()`` to make one."""

    def __init__(
        self,
        backend: Backend,
        *,
        timeout_s: float = SDK_TIMEOUT_MS_DEFAULT / 1000,
        retry: RetryPolicy | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.retry = retry if retry is not None else RetryPolicy()
        self.timeout_s = validate_timeout_s(timeout_s)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._own_rng = rng is None  # re-seeded in a forked child (an injected one is kept)
        self._owner = ProcessOwner()
        self._sleep = sleep
        self._budget = RetryBudget(self.retry, clock)
        self._partitions: PartitionMap | None = None
        self._closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections (idempotent)."""
        if not self._closed:
            self._closed = True
            await self.backend.close()

    # --- retries --------------------------------------------------------------------------

    @property
    def budget(self) -> RetryBudget:
        """The client-wide retry budget."""
        return self._budget

    def _reseed(self) -> None:
        if self._own_rng:
            self._rng.seed()  # from os.urandom

    def attempts(self, timeout_s: float | None = None, attempts_max: int | None = None) -> Attempts:
        """The retry state of one new call."""
        self._owner.adopt(self._reseed)
        policy = self.retry
        if attempts_max is not None:
            policy = dataclasses.replace(policy, attempts_max=attempts_max)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return Attempts(policy, self._budget, self._clock, self._rng, timeout)

    async def pause(self, delay_s: float) -> None:
        """Sleep between attempts (the injected sleep)."""
        await self._sleep(delay_s)

    async def _call(
        self,
        attempt: Callable[[float], Awaitable[T]],
        retry_if: Callable[[KvError], bool] = _retry_any,
        attempts: Attempts | None = None,
    ) -> T:
        """``attempt(time left)`` until it answers or the policy says raise."""
        if self._closed:
            raise Unavailable("the client is closed", details={"sent": False, "retryable": False})
        attempts = attempts if attempts is not None else self.attempts()
        while True:
            try:
                return await attempt(attempts.remaining_s())
            except KvError as error:
                delay_s = attempts.retry_delay_s(error) if retry_if(error) else None
                if delay_s is None:
                    raise
            await self._sleep(delay_s)

    # --- singletons -----------------------------------------------------------------------

    @overload
    async def get(self, key: str) -> Item | None: ...
    @overload
    async def get(self, key: str, value_type: type[V]) -> Item[V] | None: ...
    async def get(self, key: str, value_type: type[Any] | None = None) -> Item[Any] | None:
        """The committed item at ``key``, or None when there is none; with ``value_type``, an
        ``Item[value_type]`` whose value was checked (``ValidationError`` when it does not
        match; see :mod:`kvstore.client.typed`)."""
        validate_key(key)
        if value_type is not None:
            checker(value_type)  # an unknown type is refused before anything is sent
        item = await self._call(lambda timeout_s: self.backend.get(key, timeout_s))
        return item if value_type is None else typed_item(item, value_type)

    async def put(
        self, key: str, value: ValueInput, *, if_: JsonCondition | None = None
    ) -> Written:
        """Store ``value`` at ``key`` (a singleton write); ``ConditionFailed`` when ``if_`` does
        not hold."""
        op = op_from_json(Put(key, value, if_).to_json())
        return await self._write(op, lambda timeout_s: self.backend.put(op, timeout_s))

    async def delete(self, key: str, *, if_: JsonCondition | None = None) -> Deleted:
        """Remove the item at ``key`` (a singleton write); an absent key is not an error."""
        op = op_from_json(Delete(key, if_).to_json())
        return await self._write(op, lambda timeout_s: self.backend.delete(op, timeout_s))

    async def _write(self, op: Op, attempt: Callable[[float], Awaitable[T]]) -> T:
        try:
            return await self._call(attempt, _retry_singleton_write)
        except KvError as error:
            if error.code is ErrorCode.Unavailable and error.details.get("sent") is True:
                raise OutcomeUnknown(
                    f"the {op.kind.value} of {op.key!r} may or may not have been applied: "
                    f"{error.message}",
                    details={**error.details, "key": op.key},
                ) from None
            raise

    async def update(
        self,
        key: str,
        *,
        set: Mapping[str, ValueInput] | None = None,  # the API's member name, hence the builtin's
        remove: Sequence[str] | None = None,
        add: Mapping[str, int | float] | None = None,
        append: Mapping[str, Sequence[ValueInput]] | None = None,
        if_: JsonCondition | None = None,
    ) -> Committed:
        """Change parts of the value at ``key`` (a one-op transaction, so retried safely)."""
        op = Update(key, set=set, remove=remove, add=add, append=append, if_=if_)
        return await self.transact([op])

    # --- transactions ---------------------------------------------------------------------

    async def transact(self, ops: Sequence[TxnOp], *, token: str | None = None) -> Committed:
        """One write transaction: all ``ops`` (builders or JSON forms) or none.

        ``TransactionCanceled`` carries one reason per op (:func:`kvstore.client.reasons`).
        """
        if isinstance(ops, str | bytes) or not isinstance(ops, Sequence):
            raise ValidationError("ops", "must be a list of operations")
        parsed = ops_from_json([op_json(op) for op in ops], txn_ops_max=self.backend.txn_ops_max)
        return await self.transact_ops(parsed, token=token)

    async def transact_ops(self, ops: Sequence[Op], *, token: str | None = None) -> Committed:
        """:meth:`transact` of already validated ops."""
        attempts = self.attempts()  # one deadline for the partition lookup and the attempts
        if token is None:
            token = draw_token(await self._partition_map(attempts.remaining_s()), ops[0].key)
        else:
            validate_token(token)
        chosen = token
        in_doubt: list[KvError] = []  # attempts that may have been applied

        async def attempt(timeout_s: float) -> Committed:
            try:
                return await self.backend.transact(ops, chosen, timeout_s)
            except KvError as error:
                if _may_have_run(error):
                    in_doubt.append(error)
                raise

        try:
            return await self._call(attempt, _retry_in_transact, attempts)
        except KvError as error:
            error.details.setdefault("token", chosen)
            if in_doubt and (_may_have_run(error) or _says_nothing_of_the_token(error)):
                # An earlier attempt may have committed: a later refusal must not read as "not
                # applied". The token tells (``txn_outcome``), or a retry with it does.
                raise OutcomeUnknown(
                    "the transaction's outcome is not known (an attempt may have been applied; "
                    f"the last one failed: {error.message}); retry with the same token",
                    details={**error.details, "last_error": error.code.name},
                ) from None
            raise

    async def _partition_map(self, timeout_s: float) -> PartitionMap | None:
        """The cluster's partitioning, learnt once (one attempt, no retries); None, meaning any
        token will do, when it cannot be learnt now: the transaction reports what is wrong."""
        if self._partitions is None:
            try:
                count = await self.backend.partition_count(timeout_s)
            except KvError:
                return None
            self._partitions = PartitionMap(count)
        return self._partitions

    @overload
    async def read(
        self, keys: Sequence[str], *, at: Timestamp | str | None = None
    ) -> list[Item | None]: ...
    @overload
    async def read(
        self, keys: Sequence[str], value_type: type[V], *, at: Timestamp | str | None = None
    ) -> list[Item[V] | None]: ...
    async def read(
        self,
        keys: Sequence[str],
        value_type: type[Any] | None = None,
        *,
        at: Timestamp | str | None = None,
    ) -> list[Item[Any] | None]:
        """The items of ``keys`` as of one instant (a read-only transaction), in request order;
        None for an absent key. ``value_type`` as for :meth:`get`, for every item.

        With ``at`` (a :class:`~kvstore.types.Timestamp`, or its text form as the store returns
        it: a commit's, a write's or an item's ``ts``), the items as of that timestamp: a
        serializable snapshot at ``at``, at most ``SNAPSHOT_WINDOW_MS`` (10 s) old
        (``SnapshotTooOld`` beyond it; ``ValidationError`` for an ``at`` after the clock of the
        coordinator that answers). It may miss writes acknowledged after ``at``."""
        snapshot = None if at is None else parse_timestamp(at, "at")
        if value_type is not None:
            checker(value_type)
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
            raise ValidationError("keys", "must be a list of keys")
        if not 1 <= len(keys) <= READ_KEYS_MAX:
            raise ValidationError("keys", f"must hold 1..{READ_KEYS_MAX} keys")
        checked = [validate_key(key, f"keys[{index}]") for index, key in enumerate(keys)]
        if len(set(checked)) != len(checked):
            raise ValidationError("keys", "must be distinct")
        items = await self._call(lambda timeout_s: self.backend.read(checked, timeout_s, snapshot))
        return items if value_type is None else typed_items(items, value_type)

    async def txn_outcome(self, token: str) -> dict[str, object] | None:
        """The recorded outcome of the transaction that used idempotency ``token``
        (``{"token", "txn_id", "ts", "state", "completed", "reasons"?}``), or None when unknown
        or older than the idempotency window."""
        validate_token(token)
        return await self._call(lambda timeout_s: self.backend.txn_outcome(token, timeout_s))

    # --- scans ----------------------------------------------------------------------------

    @overload
    def scan(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        page_size: int = SCAN_LIMIT_DEFAULT,
    ) -> AsyncIterator[Item]: ...
    @overload
    def scan(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        page_size: int = SCAN_LIMIT_DEFAULT,
        value_type: type[V],
    ) -> AsyncIterator[Item[V]]: ...
    def scan(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        page_size: int = SCAN_LIMIT_DEFAULT,
        value_type: type[Any] | None = None,
    ) -> AsyncIterator[Item[Any]]:
        """The items with ``prefix`` and ``start <= key < end``, in key order, fetched
        ``page_size`` at a time. Pages are read one after another, each a fresh read: the whole
        scan is not one snapshot (use :meth:`read` for that). ``value_type`` as for :meth:`get`,
        checked item by item as they arrive."""
        checked_prefix = _optional_key(prefix, "prefix")
        checked_start = _optional_key(start, "start")
        checked_end = _optional_key(end, "end")
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= SCAN_PAGE_ITEMS_MAX
        ):
            raise ValidationError("page_size", f"must be an integer in 1..{SCAN_PAGE_ITEMS_MAX}")
        if value_type is not None:
            checker(value_type)
        return self._pages(
            _ScanRange(checked_prefix, checked_start, checked_end, page_size, value_type)
        )

    async def _pages(self, scan: _ScanRange) -> AsyncIterator[Item[Any]]:
        cursor: str | None = None
        while True:
            page = await self._call(partial(self._page, scan, cursor))
            for item in page.items:
                yield item if scan.value_type is None else typed_item(item, scan.value_type)
            if page.cursor is None:
                return
            cursor = page.cursor

    async def _page(self, scan: _ScanRange, cursor: str | None, timeout_s: float) -> ScanPage:
        return await self.backend.scan(
            prefix=scan.prefix,
            start=scan.start,
            end=scan.end,
            limit=scan.page_size,
            cursor=cursor,
            timeout_s=timeout_s,
        )

    # --- interactive transactions ---------------------------------------------------------

    def transaction(self) -> Transaction:
        """A new interactive transaction: ``async with kv.transaction() as tx: ...`` commits
        on a normal exit and discards on an exception (see :mod:`kvstore.client.transaction`)."""
        from kvstore.client.transaction import Transaction  # noqa: PLC0415 - a cycle otherwise

        return Transaction(self)

    async def run(
        self,
        fn: Callable[[Transaction], Awaitable[T]],
        *,
        attempts_max: int = SDK_RUN_ATTEMPTS_MAX,
        timeout_s: float | None = None,
    ) -> T:
        """``await fn(tx)`` in a fresh transaction, committed after it returns; when the commit
        (or a read) conflicts, run it again in a new transaction, with backoff, at most
        ``attempts_max`` times within ``timeout_s`` and the retry budget. Returns what ``fn``
        returned. ``fn`` may run more than once: keep side effects out of it.

        Only conflicts (``TransactionConflict``, ``TimestampTooOld``) re-run ``fn``; they do not
        spend the retry budget (contention is not overload; see :mod:`kvstore.client.retry`),
        while the calls inside each run retry their own failures within it. Any other error,
        including ``TransactionCanceled`` for a condition ``fn`` asked for, is raised."""
        attempts = self.attempts(timeout_s, attempts_max)
        while True:
            tx = self.transaction()
            try:
                result = await fn(tx)
                await tx.commit()
                return result
            except KvError as error:
                tx.discard()
                delay_s = self.run_retry_delay_s(attempts, error)
                if delay_s is None:
                    raise
            except BaseException:
                tx.discard()
                raise
            await self._sleep(delay_s)

    @staticmethod
    def run_retry_delay_s(attempts: Attempts, error: KvError) -> float | None:
        """The pause before :meth:`run` tries again after ``error``, or None to raise it."""
        if not _retry_in_run(error):
            return None
        # Conflicts are contention, not a struggling cluster: see kvstore.client.retry.
        return attempts.retry_delay_s(error, spend_budget=False)
