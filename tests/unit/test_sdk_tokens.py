"""Idempotency tokens drawn by the SDK (kvstore.client.tokens).

Goal: a drawn token's home partition is the first key's, so a one-partition transaction stays
one round; when no such token turns up within the bound, any fresh token is used. Method: draw
for many keys and partition counts and compare partitions with ``PartitionMap``; force the
fallback with a generator that never lands.
"""

from __future__ import annotations

import itertools
import string

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


def test_no_landing_token_within_the_bound_falls_back_to_the_fresh_one() -> None:
    partitions = PartitionMap(16)
    key = "k"
    wanted = partitions.partition_of(key)

    def variants(token: str, count: int) -> list[str]:
        alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
        return [token[:-2] + alphabet[i >> 6] + alphabet[i & 63] for i in range(count)]

    # A fresh token none of whose first five variants lands on the key's partition.
    base = next(
        token
        for token in (f"token-{index:010d}" for index in itertools.count())
        if all(partitions.partition_of(v) != wanted for v in variants(token, 5))
        and partitions.partition_of(token) != wanted
    )
    calls: list[str] = []

    def generate() -> str:
        calls.append(base)
        return base

    token = draw_token(partitions, key, draws_max=5, generate=generate)
    assert calls == [base]  # one draw from the random source, whatever the tries
    assert token == base
    assert partitions.partition_of(token) != wanted


def test_tries_share_one_draw_and_keep_its_stem() -> None:
    partitions = PartitionMap(16)
    calls: list[str] = []

    def generate() -> str:
        calls.append(new_token())
        return calls[-1]

    for index in range(100):
        token = draw_token(partitions, f"key-{index}", generate=generate)
        assert token[:-2] == calls[-1][:-2]
    assert len(calls) == 100


def test_without_a_partition_map_any_fresh_token_does() -> None:
    assert draw_token(None, "k", generate=lambda: "fixed") == "fixed"
