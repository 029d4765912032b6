"""The RPC wire format: round trips, coalescing bounds, and a decoder that only ever says
ProtocolViolation about junk."""

from __future__ import annotations

import datetime
from collections import deque

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kvstore.errors import (
    ConditionFailed,
    ErrorCode,
    InternalError,
    KvError,
    ProtocolViolation,
    TooLarge,
    ValidationError,
    error_from_code,
)
from kvstore.limits import RPC_FRAME_BYTES_MAX
from kvstore.rpc.frames import (
    CALL_ID_MAX,
    FRAME_COALESCE_BYTES_MAX,
    FRAME_MESSAGES_MAX,
    MESSAGE_BYTES_MAX,
    ErrorReply,
    Malformed,
    OkReply,
    Request,
    decode_frame,
    decode_message,
    encode_error,
    encode_frame,
    encode_ok,
    encode_request,
    error_from_json,
    take_frame,
)
from kvstore.types import ORIGIN_MAX, Timestamp

CLOCK = Timestamp(1_700_000_000_000_000, 7, 0xDEAD_BEEF_CAFE_BABE)
BODY = {"key": "user:1", "value": [1, 2.5, None, True, b"\x00\xff", {"nested": "x"}], "n": -3}


def one(data: bytes) -> object:
    messages = decode_frame(data)
    assert len(messages) == 1
    return messages[0]


def pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


# --- round trips -------------------------------------------------------------------------------


def test_request_round_trip() -> None:
    frame = encode_frame([encode_request(42, "get", BODY, 1000)])
    assert one(frame) == Request(42, "get", BODY, 1000)


def test_ok_reply_round_trip_carries_the_clock_as_a_timestamp() -> None:
    reply = one(encode_frame([encode_ok(CALL_ID_MAX, BODY, CLOCK)]))
    assert reply == OkReply(CALL_ID_MAX, BODY, CLOCK)
    assert isinstance(reply, OkReply)
    assert type(reply.clock) is Timestamp


def test_error_reply_round_trip_rebuilds_the_typed_exception() -> None:
    error = ConditionFailed("version mismatch", details={"current": {"version": 3}})
    reply = one(encode_frame([encode_error(9, error, CLOCK)]))
    assert isinstance(reply, ErrorReply)
    assert reply.call_id == 9
    assert reply.clock == CLOCK
    assert type(reply.error) is ConditionFailed
    assert reply.error.message == "version mismatch"
    assert reply.error.details == {"current": {"version": 3}}


def test_validation_error_keeps_its_field() -> None:
    reply = one(encode_frame([encode_error(1, ValidationError("key", "too long"), CLOCK)]))
    assert isinstance(reply, ErrorReply)
    assert type(reply.error) is ValidationError
    assert reply.error.field == "key"
    assert reply.error.message == "key: too long"


def test_error_reply_may_use_call_id_zero() -> None:
    reply = one(encode_frame([encode_error(0, ProtocolViolation("bad frame"), CLOCK)]))
    assert isinstance(reply, ErrorReply)
    assert reply.call_id == 0


def test_unknown_error_code_becomes_internal_error_and_keeps_the_name() -> None:
    error = error_from_json({"code": "FluxCapacitor", "message": "m", "extra": 1})
    assert type(error) is InternalError
    assert error.details == {"extra": 1, "remote_code": "FluxCapacitor"}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_catalogue_code_round_trips(code: ErrorCode) -> None:
    error = error_from_code(code, "message", details={"field": "f"})
    reply = one(encode_frame([encode_error(5, error, CLOCK)]))
    assert isinstance(reply, ErrorReply)
    assert reply.error.code is code
    assert type(reply.error) is type(error)


@pytest.mark.parametrize(
    "message",
    [
        [0, 1, "m", {"a": [1]}, 600_000],
        [0, CALL_ID_MAX, "m" * 128, None, 1],
        [1, 1, b"body", [0, 0, 0]],
        [1, CALL_ID_MAX, None, [ORIGIN_MAX, ORIGIN_MAX, ORIGIN_MAX]],
    ],
)
def test_the_fast_path_and_the_full_checks_agree(message: list[object]) -> None:
    [fast] = decode_frame(pack([message]))
    full = decode_message(message)
    assert fast == full
    assert type(fast) is type(full)
    assert not isinstance(fast, Malformed)
    if isinstance(fast, OkReply) and isinstance(full, OkReply):
        assert type(fast.clock) is type(full.clock) is Timestamp


