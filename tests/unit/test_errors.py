"""The error catalogue is frozen: codes are never renumbered, reused or silently changed."""

from __future__ import annotations

import pytest

from kvstore.errors import ErrorCode, KvError, ValidationError, error_from_code
from kvstore.messages import ReasonCode

FROZEN = {
    # name: (number, http status, retryable)
    "TransactionConflict": (1001, 409, True),
    "TimestampTooOld": (1002, 409, True),
    "TransactionInProgress": (1003, 409, True),
    "ClockSkew": (1004, 503, True),
    "Overloaded": (1005, 503, True),
    "Unavailable": (1006, 503, True),
    "WrongOwner": (1007, 421, True),
    "DiskFull": (1008, 503, True),
    "ValidationError": (2001, 400, False),
    "ConditionFailed": (2002, 412, False),
    "NotFound": (2003, 404, False),
    "TooLarge": (2004, 413, False),
    "TransactionCanceled": (2005, 409, False),
    "IdempotencyMismatch": (2006, 422, False),
    "Unauthorized": (2007, 401, False),
    "Forbidden": (2008, 403, False),
    "ProtocolViolation": (2009, 400, False),
    "SnapshotTooOld": (2010, 409, False),
    "OutcomeUnknown": (3001, 504, True),
    "InternalError": (9001, 500, False),
}


def test_catalogue_matches_the_frozen_table() -> None:
    actual = {c.name: (c.number, c.http_status, c.retryable) for c in ErrorCode}
    assert actual == FROZEN


def test_numbers_are_unique_and_grouped_by_meaning() -> None:
    numbers = [c.number for c in ErrorCode]
    assert len(numbers) == len(set(numbers))
    for code in ErrorCode:
        group = code.number // 1000
        assert (group in (1, 3)) == code.retryable, code


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_round_trips_through_its_wire_form(code: ErrorCode) -> None:
    error = error_from_code(code, "boom", details={"field": "ops[0]"})
    assert isinstance(error, KvError)
    assert error.code is code
    body = error.to_json()
    assert body["code"] == code.name and body["retryable"] == code.retryable
    assert ErrorCode.from_name(str(body["code"])) is code


def test_validation_error_names_the_field() -> None:
    error = ValidationError("ops[2].key", "too long")
    assert error.field == "ops[2].key"
    assert "ops[2].key" in str(error)
    assert error.to_json()["field"] == "ops[2].key"


def test_unknown_wire_names_map_to_internal_error() -> None:
    assert ErrorCode.from_name("NoSuchCode") is ErrorCode.InternalError


def test_reason_codes_take_retryable_from_the_catalogue() -> None:
    assert not ReasonCode.NONE.retryable
    for reason in ReasonCode:
        if reason is not ReasonCode.NONE:
            assert reason.retryable is ErrorCode[reason.value].retryable
    assert ReasonCode.TRANSACTION_CONFLICT.retryable
    assert not ReasonCode.CONDITION_FAILED.retryable


def test_ambiguous_is_exactly_the_3xxx_class() -> None:
    ambiguous = {code for code in ErrorCode if code.ambiguous}
    assert ambiguous == {code for code in ErrorCode if 3000 <= code.number < 4000}
    assert ErrorCode.OutcomeUnknown in ambiguous
    assert ErrorCode.TransactionCanceled not in ambiguous
