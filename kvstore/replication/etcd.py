"""The control plane on etcd 3.4's v3 JSON gateway: :class:`EtcdControlPlane`.

Theory of operation
-------------------
**Why raw aiohttp on the gateway.** etcd 3.4 serves its v3 API as JSON over HTTP (``POST
/v3/...``) beside gRPC. The Python gRPC clients are either unmaintained and broken on protobuf 4
(``etcd3``), blocking (``etcd3gw``), or a beta that pulls in grpcio and protobuf (``aetcd``); see
the table in the replication reference (``../shared/reference/replication.md``, section 3).
aiohttp is already a dependency, its session pools connections, every call is a short POST, and
:class:`ControlPlane` needs five requests (range, txn, put, lease grant, lease keepalive). The
price is our own JSON mapping, kept in the small decoders below, and no watch streams (the
interface has none).

**Calls.** Each call of the :class:`~kvstore.replication.control.ControlPlane` interface starts
an asyncio task on the running loop and returns; the task calls ``done`` when it finishes, so an
answer never comes from inside the call. A call's whole work (every request, every endpoint
tried) is bounded by ``CONTROL_CALL_TIMEOUT_MS``; on expiry the answer is an error, though a
write may still have taken effect (callers read again, as the interface says). Every answer is
``(result, None)`` or ``(None, text)``: unreachable, timed out, closed, an etcd error with its
gRPC code, or a reply we cannot decode. Nothing raises into the caller.

* ``read``: a range on the key (linearizable: no ``serializable`` flag).
* ``write_if``: a txn comparing the key's ``MOD`` revision with the one given, success = put. An
  absent key compares as revision 0 (tested on 3.4.23, as is ``CREATE`` = 0, its equivalent
  here), so ``mod_revision == 0`` means "create if absent" with the same comparison.
* ``beat``: one lease per key, kept by this client. The first beat grants a lease of
  ``ceil(ttl_ms / 1000)`` s (etcd may grant more: its minimum is about 1.5 election timeouts)
  and puts the key under it. Later beats POST one keepalive; when the reply has no ``TTL`` (the
  lease is gone) the beat grants a new lease and puts again. After a successful keepalive a txn
  puts the key again unless it already holds this value under this lease, so a beat with a new
  value updates it and a key deleted by hand comes back, while an unchanged key keeps its
  ``mod_revision``. Beats of one key run one at a time (one lease, never two).
* ``list``: a range from the prefix to its prefix end (the last byte below 0xff incremented,
  the rest dropped; ``\\0`` means "to the end", as clientv3's ``GetPrefixRangeEnd``).

**Endpoints.** Several member URLs may be given. A request goes to the member that answered
last; when it cannot be sent there (the connection is refused or times out) it goes to the
next. A request that may have reached a member is re-sent elsewhere only when re-sending is
harmless (a range or a keepalive), also when the member answers gRPC ``UNAVAILABLE`` (no
leader); a txn, put or grant instead answers the error.

**JSON traps of the gateway** (the same reference, section 3): keys and values are base64;
int64 fields are strings; fields holding their default are omitted (a failed txn has no
``succeeded``, an absent key no ``kvs``, an empty value no ``value``, a keepalive on a dead
lease no ``TTL``), so every absent field reads as the protobuf default; errors are
``{"error", "message", "code"}`` (a streamed reply such as keepalive's wraps its answer in
``result`` and may wrap an error object in ``error``).

**Closing.** :meth:`EtcdControlPlane.close` is synchronous (call it on the loop's thread): it
cancels the calls in flight, whose ``done`` then answers "closed", and schedules the session's
close on the loop; :meth:`EtcdControlPlane.aclose` does the same and waits for it. Calls made
after closing answer "closed" (later, like every answer).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, Generic, TypeVar

import aiohttp

from kvstore.limits import (
    CONTROL_CALL_TIMEOUT_MS,
    CONTROL_CONNECT_TIMEOUT_MS,
    CONTROL_CONNECTIONS_MAX,
)
from kvstore.replication.control import Versioned

__all__ = ["EtcdControlPlane", "prefix_end"]

T = TypeVar("T")
Json = Mapping[str, object]

_GRPC_UNAVAILABLE: Final = 14
_CLOSED: Final = "etcd control plane closed"
_SHOWN_CHARS: Final = 200  # of an unexpected reply body, in an error text


class _Call(Generic[T]):
    """One call's ``done``, answered at most once (by its task, or by :meth:`close`)."""

    __slots__ = ("_done", "answered")

    def __init__(self, done: Callable[[T | None, str | None], None]) -> None:
        self._done = done
        self.answered = False

    def answer(self, result: T | None, error: str | None) -> None:
        if not self.answered:
            self.answered = True
            self._done(result, error)


class _Failure(Exception):
    """Ends a call with its error text."""


class _Unsent(_Failure):
    """The request never reached the member: another endpoint may be tried."""


