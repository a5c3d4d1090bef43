"""DOE BUSY: responses held back by the response gate (fault injection), released by
`complete`, dropped by ABORT / FLR (PCIe r6.0 §6.30.2, §7.9.24.3, §7.9.24.5)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tests.helpers.fakes import Cfg
from tests.helpers.linux_doe import LinuxDoe
from vdev.doe.data_object import DoeProtocolId
from vdev.doe.mailbox import (
    CTRL_INT_EN,
    DOE_STATUS,
    STATUS_BUSY,
    STATUS_DATA_OBJECT_READY,
    STATUS_ERROR,
    STATUS_INT_STATUS,
    TRANSITIONS,
    DoeMailbox,
    MailboxState,
)
from vdev.endpoint.function import TeeIoEndpoint

GET_VERSION = [0x0000_8410]  # SPDM 1.0 GET_VERSION, one payload DW


class FakeTimers:
    """defer_later that keeps the callbacks until the test says time has passed."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, seconds: float, callback: Callable[[], None]) -> None:
        self.pending.append((seconds, callback))

    def run_all(self) -> None:
        pending, self.pending = self.pending, []
        for _, callback in pending:
            callback()


def request(mb: DoeMailbox, vid: int = 1, typ: int = 1, payload: list[int] | None = None) -> None:
    body = GET_VERSION if payload is None else payload
    for dw in [vid | typ << 16, 2 + len(body), *body]:
        mb.write_mailbox(dw)
    mb.go()


def read_all(mb: DoeMailbox) -> list[int]:
    out = []
    while mb.state is MailboxState.READY:
        out.append(mb.read_mailbox())
        mb.advance()
    return out


def gated_mailbox() -> tuple[DoeMailbox, list[tuple[DoeProtocolId, int]], list[int]]:
    irqs: list[int] = []
    mb = DoeMailbox(interrupt=irqs.append)
    mb.register(1, 1, lambda req: b"\x10\x04\x00\x00")
    held: list[tuple[DoeProtocolId, int]] = []

    def gate(protocol: DoeProtocolId, ticket: int) -> bool:
        held.append((protocol, ticket))
        return True

    mb.response_gate = gate
    return mb, held, irqs


def test_held_response_reads_busy_until_complete() -> None:
    mb, held, irqs = gated_mailbox()
    mb.write_control(CTRL_INT_EN)
    request(mb)
    assert held == [(DoeProtocolId(1, 1), 1)]
    assert mb.state is MailboxState.BUSY
    assert mb.status == STATUS_BUSY  # BUSY, and neither DOR nor ERROR
    assert mb.read_mailbox() == 0  # nothing to read while BUSY
    mb.advance()  # a stray read ack is ignored
    assert mb.state is MailboxState.BUSY and irqs == []
    assert mb.complete(1)
    assert mb.status == STATUS_DATA_OBJECT_READY | STATUS_INT_STATUS  # BUSY cleared
    assert irqs == [0]  # DOR 0->1 raises the DOE interrupt (§6.30.3)
    assert read_all(mb) == [0x0001_0001, 3, 0x0000_0410]
    assert mb.state is MailboxState.IDLE


def test_abort_while_busy_drops_the_response_and_a_late_complete() -> None:
    mb, held, _ = gated_mailbox()
    request(mb)
    mb.abort()
    assert mb.state is MailboxState.IDLE and mb.status == 0
    assert not mb.complete(1)  # the timer fires after the abort: ignored
    assert mb.state is MailboxState.IDLE and mb.status == 0
    # The next exchange is held under a new ticket: the stale one cannot release it.
    request(mb)
    assert held[-1][1] == 2 and mb.state is MailboxState.BUSY
    assert not mb.complete(1)
    assert mb.state is MailboxState.BUSY
    assert mb.complete(2) and read_all(mb) == [0x0001_0001, 3, 0x0000_0410]


def test_write_or_go_while_busy_is_an_error_until_abort() -> None:
    mb, _, _ = gated_mailbox()
    request(mb)
    mb.write_mailbox(0x0001_0001)
    assert mb.state is MailboxState.ERROR and mb.status == STATUS_ERROR
    assert mb.last_error == "write to the write mailbox while BUSY"
    assert not mb.complete(1)  # an ERROR does not turn into READY
    mb.abort()
    request(mb)
    mb.go()
    assert mb.state is MailboxState.ERROR and mb.last_error == "GO while BUSY"


def test_reset_while_busy_idles() -> None:
    mb, _, _ = gated_mailbox()
    request(mb)
    mb.reset()  # FLR
    assert mb.state is MailboxState.IDLE and not mb.complete(1)


