"""The chaos runner's DynamoDB client: workload steps as boto3 calls, answers as core results.

Theory of operation
-------------------
``python -m chaos run --client dynamodb`` runs the same workload scripts
(:mod:`chaos.sim.workloads`), the same recording, retries, ledger resolution and checkers as an
HTTP run; only the wire changes: each step goes to the DynamoDB endpoint (``POST /`` of a random
API process) as an unmodified boto3 client would send it, and this module turns boto3's answer
into the core result the script expects, as :mod:`chaos.http_client` does for the public API.
That is why it is a *client* (``--client``) and not a workload: a workload is the scripts and
their checker, and both are unchanged. Only the bank workload is supported (the CLI refuses the
others): its reads and writes have exact DynamoDB counterparts, while list-append and register
need item versions and timestamps that DynamoDB does not expose (interactive transactions
condition on versions; their checkers place reads by item timestamps).

==============  ======================================================  ===============
step            DynamoDB call (boto3, low-level client)                  result
==============  ======================================================  ===============
``Write``       ``TransactWriteItems`` with ``ClientRequestToken``      ``TxnResult``
``Read``        ``TransactGetItems`` of every key                        ``ReadResult``
==============  ======================================================  ===============

Other steps (singletons, gets, scans) are not issued by the bank workload and are refused.

**Items.** Each workload key (an account) is one item ``{"pk": key, "balance": N}`` of the table
:data:`TABLE` (hash key ``pk``, a string); the workload's attribute names map to the items' by
:data:`ATTRIBUTES` (``bal`` is ``balance``). A write step's store ops are compiled into
transaction actions: a put into ``Put``, a delete into ``Delete``, a check into
``ConditionCheck``, an update into ``Update`` with an ``UpdateExpression`` (``add`` is ``ADD``,
``set`` is ``SET``, ``remove`` is ``REMOVE``), and each condition into a ``ConditionExpression``
(``Exists`` is ``attribute_exists``/``attribute_not_exists`` of the hash key, a comparison the
same comparison, ``AllOf``/``AnyOf``/``Not`` are ``AND``/``OR``/``NOT``). A bank transfer is
thus ``ADD balance :minus`` conditioned on ``balance >= :amount`` and ``ADD balance :plus``
conditioned on ``attribute_exists(pk)``. Version conditions have no DynamoDB counterpart and are
refused. Numbers travel as DynamoDB's ``N`` strings and are read back as ``int`` (a non-integral
balance as ``float``, which the bank checker then reports as a wrong total).

**Outcomes**, as boto3 reports them (botocore parses the error's ``__type``):

* success: committed (``TxnResult.committed``), with no ``txn_id`` and no ``ts``: DynamoDB's
  answer names neither. The runner takes both from the ledger record of the write's token
  (:meth:`DynamoTransport.ledger_token`) when it resolves the history, and checks there that the
  token committed (an acknowledged write without a committed record is ``ok-not-committed``).
* ``TransactionCanceledException``: cancelled, a definite ``fail``; its ``CancellationReasons``
  become the per-op outcomes in request order (``ConditionalCheckFailed`` is
  ``ConditionFailed``, ``TransactionConflict`` is ``TransactionConflict``, ``None`` is ``None``),
  so the scripts' re-run rule (conflicts only) and the history's reasons work as over HTTP.
* ``InternalServerError`` (500; the endpoint's ``OutcomeUnknown`` and internal errors), any
  other 5xx but 503, and a connection lost or a read timeout *after* the request was sent
  (botocore's ``HTTPClientError`` family, and what it leaves unwrapped while reading the body:
  urllib3's and the socket's errors, a body that does not parse): ambiguous,
  ``OutcomeUnknown``. The runner retries it with the same ``ClientRequestToken`` on another
  process (the same store token: idempotent) and resolves what stays unknown in the ledger.
* a connection refused or a connect timeout (botocore's ``ConnectionError`` family: nothing was
  sent) is a definite ``Unavailable``; ``ServiceUnavailable`` (503) too, as the endpoint answers
  it only for the catalogue's definite refusals (the ledger check would expose it otherwise:
  ``fail-but-committed``). The other errors DynamoDB names map to their catalogue codes; an
  error this client cannot name (a body cut short, a name it does not know) is ambiguous: a
  ``TransactionInProgressException`` whose name was lost, say, may still commit.
* a read that fails in any way is a ``fail``: it changes nothing.

An answer whose body is cut short is judged by what botocore parses of it: a 200 is a success
(the endpoint answers 200 only once the transaction committed), an error whose name was lost is
ambiguous (above).

**One attempt per call, bounded.** The clients are made with ``retries={"total_max_attempts":
1}`` (botocore's own retry would hide what happened; the runner retries, with the same token)
and botocore sends through urllib3 with its retries off. boto3 is synchronous, so every call runs
in a worker thread of a private pool of ``workers`` threads (one per client of the run, and one
spare); each call is bounded by botocore's ``CONNECT_TIMEOUT_S`` and ``READ_TIMEOUT_S``, and the
wait for its thread by ``CALL_DEADLINE_S`` (a thread past it is abandoned: its answer is lost,
ambiguous for a write). One boto3 client per API process, made once and shared by the threads
(boto3 clients are thread-safe; making them is not, so it holds a lock).

**Credentials.** The access key id is the admin API token's name, the secret the token; the
store's idempotency token of a ``ClientRequestToken`` is
:func:`kvstore.dynamodb.transact.store_token` of that name and the client token, which is what
the ledger lookup (``GET /v1/txn/{token}``) is asked about.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError

from chaos.sim.workloads import Workload
from kvstore.conditions import AllOf, AnyOf, Compare, CompareOperator, Condition, Exists, Not
from kvstore.coordinator.results import ReadResult, TxnResult
from kvstore.coordinator.scan import ScanResult
from kvstore.coordinator.singleton import CallResult
from kvstore.dynamodb import keys as ddb_keys
from kvstore.dynamodb.transact import store_token
from kvstore.errors import ErrorCode
from kvstore.limits import DYNAMODB_EXPRESSION_DEPTH_MAX
from kvstore.localcluster import ADMIN_TOKEN_NAME
from kvstore.messages import GetReply, OpOutcome, ReadEntry, ReasonCode, WriteReply
from kvstore.ops import Op, OpKind
from kvstore.types import Timestamp, TxnId
from kvstore.updates import ActionKind, UpdateAction

__all__ = [
    "TABLE",
    "HASH_KEY",
    "ATTRIBUTES",
    "CALL_DEADLINE_S",
    "DynamoTransport",
    "transact_item",
    "item_value",
    "outcome_of",
]

TABLE: Final = "chaos-bank"
HASH_KEY: Final = "pk"
ATTRIBUTES: Final = {"bal": "balance"}  # a workload attribute -> the item's attribute
_FROM_ITEM: Final = {item: workload for workload, item in ATTRIBUTES.items()}
REGION: Final = "us-east-1"
CONNECT_TIMEOUT_S: Final = 2.0
READ_TIMEOUT_S: Final = 5.0  # as chaos.http_client.CALL_TIMEOUT_S
CALL_DEADLINE_S: Final = CONNECT_TIMEOUT_S + 2 * READ_TIMEOUT_S
TABLE_ACTIVE_TIMEOUT_S: Final = 30.0
_NO_TXN: Final = TxnId("")
_ZERO_TS: Final = Timestamp(0, 0, 0)
_COMPARISONS: Final = {
    CompareOperator.EQ: "=",
    CompareOperator.NE: "<>",
    CompareOperator.LT: "<",
    CompareOperator.LE: "<=",
    CompareOperator.GT: ">",
    CompareOperator.GE: ">=",
}
_REASONS: Final = {
    "None": ReasonCode.NONE,
    "ConditionalCheckFailed": ReasonCode.CONDITION_FAILED,
    "TransactionConflict": ReasonCode.TRANSACTION_CONFLICT,
    "ValidationError": ReasonCode.VALIDATION_ERROR,
}
_ERRORS: Final = {
    "TransactionCanceledException": ErrorCode.TransactionCanceled,
    "TransactionConflictException": ErrorCode.TransactionConflict,
    "TransactionInProgressException": ErrorCode.TransactionInProgress,
    "IdempotentParameterMismatchException": ErrorCode.IdempotencyMismatch,
    "ConditionalCheckFailedException": ErrorCode.ConditionFailed,
    "ValidationException": ErrorCode.ValidationError,
    "ResourceNotFoundException": ErrorCode.NotFound,
    "ThrottlingException": ErrorCode.Overloaded,
    "ProvisionedThroughputExceededException": ErrorCode.Overloaded,
    "ServiceUnavailable": ErrorCode.Unavailable,
    "InternalServerError": ErrorCode.OutcomeUnknown,
    "UnrecognizedClientException": ErrorCode.Unauthorized,
    "AccessDeniedException": ErrorCode.Forbidden,
}


class _Lost(Exception):
    """The call's thread did not answer within ``CALL_DEADLINE_S``."""


