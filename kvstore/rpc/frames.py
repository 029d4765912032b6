"""The internal RPC wire format: msgpack messages, coalesced into WebSocket frames.

Theory of operation
-------------------
Every WebSocket *binary* message (a "frame") is one msgpack array holding one or more messages,
so a writer can coalesce everything it has queued into a single send. Three message kinds exist::

    request    [0, call_id, method, body, timeout_ms]
    ok reply   [1, call_id, body, clock]
    error      [2, call_id, error, clock]

``call_id`` is an integer in ``1..2**63`` chosen by the caller; a reply carries the id of its
request. An error reply about a message whose id could not be read uses id ``0``. ``error`` is
the :meth:`~kvstore.errors.KvError.to_json` form of a catalogue error. ``clock`` is the
responder's hybrid clock ``[physical_us, logical, origin]`` at reply time. Bodies are opaque
msgpack primitives here (``None``, bool, int, float, str, bytes, lists, maps with str keys); the
layer above gives them meaning.

Encoding is split in two so that writers stay cheap and failures stay local: ``encode_*`` packs
one message into bytes (the caller learns right away when a body cannot be encoded or is too
large, and can answer that one call with an error), and :func:`take_frame` pops queued messages
off a deque and wraps as many as fit the coalescing bounds in one array header, without packing
them again. Packing reuses one ``msgpack.Packer`` per thread (a new Packer per message costs
more than the packing).

Decoding is strict and total: :func:`decode_frame` either raises
:class:`~kvstore.errors.ProtocolViolation` for a frame that is unusable as a whole (not msgpack,
not a non-empty array, too large, too many messages) or returns one entry per message, where a
message that breaks the format becomes a :class:`Malformed` entry carrying its call id when that
much was readable (else 0), so the receiver can answer it and carry on with the rest. No other
exception escapes. msgpack extension types (including its timestamp type), map keys other than
``str`` and trailing bytes are malformed; every length the unpacker may allocate is bounded by
the frame's own size.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Final, NamedTuple, NoReturn, TypeAlias

import msgpack

from kvstore.errors import (
    ErrorCode,
    KvError,
    ProtocolViolation,
    TooLarge,
    ValidationError,
    error_from_code,
)
from kvstore.limits import RPC_FRAME_BYTES_MAX
from kvstore.types import Timestamp, timestamp_from_wire

__all__ = [
    "KIND_REQUEST",
    "KIND_OK",
    "KIND_ERROR",
    "CALL_ID_MAX",
    "METHOD_CHARS_MAX",
    "TIMEOUT_MS_MAX",
    "FRAME_MESSAGES_MAX",
    "FRAME_COALESCE_BYTES_MAX",
    "MESSAGE_BYTES_MAX",
    "HEARTBEAT_MS",
    "CLOSE_TIMEOUT_MS",
    "Request",
    "OkReply",
    "ErrorReply",
    "Malformed",
    "Message",
    "encode_request",
    "encode_ok",
    "encode_error",
    "encode_frame",
    "take_frame",
    "decode_frame",
    "decode_message",
    "error_from_json",
]

KIND_REQUEST: Final = 0
KIND_OK: Final = 1
KIND_ERROR: Final = 2

# Limits of the wire format itself (kept here rather than in kvstore.limits because nothing
# outside this package enforces them).
CALL_ID_MAX: Final = 1 << 63  # call ids are 1..CALL_ID_MAX; 0 means "id unreadable".
METHOD_CHARS_MAX: Final = 128  # characters in a method name.
TIMEOUT_MS_MAX: Final = 600_000  # a call's deadline as sent on the wire (10 minutes).
FRAME_MESSAGES_MAX: Final = 1_024  # messages a writer coalesces into (a reader accepts in) a frame.
FRAME_COALESCE_BYTES_MAX: Final = RPC_FRAME_BYTES_MAX // 2  # bytes a writer coalesces per frame.
# aiohttp refuses a WebSocket message of max_msg_size bytes or more, so a frame must stay below
# RPC_FRAME_BYTES_MAX; a message sent alone has a one-byte array header.
MESSAGE_BYTES_MAX: Final = RPC_FRAME_BYTES_MAX - 2
HEARTBEAT_MS: Final = 5_000  # WebSocket ping interval on both ends; no pong within half: dead.
CLOSE_TIMEOUT_MS: Final = 1_000  # how long closing a connection waits for the peer's close frame.

_ERROR_ENVELOPE_KEYS: Final = frozenset({"code", "number", "message", "retryable"})
_new: Final = tuple.__new__  # builds a NamedTuple from a checked sequence, skipping its __new__


class Request(NamedTuple):
    call_id: int
    method: str
    body: object
    timeout_ms: int


class OkReply(NamedTuple):
    call_id: int
    body: object
    clock: Timestamp


class ErrorReply(NamedTuple):
    call_id: int
    error: KvError
    clock: Timestamp


class Malformed(NamedTuple):
    """A message that broke the format; ``call_id`` is 0 when it could not be read."""

    call_id: int
    error: ProtocolViolation


Message: TypeAlias = Request | OkReply | ErrorReply | Malformed


# --- encoding --------------------------------------------------------------------------------


_local = threading.local()  # one reusable msgpack.Packer per thread (a Packer is not shareable)


def _pack(message: list[object]) -> bytes:
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        data: bytes = packer.pack(message)
    except (TypeError, ValueError, OverflowError) as exc:
        _local.packer = None  # a Packer resets itself after an error; a new one costs nothing
        raise ValidationError("body", f"cannot be encoded as msgpack: {exc}") from None
    if len(data) > MESSAGE_BYTES_MAX:
        raise TooLarge(
            f"an RPC message of {len(data)} bytes exceeds {MESSAGE_BYTES_MAX} bytes",
            details={"bytes": len(data), "bytes_max": MESSAGE_BYTES_MAX},
        )
    return data


def encode_request(call_id: int, method: str, body: object, timeout_ms: int) -> bytes:
    """One packed request message; raises ValidationError / TooLarge for an unsendable body."""
    return _pack([KIND_REQUEST, call_id, method, body, timeout_ms])


def encode_ok(call_id: int, body: object, clock: Timestamp) -> bytes:
    """One packed ok reply; raises ValidationError / TooLarge for an unsendable body."""
    return _pack([KIND_OK, call_id, body, clock])


def encode_error(call_id: int, error: KvError, clock: Timestamp) -> bytes:
    """One packed error reply; raises ValidationError / TooLarge for unsendable details."""
    return _pack([KIND_ERROR, call_id, error.to_json(), clock])


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def encode_frame(messages: Sequence[bytes]) -> bytes:
    """A frame (msgpack array) of already packed messages."""
    return b"".join([_array_header(len(messages)), *messages])


def take_frame(outbox: deque[bytes]) -> bytes:
    """Pop the longest prefix of ``outbox`` that fits one frame and return that frame.

    At most ``FRAME_MESSAGES_MAX`` messages and ``FRAME_COALESCE_BYTES_MAX`` bytes, except that
    the first message is always taken (a message up to ``MESSAGE_BYTES_MAX`` goes alone).
    ``outbox`` must not be empty.
    """
    first = outbox.popleft()
    if not outbox:
        return b"\x91" + first
    parts = [first]
    size = len(first)
    while outbox and len(parts) < FRAME_MESSAGES_MAX:
        size += len(outbox[0])
        if size > FRAME_COALESCE_BYTES_MAX:
            break
        parts.append(outbox.popleft())
    return encode_frame(parts)


# --- decoding --------------------------------------------------------------------------------


def _only_str_keys(obj: dict[object, object]) -> dict[object, object]:
    for key in obj:
        if type(key) is not str:
            raise ValueError("map keys must be strings")
    return obj


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError("msgpack extension types are not part of the protocol")


def decode_frame(data: bytes) -> list[Message]:
    """The messages of one frame; raises ProtocolViolation when the frame is unusable as a whole."""
    size = len(data)
    if size == 0:
        raise ProtocolViolation("empty RPC frame")
    if size >= RPC_FRAME_BYTES_MAX:
        raise ProtocolViolation(
            f"RPC frame of {size} bytes exceeds the limit",
            details={"bytes": size, "bytes_max": RPC_FRAME_BYTES_MAX - 1},
        )
    try:
        messages = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_hook=_only_str_keys,
            ext_hook=_refuse_ext,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; every one means "malformed".
        raise ProtocolViolation(
            f"RPC frame is not valid msgpack: {type(exc).__name__}: {exc}"
        ) from None
    if type(messages) is not list or not messages:
        raise ProtocolViolation("an RPC frame must be a non-empty array of messages")
    if len(messages) > FRAME_MESSAGES_MAX:
        raise ProtocolViolation(
            f"an RPC frame holds {len(messages)} messages, more than {FRAME_MESSAGES_MAX}"
        )
    decoded: list[Message] = []
    append = decoded.append
    # Fast paths for well-formed requests and ok replies (the bulk of the traffic); anything else,
    # including every malformed message, goes through decode_message's full checks.
    for message in messages:
        if type(message) is list:
            size = len(message)
            if size == 5:
                kind, call_id, method, body, timeout_ms = message
                if (
                    kind == KIND_REQUEST
                    and type(kind) is int
                    and type(call_id) is int
                    and 0 < call_id <= CALL_ID_MAX
                    and type(method) is str
                    and 0 < len(method) <= METHOD_CHARS_MAX
                    and type(timeout_ms) is int
                    and 0 < timeout_ms <= TIMEOUT_MS_MAX
                ):
                    append(_new(Request, (call_id, method, body, timeout_ms)))
                    continue
            elif size == 4:
                kind, call_id, body, clock = message
                if (
                    kind == KIND_OK
                    and type(kind) is int
                    and type(call_id) is int
                    and 0 < call_id <= CALL_ID_MAX
                ):
                    ts = timestamp_from_wire(clock)
                    if ts is not None:
                        append(_new(OkReply, (call_id, body, ts)))
                        continue
        append(decode_message(message))
    return decoded


def _malformed(call_id: int, why: str) -> Malformed:
    return Malformed(call_id, ProtocolViolation(f"malformed RPC message: {why}"))


def error_from_json(error: object) -> KvError | None:
    """The catalogue exception for an error object received from the wire; None if malformed."""
    if type(error) is not dict:
        return None
    code = error.get("code")
    message = error.get("message")
    if type(code) is not str or type(message) is not str:
        return None
    details: dict[str, object] = {k: v for k, v in error.items() if k not in _ERROR_ENVELOPE_KEYS}
    resolved = ErrorCode.from_name(code)
    if resolved.name != code:
        details["remote_code"] = code
    return error_from_code(resolved, message, details=details)


def decode_message(message: object) -> Message:
    """One message of a decoded frame, checked; never raises."""
    if type(message) is not list or not message:
        return _malformed(0, "not a non-empty array")
    call_id = message[1] if len(message) > 1 else None
    if type(call_id) is not int or not 0 <= call_id <= CALL_ID_MAX:
        return _malformed(0, "call id is not an integer in 0..2**63")
    kind = message[0]
    if type(kind) is not int:
        return _malformed(call_id, "kind is not an integer")
    if kind == KIND_REQUEST:
        if len(message) != 5:
            return _malformed(call_id, "a request has 5 fields")
        if call_id == 0:
            return _malformed(0, "a request's call id must be at least 1")
        method, timeout_ms = message[2], message[4]
        if type(method) is not str or not 0 < len(method) <= METHOD_CHARS_MAX:
            return _malformed(call_id, f"method is not a string of 1..{METHOD_CHARS_MAX} chars")
        if type(timeout_ms) is not int or not 0 < timeout_ms <= TIMEOUT_MS_MAX:
            return _malformed(call_id, f"timeout_ms is not an integer in 1..{TIMEOUT_MS_MAX}")
        return Request(call_id, method, message[3], timeout_ms)
    if kind == KIND_OK:
        if len(message) != 4:
            return _malformed(call_id, "an ok reply has 4 fields")
        if call_id == 0:
            return _malformed(0, "an ok reply's call id must be at least 1")
        clock = timestamp_from_wire(message[3])
        if clock is None:
            return _malformed(call_id, "clock is not [physical_us, logical, origin]")
        return OkReply(call_id, message[2], clock)
    if kind == KIND_ERROR:
        if len(message) != 4:
            return _malformed(call_id, "an error reply has 4 fields")
        clock = timestamp_from_wire(message[3])
        if clock is None:
            return _malformed(call_id, "clock is not [physical_us, logical, origin]")
        error = error_from_json(message[2])
        if error is None:
            return _malformed(call_id, "error is not a map with string code and message")
        return ErrorReply(call_id, error, clock)
    return _malformed(call_id, f"unknown kind {kind}")
