"""Test-only fault injection in real processes: network partitions, clock offsets, mutants.

Theory of operation
-------------------
The chaos harness runs real storage nodes and coordinators and needs to break them the way
Jepsen's nemeses do (docs/chaos reference, section 4) without root, iptables or a proxy. A
process started with ``KVSTORE_CHAOS_CONTROL=1`` (:data:`CONTROL_ENV`, :data:`CONTROL_VALUE`)
builds one :class:`ChaosControl`; any other process builds none (:func:`enabled_from_env`), has
no ``/chaos`` route (404) and behaves exactly as before. The control holds:

* **blocked peers**, a set of ``host:port`` node addresses. The process's
  :class:`~kvstore.rpc.RpcPool` asks :meth:`ChaosControl.refuses` before every call: a call to
  a blocked address fails at once with ``Unavailable(sent=False)`` (it never left). When an
  address becomes blocked its open connection is closed, so calls in flight fail with
  ``sent=True``, as a real partition loses their replies. Blocking is on the caller's side only:
  for a symmetric partition between two nodes block each on the other; nodes never call
  coordinators, so cutting a coordinator off from a node is one entry on the coordinator. Calls
  a node makes to its own partitions do not go through the pool and are never blocked.
* **a clock offset** in milliseconds: :meth:`ChaosControl.physical_clock_us` is the system clock
  plus the offset, and the services read wall time only through it (the hybrid clock, the
  cores' ``now_us``, the actor runner), like a host whose system clock was bumped (the
  simulator's ``Host.local_now``). The HLC never goes backwards, so negative offsets are safe;
  the offset is bounded by ``CHAOS_CLOCK_OFFSET_MS_MAX``.
* **mutants**, fixed at start-up: ``KVSTORE_CHAOS_MUTANTS`` (:data:`MUTANTS_ENV`) names
  :class:`~kvstore.mutants.Mutant` values, comma-separated, armed with
  :meth:`~kvstore.mutants.Mutants.arm`, which still requires ``KVSTORE_MUTANTS`` (the arming
  variable, a different one) to hold its magic value. A process asked for mutants without
  arming, or without the chaos control, refuses to start (exit 2, one line on stderr).

HTTP, on the node's app and on the coordinator's API app (outside the API's route table, its
OpenAPI document and its token checks): ``GET /chaos`` answers the state as JSON; ``POST
/chaos`` with ``{"blocked": ["host:port", ...]?, "clock_offset_ms": int?}`` replaces each member
given and answers the new state. Both need ``Authorization: Bearer <cluster secret>``, compared
in constant time (else 401). Bodies are validated strictly (unknown or duplicate members, wrong
types, addresses not in the cluster file, more than ``CHAOS_BLOCKED_MAX`` addresses: 400;
larger than ``CHAOS_BODY_BYTES_MAX``: 413). Every change is logged as a ``chaos.control`` event.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from aiohttp import web

from kvstore.errors import KvError, TooLarge, Unauthorized, ValidationError
from kvstore.limits import CHAOS_BLOCKED_MAX, CHAOS_BODY_BYTES_MAX, CHAOS_CLOCK_OFFSET_MS_MAX
from kvstore.logs import log_event
from kvstore.mutants import NO_MUTANTS, Mutant, Mutants, MutantsNotAllowed
from kvstore.timestamps import PhysicalClock, system_clock_us

__all__ = [
    "CONTROL_ENV",
    "CONTROL_VALUE",
    "MUTANTS_ENV",
    "CHAOS_PATH",
    "ChaosControl",
    "enabled_from_env",
    "mutants_from_env",
    "parse_update",
]

CONTROL_ENV: Final = "KVSTORE_CHAOS_CONTROL"
CONTROL_VALUE: Final = "1"
MUTANTS_ENV: Final = "KVSTORE_CHAOS_MUTANTS"
CHAOS_PATH: Final = "/chaos"

_log = logging.getLogger("kvstore.chaos")
_BEARER: Final = "Bearer "
_US_PER_MS: Final = 1_000
_HOST_CHARS_MAX: Final = 253
_PORT_MAX: Final = 65_535
_READ_CHUNK_BYTES: Final = 4 * 1024

Disconnect = Callable[[str], Awaitable[None]]


class ChaosControl:
    """One process's injected faults; see the module docstring."""

    def __init__(
        self,
        *,
        mutants: Mutants = NO_MUTANTS,
        system_clock: PhysicalClock = system_clock_us,
    ) -> None:
        self.mutants = mutants
        self._system_clock = system_clock
        self._blocked: frozenset[str] = frozenset()
        self._offset_us = 0
        self._refused: dict[str, int] = {}  # calls refused, per blocked address
        self._disconnects: list[Disconnect] = []

    # --- what the process consults -----------------------------------------------------------

    @property
    def blocked(self) -> frozenset[str]:
        return self._blocked

    @property
    def clock_offset_ms(self) -> int:
        return self._offset_us // _US_PER_MS

    def physical_clock_us(self) -> int:
        """The system clock plus the offset, in microseconds: this process's wall time."""
        return self._system_clock() + self._offset_us

    def refuses(self, address: str) -> bool:
        """True (and counted) when calls to ``address`` are blocked."""
        if address not in self._blocked:
            return False
        self._refused[address] = self._refused.get(address, 0) + 1
        return True

    def on_block(self, disconnect: Disconnect) -> None:
        """Have ``disconnect(address)`` run whenever ``address`` becomes blocked (an RPC pool's
        :meth:`~kvstore.rpc.RpcPool.disconnect`: calls in flight to it fail)."""
        self._disconnects.append(disconnect)

    # --- changing it -------------------------------------------------------------------------

    async def update(
        self, *, blocked: Iterable[str] | None = None, clock_offset_ms: int | None = None
    ) -> dict[str, object]:
        """Replace the members given (already validated); the new state. Connections to newly
        blocked addresses are closed before this returns."""
        before = self.state()
        newly_blocked: frozenset[str] = frozenset()
        if blocked is not None:
            new = frozenset(blocked)
            newly_blocked = new - self._blocked
            self._blocked = new
            self._refused = {a: n for a, n in self._refused.items() if a in new}
        if clock_offset_ms is not None:
            self._offset_us = clock_offset_ms * _US_PER_MS
        for address in sorted(newly_blocked):
            for disconnect in self._disconnects:
                await disconnect(address)
        after = self.state()
        log_event(
            _log,
            "chaos.control",
            logging.WARNING,
            blocked=after["blocked"],
            clock_offset_ms=after["clock_offset_ms"],
            blocked_before=before["blocked"],
            clock_offset_ms_before=before["clock_offset_ms"],
        )
        return after

    def state(self) -> dict[str, object]:
        """What ``GET /chaos`` answers."""
        return {
            "blocked": sorted(self._blocked),
            "clock_offset_ms": self.clock_offset_ms,
            "mutants": [m.value for m in self.mutants],
            "refused_calls": dict(sorted(self._refused.items())),
        }

    # --- HTTP ------------------------------------------------------------------------------

    def mount(self, app: web.Application, secret: str, peers: Iterable[str]) -> None:
        """Add ``GET`` and ``POST /chaos`` to ``app``; ``peers`` are the addresses that may be
        blocked (the cluster's nodes), ``secret`` the cluster secret the caller must present."""
        handlers = _Handlers(self, secret, frozenset(peers))
        app.router.add_get(CHAOS_PATH, handlers.get)
        app.router.add_post(CHAOS_PATH, handlers.post)


