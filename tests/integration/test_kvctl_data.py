"""kvctl's data and admin commands as a subprocess against a real cluster (3 nodes, 1
coordinator): get, put, delete, scan, txn, read, token, recover, inspect; text and --json
output; exit statuses from the error catalogue; one-line errors, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import LocalNodes

KVCTL = (sys.executable, "-m", "kvstore.cli.kvctl")
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNodes]:
    nodes = LocalNodes(
        tmp_path_factory.mktemp("kvctl-data"),
        ("n1", "n2", "n3"),
        partitions=8,
        coordinator_ids=("c1",),
    )
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.close()


def kvctl(
    cluster: LocalNodes, *args: str, stdin: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    connection = ["--url", cluster.api("c1"), "--token", token or cluster.tokens["admin"]]
    command = [*KVCTL, *args]
    if args[0] in ("get", "put", "delete", "scan", "txn", "read"):
        command += connection
    elif args[0] in ("token", "recover", "inspect"):
        command += ["--config", str(cluster.config_path)]
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def ok_json(run: subprocess.CompletedProcess[str]) -> object:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def one_line_error(run: subprocess.CompletedProcess[str], status: int) -> None:
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_put_get_delete_round_trip_with_conditions(cluster: LocalNodes) -> None:
    written = ok_json(kvctl(cluster, "put", "k/1", '{"n": 1}', "--json"))
    assert isinstance(written, dict) and written["version"] >= 1
    item = ok_json(kvctl(cluster, "get", "k/1", "--json"))
    assert isinstance(item, dict) and item["value"] == {"n": 1}
    text = kvctl(cluster, "get", "k/1")
    assert text.returncode == 0 and '"n": 1' in text.stdout
    refused = kvctl(cluster, "put", "k/1", "2", "--if", '{"version": 999}')
    one_line_error(refused, 4)  # ConditionFailed: refused
    deleted = ok_json(kvctl(cluster, "delete", "k/1", "--json"))
    assert isinstance(deleted, dict) and deleted["deleted"] is True
    one_line_error(kvctl(cluster, "get", "k/1"), 3)  # NotFound


def test_txn_from_stdin_and_file_then_read(cluster: LocalNodes, tmp_path: Path) -> None:
    ops = [
        {"op": "put", "key": "t/a", "value": 1},
        {"op": "update", "key": "t/b", "add": {"n": 5}},
    ]
    committed = ok_json(kvctl(cluster, "txn", "--json", stdin=json.dumps(ops)))
    assert isinstance(committed, dict) and committed["committed"] is True
    file = tmp_path / "ops.json"
    file.write_text(json.dumps({"ops": [{"op": "update", "key": "t/b", "add": {"n": 1}}]}))
    ok_json(kvctl(cluster, "txn", str(file), "--json"))
    read = ok_json(kvctl(cluster, "read", "t/a", "t/b", "t/none", "--json"))
    assert isinstance(read, dict)
    assert [entry.get("value") for entry in read["items"]] == [1, {"n": 6}, None]
    assert read["items"][2] == {"key": "t/none", "found": False}
    cancelled = kvctl(
        cluster, "txn", stdin=json.dumps([{"op": "check", "key": "t/a", "if": {"exists": False}}])
    )
    one_line_error(cancelled, 4)  # TransactionCanceled


def test_scan_lists_a_prefix_in_order_as_a_table_and_as_json_lines(cluster: LocalNodes) -> None:
    keys = [f"s/{i:02d}" for i in range(12)]
    ops = [{"op": "put", "key": key, "value": i} for i, key in enumerate(keys)]
    ok_json(kvctl(cluster, "txn", "--json", stdin=json.dumps(ops)))
    lines = kvctl(cluster, "scan", "--prefix", "s/", "--json")
    assert lines.returncode == 0, lines.stderr
    assert [json.loads(line)["key"] for line in lines.stdout.splitlines()] == keys
    limited = kvctl(cluster, "scan", "--prefix", "s/", "--limit", "5", "--json")
    assert len(limited.stdout.splitlines()) == 5
    table = kvctl(cluster, "scan", "--prefix", "s/")
    assert table.returncode == 0 and "s/11" in table.stdout and "12 items" in table.stdout


def test_bad_input_gets_one_line_and_the_documented_status(
    cluster: LocalNodes, tmp_path: Path
) -> None:
    one_line_error(kvctl(cluster, "put", "k", "not json"), 2)
    one_line_error(kvctl(cluster, "txn", stdin="{not json"), 2)
    one_line_error(kvctl(cluster, "txn", str(tmp_path / "missing.json")), 2)
    one_line_error(kvctl(cluster, "txn", stdin='{"ops": [], "extra": 1}'), 2)
    one_line_error(kvctl(cluster, "get", "k", token="kvt_wrong"), 5)  # Unauthorized
    read_only = cluster.tokens["read-only"]
    one_line_error(kvctl(cluster, "put", "k", "1", token=read_only), 5)  # Forbidden
    stopped = subprocess.run(
        [*KVCTL, "get", "k", "--url", "http://127.0.0.1:9", "--token", "x"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    one_line_error(stopped, 6)  # Unavailable: retry later


def test_tokens_can_be_created_used_listed_and_revoked(cluster: LocalNodes) -> None:
    created = ok_json(kvctl(cluster, "token", "create", "ci-bot", "--role", "read-only", "--json"))
    assert isinstance(created, dict) and created["token"].startswith("kvt_")
    token = created["token"]
    ok_json(kvctl(cluster, "put", "tok/k", "1", "--json"))
    got = kvctl(cluster, "get", "tok/k", "--json", token=token)
    # The coordinator re-reads the token file within a second; poll that long at most.
    for _ in range(30):
        if got.returncode == 0:
            break
        got = kvctl(cluster, "get", "tok/k", "--json", token=token)
    assert got.returncode == 0, got.stderr
    listed = ok_json(kvctl(cluster, "token", "list", "--json"))
    assert isinstance(listed, list)
    entry = next(e for e in listed if e["name"] == "ci-bot")
    assert entry["role"] == "read-only" and set(entry) == {"name", "role", "created"}
    assert token not in json.dumps(listed)  # never the values
    ok_json(kvctl(cluster, "token", "revoke", "ci-bot", "--json"))
    one_line_error(kvctl(cluster, "token", "revoke", "ci-bot"), 3)


def test_recover_and_inspect_report_a_quiet_cluster(cluster: LocalNodes) -> None:
    stuck = ok_json(kvctl(cluster, "recover", "--json"))
    assert stuck == []
    text = kvctl(cluster, "recover")
    assert text.returncode == 0 and "no transaction stuck" in text.stdout
    page = ok_json(kvctl(cluster, "inspect", "0", "--json"))
    assert isinstance(page, dict) and page["partition"] == 0 and page["intents"] == 0
    one_line_error(kvctl(cluster, "inspect", "99"), 2)
