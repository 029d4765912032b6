"""The DynamoDB endpoint's wire layer (kvstore/dynamodb/endpoint.py) driven by boto3.

Goal: an unmodified boto3 client, pointed at the API's base URL with an API token's name and the
token as AWS credentials, reaches the operations object, and every wire-level rule of the
reference (dynamodb-api.md sections 1, 2) holds: SigV4 refusals by name, roles, unknown
operations, bad JSON, gzip bodies, the request id and CRC32 headers, throttling that botocore
retries by itself, and the API's other routes unchanged. Method: the real API application
(:func:`kvstore.api.app.build_app` with a real coordinator object and token file, served by
aiohttp on a loopback port) with a fake operations object in place of the table operations;
boto3 runs in a worker thread, raw requests are signed with botocore's SigV4 signer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import re
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import boto3
import pytest
import pytest_asyncio
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from support.api import parse_host_port, read_raw_reply
from support.cluster import LocalNodes

from kvstore.api.app import AUTO_DECOMPRESS, build_app
from kvstore.api.tokens import Role, TokenStore
from kvstore.coordinator.engine import Coordinator
from kvstore.dynamodb.endpoint import CONTENT_TYPE, DynamoService
from kvstore.errors import NotFound, Overloaded, TransactionCanceled
from kvstore.limits import DYNAMODB_BODY_BYTES_MAX

pytestmark = pytest.mark.asyncio

READ_OPERATIONS = frozenset({"GetItem", "ListTables", "DescribeTable", "Scan"})
WRITE_OPERATIONS = frozenset({"PutItem", "TransactWriteItems", "CreateTable"})
TARGET = "DynamoDB_20120810."
CANCEL_REASONS = [
    {"Code": "None"},
    {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
]


@dataclass
class FakeOperations:
    """Answers a few operations; records every call."""

    calls: list[tuple[str, dict[str, object], str]] = field(default_factory=list)
    overloaded: int = 0  # ListTables raises Overloaded this many times first

    async def call(
        self, operation: str, request: dict[str, object], *, caller: str
    ) -> dict[str, object]:
        self.calls.append((operation, request, caller))
        if operation == "ListTables":
            if self.overloaded > 0:
                self.overloaded -= 1
                raise Overloaded("queue full at 127.0.0.1:1")
            return {"TableNames": ["alpha", "beta"]}
        if operation == "GetItem":
            return {"Item": {"p": {"S": "é\u4e2d"}, "n": {"N": "1"}}}
        if operation == "PutItem":
            return {}
        if operation == "DescribeTable":
            raise NotFound(
                "Requested resource not found: Table: t not found",
                details={"aws_type": "ResourceNotFoundException"},
            )
        if operation == "TransactWriteItems":
            raise TransactionCanceled(
                "Transaction cancelled, please refer cancellation reasons for specific reasons "
                "[None, ConditionalCheckFailed]",
                details={"cancellation_reasons": CANCEL_REASONS},
            )
        raise RuntimeError(f"a bug near 127.0.0.1:7001 in {operation}")


@dataclass
class Server:
    base: str
    tokens: dict[str, str]  # role value -> token; the token's name is the role value
    fake: FakeOperations
    coordinator: Coordinator
    token_file: Path

    def client(self, name: str = "admin", secret: str | None = None, **config: Any) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=name,
            aws_secret_access_key=self.tokens.get(name, "") if secret is None else secret,
            region_name="us-east-1",
        )
        return session.client(
            "dynamodb",
            endpoint_url=self.base,
            config=Config(connect_timeout=10, read_timeout=30, **config),
        )


ServerFactory = Callable[..., Any]


@pytest.fixture(autouse=True)
def no_aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS config of the machine (profiles, endpoints, retry modes) changes what boto3 does."""
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "no-aws-file"))
    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_RETRY_MODE",
        "AWS_MAX_ATTEMPTS",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest_asyncio.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    runners: list[web.AppRunner] = []
    coordinators: list[Coordinator] = []

    async def make(requests_in_flight_max: int = 64) -> Server:
        root = tmp_path / f"cluster-{len(runners)}"
        nodes = LocalNodes(root, ("n1",), partitions=1, coordinator_ids=("c1",))  # never started
        coordinator = Coordinator.from_config(nodes.config)
        coordinators.append(coordinator)
        fake = FakeOperations()
        app = build_app(
            coordinator,
            TokenStore(nodes.config.api_tokens_file, reload_interval_ms=0),
            "c1",
            nodes.config,
            requests_in_flight_max=requests_in_flight_max,
            dynamodb=DynamoService(lambda _: fake, READ_OPERATIONS, WRITE_OPERATIONS),
        )
        runner = web.AppRunner(app, access_log=None, auto_decompress=AUTO_DECOMPRESS)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return Server(
            f"http://127.0.0.1:{port}",
            nodes.tokens,
            fake,
            coordinator,
            nodes.config.api_tokens_file,
        )

    try:
        yield make
    finally:
        for runner in runners:
            await runner.cleanup()
        for coordinator in coordinators:
            await coordinator.close(drain_s=0)


