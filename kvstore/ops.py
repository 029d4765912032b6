"""Operations of a write transaction and their validation.

Theory of operation
-------------------
An :class:`Op` is one of ``put``, ``delete``, ``update`` or ``check`` on one key, with an optional
condition. A write transaction is a tuple of ops on distinct keys; :func:`validate_txn_ops`
enforces the transaction-level rules (count, distinct keys, total size) before anything touches a
node (DESIGN section 6 rule 1). :func:`op_from_json` / :func:`op_to_json` convert the public API's
JSON form; the wire codec uses the same form, so there is one parser for outside data.

:func:`apply_op` computes what an op leaves behind on the item (exists, value); it is the one place
that interprets op semantics, shared by prepare (to check limits before voting yes), one-round
execution and singleton writes.

:func:`txn_fingerprint` is a digest of the canonical JSON form of the ops, used to tell a repeated
idempotency token with the same content from one with different content.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack

from kvstore import limits
from kvstore.conditions import Condition, condition_from_json, condition_to_json
from kvstore.dynamodb.payloads import (
    ExpressionUpdate,
    apply_expression_update,
    source_from_json,
    source_to_json,
    update_from_source,
)
from kvstore.errors import ValidationError
from kvstore.types import Key, Value
from kvstore.updates import UpdateAction, actions_from_json, actions_to_json, apply_actions
from kvstore.values import validate_key, validate_value

__all__ = [
    "OpKind",
    "Op",
    "apply_op",
    "op_from_json",
    "op_to_json",
    "ops_from_json",
    "txn_fingerprint",
    "validate_token",
    "validate_txn_ops",
]


class OpKind(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"
    UPDATE = "update"
    CHECK = "check"


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One operation on one key. ``value`` is for put, ``actions`` for update."""

    kind: OpKind
    key: Key
    value: Value = None
    actions: tuple[UpdateAction, ...] = ()
    condition: Condition | None = None
    return_item: bool = False  # on ConditionFailed, include the current item in the reason
    # Inside the cluster only (the DynamoDB endpoint's; kvstore.dynamodb.payloads): an update
    # by a DynamoDB update expression instead of ``actions``, and a singleton write whose reply
    # carries the item it replaced (``WriteReply.previous``).
    expression: ExpressionUpdate | None = None
    return_previous: bool = False

    @property
    def is_write(self) -> bool:
        return self.kind is not OpKind.CHECK


def apply_op(op: Op, *, exists: bool, value: Value) -> tuple[bool, Value]:
    """What ``op`` leaves on an item that currently ``exists`` with ``value``.

    Raises ``ValidationError`` when the op cannot apply (``add`` on a non-number, a result over
    the value size limit...). A check changes nothing.
    """
    if op.kind is OpKind.PUT:
        return True, op.value
    if op.kind is OpKind.DELETE:
        return False, None
    if op.kind is OpKind.UPDATE:
        if op.expression is not None:
            return apply_expression_update(op.expression, exists=exists, value=value)
        return True, apply_actions(op.actions, exists=exists, value=value)
    return exists, value


_OP_MEMBERS: dict[OpKind, frozenset[str]] = {
    OpKind.PUT: frozenset({"op", "key", "value", "if", "return_item"}),
    OpKind.DELETE: frozenset({"op", "key", "if", "return_item"}),
    OpKind.UPDATE: frozenset({"op", "key", "set", "remove", "add", "append", "if", "return_item"}),
    OpKind.CHECK: frozenset({"op", "key", "if", "return_item"}),
}


_OP_KINDS = frozenset(kind.value for kind in OpKind)
# Members only the cluster's own processes send (``internal``).
_INTERNAL_MEMBERS: dict[OpKind, frozenset[str]] = {
    OpKind.PUT: frozenset({"return_previous"}),
    OpKind.DELETE: frozenset({"return_previous"}),
    OpKind.UPDATE: frozenset({"ddb_update", "return_previous"}),
    OpKind.CHECK: frozenset(),
}


def op_from_json(obj: object, field: str = "op", *, internal: bool = False) -> Op:
    """Parse and validate one operation object of the public API (``internal``: of a peer's
    message, which may also use the members of the DynamoDB endpoint, and its keys)."""
    if not isinstance(obj, Mapping):
        raise ValidationError(field, "an operation must be an object")
    kind_name = obj.get("op")
    if not isinstance(kind_name, str) or kind_name not in _OP_KINDS:
        # Never repr() an arbitrary value here: a deeply nested one would recurse without end.
        shown = repr(kind_name)[:40] if isinstance(kind_name, str) else type(kind_name).__name__
        raise ValidationError(
            f"{field}.op", f"unknown operation {shown}; expected put, delete, update, check"
        )
    kind = OpKind(kind_name)
    members = _OP_MEMBERS[kind] | _INTERNAL_MEMBERS[kind] if internal else _OP_MEMBERS[kind]
    if not members.issuperset(obj):
        unknown = sorted(str(k) for k in obj if k not in members)
        raise ValidationError(f"{field}.{unknown[0]}", f"unknown member of a {kind} operation")
    key = validate_key(obj.get("key"), f"{field}.key", internal=internal)
    condition = None
    if "if" in obj:
        condition = condition_from_json(obj["if"], f"{field}.if", internal=internal)
    elif kind is OpKind.CHECK:
        raise ValidationError(f"{field}.if", "a check operation needs a condition")
    return_item = obj.get("return_item", False)
    if not isinstance(return_item, bool):
        raise ValidationError(f"{field}.return_item", "must be true or false")
    return_previous = obj.get("return_previous", False)
    if not isinstance(return_previous, bool):
        raise ValidationError(f"{field}.return_previous", "must be true or false")
    value: Value = None
    actions: tuple[UpdateAction, ...] = ()
    expression = None
    if kind is OpKind.PUT:
        if "value" not in obj:
            raise ValidationError(f"{field}.value", "a put operation needs a value")
        value = validate_value(obj["value"], f"{field}.value")
    elif kind is OpKind.UPDATE and "ddb_update" in obj:
        expression = _expression_update(obj, f"{field}.ddb_update")
    elif kind is OpKind.UPDATE:
        actions = actions_from_json(obj, field)
    return Op(
        kind=kind,
        key=key,
        value=value,
        actions=actions,
        condition=condition,
        return_item=return_item,
        expression=expression,
        return_previous=return_previous,
    )


