"""The RPC transport end to end: real aiohttp servers on 127.0.0.1, real WebSocket clients.

Every test is bounded twice: by pytest-timeout and by ``asyncio.timeout`` around its waits.
Synchronisation is by events and futures only; the few real-time waits are deadlines under test.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from support.cluster import refusing_port

import kvstore.rpc.server as rpc_server
from kvstore.errors import (
    ConditionFailed,
    InternalError,
    KvError,
    Overloaded,
    ProtocolViolation,
    TooLarge,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from kvstore.limits import (
    RPC_BACKOFF_BASE_MS,
    RPC_BACKOFF_MAX_MS,
    RPC_FRAME_BYTES_MAX,
    RPC_PROTOCOL_VERSION,
)
from kvstore.rpc import AsyncHandler, RpcClient, RpcPool, RpcServer
from kvstore.rpc.frames import (
    FRAME_COALESCE_BYTES_MAX,
    MESSAGE_BYTES_MAX,
    ErrorReply,
    Message,
    OkReply,
    decode_frame,
    encode_frame,
    encode_request,
)
from kvstore.types import Timestamp

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-test-secret"
AUTH = {"Authorization": f"Bearer {SECRET}", "Kvstore-Protocol": str(RPC_PROTOCOL_VERSION)}
WAIT_S = 10.0  # bound on every wait for something that should happen promptly
LONG_DEADLINE_MS = 60_000  # a call deadline far past WAIT_S: a call that waits it out trips WAIT_S
FIRST_BACKOFF_S = 2.0  # a stretched first reconnect delay (see the backoff test)

Handler = Callable[[str, object, int], Awaitable[object]]


class Clock:
    """The responder's clock: a new, increasing timestamp per reading."""

    def __init__(self) -> None:
        self.readings: list[Timestamp] = []

    def __call__(self) -> Timestamp:
        reading = Timestamp(1_700_000_000_000_000 + len(self.readings), 0, 0xC10C)
        self.readings.append(reading)
        return reading


@dataclass
class Served:
    server: RpcServer
    port: int
    clock: Clock
    events: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rpc"


@asynccontextmanager
async def serving(
    handler: Handler, *, port: int = 0, secret: str = SECRET, **options: Any
) -> AsyncIterator[Served]:
    clock = Clock()
    events: list[str] = []
    server = RpcServer(
        AsyncHandler(handler), secret=secret, clock=clock, on_event=events.append, **options
    )
    app = web.Application()
    server.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        yield Served(server, runner.addresses[0][1], clock, events)
    finally:
        await server.close(grace_ms=100)
        await runner.cleanup()


@asynccontextmanager
async def raw_socket(
    url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=AUTH if headers is None else headers, max_msg_size=0) as ws,
    ):
        yield ws


async def receive(ws: aiohttp.ClientWebSocketResponse) -> list[Message]:
    msg = await ws.receive(timeout=WAIT_S)
    assert msg.type is WSMsgType.BINARY, msg
    return decode_frame(msg.data)


async def echo(method: str, body: object, timeout_ms: int) -> object:
    if method == "echo":
        return body
    if method == "fail":
        raise ConditionFailed("the condition did not hold", details={"current": body})
    if method == "invalid":
        raise ValidationError("key", "is too long")
    if method == "bug":
        raise RuntimeError("a bug in the handler")
    if method == "unencodable":
        return {1, 2, 3}
    if method == "timeout":
        return timeout_ms
    raise ValidationError("method", f"unknown method {method}")


class Gate:
    """A handler whose calls block until released, counting the calls that started."""

    def __init__(self, expected: int = 1) -> None:
        self.expected = expected
        self.started: list[object] = []
        self.all_started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, method: str, body: object, timeout_ms: int) -> object:
        if method != "wait":
            return await echo(method, body, timeout_ms)
        self.started.append(body)
        if len(self.started) >= self.expected:
            self.all_started.set()
        await self.release.wait()
        return body


# --- calls --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_round_trip_delivers_the_body_and_the_responders_clock() -> None:
    body = {"key": "k", "value": [1, 2.5, None, True, b"\x00\xff", {"x": "y"}]}
    clocks: list[Timestamp] = []
    async with (
        serving(echo) as served,
        RpcClient(served.url, SECRET, on_clock=clocks.append) as client,
    ):
        async with asyncio.timeout(WAIT_S):
            assert await client.call("echo", body) == body
            # The handler gets what is left of the caller's deadline: positive, at most what the
            # caller gave (how much the trip took is no part of the contract).
            remaining = await client.call("timeout", None, timeout_ms=5_000)
            assert isinstance(remaining, int) and 0 < remaining <= 5_000
        assert clocks == served.clock.readings
        assert len(clocks) == 2
    assert served.events.count("connection_opened") == 1


