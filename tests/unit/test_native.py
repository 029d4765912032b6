"""The native protocol (``kvstore.native``) and the co-located transport (``kvstore.transport``).

A node checks what a native client sent as strictly as the HTTP API checks a body; the client
refuses a malformed answer as ``ProtocolViolation``; answers survive the round trip through
msgpack. A coordinator inside a node reaches its own partitions by function call and only the
others through the RPC transport; a replication request, by function call only when it names the
node itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from kvstore import native
from kvstore.client.backend import ScanPage
from kvstore.client.results import Committed, Deleted, Item, Written
from kvstore.codec import encode_op
from kvstore.errors import KvError, Overloaded, ProtocolViolation, ValidationError
from kvstore.messages import GetReply, GetRequest, PositionRequest, Reply, Request
from kvstore.ops import Op, OpKind
from kvstore.transport import ColocatedTransport
from kvstore.types import Key, NodeId, PartitionId

ALL = frozenset({"key", "op", "ops", "keys", "token", "prefix", "start", "end", "limit", "cursor"})


def through_msgpack(value: object) -> object:
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def test_answers_survive_the_round_trip() -> None:
    item: Item[Any] = Item("k", {"n": [1, 2.5, None, "x"]}, 3, "17.0.ab")
    assert native.decode_item(through_msgpack(native.encode_item(item))) == item
    assert native.decode_item(through_msgpack(native.encode_item(None))) is None
    written = Written(version=2, ts="5.1.cd")
    assert native.decode_written(through_msgpack(native.encode_written(written))) == written
    for deleted in (Deleted(deleted=True, ts="6.0.ef"), Deleted(deleted=False, ts=None)):
        assert native.decode_deleted(through_msgpack(native.encode_deleted(deleted))) == deleted
    committed = Committed(txn_id="t1", ts="7.0.aa")
    assert native.decode_committed(through_msgpack(native.encode_committed(committed))) == (
        committed
    )
    page = ScanPage(items=(item,), cursor="k")
    assert native.decode_scan_page(through_msgpack(native.encode_scan_page(page))) == page


@pytest.mark.parametrize(
    ("decode", "raw"),
    [
        (native.decode_item, ["k", 1, 2]),
        (native.decode_item, ["k", 1, "two", "ts"]),
        (native.decode_item, "k"),
        (native.decode_written, [1]),
        (native.decode_written, ["1", "ts"]),
        (native.decode_deleted, ["yes", None]),
        (native.decode_committed, [1, "ts"]),
        (native.decode_scan_page, [[None], None]),
        (native.decode_scan_page, [{}, None]),
    ],
)
def test_a_malformed_answer_is_a_protocol_violation(
    decode: Callable[[object], object], raw: object
) -> None:
    with pytest.raises(ProtocolViolation):
        decode(raw)


@pytest.mark.parametrize(
    ("body", "check"),
    [
        ([], lambda obj: obj),
        ({1: "k"}, lambda obj: obj),
        ({"surprise": 1}, lambda obj: obj),
        ({"key": ""}, native.body_key),
        ({"key": 7}, native.body_key),
        ({"key": "k" * 2000}, native.body_key),
        ({"op": {"op": "explode", "key": "k"}}, native.body_op),
        ({"op": "put"}, native.body_op),
        ({"ops": []}, native.body_ops),
        ({"ops": "put"}, native.body_ops),
        ({"ops": [{"op": "put", "key": "", "value": 1}]}, native.body_ops),
        ({"keys": []}, native.body_keys),
        ({"keys": ["a", 2]}, native.body_keys),
        ({"token": ""}, native.body_token),
        ({"token": "\n"}, native.body_token),
        ({"limit": 0}, native.body_scan),
        ({"limit": "10"}, native.body_scan),
        ({"limit": 10, "start": 5}, native.body_scan),
    ],
)
def test_a_bad_body_is_a_validation_error(body: object, check: Callable[[Any], object]) -> None:
    with pytest.raises(ValidationError):
        check(native.body_object(body, ALL))


def test_good_bodies_give_their_arguments() -> None:
    op = Op(kind=OpKind.PUT, key=Key("k"), value={"a": 1})
    body = native.body_object(through_msgpack(native.encode_op_body(op)), ALL)
    assert native.body_op(body) == op
    ops = native.body_ops({"ops": [encode_op(op)]})
    assert ops == [op]
    assert native.body_keys({"keys": ["a", "b"]}) == ["a", "b"]
    assert native.body_scan({"limit": 5, "prefix": "p/", "start": "", "cursor": None}) == (
        native.ScanArgs(prefix="p/", start=None, end=None, limit=5, cursor=None)
    )


class _Remote:
    def __init__(self) -> None:
        self.sent: list[Request] = []

    async def call(self, request: Request, timeout_ms: int) -> Reply:
        self.sent.append(request)
        return GetReply(item=None)

    def start(
        self, request: Request, timeout_ms: int, answer: Callable[[Reply | KvError], None]
    ) -> bool:
        self.sent.append(request)
        answer(GetReply(item=None))
        return True


def test_owned_partitions_are_function_calls_and_the_rest_go_remote() -> None:
    remote = _Remote()
    submitted: list[Request] = []

    def submit(request: Request, respond: Callable[[Reply | KvError], None]) -> None:
        submitted.append(request)
        if request.partition == PartitionId(1):
            respond(Overloaded("partition 1 is busy"))
        else:
            respond(GetReply(item=None))

    transport = ColocatedTransport(remote, lambda pid: pid in (0, 1), submit)  # type: ignore[arg-type]
    own = GetRequest(partition=PartitionId(0), key=Key("a"))
    busy = GetRequest(partition=PartitionId(1), key=Key("b"))
    other = GetRequest(partition=PartitionId(2), key=Key("c"))
    answers: list[Reply | KvError] = []
    assert transport.start(own, 100, answers.append)
    assert transport.start(other, 100, answers.append)
    assert submitted == [own] and remote.sent == [other]

    async def calls() -> None:
        assert await transport.call(own, 100) == GetReply(item=None)
        with pytest.raises(Overloaded):  # a local refusal is itself: nothing ran
            await transport.call(busy, 100)
        await transport.call(other, 100)

    asyncio.run(calls())
    assert submitted == [own, own, busy] and remote.sent == [other, other]


def test_replication_requests_are_function_calls_only_when_they_name_this_node() -> None:
    remote = _Remote()
    submitted: list[Request] = []

    def submit(request: Request, respond: Callable[[Reply | KvError], None]) -> None:
        submitted.append(request)
        respond(GetReply(item=None))

    def owns(pid: PartitionId) -> bool:
        return pid == PartitionId(0)

    here = ColocatedTransport(remote, owns, submit, NodeId("n1"))  # type: ignore[arg-type]
    unnamed = ColocatedTransport(remote, owns, submit)  # type: ignore[arg-type]
    # Owning the partition does not matter: the named node does.
    to_me = PositionRequest(partition=PartitionId(2), node=NodeId("n1"), epoch=3)
    to_peer = PositionRequest(partition=PartitionId(0), node=NodeId("n2"), epoch=3)
    answers: list[Reply | KvError] = []
    assert here.start(to_me, 100, answers.append)
    assert here.start(to_peer, 100, answers.append)
    assert unnamed.start(to_me, 100, answers.append)  # no node id: it cannot tell
    assert submitted == [to_me] and remote.sent == [to_peer, to_me]

    async def calls() -> None:
        await here.call(to_me, 100)
        await here.call(to_peer, 100)
        await unnamed.call(to_me, 100)

    asyncio.run(calls())
    assert submitted == [to_me, to_me] and remote.sent == [to_peer, to_me, to_peer, to_me]
    assert len(answers) == 3
