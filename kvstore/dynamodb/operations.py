"""The DynamoDB operations a front end serves, by name.

Theory of operation
-------------------
:class:`DynamoOperations` binds one coordinator library object (the same one the process's
public API uses) to the operation modules: tables (:mod:`kvstore.dynamodb.tables`), single items
(:mod:`~kvstore.dynamodb.items`), queries and scans (:mod:`~kvstore.dynamodb.reads`),
transactions (:mod:`~kvstore.dynamodb.transact`) and batches (:mod:`~kvstore.dynamodb.batch`).
:meth:`DynamoOperations.call` runs one by its DynamoDB name on a parsed JSON body and returns the
JSON answer, or raises a :class:`~kvstore.errors.KvError` that the endpoint
(:mod:`kvstore.dynamodb.endpoint`) renders in DynamoDB's shape.

:data:`READ_OPERATIONS` may be called with a read-only token, :data:`WRITE_OPERATIONS` need
``read-write`` or ``admin``. A few management calls that tools make on every table (Terraform's
DescribeTimeToLive, DescribeContinuousBackups, ListTagsOfResource) answer what is true here:
no TTL, no point-in-time recovery, no tags. Every other DynamoDB operation is
``UnknownOperationException`` (docs/dynamodb.md lists them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from kvstore.coordinator.engine import Coordinator
from kvstore.dynamodb.batch import Batches
from kvstore.dynamodb.items import Items
from kvstore.dynamodb.reads import Reads
from kvstore.dynamodb.requests import Body, invalid, optional_str, table_name
from kvstore.dynamodb.tables import ARN_PREFIX, Catalog
from kvstore.dynamodb.transact import Transactions
from kvstore.errors import NotFound

__all__ = ["DynamoOperations", "READ_OPERATIONS", "WRITE_OPERATIONS"]

READ_OPERATIONS: Final = frozenset(
    {
        "GetItem",
        "BatchGetItem",
        "Query",
        "Scan",
        "TransactGetItems",
        "DescribeTable",
        "ListTables",
        "DescribeTimeToLive",
        "DescribeContinuousBackups",
        "ListTagsOfResource",
        "DescribeLimits",
        "DescribeEndpoints",
    }
)
WRITE_OPERATIONS: Final = frozenset(
    {
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
        "TransactWriteItems",
        "CreateTable",
        "DeleteTable",
        "UpdateTable",
    }
)
_ACCOUNT_MAX_UNITS: Final = 80_000  # DescribeLimits' answer: DynamoDB's default account quota.
_TABLE_MAX_UNITS: Final = 40_000

Handler = Callable[[Body, str], Awaitable[dict[str, object]]]


class DynamoOperations:
    """Every operation of the endpoint over one coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        catalog = Catalog(coordinator)
        self.catalog = catalog
        items = Items(coordinator, catalog)
        reads = Reads(coordinator, catalog)
        transactions = Transactions(coordinator, catalog)
        batches = Batches(coordinator, catalog)
        self._handlers: dict[str, Handler] = {
            "CreateTable": lambda body, _: catalog.create(body),
            "DescribeTable": lambda body, _: catalog.describe(body),
            "DeleteTable": lambda body, _: catalog.delete(body),
            "UpdateTable": lambda body, _: catalog.update(body),
            "ListTables": lambda body, _: catalog.list_names(body),
            "PutItem": lambda body, _: items.put(body),
            "GetItem": lambda body, _: items.get(body),
            "UpdateItem": lambda body, _: items.update(body),
            "DeleteItem": lambda body, _: items.delete(body),
            "Query": lambda body, _: reads.query(body),
            "Scan": lambda body, _: reads.scan(body),
            "TransactWriteItems": lambda body, caller: transactions.write(body, caller=caller),
            "TransactGetItems": lambda body, _: transactions.get(body),
            "BatchGetItem": lambda body, _: batches.get(body),
            "BatchWriteItem": lambda body, _: batches.write(body),
            "DescribeTimeToLive": lambda body, _: self._time_to_live(body),
            "DescribeContinuousBackups": lambda body, _: self._continuous_backups(body),
            "ListTagsOfResource": lambda body, _: self._tags(body),
            "DescribeLimits": lambda body, _: self._limits(),
            "DescribeEndpoints": lambda body, _: self._endpoints(),
        }
        assert set(self._handlers) == READ_OPERATIONS | WRITE_OPERATIONS

    def known(self, operation: str) -> bool:
        return operation in self._handlers

    async def call(self, operation: str, request: Body, *, caller: str) -> dict[str, object]:
        """Run ``operation`` on ``request`` for the API token named ``caller``."""
        handler = self._handlers.get(operation)
        if handler is None:
            raise NotFound(
                f"Unknown operation: {operation[:64]}",
                details={"aws_type": "UnknownOperationException"},
            )
        return await handler(request, caller)

    async def _time_to_live(self, body: Body) -> dict[str, object]:
        await self.catalog.schema(table_name(body))
        return {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}

    async def _continuous_backups(self, body: Body) -> dict[str, object]:
        await self.catalog.schema(table_name(body))
        return {
            "ContinuousBackupsDescription": {
                "ContinuousBackupsStatus": "DISABLED",
                "PointInTimeRecoveryDescription": {"PointInTimeRecoveryStatus": "DISABLED"},
            }
        }

    async def _tags(self, body: Body) -> dict[str, object]:
        arn = optional_str(body, "ResourceArn") or ""
        if not arn.startswith(ARN_PREFIX):
            raise invalid(f"Invalid TableArn: {arn[:200]}")
        await self.catalog.schema(arn.removeprefix(ARN_PREFIX))
        return {"Tags": []}

    async def _limits(self) -> dict[str, object]:
        return {
            "AccountMaxReadCapacityUnits": _ACCOUNT_MAX_UNITS,
            "AccountMaxWriteCapacityUnits": _ACCOUNT_MAX_UNITS,
            "TableMaxReadCapacityUnits": _TABLE_MAX_UNITS,
            "TableMaxWriteCapacityUnits": _TABLE_MAX_UNITS,
        }

    async def _endpoints(self) -> dict[str, object]:
        return {"Endpoints": []}
