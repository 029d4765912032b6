"""The real runner's HTTP client and its recording, against a small fake coordinator.

The fake serves the routes the runner uses (``/v1/kv/{key}``, ``/v1/scan``, ``/v1/txn``,
``/v1/read``) over one in-memory dict, stamping every write with the next timestamp, so the
workload scripts of :mod:`chaos.sim.workloads` run through :mod:`chaos.http_client` and the
runner's recording exactly as in a real run, without a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from chaos import cli, http_client, nemesis
from chaos.history import History
from chaos.runner import RunConfig, _Runner, op_kind, written
from chaos.sim.workloads import Get, Put, Read, ScanKeys, Write, make_workload
from kvstore.conditions import Exists, VersionEquals, condition_from_json, evaluate
from kvstore.coordinator.singleton import CallResult
from kvstore.errors import ErrorCode
from kvstore.localcluster import LocalCluster
from kvstore.messages import GetReply, ItemView, ReasonCode
from kvstore.ops import Op, OpKind
from kvstore.types import PartitionId, Timestamp
from kvstore.updates import ActionKind, UpdateAction


@dataclass
class Item:
    value: Any
    version: int
    ts: Timestamp


@dataclass
class Fake:
    """An in-memory coordinator: ``items``, the next timestamp, and canned ``txn`` answers."""

    items: dict[str, Item] = field(default_factory=dict)
    clock: int = 100
    txn_answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    refuse_puts: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def stamp(self) -> Timestamp:
        self.clock += 1
        return Timestamp(self.clock, 0, 0xAB)

    def item_json(self, key: str) -> dict[str, Any]:
        item = self.items[key]
        return {"key": key, "value": item.value, "version": item.version, "ts": str(item.ts)}


def _error(code: str, status: int, **details: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": code, **details}}, status=status)


def _app(fake: Fake) -> web.Application:
    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key not in fake.items:
            return _error("NotFound", 404)
        return web.json_response(fake.item_json(key))

    async def put(request: web.Request) -> web.Response:
        if fake.refuse_puts:
            status, body = fake.refuse_puts.pop(0)
            return web.json_response(body, status=status)
        key = request.match_info["key"]
        body = await request.json() if request.can_read_body else {}
        item = fake.items.get(key)
        condition = condition_from_json(body["if"]) if "if" in body else None
        exists = item is not None
        holds = evaluate(
            condition,
            exists=exists,
            value=item.value if item else None,
            version=item.version if item else 0,
        )
        if not holds:
            return _error("ConditionFailed", 412, key=key)
        ts = fake.stamp()
        version = (item.version if item else 0) + 1
        if request.method == "DELETE":
            fake.items.pop(key, None)
            return web.json_response({"deleted": exists, "ts": str(ts)})
        fake.items[key] = Item(body["value"], version, ts)
        return web.json_response({"version": version, "ts": str(ts)})

    async def scan(request: web.Request) -> web.Response:
        start = request.query.get("start", "")
        end = request.query.get("end")
        limit = int(request.query["limit"])
        keys = sorted(k for k in fake.items if k >= start and (end is None or k < end))
        page = keys[:limit]
        cursor = None
        if len(keys) > limit:
            cursor = "c1." + base64.urlsafe_b64encode(page[-1].encode()).decode()
        return web.json_response({"items": [fake.item_json(k) for k in page], "cursor": cursor})

    async def txn(request: web.Request) -> web.Response:
        status, body = fake.txn_answers.pop(0)
        return web.json_response(body, status=status)

    async def read(request: web.Request) -> web.Response:
        keys = (await request.json())["keys"]
        out = [fake.item_json(k) if k in fake.items else {"key": k, "found": False} for k in keys]
        return web.json_response({"items": out})

    app = web.Application()
    app.router.add_get("/v1/kv/{key}", get)
    app.router.add_put("/v1/kv/{key}", put)
    app.router.add_delete("/v1/kv/{key}", put)
    app.router.add_get("/v1/scan", scan)
    app.router.add_post("/v1/txn", txn)
    app.router.add_post("/v1/read", read)
    return app


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Fake, str, aiohttp.ClientSession]]:
    fake = Fake()
    runner = web.AppRunner(_app(fake))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = cast(Any, site._server).sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        yield fake, f"http://127.0.0.1:{port}", session
    await runner.cleanup()


@dataclass
class _Spec:
    url: str
    role: str = "coordinator"


class _Cluster:
    def __init__(self, url: str) -> None:
        self.url = url

    def processes(self) -> list[_Spec]:
        return [_Spec(self.url)]


def _runner(url: str, workload: str) -> _Runner:
    config = RunConfig(workload, (), 1.0, 7, 1, Path("/nonexistent"))
    cluster = cast(LocalCluster, _Cluster(url))
    return _Runner(config, cluster, make_workload(workload, 4, 100, every_kind=True))


Served = tuple[Fake, str, aiohttp.ClientSession]


# -- the client ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_singleton_put_delete_get_and_refusals(served: Served) -> None:
    fake, url, session = served
    put = Op(kind=OpKind.PUT, key="k/1", value={"v": 1})
    done = await http_client.singleton_write(session, url, put)
    assert done.reply is not None and done.reply.outcome.code is ReasonCode.NONE
    assert done.reply.ts == Timestamp(101, 0, 0xAB) and done.reply.version == 1
    got = await http_client.get(session, url, "k/1")
    assert got.reply is not None and got.reply.item is not None
    assert got.reply.item.value == {"v": 1} and got.reply.item.ts == Timestamp(101, 0, 0xAB)
    stale = Op(kind=OpKind.DELETE, key="k/1", condition=VersionEquals(7))
    refused = await http_client.singleton_write(session, url, stale)
    assert refused.reply is not None
    assert refused.reply.outcome.code is ReasonCode.CONDITION_FAILED
    deleted = await http_client.singleton_write(session, url, Op(kind=OpKind.DELETE, key="k/1"))
    assert deleted.reply is not None and deleted.reply.existed
    absent = await http_client.get(session, url, "k/1")
    assert absent.reply is not None and absent.reply.item is None
    fake.refuse_puts += [
        (409, {"error": {"code": "TransactionConflict", "message": "held"}}),
        (504, {"error": {"code": "OutcomeUnknown", "message": "?"}}),
        (500, {"error": {"code": "InternalError", "message": "bug"}}),
        (503, {"error": {"code": "Unavailable", "message": "down"}}),
    ]
    conflict = await http_client.singleton_write(session, url, put)
    assert conflict.reply is not None
    assert conflict.reply.outcome.code is ReasonCode.TRANSACTION_CONFLICT
    for code in (ErrorCode.OutcomeUnknown, ErrorCode.OutcomeUnknown, ErrorCode.Unavailable):
        answer = await http_client.singleton_write(session, url, put)
        assert answer.reply is None and answer.error is code
    nobody = await http_client.singleton_write(session, "http://127.0.0.1:9", put)
    assert nobody.error is ErrorCode.Unavailable  # refused: nothing was sent


@pytest.mark.asyncio
async def test_a_singleton_update_is_a_get_then_a_version_conditioned_put(served: Served) -> None:
    fake, url, session = served
    append = Op(
        kind=OpKind.UPDATE, key="x", actions=(UpdateAction(ActionKind.APPEND, ("l",), [1]),)
    )
    first = await http_client.singleton_write(session, url, append)
    assert first.reply is not None and first.reply.outcome.code is ReasonCode.NONE
    assert fake.items["x"].value == {"l": [1]}
    second = dataclass_replace_append(append, 2)
    await http_client.singleton_write(session, url, second)
    assert fake.items["x"].value == {"l": [1, 2]} and fake.items["x"].version == 2
    # Something written between the get and the put: the put's version condition fails.
    fake.refuse_puts.append((412, {"error": {"code": "ConditionFailed", "message": "moved"}}))
    lost_race = await http_client.singleton_write(session, url, dataclass_replace_append(append, 3))
    assert lost_race.reply is not None
    assert lost_race.reply.outcome.code is ReasonCode.CONDITION_FAILED
    assert fake.items["x"].value == {"l": [1, 2]}
    conditioned = Op(
        kind=OpKind.UPDATE,
        key="x",
        actions=(UpdateAction(ActionKind.APPEND, ("l",), [4]),),
        condition=Exists(False),
    )
    refused = await http_client.singleton_write(session, url, conditioned)
    assert refused.reply is not None
    assert refused.reply.outcome.code is ReasonCode.CONDITION_FAILED


def dataclass_replace_append(op: Op, value: int) -> Op:
    return Op(kind=op.kind, key=op.key, actions=(UpdateAction(ActionKind.APPEND, ("l",), [value]),))


@pytest.mark.asyncio
async def test_scan_pages_and_cancellation_reasons(served: Served) -> None:
    fake, url, session = served
    for i, key in enumerate(["a", "b", "c/d", "e"]):
        fake.items[key] = Item({"v": i}, 1, Timestamp(i + 1, 0, 1))
    page = await http_client.scan(session, url, "a", "e", 2)
    assert page.page is not None
    assert [item.key for item in page.page.items] == ["a", "b"]
    assert page.page.after == "b"
    ranged = await http_client.scan(session, url, "b", "e", 2)
    assert ranged.page is not None and ranged.page.after is None  # the range is exhausted
    assert [item.key for item in ranged.page.items] == ["b", "c/d"]
    last = await http_client.scan(session, url, "c/d", None, 5)
    assert last.page is not None and last.page.after is None
    assert [item.key for item in last.page.items] == ["c/d", "e"]
    reasons = [{"code": "None", "key": "a"}, {"code": "ConditionFailed", "key": "b"}]
    fake.txn_answers.append(
        (409, {"error": {"code": "TransactionCanceled", "txn_id": "t1", "reasons": reasons}})
    )
    result = await http_client.write(session, url, [Op(kind=OpKind.DELETE, key="a")], "tok")
    assert result.error is ErrorCode.TransactionCanceled and result.txn_id == "t1"
    assert [o.code for o in result.outcomes] == [ReasonCode.NONE, ReasonCode.CONDITION_FAILED]


# -- the runner's recording -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_kind_is_recorded_as_the_simulator_records_it(served: Served) -> None:
    fake, url, session = served
    runner = _runner(url, "list-append")
    workload = runner.workload
    kind, done = await runner.run_script(session, 0, *workload._singleton(["append", "k1", 7]))
    assert kind == "singleton-write" and done.type == "ok" and done.f == "txn"
    assert done.value == [["append", "k1", 7]] and done.ts == (101, 0, 0xAB)
    kind, done = await runner.run_script(session, 0, *workload._get("k1"))
    assert (kind, done.f, done.type, done.value) == ("get", "get", "ok", [["r", "k1", [7]]])
    kind, done = await runner.run_script(session, 0, *workload._scan(random.Random(1)))
    assert kind == "scan" and done.f == "scan" and done.type == "ok"
    assert ["r", "k1", [7]] in done.value or "k1" not in [k for _, k, _ in done.value]
    kind, done = await runner.run_script(session, 0, *workload._read_only(["k1", "k2"]))
    assert kind == "read-txn" and done.value == [["r", "k1", [7]], ["r", "k2", []]]
    # A cancelled write transaction keeps its code and per-op reasons.
    reasons = [{"code": "TransactionConflict"}, {"code": "None"}]
    fake.txn_answers.append((409, {"error": {"code": "TransactionCanceled", "reasons": reasons}}))
    mops = [["append", "k2", 8], ["append", "k3", 9]]
    kind, done = await runner.run_script(session, 0, *workload._blind_write(mops, None))
    assert kind == "write-txn" and done.type == "fail"
    assert done.error == "TransactionCanceled"
    assert done.reasons == ("TransactionConflict", "None")
    assert runner.kinds["singleton-write"]["ok"] == 1 and runner.kinds["write-txn"]["fail"] == 1
    assert (("k1", 7) in runner.seen) and runner.seen[("k1", 7)] == (101, 0, 0xAB)


@pytest.mark.asyncio
async def test_register_singletons_and_an_ambiguous_write(served: Served) -> None:
    fake, url, session = served
    runner = _runner(url, "rw-register")
    workload = runner.workload
    _, done = await runner.run_script(session, 0, *workload._singleton(["w", "k0", 5]))
    assert done.type == "ok" and fake.items["k0"].value == {"v": 5}
    _, deleted = await runner.run_script(session, 0, *workload._singleton(["w", "k0", None]))
    assert deleted.type == "ok" and "k0" not in fake.items
    fake.refuse_puts.append((504, {"error": {"code": "OutcomeUnknown", "message": "?"}}))
    _, unknown = await runner.run_script(session, 0, *workload._singleton(["w", "k1", 6]))
    assert unknown.type == "info" and unknown.error == "OutcomeUnknown" and unknown.ts is None


@pytest.mark.asyncio
async def test_a_write_whose_gateway_dies_under_it_is_unknown_and_sent_once() -> None:
    """The gateway reads the PUT, stops listening and drops the connection (SIGKILL after it
    forwarded the write). aiohttp's own retry would send the PUT again, meet the refused
    connection and make it look unsent (a definite ``Unavailable``): the runner's session sends
    it once, and the answer is ``OutcomeUnknown``."""
    received: list[bytes] = []
    gone = asyncio.Event()

    async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        server.close()  # the process is gone: no new connection is accepted
        writer.transport.abort()
        gone.set()

    server = await asyncio.start_server(die, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    put = Op(kind=OpKind.PUT, key="k1", value={"v": 1})
    async with http_client.new_session() as session:
        done = await http_client.singleton_write(session, f"http://127.0.0.1:{port}", put)
    await gone.wait()
    assert done.error is ErrorCode.OutcomeUnknown
    assert len(received) == 1 and received[0].startswith(b"PUT /v1/kv/k1 ")


def test_op_kinds_and_written_values() -> None:
    assert op_kind([Put]) == "singleton-write"
    assert op_kind([Get]) == "get" and op_kind([ScanKeys]) == "scan"
    assert op_kind([Read, Write]) == "interactive-txn" and op_kind([Write]) == "write-txn"
    assert op_kind([Read]) == "read-txn" and op_kind([]) == "read-txn"
    h = History()
    inv = h.invoke(0, "txn", [["r", "a", None], ["append", "b", 3], ["w", "c", None]])
    done = h.complete(inv, "ok", [["r", "a", [1]], ["append", "b", 3], ["w", "c", None]])
    assert written(done) == [("b", 3)]  # deletes identify nothing


def test_writes_are_resolved_and_checked_by_the_timestamps_read() -> None:
    """An info write read as the last write gets that ts; an ok one read at another ts, or a
    fail one read at all, is an anomaly; one never read is counted as unresolved."""
    runner = _runner("http://unused", "rw-register")
    h = runner.history
    values = {0: ("info", None), 1: ("ok", (5, 0, 1)), 2: ("fail", None), 3: ("info", None)}
    for process, (type_, ts) in values.items():
        inv = h.invoke(process, "txn", [["w", f"k{process}", 10 + process]], time_ns=process * 2)
        h.complete(inv, type_, ts=ts, time_ns=process * 2 + 1)  # type: ignore[arg-type]
    runner.singletons = {0: Op(kind=OpKind.PUT, key="k0"), 6: Op(kind=OpKind.PUT, key="k3")}
    runner.seen = {("k0", 10): (3, 0, 1), ("k1", 11): (6, 0, 1), ("k2", 12): (4, 0, 1)}
    ops = list(h.ops)
    completions = {inv.index: done for inv, done in h.pairs()}
    wrong = runner._resolve_by_reads(ops, completions)
    assert ops[1].ts == (3, 0, 1)  # the info write, placed
    assert sorted(a.kind for a in wrong) == ["fail-but-read", "read-ts-mismatch"]
    assert runner.unresolved == 1  # k3's write was never read


def test_an_item_read_at_two_timestamps_for_one_write_is_an_anomaly() -> None:
    runner = _runner("http://unused", "list-append")

    def answer(ts: Timestamp) -> CallResult[GetReply]:
        item = ItemView(key="k0", value={"l": [1, 2]}, version=2, ts=ts)
        return CallResult(partition=PartitionId(0), reply=GetReply(item=item))

    runner._observe(answer(Timestamp(5, 0, 1)))
    runner._observe(answer(Timestamp(5, 0, 1)))
    assert runner.seen == {("k0", 2): (5, 0, 1)} and not runner.seen_twice
    runner._observe(answer(Timestamp(6, 0, 1)))
    assert [a.kind for a in runner.seen_twice] == ["read-ts-mismatch"]
    assert json.dumps(runner.seen_twice[0].explanation)


def test_the_command_line_mixes_every_kind_unless_told_otherwise() -> None:
    args = ["run", "--workload", "register", "--nemesis", "none", "--duration", "1"]
    assert cli._parser().parse_args(args).txn_only is False
    assert cli._parser().parse_args([*args, "--txn-only"]).txn_only is True
    assert RunConfig("bank", (), 1.0, 1, 1, Path("x")).every_kind is True


def test_the_command_line_runs_unreplicated_unless_told_otherwise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["run", "--workload", "bank", "--duration", "1"]
    assert cli._parser().parse_args(args).replication_factor == 1
    assert RunConfig("bank", (), 1.0, 1, 1, Path("x")).replication_factor == 1
    assert cli._parser().parse_args([*args, "--replication-factor", "3"]).replication_factor == 3
    # Refused before anything starts: leader faults need leaders, and 3 nodes hold 3 copies.
    assert cli.main([*args, "--nemesis", "kill-leader"]) == 2
    assert "--replication-factor 2 or more" in capsys.readouterr().err
    assert cli.main([*args, "--replication-factor", "4"]) == 2
    assert "--replication-factor must be 1..3" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_no_fault_window_opens_shorter_than_the_shortest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Near the end of the load the nemesis stops rather than open a window it would cut."""
    monkeypatch.setattr(nemesis, "GAP_S", (0.0, 0.0))
    opened: list[str] = []

    async def record(self: nemesis.Nemesis, kind: str, target: object) -> None:
        opened.append(kind)

    monkeypatch.setattr(nemesis.Nemesis, "_open", record)
    cluster = cast(LocalCluster, _Cluster("http://unused"))
    faults = nemesis.Nemesis(cluster, ("kill",), random.Random(1), "secret")
    await faults.run(time.monotonic() + nemesis.WINDOW_S[0] / 2)
    assert opened == [] and faults.windows == []
