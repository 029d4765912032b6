"""``TransactWriteItems`` and ``TransactGetItems``: the store's own transactions.

Theory of operation
-------------------
``TransactWriteItems`` is one write transaction of the store (DESIGN section 6: timestamp
ordering, two-phase commit across partitions, or one round on one partition). Each action
becomes one :class:`~kvstore.ops.Op` on its item's key: Put a put, Delete a delete, Update an
update by expression, ConditionCheck a check; their conditions are evaluated by the storage
nodes at prepare, exactly like the store's own. The whole request is validated first (AWS
answers a ``ValidationException`` for any malformed action, and for two actions on one item);
what fails at prepare cancels the transaction, and each op's reason becomes the action's
``CancellationReasons`` entry, in order: ``ConditionFailed`` is ``ConditionalCheckFailed`` (with
the item when ``ReturnValuesOnConditionCheckFailure`` is ``ALL_OLD``), a pending transaction or a
too-old timestamp ``TransactionConflict``, a limit broken by the result ``ValidationError``.

``ClientRequestToken`` is the store's idempotency token, scoped to the caller: the store token is
a digest of the access key id and the client's token, so two callers never share one. botocore
sends a fresh token with every call and the same one with its retries, so a retried commit
answers success once, never applies twice; the same token with other actions is
``IdempotentParameterMismatchException``, and one still running ``TransactionInProgressException``.

``TransactGetItems`` is one read-only transaction (two read rounds whose versions must agree,
:mod:`kvstore.coordinator.read`); when the reads do not settle it is cancelled with
``TransactionConflict`` for every item, since which item moved is not known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from kvstore.coordinator.engine import Coordinator
from kvstore.dynamodb.attributes import check_item_size, item_from_wire, item_to_wire
from kvstore.dynamodb.evaluate import project
from kvstore.dynamodb.items import RETURN_ON_FAILURE, consumed_per_table
from kvstore.dynamodb.request_exprs import (
    TRANSACT_CONDITION,
    TRANSACT_GET,
    TRANSACT_UPDATE,
    RequestExpressions,
)
from kvstore.dynamodb.requests import (
    Body,
    constraint,
    invalid,
    optional_enum,
    optional_str,
    required_list,
    required_object,
    table_name,
)
from kvstore.dynamodb.tables import Catalog
from kvstore.errors import (
    IdempotencyMismatch,
    TransactionCanceled,
    TransactionConflict,
    TransactionInProgress,
)
from kvstore.limits import DYNAMODB_CLIENT_TOKEN_CHARS_MAX, DYNAMODB_TRANSACT_ITEMS_MAX
from kvstore.ops import Op, OpKind

__all__ = ["Transactions", "store_token", "cancellation_reasons"]

_ACTIONS: Final = ("Put", "Update", "Delete", "ConditionCheck")
_CODES: Final = {
    "None": "None",
    "ConditionFailed": "ConditionalCheckFailed",
    "TransactionConflict": "TransactionConflict",
    "TimestampTooOld": "TransactionConflict",
    "ValidationError": "ValidationError",
}
_MESSAGES: Final = {
    "ConditionalCheckFailed": "The conditional request failed",
    "TransactionConflict": "Transaction is ongoing for the item",
}
_TOKEN_DIGEST_BYTES: Final = 16
_DUPLICATE: Final = "Transaction request cannot include multiple operations on one item"


def store_token(caller: str, client_token: str) -> str:
    """The store's idempotency token for one caller's ``ClientRequestToken``."""
    digest = hashlib.blake2b(
        f"{caller}\x00{client_token}".encode("utf-8", "surrogatepass"),
        digest_size=_TOKEN_DIGEST_BYTES,
    )
    return "ddb-" + digest.hexdigest()


def cancellation_reasons(reasons: object) -> list[dict[str, object]]:
    """``CancellationReasons`` from the store's per-op reasons (their JSON form)."""
    out: list[dict[str, object]] = []
    for reason in reasons if isinstance(reasons, list) else ():
        raw = reason.get("code") if isinstance(reason, Mapping) else None
        code = _CODES.get(str(raw), "ValidationError")
        entry: dict[str, object] = {"Code": code}
        if code != "None":
            message = _MESSAGES.get(code)
            if message is None and isinstance(reason, Mapping):
                message = str(reason.get("message", ""))
            entry["Message"] = message or code
        item = reason.get("item") if isinstance(reason, Mapping) else None
        if (
            code == "ConditionalCheckFailed"
            and isinstance(item, Mapping)
            and isinstance(item.get("value"), dict)
        ):
            entry["Item"] = item["value"]  # its JSON form (bytes as base64): the wire form
        out.append(entry)
    return out


def _cancelled(entries: list[dict[str, object]]) -> TransactionCanceled:
    codes = ", ".join(str(entry["Code"]) for entry in entries)
    return TransactionCanceled(
        f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
        details={"aws_type": "TransactionCanceledException", "cancellation_reasons": entries},
    )


def _count(body: Body, member: str) -> list[object]:
    items = required_list(body, member)
    if not 1 <= len(items) <= DYNAMODB_TRANSACT_ITEMS_MAX:
        raise constraint(
            member,
            f"[{len(items)} items]",
            f"Member must have length less than or equal to {DYNAMODB_TRANSACT_ITEMS_MAX}"
            if items
            else "Member must have length greater than or equal to 1",
        )
    return items


