"""Wire codec micro-benchmark: µs per call to encode and decode realistic internal requests.

Run: ``.venv/bin/python bench/codec_bench.py [--rounds 7] [--target-ms 20] [--value doc|str]``

Theory of operation
-------------------
Builds the requests a coordinator sends most (``execute`` with 1 put, ``prepare`` with 2 and 10
puts, each put a 100-byte value under a ``version`` condition; ``commit``; ``get``; a singleton
``write``) and times, per request, in µs per call:

* ``encode``: :func:`kvstore.codec.encode_request` (message to msgpack primitives);
* ``send``: that plus packing the RPC message (:func:`kvstore.rpc.frames.encode_request`);
* ``frame``: :func:`kvstore.rpc.frames.decode_frame` of the one-message frame (msgpack unpacking
  with the frame layer's checks; the node pays it before :func:`~kvstore.codec.decode_request`);
* ``strict``: ``decode_request(method, body)``, the full validation of outside data;
* ``trusted``: ``decode_request(method, body, trusted=True)``, the node's path for peers;
* ``frame+strict`` / ``frame+trusted``: the whole per-request decode from frame bytes;
* ``msgspec`` (when the ``msgspec`` package is importable; it is not a dependency): the same
  frame decoded by ``msgspec.msgpack`` with typed Structs mirroring the request (the envelope with
  the body left :class:`msgspec.Raw`, then the body by its method's Struct), then converted to
  the :mod:`kvstore.messages` request the node runs with the trusted path's checks (values by
  the same ``_value_ok``, conditions by the same fast path: ``msgspec+conv``, the figure to
  compare with ``frame+trusted``), and without that conversion (``msgspec-only``, a lower bound
  no real use reaches). Install it into the venv for the experiment: ``pip install msgspec``.

The machine may be shared and noisy, so every measurement is repeated ``--rounds`` times, the
measurements of one round run one after another (interleaved, never one batch per kind), each
timing enough calls to last about ``--target-ms``, and the table shows the fastest round (the
least disturbed) with the median in brackets. ``--value doc`` (default) puts a small document
(an object with a string, numbers and a list) of 100 encoded bytes in each put; ``--value str``
a 100-character string. The figures and the verdict on msgspec are in ``kvstore/codec.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402

from kvstore import codec, limits  # noqa: E402
from kvstore.codec import decode_request, encode_request, method_of  # noqa: E402
from kvstore.conditions import VersionEquals, condition_from_json  # noqa: E402
from kvstore.messages import (  # noqa: E402
    CommitRequest,
    ExecuteRequest,
    GetRequest,
    PrepareRequest,
    Request,
    WriteRequest,
)
from kvstore.ops import Op, OpKind  # noqa: E402
from kvstore.rpc import frames  # noqa: E402
from kvstore.types import PartitionId, Timestamp, TxnId, Value  # noqa: E402
from kvstore.values import validate_key  # noqa: E402

TXN = TxnId("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
TS = Timestamp(1_700_000_000_123_456, 3, 0x1234_5678)
PID = PartitionId(7)


def doc_value() -> Value:
    """A small document of exactly 100 msgpack-encoded bytes."""
    value: dict[str, Value] = {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "balance": 12_345,
        "score": 98.5,
        "tags": ["admin", "beta"],
        "note": "",
    }
    note_bytes = 100 - len(msgpack.packb(value, use_bin_type=True))
    value["note"] = "n" * note_bytes
    assert len(msgpack.packb(value, use_bin_type=True)) == 100
    return value


def put(index: int, value: Value) -> Op:
    return Op(
        kind=OpKind.PUT,
        key=f"user:{index:08d}",
        value=value,
        condition=VersionEquals(index + 1),
    )


def requests(value: Value) -> list[tuple[str, Request]]:
    def ops(count: int) -> tuple[Op, ...]:
        return tuple(put(i, value) for i in range(count))

    return [
        ("execute 1 put", ExecuteRequest(partition=PID, txn_id=TXN, ts=TS, ops=ops(1))),
        (
            "prepare 2 puts",
            PrepareRequest(partition=PID, txn_id=TXN, ts=TS, ops=ops(2), anchor=PID),
        ),
        (
            "prepare 10 puts",
            PrepareRequest(partition=PID, txn_id=TXN, ts=TS, ops=ops(10), anchor=PID),
        ),
        ("commit", CommitRequest(partition=PID, txn_id=TXN)),
        ("get", GetRequest(partition=PID, key="user:00000001")),
        ("write 1 put", WriteRequest(partition=PID, op=put(0, value))),
    ]


# --- msgspec (optional) ------------------------------------------------------------------


try:
    import msgspec
except ImportError:  # not a dependency: the msgspec columns are left out
    msgspec = None  # type: ignore[assignment]

if msgspec is not None:
    # Structs mirroring the wire forms (the annotations are resolved in this module's globals).
    U64 = Annotated[int, msgspec.Meta(ge=0)]  # msgpack has no integer above 2**64-1
    Part = Annotated[int, msgspec.Meta(ge=0, lt=limits.PARTITIONS_MAX)]
    TxnIdT = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    KeyT = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.KEY_BYTES_MAX)]
    TsT = tuple[U64, U64, U64]

    class PutS(msgspec.Struct, tag_field="op", tag="put", forbid_unknown_fields=True):
        key: KeyT
        value: Any
        cond: Any = msgspec.field(name="if", default=None)
        return_item: bool = False

    class DeleteS(msgspec.Struct, tag_field="op", tag="delete", forbid_unknown_fields=True):
        key: KeyT
        cond: Any = msgspec.field(name="if", default=None)
        return_item: bool = False

    class CheckS(msgspec.Struct, tag_field="op", tag="check", forbid_unknown_fields=True):
        key: KeyT
        cond: Any = msgspec.field(name="if")
        return_item: bool = False

    OpS = PutS | DeleteS | CheckS  # (update ops left out: none in these bodies)
    OpsS = Annotated[list[OpS], msgspec.Meta(max_length=limits.TXN_OPS_MAX_CEILING)]

    class ExecuteS(msgspec.Struct, forbid_unknown_fields=True):
        partition: Part
        txn_id: TxnIdT
        ts: TsT
        ops: OpsS
        token: str | None = None
        fingerprint: str | None = None

    class PrepareS(msgspec.Struct, forbid_unknown_fields=True):
        partition: Part
        txn_id: TxnIdT
        ts: TsT
        ops: OpsS
        anchor: Part
        ledger: Any = None

    class TxnCallS(msgspec.Struct, forbid_unknown_fields=True):
        partition: Part
        txn_id: TxnIdT

    class GetS(msgspec.Struct, forbid_unknown_fields=True):
        partition: Part
        key: KeyT

    class WriteS(msgspec.Struct, forbid_unknown_fields=True):
        partition: Part
        op: OpS


def msgspec_decoder() -> Callable[..., Any] | None:
    """``decode(frame, raw=False)``: a one-request frame decoded by msgspec typed Structs into
    the :mod:`kvstore.messages` request (``raw=True``: just the Struct), with the trusted path's
    checks and the same condition fast path; None when msgspec is not installed."""
    if msgspec is None:
        return None
    kinds: dict[type, OpKind] = {PutS: OpKind.PUT, DeleteS: OpKind.DELETE, CheckS: OpKind.CHECK}

    def to_op(s: Any) -> Op:
        key = s.key if s.key.isascii() else validate_key(s.key)
        cond = None
        if s.cond is not None:
            cond = codec._trusted_condition(s.cond) or condition_from_json(s.cond)
        value = None
        if type(s) is PutS:
            value = s.value
            if not codec._value_ok(value):  # the node must be able to read its intents back
                raise ValueError("value")
        return Op(
            kind=kinds[type(s)], key=key, value=value, condition=cond, return_item=s.return_item
        )

    def to_ops(raw_ops: list[Any]) -> tuple[Op, ...]:
        ops = tuple([to_op(s) for s in raw_ops])
        if not ops or len({op.key for op in ops}) != len(ops):
            raise ValueError("ops")
        return ops

    def execute(s: Any) -> Request:
        return ExecuteRequest(
            partition=PartitionId(s.partition),
            txn_id=TxnId(s.txn_id),
            ts=Timestamp(*s.ts),
            ops=to_ops(s.ops),
            token=s.token,
            fingerprint=s.fingerprint,
        )

    def prepare(s: Any) -> Request:
        ledger = None if s.ledger is None else codec.decode_ledger_record(s.ledger)
        return PrepareRequest(
            partition=PartitionId(s.partition),
            txn_id=TxnId(s.txn_id),
            ts=Timestamp(*s.ts),
            ops=to_ops(s.ops),
            anchor=PartitionId(s.anchor),
            ledger=ledger,
        )

    def commit(s: Any) -> Request:
        return CommitRequest(partition=PartitionId(s.partition), txn_id=TxnId(s.txn_id))

    def get(s: Any) -> Request:
        key = s.key if s.key.isascii() else validate_key(s.key)
        return GetRequest(partition=PartitionId(s.partition), key=key)

    def write(s: Any) -> Request:
        return WriteRequest(partition=PartitionId(s.partition), op=to_op(s.op))

    decoder = msgspec.msgpack.Decoder
    envelope = decoder(list[tuple[int, int, str, msgspec.Raw, int]])
    by_method: dict[str, tuple[Any, Callable[[Any], Request]]] = {
        "execute": (decoder(ExecuteS), execute),
        "prepare": (decoder(PrepareS), prepare),
        "commit": (decoder(TxnCallS), commit),
        "get": (decoder(GetS), get),
        "write": (decoder(WriteS), write),
    }

    def decode(frame: bytes, raw: bool = False) -> Any:
        _, _, method, body, _ = envelope.decode(frame)[0]
        body_decoder, convert = by_method[method]
        message = body_decoder.decode(body)
        return message if raw else convert(message)

    return decode


# --- timing ------------------------------------------------------------------------------


def per_call_us(fn: Callable[[], object], target_s: float) -> tuple[Callable[[], float], int]:
    """A timer of one round of ``fn`` and the number of calls per round (calibrated once)."""
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - started
        if elapsed >= target_s / 10:
            break
        calls *= 2
    calls = max(1, int(calls * target_s / max(elapsed, 1e-9)))

    def one_round() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - started) / calls * 1e6

    return one_round, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=20.0)
    parser.add_argument("--value", choices=["doc", "str"], default="doc")
    args = parser.parse_args()
    value: Value = doc_value() if args.value == "doc" else "x" * 100
    target_s = args.target_ms / 1000

    columns = ["encode", "send", "frame", "strict", "trusted", "frame+strict", "frame+trusted"]
    ms = msgspec_decoder()
    if ms is not None:
        columns += ["msgspec-only", "msgspec+conv"]

    timers: dict[tuple[str, str], Callable[[], float]] = {}
    rows: list[str] = []
    for name, request in requests(value):
        method = method_of(request)
        body = encode_request(request)
        frame = frames.encode_frame([frames.encode_request(1, method, body, 1000)])
        assert decode_request(method, body) == request
        fns: dict[str, Callable[[], object]] = {
            "encode": partial(encode_request, request),
            "send": partial(_send, method, request),
            "frame": partial(frames.decode_frame, frame),
            "strict": partial(decode_request, method, body),
            "trusted": partial(decode_request, method, body, trusted=True),
            "frame+strict": partial(_from_frame, frame, trusted=False),
            "frame+trusted": partial(_from_frame, frame, trusted=True),
        }
        assert decode_request(method, body, trusted=True) == request
        if ms is not None:
            assert ms(frame) == request, (ms(frame), request)
            fns["msgspec-only"] = partial(ms, frame, raw=True)
            fns["msgspec+conv"] = partial(ms, frame)
        for column in columns:
            timers[(name, column)], _ = per_call_us(fns[column], target_s)
        rows.append(name)

    samples: dict[tuple[str, str], list[float]] = {key: [] for key in timers}
    for _ in range(args.rounds):
        for key, timer in timers.items():  # interleaved: every measurement once per round
            samples[key].append(timer())

    print(f"µs per call, fastest of {args.rounds} rounds [median]; value={args.value}")
    width = max(len(c) for c in columns) + 9
    print(f"{'request':<16}" + "".join(f"{c:>{width}}" for c in columns))
    for name in rows:
        cells = []
        for column in columns:
            found = samples[(name, column)]
            cells.append(f"{min(found):.2f} [{statistics.median(found):.2f}]")
        print(f"{name:<16}" + "".join(f"{cell:>{width}}" for cell in cells))


def _send(method: str, request: Request) -> bytes:
    return frames.encode_request(1, method, encode_request(request), 1000)


def _from_frame(frame: bytes, *, trusted: bool) -> Request:
    message = frames.decode_frame(frame)[0]
    assert isinstance(message, frames.Request)
    return decode_request(message.method, message.body, trusted=trusted)


if __name__ == "__main__":
    main()
