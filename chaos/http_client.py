"""The chaos runner's client: workload steps over the public HTTP API, answers as core results.

Theory of operation
-------------------
The workload scripts of :mod:`chaos.sim.workloads` yield steps and expect the coordinator
cores' results back, as in the simulator. In a real run those steps go to a real coordinator
process over the public API, and this module turns the HTTP answers into the same result values,
so the same scripts and the same history recording serve the simulator and the real cluster:

============  ====================================================  ========================
step          request                                               result
============  ====================================================  ========================
``Write``     ``POST /v1/txn`` (ops in JSON form, the token if any)  ``TxnResult``
``Read``      ``POST /v1/read``                                     ``ReadResult``
``Get``       ``GET /v1/kv/{key}`` (404: absent)                    ``CallResult[GetReply]``
``Put``       ``PUT`` / ``DELETE /v1/kv/{key}`` (updates: below)     ``CallResult[WriteReply]``
``ScanKeys``  ``GET /v1/scan?start=&end=&limit=`` (one page)         ``ScanResult``
============  ====================================================  ========================

A cancelled transaction's per-op ``reasons`` become the result's ``outcomes`` (the scripts'
re-run rule reads them, and the history keeps them). A singleton write refused for a reason an op
can have (``ConditionFailed``, ``TransactionConflict``, ``TimestampTooOld``, ``ValidationError``)
is a ``WriteReply`` with that outcome, as the node's answer is in the simulator.

The public API has no singleton *update*: an ``update`` singleton (the list-append workload's
append) is sent the way an HTTP client without one would do it, as ``GET`` then a ``PUT`` of the
updated value conditioned on the version read (``not_exists`` for an absent item), and on the
op's own condition. The ``PUT`` is a singleton write stamped by the node, and its condition makes
it exactly the append it stands for: it applies only if nothing was written in between (else
``ConditionFailed``: nothing applied). A failed ``GET`` fails the write with nothing sent.

What may have happened is decided the way the catalogue says: a 200 committed; an error code
in the 3xxx class (``OutcomeUnknown``, 504) is ambiguous, and so is a 5xx ``InternalError`` of a
write; a connection lost or a timeout *after* the request was sent is ambiguous too
(``OutcomeUnknown``) for a write and ``Unavailable`` for a read; a connection refused before
anything was sent is a definite ``Unavailable``. Every call is bounded by ``CALL_TIMEOUT_S``.

One attempt per request: the calls go through a session made by :func:`new_session`, which
turns off aiohttp's own retry. aiohttp (3.9 and later) sends an idempotent request (``GET``,
``PUT``, ``DELETE``) a second time when the connection breaks under the first; for a singleton
``PUT`` or ``DELETE`` that hides what happened. A gateway killed after the first attempt reached
it (and forwarded the write to the partition's leader, which applied it) refuses the second
attempt's connection, and the refusal reads as "nothing was sent": a definite ``Unavailable``,
recorded ``fail``, for a write that happened (a replicated run under ``kill-leader``, seed 61,
reported it as G1a and ``fail-but-read``). A second attempt that reaches a live gateway would
apply the write twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from kvstore.api.requests import decode_cursor
from kvstore.conditions import AllOf, Condition, Exists, VersionEquals, condition_to_json
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.coordinator.scan import ScanPage, ScanResult
from kvstore.coordinator.singleton import CallResult
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import GetReply, ItemView, OpOutcome, ReadEntry, ReasonCode, WriteReply
from kvstore.ops import Op, OpKind, op_to_json
from kvstore.types import PartitionId, Timestamp, TxnId
from kvstore.updates import apply_actions

__all__ = [
    "CALL_TIMEOUT_S",
    "new_session",
    "parse_ts",
    "write",
    "read",
    "get",
    "singleton_write",
    "scan",
    "txn_outcome",
    "HttpTransport",
]

CALL_TIMEOUT_S = 5.0
_NO_TXN = TxnId("")
_ZERO_TS = Timestamp(0, 0, 0)
_NO_PARTITION = PartitionId(-1)  # CallResult's partition: the HTTP answer does not say
_OP_REASONS: frozenset[str] = frozenset(code.value for code in ReasonCode) - {"None"}


def new_session(
    *, headers: Mapping[str, str] | None = None, connector: aiohttp.BaseConnector | None = None
) -> aiohttp.ClientSession:
    """A client session that sends each request once (see the module): aiohttp's retry of
    idempotent requests is off (the switch aiohttp's own test client uses; no public one
    exists). An aiohttp without that switch is refused rather than trusted."""
    session = aiohttp.ClientSession(headers=headers, connector=connector)
    if not isinstance(getattr(session, "_retry_connection", None), bool):
        raise RuntimeError(
            f"aiohttp {aiohttp.__version__} has no _retry_connection switch: the chaos client "
            "cannot turn off its retry of idempotent requests (see chaos/http_client.py)"
        )
    session._retry_connection = False
    return session


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
    return await _request(session, "POST", url, body)


async def _request(
    session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` of one call; raises :class:`_Lost` or
    ``aiohttp.ClientConnectorError`` (nothing was sent)."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            async with session.request(method, url, json=body) as reply:
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
    details = error if isinstance(error, dict) else {}  # the details are members of "error"
    code = _error_code(document)
    if status >= 500 and code is ErrorCode.InternalError:
        code = ErrorCode.OutcomeUnknown  # a server fault mid-transaction: anything may be
    return TxnResult(
        committed=False,
        txn_id=TxnId(str(details.get("txn_id", ""))),
        ts=parse_ts(details.get("ts")),
        outcomes=_outcomes(details.get("reasons")),
        error=code,
    )


def _outcomes(reasons: object) -> tuple[OpOutcome, ...]:
    """A cancellation's JSON ``reasons`` (one per op) as outcomes; codes this client does not
    know are kept as ``ValidationError`` so that the count of ops stays right."""
    if not isinstance(reasons, list):
        return ()
    out = []
    for reason in reasons:
        code = reason.get("code") if isinstance(reason, dict) else None
        message = reason.get("message") if isinstance(reason, dict) else None
        known = ReasonCode(code) if isinstance(code, str) and code in _OP_REASONS else None
        if code == ReasonCode.NONE.value:
            known = ReasonCode.NONE
        out.append(
            OpOutcome(
                code=known or ReasonCode.VALIDATION_ERROR,
                message=message if isinstance(message, str) else "",
            )
        )
    return tuple(out)


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


def _item(raw: object) -> ItemView | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str):
        return None
    return ItemView(
        key=raw["key"],
        value=raw.get("value"),
        version=int(raw.get("version", 0)),
        ts=parse_ts(raw.get("ts")),
    )


def _key_url(base_url: str, key: str) -> str:
    return f"{base_url}/v1/kv/{quote(key, safe='')}"


async def get(session: aiohttp.ClientSession, base_url: str, key: str) -> CallResult[GetReply]:
    """One singleton get through ``GET /v1/kv/{key}``; a 404 ``NotFound`` is an absent item."""
    try:
        status, document = await _request(session, "GET", _key_url(base_url, key))
    except (aiohttp.ClientConnectorError, _Lost):
        return CallResult(partition=_NO_PARTITION, error=ErrorCode.Unavailable)
    if status == 200:
        return CallResult(partition=_NO_PARTITION, reply=GetReply(item=_item(document)))
    code = _error_code(document)
    if status == 404 and code is ErrorCode.NotFound:
        return CallResult(partition=_NO_PARTITION, reply=GetReply(item=None))
    return CallResult(partition=_NO_PARTITION, error=code)


async def singleton_write(
    session: aiohttp.ClientSession, base_url: str, op: Op
) -> CallResult[WriteReply]:
    """One singleton write: ``PUT`` or ``DELETE /v1/kv/{key}``, or an update as ``GET`` then a
    conditioned ``PUT`` (see the module)."""
    condition = op.condition
    if op.kind is OpKind.UPDATE:
        got = await get(session, base_url, op.key)
        if got.reply is None:  # nothing was sent: a definite refusal
            code = got.error or ErrorCode.Unavailable
            return CallResult(
                partition=_NO_PARTITION, error=ErrorCode.Unavailable if code.ambiguous else code
            )
        item = got.reply.item
        try:
            value = apply_actions(
                op.actions, exists=item is not None, value=None if item is None else item.value
            )
        except KvError as invalid:  # the update does not fit the value: as the node would say
            outcome = OpOutcome(code=ReasonCode.VALIDATION_ERROR, message=invalid.message)
            return CallResult(partition=_NO_PARTITION, reply=WriteReply(outcome=outcome))
        read: Condition = Exists(False) if item is None else VersionEquals(item.version)
        condition = read if condition is None else AllOf((condition, read))
        op = Op(kind=OpKind.PUT, key=op.key, value=value, condition=condition)
    body: dict[str, Any] = {}
    if op.kind is OpKind.PUT:
        body["value"] = op.value
    elif op.kind is not OpKind.DELETE:
        raise ValueError(f"not a singleton write: {op.kind}")
    if condition is not None:
        body["if"] = condition_to_json(condition)
    method = "PUT" if op.kind is OpKind.PUT else "DELETE"
    try:
        status, document = await _request(session, method, _key_url(base_url, op.key), body)
    except aiohttp.ClientConnectorError:
        return CallResult(partition=_NO_PARTITION, error=ErrorCode.Unavailable)
    except _Lost:
        return CallResult(partition=_NO_PARTITION, error=ErrorCode.OutcomeUnknown)
    if status == 200:
        reply = WriteReply(
            outcome=OpOutcome(),
            existed=bool(document.get("deleted", False)),
            version=int(document.get("version", 0)),
            ts=parse_ts(document.get("ts")) if document.get("ts") is not None else None,
        )
        return CallResult(partition=_NO_PARTITION, reply=reply)
    code = _error_code(document)
    if code.name in _OP_REASONS:  # the node refused the op: nothing was applied
        answer = document.get("error")
        message = answer.get("message") if isinstance(answer, dict) else None
        outcome = OpOutcome(
            code=ReasonCode(code.name), message=message if isinstance(message, str) else ""
        )
        return CallResult(partition=_NO_PARTITION, reply=WriteReply(outcome=outcome))
    if status >= 500 and code is ErrorCode.InternalError:
        code = ErrorCode.OutcomeUnknown
    return CallResult(partition=_NO_PARTITION, error=code)


async def scan(
    session: aiohttp.ClientSession, base_url: str, start: str, end: str | None, limit: int
) -> ScanResult:
    """One scan page through ``GET /v1/scan``; ``page.after`` is the cursor's key (None: the
    range is exhausted)."""
    query = f"start={quote(start, safe='')}&limit={limit}"
    if end is not None:
        query += f"&end={quote(end, safe='')}"
    try:
        status, document = await _request(session, "GET", f"{base_url}/v1/scan?{query}")
    except (aiohttp.ClientConnectorError, _Lost):
        return ScanResult(error=ErrorCode.Unavailable)
    if status != 200:
        return ScanResult(error=_error_code(document))
    items = tuple(i for i in map(_item, document.get("items", [])) if i is not None)
    cursor = document.get("cursor")
    after = decode_cursor(cursor) if isinstance(cursor, str) and cursor else None
    return ScanResult(page=ScanPage(items=items, after=after))


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


class HttpTransport:
    """The runner's steps over the public HTTP API through ``session`` (the functions above);
    the DynamoDB client (:mod:`chaos.dynamodb_client`) offers the same methods."""

    stamps = True  # write answers carry their commit ts and txn id

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    def ledger_token(self, token: str) -> str:
        return token

    async def write(self, url: str, ops: Sequence[Op], token: str | None) -> TxnResult:
        return await write(self.session, url, ops, token)

    async def read(self, url: str, keys: Sequence[str]) -> ReadResult:
        return await read(self.session, url, keys)

    async def get(self, url: str, key: str) -> CallResult[GetReply]:
        return await get(self.session, url, key)

    async def singleton_write(self, url: str, op: Op) -> CallResult[WriteReply]:
        return await singleton_write(self.session, url, op)

    async def scan(self, url: str, start: str, end: str | None, limit: int) -> ScanResult:
        return await scan(self.session, url, start, end, limit)
