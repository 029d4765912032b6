"""SigV4 verification (kvstore/dynamodb/sigv4.py) against botocore's own signer.

Goal: a request botocore signs verifies, and any change to what was signed, or a wrong secret,
date, service or header, is refused with the DynamoDB error name the reference gives
(dynamodb-api.md section 2). Method: sign with ``botocore.auth.SigV4Auth`` over an
``AWSRequest`` at a frozen time, hand the exact header pairs and body to :func:`verify`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import gzip
import hashlib
import json
from collections.abc import Iterator
from email.utils import formatdate
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given
from hypothesis import strategies as st

from kvstore.dynamodb import sigv4
from kvstore.dynamodb.sigv4 import (
    INCOMPLETE_SIGNATURE,
    INVALID_SIGNATURE,
    MISSING_AUTHENTICATION_TOKEN,
    UNRECOGNIZED_CLIENT,
    Authorization,
    canonical_path,
    parse_authorization,
    request_time,
    verify,
)
from kvstore.errors import ErrorCode, Unauthorized
from kvstore.limits import DYNAMODB_AUTHORIZATION_CHARS_MAX, DYNAMODB_SIGNATURE_SKEW_MS

KEY_ID = "ci-token"
SECRET = "kvt_" + "s" * 43
HOST = "127.0.0.1:8123"
SIGNED_AT = dt.datetime(2026, 11, 22, 7, 30, 0)  # naive UTC, as botocore's clock
SIGNED_AT_S = calendar.timegm(SIGNED_AT.timetuple())
BODY = json.dumps({"TableName": "t", "Key": {"p": {"S": "x"}}}).encode()


@pytest.fixture(autouse=True)
def frozen_botocore_clock() -> Iterator[None]:
    with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
        yield


def signed(
    body: bytes = BODY,
    *,
    secret: str = SECRET,
    key_id: str = KEY_ID,
    region: str = "us-east-1",
    service: str = "dynamodb",
    path: str = "/",
    extra: dict[str, str] | None = None,
) -> tuple[list[tuple[str, str]], str]:
    """The received header pairs of a botocore-signed request, and its raw target."""
    url = f"http://{HOST}{path}"
    headers = {
        "Host": HOST,
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.GetItem",
        "amz-sdk-invocation-id": "8f0c3c0e-1d2b-4bb8-9d5e-7a6b1b0f0c11",
        "amz-sdk-request": "attempt=1; max=10",
        "User-Agent": "Boto3/1.44 test",
        **(extra or {}),
    }
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(key_id, secret), service, region).add_auth(request)
    pairs = [(str(name), str(value)) for name, value in request.headers.items()]
    return pairs, path


def header(pairs: list[tuple[str, str]], name: str) -> str:
    return next(value for key, value in pairs if key.lower() == name.lower())


def replaced(pairs: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k.lower() == name.lower() else v) for k, v in pairs]


def without(pairs: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in pairs if k.lower() != name.lower()]


def check(
    pairs: list[tuple[str, str]],
    body: bytes = BODY,
    *,
    secret: str = SECRET,
    target: str = "/",
    method: str = "POST",
    now_s: float = SIGNED_AT_S,
) -> Authorization:
    auth = parse_authorization(header(pairs, "Authorization"))
    path, _, query = target.partition("?")
    verify(
        auth,
        secret=secret,
        method=method,
        raw_path=path,
        raw_query=query,
        headers=pairs,
        body=body,
        now_s=now_s,
    )
    return auth


def refused(aws_type: str, call: object, *args: object, **kwargs: object) -> Unauthorized:
    assert callable(call)
    with pytest.raises(Unauthorized) as caught:
        call(*args, **kwargs)
    error = caught.value
    assert error.code is ErrorCode.Unauthorized
    assert error.details["aws_type"] == aws_type, error.message
    assert SECRET not in error.message
    return error


# --- what botocore signs verifies -----------------------------------------------------------


def test_a_botocore_signed_request_verifies() -> None:
    pairs, target = signed()
    auth = check(pairs, target=target)
    assert auth.access_key_id == KEY_ID
    assert auth.region == "us-east-1"
    assert auth.service == "dynamodb"
    assert auth.date == "20261122"
    assert "host" in auth.signed_headers
    assert "x-amz-target" in auth.signed_headers
    assert "user-agent" not in auth.signed_headers


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3", "local", "ap-southeast-2"])
def test_any_region_is_accepted(region: str) -> None:
    pairs, target = signed(region=region)
    assert check(pairs, target=target).region == region


def test_an_empty_body_verifies() -> None:
    pairs, target = signed(b"")
    check(pairs, b"", target=target)


def test_the_signature_covers_the_compressed_bytes() -> None:
    compressed = gzip.compress(BODY)
    pairs, target = signed(compressed, extra={"Content-Encoding": "gzip"})
    check(pairs, compressed, target=target)
    refused(INVALID_SIGNATURE, check, pairs, BODY, target=target)


def test_a_path_in_the_endpoint_url_is_signed_as_received() -> None:
    pairs, target = signed(path="/ddb/v1/")
    check(pairs, target=target)
    refused(INVALID_SIGNATURE, check, pairs, target="/")


def test_unsigned_payload_verifies_whatever_the_body() -> None:
    pairs, target = signed(extra={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    check(pairs, target=target)
    check(pairs, b"{}", target=target)


def test_a_declared_payload_hash_must_match_the_body() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    pairs, target = signed(extra={"X-Amz-Content-SHA256": digest})
    check(pairs, target=target)
    error = refused(INVALID_SIGNATURE, check, pairs, b"{}", target=target)
    assert "x-amz-content-sha256" in error.message


def test_the_date_header_alternative_verifies() -> None:
    date = formatdate(SIGNED_AT_S)  # "-0000": botocore's own form
    pairs, target = signed(extra={"Date": date})
    assert not any(k.lower() == "x-amz-date" for k, _ in pairs)
    check(pairs, target=target)


def test_repeated_and_spaced_header_values_are_canonicalised() -> None:
    pairs, target = signed(extra={"X-Custom": "  a   b  "})
    check(pairs, target=target)
    spaced = replaced(pairs, "X-Custom", "a b")
    check(spaced, target=target)  # trimmed and collapsed the same way


# --- tampering --------------------------------------------------------------------------------


def test_a_changed_body_is_refused() -> None:
    pairs, target = signed()
    refused(INVALID_SIGNATURE, check, pairs, BODY + b" ", target=target)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Amz-Target", "DynamoDB_20120810.DeleteItem"),
        ("Host", "127.0.0.1:8124"),
        ("Content-Type", "application/x-amz-json-1.1"),
        ("amz-sdk-request", "attempt=2; max=10"),
    ],
)
def test_a_changed_signed_header_is_refused(name: str, value: str) -> None:
    pairs, target = signed()
    refused(INVALID_SIGNATURE, check, replaced(pairs, name, value), target=target)


def test_a_removed_signed_header_is_refused() -> None:
    pairs, target = signed()
    refused(INVALID_SIGNATURE, check, without(pairs, "X-Amz-Target"), target=target)


def test_an_unsigned_header_may_change() -> None:
    pairs, target = signed()
    check(replaced(pairs, "User-Agent", "something else"), target=target)


def test_a_changed_method_or_query_is_refused() -> None:
    pairs, target = signed()
    refused(INVALID_SIGNATURE, check, pairs, method="PUT", target=target)
    refused(INVALID_SIGNATURE, check, pairs, target="/?x=1")


def test_a_wrong_secret_is_refused() -> None:
    pairs, target = signed()
    error = refused(INVALID_SIGNATURE, check, pairs, secret="kvt_" + "t" * 43, target=target)
    assert "signature we calculated does not match" in error.message


def test_a_changed_signature_is_refused() -> None:
    pairs, target = signed()
    auth = header(pairs, "Authorization")
    signature = auth.rsplit("Signature=", 1)[1]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = replaced(pairs, "Authorization", auth.replace(signature, flipped))
    refused(INVALID_SIGNATURE, check, tampered, target=target)


def test_a_changed_x_amz_date_is_refused() -> None:
    pairs, target = signed()
    later = replaced(pairs, "X-Amz-Date", "20261122T073001Z")
    refused(INVALID_SIGNATURE, check, later, target=target)


def test_scope_date_must_be_the_request_date() -> None:
    pairs, target = signed()
    next_day = replaced(pairs, "X-Amz-Date", "20261123T073000Z")
    error = refused(INVALID_SIGNATURE, check, next_day, target=target, now_s=SIGNED_AT_S + 86400)
    assert "Date in Credential scope does not match" in error.message


@pytest.mark.parametrize("skew_s", [-1, 0, 1])
def test_the_time_window_is_fifteen_minutes(skew_s: int) -> None:
    pairs, target = signed()
    window_s = DYNAMODB_SIGNATURE_SKEW_MS // 1000
    check(pairs, target=target, now_s=SIGNED_AT_S + window_s + min(skew_s, 0))
    check(pairs, target=target, now_s=SIGNED_AT_S - window_s - min(skew_s, 0))
    if skew_s > 0:
        expired = refused(
            INVALID_SIGNATURE, check, pairs, target=target, now_s=SIGNED_AT_S + window_s + skew_s
        )
        assert "Signature expired" in expired.message
        early = refused(
            INVALID_SIGNATURE, check, pairs, target=target, now_s=SIGNED_AT_S - window_s - skew_s
        )
        assert "Signature not yet current" in early.message


def test_the_service_must_be_dynamodb() -> None:
    pairs, _ = signed(service="s3")
    error = refused(INVALID_SIGNATURE, parse_authorization, header(pairs, "Authorization"))
    assert "dynamodb" in error.message


# --- malformed and missing --------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_header_is_missing_authentication_token(value: str | None) -> None:
    error = refused(MISSING_AUTHENTICATION_TOKEN, parse_authorization, value)
    assert error.message == "Request is missing Authentication Token"


GOOD_CREDENTIAL = "Credential=k/20261122/us-east-1/dynamodb/aws4_request"
GOOD_SIGNATURE = "Signature=" + "a" * 64


@pytest.mark.parametrize(
    "value",
    [
        "Bearer " + SECRET,
        SECRET,
        "AWS4-HMAC-SHA512 " + GOOD_CREDENTIAL,
        "AWS4-HMAC-SHA256",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, {GOOD_SIGNATURE}",
        f"AWS4-HMAC-SHA256 SignedHeaders=host, {GOOD_SIGNATURE}",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host, Signature=xyz",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host, Signature={'A' * 64}",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=x-amz-date, {GOOD_SIGNATURE}",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host;host, {GOOD_SIGNATURE}",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=Host, {GOOD_SIGNATURE}",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host;;a, {GOOD_SIGNATURE}",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host, {GOOD_SIGNATURE}, X=1",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, {GOOD_CREDENTIAL}, SignedHeaders=host, "
        + GOOD_SIGNATURE,
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL} SignedHeaders=host {GOOD_SIGNATURE}",
        "AWS4-HMAC-SHA256 Credential=k/20261122/us-east-1/dynamodb, SignedHeaders=host, "
        + GOOD_SIGNATURE,
        "AWS4-HMAC-SHA256 Credential=k/20261122/us-east-1/dynamodb/aws5_request, "
        f"SignedHeaders=host, {GOOD_SIGNATURE}",
        "AWS4-HMAC-SHA256 Credential=k/2026112/us-east-1/dynamodb/aws4_request, "
        f"SignedHeaders=host, {GOOD_SIGNATURE}",
        "AWS4-HMAC-SHA256 Credential=k/20261122//dynamodb/aws4_request, "
        f"SignedHeaders=host, {GOOD_SIGNATURE}",
        f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders="
        + ";".join(["host", *(f"h{i}" for i in range(64))])
        + f", {GOOD_SIGNATURE}",
        "AWS4-HMAC-SHA256 " + "x" * DYNAMODB_AUTHORIZATION_CHARS_MAX,
    ],
)
def test_malformed_headers_are_incomplete_signatures(value: str) -> None:
    error = refused(INCOMPLETE_SIGNATURE, parse_authorization, value)
    assert SECRET not in repr(error.to_json())


@pytest.mark.parametrize("key_id", ["", "a b", "ü", "x" * 129])
def test_an_impossible_access_key_is_unrecognized(key_id: str) -> None:
    value = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/20261122/us-east-1/dynamodb/aws4_request, "
        f"SignedHeaders=host, {GOOD_SIGNATURE}"
    )
    aws_type = INCOMPLETE_SIGNATURE if " " in key_id else UNRECOGNIZED_CLIENT
    refused(aws_type, parse_authorization, value)


def test_a_missing_or_bad_date_is_an_incomplete_signature() -> None:
    pairs, target = signed()
    refused(INCOMPLETE_SIGNATURE, check, without(pairs, "X-Amz-Date"), target=target)
    for bad in ["2026-11-22T07:30:00Z", "20261322T073000Z", "20261122T073000", "x"]:
        refused(INCOMPLETE_SIGNATURE, request_time, replaced(pairs, "X-Amz-Date", bad))
    refused(INCOMPLETE_SIGNATURE, request_time, [("Date", "yesterday")])


@given(st.text(max_size=300))
def test_parsing_never_fails_otherwise(text: str) -> None:
    try:
        parse_authorization(text)
    except Unauthorized as error:
        assert error.details["aws_type"] in {
            MISSING_AUTHENTICATION_TOKEN,
            INCOMPLETE_SIGNATURE,
            UNRECOGNIZED_CLIENT,
            INVALID_SIGNATURE,
        }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/./b/../c/", "/a/c/"),
        ("//a//b", "/a/b"),
        ("/a%20b", "/a%2520b"),
        ("/~x", "/~x"),
    ],
)
def test_canonical_path_matches_botocore(raw: str, expected: str) -> None:
    assert canonical_path(raw) == expected
    assert SigV4Auth(Credentials("a", "b"), "dynamodb", "r")._normalize_url_path(raw) == expected


def test_signing_key_matches_the_aws_documented_example() -> None:
    # The IAM SigV4 guide's example key derivation (secret, 20150830, us-east-1, iam).
    key = sigv4.signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "iam"
    )
    assert key.hex() == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