@pytest_asyncio.fixture
async def server(make_server: ServerFactory) -> Server:
    made: Server = await make_server()
    return made


def signed_headers(
    server: Server,
    body: bytes,
    *,
    operation: str = "ListTables",
    name: str = "admin",
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Headers of a raw request signed by botocore's own SigV4 signer."""
    headers = {"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET + operation, **(extra or {})}
    request = AWSRequest(method="POST", url=server.base + "/", data=body, headers=headers)
    SigV4Auth(Credentials(name, server.tokens[name]), "dynamodb", "us-east-1").add_auth(request)
    return {str(k): str(v) for k, v in request.headers.items()}


@dataclass(frozen=True)
class Raw:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw)

    @property
    def aws_type(self) -> str:
        return str(self.body["__type"]).rsplit("#", 1)[1]


async def post(
    server: Server,
    body: bytes,
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = "/",
) -> Raw:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.base + path, data=body, headers=headers) as response,
    ):
        raw = await response.read()
        return Raw(response.status, {k.lower(): v for k, v in response.headers.items()}, raw)


def assert_wire_headers(reply: Raw) -> None:
    assert reply.headers["content-type"] == CONTENT_TYPE
    assert uuid.UUID(reply.headers["x-amzn-requestid"]).version == 4
    assert reply.headers["x-amz-crc32"] == str(zlib.crc32(reply.raw))


