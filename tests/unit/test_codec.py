"""The wire codec: every message round-trips through msgpack, and decoding is strict and total."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.partition import check, delete, put

from kvstore import codec, limits
from kvstore import ops as ops_module
from kvstore.codec import (
    METHODS,
    REPLY_OF,
    decode_ledger_record,
    decode_op,
    decode_reply,
    decode_request,
    decode_timestamp,
    encode_ledger_record,
    encode_op,
    encode_reply,
    encode_request,
    encode_timestamp,
    method_of,
)
from kvstore.conditions import AllOf, AnyOf, Compare, CompareOperator, Exists, Not, VersionEquals
from kvstore.errors import ErrorCode, ValidationError
from kvstore.messages import (
    CancelReply,
    CancelRequest,
    CommitReply,
    CommitRequest,
    CompleteRequest,
    DecideRequest,
    ExecuteReply,
    ExecuteRequest,
    GetReply,
    GetRequest,
    ItemView,
    LedgerLookupRequest,
    LedgerRecord,
    LedgerReply,
    NodeExecuteRequest,
    OpOutcome,
    PositionReply,
    PositionRequest,
    PrepareReply,
    PrepareRequest,
    PreventRequest,
    ReadEntry,
    ReadReply,
    ReadRequest,
    ReasonCode,
    ReplicateReply,
    ReplicateRequest,
    Reply,
    Request,
    RestoreReply,
    RestoreRequest,
    ScanReply,
    ScanRequest,
    ShippedBatch,
    Snapshot,
    TokenHit,
    TokenLookupReply,
    TokenLookupRequest,
    TxnState,
    WriteReply,
    WriteRequest,
)
from kvstore.ops import Op, OpKind
from kvstore.runtime.replica import POISONED_SEQ
from kvstore.storage_node import sqlite_schema
from kvstore.storage_node.overlay import PartitionBatch
from kvstore.storage_node.store import Intent, ItemRow, PartitionMeta, TokenRow
from kvstore.types import ORIGIN_MAX, NodeId, PartitionId, Timestamp, TxnId
from kvstore.updates import ActionKind, UpdateAction
from kvstore.values import validate_value

U64_MAX = (1 << 64) - 1
TS = Timestamp(1_700_000_000_123_456, 7, ORIGIN_MAX)
TXN = TxnId("0123456789abcdef0123456789abcdef")
OTHER_TXN = TxnId("fedcba9876543210fedcba9876543210")
P = PartitionId(5)
ITEM = ItemView(
    key="user:ada", value={"bin": b"\x00\xff", "list": [1, 2.5, None, True, "é"]}, version=4, ts=TS
)
UPDATE = Op(
    kind=OpKind.UPDATE,
    key="u",
    actions=(  # in the canonical order set, remove, add, append
        UpdateAction(ActionKind.SET, ("a", "b"), {"x": [b"raw"]}),
        UpdateAction(ActionKind.REMOVE, ("gone",)),
        UpdateAction(ActionKind.ADD, ("n",), 2),
        UpdateAction(ActionKind.APPEND, ("log",), ["e"]),
    ),
    condition=AllOf(
        (
            Compare(("n",), CompareOperator.GE, 1),
            Not(AnyOf((Exists(True), VersionEquals(9)))),
        )
    ),
    return_item=True,
)
OPS = (
    put("p", b"\x01bytes", Exists(False), return_item=True),
    delete("d", VersionEquals(3)),
    UPDATE,
    check("c", Compare(("x", "y"), CompareOperator.EQ, "v")),
    put("q", None),
)
OUTCOMES = (
    OpOutcome(),
    OpOutcome(code=ReasonCode.CONDITION_FAILED, message="version 4, not 3", item=ITEM),
    OpOutcome(code=ReasonCode.TRANSACTION_CONFLICT),
)
RECORD = LedgerRecord(
    txn_id=TXN,
    ts=TS,
    state=TxnState.CANCELLED,
    participants=(PartitionId(0), P, PartitionId(limits.PARTITIONS_MAX - 1)),
    created_us=1_700_000_000_000_000,
    deadline_us=1_700_000_025_000_000,
    token="tok en~1",
    fingerprint="f" * 32,
    outcomes=OUTCOMES,
    completed_us=1_700_000_001_000_000,
)
HIT = TokenHit(txn_id=OTHER_TXN, same_content=False)

# Replication: real rows of every table, at the ranges' edges where they have one.
SQL_INT_MAX = (1 << 63) - 1
EARLIER = Timestamp(1_699_999_999_000_000, 0, 1)
ITEM_ROWS = (
    ItemRow(key="user:ada", exists=True, value=ITEM.value, version=4, write_ts=TS, read_ts=TS),
    ItemRow(key="n", exists=True, value=-(2**63), version=1, write_ts=EARLIER, read_ts=TS),
    ItemRow(key="f", exists=True, value=2.5, version=2, write_ts=EARLIER, read_ts=EARLIER),
    ItemRow(key="s", exists=True, value="é" * 3, version=SQL_INT_MAX, write_ts=TS, read_ts=TS),
    ItemRow(key="b", exists=True, value=b"\x00\xff", version=3, write_ts=TS, read_ts=TS),
    ItemRow(
        key="l", exists=True, value=[True, None, {"x": []}], version=1, write_ts=TS, read_ts=TS
    ),
    ItemRow(key="gone", exists=False, value=None, version=9, write_ts=EARLIER, read_ts=TS),
)
INTENTS = (
    Intent(
        key="p",
        txn_id=TXN,
        ts=TS,
        op=OPS[0],
        new_exists=True,
        new_value=b"\x01bytes",
        anchor=P,
        created_us=1_700_000_000_000_000,
    ),
    Intent(
        key="d",
        txn_id=TXN,
        ts=TS,
        op=OPS[1],
        new_exists=False,
        new_value=None,
        anchor=PartitionId(0),
        created_us=SQL_INT_MAX,
    ),
    Intent(
        key="u",
        txn_id=OTHER_TXN,
        ts=EARLIER,
        op=UPDATE,
        new_exists=True,
        new_value={"a": {"b": {"x": [b"raw"]}}, "n": 2, "log": ["e"]},
        anchor=PartitionId(limits.PARTITIONS_MAX - 1),
        created_us=0,
    ),
)
STAGING = LedgerRecord(
    txn_id=OTHER_TXN, ts=EARLIER, state=TxnState.STAGING, participants=(P, PartitionId(0))
)
TOKENS = (
    TokenRow(token="t-1", txn_id=TXN, fingerprint="ab" * 16, created_us=1_700_000_000_000_000),
    TokenRow(token="tok en~1", txn_id=OTHER_TXN, fingerprint="", created_us=SQL_INT_MAX),
)
META = PartitionMeta(max_delete_ts=EARLIER, max_deleted_version=9, epoch=3, seq=41, promised=4)
BATCH = PartitionBatch(
    items={row.key: row for row in ITEM_ROWS} | {"deleted": None},
    intents={INTENTS[0].key: INTENTS[0], "resolved": None},
    ledger={TXN: RECORD, TxnId("c" * 128): None},
    tokens={TOKENS[0].token: TOKENS[0], "expired": None},
    meta=META,
)
META_ONLY = PartitionBatch(items={}, intents={}, ledger={}, tokens={}, meta=META)
SNAPSHOT = Snapshot(
    items=ITEM_ROWS, intents=INTENTS, ledger=(RECORD, STAGING), tokens=TOKENS, meta=META
)
N1, N2 = NodeId("n1"), NodeId("node-2")

REQUESTS: list[Request] = [
    PrepareRequest(partition=P, txn_id=TXN, ts=TS, ops=OPS, anchor=P, ledger=RECORD),
    PrepareRequest(partition=P, txn_id=TXN, ts=TS, ops=OPS[:1], anchor=PartitionId(0)),
    ExecuteRequest(partition=P, txn_id=TXN, ts=TS, ops=OPS, token="t-1", fingerprint="ab" * 16),
    ExecuteRequest(partition=P, txn_id=TXN, ts=TS, ops=(put("k", 1),)),
    CommitRequest(partition=P, txn_id=TXN),
    CancelRequest(partition=P, txn_id=TXN),
    DecideRequest(partition=P, txn_id=TXN, decision=TxnState.CANCELLED, outcomes=OUTCOMES),
    DecideRequest(partition=P, txn_id=TXN, decision=TxnState.COMMITTED),
    LedgerLookupRequest(partition=P, txn_id=TXN, resolve=True),
    LedgerLookupRequest(partition=P, txn_id=TXN),
    CompleteRequest(partition=P, txn_id=TXN),
    PreventRequest(partition=P, txn_id=TXN, anchor=PartitionId(0)),
    TokenLookupRequest(partition=P, token="t-1"),
    ReadRequest(partition=P, keys=("a", "b", "ключ")),
    GetRequest(partition=P, key="a"),
    WriteRequest(partition=P, op=UPDATE),
    ScanRequest(partition=P, start="", end=None, limit=10),
    ScanRequest(partition=P, start="a", end="m", limit=1000),
    ScanRequest(partition=P, start="a", end=None, limit=5, at=Timestamp(7, 1, 9)),
    ReadRequest(partition=P, keys=("a", "b"), at=Timestamp(7, 1, 9)),
    RestoreRequest(partition=P, items=(ITEM,), floor=Timestamp(8, 0, 1), deleted_version=3),
    ReplicateRequest(
        partition=P,
        node=N2,
        leader=N1,
        leader_epoch=4,
        prev_epoch=3,
        prev_seq=40,
        batches=(
            ShippedBatch(epoch=4, seq=41, rows=BATCH),
            ShippedBatch(epoch=4, seq=42, rows=META_ONLY),
        ),
    ),
    ReplicateRequest(
        partition=P,
        node=N2,
        leader=N1,
        leader_epoch=SQL_INT_MAX,
        prev_epoch=3,
        prev_seq=41,
        batches=(),
        snapshot=SNAPSHOT,
    ),
    ReplicateRequest(  # an empty snapshot, from a leader whose own position is poisoned
        partition=PartitionId(0),
        node=NodeId("n" * 128),
        leader=N1,
        leader_epoch=1,
        prev_epoch=1,
        prev_seq=-1,
        batches=(),
        snapshot=Snapshot(
            items=(),
            intents=(),
            ledger=(),
            tokens=(),
            meta=PartitionMeta(epoch=1, seq=-1, promised=1),
        ),
    ),
    PositionRequest(partition=P, node=N2, epoch=5),
    NodeExecuteRequest(
        partition=P,
        txn_id=TXN,
        ts=TS,
        ops=OPS,
        placement=(P, PartitionId(0), P, PartitionId(limits.PARTITIONS_MAX - 1), P),
        token="t-1",
        fingerprint="ab" * 16,
    ),
    NodeExecuteRequest(
        partition=PartitionId(0), txn_id=TXN, ts=TS, ops=(put("k", 1),), placement=(P,)
    ),
]

REPLIES: list[tuple[str, Reply]] = [
    (
        "prepare",
        PrepareReply(
            txn_id=TXN,
            accepted=False,
            outcomes=OUTCOMES,
            error=ErrorCode.ClockSkew,
            token_hit=HIT,
        ),
    ),
    ("prepare", PrepareReply(txn_id=TXN, accepted=True)),
    (
        "execute",
        ExecuteReply(
            txn_id=TXN,
            committed=False,
            outcomes=OUTCOMES,
            error=ErrorCode.IdempotencyMismatch,
            token_hit=TokenHit(txn_id=OTHER_TXN, same_content=True),
        ),
    ),
    ("execute", ExecuteReply(txn_id=TXN, committed=True)),
    ("node_execute", ExecuteReply(txn_id=TXN, committed=True)),
    ("node_execute", ExecuteReply(txn_id=TXN, committed=False, outcomes=OUTCOMES)),
    ("commit", CommitReply(txn_id=TXN, applied=3)),
    ("cancel", CancelReply(txn_id=TXN, cleared=2)),
    ("decide", LedgerReply(txn_id=TXN, record=RECORD)),
    ("ledger_lookup", LedgerReply(txn_id=TXN, record=None)),
    (
        "complete",
        LedgerReply(
            txn_id=TXN,
            record=LedgerRecord(txn_id=TXN, ts=TS, state=TxnState.PREPARING, participants=(P,)),
        ),
    ),
    (
        "prevent",
        LedgerReply(
            txn_id=TXN,
            record=LedgerRecord(txn_id=TXN, ts=TS, state=TxnState.STAGING, participants=()),
        ),
    ),
    ("token_lookup", TokenLookupReply(token="t-1", record=RECORD)),
    ("token_lookup", TokenLookupReply(token="t-1", record=None)),
    (
        "read",
        ReadReply(
            entries=(
                ReadEntry(key="a", exists=True, value=ITEM.value, version=4, ts=TS, pending=False),
                ReadEntry(key="b", exists=False, value=None, version=0, ts=TS, pending=True),
            )
        ),
    ),
    ("read", ReadReply(entries=())),
    ("get", GetReply(item=ITEM)),
    ("get", GetReply(item=None)),
    ("write", WriteReply(outcome=OpOutcome(), existed=True, version=5, ts=TS)),
    ("write", WriteReply(outcome=OUTCOMES[1])),
    ("scan", ScanReply(items=(ITEM, ITEM), next_start="zz")),
    ("scan", ScanReply(items=(), next_start=None)),
    ("scan", ScanReply(items=(ITEM,), next_start=None, deleted_version=4)),
    ("restore", RestoreReply(restored=2)),
    ("replicate", ReplicateReply(accepted=True, epoch=4, seq=42, promised=4)),
    ("replicate", ReplicateReply(accepted=False, epoch=0, seq=0, promised=SQL_INT_MAX)),
    ("position", PositionReply(epoch=3, seq=41, promised=5)),
    ("position", PositionReply(epoch=3, seq=-1, promised=5)),  # poisoned: only a snapshot helps
]


def assert_primitive(obj: object, where: str = "body") -> None:
    """Only None, bool, int, float, str, bytes, list and str-keyed dict, all the way down."""
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return
    if type(obj) is list:
        for index, item in enumerate(obj):
            assert_primitive(item, f"{where}[{index}]")
        return
    assert type(obj) is dict, f"{where}: {type(obj).__name__} is not a primitive"
    for name, item in obj.items():
        assert type(name) is str, f"{where}: key {name!r}"
        assert_primitive(item, f"{where}.{name}")


def through_msgpack(body: object) -> object:
    return msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)


def field_of(method: str, body: object, *, reply: bool = False) -> str:
    with pytest.raises(ValidationError) as caught:
        (decode_reply if reply else decode_request)(method, body)
    return caught.value.field


# --- tables and round trips ---------------------------------------------------------------


def test_tables_cover_every_message() -> None:
    assert set(METHODS.values()) == set(typing.get_args(Request))
    assert len(METHODS) == len(typing.get_args(Request))
    assert set(REPLY_OF) == set(typing.get_args(Request))
    assert set(REPLY_OF.values()) == set(typing.get_args(Reply))
    assert {type(r) for r in REQUESTS} == set(typing.get_args(Request))
    assert {type(r) for _, r in REPLIES} == set(typing.get_args(Reply))
    for name, cls in METHODS.items():
        assert {type(r) for r in REQUESTS if method_of(r) == name} == {cls}


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_requests_round_trip_through_msgpack(request_: Request) -> None:
    method = method_of(request_)
    body = encode_request(request_)
    assert_primitive(body)
    assert decode_request(method, body) == request_
    assert decode_request(method, through_msgpack(body)) == request_


@pytest.mark.parametrize(
    ("method", "reply"), REPLIES, ids=lambda v: v if isinstance(v, str) else type(v).__name__
)
def test_replies_round_trip_through_msgpack(method: str, reply: Reply) -> None:
    assert isinstance(reply, REPLY_OF[METHODS[method]])
    body = encode_reply(reply)
    assert_primitive(body)
    assert decode_reply(method, body) == reply
    assert decode_reply(method, through_msgpack(body)) == reply


def test_records_ops_and_timestamps_round_trip() -> None:
    body = encode_ledger_record(RECORD)
    assert_primitive(body)
    assert decode_ledger_record(through_msgpack(body)) == RECORD
    assert encode_timestamp(TS) == [TS.physical_us, TS.logical, TS.origin]
    assert decode_timestamp(through_msgpack(encode_timestamp(TS))) == TS
    assert decode_timestamp([0, 0, 0]) == Timestamp(0, 0, 0)
    assert decode_timestamp([U64_MAX] * 3) == Timestamp(U64_MAX, U64_MAX, U64_MAX)
    for op in OPS:
        assert_primitive(encode_op(op))
        assert decode_op(through_msgpack(encode_op(op))) == op


def test_defaults_are_left_off_the_wire_and_filled_back_in() -> None:
    assert encode_reply(ExecuteReply(txn_id=TXN, committed=True)) == {
        "txn_id": TXN,
        "committed": True,
    }
    minimal = LedgerRecord(txn_id=TXN, ts=TS, state=TxnState.PREPARING, participants=(P,))
    assert encode_ledger_record(minimal) == {
        "txn_id": TXN,
        "ts": list(TS),
        "state": "PREPARING",
        "participants": [P],
    }
    assert encode_reply(WriteReply(outcome=OpOutcome())) == {"outcome": {}}
    # explicit nulls for None defaults are accepted too
    body = {"partition": 1, "txn_id": TXN, "ts": list(TS), "ops": [encode_op(put("k", 1))]}
    explicit = decode_request("execute", {**body, "token": None, "fingerprint": None})
    assert explicit == decode_request("execute", body)
    assert isinstance(explicit, ExecuteRequest)
    assert explicit.token is None


def test_enums_travel_by_name_or_value() -> None:
    body = encode_reply(REPLIES[0][1])
    assert isinstance(body, dict)
    assert body["error"] == "ClockSkew"
    assert body["outcomes"][1]["code"] == "ConditionFailed"
    assert encode_ledger_record(RECORD)["state"] == "CANCELLED"


def test_encoders_refuse_the_wrong_kind_of_message() -> None:
    with pytest.raises(TypeError):
        encode_request(ExecuteReply(txn_id=TXN, committed=True))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_reply(CommitRequest(partition=P, txn_id=TXN))  # type: ignore[arg-type]


# --- strictness ---------------------------------------------------------------------------

GOOD_EXECUTE: dict[str, object] = encode_request(REQUESTS[2])


def execute_with(**changes: object) -> dict[str, object]:
    body = copy.deepcopy(GOOD_EXECUTE)
    body.update(changes)
    return body


def test_unknown_method() -> None:
    assert field_of("frob", {}) == "method"
    assert field_of("frob", {}, reply=True) == "method"
    assert field_of(typing.cast(str, None), {}) == "method"
    assert field_of(typing.cast(str, ["execute"]), {}) == "method"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("body", [None, [], "body", 1, b"x", [("partition", 1)]])
def test_a_body_must_be_an_object(method: str, body: object) -> None:
    assert field_of(method, body) == "body"
    assert field_of(method, body, reply=True) == "body"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"partition": True}, "partition"),
        ({"partition": 1.0}, "partition"),
        ({"partition": -1}, "partition"),
        ({"partition": limits.PARTITIONS_MAX}, "partition"),
        ({"ts": [True, 0, 0]}, "ts[0]"),
        ({"ts": [0, False, 0]}, "ts[1]"),
        ({"ts": [-1, 0, 0]}, "ts[0]"),
        ({"ts": [0, 0, U64_MAX + 1]}, "ts[2]"),
        ({"ts": [0, -1, 0]}, "ts[1]"),
        ({"ts": [0, 0]}, "ts"),
        ({"ts": (0, 0, 0)}, "ts"),
        ({"ts": "0.0.0"}, "ts"),
        ({"txn_id": ""}, "txn_id"),
        ({"txn_id": "x" * 129}, "txn_id"),
        ({"txn_id": 7}, "txn_id"),
        ({"token": ""}, "token"),
        ({"token": "tab\t"}, "token"),
        ({"token": "x" * (limits.TOKEN_BYTES_MAX + 1)}, "token"),
        ({"fingerprint": "f" * 129}, "fingerprint"),
        ({"fingerprint": b"f"}, "fingerprint"),
        ({"ops": []}, "ops"),
        ({"ops": "put"}, "ops"),
        ({"ops": [{"op": "put", "key": "k"}]}, "ops[0].value"),
        ({"ops": [encode_op(put("k", 1)), encode_op(delete("k"))]}, "ops[1].key"),
        ({"ops": [encode_op(put("k", 1)), {"op": ["put"], "key": "j"}]}, "ops[1].op"),
        ({"ops": [encode_op(put("k", 1)), 7]}, "ops[1]"),
        ({"ops": [encode_op(put("k", 1)) | {"bogus": 1}]}, "ops[0].bogus"),
        ({"ops": [encode_op(put(f"k{i}", i)) for i in range(1001)]}, "ops"),
        ({"extra": 1}, "extra"),
    ],
)
def test_malformed_execute_names_the_field(changes: dict[str, object], field: str) -> None:
    assert field_of("execute", execute_with(**changes)) == field


@pytest.mark.parametrize(
    ("placement", "field"),
    [
        (None, "placement"),  # dropped
        ("5", "placement"),
        ([5, 5, 5, 5], "placement"),  # one short
        ([5, 5, 5, 5, 5, 5], "placement"),  # one too many
        ([5, 5, True, 5, 5], "placement[2]"),
        ([5, 5, 5, 5, limits.PARTITIONS_MAX], "placement[4]"),
        ([5, -1, 5, 5, 5], "placement[1]"),
    ],
)
def test_a_node_execute_names_one_partition_per_op(placement: object, field: str) -> None:
    body = encode_request(REQUESTS[-2])
    if placement is None:
        del body["placement"]
    else:
        body["placement"] = placement
    for trusted in (False, True):
        with pytest.raises(ValidationError) as refused:
            decode_request("node_execute", body, trusted=trusted)
        assert refused.value.field == field


def test_malformed_members_name_the_field() -> None:
    body = dict(GOOD_EXECUTE)
    del body["ts"]
    assert field_of("execute", body) == "ts"
    assert field_of("execute", {**GOOD_EXECUTE, 1: 1}) == "<int>"
    prepare = encode_request(REQUESTS[0])
    ledger = dict(typing.cast(dict[str, object], prepare["ledger"]))
    assert (
        field_of("prepare", {**prepare, "ledger": {**ledger, "ts": [0, 0, -1]}}) == "ledger.ts[2]"
    )
    assert field_of("prepare", {**prepare, "ledger": {**ledger, "state": "DONE"}}) == "ledger.state"
    participants = [0, True]
    bad = {**prepare, "ledger": {**ledger, "participants": participants}}
    assert field_of("prepare", bad) == "ledger.participants[1]"
    outcomes = [{}, {"code": "Nope"}]
    bad = {**prepare, "ledger": {**ledger, "outcomes": outcomes}}
    assert field_of("prepare", bad) == "ledger.outcomes[1].code"
    assert field_of("read", {"partition": 0, "keys": ["a", ""]}) == "keys[1]"
    too_many = [f"k{i}" for i in range(limits.READ_KEYS_MAX + 1)]
    assert field_of("read", {"partition": 0, "keys": too_many}) == "keys"
    assert field_of("scan", {"partition": 0, "start": "", "end": None, "limit": True}) == "limit"
    assert field_of("scan", {"partition": 0, "start": "", "end": None, "limit": "9"}) == "limit"
    assert field_of("scan", {"partition": 0, "start": "", "limit": 9}) == "end"
    assert field_of("write", {"partition": 0, "op": {"op": "put", "key": 3}}) == "op.key"
    reply = {"txn_id": TXN, "committed": False, "error": "NoSuchCode"}
    assert field_of("execute", reply, reply=True) == "error"
    assert field_of("execute", {**reply, "error": 2001}, reply=True) == "error"
    hit = {"txn_id": TXN, "committed": False, "token_hit": {"txn_id": TXN, "same_content": 1}}
    assert field_of("execute", hit, reply=True) == "token_hit.same_content"
    entry = {"key": "a", "exists": True, "value": float("nan"), "version": 1, "ts": [1, 0, 0]}
    entries = {"entries": [{**entry, "pending": False}]}
    assert field_of("read", entries, reply=True) == "entries[0].value"
    item = {"key": "a", "value": {"x": [1, {2: 3}]}, "version": 1, "ts": [1, 0, 0]}
    assert field_of("get", {"item": item}, reply=True) == "item.value.x[1]"
    assert field_of("get", {"item": {**item, "value": 1, "version": True}}, reply=True) == (
        "item.version"
    )
    assert field_of("commit", {"txn_id": TXN, "applied": -1}, reply=True) == "applied"


def test_bool_is_never_an_integer() -> None:
    with pytest.raises(ValidationError):
        decode_timestamp([True, 1, 1])
    assert field_of("get", {"partition": False, "key": "a"}) == "partition"
    assert field_of("commit", {"txn_id": TXN, "applied": True}, reply=True) == "applied"


def test_decode_timestamp_reports_the_bad_part() -> None:
    for raw, field in [
        ([-1, 0, 0], "ts[0]"),
        ([0, U64_MAX + 1, 0], "ts[1]"),
        ([0, 0, 2.0], "ts[2]"),
        ([0, 0, 0, 0], "ts"),
        (None, "ts"),
    ]:
        with pytest.raises(ValidationError) as caught:
            decode_timestamp(raw)
        assert caught.value.field == field


def test_deep_nesting_is_refused_without_recursion_errors() -> None:
    deep: object = []
    for _ in range(1000):
        deep = [deep]
    bodies = [
        ("execute", execute_with(ops=[{"op": deep, "key": "k"}])),
        ("execute", execute_with(ops=[{"op": "put", "key": "k", "value": deep}])),
        ("execute", execute_with(ops=deep)),
        ("execute", execute_with(ts=deep)),
        ("write", {"partition": 0, "op": {"op": "check", "key": "k", "if": {"not": deep}}}),
    ]
    for method, body in bodies:
        with pytest.raises(ValidationError):
            decode_request(method, body)


# --- property: decoding is total ----------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["", "put", "PREPARING", "ClockSkew", "\ud800", -1, U64_MAX + 1, 2**63]),
)
junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=6) | st.integers(), children, max_size=4),
    ),
    max_leaves=10,
)

REQUEST_BODIES = {
    name: [encode_request(r) for r in REQUESTS if method_of(r) == name] for name in METHODS
}
REPLY_BODIES = {name: [encode_reply(r) for m, r in REPLIES if m == name] for name in METHODS}


def locations(body: object) -> list[tuple[dict[typing.Any, object] | list[object], typing.Any]]:
    """Every (container, key or index) inside ``body``."""
    found: list[tuple[dict[typing.Any, object] | list[object], typing.Any]] = []
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.extend((node, name) for name in node)
            stack.extend(node.values())
        elif isinstance(node, list):
            found.extend((node, index) for index in range(len(node)))
            stack.extend(node)
    return found


@st.composite
def mutated(draw: st.DrawFn, bodies: list[object]) -> object:
    body = copy.deepcopy(draw(st.sampled_from(bodies)))
    for _ in range(draw(st.integers(1, 3))):
        places = locations(body)
        if not places:
            break
        container, key = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop":
            del container[key]
        elif action == "replace":
            container[key] = draw(junk)
        elif isinstance(container, dict):
            container[draw(st.text(max_size=6) | st.integers())] = draw(junk)
        else:
            container.insert(key, draw(junk))
    return body


def decode_or_refuse(method: str, body: object, *, reply: bool) -> None:
    """Decoding either refuses with a ValidationError or gives a message that round-trips."""
    if reply:
        try:
            answer = decode_reply(method, body)
        except ValidationError:
            return
        assert type(answer) is REPLY_OF[METHODS[method]]
        assert decode_reply(method, encode_reply(answer)) == answer
    else:
        try:
            request = decode_request(method, body)
        except ValidationError:
            return
        assert type(request) is METHODS[method]
        assert decode_request(method, encode_request(request)) == request


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("method", sorted(METHODS))
@PROPERTY
@given(data=st.data())
def test_decode_request_raises_only_validation_errors(method: str, data: st.DataObject) -> None:
    body = data.draw(st.one_of(junk, mutated(REQUEST_BODIES[method])))
    decode_or_refuse(method, body, reply=False)


@pytest.mark.parametrize("method", sorted(METHODS))
@PROPERTY
@given(data=st.data())
def test_decode_reply_raises_only_validation_errors(method: str, data: st.DataObject) -> None:
    body = data.draw(st.one_of(junk, mutated(REPLY_BODIES[method])))
    decode_or_refuse(method, body, reply=True)


@PROPERTY
@given(method=junk | st.sampled_from(sorted(METHODS)), body=junk)
def test_any_method_and_body(method: object, body: object) -> None:
    decode_or_refuse(typing.cast(str, method), body, reply=False)
    decode_or_refuse(typing.cast(str, method), body, reply=True)


def test_a_ledger_only_prepare_round_trips_and_only_the_anchor_may_send_no_ops() -> None:
    ledger = LedgerRecord(
        txn_id=TxnId("a" * 32),
        ts=Timestamp(1, 0, 1),
        state=TxnState.PREPARING,
        participants=(PartitionId(0), PartitionId(3)),
        token="tok",
    )
    request = PrepareRequest(
        partition=PartitionId(3),
        txn_id=TxnId("a" * 32),
        ts=Timestamp(1, 0, 1),
        ops=(),
        anchor=PartitionId(3),
        ledger=ledger,
    )
    body = msgpack.unpackb(msgpack.packb(encode_request(request)))
    assert decode_request("prepare", body) == request
    without_ledger = {k: v for k, v in body.items() if k != "ledger"}
    with pytest.raises(ValidationError):
        decode_request("prepare", without_ledger)


# --- the trusted path (the storage node's, for peers) --------------------------------------

DOC: dict[str, object] = {"name": "Ada", "n": 12_345, "x": 98.5, "tags": ["a", b"b", None, True]}
TRUSTED_OPS = (
    put("doc", DOC, VersionEquals(3)),
    put("plain", "x" * 100),
    put("cmp", [1, {"a": [2.5]}], Compare(("a", "b"), CompareOperator.LT, {"k": [1, "v"]})),
    put("gone", None, Exists(False), return_item=True),
    delete("d", Exists(True)),
    delete("d2"),
    check("c", VersionEquals(0)),
    check("c2", Compare((), CompareOperator.NE, 1.5)),
    UPDATE,  # the strict parser's, like every shape below
    put("ключ", 1),
    put("all", 1, AllOf((Exists(True), VersionEquals(2)))),
    check("not", Not(Exists(True))),
)


def decoded(method: str, body: object, *, trusted: bool) -> tuple[str, object]:
    """("ok", the message) or ("refused", field and message of the ValidationError)."""
    try:
        return "ok", decode_request(method, body, trusted=trusted)
    except ValidationError as error:
        return "refused", (error.field, error.message)


def same_on_both_paths(method: str, body: object) -> tuple[str, object]:
    strict = decoded(method, body, trusted=False)
    assert decoded(method, body, trusted=True) == strict
    return strict


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_trusted_decoding_gives_the_strict_message(request_: Request) -> None:
    method = method_of(request_)
    body = encode_request(request_)
    assert decode_request(method, body, trusted=True) == request_
    assert decode_request(method, through_msgpack(body), trusted=True) == request_


def test_trusted_decoding_of_every_op_shape() -> None:
    for op in TRUSTED_OPS:
        for request_ in (
            ExecuteRequest(partition=P, txn_id=TXN, ts=TS, ops=(op,)),
            WriteRequest(partition=P, op=op),
        ):
            body = through_msgpack(encode_request(request_))
            assert same_on_both_paths(method_of(request_), body) == ("ok", request_)
    prepare = PrepareRequest(partition=P, txn_id=TXN, ts=TS, ops=TRUSTED_OPS, anchor=P)
    body = through_msgpack(encode_request(prepare))
    assert same_on_both_paths("prepare", body) == ("ok", prepare)


def test_trusted_op_shapes_are_those_of_the_ops_parser() -> None:
    for kind, members in codec._TRUSTED_OPS.values():
        assert members == ops_module._OP_MEMBERS[kind]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"partition": True}, "partition"),
        ({"partition": limits.PARTITIONS_MAX}, "partition"),
        ({"ts": [0, 0]}, "ts"),
        ({"txn_id": 7}, "txn_id"),
        ({"token": "tab\t"}, "token"),
        ({"ops": []}, "ops"),
        ({"ops": "put"}, "ops"),
        ({"ops": [encode_op(put(f"k{i}", i)) for i in range(1001)]}, "ops"),
        ({"ops": [encode_op(put("k", 1)), encode_op(delete("k"))]}, "ops[1].key"),
        ({"ops": [encode_op(put("k", 1)), 7]}, "ops[1]"),
        ({"ops": [{"op": "put", "key": "k"}]}, "ops[0].value"),
        ({"ops": [{"op": "put", "key": 3, "value": 1}]}, "ops[0].key"),
        ({"ops": [{"op": "put", "key": "", "value": 1}]}, "ops[0].key"),
        ({"ops": [{"op": "put", "key": "k" * 1025, "value": 1}]}, "ops[0].key"),
        ({"ops": [{"op": "put", "key": "k", "value": 1, "return_item": 1}]}, "ops[0].return_item"),
        ({"ops": [{"op": "delete", "key": "k", "value": 1}]}, "ops[0].value"),
        ({"ops": [{"op": "check", "key": "k"}]}, "ops[0].if"),
        ({"ops": [{"op": "put", "key": "k", "value": 1, "if": None}]}, "ops[0].if"),
        (
            {"ops": [{"op": "put", "key": "k", "value": 1, "if": {"version": True}}]},
            "ops[0].if.version",
        ),
        (
            {"ops": [{"op": "put", "key": "k", "value": 1, "if": {"version": -1}}]},
            "ops[0].if.version",
        ),
        ({"ops": [{"op": "put", "key": "k", "value": 1, "if": {"exists": 1}}]}, "ops[0].if.exists"),
        ({"ops": [{"op": "check", "key": "k", "if": {"path": "a..b", "eq": 1}}]}, "ops[0].if.path"),
        ({"ops": [{"op": "check", "key": "k", "if": {"path": "a", "is": 1}}]}, "ops[0].if.is"),
        ({"ops": [{"op": "check", "key": "k", "if": {"path": 1, "eq": 1}}]}, "ops[0].if.path"),
        (
            {"ops": [{"op": "check", "key": "k", "if": {"path": "a", "eq": float("nan")}}]},
            "ops[0].if.eq",
        ),
        ({"ops": [{"op": ["put"], "key": "k"}]}, "ops[0].op"),
        ({"ops": [{"op": "frob", "key": "k"}]}, "ops[0].op"),
    ],
)
def test_trusted_decoding_refuses_what_the_strict_path_refuses(
    changes: dict[str, object], field: str
) -> None:
    outcome, found = same_on_both_paths("execute", execute_with(**changes))
    assert outcome == "refused"
    assert isinstance(found, tuple)
    assert found[0] == field


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


BAD_VALUES: list[tuple[object, str]] = [
    (float("nan"), ""),
    (float("inf"), ""),
    ({"a": [1, float("-inf")]}, ".a[1]"),
    (nested(limits.VALUE_DEPTH_MAX + 1), "[0]" * limits.VALUE_DEPTH_MAX),
    ({"a": {1: 2}}, ".a"),
    ([(1, 2)], "[0]"),
    ({"s": {1, 2}}, ".s"),
    ([2**64], "[0]"),
    ([-(2**63) - 1], "[0]"),
    (["\ud800"], "[0]"),
    ({"\ud800": 1}, '["\\ud800"]'),
    (b"x" * limits.VALUE_BYTES_MAX, ""),
    (["x" * (limits.VALUE_BYTES_MAX // 2)] * 2, ""),
]


@pytest.mark.parametrize(("value", "where"), BAD_VALUES, ids=range(len(BAD_VALUES)))
def test_trusted_decoding_refuses_the_values_validate_value_refuses(
    value: object, where: str
) -> None:
    # The node reads its intents back through the strict decode_op at every start, so a value
    # validate_value refuses must never reach one, whichever path decoded the request.
    body = execute_with(ops=[{"op": "put", "key": "k", "value": value}])
    outcome, found = same_on_both_paths("execute", body)
    assert outcome == "refused"
    assert isinstance(found, tuple)
    assert found[0] == "ops[0].value" + where
    operand = {"op": "check", "key": "k", "if": {"path": "a", "eq": value}}
    outcome, found = same_on_both_paths("write", {"partition": 0, "op": operand})
    assert outcome == "refused"
    assert isinstance(found, tuple)
    assert found[0] == "op.if.eq" + where


def test_values_at_the_limits_are_accepted_on_both_paths() -> None:
    deepest = nested(limits.VALUE_DEPTH_MAX)
    largest = b"x" * (limits.VALUE_BYTES_MAX - 5)  # bin 32 header: 5 bytes
    extremes = [-(2**63), 2**64 - 1, -0.0, 1e308, "é" * 1000, {"": {"é": [b"", None]}}]
    for value in (deepest, largest, extremes):
        body = execute_with(ops=[{"op": "put", "key": "k", "value": value}])
        outcome, request_ = same_on_both_paths("execute", body)
        assert outcome == "ok"
        assert isinstance(request_, ExecuteRequest)
        assert request_.ops[0].value is value


def test_a_value_holding_itself_is_refused_in_bounded_time() -> None:
    narrow: list[object] = []
    narrow.append(narrow)
    wide: list[object] = []
    wide.extend([wide] * 1000)
    for value in (narrow, wide):
        assert not codec._value_ok(value)
        body = execute_with(ops=[{"op": "put", "key": "k", "value": value}])
        assert same_on_both_paths("execute", body)[0] == "refused"


def test_only_the_transaction_size_is_not_checked_again() -> None:
    # Each value is under the value limit, together they are over the transaction's: the
    # coordinator refuses that; a peer's call is bounded by the frame size instead.
    chunk = b"x" * (limits.VALUE_BYTES_MAX - 100)
    count = limits.TXN_BYTES_MAX // len(chunk) + 1
    request_ = ExecuteRequest(
        partition=P, txn_id=TXN, ts=TS, ops=tuple(put(f"k{i}", chunk) for i in range(count))
    )
    body = encode_request(request_)
    with pytest.raises(ValidationError) as caught:
        decode_request("execute", body)
    assert caught.value.field == "ops"
    assert decode_request("execute", body, trusted=True) == request_


def test_trusted_deep_nesting_is_refused_without_recursion_errors() -> None:
    deep = nested(1000)
    bodies = [
        ("execute", execute_with(ops=[{"op": deep, "key": "k"}])),
        ("execute", execute_with(ops=[{"op": "put", "key": "k", "value": deep}])),
        ("execute", execute_with(ops=[{"op": "put", "key": "k", "value": 1, "if": deep}])),
        ("execute", execute_with(ops=deep)),
        ("write", {"partition": 0, "op": {"op": "check", "key": "k", "if": {"not": deep}}}),
        (
            "write",
            {"partition": 0, "op": {"op": "check", "key": "k", "if": {"path": "a", "eq": deep}}},
        ),
    ]
    for method, body in bodies:
        with pytest.raises(ValidationError):
            decode_request(method, body, trusted=True)


@pytest.mark.parametrize("method", sorted(METHODS))
@PROPERTY
@given(data=st.data())
def test_trusted_and_strict_decoding_agree(method: str, data: st.DataObject) -> None:
    """Same message or same refusal, field and message included, for any body whose
    transaction is within the size limit (all of these)."""
    body = data.draw(
        st.one_of(junk, mutated(REQUEST_BODIES[method] + TRUSTED_BODIES.get(method, [])))
    )
    same_on_both_paths(method, body)


TRUSTED_BODIES: dict[str, list[object]] = {
    "execute": [encode_request(ExecuteRequest(partition=P, txn_id=TXN, ts=TS, ops=TRUSTED_OPS))],
    "node_execute": [
        encode_request(
            NodeExecuteRequest(
                partition=P, txn_id=TXN, ts=TS, ops=TRUSTED_OPS, placement=(P,) * len(TRUSTED_OPS)
            )
        )
    ],
    "write": [encode_request(WriteRequest(partition=P, op=op)) for op in TRUSTED_OPS],
}


@PROPERTY
@given(value=junk)
def test_the_fast_value_check_never_accepts_what_validate_value_refuses(value: object) -> None:
    if codec._value_ok(value):
        validate_value(value)


# --- replication --------------------------------------------------------------------------

BATCH_REQUEST = next(r for r in REQUESTS if isinstance(r, ReplicateRequest) and r.batches)
SNAPSHOT_REQUEST = next(r for r in REQUESTS if isinstance(r, ReplicateRequest) and r.snapshot)
GOOD_REPLICATE: dict[str, object] = encode_request(BATCH_REQUEST)
GOOD_SNAPSHOT: dict[str, object] = encode_request(SNAPSHOT_REQUEST)
DROP = object()  # a member to leave out


def changed(body: dict[str, object], path: tuple[str | int, ...], value: object) -> object:
    """A deep copy of ``body`` with the element at ``path`` replaced (or dropped: ``DROP``)."""
    out = copy.deepcopy(body)
    container: typing.Any = out
    for step in path[:-1]:
        container = container[step]
    if value is DROP:
        del container[path[-1]]
    else:
        container[path[-1]] = value
    return out


def test_rows_travel_as_lists_of_their_fields_and_deletions_as_keys() -> None:
    rows = GOOD_REPLICATE["batches"][0]["rows"]  # type: ignore[index]
    assert rows["items"][0] == [  # key, exists, value, version, write_ts, read_ts
        "user:ada",
        True,
        ITEM.value,
        4,
        list(TS),
        list(TS),
    ]
    assert rows["items"][-1] == "deleted"
    assert rows["intents"][0][3] == encode_op(OPS[0])
    assert rows["intents"][-1] == "resolved"
    assert rows["ledger"] == [encode_ledger_record(RECORD), "c" * 128]
    assert rows["tokens"] == [["t-1", TXN, "ab" * 16, 1_700_000_000_000_000], "expired"]
    assert rows["meta"] == [list(EARLIER), 9, 3, 41, 4, [0, 0, 0], [0, 0, 0]]
    # empty tables are left out; a probe is its position alone
    assert GOOD_REPLICATE["batches"][1]["rows"] == {"meta": rows["meta"]}  # type: ignore[index]
    probe = ReplicateRequest(
        partition=P, node=N2, leader=N1, leader_epoch=1, prev_epoch=0, prev_seq=0, batches=()
    )
    assert encode_request(probe) == {
        "partition": P,
        "node": N2,
        "leader": N1,
        "leader_epoch": 1,
        "prev_epoch": 0,
        "prev_seq": 0,
        "batches": [],
    }
    decoded = decode_request("replicate", through_msgpack(GOOD_REPLICATE))
    assert isinstance(decoded, ReplicateRequest)
    deletions = decoded.batches[0].rows
    assert deletions.items["deleted"] is None and deletions.intents["resolved"] is None
    assert deletions.ledger[TxnId("c" * 128)] is None and deletions.tokens["expired"] is None


def test_row_lists_follow_their_dataclasses() -> None:
    # A field added to a row must be added to its wire form (the round trips then check it).
    for names, cls in [
        (codec._ITEM_ROW, ItemRow),
        (codec._INTENT_ROW, Intent),
        (codec._TOKEN_ROW, TokenRow),
        (codec._META_ROW, PartitionMeta),
    ]:
        assert names == tuple(f.name for f in dataclasses.fields(cls))
    batch_tables = {f.name for f in dataclasses.fields(PartitionBatch)}
    assert codec._PARTITION_BATCH.members == batch_tables
    assert codec._SNAPSHOT.members == {f.name for f in dataclasses.fields(Snapshot)}


ROWS = ("batches", 0, "rows")
ITEM0 = (*ROWS, "items", 0)
INTENT0 = (*ROWS, "intents", 0)
RECORD0 = (*ROWS, "ledger", 0)
TOKEN0 = (*ROWS, "tokens", 0)
AT_ROWS = "batches[0].rows"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("node",), "", "node"),
        (("node",), "n" * 129, "node"),
        (("leader",), 7, "leader"),
        (("leader",), DROP, "leader"),
        (("leader_epoch",), -1, "leader_epoch"),
        (("prev_epoch",), True, "prev_epoch"),
        (("prev_seq",), SQL_INT_MAX + 1, "prev_seq"),
        (("prev_seq",), -2, "prev_seq"),
        (("batches",), DROP, "batches"),
        (("batches",), {"epoch": 1}, "batches"),
        (("batches",), [{}] * (limits.REPL_BATCHES_PER_MESSAGE_MAX + 1), "batches"),
        (("batches", 0), [4, 41, {}], "batches[0]"),
        (("batches", 0, "seq"), 1.0, "batches[0].seq"),
        (("batches", 0, "rows"), DROP, "batches[0].rows"),
        (("batches", 0, "extra"), 1, "batches[0].extra"),
        ((*ROWS, "extra"), 1, f"{AT_ROWS}.extra"),
        ((*ROWS, "items"), "user:ada", f"{AT_ROWS}.items"),
        (ITEM0, ["user:ada", True], f"{AT_ROWS}.items[0]"),
        (ITEM0, {"key": "user:ada"}, f"{AT_ROWS}.items[0]"),
        (ITEM0, 7, f"{AT_ROWS}.items[0]"),
        ((*ITEM0, 0), "", f"{AT_ROWS}.items[0].key"),
        ((*ITEM0, 1), 1, f"{AT_ROWS}.items[0].exists"),
        ((*ITEM0, 2), float("nan"), f"{AT_ROWS}.items[0].value"),
        ((*ITEM0, 2), {"a": {1: 2}}, f"{AT_ROWS}.items[0].value.a"),
        ((*ITEM0, 2), nested(limits.VALUE_DEPTH_MAX + 1), f"{AT_ROWS}.items[0].value" + "[0]" * 64),
        ((*ITEM0, 3), SQL_INT_MAX + 1, f"{AT_ROWS}.items[0].version"),
        ((*ITEM0, 4), [0, 0], f"{AT_ROWS}.items[0].write_ts"),
        ((*ITEM0, 5), [0, 0, -1], f"{AT_ROWS}.items[0].read_ts[2]"),
        ((*ROWS, "items", 1, 0), "user:ada", f"{AT_ROWS}.items[1]"),  # a key twice
        ((*ROWS, "items", 7), "", f"{AT_ROWS}.items[7]"),  # a deletion's key
        ((*ROWS, "items", 7), "user:ada", f"{AT_ROWS}.items[7]"),  # written and deleted
        ((*INTENT0, 1), "", f"{AT_ROWS}.intents[0].txn_id"),
        ((*INTENT0, 2), None, f"{AT_ROWS}.intents[0].ts"),
        ((*INTENT0, 3), {"op": "put", "key": "p"}, f"{AT_ROWS}.intents[0].op.value"),
        ((*INTENT0, 3), {"op": ["put"], "key": "p"}, f"{AT_ROWS}.intents[0].op.op"),
        ((*INTENT0, 4), 1, f"{AT_ROWS}.intents[0].new_exists"),
        ((*INTENT0, 5), float("inf"), f"{AT_ROWS}.intents[0].new_value"),
        ((*INTENT0, 6), limits.PARTITIONS_MAX, f"{AT_ROWS}.intents[0].anchor"),
        ((*INTENT0, 7), SQL_INT_MAX + 1, f"{AT_ROWS}.intents[0].created_us"),
        ((*ROWS, "intents", 1), 7, f"{AT_ROWS}.intents[1]"),
        ((*RECORD0, "state"), "DONE", f"{AT_ROWS}.ledger[0].state"),
        ((*RECORD0, "created_us"), SQL_INT_MAX + 1, f"{AT_ROWS}.ledger[0].created_us"),
        ((*RECORD0, "completed_us"), U64_MAX, f"{AT_ROWS}.ledger[0].completed_us"),
        ((*ROWS, "ledger", 1), "c" * 129, f"{AT_ROWS}.ledger[1]"),
        ((*ROWS, "ledger", 1), TXN, f"{AT_ROWS}.ledger[1]"),  # written and deleted
        ((*TOKEN0, 0), "tab\t", f"{AT_ROWS}.tokens[0].token"),
        ((*TOKEN0, 2), "f" * 129, f"{AT_ROWS}.tokens[0].fingerprint"),
        ((*TOKEN0, 3), -1, f"{AT_ROWS}.tokens[0].created_us"),
        ((*ROWS, "tokens", 1), "", f"{AT_ROWS}.tokens[1]"),
        ((*ROWS, "meta"), [list(TS), 0, 0, 0], f"{AT_ROWS}.meta"),
        ((*ROWS, "meta", 0), [0, 0, U64_MAX + 1], f"{AT_ROWS}.meta.max_delete_ts[2]"),
        ((*ROWS, "meta", 1), True, f"{AT_ROWS}.meta.max_deleted_version"),
        ((*ROWS, "meta", 2), -1, f"{AT_ROWS}.meta.epoch"),
        ((*ROWS, "meta", 3), -2, f"{AT_ROWS}.meta.seq"),
        ((*ROWS, "meta", 4), SQL_INT_MAX + 1, f"{AT_ROWS}.meta.promised"),
    ],
)
def test_malformed_replicate_names_the_field(
    path: tuple[str | int, ...], value: object, field: str
) -> None:
    body = changed(GOOD_REPLICATE, path, value)
    for trusted in (False, True):
        with pytest.raises(ValidationError) as refused:
            decode_request("replicate", body, trusted=trusted)
        assert refused.value.field == field


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("snapshot",), [], "snapshot"),
        (("snapshot", "meta"), DROP, "snapshot.meta"),
        (("snapshot", "meta"), None, "snapshot.meta"),
        (("snapshot", "extra"), [], "snapshot.extra"),
        (("snapshot", "items", 0), "user:ada", "snapshot.items[0]"),  # no deletions here
        (("snapshot", "items", 1, 0), "user:ada", "snapshot.items[1]"),  # a key twice
        (("snapshot", "intents", 2, 3), {"op": "frob", "key": "u"}, "snapshot.intents[2].op.op"),
        (("snapshot", "ledger", 1, "txn_id"), TXN, "snapshot.ledger[1]"),  # a key twice
        (("snapshot", "ledger", 0, "created_us"), SQL_INT_MAX + 1, "snapshot.ledger[0].created_us"),
        (("snapshot", "tokens", 1), ["t-2", TXN, ""], "snapshot.tokens[1]"),
    ],
)
def test_malformed_snapshot_names_the_field(
    path: tuple[str | int, ...], value: object, field: str
) -> None:
    assert field_of("replicate", changed(GOOD_SNAPSHOT, path, value)) == field


def test_malformed_positions_name_the_field() -> None:
    position = encode_request(PositionRequest(partition=P, node=N2, epoch=5))
    assert field_of("position", changed(position, ("epoch",), -1)) == "epoch"
    assert field_of("position", changed(position, ("node",), DROP)) == "node"
    assert field_of("position", changed(position, ("node",), b"n2")) == "node"
    assert field_of("position", changed(position, ("partition",), -1)) == "partition"
    reply = {"accepted": True, "epoch": 4, "seq": 42, "promised": 4}
    assert field_of("replicate", {**reply, "accepted": 1}, reply=True) == "accepted"
    assert field_of("replicate", {**reply, "seq": SQL_INT_MAX + 1}, reply=True) == "seq"
    assert field_of("position", {"epoch": 3, "seq": 41}, reply=True) == "promised"
    assert field_of("position", {"epoch": 3, "seq": 4, "promised": 5.0}, reply=True) == "promised"
    assert field_of("position", {"epoch": 3, "seq": -2, "promised": 5}, reply=True) == "seq"
    assert field_of("position", {"epoch": -1, "seq": -1, "promised": 5}, reply=True) == "epoch"
    assert codec._SEQ_MIN == POISONED_SEQ  # the one negative position the replicator writes


def test_decoded_rows_are_rows_the_sqlite_store_writes_and_reads_back(tmp_path: Path) -> None:
    # The wire's ranges are the store's: rows at their edges (SQL_INT_MAX) can be written.
    decoded = decode_request("replicate", through_msgpack(GOOD_SNAPSHOT))
    assert isinstance(decoded, ReplicateRequest) and decoded.snapshot is not None
    snap = decoded.snapshot
    batch = PartitionBatch(
        items={row.key: row for row in snap.items},
        intents={intent.key: intent for intent in snap.intents},
        ledger={record.txn_id: record for record in snap.ledger},
        tokens={row.token: row for row in snap.tokens},
        meta=snap.meta,
    )
    path = tmp_path / sqlite_schema.NODE_DB
    conn = sqlite_schema.connect(path, writer=True)
    try:
        sqlite_schema.ensure_schema(conn, path)
        sqlite_schema.stage_batch(conn, {P: batch})
        sqlite_schema.commit_rows(conn)
        sql = sqlite_schema.Sql
        for row in ITEM_ROWS:
            found = conn.execute(sql.GET_ITEM, (P, row.key)).fetchone()
            assert sqlite_schema.decode_item(row.key, *found) == row
        stored = [sqlite_schema.decode_intent(*row) for row in conn.execute(sql.ALL_INTENTS, (P,))]
        assert {intent.key: intent for intent in stored} == {i.key: i for i in INTENTS}
        for record in (RECORD, STAGING):
            found = conn.execute(sql.GET_LEDGER, (P, record.txn_id)).fetchone()
            assert sqlite_schema.decode_ledger(*found) == record
        for token in TOKENS:
            found = conn.execute(sql.GET_TOKEN, (P, token.token)).fetchone()
            assert sqlite_schema.decode_token(*found) == token
        assert sqlite_schema.decode_meta(conn.execute(sql.GET_META, (P,)).fetchone()) == META
    finally:
        conn.close()
