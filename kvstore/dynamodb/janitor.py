"""Deleted tables are purged in the background, by every process that serves the API.

Theory of operation
-------------------
``DeleteTable`` only marks the table's record ``DELETING`` (:mod:`kvstore.dynamodb.tables`): its
items become unreachable at once, but their rows are still in the store. Every API process runs
:func:`background` while its application runs: every ``DYNAMODB_PURGE_INTERVAL_MS`` (jittered,
so processes drift apart) it makes one :func:`purge_pass`, which takes one deleted table whose
grace is over (no front end can still be writing into it), walks the partitions in order
reading pages of its items and deletes them with the store's singleton deletes (at most
``DYNAMODB_PURGE_DELETES_IN_FLIGHT_MAX`` in flight), and stops after
``DYNAMODB_PURGE_ITEMS_PER_PASS`` deletes. A pass that walks every partition and finds no item
left removes the record (by its version), and the name is free again. So a table goes in
passes of bounded work, and nothing is lost when a process dies mid-pass: the record stays until
a full walk finds the table empty, and any process takes it up again.

Passes of several processes may overlap; deleting an item twice, or a record another process
already removed, is harmless. A pass that fails (a node unreachable, overload) is logged and the
next one starts over.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web

from kvstore.coordinator.engine import Coordinator
from kvstore.dynamodb import keys as ddb_keys
from kvstore.dynamodb.tables import Catalog
from kvstore.errors import KvError
from kvstore.limits import (
    DYNAMODB_PAGE_CALL_BYTES_MAX,
    DYNAMODB_PAGE_CALL_ITEMS,
    DYNAMODB_PURGE_DELETES_IN_FLIGHT_MAX,
    DYNAMODB_PURGE_INTERVAL_MS,
    DYNAMODB_PURGE_ITEMS_PER_PASS,
)
from kvstore.logs import log_event
from kvstore.ops import Op, OpKind
from kvstore.types import PartitionId

__all__ = ["purge_pass", "background"]

_log = logging.getLogger("kvstore.dynamodb")
_MS_PER_S: Final = 1000


async def purge_pass(coordinator: Coordinator, catalog: Catalog) -> int:
    """Purge (part of) one deleted table; the number of items deleted."""
    tables = await catalog.purgeable(1)
    if not tables:
        return 0
    schema, version = tables[0]
    bounds = ddb_keys.table_range(schema.table_id)
    in_flight = asyncio.Semaphore(DYNAMODB_PURGE_DELETES_IN_FLIGHT_MAX)

    async def delete(key: str) -> None:
        async with in_flight:
            await coordinator.write(Op(kind=OpKind.DELETE, key=key))

    deleted = 0
    for partition in range(coordinator.cluster_map.partitions.partition_count):
        start: str | None = bounds.start
        while start is not None:
            if deleted >= DYNAMODB_PURGE_ITEMS_PER_PASS:
                return deleted
            page = await coordinator.partition_page(
                PartitionId(partition),
                start=start,
                end=bounds.end,
                limit=min(DYNAMODB_PAGE_CALL_ITEMS, DYNAMODB_PURGE_ITEMS_PER_PASS - deleted),
                bytes_max=DYNAMODB_PAGE_CALL_BYTES_MAX,
            )
            await asyncio.gather(*(delete(item.key) for item in page.items))
            deleted += len(page.items)
            start = page.next_start
    if deleted == 0:
        await catalog.forget(schema, version)
        log_event(_log, "dynamodb.table_purged", table=schema.name, table_id=schema.table_id)
    return deleted


def background(
    coordinator: Coordinator,
    *,
    interval_ms: int = DYNAMODB_PURGE_INTERVAL_MS,
    draw: Callable[[], float] = random.random,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` entry: purge passes while the application runs."""
    catalog = Catalog(coordinator)

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_ms * (0.5 + draw()) / _MS_PER_S)
            try:
                await purge_pass(coordinator, catalog)
            except KvError as error:
                log_event(_log, "dynamodb.purge_failed", logging.INFO, code=error.code.name)
            except Exception:  # a bug: logged, and the next pass tries again
                _log.exception("dynamodb: a purge pass failed")

    async def context(app: web.Application) -> AsyncIterator[None]:
        del app
        task = asyncio.create_task(loop(), name="dynamodb-janitor")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return context
