"""The server end of the internal RPC: one WebSocket per peer, many pipelined calls on each.

Theory of operation
-------------------
:meth:`RpcServer.handle` is an aiohttp handler for ``GET /rpc``. The HTTP upgrade request is the
handshake: header ``Kvstore-Protocol`` must name :data:`~kvstore.limits.RPC_PROTOCOL_VERSION`
(else HTTP 400 with a ``ProtocolViolation`` JSON error) and ``Authorization: Bearer <secret>``
must match the cluster secret, compared in constant time (else HTTP 401 with ``Unauthorized``).
Every refusal is logged with the peer's address (never the presented secret) and reported
through ``on_event``. Lines that bad input can repeat (refusals, malformed and oversize frames,
failed connections, handler bugs) go through one :class:`~kvstore.logs.RepeatedLog` per server:
the first of each kind is logged, then at most one per ``LOG_REPEAT_INTERVAL_MS`` with the count
of those not logged; ``on_event`` (the metrics) still counts every one.

An accepted connection is a WebSocket whose incoming messages are size-capped by aiohttp
(``RPC_FRAME_BYTES_MAX``; an oversize message closes the connection with 1009 before any
decoding). The connection's task reads frames and runs each request through the handler
synchronously, in one pass over the frame, with no task per request: the handler is called as
``handler(method, body, timeout_ms, respond)`` and calls ``respond`` (now, or later: a storage
node answers after the group commit its writes need) with the reply body or a typed error.
Replies may therefore leave in any order. A large frame is run in slices of ``DISPATCH_STEP``
requests, yielding to the loop in between, so the first replies leave while later requests are
still being run (both ends of a busy connection then work at once). An ``async`` handler is
wrapped by :class:`AsyncHandler`, which runs each call as a task (tests and tools).

At most ``calls_in_flight_max`` calls run per connection (replies still queued for sending count
too); a request beyond that is answered ``Overloaded`` at once, without running. The handler's
reply body becomes an ok reply; a :class:`~kvstore.errors.KvError` (given to ``respond`` or
raised) becomes an error reply with its code; any other exception (or a reply body msgpack
cannot encode) is a bug: it is logged with its traceback and answered ``InternalError``, and the
connection keeps serving. ``respond`` acts once; later calls are ignored. A malformed
message is answered ``ProtocolViolation`` (with its call id when readable, else 0) and the rest
of its frame and connection are served; so are text frames.

Replies are packed when the handler responds and queued; one writer task per
connection drains the queue and coalesces everything queued into one WebSocket message per send
(:func:`~kvstore.rpc.frames.take_frame`). A peer that stops reading its replies makes that queue
grow; past ``OUTBOX_MESSAGES_MAX`` the connection is closed. Every reply carries the server's
hybrid clock reading taken when it is queued.

:meth:`RpcServer.close` is graceful: it refuses new connections and new requests (``Unavailable``,
with ``sent=False`` since nothing ran), lets running calls finish and their replies go out for up
to ``grace_ms``, closes every connection (1001, going away) and cancels what is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Literal

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from kvstore.errors import (
    InternalError,
    KvError,
    Overloaded,
    ProtocolViolation,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from kvstore.limits import (
    RPC_FRAME_BYTES_MAX,
    RPC_PROTOCOL_VERSION,
    RPC_SERVER_CALLS_IN_FLIGHT_MAX,
)
from kvstore.logs import RepeatedLog
from kvstore.rpc.frames import (
    CLOSE_TIMEOUT_MS,
    HEARTBEAT_MS,
    ErrorReply,
    Malformed,
    Message,
    OkReply,
    Request,
    decode_frame,
    encode_error,
    encode_ok,
    take_frame,
)
from kvstore.types import Timestamp

__all__ = [
    "Handler",
    "Respond",
    "AsyncHandler",
    "EventSink",
    "RpcServer",
    "SHUTDOWN_GRACE_MS",
    "OUTBOX_MESSAGES_MAX",
    "DISPATCH_STEP",
]

Respond = Callable[[object], None]
"""A call's outcome: the reply body, or a :class:`~kvstore.errors.KvError`."""
Handler = Callable[[str, object, int, Respond], None]
EventSink = Callable[[str], None]

