"""The Python SDK: an async client, a blocking wrapper, retries, interactive transactions.

Theory of operation
-------------------
``kvstore.connect()`` makes a :class:`Client` (``kvstore.connect_sync()`` a :class:`SyncClient`)
for a cluster, in gateway mode (HTTP to a coordinator) or direct mode (an embedded coordinator
talking to the storage nodes); :mod:`kvstore.client.connection` says where URL, token and cluster
file come from. The client validates arguments before sending, gives every write transaction
an idempotency token, and retries what is safe to retry within a deadline and a client-wide
budget (:mod:`kvstore.client.client`, :mod:`kvstore.client.retry`). Interactive transactions
(:mod:`kvstore.client.transaction`) commit what their code read and wrote as one serializable
transaction. Errors are the catalogue's typed exceptions (:mod:`kvstore.errors`). docs/sdk.md
is the guide.

Modules: ``builders`` (ops and conditions), ``results`` (answers), ``typed`` (value types: what
writes accept, the caller's ``value_type`` for reads), ``backend`` (the one-attempt
interface) with ``http``, ``direct`` and ``memory`` implementations, ``tokens``, ``retry``,
``client``, ``transaction``, ``sync``, ``connection``.
"""

from kvstore.client.builders import (
    Check,
    Delete,
    JsonCondition,
    Put,
    TxnOp,
    Update,
    absent,
    all_of,
    any_of,
    eq,
    exists,
    ge,
    gt,
    le,
    lt,
    ne,
    not_,
    version_is,
)
from kvstore.client.client import Client
from kvstore.client.connection import connect, connect_sync
from kvstore.client.results import UNCOMMITTED_VERSION, Committed, Deleted, Item, Written, reasons
from kvstore.client.retry import RetryPolicy
from kvstore.client.sync import SyncClient, SyncTransaction
from kvstore.client.transaction import Transaction

__all__ = [
    "connect",
    "connect_sync",
    "Client",
    "SyncClient",
    "Transaction",
    "SyncTransaction",
    "RetryPolicy",
    "Item",
    "Written",
    "Deleted",
    "Committed",
    "UNCOMMITTED_VERSION",
    "reasons",
    "JsonCondition",
    "TxnOp",
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
]