class _Lost(_Failure):
    """The request may have reached the member but got no answer (the connection broke, or the
    member has no leader): another endpoint may be tried if sending it twice is harmless."""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"  # no key above all keys with this prefix: range to the end
    end[-1] += 1
    return bytes(end)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key(key: str) -> str:
    """A key as etcd's base64 (``surrogateescape``: a key ``list`` found that is not UTF-8
    names the same bytes again)."""
    return _b64(key.encode("utf-8", "surrogateescape"))


def _int(obj: Json, name: str) -> int:
    raw = obj.get(name, 0)  # an omitted field holds its default
    if isinstance(raw, str) and raw.lstrip("-").isdigit():
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise _Failure(f"etcd reply: {name} is {raw!r}, not an integer")


def _bytes(obj: Json, name: str) -> bytes:
    raw = obj.get(name, "")
    if not isinstance(raw, str):
        raise _Failure(f"etcd reply: {name} is {raw!r}, not base64")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise _Failure(f"etcd reply: {name} is not base64") from None


def _objects(obj: Json, name: str) -> list[Json]:
    raw = obj.get(name, [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise _Failure(f"etcd reply: {name} is not a list of objects")
    return raw


def _decode(status: int, text: str) -> Json:
    """A reply's object (a streamed reply's ``result``); an error reply raises its text."""
    try:
        body = json.loads(text.splitlines()[0] if text.strip() else "null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _Failure(f"etcd answered HTTP {status}: {text[:_SHOWN_CHARS]!r}")
    error = body.get("error")
    if isinstance(error, dict):  # a streamed reply's error: {"error": {"grpc_code", "message"}}
        body = {"message": error.get("message"), "code": error.get("grpc_code")}
    if error is not None or status != 200:
        code = body.get("code")
        message = f"etcd error {code}: {body.get('message', text[:_SHOWN_CHARS])}"
        raise (_Lost if code == _GRPC_UNAVAILABLE else _Failure)(message)
    result = body.get("result", body)
    if not isinstance(result, dict):
        raise _Failure(f"etcd reply: result is {result!r}")
    return result


class EtcdControlPlane:
    """:class:`~kvstore.replication.control.ControlPlane` over etcd's JSON gateway; see the
    module docstring. ``endpoints`` are client URLs such as ``http://127.0.0.1:2379``."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        call_timeout_ms: int = CONTROL_CALL_TIMEOUT_MS,
        connect_timeout_ms: int = CONTROL_CONNECT_TIMEOUT_MS,
    ) -> None:
        if not endpoints:
            raise ValueError("an etcd control plane needs at least one endpoint")
        self._endpoints = [url.rstrip("/") for url in endpoints]
        self._call_timeout_s = call_timeout_ms / 1000
        self._connect_timeout_s = connect_timeout_ms / 1000
        self._preferred = 0  # the endpoint that answered last
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[asyncio.Task[None], Callable[[], None]] = {}  # in flight: answer closed
        self._closing: asyncio.Task[None] | None = None
        self._closed = False
        self._leases: dict[str, tuple[int, int]] = {}  # key -> (lease id, granted-for ttl_s)
        self._beat_locks: dict[str, asyncio.Lock] = {}

    # --- the interface -------------------------------------------------------------------

    def read(self, key: str, done: Callable[[Versioned | None, str | None], None]) -> None:
        self._start(lambda: self._read(key), done)

    def write_if(
        self,
        key: str,
        value: bytes,
        mod_revision: int,
        done: Callable[[bool | None, str | None], None],
    ) -> None:
        self._start(lambda: self._write_if(key, value, mod_revision), done)

    def beat(
        self, key: str, value: bytes, ttl_ms: int, done: Callable[[bool | None, str | None], None]
    ) -> None:
        self._start(lambda: self._beat(key, value, ttl_ms), done)

    def list(
        self, prefix: str, done: Callable[[dict[str, bytes] | None, str | None], None]
    ) -> None:
        self._start(lambda: self._list(prefix), done)

    def close(self) -> None:
        """Cancel the calls in flight (each answers "closed") and schedule the session's close."""
        if self._closed:
            return
        self._closed = True
        calls, self._calls = self._calls, {}
        session, self._session = self._session, None
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # nothing ever ran, or the loop is gone and its tasks with it
        for task, answer_closed in calls.items():
            if task.cancel():  # a task cancelled before its first step never runs its handlers
                loop.call_soon(answer_closed)
        if session is not None:
            self._closing = loop.create_task(self._close_session(session, set(calls)))

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the cancelled calls ended and the session is closed."""
        self.close()
        if self._closing is not None:
            await asyncio.shield(self._closing)

    @staticmethod
    async def _close_session(
        session: aiohttp.ClientSession, tasks: set[asyncio.Task[None]]
    ) -> None:
        if tasks:
            await asyncio.wait(tasks)
        await session.close()

    # --- running a call ------------------------------------------------------------------

    def _start(
        self, work: Callable[[], Awaitable[T]], done: Callable[[T | None, str | None], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        call = _Call(done)
        if self._closed:
            loop.call_soon(call.answer, None, _CLOSED)
            return
        if self._session is None:
            self._loop = loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONTROL_CONNECTIONS_MAX),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
            )
        task = loop.create_task(self._run(work, call))
        self._calls[task] = functools.partial(call.answer, None, _CLOSED)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._calls.pop(task, None)

    async def _run(self, work: Callable[[], Awaitable[T]], call: _Call[T]) -> None:
        try:
            async with asyncio.timeout(self._call_timeout_s):
                result = await work()
        except TimeoutError:
            call.answer(None, f"etcd call timed out after {self._call_timeout_s * 1000:g} ms")
        except _Failure as failure:
            call.answer(None, str(failure))
        except Exception as error:  # a bug here must not leave the caller waiting forever
            call.answer(None, f"etcd call failed: {error!r}")
            raise
        else:
            call.answer(result, None)

    async def _post(self, path: str, body: Json, *, resend: bool) -> Json:
        """POST to the member that answered last, then to the next ones while the request was
        not sent or, when ``resend`` (sending it twice is harmless), got no answer."""
        session = self._session
        if session is None:
            raise _Failure(_CLOSED)
        count = len(self._endpoints)
        reasons: list[str] = []
        for step in range(count):
            index = (self._preferred + step) % count
            endpoint = self._endpoints[index]
            try:
                reply = await self._post_once(session, endpoint + path, body)
            except _Failure as failure:
                retry = isinstance(failure, _Unsent) or (resend and isinstance(failure, _Lost))
                if not retry:
                    raise _Failure(f"{endpoint}: {failure}") from None
                reasons.append(f"{endpoint}: {failure}")
                continue
            self._preferred = index
            return reply
        raise _Failure("etcd unreachable: " + "; ".join(reasons))

    @staticmethod
    async def _post_once(session: aiohttp.ClientSession, url: str, body: Json) -> Json:
        try:
            async with session.post(url, json=body) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as error:
            # Only connecting has a timeout on this session: neither error sent the request.
            raise _Unsent(str(error) or type(error).__name__) from None
        except (aiohttp.ClientError, OSError, UnicodeDecodeError) as error:
            raise _Lost(f"request failed: {str(error) or type(error).__name__}") from None
        return _decode(status, text)

    # --- the calls -----------------------------------------------------------------------

    async def _read(self, key: str) -> Versioned | None:
        reply = await self._post("/v3/kv/range", {"key": _key(key)}, resend=True)
        kvs = _objects(reply, "kvs")
        if not kvs:
            return None
        return Versioned(_bytes(kvs[0], "value"), _int(kvs[0], "mod_revision"))

    async def _write_if(self, key: str, value: bytes, mod_revision: int) -> bool:
        encoded = _key(key)
        txn = {
            "compare": [
                {
                    "key": encoded,
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": str(mod_revision),
                }
            ],
            "success": [{"request_put": {"key": encoded, "value": _b64(value)}}],
        }
        reply = await self._post("/v3/kv/txn", txn, resend=False)
        return reply.get("succeeded", False) is True  # a failed txn omits "succeeded"

    async def _list(self, prefix: str) -> dict[str, bytes]:
        raw = prefix.encode("utf-8", "surrogateescape")
        body = {"key": _b64(raw or b"\0"), "range_end": _b64(prefix_end(raw))}
        reply = await self._post("/v3/kv/range", body, resend=True)
        found: dict[str, bytes] = {}
        for kv in _objects(reply, "kvs"):
            found[_bytes(kv, "key").decode("utf-8", "surrogateescape")] = _bytes(kv, "value")
        return found

    async def _beat(self, key: str, value: bytes, ttl_ms: int) -> bool:
        lock = self._beat_locks.setdefault(key, asyncio.Lock())
        async with lock:
            ttl_s = max(1, math.ceil(ttl_ms / 1000))
            held = self._leases.get(key)
            if held is not None and held[1] == ttl_s:
                reply = await self._post("/v3/lease/keepalive", {"ID": str(held[0])}, resend=True)
                if _int(reply, "TTL") > 0:  # a dead lease's reply has no TTL
                    await self._put_unless_held(key, value, held[0])
                    return True
            self._leases.pop(key, None)
            grant = await self._post("/v3/lease/grant", {"TTL": str(ttl_s)}, resend=False)
            lease = _int(grant, "ID")
            if lease == 0 or _int(grant, "TTL") <= 0:
                raise _Failure(f"etcd lease grant answered {dict(grant)!r}")
            self._leases[key] = (lease, ttl_s)  # a failed put is repaired by the next beat
            body = {"key": _key(key), "value": _b64(value), "lease": str(lease)}
            await self._post("/v3/kv/put", body, resend=False)
            return True

    async def _put_unless_held(self, key: str, value: bytes, lease: int) -> None:
        encoded = _key(key)
        txn = {
            "compare": [
                {"key": encoded, "target": "LEASE", "result": "EQUAL", "lease": str(lease)},
                {"key": encoded, "target": "VALUE", "result": "EQUAL", "value": _b64(value)},
            ],
            "failure": [
                {"request_put": {"key": encoded, "value": _b64(value), "lease": str(lease)}}
            ],
        }
        await self._post("/v3/kv/txn", txn, resend=False)
