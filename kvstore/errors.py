"""The one error catalogue shared by nodes, coordinators, the HTTP API, the SDK and kvctl.

Theory of operation
-------------------
Every failure a caller can see has an :class:`ErrorCode`: a stable name, a stable number, an
HTTP status and a retryable flag. Numbers are grouped by what a caller should do:

* ``1xxx`` retryable: the same request may succeed later (conflicts, overload, clock skew).
* ``2xxx`` caller mistakes and definite refusals: retrying the same request fails the same way.
* ``3xxx`` ambiguous: the outcome is not known; retry only with the same idempotency token.
* ``9xxx`` internal: a bug or broken invariant on our side.

Codes are never renumbered or reused; ``tests/unit/test_errors.py`` freezes the table. Add a
code only when a caller would react differently to it.

Exceptions: :class:`KvError` carries a code, a message and JSON-compatible details; one subclass
per code (``ValidationError``, ``TransactionConflict``...) so callers can ``except`` precisely and
the SDK can map a code from the wire back to the same class with :func:`error_from_code`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ErrorCode",
    "ErrorSpec",
    "KvError",
    "ValidationError",
    "ConditionFailed",
    "NotFound",
    "TooLarge",
    "TransactionCanceled",
    "TransactionConflict",
    "TimestampTooOld",
    "TransactionInProgress",
    "IdempotencyMismatch",
    "ClockSkew",
    "Overloaded",
    "Unavailable",
    "WrongOwner",
    "DiskFull",
    "OutcomeUnknown",
    "Unauthorized",
    "Forbidden",
    "ProtocolViolation",
    "SnapshotTooOld",
    "InternalError",
    "error_from_code",
    "connect_failure_reason",
]


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """What the catalogue says about one code."""

    number: int
    http_status: int
    retryable: bool
    summary: str


class ErrorCode(enum.Enum):
    """Stable error codes. The member name is the wire name (``code`` in JSON errors)."""

    # 1xxx: retryable.
    TransactionConflict = ErrorSpec(1001, 409, True, "another transaction holds an item")
    TimestampTooOld = ErrorSpec(1002, 409, True, "an item was written at a later timestamp")
    TransactionInProgress = ErrorSpec(1003, 409, True, "the same token is still in flight")
    ClockSkew = ErrorSpec(1004, 503, True, "timestamp too far ahead of the node's clock")
    Overloaded = ErrorSpec(1005, 503, True, "a bounded queue is full; back off and retry")
    Unavailable = ErrorSpec(1006, 503, True, "a process needed for the request is unreachable")
    WrongOwner = ErrorSpec(1007, 421, True, "the partition has another owner; reload the map")
    DiskFull = ErrorSpec(
        1008, 503, True, "the node's disk is full: writes are refused until space is freed"
    )
    # 2xxx: caller mistakes and definite refusals.
    ValidationError = ErrorSpec(2001, 400, False, "the request is malformed or breaks a limit")
    ConditionFailed = ErrorSpec(2002, 412, False, "a condition did not hold")
    NotFound = ErrorSpec(2003, 404, False, "no such item or record")
    TooLarge = ErrorSpec(2004, 413, False, "the request body is larger than allowed")
    TransactionCanceled = ErrorSpec(2005, 409, False, "the transaction was cancelled; see reasons")
    IdempotencyMismatch = ErrorSpec(2006, 422, False, "the token was used with other content")
    Unauthorized = ErrorSpec(2007, 401, False, "missing or unknown credentials")
    Forbidden = ErrorSpec(2008, 403, False, "the credentials do not allow this")
    ProtocolViolation = ErrorSpec(2009, 400, False, "a peer broke the wire protocol")
    SnapshotTooOld = ErrorSpec(
        2010, 409, False, "the snapshot timestamp is older than the versions the store keeps"
    )
    # 3xxx: ambiguous.
    OutcomeUnknown = ErrorSpec(3001, 504, True, "the outcome is not known; retry with the token")
    # 9xxx: internal.
    InternalError = ErrorSpec(9001, 500, False, "a bug on the server side")

    @property
    def number(self) -> int:
        return self.value.number

    @property
    def http_status(self) -> int:
        return self.value.http_status

    @property
    def retryable(self) -> bool:
        return self.value.retryable

    @property
    def ambiguous(self) -> bool:
        """The operation may or may not have taken effect (the 3xxx class)."""
        return self.value.number // 1000 == 3

    @classmethod
    def from_name(cls, name: str) -> ErrorCode:
        """The code for a wire name; unknown names become ``InternalError``."""
        member = cls.__members__.get(name)
        return member if member is not None else cls.InternalError


class KvError(Exception):
    """Base of every error this project raises on purpose. Subclasses fix ``code``."""

    code: ErrorCode = ErrorCode.InternalError

    def __init__(self, message: str, *, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, object] = dict(details or {})

    @property
    def retryable(self) -> bool:
        """The code's flag, unless ``details["retryable"]`` refines it: a cancelled transaction
        whose every failed op failed for a retryable reason (a conflict) may be retried."""
        refined = self.details.get("retryable")
        return refined if isinstance(refined, bool) else self.code.retryable

    def to_json(self) -> dict[str, object]:
        """The ``error`` object of the HTTP API and of RPC error replies."""
        body: dict[str, object] = {
            "code": self.code.name,
            "number": self.code.number,
            "message": self.message,
            "retryable": self.retryable,
        }
        body.update(self.details)
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ValidationError(KvError):
    code = ErrorCode.ValidationError

    def __init__(
        self, field: str, message: str, *, details: Mapping[str, object] | None = None
    ) -> None:
        merged = {"field": field, **(details or {})}
        super().__init__(f"{field}: {message}" if field else message, details=merged)
        self.field = field


class ConditionFailed(KvError):
    code = ErrorCode.ConditionFailed


class NotFound(KvError):
    code = ErrorCode.NotFound


class TooLarge(KvError):
    code = ErrorCode.TooLarge


class TransactionCanceled(KvError):
    code = ErrorCode.TransactionCanceled


class TransactionConflict(KvError):
    code = ErrorCode.TransactionConflict


class TimestampTooOld(KvError):
    code = ErrorCode.TimestampTooOld


class TransactionInProgress(KvError):
    code = ErrorCode.TransactionInProgress


class IdempotencyMismatch(KvError):
    code = ErrorCode.IdempotencyMismatch


class ClockSkew(KvError):
    code = ErrorCode.ClockSkew


class Overloaded(KvError):
    code = ErrorCode.Overloaded


class Unavailable(KvError):
    code = ErrorCode.Unavailable


class WrongOwner(KvError):
    code = ErrorCode.WrongOwner


class DiskFull(KvError):
    """A storage node cannot make writes durable (no space left on its data volume): it refuses
    writes, still answers reads of committed data, and resumes by itself once space is freed."""

    code = ErrorCode.DiskFull


class OutcomeUnknown(KvError):
    code = ErrorCode.OutcomeUnknown


class Unauthorized(KvError):
    code = ErrorCode.Unauthorized


class Forbidden(KvError):
    code = ErrorCode.Forbidden


class ProtocolViolation(KvError):
    code = ErrorCode.ProtocolViolation


class SnapshotTooOld(KvError):
    code = ErrorCode.SnapshotTooOld


class InternalError(KvError):
    code = ErrorCode.InternalError


_CLASS_BY_CODE: Final[dict[ErrorCode, type[KvError]]] = {
    cls.code: cls
    for cls in (
        ConditionFailed,
        NotFound,
        TooLarge,
        TransactionCanceled,
        TransactionConflict,
        TimestampTooOld,
        TransactionInProgress,
        IdempotencyMismatch,
        ClockSkew,
        Overloaded,
        Unavailable,
        WrongOwner,
        DiskFull,
        OutcomeUnknown,
        Unauthorized,
        Forbidden,
        ProtocolViolation,
        SnapshotTooOld,
        InternalError,
    )
}


def error_from_code(
    code: ErrorCode, message: str, *, details: Mapping[str, object] | None = None
) -> KvError:
    """Rebuild the typed exception for a code received from the wire."""
    if code is ErrorCode.ValidationError:
        field = str((details or {}).get("field", ""))
        rest = {k: v for k, v in (details or {}).items() if k != "field"}
        error = ValidationError(field, message, details=rest)
        error.message = message
        error.args = (message,)
        return error
    return _CLASS_BY_CODE[code](message, details=details)


def connect_failure_reason(error: BaseException) -> str:
    """Why a connection could not be made, in words fit for a public error message: the
    operating system's text for the error number (``"connection refused"``), never the
    exception's text or repr, which name the address (asyncio's connect errors put it in their
    message, aiohttp's the whole connection key). ``error`` is an ``OSError``, a
    ``TimeoutError``, or a client error carrying the OS error as ``os_error`` (aiohttp's)."""
    if isinstance(error, TimeoutError):  # aiohttp's connect and server timeouts included
        return "timed out"
    cause = getattr(error, "os_error", error)
    if isinstance(cause, OSError):
        if cause.errno is not None and cause.errno > 0:
            return os.strerror(cause.errno).lower()
        if cause.strerror:  # the resolver's (gaierror), whose errno is negative
            return cause.strerror.lower()
    return "connection failed"
