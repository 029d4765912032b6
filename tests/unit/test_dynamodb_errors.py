"""Catalogue errors in DynamoDB's wire form (kvstore/dynamodb/errors.py).

Goal: every catalogue code has a DynamoDB name and status; ``details["aws_type"]`` refines it;
the body is what botocore parses into the right ``Error.Code``/``Message`` and the top-level
``CancellationReasons``/``Item``; server-side messages never leak internals. Method: the table
over every :class:`ErrorCode`, and botocore's own JSON error parser over the encoded body.
"""

from __future__ import annotations

import json

import pytest
from botocore.parsers import create_parser

from kvstore.dynamodb.errors import TYPE_PREFIX, aws_type_of, error_answer
from kvstore.errors import (
    ConditionFailed,
    ErrorCode,
    Forbidden,
    IdempotencyMismatch,
    InternalError,
    KvError,
    NotFound,
    OutcomeUnknown,
    Overloaded,
    TooLarge,
    TransactionCanceled,
    TransactionConflict,
    TransactionInProgress,
    Unauthorized,
    Unavailable,
    ValidationError,
    error_from_code,
)

EXPECTED = {
    ErrorCode.Overloaded: ("ThrottlingException", 400),
    ErrorCode.OutcomeUnknown: ("InternalServerError", 500),
    ErrorCode.Unavailable: ("ServiceUnavailable", 503),
    ErrorCode.InternalError: ("InternalServerError", 500),
    ErrorCode.NotFound: ("ResourceNotFoundException", 400),
    ErrorCode.ConditionFailed: ("ConditionalCheckFailedException", 400),
    ErrorCode.TransactionCanceled: ("TransactionCanceledException", 400),
    ErrorCode.TransactionConflict: ("TransactionConflictException", 400),
    ErrorCode.TimestampTooOld: ("TransactionConflictException", 400),
    ErrorCode.IdempotencyMismatch: ("IdempotentParameterMismatchException", 400),
    ErrorCode.TransactionInProgress: ("TransactionInProgressException", 400),
    ErrorCode.Unauthorized: ("UnrecognizedClientException", 400),
    ErrorCode.Forbidden: ("AccessDeniedException", 400),
    ErrorCode.ValidationError: ("ValidationException", 400),
    ErrorCode.TooLarge: ("ValidationException", 413),
}

RETRIED_BY_LEGACY_BOTOCORE = {"ThrottlingException", "InternalServerError", "ServiceUnavailable"}


def make(code: ErrorCode, message: str = "m", **details: object) -> KvError:
    return error_from_code(code, message, details=details)


def parsed(error: KvError) -> dict[str, object]:
    """What botocore's DynamoDB (JSON protocol) parser makes of the answer."""
    answer = error_answer(error)
    body = json.dumps(answer.body).encode()
    response = {"status_code": answer.status, "headers": {"x-amzn-requestid": "r"}, "body": body}
    result: dict[str, object] = create_parser("json").parse(response, None)
    return result


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_catalogue_code_has_a_dynamodb_name_and_status(code: ErrorCode) -> None:
    aws_type, status = aws_type_of(make(code))
    assert aws_type[0].isupper() and aws_type.isalnum()
    assert status in {400, 413, 500, 503}
    if code in EXPECTED:
        assert (aws_type, status) == EXPECTED[code]
    # Retryable catalogue codes stay retryable for the SDKs (status 5xx or throttling), except
    # the conflicts, which DynamoDB clients never retry and the caller must handle.
    if code.retryable and aws_type not in {
        "TransactionConflictException",
        "TransactionInProgressException",
    }:
        assert aws_type in RETRIED_BY_LEGACY_BOTOCORE or status >= 500


@pytest.mark.parametrize("code", list(ErrorCode))
def test_botocore_reads_the_code_and_the_message(code: ErrorCode) -> None:
    error = make(code, "a message")
    aws_type, _ = aws_type_of(error)
    result = parsed(error)
    wire_error = result["Error"]
    assert isinstance(wire_error, dict)
    assert wire_error["Code"] == aws_type
    assert wire_error["Message"]
    metadata = result["ResponseMetadata"]
    assert isinstance(metadata, dict)
    assert metadata["RequestId"] == "r"


def test_the_body_shape_and_the_message_casing() -> None:
    answer = error_answer(ValidationError("", "One or more parameter values were invalid"))
    assert answer.body == {
        "__type": TYPE_PREFIX + "ValidationException",
        "message": "One or more parameter values were invalid",
    }
    for error, aws_type in [
        (TransactionCanceled("Transaction cancelled"), "TransactionCanceledException"),
        (IdempotencyMismatch("x"), "IdempotentParameterMismatchException"),
        (TransactionInProgress("x"), "TransactionInProgressException"),
    ]:
        body = error_answer(error).body
        assert set(body) == {"__type", "Message"}
        assert body["__type"] == TYPE_PREFIX + aws_type


