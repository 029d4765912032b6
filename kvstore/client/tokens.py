"""Idempotency tokens the SDK draws for its transactions, placed on the first key's partition.

Theory of operation
-------------------
Every transaction the SDK sends carries an idempotency token, so a retry after an ambiguous
outcome (a lost connection, ``OutcomeUnknown``) is answered with the original outcome instead of
running twice (docs/api.md). A tokened transaction's ledger record lives on the token's home
partition, the partition the token would have as a key. When that is not a partition of the
transaction's keys, it joins as one more participant: a one-partition transaction would need two
rounds instead of one. So :func:`draw_token` draws random tokens until one hashes to the
partition of the first op's key: with ``P`` partitions that takes ``P`` draws on average (a
BLAKE2b hash each, microseconds), at most ``SDK_TOKEN_DRAWS_MAX``, after which any token does
(correct, only one participant dearer).

A token is ``secrets.token_urlsafe(12)``: 16 URL-safe characters, 96 random bits, well inside
the API's 1..64 printable ASCII characters. The generator is injectable for tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final

from kvstore.limits import SDK_TOKEN_DRAWS_MAX
from kvstore.partitioning import PartitionMap

__all__ = ["TOKEN_BYTES", "new_token", "draw_token"]

TOKEN_BYTES: Final = 12  # random bytes of a drawn token (16 characters once encoded).


def new_token() -> str:
    """A random idempotency token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def draw_token(
    partitions: PartitionMap | None,
    key: str,
    *,
    draws_max: int = SDK_TOKEN_DRAWS_MAX,
    generate: Callable[[], str] = new_token,
) -> str:
    """A fresh token whose home partition is ``key``'s, when one is found within ``draws_max``
    draws; otherwise (or with no known partition map) any fresh token."""
    token = generate()
    if partitions is None:
        return token
    wanted = partitions.partition_of(key)
    for _ in range(draws_max - 1):
        if partitions.partition_of(token) == wanted:
            return token
        token = generate()
    return token
