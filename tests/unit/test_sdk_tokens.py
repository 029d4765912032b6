"""Idempotency tokens drawn by the SDK (kvstore.client.tokens).

Goal: a drawn token's home partition is the first key's, so a one-partition transaction stays
one round; when no such token turns up within the bound, any fresh token is used. Method: draw
for many keys and partition counts and compare partitions with ``PartitionMap``; force the
fallback with a generator that never lands.
"""

from __future__ import annotations

import itertools

import pytest

from kvstore.client.tokens import draw_token, new_token
from kvstore.ops import validate_token
from kvstore.partitioning import PartitionMap


@pytest.mark.parametrize("partition_count", [1, 2, 8, 16, 64])
def test_a_drawn_token_lives_on_the_keys_partition(partition_count: int) -> None:
    partitions = PartitionMap(partition_count)
    tokens = set()
    for index in range(200):
        key = f"key-{index}"
        token = draw_token(partitions, key)
        assert partitions.partition_of(token) == partitions.partition_of(key)
        validate_token(token)
        tokens.add(token)
    assert len(tokens) == 200  # fresh every time


def test_tokens_are_short_printable_and_random() -> None:
    tokens = {new_token() for _ in range(1_000)}
    assert len(tokens) == 1_000
    assert all(len(token) == 16 and validate_token(token) for token in tokens)


def test_no_landing_token_within_the_bound_falls_back_to_a_fresh_one() -> None:
    partitions = PartitionMap(16)
    key = "k"
    wanted = partitions.partition_of(key)
    elsewhere = (f"t{index}" for index in itertools.count())
    misses = (token for token in elsewhere if partitions.partition_of(token) != wanted)
    drawn: list[str] = []

    def generate() -> str:
        drawn.append(next(misses))
        return drawn[-1]

    token = draw_token(partitions, key, draws_max=5, generate=generate)
    assert len(drawn) == 5  # bounded
    assert token == drawn[-1]
    assert partitions.partition_of(token) != wanted


def test_without_a_partition_map_any_fresh_token_does() -> None:
    assert draw_token(None, "k", generate=lambda: "fixed") == "fixed"
