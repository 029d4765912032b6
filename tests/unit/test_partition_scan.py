"""Scan pages of the partition core: key order, bounds, paging, and intents stay invisible."""

from __future__ import annotations

import pytest
from support.partition import Partition, delete, put, ts

from kvstore.errors import ValidationError
from kvstore.messages import ScanRequest
from kvstore.storage_node.core import PartitionCore
from kvstore.types import PartitionId


def scan(core: PartitionCore, start: str, end: str | None, limit: int) -> tuple[list[str], object]:
    reply = core.scan(ScanRequest(partition=PartitionId(0), start=start, end=end, limit=limit))
    return [item.key for item in reply.reply.items], reply.reply.next_start


def test_scan_pages_in_key_order_within_bounds() -> None:
    p = Partition()
    for i, key in enumerate(["d", "a", "c", "b", "e"]):
        p.write(put(key, i), 10 + i)
    assert scan(p.core, "", None, 10) == (["a", "b", "c", "d", "e"], None)
    assert scan(p.core, "b", "e", 10) == (["b", "c", "d"], None)
    assert scan(p.core, "a", None, 2) == (["a", "b"], "c")
    assert scan(p.core, "c", None, 2) == (["c", "d"], "e")


def test_scan_hides_tombstones_and_intents() -> None:
    p = Partition()
    p.write(put("a", 1), 10)
    p.write(put("b", 2), 11)
    p.write(delete("a"), 12)
    assert p.prepare("t1", ts(100), put("c", 3)).accepted
    assert scan(p.core, "", None, 10) == (["b"], None)
    p.commit("t1")
    assert scan(p.core, "", None, 10) == (["b", "c"], None)


@pytest.mark.parametrize("limit", [0, -1, True])
def test_scan_refuses_a_non_positive_limit(limit: int) -> None:
    with pytest.raises(ValidationError):
        scan(Partition().core, "", None, limit)