def _expression_update(obj: Mapping[str, object], field: str) -> ExpressionUpdate:
    """A DynamoDB update expression with the item's key attributes (``ddb_update``)."""
    if any(name in obj for name in ("set", "remove", "add", "append")):
        raise ValidationError(field, "an update has actions or an expression, not both")
    raw = obj["ddb_update"]
    if not isinstance(raw, Mapping) or not isinstance(raw.get("key"), dict):
        raise ValidationError(field, "an update expression carries the item's key attributes")
    source = source_from_json({k: v for k, v in raw.items() if k != "key"}, field)
    key = validate_value(raw["key"], f"{field}.key")
    assert isinstance(key, dict)
    return update_from_source(source, key)


def op_to_json(op: Op) -> dict[str, object]:
    """The public JSON form of ``op``; ``op_from_json`` inverts it."""
    out: dict[str, object] = {"op": op.kind.value, "key": op.key}
    if op.kind is OpKind.PUT:
        out["value"] = op.value
    elif op.kind is OpKind.UPDATE and op.expression is not None:
        out["ddb_update"] = {**source_to_json(op.expression.source), "key": op.expression.key}
    elif op.kind is OpKind.UPDATE:
        out.update(actions_to_json(op.actions))
    if op.condition is not None:
        out["if"] = condition_to_json(op.condition)
    if op.return_item:
        out["return_item"] = True
    if op.return_previous:
        out["return_previous"] = True
    return out


def ops_from_json(
    obj: object, *, field: str = "ops", txn_ops_max: int = limits.TXN_OPS_MAX_DEFAULT
) -> tuple[Op, ...]:
    """Parse a list of operations and validate it as one write transaction."""
    if not isinstance(obj, list):
        raise ValidationError(field, "must be a list of operations")
    if len(obj) > txn_ops_max:
        raise ValidationError(field, f"{len(obj)} operations; at most {txn_ops_max} allowed")
    ops = tuple(op_from_json(item, f"{field}[{i}]") for i, item in enumerate(obj))
    validate_txn_ops(ops, field=field, txn_ops_max=txn_ops_max)
    return ops


def validate_txn_ops(
    ops: Sequence[Op], *, field: str = "ops", txn_ops_max: int = limits.TXN_OPS_MAX_DEFAULT
) -> None:
    """Transaction-level rules: 1..txn_ops_max ops, distinct keys, bounded total size."""
    if not 1 <= txn_ops_max <= limits.TXN_OPS_MAX_CEILING:
        raise ValidationError("txn_ops_max", f"must be 1..{limits.TXN_OPS_MAX_CEILING}")
    if not ops:
        raise ValidationError(field, "a transaction needs at least one operation")
    if len(ops) > txn_ops_max:
        raise ValidationError(field, f"{len(ops)} operations; at most {txn_ops_max} allowed")
    seen: dict[str, int] = {}
    total_bytes = 0
    for i, op in enumerate(ops):
        if op.key in seen:
            raise ValidationError(
                f"{field}[{i}].key",
                f"key {op.key!r} already used by operation {seen[op.key]}; "
                "at most one operation per key",
            )
        seen[op.key] = i
        if op.kind is OpKind.CHECK and op.condition is None:
            raise ValidationError(f"{field}[{i}].if", "a check operation needs a condition")
        total_bytes += len(msgpack.packb(op_to_json(op), use_bin_type=True))
    if total_bytes > limits.TXN_BYTES_MAX:
        raise ValidationError(
            field, f"transaction is {total_bytes} bytes; at most {limits.TXN_BYTES_MAX} allowed"
        )


def validate_token(token: object, field: str = "token") -> str:
    """An idempotency token: 1..TOKEN_BYTES_MAX printable ASCII characters."""
    if not isinstance(token, str):
        raise ValidationError(field, "must be a string")
    if not 1 <= len(token) <= limits.TOKEN_BYTES_MAX or not all(" " <= c <= "~" for c in token):
        raise ValidationError(
            field, f"must be 1..{limits.TOKEN_BYTES_MAX} printable ASCII characters"
        )
    return token


def txn_fingerprint(ops: Sequence[Op]) -> str:
    """A digest of the canonical form of ``ops`` (order matters)."""
    canonical = msgpack.packb([op_to_json(op) for op in ops], use_bin_type=True)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()
