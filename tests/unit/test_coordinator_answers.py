"""A cancelled transaction's typed error: reasons that name each op's key, and a message that
names the failed ops by index and key (the first three), the same from the coordinator library
(:func:`~kvstore.coordinator.answers.txn_error`) and from the SDK's in-memory backend."""

from __future__ import annotations

import pytest

from kvstore.client.memory import MemoryBackend
from kvstore.client.results import reasons
from kvstore.coordinator.answers import cancel_message, txn_error
from kvstore.coordinator.results import TxnResult
from kvstore.errors import ErrorCode, TransactionCanceled
from kvstore.messages import OpOutcome, ReasonCode
from kvstore.ops import ops_from_json
from kvstore.types import Timestamp, TxnId

FAILED = OpOutcome(code=ReasonCode.CONDITION_FAILED, message="the condition did not hold")


def cancelled(*outcomes: OpOutcome) -> TxnResult:
    return TxnResult(
        committed=False,
        txn_id=TxnId("1" * 32),
        ts=Timestamp(1_000_000, 0, 7),
        outcomes=outcomes,
        error=ErrorCode.TransactionCanceled,
    )


def test_reasons_and_message_name_each_failed_op_s_key() -> None:
    error = txn_error(cancelled(OpOutcome(), FAILED), keys=["a", "b"])
    assert isinstance(error, TransactionCanceled)
    assert error.details["reasons"] == [
        {"code": "None", "key": "a"},
        {"code": "ConditionFailed", "key": "b", "message": "the condition did not hold"},
    ]
    assert error.message == (
        "the transaction was cancelled: "
        'op 1 (key "b"): ConditionFailed (the condition did not hold)'
    )


def test_the_message_names_three_failed_ops_and_counts_the_rest_and_cuts_long_keys() -> None:
    long_key = "k" * 200
    keys = [long_key, "b", "c", "d", "e"]
    message = txn_error(cancelled(*[FAILED] * 5), keys=keys).message
    assert message.count("ConditionFailed") == 3 and message.endswith("; and 2 more")
    assert long_key not in message and '(key "kkk' in message and '…")' in message
    reasons = txn_error(cancelled(*[FAILED] * 5), keys=keys).details["reasons"]
    assert isinstance(reasons, list) and reasons[0]["key"] == long_key  # whole in the reasons


def test_without_keys_the_reasons_are_as_recorded() -> None:
    """A result whose keys are not known (they must match the outcomes one to one)."""
    error = txn_error(cancelled(FAILED), keys=[])
    assert error.details["reasons"] == [
        {"code": "ConditionFailed", "message": "the condition did not hold"}
    ]
    assert error.message == (
        "the transaction was cancelled: op 0: ConditionFailed (the condition did not hold)"
    )
    assert cancel_message([]) == "the transaction was cancelled: no reason"


@pytest.mark.asyncio
async def test_the_in_memory_backend_names_the_keys_the_same_way() -> None:
    backend = MemoryBackend()
    ops = ops_from_json(
        [
            {"op": "put", "key": "x", "value": 1},
            {"op": "check", "key": "y", "if": {"exists": True}},
        ]
    )
    with pytest.raises(TransactionCanceled) as raised:
        await backend.transact(ops, "token-1", timeout_s=1.0)
    assert [(r["key"], r["code"]) for r in reasons(raised.value)] == [
        ("x", "None"),
        ("y", "ConditionFailed"),
    ]
    assert raised.value.message.startswith('the transaction was cancelled: op 1 (key "y"): ')