def test_many_messages_in_one_frame_keep_their_order() -> None:
    parts = [encode_request(i, "m", i, 10) for i in range(1, 20)]
    parts.append(encode_ok(3, "x", CLOCK))
    messages = decode_frame(encode_frame(parts))
    assert [m.call_id for m in messages] == [*range(1, 20), 3]
    assert messages[-1] == OkReply(3, "x", CLOCK)


@pytest.mark.parametrize("count", [1, 15, 16, 65535, 65536])
def test_frame_array_header_for_every_size_class(count: int) -> None:
    data = encode_frame([b"\xc0"] * count)  # nil messages: valid msgpack, malformed messages
    assert msgpack.unpackb(data) == [None] * count


# --- encoding failures are typed --------------------------------------------------------------


def test_unencodable_body_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        encode_request(1, "m", {1, 2}, 10)
    with pytest.raises(ValidationError):
        encode_ok(1, 1 << 70, CLOCK)


def test_message_larger_than_a_frame_is_too_large() -> None:
    with pytest.raises(TooLarge):
        encode_request(1, "m", b"x" * MESSAGE_BYTES_MAX, 10)


def test_largest_single_message_frame_stays_below_the_websocket_limit() -> None:
    body_bytes = MESSAGE_BYTES_MAX - len(encode_request(1, "m", b"", 10)) - 4
    message = encode_request(1, "m", b"x" * body_bytes, 10)
    assert len(message) <= MESSAGE_BYTES_MAX
    frame = take_frame(deque([message]))
    assert len(frame) < RPC_FRAME_BYTES_MAX
    assert decode_frame(frame) == [Request(1, "m", b"x" * body_bytes, 10)]


# --- coalescing ----------------------------------------------------------------------------------


def test_take_frame_coalesces_everything_queued() -> None:
    outbox = deque(encode_request(i, "m", i, 10) for i in range(1, 101))
    frame = take_frame(outbox)
    assert not outbox
    assert [m.call_id for m in decode_frame(frame)] == list(range(1, 101))


def test_take_frame_bounds_the_message_count() -> None:
    outbox = deque(encode_request(i, "m", None, 10) for i in range(1, 2 * FRAME_MESSAGES_MAX + 2))
    sizes = []
    while outbox:
        sizes.append(len(decode_frame(take_frame(outbox))))
    assert sizes == [FRAME_MESSAGES_MAX, FRAME_MESSAGES_MAX, 1]


def test_take_frame_bounds_the_bytes_but_always_takes_one() -> None:
    big = encode_request(1, "m", b"x" * (FRAME_COALESCE_BYTES_MAX - 100), 10)
    huge = encode_request(2, "m", b"y" * (FRAME_COALESCE_BYTES_MAX + 100), 10)
    small = encode_request(3, "m", b"z" * 200, 10)
    outbox = deque([big, small, huge, small])
    frames = []
    while outbox:
        frames.append([m.call_id for m in decode_frame(take_frame(outbox))])
    assert frames == [[1], [3], [2], [3]]