# Server-side limits of this module (not in kvstore.limits: nothing else enforces them).
SHUTDOWN_GRACE_MS: Final = 2_000  # close() lets running calls finish for this long.
OUTBOX_MESSAGES_MAX: Final = 2 * RPC_SERVER_CALLS_IN_FLIGHT_MAX  # queued replies; beyond: close.
# Requests of one frame started per event-loop step. The reader yields between slices so the
# first replies are written while later requests are still being started: the two ends of a busy
# connection then work at the same time instead of in turns (about 2x the calls/s of one
# connection on two cores).
DISPATCH_STEP: Final = 32

_PROTOCOL_HEADER: Final = "Kvstore-Protocol"
_BEARER: Final = "Bearer "

_ServerSocket = web.WebSocketResponse[Literal[False]]


def _version_ok(header: str | None) -> bool:
    if header is None or not (header.isascii() and header.isdigit()) or len(header) > 9:
        return False
    return int(header) == RPC_PROTOCOL_VERSION


class RpcServer:
    """Serves internal RPC calls with ``handler(method, body, timeout_ms) -> reply body``."""

    def __init__(
        self,
        handler: Handler,
        *,
        secret: str,
        clock: Callable[[], Timestamp],
        on_event: EventSink | None = None,
        logger: logging.Logger | None = None,
        calls_in_flight_max: int = RPC_SERVER_CALLS_IN_FLIGHT_MAX,
    ) -> None:
        if not secret:
            raise ValueError("the RPC secret must not be empty")
        self._handler = handler
        self._secret = secret.encode("utf-8")
        self._clock = clock
        self._on_event = on_event
        self._log = logger if logger is not None else logging.getLogger("kvstore.rpc.server")
        self._repeated = RepeatedLog(self._log)  # lines bad input can repeat: rate-limited
        self._calls_in_flight_max = calls_in_flight_max
        self._connections: set[_Connection] = set()
        self._calls = 0  # handler calls not yet responded to
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    # --- wiring --------------------------------------------------------------------------

    def install(self, app: web.Application, path: str = "/rpc") -> None:
        """Mount :meth:`handle` at ``GET path`` and close connections when ``app`` shuts down."""
        app.router.add_get(path, self.handle)

        async def on_shutdown(_: web.Application) -> None:
            await self.close()

        app.on_shutdown.append(on_shutdown)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def calls_in_flight(self) -> int:
        return self._calls

    def event(self, name: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(name)
        except Exception:
            self._log.exception("rpc: on_event(%r) failed", name)

    # --- the handshake ---------------------------------------------------------------------

    def _refuse(
        self, request: web.Request, status: int, error: KvError, event: str
    ) -> web.Response:
        self.event(event)
        self._repeated.log(
            event,
            logging.WARNING,
            "rpc: refused connection from %s: %s (HTTP %d)",
            request.remote,
            error.message,
            status,
        )
        return web.json_response({"error": error.to_json()}, status=status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The ``GET /rpc`` handler: check the handshake, then serve the connection."""
        if not _version_ok(request.headers.get(_PROTOCOL_HEADER)):
            refusal: KvError = ProtocolViolation(
                f"header {_PROTOCOL_HEADER} must be {RPC_PROTOCOL_VERSION}",
                details={"supported_version": RPC_PROTOCOL_VERSION},
            )
            return self._refuse(request, 400, refusal, "refused_version")
        authorization = request.headers.get("Authorization", "")
        presented = authorization[len(_BEARER) :] if authorization.startswith(_BEARER) else ""
        if not presented or not hmac.compare_digest(
            presented.encode("utf-8", "surrogateescape"), self._secret
        ):
            refusal = Unauthorized("missing or wrong cluster secret")
            return self._refuse(request, 401, refusal, "refused_secret")
        if self._closing:
            refusal = Unavailable("the server is shutting down", details={"sent": False})
            return self._refuse(request, 503, refusal, "refused_closing")
        ws: _ServerSocket = web.WebSocketResponse(
            timeout=CLOSE_TIMEOUT_MS / 1000,
            heartbeat=HEARTBEAT_MS / 1000,
            compress=False,
            max_msg_size=RPC_FRAME_BYTES_MAX,
            decode_text=False,
        )
        if not ws.can_prepare(request).ok:
            refusal = ProtocolViolation("the RPC endpoint takes WebSocket upgrades only")
            return self._refuse(request, 400, refusal, "refused_upgrade")
        await ws.prepare(request)
        if self._closing:  # close() ran while the upgrade was under way
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
            return ws
        connection = _Connection(self, ws, str(request.remote))
        self._connections.add(connection)
        self.event("connection_opened")
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self.event("connection_closed")
        return ws

    # --- calls -------------------------------------------------------------------------------

    def _run_call(self, connection: _Connection, request: Request) -> None:
        """Run one request through the handler; its reply is queued when it responds."""
        call_id, method = request.call_id, request.method
        connection.running += 1
        self._calls += 1
        self._idle.clear()
        answered = False

        def respond(outcome: object) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            connection.running -= 1
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()
            if outcome is _BUG:
                data = self._internal_error(call_id, method)
            elif isinstance(outcome, KvError):
                data = self._encode_error(call_id, outcome, method)
            else:
                try:
                    data = encode_ok(call_id, outcome, self._clock())
                except TooLarge as exc:  # a reply too large for one frame: the caller's problem
                    data = self._encode_error(call_id, exc, method)
                except KvError:  # a body msgpack cannot encode: the handler's bug
                    self._log.exception("rpc: reply of %r cannot be encoded", method)
                    data = self._internal_error(call_id, method)
            connection.send(data)

        try:
            self._handler(method, request.body, request.timeout_ms, respond)
        except KvError as exc:
            respond(exc)
        except Exception:
            self._repeated.log(
                "handler_failed",
                logging.ERROR,
                "rpc: handler for %r from %s failed",
                method,
                connection.peer,
                exc_info=True,
            )
            respond(_BUG)

    def _internal_error(self, call_id: int, method: str) -> bytes:
        self.event("internal_error")
        error = InternalError(f"internal error in {method!r}; see the server log")
        return encode_error(call_id, error, self._clock())

    def _encode_error(self, call_id: int, error: KvError, method: str) -> bytes:
        try:
            return encode_error(call_id, error, self._clock())
        except KvError:
            self._log.exception("rpc: error reply of %r cannot be encoded", method)
            return self._internal_error(call_id, method)

    # --- shutdown ----------------------------------------------------------------------------

    async def close(self, grace_ms: int = SHUTDOWN_GRACE_MS) -> None:
        """Refuse new work, let running calls finish for ``grace_ms``, close every connection."""
        self._closing = True
        if self._calls:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_ms / 1000):
                    await self._idle.wait()
        for connection in list(self._connections):
            connection.flush_then_close()
        if isinstance(self._handler, AsyncHandler):
            await self._handler.close()
        pending = {connection.finished for connection in self._connections}
        if pending:
            await asyncio.wait(pending, timeout=2 * CLOSE_TIMEOUT_MS / 1000)


class AsyncHandler:
    """An ``async`` handler ``(method, body, timeout_ms) -> reply body`` as a :data:`Handler`:
    each call runs as a task; :meth:`close` cancels those still running."""

    def __init__(self, handler: Callable[[str, object, int], Awaitable[object]]) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, method: str, body: object, timeout_ms: int, respond: Respond) -> None:
        task = asyncio.get_running_loop().create_task(self._run(method, body, timeout_ms, respond))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, method: str, body: object, timeout_ms: int, respond: Respond) -> None:
        try:
            outcome = await self._handler(method, body, timeout_ms)
        except KvError as exc:
            respond(exc)
        except Exception:
            logging.getLogger("kvstore.rpc.server").exception("rpc: handler for %r failed", method)
            respond(_BUG)
        else:
            respond(outcome)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_BUG: Final = object()  # the handler failed with a bug: answered InternalError


class _Connection:
    """One accepted WebSocket: its reader (the aiohttp handler task) and its writer task."""

    def __init__(self, server: RpcServer, ws: _ServerSocket, peer: str) -> None:
        self.server = server
        self.ws = ws
        self.peer = peer
        self.outbox: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.running = 0
        self.closed = False
        self.close_after_flush = False
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self.loop.create_future()

    def send(self, data: bytes) -> None:
        """Queue one packed reply for the writer."""
        if self.closed:
            return
        if len(self.outbox) >= OUTBOX_MESSAGES_MAX:
            self.server._repeated.log(
                "not_reading",
                logging.WARNING,
                "rpc: %s is not reading its replies; closing",
                self.peer,
            )
            self.server.event("overloaded")
            self._abandon()
            return
        self.outbox.append(data)
        self.wake.set()

    def send_error(self, call_id: int, error: KvError) -> None:
        self.send(encode_error(call_id, error, self.server._clock()))

    def flush_then_close(self) -> None:
        """Ask the writer to send what is queued, then close with 1001 (going away)."""
        self.close_after_flush = True
        self.wake.set()

    def _abandon(self) -> None:
        self.closed = True
        self.outbox.clear()
        self.wake.set()

    async def run(self) -> None:
        writer = asyncio.get_running_loop().create_task(self._write_loop())
        try:
            await self._read_loop()
        finally:
            # The writer sees ``closed``, drops what is queued and closes the socket (bounded by
            # the close timeout); it is cancelled only if this task is cancelled meanwhile.
            self._abandon()
            try:
                await writer
            except asyncio.CancelledError:
                writer.cancel()
                raise
            except Exception:
                self.server._log.exception("rpc: writer for %s failed", self.peer)
                await self.ws.close(code=WSCloseCode.INTERNAL_ERROR)
            finally:
                if not self.finished.done():
                    self.finished.set_result(None)

    async def _read_loop(self) -> None:
        ws = self.ws
        server = self.server
        cap = server._calls_in_flight_max
        while not self.closed:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.BINARY:
                try:
                    messages = decode_frame(msg.data)
                except ProtocolViolation as exc:
                    server.event("malformed_frame")
                    server._repeated.log(
                        "malformed_frame",
                        logging.WARNING,
                        "rpc: malformed frame from %s: %s",
                        self.peer,
                        exc.message,
                    )
                    self.send_error(0, exc)
                    continue
                if len(messages) <= DISPATCH_STEP:
                    self._dispatch(messages, cap)
                else:
                    for start in range(0, len(messages), DISPATCH_STEP):
                        if self.closed:
                            return
                        self._dispatch(messages[start : start + DISPATCH_STEP], cap)
                        await asyncio.sleep(0)
            elif kind is WSMsgType.TEXT:
                server.event("malformed_frame")
                self.send_error(0, ProtocolViolation("text frames are not part of the protocol"))
            elif kind is WSMsgType.ERROR:
                data = msg.data
                if isinstance(data, WebSocketError) and data.code == WSCloseCode.MESSAGE_TOO_BIG:
                    server.event("oversize_frame")
                    server._repeated.log(
                        "oversize_frame",
                        logging.WARNING,
                        "rpc: oversize frame from %s: %s",
                        self.peer,
                        data,
                    )
                else:
                    server._repeated.log(
                        "connection_failed",
                        logging.INFO,
                        "rpc: connection from %s failed: %r",
                        self.peer,
                        data,
                    )
                return
            else:  # CLOSE, CLOSING, CLOSED
                return

    def _dispatch(self, messages: list[Message], cap: int) -> None:
        server = self.server
        for message in messages:
            if type(message) is Request:
                if server._closing:
                    self.send_error(
                        message.call_id,
                        Unavailable("the server is shutting down", details={"sent": False}),
                    )
                elif self.running + len(self.outbox) >= cap:
                    server.event("overloaded")
                    self.send_error(
                        message.call_id,
                        Overloaded(f"more than {cap} calls in flight on this connection"),
                    )
                else:
                    server._run_call(self, message)
            elif type(message) is Malformed:
                server.event("malformed_frame")
                server._repeated.log(
                    "malformed_message",
                    logging.WARNING,
                    "rpc: from %s: %s",
                    self.peer,
                    message.error.message,
                )
                self.send_error(message.call_id, message.error)
            else:
                assert isinstance(message, OkReply | ErrorReply)
                server.event("malformed_frame")
                self.send_error(
                    message.call_id, ProtocolViolation("a server takes requests, not replies")
                )

    async def _write_loop(self) -> None:
        ws = self.ws
        outbox = self.outbox
        wake = self.wake
        try:
            while True:
                if outbox:
                    await ws.send_bytes(take_frame(outbox))
                elif self.closed:
                    break
                elif self.close_after_flush:
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                    break
                else:
                    wake.clear()
                    await wake.wait()
        except (ConnectionError, RuntimeError) as exc:
            self.server._repeated.log(
                "write_failed", logging.INFO, "rpc: cannot write to %s: %r", self.peer, exc
            )
        self.closed = True
        outbox.clear()
        if not ws.closed:
            await ws.close(code=WSCloseCode.GOING_AWAY)
