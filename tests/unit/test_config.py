"""The cluster file: the API token file and ``txn_ops_max`` keys, coordinator look-up, and the
``[replication]`` table.

Goal: the new optional keys load with their documented defaults, are validated strictly (a bad
value is a ValidationError naming the key), and older cluster files load unchanged. Method:
files written by ``write_cluster_file`` or by hand in ``tmp_path``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from kvstore.config import ReplicationSpec, load_cluster, write_cluster_file
from kvstore.errors import ValidationError
from kvstore.limits import TXN_OPS_MAX_CEILING, TXN_OPS_MAX_DEFAULT

NODES = {"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002"}
COORDINATORS = {"c1": "127.0.0.1:8001", "c2": "127.0.0.1:8002"}


def write_doc(path: Path, **extra: object) -> Path:
    doc: dict[str, object] = {"nodes": {"n1": {"address": "127.0.0.1:7001"}}, **extra}
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


def test_defaults_when_the_keys_are_absent(tmp_path: Path) -> None:
    file = tmp_path / "cluster.toml"
    write_cluster_file(file, nodes=NODES)
    raw = tomllib.loads(file.read_text(encoding="utf-8"))
    assert "api_tokens_file" not in raw
    assert "txn_ops_max" not in raw
    config = load_cluster(file)
    assert config.api_tokens_file == tmp_path.resolve() / "api_tokens.toml"
    assert config.txn_ops_max == TXN_OPS_MAX_DEFAULT


def test_keys_are_written_and_loaded(tmp_path: Path) -> None:
    file = tmp_path / "cluster.toml"
    write_cluster_file(file, nodes=NODES, api_tokens_file="auth/tokens.toml", txn_ops_max=250)
    raw = tomllib.loads(file.read_text(encoding="utf-8"))
    assert raw["api_tokens_file"] == "auth/tokens.toml"
    assert raw["txn_ops_max"] == 250
    config = load_cluster(file)
    assert config.api_tokens_file == tmp_path.resolve() / "auth" / "tokens.toml"
    assert config.txn_ops_max == 250


def test_absolute_api_tokens_file_is_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc" / "tokens.toml"
    file = write_doc(tmp_path / "cluster.toml", api_tokens_file=str(elsewhere))
    assert load_cluster(file).api_tokens_file == elsewhere


@pytest.mark.parametrize("value", [1, TXN_OPS_MAX_DEFAULT, TXN_OPS_MAX_CEILING])
def test_txn_ops_max_in_range(tmp_path: Path, value: int) -> None:
    file = write_doc(tmp_path / "cluster.toml", txn_ops_max=value)
    assert load_cluster(file).txn_ops_max == value


@pytest.mark.parametrize("value", [0, -1, TXN_OPS_MAX_CEILING + 1, True, "100", 1.5])
def test_txn_ops_max_out_of_range_or_wrong_type(tmp_path: Path, value: object) -> None:
    file = write_doc(tmp_path / "cluster.toml", txn_ops_max=value)
    with pytest.raises(ValidationError) as caught:
        load_cluster(file)
    assert caught.value.field == "txn_ops_max"


@pytest.mark.parametrize("value", ["", 5, ["a"], {"path": "x"}])
def test_api_tokens_file_must_be_a_non_empty_string(tmp_path: Path, value: object) -> None:
    file = write_doc(tmp_path / "cluster.toml", api_tokens_file=value)
    with pytest.raises(ValidationError) as caught:
        load_cluster(file)
    assert caught.value.field == "api_tokens_file"


def test_unknown_top_level_key_is_still_refused(tmp_path: Path) -> None:
    file = write_doc(tmp_path / "cluster.toml", api_token_file="typo.toml")
    with pytest.raises(ValidationError) as caught:
        load_cluster(file)
    assert caught.value.field == "config"
    assert "api_token_file" in caught.value.message


def test_coordinator_lookup(tmp_path: Path) -> None:
    file = tmp_path / "cluster.toml"
    write_cluster_file(file, nodes=NODES, coordinators=COORDINATORS)
    config = load_cluster(file)
    spec = config.coordinator("c2")
    assert (spec.coordinator_id, spec.address) == ("c2", "127.0.0.1:8002")
    assert config.node("n1").address == "127.0.0.1:7001"
    with pytest.raises(ValidationError) as caught:
        config.coordinator("c9")
    assert caught.value.field == "id"
    assert "'c9'" in caught.value.message
    assert "c1, c2" in caught.value.message


def test_coordinator_lookup_without_coordinators(tmp_path: Path) -> None:
    file = tmp_path / "cluster.toml"
    write_cluster_file(file, nodes=NODES)
    with pytest.raises(ValidationError) as caught:
        load_cluster(file).coordinator("c1")
    assert caught.value.field == "id"


# --- [replication] ------------------------------------------------------------------------------

ETCD = ["http://127.0.0.1:2379"]


def test_no_replication_table_means_factor_one_and_no_control_plane(tmp_path: Path) -> None:
    file = tmp_path / "cluster.toml"
    write_cluster_file(file, nodes=NODES)
    assert "replication" not in tomllib.loads(file.read_text(encoding="utf-8"))
    spec = load_cluster(file).replication
    assert spec == ReplicationSpec() and not spec.replicated


def test_replication_is_written_and_loaded(tmp_path: Path) -> None:
    file = tmp_path / "cluster.toml"
    spec = ReplicationSpec(factor=2, endpoints=tuple(ETCD), prefix="/kvstore/lc-1")
    write_cluster_file(file, nodes=NODES, replication=spec)
    loaded = load_cluster(file)
    assert loaded.replication == spec and loaded.replication.replicated
    # The static map's owners are the first placement's leaders (partition p on node p mod n).
    assert loaded.cluster_map.owner_of(loaded.cluster_map.partitions.partition_of("k")) in NODES


def test_factor_one_needs_no_endpoints(tmp_path: Path) -> None:
    file = write_doc(tmp_path / "cluster.toml", replication={"factor": 1})
    assert not load_cluster(file).replication.replicated


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"factor": 0}, "replication.factor"),
        ({"factor": 2, "endpoints": ETCD, "prefix": "/p"}, "replication.factor"),  # one node
        ({"factor": True}, "replication.factor"),
        ({"factor": "3"}, "replication.factor"),
        ({"endpoints": "http://127.0.0.1:2379"}, "replication.endpoints"),
        ({"endpoints": ["127.0.0.1:2379"]}, "replication.endpoints"),
        ({"endpoints": [""]}, "replication.endpoints"),
        ({"prefix": 5}, "replication.prefix"),
        ({"factr": 1}, "replication"),
    ],
)
def test_bad_replication_tables_are_refused(
    tmp_path: Path, table: dict[str, object], field: str
) -> None:
    file = write_doc(tmp_path / "cluster.toml", replication=table)
    with pytest.raises(ValidationError) as caught:
        load_cluster(file)
    assert caught.value.field == field


def write_two_nodes(path: Path, replication: dict[str, object], **node: object) -> Path:
    nodes = {nid: {"address": address, **node} for nid, address in NODES.items()}
    path.write_text(tomli_w.dumps({"nodes": nodes, "replication": replication}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"factor": 2, "prefix": "/p"}, "replication.endpoints"),
        ({"factor": 2, "endpoints": ETCD}, "replication.prefix"),
        ({"factor": 3, "endpoints": ETCD, "prefix": "/p"}, "replication.factor"),
    ],
)
def test_a_replicated_cluster_needs_its_control_plane(
    tmp_path: Path, table: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        load_cluster(write_two_nodes(tmp_path / "cluster.toml", table))
    assert caught.value.field == field


def test_a_replicated_cluster_refuses_listed_partitions(tmp_path: Path) -> None:
    table = {"factor": 2, "endpoints": ETCD, "prefix": "/p"}
    file = write_two_nodes(tmp_path / "cluster.toml", table, partitions=[])
    with pytest.raises(ValidationError) as caught:
        load_cluster(file)
    assert caught.value.field == "nodes"
