"""The chaos runner's client: workload steps over the public HTTP API, answers as core results.

Theory of operation
-------------------
The workload scripts of :mod:`chaos.sim.workloads` yield ``Read`` and ``Write`` steps and expect
the coordinator cores' results back (:class:`~kvstore.coordinator.results.ReadResult`,
:class:`~kvstore.coordinator.results.TxnResult`). In a real run those steps go to a real
coordinator process: a ``Write`` is ``POST /v1/txn`` (ops in their JSON form, the idempotency
token when the step has one), a ``Read`` is ``POST /v1/read``. This module turns the HTTP
answers into the same result values, so the same scripts and the same history recording serve
the simulator and the real cluster.

What may have happened is decided the way the catalogue says: a 200 committed; an error code
in the 3xxx class (``OutcomeUnknown``, 504) is ambiguous; a connection lost or a timeout *after*
the request was sent is ambiguous too (``OutcomeUnknown``); a connection refused before anything
was sent is a definite ``Unavailable``. Every call is bounded by ``CALL_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.errors import ErrorCode
from kvstore.messages import ReadEntry
from kvstore.ops import Op, op_to_json
from kvstore.types import Timestamp, TxnId

__all__ = ["CALL_TIMEOUT_S", "parse_ts", "write", "read", "txn_outcome"]

CALL_TIMEOUT_S = 5.0
_NO_TXN = TxnId("")
_ZERO_TS = Timestamp(0, 0, 0)


def parse_ts(text: object) -> Timestamp:
    """``"<physical_us>.<logical>.<origin hex>"`` (the API's form) as a timestamp."""
    if not isinstance(text, str):
        return _ZERO_TS
    try:
        physical, logical, origin = text.split(".")
        return Timestamp(int(physical), int(logical), int(origin, 16))
    except ValueError:
        return _ZERO_TS


class _Lost(Exception):
    """The request may have reached the coordinator, but no answer came back."""


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)``; raises :class:`_Lost` or ``aiohttp.ClientConnectorError``."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            async with session.post(url, json=body) as reply:
                document = await reply.json(content_type=None)
                return reply.status, document if isinstance(document, dict) else {}
    except aiohttp.ClientConnectorError:
        raise  # nothing was sent
    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
        raise _Lost(repr(error)) from None


def _error_code(document: dict[str, Any]) -> ErrorCode:
    error = document.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return ErrorCode.from_name(code) if isinstance(code, str) else ErrorCode.InternalError


async def write(
    session: aiohttp.ClientSession, base_url: str, ops: Sequence[Op], token: str | None
) -> TxnResult:
    """One write transaction through ``POST /v1/txn``."""
    body: dict[str, Any] = {"ops": [op_to_json(op) for op in ops]}
    if token is not None:
        body["token"] = token
    try:
        status, document = await _post(session, f"{base_url}/v1/txn", body)
    except aiohttp.ClientConnectorError:
        return TxnResult(committed=False, txn_id=_NO_TXN, ts=_ZERO_TS, error=ErrorCode.Unavailable)
    except _Lost:
        return TxnResult(
            committed=False, txn_id=_NO_TXN, ts=_ZERO_TS, error=ErrorCode.OutcomeUnknown
        )
    if status == 200:
        return TxnResult(
            committed=True,
            txn_id=TxnId(str(document.get("txn_id", ""))),
            ts=parse_ts(document.get("ts")),
        )
    error = document.get("error")
    details = error if isinstance(error, dict) else {}
    code = _error_code(document)
    if status >= 500 and code is ErrorCode.InternalError:
        code = ErrorCode.OutcomeUnknown  # a server fault mid-transaction: anything may be
    return TxnResult(
        committed=False,
        txn_id=TxnId(str(details.get("txn_id", ""))),
        ts=parse_ts(details.get("ts")),
        error=code,
    )


async def read(session: aiohttp.ClientSession, base_url: str, keys: Sequence[str]) -> ReadResult:
    """One read-only transaction through ``POST /v1/read``."""
    try:
        status, document = await _post(session, f"{base_url}/v1/read", {"keys": list(keys)})
    except (aiohttp.ClientConnectorError, _Lost):
        return ReadResult(error=ErrorCode.Unavailable)
    if status != 200:
        return ReadResult(error=_error_code(document))
    entries: list[ReadEntry] = []
    for raw in document.get("items", []):
        found = raw.get("found", True) is not False
        entries.append(
            ReadEntry(
                key=str(raw.get("key")),
                exists=found,
                value=raw.get("value") if found else None,
                version=int(raw.get("version", 0)) if found else 0,
                ts=parse_ts(raw.get("ts")),
                pending=False,
            )
        )
    return ReadResult(items=tuple(entries), rounds=2)


async def txn_outcome(
    session: aiohttp.ClientSession, base_url: str, token: str
) -> dict[str, Any] | None:
    """The recorded outcome of the transaction that used ``token`` (``GET /v1/txn/{token}``);
    None when the store has no record of it."""
    url = f"{base_url}/v1/txn/{quote(token, safe='')}"
    async with asyncio.timeout(CALL_TIMEOUT_S), session.get(url) as reply:
        if reply.status == 404:
            return None
        document = await reply.json(content_type=None)
        if reply.status != 200 or not isinstance(document, dict):
            raise RuntimeError(f"token lookup of {token!r}: HTTP {reply.status} {document}")
        return document
