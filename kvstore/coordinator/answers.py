"""The answers of the coordinator library in their public JSON form, and failures as typed errors.

Theory of operation
-------------------
The cores answer with plain values (:mod:`kvstore.coordinator.results`, :mod:`kvstore.messages`).
The public API, the SDK in direct mode and ``kvctl`` all need the same two things from them: a
JSON form (items, timestamps, per-op reasons, recorded outcomes) and, for a failure, the typed
exception of the error catalogue carrying the details a caller acts on (``reasons``, ``txn_id``,
``ts``). Both live here, once, so a cancelled transaction looks the same through every door
(docs/api.md). A cancelled transaction's reasons name each op's ``key`` and its message names
the failed ops with their keys (:func:`cancel_message`, shared with the SDK's in-memory backend),
so a caller sees which key failed without counting ops.

Timestamps are rendered as ``"<physical_us>.<logical>.<origin as 16 hex digits>"``
(``str(Timestamp)``). Bytes inside values (possible only through msgpack clients) are rendered as
base64 strings, since JSON has no bytes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Final

from kvstore.coordinator.results import TxnResult
from kvstore.errors import ErrorCode, KvError, error_from_code
from kvstore.messages import ItemView, LedgerRecord, OpOutcome, ReadEntry, ReasonCode
from kvstore.types import JsonValue, Timestamp, Value

__all__ = [
    "ts_to_json",
    "value_to_json",
    "item_to_json",
    "entry_to_json",
    "reason_to_json",
    "record_to_json",
    "cancel_message",
    "txn_error",
]

_REASONS_SHOWN: Final = 3  # failed ops a cancellation's message names (all are in its reasons)
_KEY_SHOWN_CHARS: Final = 60  # a longer key is cut in messages (never in the reasons)


def ts_to_json(ts: Timestamp) -> str:
    return str(ts)


def value_to_json(value: Value) -> JsonValue:
    """``value`` with any bytes replaced by their base64 text (iterative: values nest deep)."""
    if not isinstance(value, list | dict | bytes):
        return value
    root: list[JsonValue] = [None]
    # (source container or scalar, destination container, index or key in destination)
    stack: list[tuple[Value, list[JsonValue] | dict[str, JsonValue], int | str]] = [
        (value, root, 0)
    ]
    while stack:
        item, into, at = stack.pop()
        converted: JsonValue
        if isinstance(item, bytes):
            converted = base64.b64encode(item).decode("ascii")
        elif isinstance(item, list):
            items: list[JsonValue] = [None] * len(item)
            stack.extend((child, items, index) for index, child in enumerate(item))
            converted = items
        elif isinstance(item, dict):
            members: dict[str, JsonValue] = dict.fromkeys(item)
            stack.extend((child, members, name) for name, child in item.items())
            converted = members
        else:
            converted = item
        if isinstance(into, list):
            into[int(at)] = converted
        else:
            into[str(at)] = converted
    return root[0]


def item_to_json(item: ItemView) -> dict[str, JsonValue]:
    return {
        "key": item.key,
        "value": value_to_json(item.value),
        "version": item.version,
        "ts": ts_to_json(item.ts),
    }


def entry_to_json(entry: ReadEntry) -> dict[str, JsonValue]:
    """One key of a read-only transaction's answer."""
    if not entry.exists:
        return {"key": entry.key, "found": False}
    return item_to_json(
        ItemView(key=entry.key, value=entry.value, version=entry.version, ts=entry.ts)
    )


def reason_to_json(outcome: OpOutcome) -> dict[str, JsonValue]:
    reason: dict[str, JsonValue] = {"code": outcome.code.value}
    if outcome.message:
        reason["message"] = outcome.message
    if outcome.item is not None:
        reason["item"] = item_to_json(outcome.item)
    return reason


def record_to_json(token: str, record: LedgerRecord) -> dict[str, JsonValue]:
    """The recorded outcome of the transaction that used ``token``."""
    body: dict[str, JsonValue] = {
        "token": token,
        "txn_id": record.txn_id,
        "ts": ts_to_json(record.ts),
        "state": record.state.value,
        "completed": record.completed_us is not None,
    }
    if record.outcomes:
        body["reasons"] = [reason_to_json(outcome) for outcome in record.outcomes]
    return body


def _shown_key(key: str) -> str:
    """A key in a message: JSON-quoted, cut to ``_KEY_SHOWN_CHARS`` characters."""
    shown = key if len(key) <= _KEY_SHOWN_CHARS else key[: _KEY_SHOWN_CHARS - 1] + "…"
    return json.dumps(shown, ensure_ascii=False)


def cancel_message(reasons: Sequence[Mapping[str, object]]) -> str:
    """The message of a ``TransactionCanceled`` with these JSON ``reasons`` (one per op, in
    request order): each failed op by index and key, its code and message, the first
    ``_REASONS_SHOWN`` of them."""
    failed: list[str] = []
    for index, reason in enumerate(reasons):
        code = reason.get("code")
        if code == ReasonCode.NONE.value:
            continue
        key = reason.get("key")
        where = f"op {index}" + (f" (key {_shown_key(key)})" if isinstance(key, str) else "")
        message = reason.get("message")
        failed.append(f"{where}: {code}" + (f" ({message})" if message else ""))
    more = len(failed) - _REASONS_SHOWN
    described = "; ".join(failed[:_REASONS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
    return "the transaction was cancelled: " + (described or "no reason")


def txn_error(result: TxnResult, keys: Sequence[str] = ()) -> KvError:
    """The typed error for a transaction that did not commit; ``keys`` are its ops' keys, in
    request order, which its reasons then name."""
    code = result.error or ErrorCode.InternalError
    details: dict[str, object] = {"txn_id": result.txn_id, "ts": ts_to_json(result.ts)}
    reasons: list[dict[str, JsonValue]] = []
    if result.outcomes:
        reasons = [reason_to_json(outcome) for outcome in result.outcomes]
        if len(keys) == len(reasons):
            reasons = [
                {"code": reason["code"], "key": key, **reason}
                for key, reason in zip(keys, reasons, strict=True)
            ]
        details["reasons"] = reasons
        # Retrying the same ops can succeed only when every failed op failed for a retryable
        # reason (a conflict, an old timestamp); a failed condition fails again.
        details["retryable"] = code.retryable or all(
            outcome.code is ReasonCode.NONE or outcome.code.retryable for outcome in result.outcomes
        )
    if code is ErrorCode.TransactionCanceled:
        message = cancel_message(reasons)
    elif code is ErrorCode.OutcomeUnknown:
        message = "the transaction's outcome is not known; retry with the same token"
    elif code is ErrorCode.IdempotencyMismatch:
        message = "the idempotency token was already used by a transaction with other ops"
    elif code is ErrorCode.TransactionInProgress:
        message = "a transaction with the same idempotency token is still running; retry later"
    elif not code.ambiguous and not result.outcomes:  # refused before anything ran
        message = f"the transaction was not applied: {code.value.summary}"
    else:
        message = code.value.summary
    return error_from_code(code, message, details=details)
