"""A real etcd for tests: :func:`require_etcd` (skip, or fail on CI) and :func:`running_etcd`.

Tests of the replicated control plane run Debian's ``etcd`` (``etcd-server``). Where it is not
installed they are skipped, except on CI (``CI=true``, which ``.ci/run`` sets and which installs
it): there a missing etcd fails them, so a broken install never passes as a green run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.localcluster import LocalCluster, PartitionReplication, replication_summary
from kvstore.replication.local_etcd import INSTALL_HINT, LocalEtcd, etcd_binary
from support.kvctl import kill_leftovers

__all__ = ["require_etcd", "running_etcd"]


def require_etcd() -> str:
    """The path of the etcd binary. When it is missing: skip the test, or fail it when the
    environment says ``CI=true``."""
    binary = etcd_binary()
    if binary is not None:
        return binary
    message = f"etcd is not installed (no `etcd` on PATH; `{INSTALL_HINT}`)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}, and CI=true requires it", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def running_etcd(*, fsync: bool = False) -> Iterator[LocalEtcd]:
    """A started private etcd in a temporary directory; stopped and removed on the way out,
    however the block ends. Without fsync by default: tests do not crash the machine."""
    require_etcd()
    with tempfile.TemporaryDirectory(prefix="kvstore-etcd-") as root:
        etcd = LocalEtcd(Path(root) / "etcd", fsync=fsync)
        try:
            etcd.start()
            yield etcd
        finally:
            etcd.stop()


@contextlib.contextmanager
def replicated_cluster(
    root: Path, *, nodes: int, partitions: int, factor: int
) -> Iterator[LocalCluster]:
    """A replicated local cluster in ``root`` (its private etcd included), up; on exit down by
    the cluster file as it is then (nodes added meanwhile too), leftovers killed, the directory
    removed (etcd preallocates a 64 MB WAL)."""
    require_etcd()
    made = LocalCluster.create(root, nodes=nodes, partitions=partitions, replication_factor=factor)
    try:
        made.up()
        yield made
    finally:
        try:
            made.down()
        finally:
            kill_leftovers(root)
            shutil.rmtree(root.parent, ignore_errors=True)


def partition_rows(cluster: LocalCluster) -> dict[int, PartitionReplication]:
    """Each partition's replication as the nodes report it, by partition."""
    return {row.partition: row for row in replication_summary(cluster.status(rates=False))}