async def call(client: Any, method: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(getattr(client, method), **kwargs)


async def client_error(client: Any, method: str, **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await call(client, method, **kwargs)
    return caught.value


# --- boto3 reaches the operations ------------------------------------------------------------


async def test_boto3_list_tables_reaches_the_operations_with_the_callers_name(
    server: Server,
) -> None:
    answer = await call(server.client(), "list_tables")
    assert answer["TableNames"] == ["alpha", "beta"]
    metadata = answer["ResponseMetadata"]
    assert metadata["HTTPStatusCode"] == 200
    assert uuid.UUID(metadata["RequestId"]).version == 4
    assert metadata["HTTPHeaders"]["content-type"] == CONTENT_TYPE
    assert int(metadata["HTTPHeaders"]["x-amz-crc32"]) >= 0
    assert server.fake.calls == [("ListTables", {}, "admin")]


async def test_boto3_get_item_answer_is_deserialised(server: Server) -> None:
    answer = await call(
        server.client("read-only"), "get_item", TableName="t", Key={"p": {"S": "k"}}
    )
    assert answer["Item"] == {"p": {"S": "é\u4e2d"}, "n": {"N": "1"}}
    assert server.fake.calls == [
        ("GetItem", {"TableName": "t", "Key": {"p": {"S": "k"}}}, "read-only")
    ]


async def test_request_ids_differ(server: Server) -> None:
    client = server.client()
    first = await call(client, "list_tables")
    second = await call(client, "list_tables")
    assert first["ResponseMetadata"]["RequestId"] != second["ResponseMetadata"]["RequestId"]


# --- authentication and roles ---------------------------------------------------------------


async def test_a_wrong_secret_is_an_invalid_signature(server: Server) -> None:
    error = await client_error(server.client("admin", "kvt_" + "w" * 43), "list_tables")
    assert error.response["Error"]["Code"] == "InvalidSignatureException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert server.tokens["admin"] not in str(error.response)
    assert server.fake.calls == []


async def test_an_unknown_access_key_is_unrecognized(server: Server) -> None:
    error = await client_error(server.client("nobody", "kvt_" + "n" * 43), "list_tables")
    assert error.response["Error"]["Code"] == "UnrecognizedClientException"
    assert "security token included in the request is invalid" in error.response["Error"]["Message"]


async def test_a_token_without_a_stored_secret_says_to_recreate_it(server: Server) -> None:
    text = server.token_file.read_text(encoding="utf-8")
    token = server.tokens["read-write"]
    assert f'secret = "{token}"' in text
    server.token_file.write_text(text.replace(f'secret = "{token}"\n', ""), encoding="utf-8")
    error = await client_error(server.client("read-write"), "list_tables")
    assert error.response["Error"]["Code"] == "UnrecognizedClientException"
    message = error.response["Error"]["Message"]
    assert "re-create it" in message and "kvctl token create read-write" in message
    assert token not in message
    # The same token still works as a bearer token on the JSON API.
    entry = TokenStore(server.token_file).authorize(f"Bearer {token}", Role.READ_WRITE)
    assert entry.secret is None


async def test_no_authorization_header_is_a_missing_token(server: Server) -> None:
    headers = {"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET + "ListTables"}
    reply = await post(server, b"{}", headers)
    assert (reply.status, reply.aws_type) == (400, "MissingAuthenticationTokenException")
    assert reply.body["message"] == "Request is missing Authentication Token"
    assert_wire_headers(reply)


async def test_a_bearer_token_sent_here_is_refused_and_not_echoed(server: Server) -> None:
    token = server.tokens["admin"]
    headers = {
        "Content-Type": CONTENT_TYPE,
        "X-Amz-Target": TARGET + "ListTables",
        "Authorization": f"Bearer {token}",
    }
    reply = await post(server, b"{}", headers)
    assert (reply.status, reply.aws_type) == (400, "IncompleteSignatureException")
    assert token not in reply.raw.decode()


async def test_an_expired_signature_is_refused(server: Server) -> None:
    long_ago = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=16)
    with mock.patch("botocore.auth.get_current_datetime", return_value=long_ago):
        headers = signed_headers(server, b"{}")
    reply = await post(server, b"{}", headers)
    assert (reply.status, reply.aws_type) == (400, "InvalidSignatureException")
    assert "Signature expired" in reply.body["message"]


async def test_a_body_changed_after_signing_is_refused(server: Server) -> None:
    headers = signed_headers(server, b"{}")
    reply = await post(server, b'{"Limit": 1}', headers)
    assert (reply.status, reply.aws_type) == (400, "InvalidSignatureException")
    assert server.fake.calls == []


async def test_a_read_only_token_reads_but_may_not_write(server: Server) -> None:
    client = server.client("read-only")
    assert (await call(client, "list_tables"))["TableNames"] == ["alpha", "beta"]
    error = await client_error(client, "put_item", TableName="t", Item={"p": {"S": "k"}})
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    assert "not authorized to perform: dynamodb:PutItem" in error.response["Error"]["Message"]
    assert [operation for operation, _, _ in server.fake.calls] == ["ListTables"]


@pytest.mark.parametrize("name", ["read-write", "admin"])
async def test_read_write_and_admin_tokens_may_write(server: Server, name: str) -> None:
    await call(server.client(name), "put_item", TableName="t", Item={"p": {"S": "k"}})
    assert server.fake.calls[-1][0] == "PutItem"
    assert server.fake.calls[-1][2] == name


async def test_a_metrics_token_may_call_nothing(server: Server) -> None:
    error = await client_error(server.client("metrics"), "list_tables")
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    assert server.fake.calls == []


# --- the request: operation, content, encoding ----------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["DynamoDB_20120810.Frobnicate", "DynamoDB_20111205.ListTables", "ListTables", ""],
)
async def test_an_unknown_operation_is_refused(server: Server, target: str) -> None:
    headers = signed_headers(server, b"{}", extra={"X-Amz-Target": target})
    reply = await post(server, b"{}", headers)
    assert (reply.status, reply.aws_type) == (400, "UnknownOperationException")
    assert_wire_headers(reply)
    assert server.fake.calls == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'"text"', b"", b'{"a": NaN}', b"\xff\xfe", b'{"a": 1, "a": 2}'],
)
async def test_bad_json_is_a_serialization_exception(server: Server, body: bytes) -> None:
    reply = await post(server, body, signed_headers(server, body))
    assert (reply.status, reply.aws_type) == (400, "SerializationException")
    assert_wire_headers(reply)
    assert server.fake.calls == []


