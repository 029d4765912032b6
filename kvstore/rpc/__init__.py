"""Internal RPC: msgpack frames over persistent, multiplexed, pipelined WebSocket connections.

Theory of operation
-------------------
Coordinators call storage nodes (and anything else internal) through this package. A call is
``method`` plus a body of msgpack primitives and a deadline; its answer is a body or a catalogue
error, plus the responder's hybrid clock. :mod:`kvstore.rpc.frames` is the wire format (pure
functions), :mod:`kvstore.rpc.server` serves calls on ``GET /rpc`` of an aiohttp application and
:mod:`kvstore.rpc.client` makes them over one shared connection per peer. The layer knows nothing
of the store's message classes: encoding them into bodies is the caller's business.
"""

from __future__ import annotations

from kvstore.rpc.client import ClockSink, RpcClient, RpcPool
from kvstore.rpc.server import AsyncHandler, EventSink, Handler, Respond, RpcServer

__all__ = [
    "RpcClient",
    "RpcPool",
    "RpcServer",
    "Handler",
    "Respond",
    "AsyncHandler",
    "EventSink",
    "ClockSink",
]
