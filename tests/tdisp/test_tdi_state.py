"""The TDI transition table (PCIe 6.2 §11.2.4) enumerated, and the state machine."""

from __future__ import annotations

import itertools

import pytest

from tdisp.codes import ErrorCode, TdiState
from tdisp.policy import TdispPolicy
from tdisp.tdi_state import (
    DEFAULT_TABLE,
    Move,
    Reject,
    TdiEvent,
    TdiStateMachine,
    transition_table,
)

U, L, R, E = TdiState.CONFIG_UNLOCKED, TdiState.CONFIG_LOCKED, TdiState.RUN, TdiState.ERROR
BAD = Reject(ErrorCode.INVALID_INTERFACE_STATE)

EXPECTED = {
    (U, TdiEvent.LOCK): Move(L),
    (L, TdiEvent.LOCK): BAD,
    (R, TdiEvent.LOCK): BAD,
    (E, TdiEvent.LOCK): BAD,
    (U, TdiEvent.START): BAD,
    (L, TdiEvent.START): Move(R),
    (R, TdiEvent.START): BAD,
    (E, TdiEvent.START): BAD,
    (U, TdiEvent.STOP): Move(U),
    (L, TdiEvent.STOP): Move(U),
    (R, TdiEvent.STOP): Move(U),
    (E, TdiEvent.STOP): Move(U),
    (U, TdiEvent.VIOLATION): Move(U),
    (L, TdiEvent.VIOLATION): Move(E),
    (R, TdiEvent.VIOLATION): Move(E),
    (E, TdiEvent.VIOLATION): Move(E),
    (U, TdiEvent.FUNCTION_RESET): Move(U),
    (L, TdiEvent.FUNCTION_RESET): Move(U),
    (R, TdiEvent.FUNCTION_RESET): Move(U),
    (E, TdiEvent.FUNCTION_RESET): Move(U),
}


def test_every_pair_has_exactly_one_outcome() -> None:
    pairs = set(itertools.product(TdiState, TdiEvent))
    assert set(DEFAULT_TABLE) == pairs
    for profile in ("default", "spdm-emu", "spdm-rs"):
        table = transition_table(TdispPolicy.profile(profile).stop_states)
        assert set(table) == pairs
        assert all(isinstance(o, Move | Reject) for o in table.values())


@pytest.mark.parametrize(("pair", "outcome"), sorted(EXPECTED.items(), key=str))
def test_default_table(pair: tuple[TdiState, TdiEvent], outcome: Move | Reject) -> None:
    assert DEFAULT_TABLE[pair] == outcome


@pytest.mark.parametrize(
    ("profile", "accepting"),
    [
        ("tee-io-validator", {U, L, R, E}),
        ("spdm-emu", {L, R, E}),
        ("spdm-rs", {R}),
    ],
)
def test_stop_divergence(profile: str, accepting: set[TdiState]) -> None:
    table = transition_table(TdispPolicy.profile(profile).stop_states)
    for state in TdiState:
        expected = Move(U) if state in accepting else BAD
        assert table[(state, TdiEvent.STOP)] == expected
    # Only STOP differs between profiles.
    for (state, event), outcome in table.items():
        if event is not TdiEvent.STOP:
            assert outcome == DEFAULT_TABLE[(state, event)]


def test_unknown_profile() -> None:
    with pytest.raises(ValueError):
        TdispPolicy.profile("nope")


def test_machine_history_with_counter_and_clock() -> None:
    m = TdiStateMachine()
    assert m.fire(TdiEvent.START) == BAD and m.history == []
    m.fire(TdiEvent.LOCK, "keys ok")
    m.fire(TdiEvent.START)
    assert m.state is R
    assert [(h.at, h.old, h.event, h.new) for h in m.history] == [
        (1.0, U, TdiEvent.LOCK, L),
        (2.0, L, TdiEvent.START, R),
    ]
    assert m.history[0].reason == "keys ok"

    times = iter([100.5, 200.25])
    seen: list[TdiState] = []
    m2 = TdiStateMachine(clock=lambda: next(times))
    m2.observers.append(lambda h: seen.append(h.new))
    m2.fire(TdiEvent.LOCK)
    m2.fire(TdiEvent.VIOLATION, "BAR0 moved")
    assert [h.at for h in m2.history] == [100.5, 200.25]
    assert seen == [L, E]