@pytest.mark.asyncio
async def test_a_thousand_concurrent_calls_share_one_connection() -> None:
    async with serving(echo) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            bodies = [{"i": i, "pad": "x" * (i % 50)} for i in range(1000)]
            results = await asyncio.gather(*(client.call("echo", b) for b in bodies))
        assert results == bodies
        assert served.events.count("connection_opened") == 1


@pytest.mark.asyncio
async def test_pipelined_requests_in_one_frame_get_replies_with_matching_ids() -> None:
    async with serving(echo) as served, raw_socket(served.url) as ws:
        ids = random.Random(7).sample(range(1, 1 << 63), 1000)
        await ws.send_bytes(encode_frame([encode_request(i, "echo", i, 1000) for i in ids]))
        replies: dict[int, object] = {}
        frames = 0
        async with asyncio.timeout(WAIT_S):
            while len(replies) < len(ids):
                for message in await receive(ws):
                    assert isinstance(message, OkReply)
                    assert message.call_id not in replies
                    replies[message.call_id] = message.body
                frames += 1
        assert replies == {i: i for i in ids}
        assert frames < len(ids)  # replies were coalesced


@pytest.mark.asyncio
async def test_replies_go_out_of_order() -> None:
    gate = Gate()
    async with serving(gate) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            slow = asyncio.create_task(client.call("wait", "slow"))
            await gate.all_started.wait()
            assert await client.call("echo", "fast") == "fast"
            assert not slow.done()
            gate.release.set()
            assert await slow == "slow"


@pytest.mark.asyncio
async def test_a_handler_error_is_the_same_typed_error_on_the_client() -> None:
    clocks: list[Timestamp] = []
    async with (
        serving(echo) as served,
        RpcClient(served.url, SECRET, on_clock=clocks.append) as client,
    ):
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(ConditionFailed) as failed:
                await client.call("fail", {"version": 3})
            assert failed.value.message == "the condition did not hold"
            assert failed.value.details == {"current": {"version": 3}}
            assert clocks == served.clock.readings[-1:]
            with pytest.raises(ValidationError) as invalid:
                await client.call("invalid", None)
            assert invalid.value.field == "key"
            assert clocks == served.clock.readings[-2:]


@pytest.mark.asyncio
async def test_a_handler_bug_is_an_internal_error_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(echo) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            with caplog.at_level(logging.ERROR, logger="kvstore.rpc.server"):
                with pytest.raises(InternalError):
                    await client.call("bug", None)
                with pytest.raises(InternalError):
                    await client.call("unencodable", None)
            assert await client.call("echo", 1) == 1
        assert served.events.count("internal_error") == 2
        assert served.events.count("connection_opened") == 1
        assert any("a bug in the handler" in (r.exc_text or "") for r in caplog.records)


@pytest.mark.asyncio
async def test_a_deadline_that_passes_is_unavailable_and_maybe_sent() -> None:
    gate = Gate()
    async with serving(gate) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(Unavailable) as late:
                await client.call("wait", None, timeout_ms=50)
            assert late.value.details["sent"] is True
            gate.release.set()
            assert await client.call("echo", 2) == 2  # the late reply was dropped quietly


@pytest.mark.asyncio
async def test_expiring_deadlines_never_tear_the_connection_down() -> None:
    """Under load, calls whose deadlines pass fail one by one; the connection, and every other
    call on it, lives on (a torn connection would turn all of them into unknown outcomes).
    The connection is opened first: calls that wait for it to open may see their deadline pass
    before they are sent, which is a different (``sent=False``) answer."""
    gate = Gate()
    async with serving(gate) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            assert await client.call("echo", 1) == 1
            served_first = asyncio.ensure_future(client.call("wait", None, timeout_ms=10_000))
            late = await asyncio.gather(
                *(client.call("wait", None, timeout_ms=50) for _ in range(2_000)),
                return_exceptions=True,
            )
            assert all(isinstance(r, Unavailable) and r.details["sent"] for r in late)
            gate.release.set()
            assert await served_first is None
            assert await client.call("echo", 2) == 2
        assert served.events.count("connection_opened") == 1


@pytest.mark.asyncio
async def test_a_message_larger_than_the_coalescing_bound_goes_alone() -> None:
    big = b"b" * (FRAME_COALESCE_BYTES_MAX + 1024)
    async with serving(echo) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            results = await asyncio.gather(
                client.call("echo", 1), client.call("echo", big), client.call("echo", 2)
            )
        assert list(results) == [1, big, 2]