# A call sent whose answer did not come whole: botocore's HTTPClientError (connection closed, read
# timeout), and what it leaves unwrapped while reading or parsing the body (urllib3's errors, a
# socket's, a body that does not parse). Other exceptions (ParamValidationError...) are harness
# bugs and end the run.
_LOST: Final = (HTTPClientError, _Lost, urllib3.exceptions.HTTPError, OSError, ResponseParserError)


# -- compiling store ops into DynamoDB actions ----------------------------------------------------


def _wire(value: Any) -> dict[str, Any]:
    """A JSON value as a DynamoDB attribute value."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if value is None:
        return {"NULL": True}
    if isinstance(value, list):
        return {"L": [_wire(v) for v in value]}
    if isinstance(value, dict):
        return {"M": {str(k): _wire(v) for k, v in value.items()}}
    raise ValueError(f"no DynamoDB form for {value!r}")


def _number(text: str) -> int | float:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    return int(number) if number == number.to_integral_value() else float(number)


def _json(attribute: Mapping[str, Any]) -> Any:
    """A DynamoDB attribute value (boto3's low-level form) as a JSON value."""
    if len(attribute) != 1:
        raise ValueError(f"malformed attribute value {attribute!r}")
    ((kind, body),) = attribute.items()
    if kind == "N":
        return _number(str(body))
    if kind in ("S", "BOOL"):
        return body
    if kind == "NULL":
        return None
    if kind == "L":
        return [_json(v) for v in body]
    if kind == "M":
        return {k: _json(v) for k, v in body.items()}
    if kind == "NS":
        return sorted(_number(str(v)) for v in body)
    if kind == "SS":
        return sorted(body)
    raise ValueError(f"no JSON form for a {kind} attribute")


def item_value(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item (boto3's low-level form) as the workload's value: every attribute but the
    hash key, named as the workload names it."""
    return {
        _FROM_ITEM.get(name, name): _json(attribute)
        for name, attribute in item.items()
        if name != HASH_KEY
    }


class _Placeholders:
    """``#n``/``:v`` placeholders of one action's expressions."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, dict[str, Any]] = {}

    def name(self, attribute: str) -> str:
        for placeholder, known in self.names.items():
            if known == attribute:
                return placeholder
        placeholder = f"#n{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder

    def path(self, path: Sequence[str | int]) -> str:
        if not path or not isinstance(path[0], str):
            raise ValueError(f"a path must start with an attribute name: {path!r}")
        out = ""
        for part in path:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                attribute = ATTRIBUTES.get(part, part) if not out else part
                out += ("." if out else "") + self.name(attribute)
        return out

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = _wire(value)
        return placeholder

    def add_to(self, action: dict[str, Any]) -> dict[str, Any]:
        if self.names:
            action["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            action["ExpressionAttributeValues"] = dict(self.values)
        return action


def _unwrapped(condition: Condition) -> Condition:
    """``condition`` without ``AllOf``/``AnyOf`` of one condition around it."""
    for _ in range(DYNAMODB_EXPRESSION_DEPTH_MAX):
        if not (isinstance(condition, AllOf | AnyOf) and len(condition.conditions) == 1):
            break
        condition = condition.conditions[0]
    return condition


def _condition(condition: Condition, p: _Placeholders) -> str:
    condition = _unwrapped(condition)
    if isinstance(condition, Exists):
        test = "attribute_exists" if condition.expected else "attribute_not_exists"
        return f"{test}({p.name(HASH_KEY)})"
    if isinstance(condition, Compare):
        return f"{p.path(condition.path)} {_COMPARISONS[condition.operator]} " + p.value(
            condition.operand
        )
    if isinstance(condition, AllOf | AnyOf):
        joined = " AND " if isinstance(condition, AllOf) else " OR "
        return joined.join(_operand(c, p) for c in condition.conditions)
    if isinstance(condition, Not):
        return f"NOT {_operand(condition.condition, p)}"
    raise ValueError(f"no DynamoDB condition for {type(condition).__name__}")


def _operand(condition: Condition, p: _Placeholders) -> str:
    """``condition`` as an operand of AND, OR or NOT: parenthesised when it is made of them
    itself, once (DynamoDB refuses redundant parentheses)."""
    inner = _unwrapped(condition)
    text = _condition(inner, p)
    return f"({text})" if isinstance(inner, AllOf | AnyOf | Not) else text


def _update(actions: Sequence[UpdateAction], p: _Placeholders) -> str:
    clauses: dict[str, list[str]] = {"SET": [], "REMOVE": [], "ADD": []}
    for action in actions:
        path = p.path(action.path)
        if action.kind is ActionKind.SET:
            clauses["SET"].append(f"{path} = {p.value(action.operand)}")
        elif action.kind is ActionKind.REMOVE:
            clauses["REMOVE"].append(path)
        elif action.kind is ActionKind.ADD:
            clauses["ADD"].append(f"{path} {p.value(action.operand)}")
        else:
            raise ValueError(f"no DynamoDB update for {action.kind.value}")
    return " ".join(f"{verb} {', '.join(parts)}" for verb, parts in clauses.items() if parts)


def transact_item(op: Op, table: str = TABLE) -> dict[str, Any]:
    """One ``TransactItems`` entry for ``op`` on the item whose hash key is ``op.key``."""
    p = _Placeholders()
    key = {HASH_KEY: {"S": op.key}}
    action: dict[str, Any] = {"TableName": table}
    if op.kind is OpKind.PUT:
        if not isinstance(op.value, dict):
            raise ValueError(f"a put of {op.value!r}: an item is an object")
        item = {ATTRIBUTES.get(k, k): _wire(v) for k, v in op.value.items()}
        action["Item"] = {**item, **key}
        kind = "Put"
    else:
        action["Key"] = key
        kind = {OpKind.DELETE: "Delete", OpKind.CHECK: "ConditionCheck"}.get(op.kind, "Update")
        if op.kind is OpKind.UPDATE:
            if op.expression is not None or not op.actions:
                raise ValueError("an update needs its actions")
            action["UpdateExpression"] = _update(op.actions, p)
        elif op.kind not in (OpKind.DELETE, OpKind.CHECK):
            raise ValueError(f"no DynamoDB action for {op.kind.value}")
    if op.condition is not None:
        action["ConditionExpression"] = _condition(op.condition, p)
    elif op.kind is OpKind.CHECK:
        raise ValueError("a check needs a condition")
    return {kind: p.add_to(action)}


# -- answers --------------------------------------------------------------------------------------


def outcome_of(error: ClientError) -> tuple[ErrorCode, tuple[OpOutcome, ...]]:
    """The catalogue code of a DynamoDB error answer, and a cancellation's per-op outcomes."""
    response = error.response
    name = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    code = _ERRORS.get(name)
    if code is None:  # an answer this client cannot read (see the module): it may have applied
        code = ErrorCode.Unavailable if status == 503 else ErrorCode.OutcomeUnknown
    outcomes: list[OpOutcome] = []
    for reason in response.get("CancellationReasons") or ():
        raw = reason.get("Code") if isinstance(reason, Mapping) else None
        message = reason.get("Message") if isinstance(reason, Mapping) else None
        outcomes.append(
            OpOutcome(
                code=_REASONS.get(str(raw), ReasonCode.VALIDATION_ERROR),
                message=message if isinstance(message, str) else "",
            )
        )
    return code, tuple(outcomes)


class DynamoTransport:
    """Workload steps over the DynamoDB endpoint of a cluster's API processes (see the
    module). ``close()`` when done: it waits for the worker threads (each call is bounded)."""

    stamps = False  # answers carry no commit ts or txn id: the ledger gives them

    def __init__(
        self,
        secret: str,
        *,
        workers: int,
        caller: str = ADMIN_TOKEN_NAME,
        table: str = TABLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secret = secret
        self.caller = caller
        self.table = table
        self.table_id = ""  # known once the table exists (setup)
        self._clock = clock
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chaos-ddb")
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            max_pool_connections=workers,
            parameter_validation=True,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _client(self, url: str) -> Any:
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = boto3.session.Session().client(
                    "dynamodb",
                    endpoint_url=url,
                    region_name=REGION,
                    aws_access_key_id=self.caller,
                    aws_secret_access_key=self.secret,
                    config=self._config,
                )
                self._clients[url] = client
            return client

    async def _call(self, url: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One boto3 call in a worker thread; raises what boto3 raises, or :class:`_Lost`."""

        def call() -> dict[str, Any]:
            answer: dict[str, Any] = getattr(self._client(url), operation)(**kwargs)
            return answer

        future = asyncio.get_running_loop().run_in_executor(self._pool, call)
        try:
            async with asyncio.timeout(CALL_DEADLINE_S):
                return await future
        except TimeoutError:
            raise _Lost(f"{operation} to {url}: no answer within {CALL_DEADLINE_S:g} s") from None

    # -- ids --------------------------------------------------------------------------------

    def ledger_token(self, token: str) -> str:
        """The store's idempotency token of the ``ClientRequestToken`` ``token``."""
        return store_token(self.caller, token)

    def store_key(self, key: str) -> str:
        """The store key of the item whose hash key is ``key`` (after setup)."""
        if not self.table_id:
            raise RuntimeError("the table's id is known after setup")
        digest = ddb_keys.hash_digest("S", key.encode("utf-8", "surrogatepass"))
        return ddb_keys.item_key(self.table_id, digest, "")

    # -- setup (before any fault) -------------------------------------------------------------

    async def setup(self, url: str, workload: Workload) -> None:
        """Create the table, wait until it is active, and write the workload's initial items in
        one transaction."""
        await self._call(
            url,
            "create_table",
            TableName=self.table,
            KeySchema=[{"AttributeName": HASH_KEY, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": HASH_KEY, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        deadline = self._clock() + TABLE_ACTIVE_TIMEOUT_S
        while True:  # bounded by the deadline
            table = (await self._call(url, "describe_table", TableName=self.table))["Table"]
            if table.get("TableStatus") == "ACTIVE":
                self.table_id = str(table["TableId"])
                break
            if self._clock() > deadline:
                raise RuntimeError(f"table {self.table} not active in {TABLE_ACTIVE_TIMEOUT_S} s")
            await asyncio.sleep(0.2)
        ops = workload.setup_ops()
        if ops:
            items = [transact_item(op, self.table) for op in ops]
            await self._call(url, "transact_write_items", TransactItems=items)

    # -- steps ----------------------------------------------------------------------------------

    async def write(self, url: str, ops: Sequence[Op], token: str | None) -> TxnResult:
        """One write transaction: ``TransactWriteItems`` (``token`` its ``ClientRequestToken``)."""
        items = [transact_item(op, self.table) for op in ops]
        kwargs: dict[str, Any] = {"TransactItems": items}
        if token is not None:
            kwargs["ClientRequestToken"] = token
        try:
            await self._call(url, "transact_write_items", **kwargs)
        except ClientError as error:
            code, outcomes = outcome_of(error)
            return TxnResult(
                committed=False, txn_id=_NO_TXN, ts=_ZERO_TS, outcomes=outcomes, error=code
            )
        except BotoConnectionError:  # nothing was sent
            return _unsent()
        except _LOST:  # sent, no (whole) answer: anything may have happened
            return TxnResult(
                committed=False, txn_id=_NO_TXN, ts=_ZERO_TS, error=ErrorCode.OutcomeUnknown
            )
        return TxnResult(committed=True, txn_id=_NO_TXN, ts=_ZERO_TS)

    async def read(self, url: str, keys: Sequence[str]) -> ReadResult:
        """One read-only transaction: ``TransactGetItems`` of ``keys``."""
        items = [{"Get": {"TableName": self.table, "Key": {HASH_KEY: {"S": k}}}} for k in keys]
        try:
            answer = await self._call(url, "transact_get_items", TransactItems=items)
        except ClientError as error:
            return ReadResult(error=outcome_of(error)[0])
        except (BotoConnectionError, *_LOST):
            return ReadResult(error=ErrorCode.Unavailable)
        responses = answer.get("Responses", [])
        if len(responses) != len(keys):
            return ReadResult(error=ErrorCode.ProtocolViolation)
        entries: list[ReadEntry] = []
        for key, response in zip(keys, responses, strict=True):
            item = response.get("Item")
            entries.append(
                ReadEntry(
                    key=key,
                    exists=item is not None,
                    value=None if item is None else item_value(item),
                    version=0,  # DynamoDB shows no versions
                    ts=_ZERO_TS,  # nor timestamps
                    pending=False,
                )
            )
        return ReadResult(items=tuple(entries), rounds=2)

    async def get(self, url: str, key: str) -> CallResult[GetReply]:
        raise TypeError("the DynamoDB client runs the bank workload: no singleton gets")

    async def singleton_write(self, url: str, op: Op) -> CallResult[WriteReply]:
        raise TypeError("the DynamoDB client runs the bank workload: no singleton writes")

    async def scan(self, url: str, start: str, end: str | None, limit: int) -> ScanResult:
        raise TypeError("the DynamoDB client runs the bank workload: no scans")


def _unsent() -> TxnResult:
    return TxnResult(committed=False, txn_id=_NO_TXN, ts=_ZERO_TS, error=ErrorCode.Unavailable)
