"""Public-API workload helpers for fault tests: keys spread over partitions, token retries.

:func:`key_apart` picks a key whose partition differs from given ones, so a transaction spans
the partitions a test wants. :class:`TxnApi` posts ``/v1/txn`` through a coordinator and, with
:meth:`TxnApi.until_definite`, retries the same ops with the same idempotency token (through
whichever coordinators it is given, in turn) until the answer is definite: 200 (committed) or
409 ``TransactionCanceled``. Everything else a client may see while coordinators die (a
connection error, a timeout, 5xx, 504 ``OutcomeUnknown``, 409 ``TransactionInProgress``) is
retried a bounded number of times with a capped exponential backoff; anything unexpected (422,
400, ...) fails the test at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kvstore.partitioning import PartitionMap

JsonOps = list[dict[str, Any]]

REQUEST_TIMEOUT_S = 15.0  # one HTTP call (a follow waits for recovery: seconds, not minutes)
# A guard, not a measurement: a retry waits for recovery (about the 1.5 s decision deadline of
# FAST_TIMING), which takes longer on a loaded machine; 150 attempts are over a minute of backoff.
RETRIES_MAX = 150
BACKOFF_BASE_S = 0.02
BACKOFF_MAX_S = 0.5
READ_ATTEMPTS_MAX = 50


def key_apart(pmap: PartitionMap, base: str, avoid: Collection[int]) -> str:
    """``base`` (or ``base`` with a numeric suffix) on a partition not in ``avoid``."""
    for i in range(10_000):
        key = base if i == 0 else f"{base}~{i}"
        if pmap.partition_of(key) not in avoid:
            return key
    raise AssertionError(f"no key like {base!r} outside partitions {sorted(avoid)}")


@dataclass
class Answer:
    """The definite answer to one transaction, and how it was reached."""

    status: int  # 200 or 409
    body: dict[str, Any]
    attempts: int
    failures: list[str] = field(default_factory=list)  # what each retried attempt saw

    @property
    def committed(self) -> bool:
        return self.status == 200

    @property
    def txn_id(self) -> str:
        if self.status == 200:
            return str(self.body["txn_id"])
        return str(self.body["error"]["txn_id"])


def is_definite(status: int, body: dict[str, Any]) -> bool:
    if status == 200:
        return True
    return status == 409 and body.get("error", {}).get("code") == "TransactionCanceled"


def is_retryable(status: int, body: dict[str, Any]) -> bool:
    if status >= 500:
        return True
    return status == 409 and body.get("error", {}).get("code") == "TransactionInProgress"


class TxnApi:
    """``/v1/txn`` and friends over one aiohttp session (the caller owns the session)."""

    def __init__(self, session: aiohttp.ClientSession, bearer: str) -> None:
        self.session = session
        self.headers = {"Authorization": f"Bearer {bearer}"}
        self._timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def post(self, base: str, path: str, body: object) -> tuple[int, dict[str, Any]]:
        async with self.session.post(
            base + path, json=body, headers=self.headers, timeout=self._timeout
        ) as reply:
            return reply.status, await reply.json()

    async def get(self, base: str, path: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(base + path, headers=self.headers, timeout=self._timeout) as r:
            return r.status, await r.json()

    async def txn(self, base: str, ops: JsonOps, token: str) -> tuple[int, dict[str, Any]]:
        return await self.post(base, "/v1/txn", {"ops": ops, "token": token})

    async def until_definite(
        self,
        bases: Sequence[str],
        ops: JsonOps,
        token: str,
        *,
        attempts_done: int = 0,
        failures: list[str] | None = None,
    ) -> Answer:
        """Submit (or resubmit) ``ops`` with ``token`` through ``bases`` in turn (the last one
        repeats) until the answer is definite; bounded by ``RETRIES_MAX`` attempts."""
        seen = [] if failures is None else failures
        attempts = attempts_done
        for n in range(RETRIES_MAX):
            base = bases[min(n, len(bases) - 1)]
            attempts += 1
            try:
                status, body = await self.txn(base, ops, token)
            except (aiohttp.ClientError, TimeoutError) as error:
                seen.append(f"{base}: {type(error).__name__}")
            else:
                if is_definite(status, body):
                    return Answer(status, body, attempts, seen)
                if not is_retryable(status, body):
                    raise AssertionError(f"token {token}: unexpected answer {status} {body}")
                seen.append(f"{base}: {status} {body.get('error', {}).get('code')}")
            await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**n))  # retry backoff
        raise AssertionError(f"token {token}: no definite answer in {attempts} attempts: {seen}")

    async def read(self, base: str, keys: Sequence[str]) -> dict[str, Any]:
        """``POST /v1/read``: {key: value} of the present keys (bounded retries on conflicts)."""
        for n in range(READ_ATTEMPTS_MAX):
            status, body = await self.post(base, "/v1/read", {"keys": list(keys)})
            if status == 200:
                return {
                    item["key"]: item["value"]
                    for item in body["items"]
                    if item.get("found", True) is not False
                }
            assert status == 409 and body["error"]["code"] == "TransactionConflict", body
            await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**n))  # retry backoff
        raise AssertionError(f"no stable read of {len(keys)} keys in {READ_ATTEMPTS_MAX} attempts")

    async def outcome(self, base: str, token: str) -> tuple[int, dict[str, Any]]:
        """``GET /v1/txn/{token}`` (tokens here are unreserved characters only)."""
        return await self.get(base, f"/v1/txn/{token}")