class _Handlers:
    def __init__(self, control: ChaosControl, secret: str, peers: frozenset[str]) -> None:
        if not secret:
            raise ValueError("the chaos control needs the cluster secret")
        self._control = control
        self._secret = secret.encode("utf-8")
        self._peers = peers

    def _authorized(self, request: web.Request) -> bool:
        authorization = request.headers.get("Authorization", "")
        presented = authorization[len(_BEARER) :] if authorization.startswith(_BEARER) else ""
        return bool(presented) and hmac.compare_digest(
            presented.encode("utf-8", "surrogateescape"), self._secret
        )

    async def get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _refused()
        return web.json_response(self._control.state())

    async def post(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _refused()
        try:
            raw = await _read_body(request)
            blocked, offset_ms = parse_update(_json_object(raw), self._peers)
        except KvError as error:
            return _error(error)
        state = await self._control.update(blocked=blocked, clock_offset_ms=offset_ms)
        return web.json_response(state)


def _error(error: KvError) -> web.Response:
    return web.json_response({"error": error.to_json()}, status=error.code.http_status)


def _refused() -> web.Response:
    response = _error(Unauthorized("missing or wrong cluster secret"))
    response.headers["WWW-Authenticate"] = 'Bearer realm="kvstore-chaos"'
    return response


async def _read_body(request: web.Request) -> bytes:
    length = request.content_length
    if length is not None and length > CHAOS_BODY_BYTES_MAX:
        raise TooLarge(f"the body is {length} bytes; at most {CHAOS_BODY_BYTES_MAX} allowed")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_READ_CHUNK_BYTES):
        size += len(chunk)
        if size > CHAOS_BODY_BYTES_MAX:
            raise TooLarge(f"the body is over {CHAOS_BODY_BYTES_MAX} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in pairs:
        if name in out:
            raise ValidationError("body", f"member {name!r} appears twice")
        out[name] = value
    return out


def _no_constant(name: str) -> object:
    raise ValidationError("body", f"{name} is not JSON")


def _json_object(raw: bytes) -> object:
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError("body", f"not JSON: {exc}") from None


def _check_address(address: object, peers: frozenset[str]) -> str:
    if not isinstance(address, str):
        raise ValidationError("blocked", f"addresses are strings, got {address!r}")
    host, sep, port = address.rpartition(":")
    if (
        not sep
        or not host
        or len(host) > _HOST_CHARS_MAX
        or not host.isascii()
        or not host.isprintable()
        or " " in host
        or not (port.isascii() and port.isdigit() and 0 < int(port) <= _PORT_MAX)
    ):
        raise ValidationError("blocked", f"must be host:port, got {address[:300]!r}")
    if address not in peers:
        raise ValidationError(
            "blocked", f"{address!r} is not a node of the cluster (known: {sorted(peers)})"
        )
    return address


def parse_update(body: object, peers: frozenset[str]) -> tuple[frozenset[str] | None, int | None]:
    """The ``(blocked, clock_offset_ms)`` a ``POST /chaos`` body asks for (None: unchanged)."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = set(body) - {"blocked", "clock_offset_ms"}
    if unknown:
        raise ValidationError("body", f"unknown members {sorted(unknown)}")
    blocked: frozenset[str] | None = None
    offset_ms: int | None = None
    if "blocked" in body:
        listed = body["blocked"]
        if not isinstance(listed, list):
            raise ValidationError("blocked", "must be a list of host:port strings")
        if len(listed) > CHAOS_BLOCKED_MAX:
            raise ValidationError("blocked", f"at most {CHAOS_BLOCKED_MAX} addresses")
        addresses = [_check_address(address, peers) for address in listed]
        blocked = frozenset(addresses)
        if len(blocked) != len(addresses):
            raise ValidationError("blocked", "lists an address twice")
    if "clock_offset_ms" in body:
        value = body["clock_offset_ms"]
        if type(value) is not int or not -CHAOS_CLOCK_OFFSET_MS_MAX <= value <= (
            CHAOS_CLOCK_OFFSET_MS_MAX
        ):
            raise ValidationError(
                "clock_offset_ms",
                f"must be an integer in -{CHAOS_CLOCK_OFFSET_MS_MAX}..{CHAOS_CLOCK_OFFSET_MS_MAX}",
            )
        offset_ms = value
    return blocked, offset_ms


# --- start-up --------------------------------------------------------------------------------


def mutants_from_env() -> Mutants:
    """The mutants ``KVSTORE_CHAOS_MUTANTS`` names (comma-separated), armed; empty or unset:
    none. Unknown names, or arming refused (``KVSTORE_MUTANTS`` not set to its magic value),
    raise ``ValidationError``: the process refuses to start with one line, exit status 2."""
    text = os.environ.get(MUTANTS_ENV, "")
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        return NO_MUTANTS
    known = {m.value: m for m in Mutant}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValidationError(MUTANTS_ENV, f"unknown mutants {unknown}; known: {sorted(known)}")
    try:
        return Mutants.arm(*(known[name] for name in names))
    except MutantsNotAllowed as exc:
        raise ValidationError(MUTANTS_ENV, str(exc)) from None


def enabled_from_env() -> ChaosControl | None:
    """This process's control when ``KVSTORE_CHAOS_CONTROL=1``, else None (no faults, no
    route). Values other than ``1``, ``0`` or empty, and mutants asked for without the control,
    are refused (``ValidationError``: exit 2) rather than silently ignored."""
    flag = os.environ.get(CONTROL_ENV, "")
    if flag not in ("", "0", CONTROL_VALUE):
        raise ValidationError(CONTROL_ENV, f"must be {CONTROL_VALUE} or unset, got {flag[:50]!r}")
    mutants = mutants_from_env()
    if flag != CONTROL_VALUE:
        if mutants:
            raise ValidationError(MUTANTS_ENV, f"mutants need {CONTROL_ENV}={CONTROL_VALUE}")
        return None
    return ChaosControl(mutants=mutants)
