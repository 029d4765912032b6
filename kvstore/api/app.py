"""The public HTTP JSON API (docs/api.md) over a coordinator library object.

Theory of operation
-------------------
:func:`build_app` returns an aiohttp application whose routes are the table ``ROUTES``: method,
path, route name, the role a token needs, and the handler. A test compares the table with the
OpenAPI document (``kvstore/api/openapi.json``, served at ``GET /v1/openapi.json``), so the two
cannot drift apart.

One middleware wraps every request, in this order: authenticate the bearer token and check that
its role (:class:`~kvstore.api.tokens.Role`) allows the route (except ``GET /v1/health``); admit
it (every route but health, metrics and the OpenAPI document: at most
``requests_in_flight_max`` requests at once, and none while the coordinator is behind on its
work, :mod:`kvstore.runtime.admission`), else answer ``Overloaded`` before reading its body;
run the handler; turn any :class:`~kvstore.errors.KvError` into the catalogue's status and
``{"error": {...}}`` body (``Retry-After`` on 503, ``WWW-Authenticate`` on 401); turn aiohttp's
own 404/405 into the same form; turn anything else into a logged 500 ``InternalError`` (a bug,
never a crash); count the request by route and status.

Operator calls live under ``/v1/admin/`` and need role ``admin``: ``POST /v1/admin/recover``
runs :mod:`kvstore.recover` from this coordinator (with the cluster secret it already holds), so
an operator with an admin token needs neither the secret nor a shell on a cluster host. Token
management stays with ``kvctl token`` on purpose: each host holds its own copy of the token file,
and a token an API call created on one coordinator would be valid there only.

Handlers only parse (:mod:`kvstore.api.requests`), call the
:class:`~kvstore.coordinator.engine.Coordinator`, and render
(:mod:`kvstore.coordinator.answers`). Bodies are read with a cap (:mod:`kvstore.api.bodies`): a
``Content-Length`` above ``API_BODY_BYTES_MAX`` is refused with 413 before a byte of the body is
read, and a chunked body is cut off as soon as it passes the cap: the 413 goes out with
``Connection: close`` and the connection is closed right after it, so not another byte of that
body is read. A ``gzip`` or ``deflate`` body is decompressed by the API itself, capped the same
way (the server runs with aiohttp's own decompression off, ``AUTO_DECOMPRESS``, because the
DynamoDB endpoint must see the bytes its callers signed). Keys and tokens in paths are decoded
from the raw request target, so ``%2F`` stays inside the key.

The DynamoDB endpoint (:mod:`kvstore.dynamodb.endpoint`, issue 21) shares the port: given a
:class:`~kvstore.dynamodb.endpoint.DynamoService`, :func:`build_app` serves ``POST /`` with it.
It is not a route of ``ROUTES`` (nor of the OpenAPI document): it authenticates with AWS
Signature V4 instead of a bearer token, and answers in DynamoDB's error shapes, so the
middleware passes it through; the endpoint takes the same admission places and counts the same
metrics itself. Other methods on ``/`` get the API's usual 405.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

from kvstore.api import requests as parse
from kvstore.api.bodies import (
    AUTO_DECOMPRESS,
    CUT_OFF,
    DECODED,
    answer_and_close,
    decode_content,
    read_capped,
)
from kvstore.api.responses import JSON_CONTENT_TYPE, error_response, json_response
from kvstore.api.tokens import Role, TokenStore
from kvstore.config import ClusterConfig
from kvstore.coordinator.answers import entry_to_json, item_to_json, record_to_json, ts_to_json
from kvstore.coordinator.engine import Coordinator
from kvstore.coordinator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kvstore.dynamodb import janitor
from kvstore.dynamodb.endpoint import DYNAMODB_METHOD, DYNAMODB_PATH, DynamoEndpoint, DynamoService
from kvstore.dynamodb.operations import READ_OPERATIONS, WRITE_OPERATIONS, DynamoOperations
from kvstore.errors import (
    InternalError,
    KvError,
    NotFound,
    Overloaded,
    Unavailable,
    ValidationError,
)
from kvstore.limits import API_BODY_BYTES_MAX, API_REQUESTS_IN_FLIGHT_MAX
from kvstore.logs import log_event
from kvstore.recover import drive, find_stuck, report_to_json
from kvstore.runtime.admission import RetryAfter
from kvstore.types import Timestamp

__all__ = ["Route", "ROUTES", "AUTO_DECOMPRESS", "build_app", "openapi_document"]

_log = logging.getLogger("kvstore.api")

Handler = Callable[["Api", web.Request], Awaitable[web.StreamResponse]]
OwnHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # as in the OpenAPI document
    name: str
    role: Role | None  # None: no token needed
    handler: Handler
    admitted: bool = True  # counts against API_REQUESTS_IN_FLIGHT_MAX (False: always served)


def openapi_document() -> bytes:
    """The checked-in OpenAPI 3.1 document."""
    return resources.files("kvstore.api").joinpath("openapi.json").read_bytes()


class Api:
    """The handlers, bound to one coordinator, token store, identity and cluster file."""

    def __init__(
        self,
        coordinator: Coordinator,
        tokens: TokenStore,
        coordinator_id: str,
        config: ClusterConfig,
        role: str = "coordinator",
    ) -> None:
        self.coordinator = coordinator
        self.tokens = tokens
        self.coordinator_id = coordinator_id
        self.role = role
        self.config = config
        self.metrics = coordinator.metrics
        self.openapi = openapi_document()

    # --- request helpers --------------------------------------------------------------------

    @staticmethod
    def _raw_tail(request: web.Request, prefix: str, field: str) -> str:
        """The percent-decoded rest of the raw path after ``prefix``."""
        raw = request.raw_path.split("?", 1)[0]
        if not raw.startswith(prefix) or len(raw) == len(prefix):
            raise ValidationError(field, "missing from the path")
        return parse.decode_component(raw[len(prefix) :], field)

    def _key(self, request: web.Request) -> str:
        return self._raw_tail(request, "/v1/kv/", "key")

    @staticmethod
    async def _body(request: web.Request, *, optional: bool = False) -> dict[str, object]:
        raw = await read_capped(request, API_BODY_BYTES_MAX)
        encoding = request.headers.get("Content-Encoding", "")
        if encoding.strip().lower() in DECODED:  # others pass as they are, as with aiohttp's own
            raw = decode_content(raw, encoding, API_BODY_BYTES_MAX)
        if not raw.strip() and optional:
            return {}
        return parse.json_object(raw)

    # --- handlers ---------------------------------------------------------------------------

    async def get_item(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        item = await self.coordinator.get(key)
        if item is None:
            raise NotFound("no item with this key", details={"key": key})
        return json_response(item_to_json(item))

    async def put_item(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        op = parse.put_op(key, await self._body(request))
        reply = await self.coordinator.write(op)
        return json_response({"version": reply.version, "ts": _ts(reply.ts)})

    async def delete_item(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        op = parse.delete_op(key, await self._body(request, optional=True))
        reply = await self.coordinator.write(op)
        return json_response({"deleted": reply.existed, "ts": _ts(reply.ts)})

    async def transact(self, request: web.Request) -> web.StreamResponse:
        ops, token = parse.txn_request(await self._body(request), self.coordinator.txn_ops_max)
        result = await self.coordinator.transact(ops, token=token)
        return json_response(
            {"committed": True, "ts": ts_to_json(result.ts), "txn_id": result.txn_id}
        )

    async def read(self, request: web.Request) -> web.StreamResponse:
        query = parse.read_request(await self._body(request))
        entries = await self.coordinator.read(query.keys, at=query.at)
        answer: dict[str, object] = {"items": [entry_to_json(entry) for entry in entries]}
        if query.at is not None:
            answer["at"] = ts_to_json(query.at)
        return json_response(answer)

    async def scan(self, request: web.Request) -> web.StreamResponse:
        raw_query = request.raw_path.partition("?")[2]
        query = parse.scan_query(raw_query)
        page = await self.coordinator.scan(
            start=query.start, end=query.end, limit=query.limit, after=query.after
        )
        cursor = parse.encode_cursor(page.after) if page.after is not None else None
        return json_response(
            {"items": [item_to_json(item) for item in page.items], "cursor": cursor}
        )

    async def txn_outcome(self, request: web.Request) -> web.StreamResponse:
        token = self._raw_tail(request, "/v1/txn/", "token")
        record = await self.coordinator.txn_record(token)
        if record is None:
            raise NotFound(
                "no transaction with this idempotency token (unknown, or older than the "
                "idempotency window)"
            )
        return json_response(record_to_json(token, record))

    async def health(self, request: web.Request) -> web.StreamResponse:
        del request
        cluster_map = self.coordinator.cluster_map
        return json_response(
            {
                "status": "ok",
                "role": self.role,
                "id": self.coordinator_id,
                "partitions": cluster_map.partitions.partition_count,
                "epoch": cluster_map.epoch,
            }
        )

    async def admin_recover(self, request: web.Request) -> web.StreamResponse:
        asked = parse.recover_request(
            await self._body(request, optional=True), self.config.partition_config.intent_stale_ms
        )
        try:
            stuck = await find_stuck(self.config, older_than_ms=asked.older_than_ms)
        except KvError as error:  # the message may name a node's address: keep only the code
            raise Unavailable(
                "a storage node did not answer the listing of stuck transactions",
                details={"cause": error.code.name},
            ) from None
        driven = [] if asked.dry_run or not stuck else await drive(self.config, stuck)
        log_event(
            _log,
            "api.recover",
            coordinator=self.coordinator_id,
            older_than_ms=asked.older_than_ms,
            dry_run=asked.dry_run,
            stuck=len(stuck),
            driven=len(driven),
        )
        return json_response(
            {
                "older_than_ms": asked.older_than_ms,
                "dry_run": asked.dry_run,
                "transactions": report_to_json(stuck, driven),
            }
        )

    async def openapi_json(self, request: web.Request) -> web.StreamResponse:
        del request
        return web.Response(body=self.openapi, content_type=JSON_CONTENT_TYPE)

    async def metrics_page(self, request: web.Request) -> web.StreamResponse:
        del request
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response


def _ts(ts: Timestamp | None) -> str | None:
    return ts_to_json(ts) if ts is not None else None


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/v1/kv/{key}", "get", Role.READ_ONLY, Api.get_item),
    Route("PUT", "/v1/kv/{key}", "put", Role.READ_WRITE, Api.put_item),
    Route("DELETE", "/v1/kv/{key}", "delete", Role.READ_WRITE, Api.delete_item),
    Route("POST", "/v1/txn", "txn", Role.READ_WRITE, Api.transact),
    Route("POST", "/v1/read", "read", Role.READ_ONLY, Api.read),
    Route("GET", "/v1/scan", "scan", Role.READ_ONLY, Api.scan),
    Route("GET", "/v1/txn/{token}", "txn_outcome", Role.READ_ONLY, Api.txn_outcome),
    Route("GET", "/v1/health", "health", None, Api.health, admitted=False),
    Route("GET", "/v1/openapi.json", "openapi", Role.READ_ONLY, Api.openapi_json, admitted=False),
    Route("POST", "/v1/admin/recover", "admin_recover", Role.ADMIN, Api.admin_recover),
    Route("GET", "/metrics", "metrics", Role.METRICS, Api.metrics_page, admitted=False),
)

# aiohttp path patterns: a key or token may contain anything, "/" and newlines included.
_PATTERNS: Final = {"{key}": r"{key:[\s\S]+}", "{token}": r"{token:[\s\S]+}"}


def _aiohttp_path(path: str) -> str:
    for name, pattern in _PATTERNS.items():
        path = path.replace(name, pattern)
    return path


class _Admission:
    """The requests being served, against the limit, the coordinator's own gate on top, and the
    ``Retry-After`` of the refusals (:class:`~kvstore.runtime.admission.RetryAfter`)."""

    def __init__(self, coordinator: Coordinator, limit: int) -> None:
        self.coordinator = coordinator
        self.limit = limit
        self.in_flight = 0
        self.gauge = coordinator.metrics.requests_in_flight
        self.retry_after = RetryAfter()

    def enter(self) -> None:
        """Take a place or raise ``Overloaded`` (before the request's body is read)."""
        now_ms = asyncio.get_running_loop().time() * 1000
        try:
            if self.in_flight >= self.limit:
                raise Overloaded(
                    "this coordinator is serving as many requests as it can; retry after the "
                    "Retry-After delay",
                    details={"limit": self.limit},
                )
            self.coordinator.admit()  # behind on its work
        except Overloaded as refused:
            refused.details["retry_after_s"] = self.retry_after.refused(now_ms)
            raise
        self.retry_after.admitted(now_ms)
        self.in_flight += 1
        self.gauge.set(self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1
        self.gauge.set(self.in_flight)


def _add_route(app: web.Application, api: Api, route: Route) -> str:
    """Register ``route`` bound to ``api``; its canonical path, as the middleware sees it."""
    path = _aiohttp_path(route.path)
    handler = route.handler

    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(api, request)

    resource_route = app.router.add_route(route.method, path, bound)
    return resource_route.resource.canonical if resource_route.resource else path


DYNAMODB_SERVICE: Final = DynamoService(DynamoOperations, READ_OPERATIONS, WRITE_OPERATIONS)


def build_app(
    coordinator: Coordinator,
    tokens: TokenStore,
    coordinator_id: str,
    config: ClusterConfig,
    *,
    requests_in_flight_max: int = API_REQUESTS_IN_FLIGHT_MAX,
    role: str = "coordinator",
    own_routes: Sequence[tuple[str, str, OwnHandler]] = (),
    dynamodb: DynamoService | None = None,
) -> web.Application:
    """The API application; the caller owns the coordinator's life cycle and runs it with
    ``web.AppRunner(app, auto_decompress=AUTO_DECOMPRESS, ...)``. A storage node serving the
    API passes ``role="node"`` and its own pages (``own_routes``: method, path, handler), which
    the middleware passes through untouched (they check their own credentials) and does not
    count; one of them replaces the route of ``ROUTES`` with the same method and path (the
    node's ``/metrics`` serves its coordinator's metrics too). ``POST /`` is the DynamoDB endpoint
    over ``dynamodb.operations(coordinator)`` (by default the real operations, kvstore.dynamodb;
    tests may pass another, see the module docstring)."""
    api = Api(coordinator, tokens, coordinator_id, config, role)
    routes: dict[tuple[str, str], Route] = {}
    own_paths = frozenset((method, path) for method, path, _ in own_routes)
    admission = _Admission(coordinator, requests_in_flight_max)
    own_paths |= {(DYNAMODB_METHOD, DYNAMODB_PATH)}

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        pattern = resource.canonical if resource is not None else ""
        if (request.method, pattern) in own_paths:
            return await handler(request)
        started = time.perf_counter()
        route = routes.get((request.method, pattern))
        name = route.name if route is not None else "unknown"
        counted = False  # this request holds one of the in-flight places
        try:
            if route is not None and route.role is not None:
                tokens.authorize(request.headers.get("Authorization"), route.role)
            if route is not None and route.admitted:
                admission.enter()
                counted = True
            response = await handler(request)
        except KvError as error:
            response = error_response(error)
            if request.get(CUT_OFF):
                await answer_and_close(request, response)
        except web.HTTPMethodNotAllowed as error:
            response = error_response(
                ValidationError("method", f"{request.method} is not allowed here"), 405
            )
            response.headers["Allow"] = ", ".join(sorted(error.allowed_methods))
        except web.HTTPNotFound:
            response = error_response(NotFound(f"no route {request.path[:200]!r}"))
        except web.HTTPException as error:  # what aiohttp itself refuses (e.g. a bad header)
            response = error_response(ValidationError("request", error.reason), error.status)
        except Exception:
            log_event(_log, "api.bug", logging.ERROR, route=name, method=request.method)
            _log.exception("api: unhandled error on %s %s", request.method, name)
            response = error_response(InternalError("an internal error; see the coordinator log"))
        finally:
            if counted:
                admission.leave()
        api.metrics.requests.labels(name, str(response.status)).inc()
        api.metrics.request_seconds.labels(name).observe(time.perf_counter() - started)
        return response

    app = web.Application(middlewares=[guard], client_max_size=API_BODY_BYTES_MAX)
    for route in ROUTES:
        if (route.method, route.path) not in own_paths:
            routes[(route.method, _add_route(app, api, route))] = route
    for method, path, own in own_routes:
        app.router.add_route(method, path, own)
    _mount_dynamodb(app, dynamodb, coordinator, tokens, admission)
    return app


def _mount_dynamodb(
    app: web.Application,
    dynamodb: DynamoService | None,
    coordinator: Coordinator,
    tokens: TokenStore,
    admission: _Admission,
) -> None:
    """``POST /`` (the DynamoDB endpoint); with the real tables, their janitor too."""
    endpoint = DynamoEndpoint.for_service(
        dynamodb or DYNAMODB_SERVICE, coordinator, tokens, admission
    )
    app.router.add_route(DYNAMODB_METHOD, DYNAMODB_PATH, endpoint.handle)
    if dynamodb is None:  # purge deleted tables while the application runs
        app.cleanup_ctx.append(janitor.background(coordinator))
