"""Helpers for coordinator-core scripts: the test key layout and effect filters."""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.coordinator.effects import Finish, Send
from kvstore.types import PartitionId


def partition_of(key: str) -> PartitionId:
    """Keys "a:..." live on partition 1, "b:..." on 2, and so on."""
    return PartitionId(ord(key[0]) - ord("a") + 1)


def sends(effects: Sequence[object]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def finishes(effects: Sequence[object]) -> list[object]:
    return [e.result for e in effects if isinstance(e, Finish)]
