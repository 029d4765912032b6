"""kvctl's data and admin commands as a subprocess against a real cluster (3 nodes, 1
coordinator): get, put, delete, scan, txn, read (also as of a timestamp, --at), token, recover,
inspect; text and --json output; exit statuses from the error catalogue; one-line errors, never
a traceback.

Also what a new user meets first: JSON arguments from stdin (``-``) and files (``@FILE``), a
missing token named as kvctl's option, a limited scan that says more items exist, a stopped
local cluster (made by :class:`~kvstore.localcluster.LocalCluster`, in a directory of its own)
that says to run ``kvctl cluster up``, and cancelled transactions that name each failed op's
key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import LocalNodes, refusing_port

import kvstore
from kvstore.errors import TransactionCanceled, ValidationError
from kvstore.limits import KVCTL_INPUT_BYTES_MAX, VALUE_BYTES_MAX
from kvstore.localcluster import LocalCluster

KVCTL = (sys.executable, "-m", "kvstore.cli.kvctl")
TIMEOUT_S = 60
# What kvctl reads from the environment: the tests say everything on the command line.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("KV_URL", "KV_TOKEN", "KVSTORE_DIR")}


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
    return run(*command[len(KVCTL) :], stdin=stdin)


def run(
    *args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """kvctl with exactly ``args`` (no connection options added), in a clean environment."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run(
        [*KVCTL, *args],
        input=data,
        capture_output=True,
        timeout=TIMEOUT_S,
        env=CLEAN_ENV if env is None else env,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def ok_json(run: subprocess.CompletedProcess[str]) -> object:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def one_line_error(run: subprocess.CompletedProcess[str], status: int) -> str:
    """The one line on stderr of a command that failed with ``status``."""
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    return run.stderr.strip()


def error_json(run: subprocess.CompletedProcess[str], status: int) -> dict[str, object]:
    """The ``error`` object a --json command printed on stderr when it failed with ``status``."""
    one_line_error(run, status)
    error = json.loads(run.stderr)["error"]
    assert isinstance(error, dict) and error["exit_status"] == status
    return error


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
    ok_json(kvctl(cluster, "txn", f"@{file}", "--json"))
    read = ok_json(kvctl(cluster, "read", "t/a", "t/b", "t/none", "--json"))
    assert isinstance(read, dict)
    assert [entry.get("value") for entry in read["items"]] == [1, {"n": 6}, None]
    assert read["items"][2] == {"key": "t/none", "found": False}
    cancelled = kvctl(
        cluster, "txn", stdin=json.dumps([{"op": "check", "key": "t/a", "if": {"exists": False}}])
    )
    one_line_error(cancelled, 4)  # TransactionCanceled


def test_read_at_a_timestamp_shows_the_items_as_of_then(cluster: LocalNodes) -> None:
    first = ok_json(kvctl(cluster, "put", "at/k", '"v1"', "--json"))
    assert isinstance(first, dict)
    ok_json(kvctl(cluster, "put", "at/k", '"v2"', "--json"))
    at = str(first["ts"])
    read = ok_json(kvctl(cluster, "read", "at/k", "at/none", "--at", at, "--json"))
    assert read == {
        "items": [
            {"key": "at/k", "value": "v1", "version": first["version"], "ts": at},
            {"key": "at/none", "found": False},
        ],
        "at": at,
    }
    text = kvctl(cluster, "read", "at/k", "--at", at)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"as of {at}\n") and '"v1"' in text.stdout
    latest = ok_json(kvctl(cluster, "read", "at/k", "--json"))
    assert isinstance(latest, dict) and latest["items"][0]["value"] == "v2" and "at" not in latest
    bad = one_line_error(kvctl(cluster, "read", "at/k", "--at", "yesterday"), 2)
    assert "--at: must be a timestamp" in bad
    physical, logical, origin = at.split(".")
    minute_ago = f"{int(physical) - 60_000_000}.{logical}.{origin}"
    too_old = error_json(kvctl(cluster, "read", "at/k", "--at", minute_ago, "--json"), 4)
    assert too_old["code"] == "SnapshotTooOld" and too_old["window_ms"] == 10_000


def test_scan_lists_a_prefix_in_order_as_a_table_and_as_json_lines(cluster: LocalNodes) -> None:
    keys = [f"s/{i:02d}" for i in range(12)]
    ops = [{"op": "put", "key": key, "value": i} for i, key in enumerate(keys)]
    ok_json(kvctl(cluster, "txn", "--json", stdin=json.dumps(ops)))
    lines = kvctl(cluster, "scan", "--prefix", "s/", "--json")
    assert lines.returncode == 0, lines.stderr
    *items, summary = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [item["key"] for item in items] == keys
    assert summary == {"count": 12, "more": False}
    table = kvctl(cluster, "scan", "--prefix", "s/")
    assert table.returncode == 0 and "s/11" in table.stdout
    assert table.stdout.rstrip().endswith("12 items")


