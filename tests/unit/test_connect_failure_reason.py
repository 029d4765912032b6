"""Connect failures are described without the peer's address or an exception's repr: the words
reach public errors (``kvstore.transport`` adds the partition and the node id)."""

from __future__ import annotations

import errno
import socket

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from kvstore.errors import connect_failure_reason


def connector_error(os_error: OSError) -> aiohttp.ClientConnectorError:
    key = ConnectionKey("127.0.0.1", 53265, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, os_error)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            connector_error(
                ConnectionRefusedError(
                    errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 53265)"
                )
            ),
            "connection refused",
        ),
        (
            ConnectionResetError(errno.ECONNRESET, "reset by 127.0.0.1:53265"),
            "connection reset by peer",
        ),
        (TimeoutError(), "timed out"),
        (aiohttp.ServerTimeoutError("127.0.0.1:53265"), "timed out"),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "name or service not known",
        ),
        (aiohttp.ClientPayloadError("at 127.0.0.1:53265"), "connection failed"),
    ],
)
def test_the_reason_names_no_address(error: BaseException, reason: str) -> None:
    said = connect_failure_reason(error)
    assert said == reason
    assert "127.0.0.1" not in said and "53265" not in said
