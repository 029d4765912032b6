"""The SDK client's own rules, with no network (kvstore.client.client, .http, .connection, .sync).

Goal: arguments are validated before anything is sent; transactions carry a token drawn on the
first key's partition and keep it across retries after an ambiguous outcome; a definite
cancellation is not retried; a singleton write is never repeated after an ambiguous outcome;
the retry budget stops retries; HTTP error answers become the catalogue's typed errors; connect
finds URL and token where docs/sdk.md says, or says what to do; the sync client blocks on the
same calls; ``import kvstore`` stays cheap. Method: a real :class:`Client` over the in-memory
backend with injected faults, a fake clock and instant sleeps; connection resolution with a
temporary cluster directory and environment (connect opens no connection).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

import kvstore
from kvstore.api.tokens import Role, create_token
from kvstore.client import Client, Put, RetryPolicy, SyncClient, Update, connect
from kvstore.client.http import HttpBackend, _error_from_answer
from kvstore.client.memory import MemoryBackend
from kvstore.client.native import NativeBackend
from kvstore.config import write_cluster_file, write_secret
from kvstore.errors import (
    ConditionFailed,
    OutcomeUnknown,
    Overloaded,
    ProtocolViolation,
    TransactionCanceled,
    TransactionConflict,
    TransactionInProgress,
    Unavailable,
    ValidationError,
)
from kvstore.partitioning import PartitionMap


class FakeTime:
    def __init__(self) -> None:
        self.now_s = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.slept.append(delay_s)
        self.now_s += delay_s


def make_client(**kwargs: object) -> tuple[Client, MemoryBackend, FakeTime]:
    backend = MemoryBackend()
    time = FakeTime()
    client = Client(backend, clock=time, sleep=time.sleep, rng=random.Random(5), **kwargs)  # type: ignore[arg-type]
    return client, backend, time


def lost(sent: bool = True) -> Unavailable:
    return Unavailable("connection lost", details={"sent": sent})


def transact_tokens(backend: MemoryBackend) -> list[str]:
    return [str(argument[1]) for method, argument in backend.calls if method == "transact"]  # type: ignore[index]


# --- validation before sending ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bad_arguments_raise_before_anything_is_sent() -> None:
    kv, backend, _ = make_client()
    with pytest.raises(ValidationError):
        await kv.get("")
    with pytest.raises(ValidationError):
        await kv.put("k", object())
    with pytest.raises(ValidationError):
        await kv.delete("k", if_={"exists": "no"})
    with pytest.raises(ValidationError):
        await kv.update("k")
    with pytest.raises(ValidationError):
        await kv.transact([])
    with pytest.raises(ValidationError):
        await kv.transact([{"op": "put", "key": "k"}])  # a JSON op without a value
    with pytest.raises(ValidationError):
        await kv.transact([Put("k", 1), Update("k", add={"": 1})])
    with pytest.raises(ValidationError):
        await kv.transact([Put("k", 1)], token="é")  # not printable ASCII
    with pytest.raises(ValidationError):
        await kv.transact("put")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await kv.read("ab")
    with pytest.raises(ValidationError):
        await kv.read([])
    with pytest.raises(ValidationError):
        kv.scan(prefix="")
    with pytest.raises(ValidationError):
        kv.scan(page_size=1001)
    with pytest.raises(ValidationError):
        await kv.txn_outcome("x" * 65)
    assert backend.calls == []


# --- tokens and retries ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_drawn_token_lives_on_the_first_keys_partition() -> None:
    kv, backend, _ = make_client()
    partitions = PartitionMap(backend.partitions)
    for index in range(20):
        await kv.transact([Put(f"k{index}", index), Put(f"other{index}", index)])
    tokens = transact_tokens(backend)
    assert len(set(tokens)) == 20
    for index, token in enumerate(tokens):
        assert partitions.partition_of(token) == partitions.partition_of(f"k{index}")
    # The partition count is learnt once.
    assert [method for method, _ in backend.calls].count("partition_count") == 1


@pytest.mark.asyncio
async def test_ambiguous_failures_are_retried_with_the_same_token_and_apply_once() -> None:
    kv, backend, time = make_client()
    backend.inject("transact", lost(), after_apply=True)
    backend.inject("transact", OutcomeUnknown("not known"))
    backend.inject("transact", TransactionInProgress("still running"))
    committed = await kv.transact([Update("n", add={"": 1})], token="my-token")
    assert transact_tokens(backend) == ["my-token"] * 4
    item = await kv.get("n")
    assert item is not None and item.value == 1
    assert len(time.slept) == 3
    assert await kv.txn_outcome("my-token") == {
        "token": "my-token",
        "txn_id": committed.txn_id,
        "ts": committed.ts,
        "completed": True,
        "state": "COMMITTED",
    }


@pytest.mark.asyncio
async def test_a_refusal_after_an_attempt_that_may_have_applied_is_outcome_unknown() -> None:
    kv, backend, _ = make_client(retry=RetryPolicy(attempts_max=3))
    backend.inject("transact", lost(), after_apply=True)  # committed, but the answer was lost
    backend.inject("transact", Overloaded("busy"))
    backend.inject("transact", lost(sent=False))
    with pytest.raises(OutcomeUnknown) as raised:
        await kv.transact([Update("n", add={"": 1})], token="t-1")
    assert raised.value.details["token"] == "t-1"
    assert raised.value.details["last_error"] == "Unavailable"
    assert (await kv.txn_outcome("t-1") or {}).get("state") == "COMMITTED"
    # Without an attempt in doubt, a refusal is just a refusal: nothing was applied.
    backend.inject("transact", Overloaded("busy"))
    backend.inject("transact", Overloaded("busy"))
    backend.inject("transact", Overloaded("busy"))
    with pytest.raises(Overloaded):
        await kv.transact([Update("m", add={"": 1})], token="t-2")
    assert await kv.get("m") is None
    # A cancellation after an attempt in doubt is the token's answer, not a doubt.
    backend.inject("transact", lost(sent=True))
    backend.inject("transact", TransactionCanceled("no", details={"reasons": []}))
    with pytest.raises(TransactionCanceled):
        await kv.transact([Update("k", add={"": 1})], token="t-3")


@pytest.mark.asyncio
async def test_a_cancellation_is_never_retried_by_transact_even_when_retryable() -> None:
    kv, backend, _ = make_client()
    conflict = TransactionCanceled("conflict", details={"retryable": True, "reasons": []})
    backend.inject("transact", conflict)
    with pytest.raises(TransactionCanceled) as raised:
        await kv.transact([Put("a", 1)])
    assert len(transact_tokens(backend)) == 1
    assert raised.value.details["token"] == transact_tokens(backend)[0]  # for txn_outcome


@pytest.mark.asyncio
async def test_a_singleton_write_is_retried_only_when_nothing_was_applied() -> None:
    kv, backend, _ = make_client()
    backend.inject("put", lost(sent=False))
    backend.inject("put", Overloaded("busy"))
    written = await kv.put("a", 1)
    assert written.version == 1
    backend.inject("put", lost(sent=True), after_apply=True)
    with pytest.raises(OutcomeUnknown) as raised:
        await kv.put("a", 2)
    assert raised.value.details["key"] == "a"
    backend.inject("delete", OutcomeUnknown("not known"))
    with pytest.raises(OutcomeUnknown):
        await kv.delete("a")
    assert [method for method, _ in backend.calls].count("put") == 4  # 3, then 1: no repeat
    with pytest.raises(ConditionFailed):
        await kv.put("a", 3, if_={"exists": False})


@pytest.mark.asyncio
async def test_reads_retry_any_retryable_error_until_attempts_run_out() -> None:
    kv, backend, time = make_client()
    for _ in range(kv.retry.attempts_max):
        backend.inject("get", lost())
    with pytest.raises(Unavailable):
        await kv.get("a")
    assert len(time.slept) == kv.retry.attempts_max - 1
    backend.inject("read", TransactionConflict("no stable snapshot"))
    assert await kv.read(["a"]) == [None]


@pytest.mark.asyncio
async def test_an_empty_retry_budget_raises_instead_of_retrying() -> None:
    kv, backend, _ = make_client()
    while kv.budget.try_spend():
        pass
    backend.inject("get", Overloaded("busy"))
    with pytest.raises(Overloaded):
        await kv.get("a")
    assert [method for method, _ in backend.calls] == ["get"]


@pytest.mark.asyncio
async def test_scan_follows_cursors_page_by_page() -> None:
    kv, backend, _ = make_client()
    await kv.transact([Put(f"p/{index}", index) for index in range(5)] + [Put("q", 0)])
    assert [item.key async for item in kv.scan(prefix="p/", page_size=2)] == [
        f"p/{index}" for index in range(5)
    ]
    assert [method for method, _ in backend.calls].count("scan") == 3
    assert [item.value async for item in kv.scan(start="p/1", end="p/3")] == [1, 2]


# --- HTTP answers ---------------------------------------------------------------------------------


def test_an_api_error_body_becomes_the_typed_error_with_its_details() -> None:
    body = (
        b'{"error": {"code": "TransactionCanceled", "number": 2005, "message": "cancelled",'
        b' "retryable": false, "txn_id": "t", "reasons": [{"code": "ConditionFailed"}]}}'
    )
    error = _error_from_answer(409, body, {})
    assert isinstance(error, TransactionCanceled)
    assert error.message == "cancelled"
    assert error.details["reasons"] == [{"code": "ConditionFailed"}]
    assert error.details["txn_id"] == "t"
    assert error.retryable is False
    busy = _error_from_answer(
        503,
        b'{"error": {"code": "Overloaded", "message": "full", "retryable": true}}',
        {"Retry-After": "1"},
    )
    assert isinstance(busy, Overloaded)
    assert busy.retryable and busy.details["retry_after_s"] == 1
    validation = _error_from_answer(
        400, b'{"error": {"code": "ValidationError", "message": "key: bad", "field": "key"}}', {}
    )
    assert isinstance(validation, ValidationError) and validation.field == "key"


def test_an_error_status_without_an_api_body_is_mapped_by_status() -> None:
    gateway = _error_from_answer(502, b"<html>bad gateway</html>", {"Retry-After": "2"})
    assert isinstance(gateway, Unavailable)
    assert gateway.retryable and gateway.details["sent"] is True
    assert gateway.details["retry_after_s"] == 2
    assert isinstance(_error_from_answer(400, b"Bad Request", {}), ProtocolViolation)


# --- connecting -----------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("KV_URL", "KV_TOKEN", "KVSTORE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def local_cluster(directory: Path) -> str:
    """A cluster directory as ``kvctl cluster up`` leaves it; returns the admin token."""
    directory.mkdir(parents=True, exist_ok=True)
    write_cluster_file(
        directory / "cluster.toml",
        nodes={"n1": "127.0.0.1:7001"},
        coordinators={"c1": "127.0.0.1:8123", "c2": "127.0.0.1:8124"},
    )
    write_secret(directory / "secret")
    token = create_token(directory / "api_tokens.toml", "admin", Role.ADMIN)
    (directory / "admin.token").write_text(token + "\n")
    (directory / "admin.token").chmod(0o600)
    return token


def gateway(client: Client) -> HttpBackend:
    assert isinstance(client.backend, HttpBackend)
    return client.backend


def native(client: Client) -> NativeBackend:
    assert isinstance(client.backend, NativeBackend)
    return client.backend


def test_arguments_then_environment_then_the_cluster_directory(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token = local_cluster(tmp_path / ".kvstore")
    local = gateway(connect(mode="gateway"))  # ./.kvstore: the first coordinator, admin token
    assert local.url == "http://127.0.0.1:8123"
    assert local._headers["Authorization"] == f"Bearer {token}"
    clean_env.setenv("KV_URL", "http://db.example:9000/")
    clean_env.setenv("KV_TOKEN", "from-env")
    from_env = gateway(connect())
    assert (from_env.url, from_env._headers["Authorization"]) == (
        "http://db.example:9000",
        "Bearer from-env",
    )
    explicit = gateway(connect("https://other:1", "explicit"))
    assert (explicit.url, explicit._headers["Authorization"]) == (
        "https://other:1",
        "Bearer explicit",
    )


def test_kvstore_dir_or_the_cluster_argument_names_the_directory(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    local_cluster(elsewhere)
    clean_env.setenv("KVSTORE_DIR", str(elsewhere))
    assert gateway(connect(mode="gateway")).url == "http://127.0.0.1:8123"
    assert native(connect()).config.path == (elsewhere / "cluster.toml").resolve()
    clean_env.delenv("KVSTORE_DIR")
    by_file = connect(cluster=elsewhere / "cluster.toml", mode="gateway")
    assert gateway(by_file).url == "http://127.0.0.1:8123"
    assert native(connect(cluster=elsewhere)).config.path == (elsewhere / "cluster.toml").resolve()


def test_a_local_cluster_is_native_by_default_and_a_url_or_token_means_gateway(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    local_cluster(tmp_path / ".kvstore")
    assert native(connect()).config.path == (tmp_path / ".kvstore" / "cluster.toml").resolve()
    gateway(connect(token="t", cluster=tmp_path / ".kvstore"))
    gateway(connect("http://host:1", "t"))
    clean_env.setenv("KV_URL", "http://db.example:9000/")
    clean_env.setenv("KV_TOKEN", "from-env")
    assert gateway(connect()).url == "http://db.example:9000"
    with pytest.raises(ValidationError, match="gateway mode"):
        connect("http://host:1", "t", mode="native")
    with pytest.raises(ValidationError, match="mode"):
        connect(mode="carrier-pigeon")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="contradicts"):
        connect(mode="native", direct=True)


def test_gateway_mode_without_coordinators_uses_the_first_node(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = tmp_path / ".kvstore"
    local_cluster(directory)
    write_cluster_file(
        directory / "cluster.toml", nodes={"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002"}
    )
    assert gateway(connect(mode="gateway")).url == "http://127.0.0.1:7001"


def test_the_local_admin_token_never_goes_to_another_url(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    local_cluster(tmp_path / ".kvstore")
    with pytest.raises(ValidationError, match="KV_TOKEN"):
        connect("http://db.example:9000")


def test_nothing_configured_says_what_to_do(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as raised:
        connect()
    assert "set KV_URL and KV_TOKEN, or run `kvctl cluster up`" in raised.value.message
    with pytest.raises(ValidationError, match="kvctl cluster up"):
        connect(direct=True)


def test_a_token_file_others_can_read_is_refused(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    local_cluster(tmp_path / ".kvstore")
    (tmp_path / ".kvstore" / "admin.token").chmod(0o644)
    with pytest.raises(ValidationError, match="chmod 600"):
        connect(mode="gateway")
    (tmp_path / ".kvstore" / "secret").chmod(0o644)
    with pytest.raises(ValidationError, match="secret"):
        connect()  # native mode reads the cluster secret


def test_bad_connection_arguments_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        connect("ftp://host", "t")
    with pytest.raises(ValidationError):
        connect("http://host:1?x=1", "t")
    with pytest.raises(ValidationError):
        connect("http://host:1", "bad\ntoken")
    with pytest.raises(ValidationError):
        connect("http://host:1", "t", timeout_s=0)
    with pytest.raises(ValidationError):
        connect("http://host:1", "t", direct=True)


def test_direct_mode_embeds_a_coordinator_for_the_cluster_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kvstore.client.direct import DirectBackend  # noqa: PLC0415

    local_cluster(tmp_path / ".kvstore")
    client = connect(direct=True)
    assert isinstance(client.backend, DirectBackend)
    assert client.backend.config.path == (tmp_path / ".kvstore" / "cluster.toml").resolve()


# --- the sync client, exports ---------------------------------------------------------------------


def test_the_sync_client_blocks_on_the_same_calls() -> None:
    backend = MemoryBackend()
    with SyncClient(Client(backend)) as kv:
        kv.put("a", 1)
        committed = kv.transact([Put("b", 2)])
        assert kv.read(["a", "b", "c"])[1] is not None
        assert [item.key for item in kv.scan(page_size=1)] == ["a", "b"]
        scan = kv.scan(page_size=1)
        assert next(scan).key == "a"
        scan.close()  # abandoning a scan closes its pages
        with kv.transaction() as tx:
            item = tx.get("a")
            assert item is not None
            tx.put("a", int(str(item.value)) + 1)
        assert kv.run(lambda tx: tx.get("a")) is not None
        outcome = kv.txn_outcome(str(transact_tokens(backend)[0]))
        assert outcome is not None and outcome["txn_id"] == committed.txn_id
        with pytest.raises(ConditionFailed):
            kv.put("a", 0, if_={"exists": False})
    assert backend.closed
    with pytest.raises(Unavailable):
        kv.get("a")


def test_import_kvstore_stays_cheap_and_exports_the_sdk() -> None:
    code = "import sys, kvstore; print('aiohttp' in sys.modules, 'kvstore.client' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.split() == ["False", "False"]
    for name in kvstore.__all__:
        assert getattr(kvstore, name) is not None
    assert kvstore.connect is connect
    with pytest.raises(AttributeError):
        kvstore.not_a_name  # noqa: B018


def test_import_kvstore_exports_every_catalogue_exception() -> None:
    # A fresh process: nothing else has imported kvstore.errors as a side effect.
    code = (
        "import kvstore; "
        "print(kvstore.TransactionCanceled.__name__, kvstore.errors.KvError.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.split() == ["TransactionCanceled", "KvError"]
    for code_ in kvstore.ErrorCode:
        exported = getattr(kvstore, code_.name)
        assert issubclass(exported, kvstore.KvError) and exported.code is code_
        assert code_.name in kvstore.__all__


@pytest.mark.asyncio
async def test_a_closed_client_refuses_calls_without_retrying() -> None:
    kv, backend, time = make_client()
    await kv.close()
    await kv.close()  # idempotent
    assert backend.closed
    with pytest.raises(Unavailable) as raised:
        await kv.get("a")
    assert raised.value.retryable is False
    assert backend.calls == [] and time.slept == []