# --- strict decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x91",  # truncated
        pack([]),  # no messages
        pack({"a": 1}),  # not an array
        pack([[0, 1, "m", None, 10]]) + b"\x00",  # trailing bytes
        pack([[0, 1, "m", msgpack.ExtType(5, b"xx"), 10]]),  # extension type
        pack([[0, 1, "m", {1: "int key"}, 10]]),  # non-str map key
        pack([[0, 1, "m", {b"k": "bytes key"}, 10]]),  # bytes map key
        b"\x91\x95\x00\x01\xa1\xff\xc0\x0a",  # method is not UTF-8
        b"\x91" + b"\xdd\xff\xff\xff\xff",  # declares a 4G array in 6 bytes
        b"\x91" + b"\x91" * 5000 + b"\xc0",  # deeper than msgpack nests
        pack([None] * (FRAME_MESSAGES_MAX + 1)),  # too many messages
    ],
)
def test_junk_frames_are_protocol_violations(data: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_frame(data)


def test_msgpack_timestamp_extension_is_refused() -> None:
    stamp = msgpack.Timestamp.from_datetime(datetime.datetime.now(datetime.UTC))
    with pytest.raises(ProtocolViolation):
        decode_frame(pack([[0, 1, "m", stamp, 10]]))


def test_frame_at_the_size_limit_is_refused() -> None:
    with pytest.raises(ProtocolViolation):
        decode_frame(b"\x91" + b"\xc0" * (RPC_FRAME_BYTES_MAX - 1))


@pytest.mark.parametrize(
    ("message", "call_id"),
    [
        (None, 0),
        ([], 0),
        ("text", 0),
        ([0], 0),
        ([0, -1, "m", None, 10], 0),
        ([0, CALL_ID_MAX + 1, "m", None, 10], 0),
        ([0, True, "m", None, 10], 0),
        ([0, 0, "m", None, 10], 0),  # a request needs an id >= 1
        ([0, 7, "m", None], 7),
        ([0, 7, "", None, 10], 7),
        ([0, 7, "m" * 129, None, 10], 7),
        ([0, 7, b"m", None, 10], 7),
        ([0, 7, "m", None, 0], 7),
        ([0, 7, "m", None, 600_001], 7),
        ([0, 7, "m", None, 1.5], 7),
        ([False, 7, "m", None, 10], 7),
        ([3, 7, None, [0, 0, 0]], 7),
        (["x", 7, None, [0, 0, 0]], 7),
        ([1, 7, None], 7),
        ([1, 0, None, [0, 0, 0]], 0),
        ([1, 7, None, [0, 0]], 7),
        ([1, 7, None, [0, 0, -1]], 7),
        ([1, 7, None, [0, -(1 << 63), ORIGIN_MAX]], 7),
        ([1, 7, None, [0, 0, 0.0]], 7),
        ([1, 7, None, None], 7),
        ([2, 7, {"code": "NotFound"}, [0, 0, 0]], 7),
        ([2, 7, {"message": "m"}, [0, 0, 0]], 7),
        ([2, 7, {"code": 5, "message": "m"}, [0, 0, 0]], 7),
        ([2, 7, "NotFound", [0, 0, 0]], 7),
        ([2, 7, {"code": "NotFound", "message": "m"}, "clock"], 7),
    ],
)
def test_malformed_messages_keep_their_readable_call_id(message: object, call_id: int) -> None:
    decoded = decode_message(message)
    assert isinstance(decoded, Malformed)
    assert decoded.call_id == call_id
    assert isinstance(decoded.error, ProtocolViolation)
    # The frame decoder (with its fast paths) agrees with decode_message.
    [framed] = decode_frame(pack([message]))
    assert isinstance(framed, Malformed)
    assert (framed.call_id, framed.error.message) == (call_id, decoded.error.message)


def test_a_malformed_message_does_not_spoil_its_frame() -> None:
    frame = pack([[0, 1, "m", None, 10], [0, 2, "", None, 10], "junk", [0, 3, "m", None, 10]])
    messages = decode_frame(frame)
    assert messages[0] == Request(1, "m", None, 10)
    assert isinstance(messages[1], Malformed) and messages[1].call_id == 2
    assert isinstance(messages[2], Malformed) and messages[2].call_id == 0
    assert messages[3] == Request(3, "m", None, 10)


# --- the decoder is total -------------------------------------------------------------------------


def decode_or_violation(data: bytes) -> None:
    try:
        messages = decode_frame(data)
    except ProtocolViolation:
        return
    except KvError as exc:  # pragma: no cover - the assertion below reports it
        raise AssertionError(f"decode_frame raised {exc!r}") from exc
    assert messages
    for message in messages:
        assert isinstance(message, Request | OkReply | ErrorReply | Malformed)


@given(st.binary(max_size=512))
@example(b"\x91\x95\x00\x01\xa1m\xc0\x0a")
@example(b"\x91\x94\x02\x01\x82\xa4code\xa8NotFound\xa7message\xa0\x93\x00\x00\x00")
def test_random_bytes_never_raise_anything_but_protocol_violation(data: bytes) -> None:
    decode_or_violation(data)


primitives = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
values = st.recursive(
    primitives,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), inner, max_size=4)
    ),
    max_leaves=20,
)
message_like = st.one_of(
    values,
    st.tuples(st.integers(-1, 4), values, values, values).map(list),
    st.tuples(st.integers(-1, 4), values, values, values, values).map(list),
    st.tuples(
        st.sampled_from([1, 2]),
        st.integers(0, 10),
        values,
        st.lists(st.integers(-1, 3), min_size=2, max_size=4),
    ).map(list),
)


@given(st.lists(message_like, min_size=1, max_size=8))
def test_random_structures_decode_to_messages_or_violations(messages: list[object]) -> None:
    try:
        data = pack(messages)
    except (TypeError, ValueError):  # pragma: no cover - e.g. keys msgpack will not pack
        return
    decode_or_violation(data)


@given(st.binary(min_size=1, max_size=64), st.integers(0, 63))
def test_corrupted_valid_frames_never_raise_anything_else(noise: bytes, at: int) -> None:
    frame = encode_frame(
        [encode_request(5, "get", {"key": "k"}, 100), encode_ok(6, [1, "x"], CLOCK)]
    )
    position = at % len(frame)
    decode_or_violation(frame[:position] + noise + frame[position + len(noise) :])
    decode_or_violation(frame[:position])
