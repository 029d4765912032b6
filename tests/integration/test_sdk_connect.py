"""The SDK's gateway mode when the server cannot take a new connection: a coordinator whose
accept queue is full (its kernel drops the SYNs of a burst of new clients) makes a put fail
within ``SDK_CONNECT_TIMEOUT_MS`` as ``Unavailable`` with ``sent=False`` (nothing reached the
server, safe to retry), not as an answer that may have been applied after the call's whole time.

Real sockets on loopback: a listening socket with a backlog of 0 that never accepts, its queue
filled by one raw connection first."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from kvstore.client.http import HttpBackend
from kvstore.errors import Unavailable
from kvstore.limits import SDK_CONNECT_TIMEOUT_MS
from kvstore.ops import op_from_json


@pytest.fixture
def full_listener() -> Iterator[int]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = int(server.getsockname()[1])
        # The accept queue holds backlog + 1 connections; nobody ever accepts this one.
        fillers.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


@pytest.mark.asyncio
async def test_a_connection_the_server_never_accepts_is_not_sent(full_listener: int) -> None:
    backend = HttpBackend(f"http://127.0.0.1:{full_listener}", "token")
    op = op_from_json({"op": "put", "key": "k", "value": 1})
    timeout_s = SDK_CONNECT_TIMEOUT_MS / 1000 + 3
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable) as failed:
            await backend.put(op, timeout_s)
    finally:
        await backend.close()
    elapsed_s = time.monotonic() - started
    assert failed.value.details["sent"] is False, failed.value
    assert "cannot connect" in failed.value.message
    assert elapsed_s < timeout_s - 1  # the connect bound, not the call's whole time