class Transactions:
    """TransactWriteItems and TransactGetItems of one front end."""

    def __init__(self, coordinator: Coordinator, catalog: Catalog) -> None:
        self.coordinator = coordinator
        self.catalog = catalog

    async def _op(self, kind: str, action: Body) -> tuple[str, Op]:
        """(table name, op) of one action, validated and with its expressions parsed."""
        schema = await self.catalog.schema(table_name(action))
        exprs = RequestExpressions(
            action, TRANSACT_UPDATE if kind == "Update" else TRANSACT_CONDITION
        )
        return_item = (
            optional_enum(action, "ReturnValuesOnConditionCheckFailure", RETURN_ON_FAILURE, "NONE")
            == "ALL_OLD"
        )
        if kind == "Put":
            item = item_from_wire(required_object(action, "Item"), field="Item")
            key, _ = schema.store_key(item, item=True)
            check_item_size(item)
            op = Op(kind=OpKind.PUT, key=key, value=item, condition=exprs.condition())
        else:
            raw_key = item_from_wire(required_object(action, "Key"), field="Key")
            key, key_item = schema.store_key(raw_key, item=False)
            if kind == "Delete":
                op = Op(kind=OpKind.DELETE, key=key, condition=exprs.condition())
            elif kind == "Update":
                update = exprs.update(key_item, schema.key_names)
                if update is None:
                    raise constraint("updateExpression", None, "Member must not be null")
                op = Op(kind=OpKind.UPDATE, key=key, expression=update, condition=exprs.condition())
            else:
                condition = exprs.condition()
                if condition is None:
                    raise constraint("conditionExpression", None, "Member must not be null")
                op = Op(kind=OpKind.CHECK, key=key, condition=condition)
        exprs.finish()
        return schema.name, replace(op, return_item=return_item)

    async def write(self, body: Body, *, caller: str) -> dict[str, object]:
        actions = _count(body, "TransactItems")
        client_token = optional_str(body, "ClientRequestToken")
        if client_token is not None and not (
            1 <= len(client_token) <= DYNAMODB_CLIENT_TOKEN_CHARS_MAX
        ):
            raise constraint(
                "ClientRequestToken",
                client_token,
                f"Member must have length less than or equal to {DYNAMODB_CLIENT_TOKEN_CHARS_MAX}",
            )
        ops: list[Op] = []
        units: dict[str, float] = {}
        seen: set[str] = set()
        for action in actions:
            if not isinstance(action, Mapping):
                raise invalid("TransactItems must be a list of objects")
            kinds = [kind for kind in _ACTIONS if action.get(kind) is not None]
            if len(kinds) != 1 or len(action) != 1:
                raise invalid("TransactItems can only contain one of Check, Put, Update or Delete")
            table, op = await self._op(kinds[0], required_object(action, kinds[0]))
            if op.key in seen:
                raise invalid(_DUPLICATE)
            seen.add(op.key)
            ops.append(op)
            units[table] = units.get(table, 0.0) + 2.0
        token = None if client_token is None else store_token(caller, client_token)
        try:
            await self.coordinator.transact(ops, token=token)
        except TransactionCanceled as error:
            raise _cancelled(cancellation_reasons(error.details.get("reasons"))) from None
        except IdempotencyMismatch:
            raise IdempotencyMismatch(
                "The request with the same client token was used with different parameters",
                details={"aws_type": "IdempotentParameterMismatchException"},
            ) from None
        except TransactionInProgress:
            raise TransactionInProgress(
                "The transaction with the given request token is already in progress.",
                details={"aws_type": "TransactionInProgressException"},
            ) from None
        return consumed_per_table(body, units)

    async def get(self, body: Body) -> dict[str, object]:
        actions = _count(body, "TransactItems")
        keys: list[str] = []
        projections = []
        units: dict[str, float] = {}
        for action in actions:
            if not isinstance(action, Mapping) or set(action) != {"Get"}:
                raise invalid("TransactItems of TransactGetItems hold exactly one Get each")
            get = required_object(action, "Get")
            schema = await self.catalog.schema(table_name(get))
            raw_key = item_from_wire(required_object(get, "Key"), field="Key")
            key, _ = schema.store_key(raw_key, item=False)
            exprs = RequestExpressions(get, TRANSACT_GET)
            projections.append(exprs.projection())
            exprs.finish()
            if key in keys:
                raise invalid(_DUPLICATE)
            keys.append(key)
            units[schema.name] = units.get(schema.name, 0.0) + 2.0
        try:
            entries = await self.coordinator.read(keys)
        except TransactionConflict:
            raise _cancelled(
                [{"Code": "TransactionConflict", "Message": _MESSAGES["TransactionConflict"]}]
                * len(keys)
            ) from None
        responses: list[dict[str, object]] = []
        for entry, projection in zip(entries, projections, strict=True):
            if not entry.exists or not isinstance(entry.value, dict):
                responses.append({})
                continue
            item = entry.value if projection is None else project(entry.value, projection)
            responses.append({"Item": item_to_wire(item)})
        return {"Responses": responses, **consumed_per_table(body, units)}
