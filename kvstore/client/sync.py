"""The blocking client: the async client driven from a private event loop in a background thread.

Theory of operation
-------------------
Scripts, notebooks and threads that are not async use :class:`SyncClient`
(``kvstore.connect_sync()``): the same calls as :class:`~kvstore.client.client.Client`, each
blocking until its answer. It owns one event loop running in a daemon thread; every call is
submitted to that loop (``asyncio.run_coroutine_threadsafe``) and the caller's thread waits for
the result, so it works from any thread, and from code that already has an event loop running
in its own thread (a notebook): the SDK never runs on the caller's loop.

Everything that touches the client's state (connections, the retry budget) runs on the loop
thread. An interactive :class:`SyncTransaction` records its writes in the caller's thread; its
reads and its commit run on the loop, one call at a time, so the two never overlap. A sync
:meth:`SyncClient.run` calls ``fn(tx)`` in the caller's thread and asks the loop for each retry
decision and pause.

:meth:`SyncClient.close` closes the client on the loop, finishes open scans, stops the loop and
joins the thread (bounded by ``SDK_SYNC_CLOSE_TIMEOUT_MS``).

After ``os.fork()`` the child has the loop but not its thread (a fork copies only the calling
thread): a call would wait forever. So the first call in a new process abandons the inherited
loop, unclosed (:mod:`kvstore.client.forks`), and starts a loop and thread of its own; the async
client under it then drops its inherited connections on that loop and reconnects.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, overload

from kvstore.client.builders import JsonCondition, TxnOp
from kvstore.client.client import Client
from kvstore.client.forks import ProcessOwner, abandon
from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.client.transaction import CommitPlan, Transaction
from kvstore.errors import KvError, Unavailable
from kvstore.limits import SCAN_LIMIT_DEFAULT, SDK_RUN_ATTEMPTS_MAX, SDK_SYNC_CLOSE_TIMEOUT_MS
from kvstore.types import Timestamp, ValueInput

__all__ = ["SyncClient", "SyncTransaction"]

T = TypeVar("T")
V = TypeVar("V")


class SyncClient:
    """Blocking calls over an async :class:`Client` (see the module)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._owner = ProcessOwner()
        self._loop, self._thread = self._start_loop()
        self._closed = False

    @staticmethod
    def _start_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="kvstore-sync-client", daemon=True)
        thread.start()
        return loop, thread

    def _drop_inherited(self) -> None:
        """In a forked child: the loop's thread is gone; run a loop of this process's own."""
        abandon(self._loop, self._thread)
        if not self._closed:
            self._loop, self._thread = self._start_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for its result."""
        self._owner.adopt(self._drop_inherited)
        if self._closed:
            coro.close()
            raise Unavailable("the client is closed", details={"sent": False})
        assert threading.current_thread() is not self._thread, "blocking call on the SDK loop"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Call ``fn()`` on the loop thread (for state only the loop touches)."""

        async def call() -> T:
            return fn()

        return self._wait(call())

    def close(self) -> None:
        """Close the client and stop its thread (idempotent)."""
        self._owner.adopt(self._drop_inherited)
        if self._closed:
            return
        try:
            self._wait(self.client.close())
            self._wait(self._loop.shutdown_asyncgens())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(SDK_SYNC_CLOSE_TIMEOUT_MS / 1000)
            if not self._thread.is_alive():
                self._loop.close()

    # --- calls ----------------------------------------------------------------------------

    @overload
    def get(self, key: str) -> Item | None: ...
    @overload
    def get(self, key: str, value_type: type[V]) -> Item[V] | None: ...
    def get(self, key: str, value_type: type[Any] | None = None) -> Item[Any] | None:
        if value_type is None:
            return self._wait(self.client.get(key))
        return self._wait(self.client.get(key, value_type))

    def put(self, key: str, value: ValueInput, *, if_: JsonCondition | None = None) -> Written:
        return self._wait(self.client.put(key, value, if_=if_))

    def delete(self, key: str, *, if_: JsonCondition | None = None) -> Deleted:
        return self._wait(self.client.delete(key, if_=if_))

    def update(
        self,
        key: str,
        *,
        set: Mapping[str, ValueInput] | None = None,  # the API's member name, hence the builtin's
        remove: Sequence[str] | None = None,
        add: Mapping[str, int | float] | None = None,
        append: Mapping[str, Sequence[ValueInput]] | None = None,
        if_: JsonCondition | None = None,
    ) -> Committed:
        return self._wait(
            self.client.update(key, set=set, remove=remove, add=add, append=append, if_=if_)
        )

    def transact(self, ops: Sequence[TxnOp], *, token: str | None = None) -> Committed:
        return self._wait(self.client.transact(ops, token=token))

    @overload
    def read(
        self, keys: Sequence[str], *, at: Timestamp | str | None = None
    ) -> list[Item | None]: ...
    @overload
    def read(
        self, keys: Sequence[str], value_type: type[V], *, at: Timestamp | str | None = None
    ) -> list[Item[V] | None]: ...
    def read(
        self,
        keys: Sequence[str],
        value_type: type[Any] | None = None,
        *,
        at: Timestamp | str | None = None,
    ) -> list[Item[Any] | None]:
        if value_type is None:
            return self._wait(self.client.read(keys, at=at))
        return self._wait(self.client.read(keys, value_type, at=at))

    def txn_outcome(self, token: str) -> dict[str, object] | None:
        return self._wait(self.client.txn_outcome(token))

    @overload
    def scan(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        page_size: int = SCAN_LIMIT_DEFAULT,
    ) -> Generator[Item, None, None]: ...
    @overload
    def scan(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        page_size: int = SCAN_LIMIT_DEFAULT,
        value_type: type[V],
    ) -> Generator[Item[V], None, None]: ...
    def scan(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        page_size: int = SCAN_LIMIT_DEFAULT,
        value_type: type[Any] | None = None,
    ) -> Generator[Item[Any], None, None]:
        """As :meth:`Client.scan`; arguments are checked now, pages fetched as you iterate."""
        if value_type is None:
            pages = self.client.scan(prefix=prefix, start=start, end=end, page_size=page_size)
        else:
            pages = self.client.scan(
                prefix=prefix, start=start, end=end, page_size=page_size, value_type=value_type
            )
        return self._iterate(pages)

    def _iterate(self, pages: AsyncIterator[Item[Any]]) -> Generator[Item[Any], None, None]:
        async def next_item() -> tuple[bool, Item[Any] | None]:
            try:
                return True, await anext(pages)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._wait(next_item())
                if not more:
                    return
                assert item is not None
                yield item
        finally:
            if isinstance(pages, AsyncGenerator) and not self._closed:
                self._wait(pages.aclose())

    # --- interactive transactions ---------------------------------------------------------

    def transaction(self) -> SyncTransaction:
        """``with kv.transaction() as tx:`` commits on a normal exit, discards on an error."""
        return SyncTransaction(self, self.client.transaction())

    def run(
        self,
        fn: Callable[[SyncTransaction], T],
        *,
        attempts_max: int = SDK_RUN_ATTEMPTS_MAX,
        timeout_s: float | None = None,
    ) -> T:
        """As :meth:`Client.run`, with a blocking ``fn(tx)`` called in this thread."""
        attempts = self._on_loop(lambda: self.client.attempts(timeout_s, attempts_max))
        while True:
            tx = self.transaction()
            try:
                result = fn(tx)
                tx.commit()
                return result
            except KvError as error:
                tx.discard()
                delay_s = self._on_loop(partial(self.client.run_retry_delay_s, attempts, error))
                if delay_s is None:
                    raise
            except BaseException:
                tx.discard()
                raise
            self._wait(self.client.pause(delay_s))


