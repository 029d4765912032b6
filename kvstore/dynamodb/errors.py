"""Catalogue errors as DynamoDB shapes them: the ``__type``, the HTTP status and the body.

Theory of operation
-------------------
Everything below the endpoint raises :class:`~kvstore.errors.KvError` subclasses of the one
catalogue (:mod:`kvstore.errors`); only here do they become DynamoDB's wire form (reference
``dynamodb-api.md`` section 1, "Errors"). One table, ``_BY_CODE``, gives every catalogue code
its DynamoDB error name and HTTP status. A raiser that knows the exact AWS name puts it in
``details["aws_type"]`` (``ResourceNotFoundException`` vs ``ResourceInUseException``,
``SerializationException``, ``InvalidSignatureException``...), which wins over the table; the
status then comes from the name (``InternalServerError`` 500, ``ServiceUnavailable`` 503, every
other 400, as DynamoDB does).

The body is ``{"__type": "com.amazonaws.dynamodb.v20120810#<Name>", "message": "..."}``,
with ``Message`` instead for the three errors whose model spells it so
(``TransactionCanceledException``, ``IdempotentParameterMismatchException``,
``TransactionInProgressException``); botocore reads either. Two details become top-level members
read by clients as ``e.response[...]``: ``details["cancellation_reasons"]`` (a list) as
``CancellationReasons`` and ``details["item"]`` (a wire-form item) as ``Item``. No other detail
is sent.

Decisions:

* ``Overloaded`` is ``ThrottlingException`` with 400, not the catalogue's 503: every botocore
  retry mode retries it, with its own backoff.
* ``OutcomeUnknown`` is ``InternalServerError`` (500): retried by the SDKs, and a retried
  ``TransactWriteItems`` carries the same ``ClientRequestToken``, so the retry is safe.
* ``TimestampTooOld`` is ``TransactionConflictException`` (another writer got there first).
* ``Unavailable``, ``ClockSkew``, ``WrongOwner`` and ``DiskFull`` are ``ServiceUnavailable``
  (503): retried by every SDK; DynamoDB has no finer name for them.
* ``TooLarge`` (a request body over ``DYNAMODB_BODY_BYTES_MAX``) is ``ValidationException``
  with HTTP 413: DynamoDB refuses oversize requests with a ``ValidationException``, and the
  status says why the connection may be closed without the rest of the body being read.
* ``Unauthorized`` is ``UnrecognizedClientException`` and ``Forbidden`` is
  ``AccessDeniedException``, both 400 as DynamoDB answers them.

Server-side failures (the catalogue codes answered 500 or 503, and throttling) get fixed
messages naming only the catalogue code: the message of an internal error may name a node's
address or a Python object, and is for the coordinator's log, never for the caller. So does
any other error whose details name a partition or a node (a store call refused as a whole,
which the coordinator words as "partition 3 on node n2: ..."): its message becomes the
catalogue's summary of its code. The operations translate the refusals they expect into AWS's
words before they get here; this is the net under the ones they do not. Errors the
endpoint raises on purpose keep their message whatever their status (an unsupported
``Content-Encoding`` is a ``ValidationError`` refined to ``InternalServerError``, answered 500
with a message saying which encodings work).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from kvstore.errors import ErrorCode, KvError

__all__ = [
    "TYPE_PREFIX",
    "ErrorAnswer",
    "aws_type_of",
    "error_answer",
]

TYPE_PREFIX: Final = "com.amazonaws.dynamodb.v20120810#"

_INTERNAL: Final = "InternalServerError"
_UNAVAILABLE: Final = "ServiceUnavailable"
_THROTTLING: Final = "ThrottlingException"

_BY_CODE: Final[Mapping[ErrorCode, tuple[str, int]]] = {
    ErrorCode.TransactionConflict: ("TransactionConflictException", 400),
    ErrorCode.TimestampTooOld: ("TransactionConflictException", 400),
    ErrorCode.TransactionInProgress: ("TransactionInProgressException", 400),
    ErrorCode.ClockSkew: (_UNAVAILABLE, 503),
    ErrorCode.Overloaded: (_THROTTLING, 400),
    ErrorCode.Unavailable: (_UNAVAILABLE, 503),
    ErrorCode.WrongOwner: (_UNAVAILABLE, 503),
    ErrorCode.DiskFull: (_UNAVAILABLE, 503),
    ErrorCode.ValidationError: ("ValidationException", 400),
    ErrorCode.ConditionFailed: ("ConditionalCheckFailedException", 400),
    ErrorCode.NotFound: ("ResourceNotFoundException", 400),
    ErrorCode.TooLarge: ("ValidationException", 413),
    ErrorCode.TransactionCanceled: ("TransactionCanceledException", 400),
    ErrorCode.IdempotencyMismatch: ("IdempotentParameterMismatchException", 400),
    ErrorCode.Unauthorized: ("UnrecognizedClientException", 400),
    ErrorCode.Forbidden: ("AccessDeniedException", 400),
    ErrorCode.ProtocolViolation: (_INTERNAL, 500),
    ErrorCode.SnapshotTooOld: ("ValidationException", 400),
    ErrorCode.OutcomeUnknown: (_INTERNAL, 500),
    ErrorCode.InternalError: (_INTERNAL, 500),
}

# The status of an error named by details["aws_type"]: DynamoDB answers all others with 400.
_STATUS_BY_TYPE: Final[Mapping[str, int]] = {_INTERNAL: 500, _UNAVAILABLE: 503}

# Errors whose model member is "Message", not "message" (chiefbiiko/dynamodb#31).
_CAPITAL_MESSAGE: Final = frozenset(
    {
        "TransactionCanceledException",
        "IdempotentParameterMismatchException",
        "TransactionInProgressException",
    }
)

# What the caller reads for server-side failures, whatever the internal message said.
_INTERNAL_MESSAGE: Final = "Internal server error"
_UNAVAILABLE_MESSAGE: Final = "The service is currently unavailable; retry the request"
_FIXED_MESSAGES: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.InternalError: _INTERNAL_MESSAGE,
    ErrorCode.ProtocolViolation: _INTERNAL_MESSAGE,
    ErrorCode.OutcomeUnknown: (
        "Internal server error: the outcome of the request is unknown (it may or may not have "
        "taken effect); a retry of TransactWriteItems with the same ClientRequestToken is safe"
    ),
    ErrorCode.Unavailable: _UNAVAILABLE_MESSAGE,
    ErrorCode.ClockSkew: _UNAVAILABLE_MESSAGE,
    ErrorCode.WrongOwner: _UNAVAILABLE_MESSAGE,
    ErrorCode.DiskFull: _UNAVAILABLE_MESSAGE,
    ErrorCode.Overloaded: "Rate of requests exceeds the allowed throughput.",
}

# Details naming a place inside the cluster: an error carrying one has a message naming it too.
_LOCATED: Final = frozenset({"partition", "node"})

_AWS_TYPE: Final = re.compile(r"[A-Z][A-Za-z0-9]{1,99}")


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """A DynamoDB error answer: HTTP status, error name and JSON body."""

    status: int
    aws_type: str
    body: dict[str, object]


def aws_type_of(error: KvError) -> tuple[str, int]:
    """The DynamoDB error name and HTTP status of ``error`` (the table, refined by
    ``details["aws_type"]``)."""
    aws_type, status = _BY_CODE[error.code]
    refined = error.details.get("aws_type")
    if isinstance(refined, str) and _AWS_TYPE.fullmatch(refined) is not None:
        return refined, _STATUS_BY_TYPE.get(refined, 400)
    return aws_type, status


def _message(error: KvError) -> str:
    fixed = _FIXED_MESSAGES.get(error.code)
    if fixed is not None:
        return f"{fixed} (kvstore: {error.code.name})"
    if _LOCATED.intersection(error.details):
        # A store call the coordinator reports by where it failed ("partition 3 on node n2:
        # ..."): the place is for the log; the caller reads what the code means.
        summary = error.code.value.summary
        return summary[:1].upper() + summary[1:]
    return error.message


def error_answer(error: KvError) -> ErrorAnswer:
    """The DynamoDB answer to ``error`` (see the module docstring)."""
    aws_type, status = aws_type_of(error)
    message_key = "Message" if aws_type in _CAPITAL_MESSAGE else "message"
    body: dict[str, object] = {
        "__type": TYPE_PREFIX + aws_type,
        message_key: _message(error),
    }
    reasons = error.details.get("cancellation_reasons")
    if isinstance(reasons, list):
        body["CancellationReasons"] = reasons
    item = error.details.get("item")
    if isinstance(item, dict):
        body["Item"] = item
    return ErrorAnswer(status, aws_type, body)