def test_no_gate_means_ready_at_go() -> None:
    mb, _, _ = gated_mailbox()
    mb.response_gate = None
    request(mb)
    assert mb.status == STATUS_DATA_OBJECT_READY


# ---- the endpoint's fault knob (vdev serve --doe-delay-ms/--doe-delay-count) -----


@pytest.fixture
def timers() -> FakeTimers:
    return FakeTimers()


@pytest.fixture
def slow(timers: FakeTimers) -> TeeIoEndpoint:
    ep = TeeIoEndpoint(defer_later=timers)
    ep.delay_doe_responses(1.5, 2)
    return ep


def linux(ep: TeeIoEndpoint) -> LinuxDoe:
    cap = ep.config.find_ext_capability(0x2E)
    assert cap is not None
    return LinuxDoe(Cfg(ep), cap)


def test_endpoint_delays_the_next_n_spdm_responses_not_discovery(
    slow: TeeIoEndpoint, timers: FakeTimers
) -> None:
    doe = linux(slow)
    assert doe.discover() == [(1, 0), (1, 1), (1, 2)]  # never delayed: DOR at GO
    assert timers.pending == []
    for _ in range(2):
        doe.send(1, 1, GET_VERSION)
        assert doe.rd(DOE_STATUS) == STATUS_BUSY
        assert [s for s, _ in timers.pending] == [1.5]
        timers.run_all()  # 1.5 s later
        assert doe.rd(DOE_STATUS) & STATUS_DATA_OBJECT_READY
        assert doe.recv(1, 1).payload == [0x8407_7F10]  # placeholder ERROR(Unsupported)
    doe.send(1, 1, GET_VERSION)  # the count is used up: ready at GO again
    assert doe.rd(DOE_STATUS) == STATUS_DATA_OBJECT_READY and timers.pending == []


def test_endpoint_linux_timeout_abort_then_next_exchange_works(
    timers: FakeTimers,
) -> None:
    """Linux's sequence: GO, poll up to 1 s, ABORT, -EIO; the retry succeeds."""
    ep = TeeIoEndpoint(defer_later=timers)
    ep.delay_doe_responses(1.5, 1)
    doe = linux(ep)
    doe.send(1, 1, GET_VERSION)
    assert doe.rd(DOE_STATUS) == STATUS_BUSY
    doe.abort()  # pci_doe_abort: ERROR and BUSY must read 0 afterwards
    assert doe.rd(DOE_STATUS) == 0
    assert doe.exchange(1, 1, GET_VERSION).payload == [0x8407_7F10]
    timers.run_all()  # the held response's timer fires late: nothing changes
    assert doe.rd(DOE_STATUS) == 0 and ep.doe.state is MailboxState.IDLE


def test_endpoint_delay_needs_a_scheduler() -> None:
    ep = TeeIoEndpoint()
    with pytest.raises(ValueError):
        ep.delay_doe_responses(1.5, 1)
    ep.delay_doe_responses(1.5, 0)  # no delays: fine without one
    assert ep.doe.response_gate is None


GATED_ACTIONS: dict[str, Callable[[DoeMailbox], object]] = {
    "request": lambda mb: request(mb),
    "write": lambda mb: mb.write_mailbox(0x0001_0001),
    "go": lambda mb: mb.go(),
    "ack": lambda mb: mb.advance(),
    "abort": lambda mb: mb.abort(),
    "complete": lambda mb: mb.complete(mb._ticket),
    "complete_stale": lambda mb: mb.complete(mb._ticket - 1),
}


@pytest.mark.parametrize("sequence", list(itertools.product(GATED_ACTIONS, repeat=4)))
def test_gated_action_sequences_stay_in_the_table(sequence: tuple[str, ...]) -> None:
    """With every response held back, any sequence keeps to the table and the status
    bits derived from the state: BUSY <=> BUSY state, DOR <=> READY, never both."""
    mb, _, _ = gated_mailbox()
    for name in sequence:
        before = mb.state
        GATED_ACTIONS[name](mb)
        # "request" is several register writes plus GO; the others are one event each
        # (a complete() that finds nothing pending is ignored without an event).
        if name != "request":
            assert any(k[0] is before and t is mb.state for k, t in TRANSITIONS.items()) \
                or (before is mb.state and name.startswith("complete")), (sequence, name)
        status = mb.status
        assert bool(status & STATUS_BUSY) == (mb.state is MailboxState.BUSY)
        assert bool(status & STATUS_DATA_OBJECT_READY) == (mb.state is MailboxState.READY)
        assert bool(status & STATUS_ERROR) == (mb.state is MailboxState.ERROR)
        if name == "complete_stale":
            assert before is mb.state  # a stale ticket never changes anything
