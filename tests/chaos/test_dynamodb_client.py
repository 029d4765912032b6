"""The chaos runner's DynamoDB client without a cluster: compiling, answers, resolution.

Goal: ``--client dynamodb`` records what DynamoDB answered and means what the store ops mean.
Method: the store ops a workload sends are compiled into ``TransactItems`` entries and parsed by
the endpoint's own expression parser, then evaluated by its evaluator next to the store's own
semantics of the same op (Hypothesis draws balances, amounts and conditions): both must agree on
whether the condition holds and on the item after the op. boto3's error answers are built as
botocore builds them and mapped to catalogue codes and per-op reasons. Finally, the runner with a
transport whose answers carry no ts (DynamoDB's) resolves acknowledged writes through a fake
ledger: their ts and txn id come from their token's record, and an acknowledged write with no
committed record is still ``ok-not-committed``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from chaos.dynamodb_client import HASH_KEY, TABLE, item_value, outcome_of, transact_item
from chaos.runner import RunConfig, _Runner
from chaos.sim.workloads import make_workload
from kvstore.conditions import (
    AllOf,
    AnyOf,
    Compare,
    CompareOperator,
    Condition,
    Exists,
    Not,
    VersionEquals,
)
from kvstore.conditions import evaluate as store_holds
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.dynamodb.attributes import item_from_wire, item_to_wire
from kvstore.dynamodb.evaluate import apply_update, condition_holds
from kvstore.dynamodb.request_exprs import (
    TRANSACT_CONDITION,
    TRANSACT_UPDATE,
    RequestExpressions,
)
from kvstore.errors import ErrorCode
from kvstore.localcluster import LocalCluster
from kvstore.messages import OpOutcome, ReasonCode
from kvstore.ops import Op, OpKind, apply_op
from kvstore.types import Timestamp, TxnId
from kvstore.updates import ActionKind, UpdateAction

# -- compiling ------------------------------------------------------------------------------------


def test_a_transfer_compiles_to_conditioned_adds() -> None:
    debit = Op(
        kind=OpKind.UPDATE,
        key="acct1",
        actions=(UpdateAction(ActionKind.ADD, ("bal",), -30),),
        condition=Compare(("bal",), CompareOperator.GE, 30),
    )
    credit = Op(
        kind=OpKind.UPDATE,
        key="acct2",
        actions=(UpdateAction(ActionKind.ADD, ("bal",), 30),),
        condition=Exists(True),
    )
    assert transact_item(debit) == {
        "Update": {
            "TableName": TABLE,
            "Key": {"pk": {"S": "acct1"}},
            "UpdateExpression": "ADD #n0 :v0",
            "ConditionExpression": "#n0 >= :v1",
            "ExpressionAttributeNames": {"#n0": "balance"},
            "ExpressionAttributeValues": {":v0": {"N": "-30"}, ":v1": {"N": "30"}},
        }
    }
    assert transact_item(credit)["Update"]["ConditionExpression"] == "attribute_exists(#n1)"
    assert transact_item(credit)["Update"]["ExpressionAttributeNames"] == {
        "#n0": "balance",
        "#n1": "pk",
    }
    setup = Op(kind=OpKind.PUT, key="acct0", value={"bal": 125})
    assert transact_item(setup) == {
        "Put": {"TableName": TABLE, "Item": {"balance": {"N": "125"}, "pk": {"S": "acct0"}}}
    }


def test_what_has_no_dynamodb_form_is_refused() -> None:
    versioned = Op(kind=OpKind.CHECK, key="a", condition=VersionEquals(3))
    with pytest.raises(ValueError, match="VersionEquals"):
        transact_item(versioned)
    append = Op(
        kind=OpKind.UPDATE, key="a", actions=(UpdateAction(ActionKind.APPEND, ("l",), [1]),)
    )
    with pytest.raises(ValueError, match="append"):
        transact_item(append)
    with pytest.raises(ValueError, match="needs a condition"):
        transact_item(Op(kind=OpKind.CHECK, key="a"))


_AMOUNTS = st.integers(-300, 300)
_LEAVES: st.SearchStrategy[Condition] = st.one_of(
    st.booleans().map(Exists),
    st.builds(Compare, st.just(("bal",)), st.sampled_from(list(CompareOperator)), _AMOUNTS),
)
_CONDITIONS: st.SearchStrategy[Condition] = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: AllOf(tuple(cs))),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: AnyOf(tuple(cs))),
        inner.map(Not),
    ),
    max_leaves=5,
)


@st.composite
def _ops(draw: st.DrawFn) -> Op:
    kind = draw(st.sampled_from([OpKind.UPDATE, OpKind.PUT, OpKind.DELETE, OpKind.CHECK]))
    condition = draw(st.none() | _CONDITIONS)
    if kind is OpKind.CHECK and condition is None:
        condition = Exists(True)
    if kind is OpKind.UPDATE:
        action = draw(
            st.sampled_from(
                [
                    UpdateAction(ActionKind.ADD, ("bal",), draw(_AMOUNTS)),
                    UpdateAction(ActionKind.SET, ("bal",), draw(_AMOUNTS)),
                    UpdateAction(ActionKind.REMOVE, ("bal",)),
                ]
            )
        )
        return Op(kind=kind, key="acct", actions=(action,), condition=condition)
    value = {"bal": draw(_AMOUNTS)} if kind is OpKind.PUT else None
    return Op(kind=kind, key="acct", value=value, condition=condition)


@given(
    op=_ops(),
    exists=st.booleans(),
    balance=st.none() | _AMOUNTS,
)
def test_compiled_actions_mean_what_the_store_ops_mean(
    op: Op, exists: bool, balance: int | None
) -> None:
    """The endpoint's parser accepts every compiled action, and its evaluator agrees with the
    store on the condition and on the item afterwards (the item as the workload reads it)."""
    value: dict[str, Any] | None = None
    if exists:
        value = {} if balance is None else {"bal": balance}
    ((kind, action),) = transact_item(op).items()
    exprs = RequestExpressions(action, TRANSACT_UPDATE if kind == "Update" else TRANSACT_CONDITION)
    key = item_from_wire(action.get("Key", {HASH_KEY: {"S": op.key}}))
    parsed = exprs.condition()
    update = exprs.update(key, (HASH_KEY,)) if kind == "Update" else None
    exprs.finish()
    item = None
    if value is not None:
        item = item_from_wire(
            {HASH_KEY: {"S": op.key}, **({"balance": {"N": str(balance)}} if value else {})}
        )
    holds = store_holds(op.condition, exists=exists, value=value, version=1)
    assert (parsed is None or condition_holds(parsed.tree, item)) == holds
    if not holds or kind == "ConditionCheck":
        return
    now_exists, now = apply_op(op, exists=exists, value=value)
    if kind == "Update":
        assert update is not None
        after: dict[str, Any] | None = item_value(
            item_to_wire(apply_update(update.tree, item, key))
        )
    elif kind == "Put":
        after = item_value(action["Item"])
    else:
        after = None
    assert after == (now if now_exists else None)


def test_items_read_back_as_the_workload_reads_them() -> None:
    item = {"pk": {"S": "acct3"}, "balance": {"N": "125"}, "note": {"S": "x"}}
    assert item_value(item) == {"bal": 125, "note": "x"}
    assert item_value({"pk": {"S": "a"}, "balance": {"N": "12.5"}}) == {"bal": 12.5}
    assert item_value({"pk": {"S": "a"}, "balance": {"N": "1E+2"}}) == {"bal": 100}


# -- answers --------------------------------------------------------------------------------------


def _error(code: str, status: int, **extra: Any) -> ClientError:
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
        **extra,
    }
    return ClientError(cast(Any, response), "TransactWriteItems")


def test_error_answers_map_to_catalogue_codes_and_reasons() -> None:
    reasons = [
        {"Code": "None"},
        {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
    ]
    code, outcomes = outcome_of(
        _error("TransactionCanceledException", 400, CancellationReasons=reasons)
    )
    assert code is ErrorCode.TransactionCanceled
    assert [o.code for o in outcomes] == [
        ReasonCode.NONE,
        ReasonCode.CONDITION_FAILED,
        ReasonCode.TRANSACTION_CONFLICT,
    ]
    cases = {
        ("InternalServerError", 500): ErrorCode.OutcomeUnknown,
        ("ServiceUnavailable", 503): ErrorCode.Unavailable,
        ("TransactionInProgressException", 400): ErrorCode.TransactionInProgress,
        ("IdempotentParameterMismatchException", 400): ErrorCode.IdempotencyMismatch,
        ("ThrottlingException", 400): ErrorCode.Overloaded,
        ("ValidationException", 400): ErrorCode.ValidationError,
        ("502", 502): ErrorCode.OutcomeUnknown,  # a bare 5xx: anything may have happened
        ("SomethingNew", 400): ErrorCode.OutcomeUnknown,  # unknown: it may have applied
    }
    for (name, status), expected in cases.items():
        assert outcome_of(_error(name, status)) == (expected, ()), name
    assert ErrorCode.OutcomeUnknown.ambiguous and not ErrorCode.Unavailable.ambiguous


# -- resolution of answers without ts ---------------------------------------------------------


class _Canned:
    """A transport answering write steps from a list, as DynamoDB does: no ts, no txn id."""

    stamps = False

    def __init__(self, answers: list[TxnResult]) -> None:
        self.answers = answers
        self.sent: list[str | None] = []

    def ledger_token(self, token: str) -> str:
        return f"ledger-{token}"

    async def write(self, url: str, ops: Sequence[Op], token: str | None) -> TxnResult:
        self.sent.append(token)
        return self.answers.pop(0)

    async def read(self, url: str, keys: Sequence[str]) -> ReadResult:
        raise AssertionError("no reads here")

    async def get(self, url: str, key: str) -> Any:
        raise AssertionError("no gets here")

    async def singleton_write(self, url: str, op: Op) -> Any:
        raise AssertionError("no singletons here")

    async def scan(self, url: str, start: str, end: str | None, limit: int) -> Any:
        raise AssertionError("no scans here")


class _Spec:
    def __init__(self, url: str) -> None:
        self.url = url


class _Cluster:
    def __init__(self, url: str) -> None:
        self.url = url

    def processes(self) -> list[_Spec]:
        return [_Spec(self.url)]


@pytest_asyncio.fixture
async def ledger() -> AsyncIterator[tuple[dict[str, dict[str, Any]], str]]:
    records: dict[str, dict[str, Any]] = {}

    async def lookup(request: web.Request) -> web.Response:
        record = records.get(request.match_info["token"])
        if record is None:
            return web.json_response({"error": {"code": "NotFound"}}, status=404)
        return web.json_response(record)

    app = web.Application()
    app.router.add_get("/v1/txn/{token}", lookup)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = cast(Any, site._server).sockets[0].getsockname()[1]
    yield records, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.asyncio
async def test_acknowledged_writes_take_ts_and_txn_id_from_their_ledger_record(
    ledger: tuple[dict[str, dict[str, Any]], str],
) -> None:
    records, url = ledger
    committed = TxnResult(committed=True, txn_id=TxnId(""), ts=Timestamp(0, 0, 0))
    cancelled = TxnResult(
        committed=False,
        txn_id=TxnId(""),
        ts=Timestamp(0, 0, 0),
        outcomes=(OpOutcome(code=ReasonCode.CONDITION_FAILED), OpOutcome()),
        error=ErrorCode.TransactionCanceled,
    )
    transport = _Canned([committed, committed, cancelled])
    config = RunConfig("bank", (), 1.0, 7, 1, Path("/nonexistent"), client="dynamodb")
    workload = make_workload("bank", 4, 100, every_kind=True)
    runner = _Runner(config, cast(LocalCluster, _Cluster(url)), workload, transport=transport)
    rng = random.Random(3)
    async with aiohttp.ClientSession() as session:
        done = []
        for process in range(3):
            f, value, script = workload._transfer(rng)
            done.append((await runner.run_script(session, process, f, value, script))[1])
        assert [d.type for d in done] == ["ok", "ok", "fail"]
        assert all(d.ts is None and d.txn_id is None for d in done)  # DynamoDB said neither
        assert done[2].reasons == ("ConditionFailed", "None")
        tokens = [runner.tokens[d.index - 1] for d in done]
        assert all(t[0].startswith("ledger-") for t in tokens)  # the ledger's own names
        assert [f"ledger-{t}" for t in transport.sent] == [t[0] for t in tokens]
        records[tokens[0][0]] = {"state": "COMMITTED", "txn_id": "t0", "ts": "500.0.ab"}
        # the second acknowledged write has no record; the cancelled one committed
        records[tokens[2][0]] = {"state": "COMMITTED", "txn_id": "t2", "ts": "600.0.ab"}
        resolved, wrong = await runner.resolve(session)
    first = resolved.ops[done[0].index]
    assert first.ts == (500, 0, 0xAB) and first.txn_id == "t0"
    assert sorted(a.kind for a in wrong) == ["fail-but-committed", "ok-not-committed"]


# -- the transport over real sockets ----------------------------------------------------------


def _http(status: int, body: bytes, *, length: int | None = None) -> bytes:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.0\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


_TYPE = b'{"__type":"com.amazonaws.dynamodb.v20120810#'
_ANSWERS: dict[str, bytes | None] = {
    "dropped": None,  # the request is read, then the connection closed: no answer at all
    "internal": _http(500, _TYPE + b'InternalServerError"}'),
    "cut 500": _http(500, _TYPE + b"Inter", length=80),  # a status line, part of the body
    "unavailable": _http(503, _TYPE + b'ServiceUnavailable"}'),
    "cut 400": _http(400, _TYPE + b"Transa", length=80),  # an error, but which?
    "cut 200": _http(200, b'{"Con', length=50),  # the endpoint answers 200 after the commit
    "committed": _http(200, b"{}"),
}


@pytest.mark.asyncio
async def test_the_transport_tells_unsent_from_unanswered() -> None:
    """Refused: nothing was sent (``Unavailable``); sent and then no answer, or a 500:
    ``OutcomeUnknown``; a 503: ``Unavailable``; a body cut short is judged by what botocore
    parses of it (a 200 committed; an error it cannot name is unknown); each over one
    attempt."""
    from chaos.dynamodb_client import DynamoTransport  # noqa: PLC0415

    requests: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        answer = _ANSWERS[requests[-1]]
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    transport = DynamoTransport("secret", workers=2)
    debit = Op(kind=OpKind.UPDATE, key="a", actions=(UpdateAction(ActionKind.ADD, ("bal",), 1),))
    try:
        expected = {
            "dropped": ErrorCode.OutcomeUnknown,
            "internal": ErrorCode.OutcomeUnknown,
            "cut 500": ErrorCode.OutcomeUnknown,
            "unavailable": ErrorCode.Unavailable,
            "cut 400": ErrorCode.OutcomeUnknown,  # unnamed: TransactionInProgress, maybe
            "cut 200": None,
            "committed": None,
        }
        for case, code in expected.items():
            requests.append(case)
            result = await transport.write(url, [debit], f"tok-{case.replace(' ', '-')}")
            assert result.error is code, case
            assert result.committed is (code is None)
        refused = await transport.write("http://127.0.0.1:9", [debit], "tok-refused")
        assert refused.error is ErrorCode.Unavailable
        requests.append("dropped")
        read = await transport.read(url, ["a"])
        assert read.error is ErrorCode.Unavailable and not read.items
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.to_thread(transport.close)
    assert len(requests) == len(expected) + 1  # one attempt each: no retry sent anything more
