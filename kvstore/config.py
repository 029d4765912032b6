"""The cluster file (``cluster.toml``): map, addresses, data directories, secret, timing.

Theory of operation
-------------------
Every process of a cluster reads the same TOML file. It names the map epoch, the partition count,
each storage node (``address``, ``data_dir``, and optionally the ``partitions`` it owns; either
every node lists its partitions or none does, and then partitions go round-robin in node order),
each coordinator's ``address``, the file holding the cluster secret, the API token file
(``api_tokens_file``, by default ``api_tokens.toml``; see :mod:`kvstore.api.tokens`), the most
operations one transaction may carry (``txn_ops_max``, at most ``TXN_OPS_MAX_CEILING``), the
requests a coordinator serves at once before it answers ``Overloaded``
(``api_requests_in_flight_max``, by default ``API_REQUESTS_IN_FLIGHT_MAX``), optional
``[timing]`` overrides of the partition core's time constants (tests shorten them), and an
optional ``[replication]`` table (below). Relative paths are relative to the file's directory.
Loading is strict: an unknown key, a wrong type or an inconsistent map is a
:class:`~kvstore.errors.ValidationError` naming the field, before any process starts serving.

**Replication.** Without ``[replication]`` (or with ``factor = 1``) every partition has one
copy on its owner and no control plane is involved: the cluster runs as it always did. With
``factor = N > 1`` (at most the node count) each partition is kept on ``N`` nodes (partition
``p`` on ``N`` consecutive nodes from node ``p mod nodes``, in file order; the live leaders are in
the control plane, :mod:`kvstore.replication.placement`), which then needs ``endpoints`` (the
etcd client URLs, ``http://host:port``) and ``prefix`` (the key prefix of this cluster in etcd;
a local cluster uses its cluster id). A replicated cluster's map comes from the replication
factor, so nodes may not list their ``partitions`` there.

The secret file must not be readable by group or others (mode 0600): a secret anyone on the box can
read protects nothing, so :func:`read_secret` refuses it instead of silently accepting it.
:func:`write_cluster_file` and :func:`write_secret` produce files :func:`load_cluster` accepts.
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import tomli_w

from kvstore.errors import ValidationError
from kvstore.limits import (
    API_REQUESTS_IN_FLIGHT_CEILING,
    API_REQUESTS_IN_FLIGHT_MAX,
    PARTITIONS_DEFAULT,
    TXN_OPS_MAX_CEILING,
    TXN_OPS_MAX_DEFAULT,
)
from kvstore.partitioning import ClusterMap, PartitionMap
from kvstore.storage_node.core import PartitionConfig
from kvstore.types import NodeId, PartitionId

__all__ = [
    "NodeSpec",
    "ReplicationSpec",
    "CoordinatorSpec",
    "ClusterConfig",
    "load_cluster",
    "read_secret",
    "write_secret",
    "write_cluster_file",
    "TIMING_KEYS",
]

TIMING_KEYS = (
    "max_clock_skew_ms",
    "intent_stale_ms",
    "ledger_decision_deadline_ms",
    "ledger_retention_ms",
    "idempotency_window_ms",
    "tombstone_retention_ms",
)
"""The ``[timing]`` keys: fields of :class:`~kvstore.storage_node.core.PartitionConfig`."""

_SECRET_BYTES = 32
_TOP_KEYS = {
    "epoch",
    "partitions",
    "secret_file",
    "api_tokens_file",
    "txn_ops_max",
    "api_requests_in_flight_max",
    "nodes",
    "coordinators",
    "timing",
    "replication",
}
_REPLICATION_KEYS = {"factor", "endpoints", "prefix"}
_API_TOKENS_FILE_DEFAULT = "api_tokens.toml"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: NodeId
    address: str  # host:port
    data_dir: Path


@dataclass(frozen=True, slots=True)
class ReplicationSpec:
    """The ``[replication]`` table: the replication factor and, when it is above 1, the control
    plane's etcd client URLs and this cluster's key prefix there."""

    factor: int = 1
    endpoints: tuple[str, ...] = ()
    prefix: str = ""

    @property
    def replicated(self) -> bool:
        return self.factor > 1


@dataclass(frozen=True, slots=True)
class CoordinatorSpec:
    coordinator_id: str
    address: str


@dataclass(frozen=True)
class ClusterConfig:
    """A loaded cluster file."""

    path: Path
    cluster_map: ClusterMap
    nodes: Mapping[NodeId, NodeSpec]
    coordinators: Mapping[str, CoordinatorSpec]
    secret_file: Path
    api_tokens_file: Path
    partition_config: PartitionConfig = field(default_factory=PartitionConfig)
    txn_ops_max: int = TXN_OPS_MAX_DEFAULT
    api_requests_in_flight_max: int = API_REQUESTS_IN_FLIGHT_MAX
    replication: ReplicationSpec = field(default_factory=ReplicationSpec)

    def node(self, node_id: str) -> NodeSpec:
        spec = self.nodes.get(NodeId(node_id))
        if spec is None:
            known = ", ".join(sorted(self.nodes))
            raise ValidationError("id", f"no node {node_id!r} in {self.path} (nodes: {known})")
        return spec

    def coordinator(self, coordinator_id: str) -> CoordinatorSpec:
        spec = self.coordinators.get(coordinator_id)
        if spec is None:
            known = ", ".join(sorted(self.coordinators))
            raise ValidationError(
                "id", f"no coordinator {coordinator_id!r} in {self.path} (coordinators: {known})"
            )
        return spec

    def secret(self) -> str:
        return read_secret(self.secret_file)


def _table(raw: object, field_name: str) -> Mapping[str, object]:
    if not isinstance(raw, dict):
        raise ValidationError(field_name, "must be a table")
    return raw


def _check_keys(table: Mapping[str, object], allowed: set[str], field_name: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValidationError(field_name, f"unknown keys {unknown}; allowed: {sorted(allowed)}")


def _int(raw: object, field_name: str, minimum: int = 0) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise ValidationError(field_name, f"must be an integer >= {minimum}, got {raw!r}")
    return raw


def _str(raw: object, field_name: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValidationError(field_name, f"must be a non-empty string, got {raw!r}")
    return raw


def _txn_ops_max(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= TXN_OPS_MAX_CEILING:
        raise ValidationError(
            "txn_ops_max", f"must be an integer in 1..{TXN_OPS_MAX_CEILING}, got {raw!r}"
        )
    return raw


def _bounded(raw: object, field_name: str, ceiling: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= ceiling:
        raise ValidationError(field_name, f"must be an integer in 1..{ceiling}, got {raw!r}")
    return raw


def _replication(raw: object, node_count: int, partitions_listed: bool) -> ReplicationSpec:
    table = _table(raw, "replication")
    _check_keys(table, _REPLICATION_KEYS, "replication")
    factor = table.get("factor", 1)
    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= node_count:
        raise ValidationError(
            "replication.factor",
            f"must be an integer in 1..{node_count} (the node count), got {factor!r}",
        )
    endpoints_raw = table.get("endpoints", [])
    if not isinstance(endpoints_raw, list):
        raise ValidationError("replication.endpoints", "must be a list of etcd client URLs")
    endpoints = tuple(_endpoint(url) for url in endpoints_raw)
    prefix = table.get("prefix", "")
    if not isinstance(prefix, str):
        raise ValidationError("replication.prefix", f"must be a string, got {prefix!r}")
    if factor > 1:
        if not endpoints:
            raise ValidationError(
                "replication.endpoints",
                f"a replication factor of {factor} needs the control plane: list its etcd "
                'client URLs, e.g. endpoints = ["http://127.0.0.1:2379"]',
            )
        if not prefix:
            raise ValidationError(
                "replication.prefix",
                "a replicated cluster needs its key prefix in etcd (e.g. the cluster id)",
            )
        if partitions_listed:
            raise ValidationError(
                "nodes",
                "a replicated cluster places its partitions by the replication factor; "
                "remove the nodes' partitions lists",
            )
    return ReplicationSpec(factor=factor, endpoints=endpoints, prefix=prefix)


def _endpoint(raw: object) -> str:
    url = _str(raw, "replication.endpoints")
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest.strip("/"):
        raise ValidationError(
            "replication.endpoints", f"must be http(s)://host:port URLs, got {url!r}"
        )
    return url


def load_cluster(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a cluster file."""
    file = Path(path).resolve()
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationError("config", f"no cluster file at {file}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValidationError("config", f"{file} is not valid TOML: {error}") from None
    _check_keys(doc, _TOP_KEYS, "config")
    base = file.parent
    epoch = _int(doc.get("epoch", 1), "epoch")
    pmap = PartitionMap(_int(doc.get("partitions", PARTITIONS_DEFAULT), "partitions", 1))
    nodes_raw = _table(doc.get("nodes", {}), "nodes")
    nodes: dict[NodeId, NodeSpec] = {}
    listed: dict[NodeId, list[PartitionId]] = {}
    for node_id, raw in nodes_raw.items():
        where = f"nodes.{node_id}"
        table = _table(raw, where)
        _check_keys(table, {"address", "data_dir", "partitions"}, where)
        nid = NodeId(node_id)
        data_dir = base / _str(table.get("data_dir", f"data/{node_id}"), f"{where}.data_dir")
        nodes[nid] = NodeSpec(nid, _str(table.get("address"), f"{where}.address"), data_dir)
        if "partitions" in table:
            owned = table["partitions"]
            if not isinstance(owned, list):
                raise ValidationError(f"{where}.partitions", "must be a list of partition ids")
            listed[nid] = [PartitionId(_int(p, f"{where}.partitions")) for p in owned]
    if listed and len(listed) != len(nodes):
        raise ValidationError("nodes", "either every node lists its partitions or none does")
    replication = _replication(doc.get("replication", {}), len(nodes), bool(listed))
    addresses = {nid: spec.address for nid, spec in nodes.items()}
    if listed:
        owners: dict[PartitionId, NodeId] = {}
        for nid, owned_pids in listed.items():
            for pid in owned_pids:
                if pid in owners:
                    raise ValidationError("nodes", f"partition {pid} is listed by two nodes")
                owners[pid] = nid
        cmap = ClusterMap(epoch=epoch, partitions=pmap, owners=owners, nodes=addresses)
    else:
        cmap = ClusterMap.round_robin(list(nodes), addresses, pmap.partition_count, epoch)
    coordinators: dict[str, CoordinatorSpec] = {}
    for cid, raw in _table(doc.get("coordinators", {}), "coordinators").items():
        where = f"coordinators.{cid}"
        table = _table(raw, where)
        _check_keys(table, {"address"}, where)
        coordinators[cid] = CoordinatorSpec(cid, _str(table.get("address"), f"{where}.address"))
    timing = _table(doc.get("timing", {}), "timing")
    _check_keys(timing, set(TIMING_KEYS), "timing")
    overrides = {name: _int(value, f"timing.{name}", 1) for name, value in timing.items()}
    secret_file = base / _str(doc.get("secret_file", "secret"), "secret_file")
    api_tokens_file = base / _str(
        doc.get("api_tokens_file", _API_TOKENS_FILE_DEFAULT), "api_tokens_file"
    )
    return ClusterConfig(
        path=file,
        cluster_map=cmap,
        nodes=MappingProxyType(nodes),
        coordinators=MappingProxyType(coordinators),
        secret_file=secret_file,
        api_tokens_file=api_tokens_file,
        partition_config=PartitionConfig(**overrides),  # type: ignore[arg-type]
        txn_ops_max=_txn_ops_max(doc.get("txn_ops_max", TXN_OPS_MAX_DEFAULT)),
        api_requests_in_flight_max=_bounded(
            doc.get("api_requests_in_flight_max", API_REQUESTS_IN_FLIGHT_MAX),
            "api_requests_in_flight_max",
            API_REQUESTS_IN_FLIGHT_CEILING,
        ),
        replication=replication,
    )


def read_secret(path: Path) -> str:
    """The cluster secret; refuses a file that group or others may read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValidationError("secret_file", f"no secret file at {path}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValidationError(
            "secret_file", f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600 it"
        )
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 16:
        raise ValidationError("secret_file", f"{path} holds no secret of at least 16 characters")
    return secret


def write_secret(path: Path) -> str:
    """Create ``path`` with a fresh random secret, mode 0600 from the start (never wider)."""
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    return secret


def write_cluster_file(
    path: Path,
    *,
    nodes: Mapping[str, str],
    partitions: int = PARTITIONS_DEFAULT,
    epoch: int = 1,
    coordinators: Mapping[str, str] | None = None,
    timing: Mapping[str, int] | None = None,
    secret_file: str = "secret",
    api_tokens_file: str | None = None,
    txn_ops_max: int | None = None,
    api_requests_in_flight_max: int | None = None,
    replication: ReplicationSpec | None = None,
) -> None:
    """Write a cluster file: ``nodes`` maps node id to address; data in ``data/<id>``.

    ``api_tokens_file``, ``txn_ops_max``, ``api_requests_in_flight_max`` and ``replication``
    are written only when given (else the defaults apply when the file is loaded).
    """
    doc: dict[str, object] = {
        "epoch": epoch,
        "partitions": partitions,
        "secret_file": secret_file,
        "nodes": {nid: {"address": addr, "data_dir": f"data/{nid}"} for nid, addr in nodes.items()},
    }
    if api_tokens_file is not None:
        doc["api_tokens_file"] = api_tokens_file
    if txn_ops_max is not None:
        doc["txn_ops_max"] = txn_ops_max
    if api_requests_in_flight_max is not None:
        doc["api_requests_in_flight_max"] = api_requests_in_flight_max
    if coordinators:
        doc["coordinators"] = {cid: {"address": addr} for cid, addr in coordinators.items()}
    if timing:
        doc["timing"] = dict(timing)
    if replication is not None:
        doc["replication"] = {
            "factor": replication.factor,
            "endpoints": list(replication.endpoints),
            "prefix": replication.prefix,
        }
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
