"""Helpers for tests of the public HTTP JSON API (docs/api.md) against a real coordinator.

:func:`api_cluster` starts a 3-node, 8-partition cluster with one coordinator (``c1``) and always
kills it again. :class:`ApiClient` sends requests with an exact, already percent-encoded target
(``yarl.URL(..., encoded=True)``: nothing is re-quoted on the way) and returns a :class:`Reply`
with the status, headers, raw bytes and parsed JSON. :func:`assert_error` checks the error
envelope every failure shares. :func:`read_raw_reply` reads a response from a plain socket, for
requests an HTTP client library would not send (a huge ``Content-Length`` with a short body, an
endless chunked body).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from kvstore.errors import ErrorCode
from support.cluster import LocalNodes

TS_PATTERN: Final = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.([0-9a-f]{16})")
TXN_ID_PATTERN: Final = re.compile(r"[0-9a-f]{32}")
ITEM_MEMBERS: Final = frozenset({"key", "value", "version", "ts"})
ERROR_MEMBERS: Final = frozenset({"code", "number", "message", "retryable"})
REQUEST_TIMEOUT_S: Final = 30.0
PRODUCTION_TIMING: Final[dict[str, int]] = {}  # no timing in the cluster file: the defaults
_UNSET: Final = object()
_BYTES_INLINE_MAX: Final = 512 * 1024  # larger bodies are streamed (aiohttp warns otherwise)


@contextlib.contextmanager
def api_cluster(root: Path) -> Iterator[LocalNodes]:
    """Three storage nodes (8 partitions) and coordinator ``c1``; killed on the way out.

    The protocol times are the production defaults, not ``FAST_TIMING``: no API test waits for
    recovery, and with a 1.5 s decision deadline a loaded machine that stalls a coordinator
    between prepare and decide would see the anchor cancel a transaction the test expects to
    commit."""
    nodes = LocalNodes(
        root, ("n1", "n2", "n3"), partitions=8, coordinator_ids=("c1",), timing=PRODUCTION_TIMING
    )
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


def unique(prefix: str) -> str:
    """A key prefix (or token) no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def quote_all(text: str) -> str:
    """Percent-encode every byte of the UTF-8 form that is not unreserved (``/`` included)."""
    return quote(text, safe="")


def kv_path(key: str) -> str:
    return "/v1/kv/" + quote_all(key)


def ts_order(ts: object) -> tuple[int, int]:
    """The (physical, logical) part of a timestamp string, asserting its documented form."""
    assert isinstance(ts, str), ts
    match = TS_PATTERN.fullmatch(ts)
    assert match is not None, f"not a timestamp: {ts!r}"
    return int(match.group(1)), int(match.group(2))


def keys_on_distinct_partitions(nodes: LocalNodes, prefix: str, count: int) -> list[str]:
    """``count`` keys starting with ``prefix``, each on a different partition."""
    partition_of = nodes.config.cluster_map.partitions.partition_of
    keys: dict[int, str] = {}
    for index in range(10_000):
        key = f"{prefix}/{index}"
        keys.setdefault(int(partition_of(key)), key)
        if len(keys) == count:
            return list(keys.values())
    raise AssertionError(f"fewer than {count} partitions reachable")


def key_on_partition_of(nodes: LocalNodes, prefix: str, other: str) -> str:
    """A key starting with ``prefix`` on the partition of ``other``."""
    partition_of = nodes.config.cluster_map.partitions.partition_of
    for index in range(10_000):
        key = f"{prefix}/{index}"
        if partition_of(key) == partition_of(other):
            return key
    raise AssertionError(f"no key on the partition of {other!r}")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes
    body: Any  # the parsed JSON body, or None when it is not JSON

    def __repr__(self) -> str:  # shown by failed assertions
        return f"Reply({self.status}, {self.raw[:600]!r})"


