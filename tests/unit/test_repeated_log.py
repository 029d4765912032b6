"""Bad input does not amplify into log lines (issue 17): :class:`kvstore.logs.RepeatedLog` logs
the first line of a kind, then one per interval with the count of those not logged; an RPC
server fed 1,750 malformed frames (and 50 refused handshakes) logs a handful of lines, keeps
counting every one in its events, and keeps serving."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web

from kvstore.limits import LOG_REPEAT_INTERVAL_MS, RPC_PROTOCOL_VERSION
from kvstore.logs import RepeatedLog
from kvstore.rpc import RpcServer
from kvstore.types import Timestamp

SECRET = "unit-test-secret"
AUTH = {"Authorization": f"Bearer {SECRET}", "Kvstore-Protocol": str(RPC_PROTOCOL_VERSION)}
FRAMES = 1_750
WAIT_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


def test_the_first_line_is_logged_then_one_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    repeated = RepeatedLog(logging.getLogger("t.repeat"), interval_ms=1_000, clock=clock)
    with caplog.at_level(logging.INFO, "t.repeat"):
        assert repeated.log("bad", logging.WARNING, "bad frame from %s", "a")
        for _ in range(FRAMES - 1):
            assert not repeated.log("bad", logging.WARNING, "bad frame from %s", "b")
        assert repeated.not_logged("bad") == FRAMES - 1
        assert repeated.log("other", logging.WARNING, "another kind")  # keys are independent
        clock.now += 1.0
        assert repeated.log("bad", logging.WARNING, "bad frame from %s", "c")
        assert not repeated.log("bad", logging.WARNING, "bad frame from %s", "d")
        repeated.reset("bad")
        assert repeated.log("bad", logging.WARNING, "bad frame from %s", "e")
    assert lines(caplog, "t.repeat") == [
        "bad frame from a",
        "another kind",
        f"bad frame from c (and {FRAMES - 1} more like it not logged since the previous line)",
        "bad frame from e",
    ]


def test_it_remembers_a_bounded_number_of_keys() -> None:
    repeated = RepeatedLog(logging.getLogger("t.keys"), keys_max=4)
    for key in range(100):
        repeated.log(key, logging.DEBUG, "x")
    assert len(repeated._keys) == 4


@pytest.mark.asyncio
async def test_malformed_frames_log_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []

    def handler(method: str, body: object, timeout_ms: int, respond: object) -> None:
        raise AssertionError("no well-formed request is sent")

    server = RpcServer(
        handler,
        secret=SECRET,
        clock=lambda: Timestamp(1, 0, 1),
        on_event=events.append,
        logger=logging.getLogger("t.rpc"),
    )
    app = web.Application()
    server.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/rpc"
    try:
        with caplog.at_level(logging.INFO, "t.rpc"):
            async with aiohttp.ClientSession() as session:
                for _ in range(50):  # a wrong secret, again and again
                    async with session.get(url, headers={**AUTH, "Authorization": "Bearer x"}):
                        pass
                async with session.ws_connect(url, headers=AUTH) as ws:
                    for i in range(FRAMES):
                        await ws.send_bytes(b"\xc1" + i.to_bytes(4, "big"))  # not msgpack
                    async with asyncio.timeout(WAIT_S):  # each is answered ProtocolViolation
                        while events.count("malformed_frame") < FRAMES:
                            reply = await ws.receive()  # replies coalesce: fewer messages
                            assert reply.type is aiohttp.WSMsgType.BINARY
        assert events.count("malformed_frame") == FRAMES  # the metrics count every one
        assert events.count("refused_secret") == 50
        logged = lines(caplog, "t.rpc")
        assert len(logged) <= 4, logged  # one per kind within LOG_REPEAT_INTERVAL_MS
        assert any("malformed frame" in line for line in logged)
        assert any("refused connection" in line for line in logged)
    finally:
        await server.close(grace_ms=100)
        await runner.cleanup()
    assert LOG_REPEAT_INTERVAL_MS >= 1_000  # the whole test runs well within one interval