class SyncTransaction:
    """A blocking view of a :class:`~kvstore.client.transaction.Transaction`."""

    def __init__(self, owner: SyncClient, tx: Transaction) -> None:
        self._owner = owner
        self.tx = tx

    def __enter__(self) -> SyncTransaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    @property
    def committed(self) -> Committed | None:
        return self.tx.committed

    @overload
    def get(self, key: str) -> Item | None: ...
    @overload
    def get(self, key: str, value_type: type[V]) -> Item[V] | None: ...
    def get(self, key: str, value_type: type[Any] | None = None) -> Item[Any] | None:
        if value_type is None:
            return self._owner._wait(self.tx.get(key))
        return self._owner._wait(self.tx.get(key, value_type))

    def put(self, key: str, value: ValueInput, *, if_: JsonCondition | None = None) -> None:
        self.tx.put(key, value, if_=if_)

    def delete(self, key: str, *, if_: JsonCondition | None = None) -> None:
        self.tx.delete(key, if_=if_)

    def update(
        self,
        key: str,
        *,
        set: Mapping[str, ValueInput] | None = None,  # the API's member name, hence the builtin's
        remove: Sequence[str] | None = None,
        add: Mapping[str, int | float] | None = None,
        append: Mapping[str, Sequence[ValueInput]] | None = None,
        if_: JsonCondition | None = None,
    ) -> None:
        self.tx.update(key, set=set, remove=remove, add=add, append=append, if_=if_)

    def check(self, key: str, if_: JsonCondition) -> None:
        self.tx.check(key, if_)

    def plan(self) -> CommitPlan:
        return self.tx.plan()

    def discard(self) -> None:
        self.tx.discard()

    def commit(self) -> Committed | None:
        return self._owner._wait(self.tx.commit())
