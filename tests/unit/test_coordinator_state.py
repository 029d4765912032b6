"""The coordinator's transition tables and the poisoning state machine."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import pytest

from kvstore.coordinator.state import (
    READ_TRANSITIONS,
    RECOVERY_TRANSITIONS,
    WRITE_TRANSITIONS,
    ReadState,
    RecoveryState,
    StateMachine,
    WriteState,
)
from kvstore.errors import InternalError


@pytest.mark.parametrize(
    "table",
    [WRITE_TRANSITIONS, READ_TRANSITIONS, RECOVERY_TRANSITIONS],
    ids=["write", "read", "recovery"],
)
def test_tables_cover_every_state_and_done_is_final(
    table: Mapping[enum.Enum, frozenset[enum.Enum]],
) -> None:
    states = {state for state in table}
    kind = type(next(iter(states)))
    assert states == set(kind)
    assert all(targets <= states for targets in table.values())
    assert table[kind["DONE"]] == frozenset()
    # Every state can reach DONE.
    for state in states:
        seen, todo = {state}, [state]
        while todo:
            for nxt in table[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        assert kind["DONE"] in seen, state


def test_write_states_never_go_back_to_preparing() -> None:
    for source, targets in WRITE_TRANSITIONS.items():
        if source is not WriteState.INIT:
            assert WriteState.PREPARING not in targets


def test_legal_moves() -> None:
    machine = StateMachine(RecoveryState.INIT, RECOVERY_TRANSITIONS, "test")
    machine.move(RecoveryState.DRIVING)
    machine.move(RecoveryState.DONE)
    assert machine.state is RecoveryState.DONE
    assert not machine.poisoned


def test_illegal_move_raises_and_poisons() -> None:
    machine = StateMachine(ReadState.INIT, READ_TRANSITIONS, "test")
    with pytest.raises(InternalError, match="illegal transition INIT -> DONE"):
        machine.move(ReadState.DONE)
    assert machine.poisoned
    assert machine.state is ReadState.INIT
    with pytest.raises(InternalError, match="unusable"):
        machine.move(ReadState.READING)
    with pytest.raises(InternalError, match="unusable"), machine.guard():
        pass


def test_any_exception_inside_an_event_poisons() -> None:
    machine = StateMachine(ReadState.INIT, READ_TRANSITIONS, "test")
    with pytest.raises(ZeroDivisionError), machine.guard():
        _ = 1 // 0
    assert machine.poisoned
    with pytest.raises(InternalError):
        machine.check()


def test_incomplete_table_is_refused() -> None:
    with pytest.raises(InternalError, match="no transition entry"):
        StateMachine(ReadState.INIT, {ReadState.INIT: frozenset()}, "test")
