"""SDK clients across ``os.fork()`` without a cluster: the process check and the sync loop.

Goal: state made by one process is dropped once, before any use, in a forked child and never
in the parent (``kvstore.client.forks``); a blocking client built before the fork answers in
the child instead of waiting forever for a loop thread the fork did not copy. The real
connections (direct and gateway mode) are in ``tests/integration/test_sdk_fork.py``.
"""

from __future__ import annotations

import json
import os

import pytest
from support.forking import run_forked

from kvstore.client import Client, SyncClient
from kvstore.client.forks import ProcessOwner
from kvstore.client.memory import MemoryBackend

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_a_process_owner_drops_once_in_a_child_and_never_in_the_parent() -> None:
    owner = ProcessOwner()
    drops: list[int] = []

    def drop() -> None:
        drops.append(os.getpid())

    assert not owner.adopt(drop)

    def child() -> bytes:
        first, second = owner.adopt(drop), owner.adopt(drop)
        return json.dumps([first, second, drops == [os.getpid()]]).encode()

    forked = run_forked(child, lambda: owner.adopt(drop), timeout_s=30)
    assert json.loads(forked.child) == [True, False, True]
    assert forked.parent is False
    assert drops == []  # the parent's copy never dropped anything


def test_a_sync_client_built_before_a_fork_answers_in_the_child_and_the_parent() -> None:
    with SyncClient(Client(MemoryBackend())) as kv:
        kv.put("before", 1)
        loop = kv._loop

        def child() -> bytes:
            kv.put("child", 2)  # hung forever before: the loop's thread is not in the child
            item = kv.get("child")
            return json.dumps([None if item is None else item.value, kv._loop is loop]).encode()

        forked = run_forked(child, lambda: kv.put("parent", 3), timeout_s=30)
        assert json.loads(forked.child) == [2, False]  # its own loop
        assert kv._loop is loop
        item = kv.get("parent")
        assert item is not None and item.value == 3
        assert kv.get("child") is None  # a memory store is per process