def test_bad_input_gets_one_line_and_the_documented_status(
    cluster: LocalNodes, tmp_path: Path
) -> None:
    one_line_error(kvctl(cluster, "put", "k", "not json"), 2)
    one_line_error(kvctl(cluster, "txn", stdin="{not json"), 2)
    one_line_error(kvctl(cluster, "txn", "@" + str(tmp_path / "missing.json")), 2)
    one_line_error(kvctl(cluster, "txn", stdin='{"ops": [], "extra": 1}'), 2)
    one_line_error(kvctl(cluster, "get", "k", token="kvt_wrong"), 5)  # Unauthorized
    read_only = cluster.tokens["read-only"]
    one_line_error(kvctl(cluster, "put", "k", "1", token=read_only), 5)  # Forbidden


def test_tokens_can_be_created_used_listed_and_revoked(cluster: LocalNodes) -> None:
    created = ok_json(kvctl(cluster, "token", "create", "ci-bot", "--role", "read-only", "--json"))
    assert isinstance(created, dict) and created["token"].startswith("kvt_")
    token = created["token"]
    # The same token as AWS credentials for the DynamoDB endpoint (SigV4).
    assert created["aws_access_key_id"] == "ci-bot"
    assert created["aws_secret_access_key"] == token
    assert set(created) == {"name", "role", "token", "aws_access_key_id", "aws_secret_access_key"}
    text = kvctl(cluster, "token", "create", "ci-bot-2", "--role", "read-only")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "created token 'ci-bot-2' (read-only); keep it secret:"
    assert lines[1].startswith("kvt_")  # the token alone on the second line, as before
    assert f"export AWS_ACCESS_KEY_ID=ci-bot-2 AWS_SECRET_ACCESS_KEY={lines[1]}" in text.stdout
    ok_json(kvctl(cluster, "token", "revoke", "ci-bot-2", "--json"))
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


# --- JSON arguments: the text, - (stdin) or @FILE -----------------------------------------


def test_values_conditions_and_ops_come_from_stdin_or_a_file(
    cluster: LocalNodes, tmp_path: Path
) -> None:
    ok_json(kvctl(cluster, "put", "in/stdin", "-", "--json", stdin='{"from": "stdin"}'))
    value_file = tmp_path / "value.json"
    value_file.write_text(json.dumps({"from": "file", "text": "é"}), encoding="utf-8")
    ok_json(kvctl(cluster, "put", "in/file", f"@{value_file}", "--json"))
    # A string that starts with @ is JSON with its quotes: a value, not a file.
    ok_json(kvctl(cluster, "put", "in/at", '"@home"', "--json"))
    read = ok_json(kvctl(cluster, "read", "in/stdin", "in/file", "in/at", "--json"))
    assert isinstance(read, dict)
    assert [entry["value"] for entry in read["items"]] == [
        {"from": "stdin"},
        {"from": "file", "text": "é"},
        "@home",
    ]

    condition = tmp_path / "cond.json"
    condition.write_text('{"path": "from", "eq": "file"}')
    ok_json(kvctl(cluster, "put", "in/file", "2", "--if", f"@{condition}", "--json"))
    refused = kvctl(cluster, "delete", "in/file", "--if", "-", stdin='{"version": 99}')
    one_line_error(refused, 4)  # ConditionFailed, the condition came from stdin
    deleted = ok_json(
        kvctl(cluster, "delete", "in/file", "--if", "-", "--json", stdin='{"exists": true}')
    )
    assert isinstance(deleted, dict) and deleted["deleted"] is True

    ops_file = tmp_path / "ops.json"
    ops_file.write_text(json.dumps([{"op": "update", "key": "in/n", "add": {"n": 1}}]))
    ok_json(kvctl(cluster, "txn", f"@{ops_file}", "--json"))
    literal = [{"op": "update", "key": "in/n", "add": {"n": 10}}]
    ok_json(kvctl(cluster, "txn", json.dumps(literal), "--json"))
    ok_json(kvctl(cluster, "txn", "-", "--json", stdin=json.dumps({"ops": literal})))
    item = ok_json(kvctl(cluster, "get", "in/n", "--json"))
    assert isinstance(item, dict) and item["value"] == {"n": 21}