async def test_a_wrong_content_type_is_refused(server: Server) -> None:
    headers = signed_headers(server, b"{}", extra={"Content-Type": "application/json"})
    reply = await post(server, b"{}", headers)
    assert (reply.status, reply.aws_type) == (400, "SerializationException")
    tolerated = signed_headers(
        server, b"{}", extra={"Content-Type": "application/x-amz-json-1.1; charset=utf-8"}
    )
    assert (await post(server, b"{}", tolerated)).status == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_is_signed_as_sent_and_decoded(
    server: Server, encoding: str
) -> None:
    document = {"Limit": 7, "ExclusiveStartTableName": "é" * 100}
    plain = json.dumps(document).encode()
    body = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    headers = signed_headers(server, body, extra={"Content-Encoding": encoding})
    reply = await post(server, body, headers)
    assert reply.status == 200, reply.raw
    assert reply.body == {"TableNames": ["alpha", "beta"]}
    assert server.fake.calls == [("ListTables", document, "admin")]


async def test_a_bad_gzip_body_and_other_encodings(server: Server) -> None:
    body = b"not gzip at all"
    reply = await post(
        server, body, signed_headers(server, body, extra={"Content-Encoding": "gzip"})
    )
    assert (reply.status, reply.aws_type) == (400, "SerializationException")
    reply = await post(server, body, signed_headers(server, body, extra={"Content-Encoding": "br"}))
    assert (reply.status, reply.aws_type) == (500, "InternalServerError")
    assert "gzip and deflate are accepted" in reply.body["message"]
    assert server.fake.calls == []


async def test_a_gzip_bomb_is_cut_off(server: Server) -> None:
    body = gzip.compress(b" " * (DYNAMODB_BODY_BYTES_MAX + 1024))
    assert len(body) < 100_000
    reply = await post(
        server, body, signed_headers(server, body, extra={"Content-Encoding": "gzip"})
    )
    assert (reply.status, reply.aws_type) == (413, "ValidationException")


async def test_a_body_over_the_cap_is_refused_before_it_is_read(server: Server) -> None:
    host, port = parse_host_port(server.base)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            (
                "POST / HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\n"
                f"X-Amz-Target: {TARGET}ListTables\r\n"
                f"Content-Length: {DYNAMODB_BODY_BYTES_MAX + 1}\r\n\r\n"
                "{}"
            ).encode()
        )
        await writer.drain()
        reply = await asyncio.wait_for(read_raw_reply(reader), 30)
    finally:
        writer.close()
    assert reply.status == 413
    assert json.loads(reply.body)["__type"].endswith("#ValidationException")


# --- the answer -----------------------------------------------------------------------------


async def test_the_crc32_header_is_the_crc_of_the_body_sent(server: Server) -> None:
    body = json.dumps({"TableName": "t", "Key": {"p": {"S": "k"}}}).encode()
    reply = await post(server, body, signed_headers(server, body, operation="GetItem"))
    assert reply.status == 200
    assert_wire_headers(reply)
    assert reply.body["Item"]["p"] == {"S": "é\u4e2d"}
    assert "é".encode() in reply.raw  # UTF-8 as sent, not \\u escapes


async def test_errors_reach_boto3_with_their_names_and_members(server: Server) -> None:
    client = server.client()
    missing = await client_error(client, "describe_table", TableName="t")
    assert missing.response["Error"]["Code"] == "ResourceNotFoundException"
    assert (
        missing.response["Error"]["Message"] == "Requested resource not found: Table: t not found"
    )
    assert isinstance(missing, client.exceptions.ResourceNotFoundException)
    canceled = await client_error(
        client,
        "transact_write_items",
        TransactItems=[{"Put": {"TableName": "t", "Item": {"p": {"S": "k"}}}}],
    )
    assert isinstance(canceled, client.exceptions.TransactionCanceledException)
    assert canceled.response["Error"]["Code"] == "TransactionCanceledException"
    assert "[None, ConditionalCheckFailed]" in canceled.response["Error"]["Message"]
    assert canceled.response["CancellationReasons"] == CANCEL_REASONS
    # botocore filled the idempotency token, as it does for every TransactWriteItems.
    request = next(r for op, r, _ in server.fake.calls if op == "TransactWriteItems")
    assert isinstance(request["ClientRequestToken"], str)


