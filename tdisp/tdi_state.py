"""The TDI state machine as one explicit transition table (PCIe 6.2 §11.2.4, Figure 11-4).

States: CONFIG_UNLOCKED, CONFIG_LOCKED, RUN, ERROR.  Events:

    LOCK            LOCK_INTERFACE_REQUEST accepted by the request checks (§11.3.8)
    START           START_INTERFACE_REQUEST with the right nonce (§11.3.14)
    STOP            STOP_INTERFACE_REQUEST (§11.3.15)
    VIOLATION       a change the TDI must not tolerate while locked: a forbidden
                    config-space/BAR write, its IDE stream going Insecure, or the
                    SPDM session that locked it ending (§11.2.4, §11.4.5)
    FUNCTION_RESET  FLR / reset of the function (§11.2.4: back to CONFIG_UNLOCKED)

Each (state, event) has exactly one outcome: `Move(new_state)` or `Reject(error)`,
the TDISP_ERROR code the request earns.  `transition_table(stop_states)` builds the
table; STOP's accepted states are the one divergence between implementations
(see `tdisp.policy`).  `TdiStateMachine` only consults the table and keeps history.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from tdisp.codes import ErrorCode, TdiState

U, L, R, E = TdiState.CONFIG_UNLOCKED, TdiState.CONFIG_LOCKED, TdiState.RUN, TdiState.ERROR


class TdiEvent(enum.Enum):
    LOCK = "LOCK"
    START = "START"
    STOP = "STOP"
    VIOLATION = "VIOLATION"
    FUNCTION_RESET = "FUNCTION_RESET"


@dataclass(frozen=True)
class Move:
    to: TdiState


@dataclass(frozen=True)
class Reject:
    error: ErrorCode


Outcome = Move | Reject
Table = Mapping[tuple[TdiState, TdiEvent], Outcome]

_BAD_STATE = Reject(ErrorCode.INVALID_INTERFACE_STATE)


def transition_table(
    stop_states: Iterable[TdiState] = (U, L, R, E),
) -> dict[tuple[TdiState, TdiEvent], Outcome]:
    stop_ok = frozenset(stop_states)
    table: dict[tuple[TdiState, TdiEvent], Outcome] = {
        # LOCK only from CONFIG_UNLOCKED (§11.3.8).
        (U, TdiEvent.LOCK): Move(L),
        (L, TdiEvent.LOCK): _BAD_STATE,
        (R, TdiEvent.LOCK): _BAD_STATE,
        (E, TdiEvent.LOCK): _BAD_STATE,
        # START only from CONFIG_LOCKED (§11.3.14).
        (U, TdiEvent.START): _BAD_STATE,
        (L, TdiEvent.START): Move(R),
        (R, TdiEvent.START): _BAD_STATE,
        (E, TdiEvent.START): _BAD_STATE,
        # A violation only matters once the configuration is locked; ERROR is sticky.
        (U, TdiEvent.VIOLATION): Move(U),
        (L, TdiEvent.VIOLATION): Move(E),
        (R, TdiEvent.VIOLATION): Move(E),
        (E, TdiEvent.VIOLATION): Move(E),
        # FLR returns every state to CONFIG_UNLOCKED.
        (U, TdiEvent.FUNCTION_RESET): Move(U),
        (L, TdiEvent.FUNCTION_RESET): Move(U),
        (R, TdiEvent.FUNCTION_RESET): Move(U),
        (E, TdiEvent.FUNCTION_RESET): Move(U),
    }
    for state in TdiState:
        table[(state, TdiEvent.STOP)] = Move(U) if state in stop_ok else _BAD_STATE
    return table


DEFAULT_TABLE: Table = transition_table()


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    old: TdiState
    event: TdiEvent
    new: TdiState
    reason: str = ""


@dataclass
class TdiStateMachine:
    table: Table = field(default_factory=lambda: DEFAULT_TABLE)
    state: TdiState = U
    clock: Callable[[], float] | None = None  # caller-supplied time; else a counter
    history: list[HistoryEntry] = field(default_factory=list)
    observers: list[Callable[[HistoryEntry], None]] = field(default_factory=list)
    _tick: int = 0

    def outcome(self, event: TdiEvent) -> Outcome:
        return self.table[(self.state, event)]

    def fire(self, event: TdiEvent, reason: str = "") -> Outcome:
        """Apply `event`; a Move is recorded in the history, a Reject changes nothing."""
        out = self.outcome(event)
        if isinstance(out, Move):
            self._tick += 1
            at = self.clock() if self.clock is not None else float(self._tick)
            entry = HistoryEntry(at, self.state, event, out.to, reason)
            self.state = out.to
            self.history.append(entry)
            for observer in self.observers:
                observer(entry)
        return out


# Requests that do not move the TDI, and the states that accept them (§11.3.10, §11.3.12).
# BIND/UNBIND_P2P and SET_MMIO_ATTRIBUTE states come from the policy (RUN by default).
REPORT_STATES: frozenset[TdiState] = frozenset({L, R})
ANY_STATE: frozenset[TdiState] = frozenset(TdiState)