def test_bad_json_arguments_are_typed_errors_and_send_nothing(
    cluster: LocalNodes, tmp_path: Path
) -> None:
    def refused(status: int, *args: str, stdin: str | bytes | None = None) -> str:
        return one_line_error(kvctl(cluster, *args, stdin=stdin), status)

    missing = tmp_path / "missing.json"
    assert refused(2, "put", "bad/k", f"@{missing}") == f"kvctl: value: no file {missing}"
    assert "@ needs a file name" in refused(2, "put", "bad/k", "@")
    assert refused(2, "put", "bad/k", f"@{tmp_path}").endswith("is a directory")
    not_json = tmp_path / "notes.txt"
    not_json.write_text("hello\n")
    message = refused(2, "put", "bad/k", f"@{not_json}")
    assert f"value: {not_json} is not JSON: Expecting value at line 1 column 1" in message
    # A bare path is JSON text (not JSON here); the error says how to read the file.
    assert f"(to read the file, write @{not_json})" in refused(2, "put", "bad/k", str(not_json))
    assert f"(to read the file, write @{not_json})" in refused(2, "txn", str(not_json))
    assert "a string needs JSON quotes" in refused(2, "put", "bad/k", "text")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('"caf\xe9"'.encode("latin-1"))
    assert refused(2, "put", "bad/k", f"@{latin1}").endswith(f"{latin1} is not UTF-8 text")
    assert "stdin is not JSON" in refused(2, "put", "bad/k", "-", stdin="[1,")
    assert "nested too deeply" in refused(2, "put", "bad/k", "-", stdin="[" * 200_000)
    twice = refused(2, "put", "bad/k", "-", "--if", "-", stdin="1")
    assert twice == "kvctl: if: stdin already feeds value; give this one as JSON or @FILE"

    # Over the value limit: the SDK's validation, before anything is sent.
    big = tmp_path / "big.json"
    big.write_text(json.dumps("x" * (VALUE_BYTES_MAX + 1)))
    error = error_json(kvctl(cluster, "put", "bad/k", f"@{big}", "--json"), 2)
    assert error["code"] == "ValidationError" and error["field"] == "value"
    assert f"larger than the limit of {VALUE_BYTES_MAX} bytes" in str(error["message"])
    # Over what kvctl reads at all (a sparse file: no disk, no memory): TooLarge.
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(KVCTL_INPUT_BYTES_MAX + 1)
    error = error_json(kvctl(cluster, "txn", f"@{huge}", "--json"), 2)
    assert error["code"] == "TooLarge" and error["limit_bytes"] == KVCTL_INPUT_BYTES_MAX
    assert error["message"] == f"ops: {huge} holds more than {KVCTL_INPUT_BYTES_MAX} bytes"

    one_line_error(kvctl(cluster, "get", "bad/k"), 3)  # none of them wrote anything


# --- the token, in kvctl's words -----------------------------------------------------------


