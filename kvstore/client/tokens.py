"""Idempotency tokens the SDK draws for its transactions, placed on the first key's partition.

Theory of operation
-------------------
Every transaction the SDK sends carries an idempotency token, so a retry after an ambiguous
outcome (a lost connection, ``OutcomeUnknown``) is answered with the original outcome instead of
running twice (docs/api.md). A tokened transaction's ledger record lives on the token's home
partition, the partition the token would have as a key. When that is not a partition of the
transaction's keys, it joins as one more participant: a one-partition transaction would need two
rounds instead of one. So :func:`draw_token` tries candidates until one hashes to the partition
of the first op's key: with ``P`` partitions that takes ``P`` tries on average (a BLAKE2b hash
each, about a microsecond), at most ``SDK_TOKEN_DRAWS_MAX``, after which any token does (correct,
only one participant dearer). The candidates share one random draw: a fresh token with its last
two characters replaced by the try's number in the token alphabet (4,096 variants, enough for
``SDK_TOKEN_DRAWS_MAX``), so a transaction costs one call to the system's random source, not
one per try (measured: the tries were 3.5% of a transfer's client CPU, docs/bench.md).

A token is ``secrets.token_urlsafe(12)``: 16 URL-safe characters, 96 random bits (a drawn one
keeps 84 of them), well inside the API's 1..64 printable ASCII characters. The generator is
injectable for tests.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from typing import Final

from kvstore.limits import SDK_TOKEN_DRAWS_MAX
from kvstore.partitioning import PartitionMap

__all__ = ["TOKEN_BYTES", "new_token", "draw_token"]

TOKEN_BYTES: Final = 12  # random bytes of a drawn token (16 characters once encoded).
_ALPHABET: Final = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
assert len(_ALPHABET) == 64 and len(_ALPHABET) ** 2 >= SDK_TOKEN_DRAWS_MAX


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
    stem = token[:-2]
    for attempt in range(min(draws_max, len(_ALPHABET) ** 2)):
        candidate = stem + _ALPHABET[attempt >> 6] + _ALPHABET[attempt & 63]
        if partitions.partition_of(candidate) == wanted:
            return candidate
    return token
