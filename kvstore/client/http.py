"""Gateway mode: one attempt of each SDK call through a coordinator's public HTTP JSON API.

Theory of operation
-------------------
One :class:`aiohttp.ClientSession` per client (pooled keep-alive connections, at most
``SDK_HTTP_CONNECTIONS_MAX``), created on first use inside the running event loop and closed by
:meth:`HttpBackend.close`. A forked child's first call finds the session made by another process
and abandons it unclosed (its sockets are the parent's; :mod:`kvstore.client.forks`), then opens
its own. Every request carries the bearer token and a total timeout equal to
what is left of the call's deadline.

Keys and tokens go into paths percent-encoded byte by byte (``/`` as ``%2F``), and scan bounds
into the query string the same way; the URL is handed to aiohttp as already encoded so nothing
is re-quoted (docs/api.md).

Answers map back to the SDK's terms:

* 200: the JSON body, read into :mod:`kvstore.client.results` values.
* An error body ``{"error": {"code", "message", ...}}``: the catalogue's typed exception
  (:func:`kvstore.errors.error_from_code`) with the other members as details (``reasons``,
  ``txn_id``, ``retryable``...). A ``Retry-After`` header becomes ``details["retry_after_s"]``,
  which the retry policy honours.
* An error status without a catalogue body (a proxy's 502, aiohttp's own plain-text 400): a 5xx
  is ``Unavailable`` with ``sent=True`` (retryable, but the request may have been applied), any
  other status ``ProtocolViolation``.
* No answer: a refused or timed-out connection is ``Unavailable`` with ``sent=False`` (nothing
  reached the server), its message the URL and the OS's reason (``connection refused``); a
  connection lost or timed out after the request went out is
  ``Unavailable`` with ``sent=True``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from kvstore.client.backend import ScanPage
from kvstore.client.forks import ProcessOwner, abandon
from kvstore.client.results import Committed, Deleted, Item, Written, item_from_json
from kvstore.errors import (
    ErrorCode,
    KvError,
    NotFound,
    ProtocolViolation,
    Unavailable,
    ValidationError,
    connect_failure_reason,
    error_from_code,
)
from kvstore.limits import SDK_CONNECT_TIMEOUT_MS, SDK_HTTP_CONNECTIONS_MAX, TXN_OPS_MAX_CEILING
from kvstore.ops import Op, op_to_json
from kvstore.types import Timestamp

__all__ = ["HttpBackend", "validate_url"]

_JSON: Final = "application/json"
_CONNECT_TIMEOUT_S: Final = SDK_CONNECT_TIMEOUT_MS / 1000
_ERROR_MEMBERS: Final = frozenset({"code", "number", "message"})
_SHOWN_BODY_CHARS: Final = 200  # of an unexpected answer, in an error message


def validate_url(url: object, field: str = "url") -> str:
    """An ``http://`` or ``https://`` base URL without query or fragment, trailing ``/`` cut."""
    if not isinstance(url, str) or not url:
        raise ValidationError(field, "must be a URL like http://127.0.0.1:8080")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(field, f"must be an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ValidationError(field, "must not have a query or fragment")
    return url.rstrip("/")


def _component(text: str) -> str:
    return quote(text, safe="")


def _retry_after_s(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("Retry-After", "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else None


def _error_from_answer(status: int, raw: bytes, headers: Mapping[str, str]) -> KvError:
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    details: dict[str, object] = {"status": status}
    retry_after_s = _retry_after_s(headers)
    if retry_after_s is not None:
        details["retry_after_s"] = retry_after_s
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = ErrorCode.from_name(str(error["code"]))
        message = str(error.get("message", code.value.summary))
        details.update({k: v for k, v in error.items() if k not in _ERROR_MEMBERS})
        return error_from_code(code, message, details=details)
    shown = raw[:_SHOWN_BODY_CHARS].decode("utf-8", "replace")
    if status >= 500:
        details["sent"] = True
        return Unavailable(f"HTTP {status} without an API error: {shown!r}", details=details)
    return ProtocolViolation(f"HTTP {status} without an API error: {shown!r}", details=details)


def _timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """The whole call within ``timeout_s``; connecting (a pooled connection or a new one) within
    ``SDK_CONNECT_TIMEOUT_MS`` of it, so that a server whose accept queue is full (its kernel drops
    the SYNs of a burst of new clients) fails fast as "not sent" (``ConnectionTimeoutError``)
    instead of running out the call's time as an answer that may have been applied."""
    total_s = max(timeout_s, 0.001)
    return aiohttp.ClientTimeout(total=total_s, connect=min(total_s, _CONNECT_TIMEOUT_S))


def _absent(entry: object) -> bool:
    """A read entry ``{"key": K, "found": false}``."""
    return isinstance(entry, dict) and entry.get("found") is False


class HttpBackend:
    """The public API of the coordinator at ``url``, with bearer ``token`` (see the module)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = validate_url(url)
        if not isinstance(token, str) or not token or not token.isprintable():
            raise ValidationError("token", "must be a non-empty string of printable characters")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": _JSON}
        self._session: aiohttp.ClientSession | None = None
        self._owner = ProcessOwner()
        self._closed = False

    @property
    def txn_ops_max(self) -> int:
        # The cluster's own limit is not visible here; the coordinator enforces it.
        return TXN_OPS_MAX_CEILING

    def _drop_inherited(self) -> None:
        if self._session is not None:
            abandon(self._session)
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        self._owner.adopt(self._drop_inherited)
        if self._closed:
            raise Unavailable("the client is closed", details={"sent": False})
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=SDK_HTTP_CONNECTIONS_MAX)
            self._session = aiohttp.ClientSession(headers=self._headers, connector=connector)
        return self._session

    async def _request(
        self, method: str, target: str, timeout_s: float, body: object = None
    ) -> tuple[int, object]:
        """``(status, parsed JSON)`` of a 200 or 404 answer; the typed error otherwise."""
        data: bytes | None = None
        headers: dict[str, str] = {}
        if body is not None:
            try:
                text = json.dumps(body, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise ValidationError(
                    "value", f"cannot be sent as JSON (bytes need direct mode): {error}"
                ) from None
            data = text.encode("utf-8")
            headers["Content-Type"] = _JSON
        session = self._session_now()
        try:
            async with session.request(
                method,
                URL(self.url + target, encoded=True),
                data=data,
                headers=headers,
                timeout=_timeout(timeout_s),
            ) as response:
                raw = await response.read()
                status = response.status
                answer_headers = dict(response.headers)
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as error:
            why = connect_failure_reason(error)
            message = f"cannot connect to {self.url}: {why}"
            raise Unavailable(message, details={"sent": False}) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            shown = str(error) or type(error).__name__
            raise Unavailable(
                f"no answer from {self.url}: {shown}", details={"sent": True}
            ) from None
        if status == 200:
            try:
                return status, json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ProtocolViolation(f"{method} {target[:64]}: the answer is not JSON") from None
        raise _error_from_answer(status, raw, answer_headers)

    async def _json(
        self, method: str, target: str, timeout_s: float, body: object = None
    ) -> dict[str, object]:
        _, answer = await self._request(method, target, timeout_s, body)
        if not isinstance(answer, dict):
            raise ProtocolViolation(f"{method} {target[:64]}: expected a JSON object")
        return answer

    async def partition_count(self, timeout_s: float) -> int:
        health = await self._json("GET", "/v1/health", timeout_s)
        count = health.get("partitions")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ProtocolViolation("GET /v1/health: no partition count")
        return count

    async def get(self, key: str, timeout_s: float) -> Item | None:
        try:
            return item_from_json(await self._json("GET", "/v1/kv/" + _component(key), timeout_s))
        except NotFound as error:
            if "key" in error.details:  # the key is absent (not a wrong route or base URL)
                return None
            raise

    async def put(self, op: Op, timeout_s: float) -> Written:
        obj = op_to_json(op)
        body = {name: obj[name] for name in ("value", "if") if name in obj}
        answer = await self._json("PUT", "/v1/kv/" + _component(op.key), timeout_s, body)
        version, ts = answer.get("version"), answer.get("ts")
        if isinstance(version, bool) or not isinstance(version, int) or not isinstance(ts, str):
            raise ProtocolViolation("PUT: expected version and ts")
        return Written(version=version, ts=ts)

    async def delete(self, op: Op, timeout_s: float) -> Deleted:
        obj = op_to_json(op)
        body = {"if": obj["if"]} if "if" in obj else {}
        answer = await self._json("DELETE", "/v1/kv/" + _component(op.key), timeout_s, body)
        deleted, ts = answer.get("deleted"), answer.get("ts")
        if not isinstance(deleted, bool) or not (ts is None or isinstance(ts, str)):
            raise ProtocolViolation("DELETE: expected deleted and ts")
        return Deleted(deleted=deleted, ts=ts)

    async def transact(self, ops: Sequence[Op], token: str, timeout_s: float) -> Committed:
        body = {"ops": [op_to_json(op) for op in ops], "token": token}
        answer = await self._json("POST", "/v1/txn", timeout_s, body)
        txn_id, ts = answer.get("txn_id"), answer.get("ts")
        if answer.get("committed") is not True or not isinstance(txn_id, str):
            raise ProtocolViolation("POST /v1/txn: expected committed, txn_id and ts")
        if not isinstance(ts, str):
            raise ProtocolViolation("POST /v1/txn: expected committed, txn_id and ts")
        return Committed(txn_id=txn_id, ts=ts)

    async def read(
        self, keys: Sequence[str], timeout_s: float, at: Timestamp | None = None
    ) -> list[Item | None]:
        body: dict[str, object] = {"keys": list(keys)}
        if at is not None:
            body["at"] = str(at)
        answer = await self._json("POST", "/v1/read", timeout_s, body)
        entries = answer.get("items")
        if not isinstance(entries, list) or len(entries) != len(keys):
            raise ProtocolViolation("POST /v1/read: expected one entry per key")
        if at is not None and answer.get("at") != str(at):
            raise ProtocolViolation("POST /v1/read: the answer is not as of the at asked for")
        return [None if _absent(entry) else item_from_json(entry) for entry in entries]

    async def scan(
        self,
        *,
        prefix: str | None,
        start: str | None,
        end: str | None,
        limit: int,
        cursor: str | None,
        timeout_s: float,
    ) -> ScanPage:
        params = {"prefix": prefix, "start": start, "end": end, "cursor": cursor}
        query = "&".join(f"{name}={_component(value)}" for name, value in params.items() if value)
        query = f"limit={limit}" + (f"&{query}" if query else "")
        answer = await self._json("GET", "/v1/scan?" + query, timeout_s)
        items, next_cursor = answer.get("items"), answer.get("cursor")
        if not isinstance(items, list) or not (next_cursor is None or isinstance(next_cursor, str)):
            raise ProtocolViolation("GET /v1/scan: expected items and cursor")
        return ScanPage(items=tuple(item_from_json(item) for item in items), cursor=next_cursor)

    async def txn_outcome(self, token: str, timeout_s: float) -> dict[str, object] | None:
        try:
            return await self._json("GET", "/v1/txn/" + _component(token), timeout_s)
        except NotFound:
            return None

    async def close(self) -> None:
        self._owner.adopt(self._drop_inherited)  # a child never closes its parent's session
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