class ApiClient:
    """Requests to one coordinator with one bearer token (overridable per request)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.session = session
        self.base = base
        self.token = token

    async def request(
        self,
        method: str,
        target: str,
        *,
        json_body: object = _UNSET,
        data: bytes | None = None,
        token: object = _UNSET,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """``target`` is sent as it is (already percent-encoded); ``json_body`` is encoded
        strictly (no NaN), ``data`` is sent raw."""
        sent_headers: dict[str, str] = dict(headers or {})
        bearer = self.token if token is _UNSET else token
        if bearer is not None:
            sent_headers.setdefault("Authorization", f"Bearer {bearer}")
        if json_body is not _UNSET:
            data = json.dumps(json_body, allow_nan=False).encode("utf-8")
            sent_headers.setdefault("Content-Type", "application/json")
        url = URL(self.base + target, encoded=True)
        payload = io.BytesIO(data) if data is not None and len(data) > _BYTES_INLINE_MAX else data
        async with self.session.request(
            method,
            url,
            data=payload,
            headers=sent_headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        ) as response:
            raw = await response.read()
            body: Any = None
            if response.content_type == "application/json":
                body = json.loads(raw)
            return Reply(response.status, response.headers, raw, body)

    # --- one method per endpoint ------------------------------------------------------------

    async def get_item(self, key: str, **kwargs: Any) -> Reply:
        return await self.request("GET", kv_path(key), **kwargs)

    async def put_item(
        self, key: str, value: object, condition: object = _UNSET, **kwargs: Any
    ) -> Reply:
        body: dict[str, object] = {"value": value}
        if condition is not _UNSET:
            body["if"] = condition
        return await self.request("PUT", kv_path(key), json_body=body, **kwargs)

    async def delete_item(self, key: str, body: object = _UNSET, **kwargs: Any) -> Reply:
        return await self.request("DELETE", kv_path(key), json_body=body, **kwargs)

    async def txn(
        self, ops: Sequence[Mapping[str, object]], txn_token: str | None = None, **kwargs: Any
    ) -> Reply:
        body: dict[str, object] = {"ops": list(ops)}
        if txn_token is not None:
            body["token"] = txn_token
        return await self.request("POST", "/v1/txn", json_body=body, **kwargs)

    async def read(self, keys: Sequence[str], **kwargs: Any) -> Reply:
        return await self.request("POST", "/v1/read", json_body={"keys": list(keys)}, **kwargs)

    async def scan(self, query: Mapping[str, object] | None = None, **kwargs: Any) -> Reply:
        pairs = [f"{quote_all(k)}={quote_all(str(v))}" for k, v in (query or {}).items()]
        target = "/v1/scan" + ("?" + "&".join(pairs) if pairs else "")
        return await self.request("GET", target, **kwargs)

    async def txn_outcome(self, txn_token: str, **kwargs: Any) -> Reply:
        return await self.request("GET", "/v1/txn/" + quote_all(txn_token), **kwargs)

    # --- composite ----------------------------------------------------------------------------

    async def value_of(self, key: str) -> object:
        """The item at ``key`` (its JSON form), or None when absent."""
        reply = await self.get_item(key)
        if reply.status == 404:
            assert_error(reply, "NotFound")
            return None
        assert reply.status == 200, reply
        return reply.body

    async def scan_all(self, query: Mapping[str, object], pages_max: int = 1_000) -> list[str]:
        """Every key of the range, page by page, following the cursor to its end."""
        keys: list[str] = []
        cursor: str | None = None
        for _ in range(pages_max):
            reply = await self.scan({**query, **({"cursor": cursor} if cursor else {})})
            assert reply.status == 200, reply
            assert set(reply.body) == {"items", "cursor"}, reply
            keys += [item["key"] for item in reply.body["items"]]
            cursor = reply.body["cursor"]
            if cursor is None:
                return keys
            assert isinstance(cursor, str) and cursor, reply
        raise AssertionError(f"no end of the scan in {pages_max} pages")


@contextlib.asynccontextmanager
async def api_client(base: str, token: str | None) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, base, token)


def assert_item(item: object, key: str, value: object = _UNSET) -> dict[str, Any]:
    """``item`` is exactly ``{"key", "value", "version", "ts"}`` for ``key`` (and ``value``)."""
    assert isinstance(item, dict), item
    assert set(item) == ITEM_MEMBERS, item
    assert item["key"] == key, item
    if value is not _UNSET:
        assert item["value"] == value, item
    assert isinstance(item["version"], int) and not isinstance(item["version"], bool), item
    assert item["version"] >= 1, item
    ts_order(item["ts"])
    return item


def assert_error(reply: Reply, code: str, *, status: int | None = None) -> dict[str, Any]:
    """The error envelope of docs/api.md: ``code``, ``number``, ``message``, ``retryable``, and
    the catalogue's status (or ``status`` where the contract says otherwise, as for 405)."""
    spec = ErrorCode[code]
    expected_status = spec.http_status if status is None else status
    assert reply.status == expected_status, reply
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply
    assert isinstance(reply.body, dict) and set(reply.body) == {"error"}, reply
    error = reply.body["error"]
    assert isinstance(error, dict) and set(error) >= ERROR_MEMBERS, reply
    assert error["code"] == code, reply
    assert error["number"] == spec.number, reply
    assert isinstance(error["message"], str) and error["message"], reply
    assert isinstance(error["retryable"], bool), reply
    if code not in {"TransactionCanceled"}:  # refined by its reasons
        assert error["retryable"] is spec.retryable, reply
    if expected_status == 401:
        assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer"), reply
    if expected_status == 503:
        assert reply.headers.get("Retry-After", "").isdigit(), reply
    return error


def sync_request(
    base: str, method: str, target: str, data: bytes | None, token: str | None
) -> tuple[int, str, bytes]:
    """One blocking request (for hypothesis tests, which drive sync functions)."""
    request = urllib.request.Request(base + target, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("Content-Type", ""), error.read()


@dataclass(frozen=True, slots=True)
class RawReply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def read_raw_reply(reader: asyncio.StreamReader) -> RawReply:
    """One HTTP/1.1 response with a ``Content-Length`` from ``reader``."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    length = int(headers.get("Content-Length", "0"))
    body = await reader.readexactly(length)
    return RawReply(int(status_line.split(" ", 2)[1]), headers, body)


def parse_host_port(base: str) -> tuple[str, int]:
    host, _, port = URL(base).raw_authority.rpartition(":")
    return host, int(port)
