"""kvstore: a distributed, serializable, transactional key-value store.

See README.md for the architecture; ``kvstore.client`` is the SDK (docs/sdk.md)::

    import kvstore

    async with kvstore.connect() as kv:
        await kv.put("greeting", {"text": "hello"})

The error catalogue's exceptions (:mod:`kvstore.errors`, which imports nothing but the standard
library) are imported eagerly, so ``except kvstore.TransactionCanceled`` and ``kvstore.errors``
work right after ``import kvstore``. The SDK's names are re-exported lazily (PEP 562
``__getattr__``): ``import kvstore`` stays cheap for the processes that never use the client
(storage nodes, coordinators), and the SDK and its dependencies load on the first use of one of
these names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from kvstore import errors
from kvstore.errors import (
    ClockSkew,
    ConditionFailed,
    DiskFull,
    ErrorCode,
    Forbidden,
    IdempotencyMismatch,
    InternalError,
    KvError,
    NotFound,
    OutcomeUnknown,
    Overloaded,
    ProtocolViolation,
    SnapshotTooOld,
    TimestampTooOld,
    TooLarge,
    TransactionCanceled,
    TransactionConflict,
    TransactionInProgress,
    Unauthorized,
    Unavailable,
    ValidationError,
    WrongOwner,
)

if TYPE_CHECKING:
    from kvstore.client import (
        Check,
        Client,
        Committed,
        Delete,
        Deleted,
        Item,
        Put,
        RetryPolicy,
        SyncClient,
        Transaction,
        Update,
        Written,
        absent,
        all_of,
        any_of,
        connect,
        connect_sync,
        eq,
        exists,
        ge,
        gt,
        le,
        lt,
        ne,
        not_,
        reasons,
        version_is,
    )

__all__ = [
    "connect",
    "connect_sync",
    "Client",
    "SyncClient",
    "Transaction",
    "RetryPolicy",
    "Item",
    "Written",
    "Deleted",
    "Committed",
    "reasons",
    "Put",
    "Delete",
    "Update",
    "Check",
    "exists",
    "absent",
    "version_is",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "all_of",
    "any_of",
    "not_",
    # The error catalogue (kvstore.errors), imported eagerly.
    "errors",
    "KvError",
    "ErrorCode",
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
]

_LAZY: Final = frozenset(__all__[: __all__.index("errors")])


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module("kvstore.client"), name)
    raise AttributeError(f"module 'kvstore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
