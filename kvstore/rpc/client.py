"""The client end of the internal RPC: one persistent, multiplexed WebSocket per peer.

Theory of operation
-------------------
An :class:`RpcClient` talks to one peer over at most one WebSocket at a time, opened lazily by
the first call and shared by every concurrent call. Each call gets a fresh call id and a future
in the connection's ``pending`` map; its packed request goes on an outbox that one writer task
drains, coalescing everything queued into one WebSocket message per send. One reader task
decodes reply frames, hands every reply's clock to ``on_clock`` first (the hybrid-clock receive
rule) and then resolves the call's future: the reply body, or the catalogue exception rebuilt
from the error reply. A large frame is resolved in slices, yielding to the loop in between, so
the callers woken first send their next requests before the rest are resolved. At most
``calls_in_flight_max`` calls are outstanding; one more raises ``Overloaded`` at once.

Failure is always a typed error. A call that cannot connect, whose connection is lost, or whose
deadline (``timeout_ms``) passes raises ``Unavailable`` with ``details["sent"]`` telling whether
the request may have reached the peer: ``False`` when it was never written (safe to retry),
``True`` when it was (the outcome is unknown). Losing the connection fails every outstanding
call with ``sent=True`` at once, and the next call reconnects. Deadlines are enforced by one
timer per 5 ms tick that has calls ending in it rather than one timer per call (a timer costs
about as much as the rest of a call), so a call fails at most one tick after its deadline.

Connecting (TCP plus the HTTP upgrade handshake) is bounded by ``RPC_CONNECT_TIMEOUT_MS`` and
shared: concurrent callers wait on the same attempt, each up to its own deadline. A failed
attempt fails the calls waiting on it and starts a backoff: the next attempt is not made before
``uniform(0, cap)`` with ``cap = min(RPC_BACKOFF_MAX_MS, RPC_BACKOFF_BASE_MS * 2**failures)``
(capped exponential backoff with full jitter). A call whose deadline ends before the next
attempt may start fails at once with ``Unavailable(sent=False)``; a later one waits for it. A
successful connect resets the backoff. A refused handshake raises the typed refusal
(``Unauthorized`` for HTTP 401, ``ProtocolViolation`` for 400) rather than ``Unavailable``.

:class:`RpcPool` keeps one client per ``host:port`` over one shared ``aiohttp.ClientSession``.
For chaos runs only (``kvstore.chaos_control``) it takes a ``blocked(address)`` predicate: a call
to a blocked address fails at once with ``Unavailable(sent=False)``, and
:meth:`RpcPool.disconnect` drops the connection to an address that just became blocked, failing
its calls in flight with ``sent=True``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Final, Literal

import aiohttp
from aiohttp import WSMsgType

from kvstore.errors import (
    KvError,
    Overloaded,
    ProtocolViolation,
    Unauthorized,
    Unavailable,
    ValidationError,
    connect_failure_reason,
    error_from_code,
)
from kvstore.limits import (
    RPC_BACKOFF_BASE_MS,
    RPC_BACKOFF_MAX_MS,
    RPC_CALLS_IN_FLIGHT_MAX,
    RPC_CONNECT_TIMEOUT_MS,
    RPC_FAILURE_LOG_INTERVAL_MS,
    RPC_FRAME_BYTES_MAX,
    RPC_PROTOCOL_VERSION,
    RPC_TIMEOUT_MS,
)
from kvstore.logs import RepeatedLog
from kvstore.rpc.frames import (
    CALL_ID_MAX,
    CLOSE_TIMEOUT_MS,
    HEARTBEAT_MS,
    TIMEOUT_MS_MAX,
    ErrorReply,
    Malformed,
    Message,
    OkReply,
    decode_frame,
    encode_request,
    take_frame,
)
from kvstore.types import Timestamp

__all__ = ["ClockSink", "RpcClient", "RpcPool"]

ClockSink = Callable[[Timestamp], None]

_ClientSocket = aiohttp.ClientWebSocketResponse[Literal[False]]
_WS_TIMEOUT: Final = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_MS / 1000)
# Call deadlines are enforced per tick of this length (a call fails less than a tick late): a
# timer per tick in use instead of one per call, which costs more than the rest of a call.
_DEADLINE_TICK_S: Final = 0.005
# Replies of one frame resolved per event-loop step: the callers woken by one slice send their
# next requests before the next slice is resolved, so the peer gets work sooner (see the
# server's DISPATCH_STEP).
_DISPATCH_STEP: Final = 32


def _fresh(error: KvError) -> KvError:
    """A new exception equal to ``error``, so concurrent callers never share one traceback."""
    return error_from_code(error.code, error.message, details=error.details)


class RpcClient:
    """Calls one peer's ``/rpc`` endpoint; see the module docstring."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        on_clock: ClockSink | None = None,
        session: aiohttp.ClientSession | None = None,
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
        calls_in_flight_max: int = RPC_CALLS_IN_FLIGHT_MAX,
    ) -> None:
        self.url = url
        self._headers = {
            "Authorization": f"Bearer {secret}",
            "Kvstore-Protocol": str(RPC_PROTOCOL_VERSION),
        }
        self._on_clock = on_clock
        self._session = session
        self._owns_session = session is None
        self._log = logger if logger is not None else logging.getLogger("kvstore.rpc.client")
        self._rng = rng if rng is not None else random.Random()
        self._calls_in_flight_max = calls_in_flight_max
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._failures = 0
        self._retry_at = 0.0  # event-loop time before which no connect attempt starts
        # Repeated connect failures are logged once, then at most once per
        # RPC_FAILURE_LOG_INTERVAL_MS with the count of attempts not logged since.
        self._failure_log = RepeatedLog(self._log, interval_ms=RPC_FAILURE_LOG_INTERVAL_MS)
        self._next_id = 1
        self._in_flight = 0
        self._closed = False
        # Deadlines, by tick: one timer per tick with calls ending in it, not one per call.
        self._deadlines: dict[int, tuple[asyncio.TimerHandle, list[int]]] = {}

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def calls_in_flight(self) -> int:
        return self._in_flight

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- calls -------------------------------------------------------------------------------

    async def call(self, method: str, body: object, timeout_ms: int = RPC_TIMEOUT_MS) -> object:
        """The peer's reply body for ``method(body)``; raises the catalogue error otherwise."""
        if self._closed:
            raise Unavailable("the RPC client is closed", details={"sent": False})
        if type(timeout_ms) is not int or not 0 < timeout_ms <= TIMEOUT_MS_MAX:
            raise ValidationError("timeout_ms", f"must be an integer in 1..{TIMEOUT_MS_MAX}")
        if self._in_flight >= self._calls_in_flight_max:
            raise Overloaded(
                f"more than {self._calls_in_flight_max} calls in flight to one peer",
                details={"sent": False},
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        self._in_flight += 1
        try:
            conn = self._conn
            if conn is None:
                conn = await self._connected(loop, deadline)
            future, call_id = self._send(conn, loop, deadline, method, body)
            try:
                return await future
            finally:
                conn.pending.pop(call_id, None)
        finally:
            self._in_flight -= 1

    def start(
        self, method: str, body: object, timeout_ms: int = RPC_TIMEOUT_MS
    ) -> asyncio.Future[object] | None:
        """:meth:`call` without a coroutine, for callers that take a callback: the future of the
        reply body (or of the catalogue error), or None when there is no open connection or no
        room (the caller then uses :meth:`call`, which connects, backs off and refuses)."""
        conn = self._conn
        if (
            conn is None
            or conn.closed
            or self._closed
            or self._in_flight >= self._calls_in_flight_max
            or type(timeout_ms) is not int
            or not 0 < timeout_ms <= TIMEOUT_MS_MAX
        ):
            return None
        loop = asyncio.get_running_loop()
        future, call_id = self._send(conn, loop, loop.time() + timeout_ms / 1000, method, body)
        self._in_flight += 1

        def ended(_: asyncio.Future[object]) -> None:
            self._in_flight -= 1
            conn.pending.pop(call_id, None)

        future.add_done_callback(ended)
        return future

    def _send(
        self,
        conn: _Connection,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        method: str,
        body: object,
    ) -> tuple[asyncio.Future[object], int]:
        """Queue one request on ``conn``; its future is failed by the deadline tick."""
        call_id = self._next_id
        self._next_id = call_id + 1 if call_id < CALL_ID_MAX else 1
        remaining_ms = int((deadline - loop.time()) * 1000)
        if remaining_ms <= 0:
            raise Unavailable(
                "the call's deadline passed while connecting", details={"sent": False}
            )
        data = encode_request(call_id, method, body, remaining_ms)
        if conn.closed:
            raise Unavailable("the connection was lost", details={"sent": False})
        future: asyncio.Future[object] = loop.create_future()
        conn.pending[call_id] = future
        conn.outbox.append(data)
        conn.wake.set()
        tick = int(deadline / _DEADLINE_TICK_S) + 1  # the first tick after the deadline
        expiring = self._deadlines.get(tick)
        if expiring is None:
            timer = loop.call_at(tick * _DEADLINE_TICK_S, self._expire, tick)
            expiring = self._deadlines[tick] = (timer, [])
        expiring[1].append(call_id)
        return future, call_id

    # --- connecting ------------------------------------------------------------------------

    async def _connected(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        if deadline <= self._retry_at:
            raise Unavailable(
                "unreachable; backing off before the next connect attempt",
                details={"sent": False},
            )
        task = self._connecting
        if task is None:
            task = loop.create_task(self._open(self._retry_at))
            task.add_done_callback(self._connect_done)
            self._connecting = task
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            raise Unavailable(
                "could not connect before the call's deadline",
                details={"sent": False},
            )
        if task.cancelled():  # closed, or the attempt was dropped (disconnect)
            why = "the RPC client is closed" if self._closed else "the connect attempt was dropped"
            raise Unavailable(why, details={"sent": False})
        error = task.exception()
        if error is not None:
            raise _fresh(error) if isinstance(error, KvError) else error
        conn = task.result()
        if conn.closed:
            raise Unavailable("the connection was lost", details={"sent": False})
        return conn

    def _expire(self, tick: int) -> None:
        """Fail the calls whose deadline fell in ``tick`` and are still waiting."""
        _, call_ids = self._deadlines.pop(tick)
        conn = self._conn
        if conn is None:  # lost: its calls have failed already
            return
        pending = conn.pending
        for call_id in call_ids:
            future = pending.get(call_id)
            if future is not None and not future.done():
                future.set_exception(
                    Unavailable("no reply before the call's deadline", details={"sent": True})
                )

    def _connect_done(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here so an attempt nobody waited for logs nothing

    def _log_failure(self, why: str) -> None:
        """Log a failed connect attempt: the first of a run of failures, then one line per
        ``RPC_FAILURE_LOG_INTERVAL_MS`` (a peer that stays down is not a line per backoff)."""
        self._failure_log.log(
            "connect", logging.WARNING, "rpc: cannot connect to %s: %s", self.url, why
        )

    def _note_failure(self, loop: asyncio.AbstractEventLoop) -> None:
        cap_ms = min(RPC_BACKOFF_MAX_MS, RPC_BACKOFF_BASE_MS * (1 << min(self._failures, 32)))
        self._retry_at = loop.time() + self._rng.uniform(0, cap_ms) / 1000
        self._failures += 1

    async def _open(self, start_at: float) -> _Connection:
        loop = asyncio.get_running_loop()
        delay = start_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            async with asyncio.timeout(RPC_CONNECT_TIMEOUT_MS / 1000):
                ws: _ClientSocket = await self._session.ws_connect(
                    self.url,
                    headers=self._headers,
                    timeout=_WS_TIMEOUT,
                    heartbeat=HEARTBEAT_MS / 1000,
                    compress=0,
                    max_msg_size=RPC_FRAME_BYTES_MAX,
                    decode_text=False,
                )
        except aiohttp.WSServerHandshakeError as exc:
            self._note_failure(loop)
            self._log_failure(f"refused the handshake: HTTP {exc.status}")
            if exc.status == 401:
                raise Unauthorized("the peer refused the cluster secret") from None
            if exc.status == 400:
                raise ProtocolViolation(
                    f"the peer refused the handshake (protocol version {RPC_PROTOCOL_VERSION})"
                ) from None
            raise Unavailable(
                f"the peer refused the connection: HTTP {exc.status}", details={"sent": False}
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
            # RuntimeError: aiohttp's answer when a shared session was closed under us.
            self._note_failure(loop)
            closed = isinstance(exc, RuntimeError)
            why = "the client session was closed" if closed else connect_failure_reason(exc)
            self._log_failure(why)
            raise Unavailable(f"cannot connect: {why}", details={"sent": False}) from None
        if self._failures:  # the first failure was logged: say that it is over
            self._log.info(
                "rpc: reconnected to %s after %d failed attempts", self.url, self._failures
            )
        self._failure_log.reset("connect")
        self._failures = 0
        self._retry_at = 0.0
        if self._closed:
            await ws.close()
            raise Unavailable("the RPC client is closed", details={"sent": False})
        conn = _Connection(self, ws)
        self._conn = conn
        return conn

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    # --- replies ---------------------------------------------------------------------------

    def _observe(self, clock: Timestamp) -> KvError | None:
        """Pass a reply's clock to ``on_clock``; a KvError it raises fails that call."""
        if self._on_clock is None:
            return None
        try:
            self._on_clock(clock)
        except KvError as exc:
            return exc
        except Exception:
            self._log.exception("rpc: on_clock failed")
        return None

    # --- shutdown ----------------------------------------------------------------------------

    async def disconnect(self, why: str) -> None:
        """Drop the connection (and a connect attempt) but stay usable: outstanding calls fail
        with ``sent=True`` (those waiting for the attempt with ``sent=False``); the next call
        connects again."""
        task = self._connecting
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        conn = self._conn
        if conn is not None:
            await conn.close(why)

    async def close(self) -> None:
        """Fail outstanding calls, close the connection and its tasks (and an owned session)."""
        self._closed = True
        for timer, _ in self._deadlines.values():
            timer.cancel()
        self._deadlines.clear()
        task = self._connecting
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        conn = self._conn
        if conn is not None:
            await conn.close("the RPC client was closed")
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()


class _Connection:
    """One open WebSocket of a client: its pending calls, outbox, reader and writer tasks."""

    def __init__(self, client: RpcClient, ws: _ClientSocket) -> None:
        loop = asyncio.get_running_loop()
        self.client = client
        self.ws = ws
        self.loop = loop
        self.pending: dict[int, asyncio.Future[object]] = {}
        self.outbox: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.reader = loop.create_task(self._read_loop())
        self.writer = loop.create_task(self._write_loop())

    def lost(self, why: str) -> None:
        """Mark the connection dead and fail every outstanding call (``sent=True``)."""
        if self.closed:
            return
        self.closed = True
        self.client._lost(self)
        self.outbox.clear()
        self.wake.set()
        pending, self.pending = self.pending, {}
        message = f"the connection was lost: {why}"
        for future in pending.values():
            if not future.done():
                future.set_exception(Unavailable(message, details={"sent": True}))

    async def close(self, why: str) -> None:
        self.lost(why)
        await self.ws.close()
        tasks = {self.reader, self.writer}
        _, still = await asyncio.wait(tasks, timeout=2 * CLOSE_TIMEOUT_MS / 1000)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)

    def _on_replies(self, messages: list[Message]) -> None:
        client = self.client
        pending = self.pending
        for message in messages:
            if type(message) is OkReply:
                refused = client._observe(message.clock)
                future = pending.pop(message.call_id, None)
                if future is not None and not future.done():
                    if refused is None:
                        future.set_result(message.body)
                    else:
                        future.set_exception(_fresh(refused))
            elif type(message) is ErrorReply:
                refused = client._observe(message.clock)
                future = pending.pop(message.call_id, None)
                if future is not None and not future.done():
                    future.set_exception(message.error if refused is None else _fresh(refused))
                elif message.call_id == 0:
                    client._log.warning(
                        "rpc: %s refused a message: %s", client.url, message.error.message
                    )
            else:
                error = (
                    message.error
                    if type(message) is Malformed
                    else ProtocolViolation("a client takes replies, not requests")
                )
                client._log.warning("rpc: from %s: %s", client.url, error.message)
                future = pending.pop(message.call_id, None) if message.call_id else None
                if future is not None and not future.done():
                    future.set_exception(error)

    async def _read_loop(self) -> None:
        ws = self.ws
        why = "closed by the peer"
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is WSMsgType.BINARY:
                    messages = decode_frame(msg.data)  # ProtocolViolation ends the connection
                    if len(messages) <= _DISPATCH_STEP:
                        self._on_replies(messages)
                    else:
                        for start in range(0, len(messages), _DISPATCH_STEP):
                            self._on_replies(messages[start : start + _DISPATCH_STEP])
                            await asyncio.sleep(0)
                elif kind is WSMsgType.TEXT:
                    self.client._log.warning("rpc: %s sent a text frame", self.client.url)
                elif kind is WSMsgType.ERROR:
                    why = f"error: {type(msg.data).__name__}"
                    self.client._log.info("rpc: %s: %r", self.client.url, msg.data)
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    if ws.close_code is not None:
                        why = f"closed by the peer ({ws.close_code})"
                    break
        except ProtocolViolation as exc:
            why = exc.message
            self.client._log.error("rpc: %s: %s", self.client.url, why)
        except asyncio.CancelledError:
            why = "cancelled"
            raise
        finally:
            if not self.closed:
                self.client._log.info("rpc: connection to %s ended: %s", self.client.url, why)
                self.lost(why)
            await ws.close()

    async def _write_loop(self) -> None:
        ws = self.ws
        outbox = self.outbox
        wake = self.wake
        try:
            while not self.closed:
                if outbox:
                    await ws.send_bytes(take_frame(outbox))
                else:
                    wake.clear()
                    await wake.wait()
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            self.client._log.info("rpc: writing to %s failed: %r", self.client.url, exc)
            self.lost(f"write failed ({type(exc).__name__})")
            await ws.close()


class RpcPool:
    """One :class:`RpcClient` per peer address, all sharing one ``aiohttp.ClientSession``."""

    def __init__(
        self,
        secret: str,
        *,
        on_clock: ClockSink | None = None,
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
        blocked: Callable[[str], bool] | None = None,
    ) -> None:
        """``blocked(address)`` (the chaos control's, tests only) refuses calls to ``address``."""
        self._secret = secret
        self._on_clock = on_clock
        self._log = logger
        self._blocked = blocked
        self._rng = rng if rng is not None else random.Random()
        self._clients: dict[str, RpcClient] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def client(self, address: str) -> RpcClient:
        """The client for ``host:port``; call from within the event loop."""
        if self._blocked is not None and self._blocked(address):
            raise Unavailable("the peer is cut off (chaos control)", details={"sent": False})
        found = self._clients.get(address)
        if found is not None:
            return found
        if self._closed:
            raise Unavailable("the RPC pool is closed", details={"sent": False})
        host, sep, port = address.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()):
            raise ValidationError("address", f"must be host:port, got {address!r}")
        if not 0 < int(port) < 65536:
            raise ValidationError("address", f"port out of range in {address!r}")
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        client = RpcClient(
            f"ws://{address}/rpc",
            self._secret,
            on_clock=self._on_clock,
            session=self._session,
            logger=self._log,
            rng=self._rng,
        )
        self._clients[address] = client
        return client

    async def disconnect(self, address: str) -> None:
        """Drop the connection to ``address``, if any: its calls in flight fail (``sent=True``)."""
        client = self._clients.get(address)
        if client is not None:
            await client.disconnect("the peer was cut off (chaos control)")

    async def close(self) -> None:
        """Close every client, then the shared session."""
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(client.close() for client in clients))
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