@pytest.mark.asyncio
async def test_a_body_larger_than_a_frame_is_too_large_locally() -> None:
    async with serving(echo) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(TooLarge):
                await client.call("echo", b"x" * MESSAGE_BYTES_MAX)
            with pytest.raises(ValidationError):
                await client.call("echo", {1, 2})
            assert await client.call("echo", 3) == 3


# --- the handshake --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_wrong_secret_is_unauthorized(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(echo) as served:
        async with asyncio.timeout(WAIT_S):
            with caplog.at_level(logging.WARNING):
                async with RpcClient(served.url, "not-the-secret") as client:
                    with pytest.raises(Unauthorized):
                        await client.call("echo", 1)
                async with aiohttp.ClientSession() as session:
                    headers = {"Kvstore-Protocol": str(RPC_PROTOCOL_VERSION)}
                    async with session.get(served.url, headers=headers) as response:
                        assert response.status == 401
                        error = (await response.json())["error"]
                        assert error["code"] == "Unauthorized"
        assert served.events.count("refused_secret") == 2
        assert "connection_opened" not in served.events
        assert any("refused" in r.getMessage() for r in caplog.records)
        assert not any("not-the-secret" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_missing_or_other_protocol_version_is_a_protocol_violation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving(echo) as served:
        async with asyncio.timeout(WAIT_S):
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": f"Bearer {SECRET}"}
                async with session.get(served.url, headers=headers) as response:
                    assert response.status == 400
                    error = (await response.json())["error"]
                    assert error["code"] == "ProtocolViolation"
                    assert error["supported_version"] == RPC_PROTOCOL_VERSION
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(served.url, headers=headers)
                assert refused.value.status == 400
            monkeypatch.setattr(rpc_server, "RPC_PROTOCOL_VERSION", RPC_PROTOCOL_VERSION + 1)
            async with RpcClient(served.url, SECRET) as client:
                with pytest.raises(ProtocolViolation):
                    await client.call("echo", 1)
        assert served.events.count("refused_version") == 3


# --- bad frames ---------------------------------------------------------------------------------


async def upgrade(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TCP connection upgraded to a WebSocket, for frames aiohttp would not send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [
        "GET /rpc HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in AUTH.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


@pytest.mark.asyncio
async def test_an_oversize_frame_is_refused_before_its_payload_and_closes_its_connection() -> None:
    async with serving(echo) as served:
        async with asyncio.timeout(WAIT_S):
            reader, writer = await upgrade(served.port)
            try:
                # A masked binary frame header announcing RPC_FRAME_BYTES_MAX bytes; no payload.
                writer.write(b"\x82\xff" + RPC_FRAME_BYTES_MAX.to_bytes(8, "big") + b"mask")
                close_frame = await reader.readexactly(4)
                assert close_frame[0] == 0x88  # FIN + close
                assert int.from_bytes(close_frame[2:4], "big") == WSCloseCode.MESSAGE_TOO_BIG
            finally:
                writer.close()
                await writer.wait_closed()
            async with RpcClient(served.url, SECRET) as client:
                assert await client.call("echo", "still serving") == "still serving"
    assert served.events.count("oversize_frame") == 1
    assert served.events.count("connection_opened") == 2


@pytest.mark.asyncio
async def test_malformed_frames_get_protocol_violations_and_the_connection_keeps_working() -> None:
    async with serving(echo) as served, raw_socket(served.url) as ws:
        async with asyncio.timeout(WAIT_S):
            await ws.send_bytes(b"\xc1\x00junk")
            [reply] = await receive(ws)
            assert isinstance(reply, ErrorReply)
            assert (reply.call_id, type(reply.error)) == (0, ProtocolViolation)

            await ws.send_str("text is not part of the protocol")
            [reply] = await receive(ws)
            assert isinstance(reply, ErrorReply)
            assert (reply.call_id, type(reply.error)) == (0, ProtocolViolation)

            await ws.send_bytes(msgpack.packb([[0, 5, "", None, 10], [0, 6, "echo", "ok", 10]]))
            replies: dict[int, Message] = {}
            while len(replies) < 2:
                replies.update((m.call_id, m) for m in await receive(ws))
            assert isinstance(replies[5], ErrorReply)
            assert type(replies[5].error) is ProtocolViolation
            assert replies[6] == OkReply(6, "ok", served.clock.readings[-1])

            await ws.send_bytes(encode_frame([encode_request(7, "echo", "still", 10)]))
            [reply] = await receive(ws)
            assert isinstance(reply, OkReply)
            assert (reply.call_id, reply.body) == (7, "still")
        assert served.events.count("malformed_frame") == 3
        assert served.events.count("connection_opened") == 1


# --- failures and reconnection ------------------------------------------------------------------


class CapRng(random.Random):
    """Full jitter at its worst (the cap times ``scale``), recording each cap asked for."""

    def __init__(self) -> None:
        super().__init__(0)
        self.caps: list[float] = []
        self.scale = 1.0

    def uniform(self, a: float, b: float) -> float:
        self.caps.append(b)
        return b * self.scale


@pytest.mark.asyncio
async def test_a_stopped_server_is_unavailable_not_sent_fast_with_backoff() -> None:
    rng = CapRng()
    # The first backoff is stretched to FIRST_BACKOFF_S, so that the call right after the refusal
    # surely comes while the client backs off (unstretched it is 10 ms: a loaded machine can
    # take that long between two lines); the calls after it wait that out.
    rng.scale = FIRST_BACKOFF_S * 1000 / RPC_BACKOFF_BASE_MS
    with refusing_port() as port:
        async with RpcClient(f"ws://127.0.0.1:{port}/rpc", SECRET, rng=rng) as client:
            # A refusal fails the call at once: a client that waited for the deadline instead
            # would run into the guard (the deadline is far past it).
            async with asyncio.timeout(WAIT_S):
                with pytest.raises(Unavailable) as refused:
                    await client.call("echo", 1, timeout_ms=LONG_DEADLINE_MS)
            assert refused.value.details["sent"] is False
            # In backoff: a call whose deadline ends before the next attempt fails at once.
            with pytest.raises(Unavailable) as backing_off:
                await client.call("echo", 1, timeout_ms=1)
            assert backing_off.value.details["sent"] is False
            assert "backing off" in backing_off.value.message
            # One whose deadline allows it waits for the next attempt (which fails again).
            rng.scale = 0.01  # keep the test short; the caps asked for are what is checked
            async with asyncio.timeout(WAIT_S):
                for _ in range(8):
                    with pytest.raises(Unavailable):
                        await client.call("echo", 1, timeout_ms=LONG_DEADLINE_MS)
    expected = [min(RPC_BACKOFF_MAX_MS, RPC_BACKOFF_BASE_MS * 2**i) for i in range(9)]
    assert rng.caps == expected


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_connect_attempt() -> None:
    async with serving(echo) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            results = await asyncio.gather(*(client.call("echo", i) for i in range(50)))
        assert results == list(range(50))
        assert served.events.count("connection_opened") == 1
    with refusing_port() as port:
        async with RpcClient(f"ws://127.0.0.1:{port}/rpc", SECRET, rng=CapRng()) as client:
            async with asyncio.timeout(WAIT_S):
                failures = await asyncio.gather(
                    *(client.call("echo", i) for i in range(50)), return_exceptions=True
                )
        assert all(isinstance(f, Unavailable) for f in failures)
        assert all(f.details["sent"] is False for f in failures if isinstance(f, KvError))


SERVER_SCRIPT = """
import asyncio, sys
from aiohttp import web
from kvstore.rpc import AsyncHandler, RpcServer
from kvstore.types import Timestamp

async def main():
    async def handler(method, body, timeout_ms):
        print("started", flush=True)
        await asyncio.Event().wait()

    server = RpcServer(AsyncHandler(handler), secret=sys.argv[1], clock=lambda: Timestamp(1, 0, 1))
    app = web.Application()
    server.install(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_a_server_killed_mid_call_is_unavailable_and_maybe_sent() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER_SCRIPT, SECRET, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(WAIT_S * 3):
            port = int(await process.stdout.readline())
            async with RpcClient(f"ws://127.0.0.1:{port}/rpc", SECRET) as client:
                call = asyncio.create_task(client.call("hang", None, timeout_ms=30_000))
                assert await process.stdout.readline() == b"started\n"
                process.kill()
                with pytest.raises(Unavailable) as lost:
                    await call
                assert lost.value.details["sent"] is True
                assert "lost" in lost.value.message
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.asyncio
async def test_the_client_reconnects_when_the_server_comes_back_on_the_same_port() -> None:
    rng = CapRng()
    async with serving(echo) as first:
        client = RpcClient(first.url, SECRET, rng=rng)
        async with asyncio.timeout(WAIT_S):
            assert await client.call("echo", "first") == "first"
    try:
        async with asyncio.timeout(WAIT_S):
            for _ in range(3):  # the first may still find the old connection closing
                with pytest.raises(Unavailable):
                    await client.call("echo", "nobody", timeout_ms=5_000)
            assert len(rng.caps) in (2, 3)
            assert rng.caps == [RPC_BACKOFF_BASE_MS * 2**i for i in range(len(rng.caps))]
            async with serving(echo, port=first.port) as second:
                assert await client.call("echo", "second", timeout_ms=5_000) == "second"
                assert await client.call("echo", "again") == "again"
            assert second.events.count("connection_opened") == 1
            # The successful connect reset the backoff: the next failed connect asks for the
            # base cap (the first call may still find the old connection closing, as above).
            attempts_before = len(rng.caps)
            for _ in range(2):
                with pytest.raises(Unavailable):
                    await client.call("echo", "nobody", timeout_ms=5_000)
                if len(rng.caps) > attempts_before:
                    break
            assert rng.caps[attempts_before:] == [RPC_BACKOFF_BASE_MS], rng.caps
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_server_close_lets_running_calls_finish_then_closes_connections() -> None:
    gate = Gate()
    async with serving(gate) as served, RpcClient(served.url, SECRET) as client:
        async with asyncio.timeout(WAIT_S):
            running = asyncio.create_task(client.call("wait", "finishing", timeout_ms=5_000))
            await gate.all_started.wait()
            closing = asyncio.create_task(served.server.close(grace_ms=5_000))
            gate.release.set()
            assert await running == "finishing"
            await closing
            assert served.server.connection_count == 0
            with pytest.raises(Unavailable) as refused:
                await client.call("echo", 1)
            assert refused.value.details["sent"] is False


@pytest.mark.asyncio
async def test_closing_the_client_fails_its_outstanding_calls() -> None:
    gate = Gate()
    async with serving(gate) as served:
        client = RpcClient(served.url, SECRET)
        try:
            async with asyncio.timeout(WAIT_S):
                running = asyncio.create_task(client.call("wait", None, timeout_ms=5_000))
                await gate.all_started.wait()
                await client.close()
                with pytest.raises(Unavailable) as lost:
                    await running
                assert lost.value.details["sent"] is True
                with pytest.raises(Unavailable) as closed:
                    await client.call("echo", 1)
                assert closed.value.details["sent"] is False
        finally:
            gate.release.set()
            await client.close()


# --- overload -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_clients_in_flight_cap_is_overloaded_at_once() -> None:
    gate = Gate(expected=8)
    async with (
        serving(gate) as served,
        RpcClient(served.url, SECRET, calls_in_flight_max=8) as client,
    ):
        async with asyncio.timeout(WAIT_S):
            calls = [asyncio.create_task(client.call("wait", i)) for i in range(8)]
            await gate.all_started.wait()
            with pytest.raises(Overloaded):
                await client.call("echo", "one too many")
            gate.release.set()
            assert await asyncio.gather(*calls) == list(range(8))
            assert await client.call("echo", "room again") == "room again"


@pytest.mark.asyncio
async def test_the_servers_in_flight_cap_answers_overloaded() -> None:
    gate = Gate(expected=4)
    async with serving(gate, calls_in_flight_max=4) as served, raw_socket(served.url) as ws:
        async with asyncio.timeout(WAIT_S):
            await ws.send_bytes(
                encode_frame([encode_request(i, "wait", i, 5_000) for i in range(1, 7)])
            )
            refused: list[Message] = []
            while len(refused) < 2:
                refused.extend(await receive(ws))
            assert sorted(m.call_id for m in refused) == [5, 6]
            assert all(isinstance(m, ErrorReply) and type(m.error) is Overloaded for m in refused)
            await gate.all_started.wait()
            gate.release.set()
            done: list[Message] = []
            while len(done) < 4:
                done.extend(await receive(ws))
            assert sorted((m.call_id, m.body) for m in done if isinstance(m, OkReply)) == [
                (i, i) for i in range(1, 5)
            ]
        assert served.events.count("overloaded") == 2


# --- the pool -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_pool_keeps_one_client_per_address() -> None:
    clocks: list[Timestamp] = []
    pool = RpcPool(SECRET, on_clock=clocks.append)
    try:
        async with serving(echo) as a, serving(echo) as b:
            async with asyncio.timeout(WAIT_S):
                client_a = pool.client(f"127.0.0.1:{a.port}")
                assert pool.client(f"127.0.0.1:{a.port}") is client_a
                client_b = pool.client(f"127.0.0.1:{b.port}")
                assert client_b is not client_a
                assert await client_a.call("echo", "a") == "a"
                assert await client_b.call("echo", "b") == "b"
            assert clocks == [*a.clock.readings, *b.clock.readings]
            with pytest.raises(ValidationError):
                pool.client("no-port")
    finally:
        await pool.close()