async def test_an_operation_bug_is_an_internal_server_error_without_details(server: Server) -> None:
    body = b"{}"
    reply = await post(server, body, signed_headers(server, body, operation="Scan"))
    assert (reply.status, reply.aws_type) == (500, "InternalServerError")
    assert "127.0.0.1" not in reply.body["message"]
    assert_wire_headers(reply)


# --- throttling -----------------------------------------------------------------------------


async def test_overloaded_operations_are_throttling_that_botocore_retries(server: Server) -> None:
    server.fake.overloaded = 2
    answer = await call(server.client(), "list_tables")
    assert answer["TableNames"] == ["alpha", "beta"]
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert [operation for operation, _, _ in server.fake.calls] == ["ListTables"] * 3


async def test_an_overloaded_endpoint_throttles_before_reading(make_server: ServerFactory) -> None:
    server: Server = await make_server(requests_in_flight_max=0)
    body = b"{}"
    reply = await post(server, body, signed_headers(server, body))
    assert (reply.status, reply.aws_type) == (400, "ThrottlingException")
    assert "127.0.0.1" not in reply.body["message"]
    client = server.client(retries={"mode": "standard", "total_max_attempts": 2})
    error = await client_error(client, "list_tables")
    assert error.response["Error"]["Code"] == "ThrottlingException"
    assert error.response["ResponseMetadata"]["RetryAttempts"] == 1  # retried by botocore
    assert server.fake.calls == []


# --- the rest of the server is unchanged ----------------------------------------------------


async def test_other_methods_and_paths_keep_the_api_error_forms(server: Server) -> None:
    got = await post(server, b"", {}, method="GET")
    assert got.status == 405
    assert got.headers["allow"] == "POST"
    assert json.loads(got.raw)["error"]["code"] == "ValidationError"
    missing = await post(server, b"{}", {}, path="/nothing")
    assert missing.status == 404
    assert json.loads(missing.raw)["error"]["code"] == "NotFound"
    unauthorized = await post(server, b"{}", {}, path="/v1/txn")
    assert unauthorized.status == 401
    assert json.loads(unauthorized.raw)["error"]["code"] == "Unauthorized"


async def test_requests_are_counted_per_operation(server: Server) -> None:
    await call(server.client(), "list_tables")
    await client_error(server.client("read-only"), "put_item", TableName="t", Item={})
    await post(server, b"{}", signed_headers(server, b"{}", extra={"X-Amz-Target": "x"}))
    text = server.coordinator.metrics.render().decode()
    counted = set(
        re.findall(
            r'kvstore_coordinator_http_requests_total\{route="([^"]+)",status="(\d+)"\}', text
        )
    )
    assert ("dynamodb.ListTables", "200") in counted
    assert ("dynamodb.PutItem", "400") in counted
    assert ("dynamodb", "400") in counted
    assert server.coordinator.metrics.requests_in_flight._value.get() == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate", None])
async def test_the_json_api_still_decodes_compressed_bodies(
    server: Server, encoding: str | None
) -> None:
    """aiohttp's own decompression is off (the signature needs the bytes as sent); the JSON
    API decodes gzip and deflate itself, so its callers see no change."""
    plain = json.dumps({"keys": 5}).encode()
    compressed = {"gzip": gzip.compress, "deflate": zlib.compress, None: bytes}[encoding](plain)
    headers = {"Authorization": f"Bearer {server.tokens['read-only']}"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    reply = await post(server, compressed, headers, path="/v1/read")
    error = json.loads(reply.raw)["error"]
    assert (reply.status, error["code"]) == (400, "ValidationError")
    assert error["field"] == "keys"  # parsed: the body was decoded


async def test_the_variables_of_kvctl_cluster_env_are_all_boto3_needs(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The names `kvctl cluster env` exports (LocalCluster.env) configure a plain client."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", server.base)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "admin")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.tokens["admin"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.session.Session().client("dynamodb")
    assert (await call(client, "list_tables"))["TableNames"] == ["alpha", "beta"]
    assert server.fake.calls == [("ListTables", {}, "admin")]