def test_a_missing_token_is_named_as_kvctl_s_option(
    cluster: LocalNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = cluster.api("c1")
    error = one_line_error(run("get", "k", "--url", url), 2)
    assert error == f"kvctl: --token: no API token for {url}: pass --token or set KV_TOKEN"
    # The same URL from the environment: the same answer.
    error = one_line_error(run("get", "k", env={**CLEAN_ENV, "KV_URL": url}), 2)
    assert "pass --token or set KV_TOKEN" in error
    # The SDK keeps its own words (its parameters), for the same mistake.
    monkeypatch.delenv("KV_TOKEN", raising=False)
    with pytest.raises(ValidationError) as raised:
        kvstore.connect_sync(url=url)
    assert raised.value.field == "token" and "pass token= or set KV_TOKEN" in raised.value.message


# --- scans that stop at --limit ------------------------------------------------------------


def test_a_limited_scan_says_when_more_exist_and_where_to_continue(cluster: LocalNodes) -> None:
    keys = [f"more/{i}" for i in range(5)]
    ok_json(
        kvctl(
            cluster,
            "txn",
            json.dumps([{"op": "put", "key": k, "value": 1} for k in keys]),
            "--json",
        )
    )

    text = kvctl(cluster, "scan", "--prefix", "more/", "--limit", "3")
    assert text.returncode == 0, text.stderr
    assert text.stdout.rstrip().endswith(
        "3 items; more exist: raise --limit, or continue with --start more/3"
    )
    lines = kvctl(cluster, "scan", "--prefix", "more/", "--limit", "3", "--json")
    *items, summary = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [item["key"] for item in items] == keys[:3]
    assert summary == {"count": 3, "more": True, "next_start": "more/3"}

    # Continuing from next_start gives the rest, and then nothing more.
    rest = kvctl(
        cluster, "scan", "--prefix", "more/", "--start", "more/3", "--limit", "3", "--json"
    )
    *items, summary = [json.loads(line) for line in rest.stdout.splitlines()]
    assert [item["key"] for item in items] == keys[3:]
    assert summary == {"count": 2, "more": False}
    # Exactly --limit items: no more.
    exact = kvctl(cluster, "scan", "--prefix", "more/", "--limit", "5")
    assert exact.stdout.rstrip().endswith("5 items")


# --- a cluster that cannot be reached ------------------------------------------------------


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A local cluster's directory as ``kvctl cluster up`` makes it; its processes are not
    started (a test that starts them has them stopped here, whatever happened)."""
    cluster = LocalCluster.create(tmp_path / "local")
    try:
        yield cluster
    finally:
        cluster.down()


def test_a_stopped_local_cluster_says_to_run_cluster_up(local_cluster: LocalCluster) -> None:
    root = str(local_cluster.root)
    up = f"`kvctl cluster up --dir {root}`"
    error = one_line_error(run("get", "k", "--dir", root), 6)
    assert error == f"kvctl: the local cluster in {root} is not running; start it with {up}"
    assert one_line_error(run("scan", "--dir", root, "--direct"), 6) == error  # no log lines
    failed = error_json(run("put", "k", "1", "--dir", root, "--json"), 6)
    assert failed["code"] == "Unavailable"
    assert failed["stopped"] == [spec.process_id for spec in local_cluster.processes()]
    # KV_URL and KV_TOKEN from `kvctl cluster env`: the URL names this cluster's first node.
    env = {**CLEAN_ENV, **local_cluster.env()}
    assert one_line_error(run("get", "k", "--dir", root, env=env), 6) == error

    # Partly down: the node that holds "k" (and coordinates its get) stopped, the others running.
    local_cluster.up()
    cluster_map = local_cluster.config.cluster_map
    owner = cluster_map.owner_of(cluster_map.partitions.partition_of("k"))
    pid = local_cluster.running()[owner]
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # our child: gone once reaped
    error = one_line_error(run("get", "k", "--dir", root), 6)
    assert error == (
        f"kvctl: the local cluster in {root} is partly down ({owner} not running); "
        f"start what is stopped with {up}"
    )


def test_no_local_cluster_and_an_unreachable_url_say_what_to_do(tmp_path: Path) -> None:
    nothing = tmp_path / "nothing"
    error = one_line_error(run("get", "k", "--dir", str(nothing)), 3)  # NotFound
    assert error == (
        f"kvctl: no cluster in {nothing}: run `kvctl cluster up --dir {nothing}`, "
        "or pass --url and --token (or set KV_URL and KV_TOKEN)"
    )
    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}"
        error = one_line_error(run("get", "k", "--url", url, "--token", "x"), 6)
    # The URL the user gave and the OS's reason: no exception text, no cluster up.
    assert error == f"kvctl: cannot connect to {url}: connection refused"


# --- cancelled transactions name their keys ------------------------------------------------


def test_a_cancelled_transaction_names_each_failed_op_s_key(cluster: LocalNodes) -> None:
    ok_json(kvctl(cluster, "put", "why/present", "1", "--json"))
    ops = [
        {"op": "check", "key": "why/present", "if": {"exists": False}},
        {"op": "put", "key": "why/fine", "value": 1},
        {"op": "put", "key": "why/versioned", "value": 2, "if": {"version": 99}},
    ]
    error = one_line_error(kvctl(cluster, "txn", json.dumps(ops)), 4)  # TransactionCanceled
    assert error == (
        "kvctl: the transaction was cancelled: "
        'op 0 (key "why/present"): ConditionFailed (the condition did not hold); '
        'op 2 (key "why/versioned"): ConditionFailed (the condition did not hold)'
    )
    failed = error_json(kvctl(cluster, "txn", json.dumps(ops), "--json"), 4)
    assert failed["code"] == "TransactionCanceled"
    reasons = failed["reasons"]
    assert isinstance(reasons, list)
    assert [(r["key"], r["code"]) for r in reasons] == [
        ("why/present", "ConditionFailed"),
        ("why/fine", "None"),
        ("why/versioned", "ConditionFailed"),
    ]
    assert "127.0.0.1" not in json.dumps(failed)

    # An interactive transaction: its commit's reasons and message name the keys too.
    with kvstore.connect_sync(cluster.api("c1"), cluster.tokens["admin"]) as kv:
        with pytest.raises(TransactionCanceled) as raised, kv.transaction() as tx:
            assert tx.get("why/present") is not None
            tx.put("why/fine", 3)
            tx.check("why/absent", {"exists": True})
        assert 'op 1 (key "why/absent"): ConditionFailed' in raised.value.message
        assert [r["key"] for r in kvstore.reasons(raised.value)] == [
            "why/fine",
            "why/absent",
            "why/present",
        ]