def test_aws_type_refines_the_table() -> None:
    table = ValidationError("", "bad", details={"aws_type": "SerializationException"})
    assert aws_type_of(table) == ("SerializationException", 400)
    in_use = ConditionFailed(
        "Table already exists: t", details={"aws_type": "ResourceInUseException"}
    )
    answer = error_answer(in_use)
    assert (answer.status, answer.aws_type) == (400, "ResourceInUseException")
    assert answer.body["message"] == "Table already exists: t"
    limit = Overloaded("x", details={"aws_type": "ProvisionedThroughputExceededException"})
    assert aws_type_of(limit) == ("ProvisionedThroughputExceededException", 400)
    assert aws_type_of(Unavailable("x", details={"aws_type": "InternalServerError"}))[1] == 500
    signature = Unauthorized("sig", details={"aws_type": "InvalidSignatureException"})
    assert aws_type_of(signature) == ("InvalidSignatureException", 400)
    assert aws_type_of(Forbidden("no")) == ("AccessDeniedException", 400)


@pytest.mark.parametrize("bad", ["", "lower", "With Space", "A", 5, None, "X#Y", "A" * 101])
def test_a_malformed_aws_type_is_ignored(bad: object) -> None:
    assert aws_type_of(NotFound("x", details={"aws_type": bad})) == (
        "ResourceNotFoundException",
        400,
    )


def test_cancellation_reasons_and_item_are_top_level_members() -> None:
    reasons = [
        {"Code": "None"},
        {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
    ]
    error = TransactionCanceled(
        "Transaction cancelled, please refer cancellation reasons for specific reasons "
        "[None, ConditionalCheckFailed]",
        details={"cancellation_reasons": reasons, "aws_type": "TransactionCanceledException"},
    )
    body = error_answer(error).body
    assert body["CancellationReasons"] == reasons
    assert "cancellation_reasons" not in body
    item = {"p": {"S": "x"}, "n": {"N": "1"}}
    failed = ConditionFailed("The conditional request failed", details={"item": item})
    body = error_answer(failed).body
    assert body == {
        "__type": TYPE_PREFIX + "ConditionalCheckFailedException",
        "message": "The conditional request failed",
        "Item": item,
    }


def test_other_details_are_not_sent() -> None:
    error = NotFound("Requested resource not found", details={"key": "\x00d/secret", "limit": 3})
    assert error_answer(error).body == {
        "__type": TYPE_PREFIX + "ResourceNotFoundException",
        "message": "Requested resource not found",
    }


@pytest.mark.parametrize(
    "error",
    [
        InternalError("KeyError('x') at <object 0x7f00>"),
        Unavailable("node n2 at 127.0.0.1:7001 did not answer"),
        OutcomeUnknown("coordinator lost 10.0.0.5:9000"),
        Overloaded("queue of 127.0.0.1:7001 full"),
    ],
)
def test_server_side_messages_never_show_internals(error: KvError) -> None:
    answer = error_answer(error)
    text = json.dumps(answer.body)
    assert "127.0.0.1" not in text and "0x7f00" not in text and "10.0.0.5" not in text
    assert error.code.name in text  # the catalogue code, for the operator's log search


def test_outcome_unknown_says_a_retry_with_the_token_is_safe() -> None:
    message = error_answer(OutcomeUnknown("x")).body["message"]
    assert isinstance(message, str)
    assert "ClientRequestToken" in message


def test_too_large_is_a_validation_exception_with_413() -> None:
    answer = error_answer(TooLarge("the body is over 16777216 bytes"))
    assert (answer.status, answer.aws_type) == (413, "ValidationException")


def test_messages_are_json_escaped() -> None:
    error = ValidationError("", 'Invalid "quoted" \\ value\n')
    result = parsed(error)
    wire_error = result["Error"]
    assert isinstance(wire_error, dict)
    assert wire_error == {"Code": "ValidationException", "Message": 'Invalid "quoted" \\ value\n'}


def test_conflict_is_not_conditional_failure() -> None:
    assert aws_type_of(TransactionConflict("x"))[0] == "TransactionConflictException"


@pytest.mark.parametrize(
    "code", [ErrorCode.ValidationError, ErrorCode.TooLarge, ErrorCode.SnapshotTooOld]
)
def test_a_refused_store_call_does_not_name_its_partition_or_node(code: ErrorCode) -> None:
    error = make(code, "partition 3 on node n2: the request is malformed", partition=3, node="n2")
    body = error_answer(error).body
    assert "n2" not in json.dumps(body) and "partition" not in json.dumps(body)
    assert body["message"] == code.value.summary[:1].upper() + code.value.summary[1:]
