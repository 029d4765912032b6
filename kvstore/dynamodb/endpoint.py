"""The DynamoDB endpoint: ``POST /`` in DynamoDB's JSON protocol, on the public API's port.

Theory of operation
-------------------
Every process that serves the public HTTP API also speaks DynamoDB's wire protocol on ``POST /``
(issue 21; reference ``dynamodb-api.md`` sections 1 and 2), so boto3, the AWS CLI and the AWS
SDKs work unmodified with ``endpoint_url`` (or ``AWS_ENDPOINT_URL_DYNAMODB``) set to the API's
base URL. :func:`kvstore.api.app.build_app` mounts :meth:`DynamoEndpoint.handle` when it is
given a :class:`DynamoService`; the API middleware passes the route through, and this handler
does, in order:

1. **Admission**: one of the API's in-flight places (the same ``_Admission`` object, so the two
   ways in share ``api_requests_in_flight_max`` and the coordinator's own gate), taken before
   the body is read. A refusal is ``Overloaded``, i.e. ``ThrottlingException`` (400), which every
   botocore retry mode retries with backoff.
2. **Body**: read as sent, at most ``DYNAMODB_BODY_BYTES_MAX`` (:mod:`kvstore.api.bodies`; a
   body cut off mid-stream closes the connection after the answer).
3. **Authentication**: AWS Signature V4 (:mod:`kvstore.dynamodb.sigv4`) over the bytes as sent,
   compressed or not. The access key id is an API token's name
   (:meth:`~kvstore.api.tokens.TokenStore.entry_by_name`) and the secret access key the token;
   an unknown name, or a token created before the token file stored tokens, is
   ``UnrecognizedClientException``.
4. **Operation**: ``X-Amz-Target: DynamoDB_20120810.<Op>``, where ``<Op>`` is one of the
   service's read or write operations; anything else is ``UnknownOperationException``.
5. **Role**: read-only tokens may call the read operations only, read-write and admin tokens
   every operation, metrics tokens none (``AccessDeniedException``).
6. **Decoding**: ``Content-Type`` must be ``application/x-amz-json-1.0`` (``1.1`` is tolerated),
   else ``SerializationException``; ``Content-Encoding`` ``gzip``/``deflate`` is undone with a cap
   of ``DYNAMODB_DECODED_BODY_BYTES_MAX`` (any other encoding is HTTP 500, as DynamoDB answers);
   the body must be one strict JSON object, else ``SerializationException``.
7. **Call**: ``operations.call(op, body, caller=<token name>)``, which returns the response
   object or raises a catalogue error (:mod:`kvstore.dynamodb.errors` shapes it).

Every answer, error or not, has ``Content-Type: application/x-amz-json-1.0``, an
``x-amzn-RequestId`` (a fresh uuid4, which botocore reports as ``ResponseMetadata.RequestId``)
and ``x-amz-crc32``, the decimal CRC32 of the exact body bytes sent (botocore retries on a
mismatch; some SDKs warn when it is missing). Each request is counted in the API's metrics
(``kvstore_coordinator_http_requests`` and ``..._request_seconds``) under the route name
``dynamodb.<Op>`` for a known operation, else ``dynamodb``: bounded label values. An unexpected
exception is logged (``dynamodb.bug``) and answered ``InternalServerError``; a secret, a token or
a signature never reaches a log line or a message.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import web

from kvstore.api.bodies import CUT_OFF, DECODED, answer_and_close, decode_content, read_capped
from kvstore.api.requests import json_object
from kvstore.api.tokens import Role, TokenEntry, TokenStore
from kvstore.dynamodb import sigv4
from kvstore.dynamodb.errors import error_answer
from kvstore.errors import Forbidden, InternalError, KvError, ValidationError
from kvstore.limits import DYNAMODB_BODY_BYTES_MAX, DYNAMODB_DECODED_BODY_BYTES_MAX
from kvstore.logs import log_event

if TYPE_CHECKING:
    from kvstore.coordinator.engine import Coordinator
    from kvstore.coordinator.metrics import CoordinatorMetrics

__all__ = [
    "DYNAMODB_METHOD",
    "DYNAMODB_PATH",
    "TARGET_PREFIX",
    "CONTENT_TYPE",
    "Operations",
    "Admission",
    "DynamoService",
    "DynamoEndpoint",
]

DYNAMODB_METHOD: Final = "POST"
DYNAMODB_PATH: Final = "/"
TARGET_PREFIX: Final = "DynamoDB_20120810."
CONTENT_TYPE: Final = "application/x-amz-json-1.0"
_ACCEPTED_CONTENT_TYPES: Final = frozenset({CONTENT_TYPE, "application/x-amz-json-1.1"})
_ROUTE: Final = "dynamodb"  # the metrics route name; "dynamodb.<Op>" for a known operation
_UNKNOWN_NAME_CHARS_MAX: Final = 64  # of an unknown operation's name, in its error message

_log = logging.getLogger("kvstore.dynamodb")


class Operations(Protocol):
    """What the endpoint calls (``kvstore.dynamodb.operations.DynamoOperations``)."""

    async def call(
        self, operation: str, request: dict[str, object], *, caller: str
    ) -> dict[str, object]: ...


class Admission(Protocol):
    """The API's in-flight places (``kvstore.api.app._Admission``)."""

    def enter(self) -> None: ...

    def leave(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DynamoService:
    """What :func:`~kvstore.api.app.build_app` needs to serve DynamoDB: how to make the
    operations object for its coordinator, and which operation names read and which write."""

    operations: Callable[[Coordinator], Operations]
    read_operations: frozenset[str]
    write_operations: frozenset[str]


def _serialization(message: str) -> ValidationError:
    return ValidationError("", message, details={"aws_type": "SerializationException"})


class DynamoEndpoint:
    """The ``POST /`` handler over one operations object (see the module docstring)."""

    def __init__(
        self,
        operations: Operations,
        *,
        read_operations: frozenset[str],
        write_operations: frozenset[str],
        tokens: TokenStore,
        admission: Admission,
        metrics: CoordinatorMetrics,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        self.operations = operations
        self.read_operations = read_operations
        self.all_operations = read_operations | write_operations
        self.tokens = tokens
        self.admission = admission
        self.metrics = metrics
        self._now_s = now_s

    @classmethod
    def for_service(
        cls,
        service: DynamoService,
        coordinator: Coordinator,
        tokens: TokenStore,
        admission: Admission,
    ) -> DynamoEndpoint:
        return cls(
            service.operations(coordinator),
            read_operations=service.read_operations,
            write_operations=service.write_operations,
            tokens=tokens,
            admission=admission,
            metrics=coordinator.metrics,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        operation = self._known_operation(request)
        route = f"{_ROUTE}.{operation}" if operation is not None else _ROUTE
        admitted = False
        try:
            self.admission.enter()
            admitted = True
            status, body = 200, await self._serve(request, operation)
        except KvError as error:
            answer = error_answer(error)
            status, body = answer.status, answer.body
        except Exception:
            log_event(_log, "dynamodb.bug", logging.ERROR, route=route)
            _log.exception("dynamodb: unhandled error on %s", route)
            answer = error_answer(InternalError("unhandled error"))
            status, body = answer.status, answer.body
        finally:
            if admitted:
                self.admission.leave()
        try:
            response = _response(status, body)
        except (TypeError, ValueError):  # the operation returned something that is not JSON
            log_event(_log, "dynamodb.bug", logging.ERROR, route=route, error="not JSON")
            answer = error_answer(InternalError("unserialisable answer"))
            status = answer.status
            response = _response(status, answer.body)
        if request.get(CUT_OFF):
            await answer_and_close(request, response)
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    async def _serve(self, request: web.Request, operation: str | None) -> dict[str, object]:
        raw = await read_capped(request, DYNAMODB_BODY_BYTES_MAX)
        caller = self._authenticate(request, raw)
        if operation is None:
            raise _unknown_operation(request.headers.get("X-Amz-Target", ""))
        self._authorize(caller, operation)
        document = _document(request, raw)
        return await self.operations.call(operation, document, caller=caller.name)

    def _known_operation(self, request: web.Request) -> str | None:
        target = request.headers.get("X-Amz-Target", "")
        if not target.startswith(TARGET_PREFIX):
            return None
        name = target[len(TARGET_PREFIX) :]
        return name if name in self.all_operations else None

    def _authenticate(self, request: web.Request, raw: bytes) -> TokenEntry:
        authorization = sigv4.parse_authorization(request.headers.get("Authorization"))
        entry = self.tokens.entry_by_name(authorization.access_key_id)
        if entry is None:
            raise sigv4.auth_error(
                sigv4.UNRECOGNIZED_CLIENT, "The security token included in the request is invalid."
            )
        if entry.secret is None:
            raise sigv4.auth_error(
                sigv4.UNRECOGNIZED_CLIENT,
                "The security token included in the request is invalid: token "
                f"{entry.name!r} was created before API tokens could sign DynamoDB requests; "
                f"re-create it (kvctl token revoke {entry.name}, then kvctl token create "
                f"{entry.name} --role {entry.role.value})",
            )
        raw_path, _, raw_query = request.raw_path.partition("?")
        sigv4.verify(
            authorization,
            secret=entry.secret,
            method=request.method,
            raw_path=raw_path,
            raw_query=raw_query,
            headers=list(request.headers.items()),
            body=raw,
            now_s=self._now_s(),
        )
        return entry

    def _authorize(self, caller: TokenEntry, operation: str) -> None:
        if caller.role.allows(Role.READ_WRITE):
            return
        if caller.role is Role.READ_ONLY and operation in self.read_operations:
            return
        raise Forbidden(
            f"User: {caller.name} is not authorized to perform: dynamodb:{operation} "
            f"(the token's role is {caller.role.value})",
            details={"aws_type": "AccessDeniedException"},
        )


def _unknown_operation(target: str) -> ValidationError:
    shown = json.dumps(target[:_UNKNOWN_NAME_CHARS_MAX])
    return ValidationError(
        "",
        f"Unknown operation: X-Amz-Target {shown} is not {TARGET_PREFIX}<Operation> for an "
        "operation this endpoint serves",
        details={"aws_type": "UnknownOperationException"},
    )


def _document(request: web.Request, raw: bytes) -> dict[str, object]:
    """The request's JSON object, after the content type and encoding checks."""
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type not in _ACCEPTED_CONTENT_TYPES:
        raise _serialization(f"Content-Type must be {CONTENT_TYPE}")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in DECODED:
        try:
            raw = decode_content(raw, encoding, DYNAMODB_DECODED_BODY_BYTES_MAX)
        except ValidationError as error:
            raise _serialization(error.message) from None
    elif encoding not in ("", "identity"):
        raise ValidationError(
            "",
            f"Unsupported Content-Encoding {json.dumps(encoding[:32])}: gzip and deflate are "
            "accepted",
            details={"aws_type": "InternalServerError"},
        )
    try:
        return json_object(raw, "")
    except ValidationError as error:
        raise _serialization(error.message) from None


def _response(status: int, body: dict[str, object]) -> web.Response:
    try:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except UnicodeEncodeError:  # a lone surrogate (from a "\\ud800" escape): send it escaped
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    response = web.Response(body=data, status=status)
    response.headers["Content-Type"] = CONTENT_TYPE
    response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    response.headers["x-amz-crc32"] = str(zlib.crc32(data))
    return response
