"""DOE mailbox: the Linux sequence through config space, and the state machine itself."""

from __future__ import annotations

import itertools

import pytest

from tests.helpers.fakes import Cfg, FakeIrqSink
from tests.helpers.linux_doe import DoeIoError, LinuxDoe
from vdev.doe.data_object import DoeProtocolId as P
from vdev.doe.data_object import build_object
from vdev.doe.mailbox import (
    CTRL_ABORT,
    CTRL_GO,
    CTRL_INT_EN,
    DOE_CTRL,
    DOE_READ,
    DOE_STATUS,
    DOE_WRITE,
    STATUS_DATA_OBJECT_READY,
    STATUS_ERROR,
    STATUS_INT_STATUS,
    TRANSITIONS,
    DoeMailbox,
    MailboxEvent,
    MailboxState,
)
from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.device_api import IrqIndex


@pytest.fixture
def doe(endpoint: TeeIoEndpoint, cfg: Cfg) -> LinuxDoe:
    cap = endpoint.config.find_ext_capability(0x2E)
    assert cap is not None
    return LinuxDoe(cfg, cap)


def dws(data: bytes) -> list[int]:
    data += bytes(-len(data) % 4)
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


def feed(mb: DoeMailbox, words: list[int]) -> None:
    for w in words:
        mb.write_mailbox(w)


# ---- Linux-visible behaviour ------------------------------------------------


def test_capability_register(doe: LinuxDoe) -> None:
    assert doe.rd(0x04) == 0x1  # interrupt supported, message number 0
    assert doe.rd(DOE_CTRL) == 0
    assert doe.rd(DOE_STATUS) == 0


def test_linux_discovery_sequence_exact_words(doe: LinuxDoe) -> None:
    doe.abort()
    r0 = doe.exchange(0x0001, 0x00, [0x0000_0200])  # index 0, version 2
    assert (r0.header1, r0.header2, r0.payload) == (0x0000_0001, 3, [0x0100_0001])
    r1 = doe.exchange(0x0001, 0x00, [0x0000_0201])
    assert r1.payload == [0x0201_0001]  # 0001:01 CMA/SPDM, next 2
    r2 = doe.exchange(0x0001, 0x00, [0x0000_0202])
    assert r2.payload == [0x0002_0001]  # 0001:02 secured CMA/SPDM, next 0 = last
    assert doe.rd(DOE_STATUS) == 0


def test_discovery_walk_like_pci_doe_cache_features(doe: LinuxDoe) -> None:
    doe.abort()
    assert doe.discover(version=2) == [(1, 0), (1, 1), (1, 2)]
    assert doe.discover(version=0) == [(1, 0), (1, 1), (1, 2)]


def test_spdm_placeholder_answers_error_unsupported_request(doe: LinuxDoe) -> None:
    get_version = bytes([0x10, 0x84, 0x00, 0x00])
    resp = doe.exchange(0x0001, 0x01, dws(get_version))
    assert resp.header2 == 3
    assert resp.payload == dws(bytes([0x10, 0x7F, 0x07, 0x84]))
    get_caps_12 = bytes([0x12, 0xE1, 0x00, 0x00])
    resp = doe.exchange(0x0001, 0x02, dws(get_caps_12))
    assert resp.payload == dws(bytes([0x12, 0x7F, 0x07, 0xE1]))


def test_register_doe_protocol_replaces_handler_and_keeps_index(
    endpoint: TeeIoEndpoint, doe: LinuxDoe
) -> None:
    endpoint.register_doe_protocol(0x0001, 0x01, lambda req: req[::-1])
    endpoint.register_doe_protocol(0x1E98, 0x05, lambda req: b"\x01\x02\x03\x04\x05")
    assert doe.discover() == [(1, 0), (1, 1), (1, 2), (0x1E98, 5)]
    assert doe.exchange(1, 1, [0x04030201]).payload == [0x01020304]
    resp = doe.exchange(0x1E98, 5, [])
    assert resp.header2 == 4 and resp.payload == [0x04030201, 0x00000005]  # zero padded


def test_abort_mid_object_then_full_exchange(doe: LinuxDoe) -> None:
    doe.wr(DOE_WRITE, 0x0000_0001)
    doe.wr(DOE_WRITE, 3)  # header written, payload DW still missing
    doe.abort()
    assert doe.rd(DOE_STATUS) == 0
    assert doe.exchange(1, 0, [0x200]).payload == [0x0100_0001]


def test_abort_while_response_pending(doe: LinuxDoe) -> None:
    doe.send(1, 0, [0x200])
    assert doe.rd(DOE_STATUS) & STATUS_DATA_OBJECT_READY
    assert doe.rd(DOE_READ) == 0x0000_0001
    doe.abort()
    assert doe.rd(DOE_STATUS) == 0
    assert doe.rd(DOE_READ) == 0
    assert doe.exchange(1, 0, [0x201]).payload == [0x0201_0001]


def test_dor_stays_set_until_last_dw_acked(doe: LinuxDoe) -> None:
    doe.send(1, 0, [0x200])
    seen = []
    for _ in range(3):
        seen.append(doe.rd(DOE_STATUS) & STATUS_DATA_OBJECT_READY)
        doe.rd(DOE_READ)
        doe.wr(DOE_READ, 0)
    assert all(seen)
    assert doe.rd(DOE_STATUS) & STATUS_DATA_OBJECT_READY == 0


def test_read_mailbox_is_stable_until_acked(doe: LinuxDoe) -> None:
    doe.send(1, 0, [0x201])
    assert doe.rd(DOE_READ) == doe.rd(DOE_READ) == 0x0000_0001
    doe.cfg.write(doe.cap + DOE_READ, 0xFF, 1)  # partial write: not an ack
    assert doe.rd(DOE_READ) == 0x0000_0001
    doe.wr(DOE_READ, 0xDEADBEEF)  # any DW value acks
    assert doe.rd(DOE_READ) == 3


def assert_error_until_abort(doe: LinuxDoe) -> None:
    assert doe.rd(DOE_STATUS) & STATUS_ERROR
    # only ABORT clears ERROR: writes, GO, status W1C and reads leave it set
    doe.wr(DOE_WRITE, 0x0000_0001)
    doe.wr(DOE_CTRL, CTRL_GO)
    doe.wr(DOE_STATUS, 0xFFFF_FFFF)
    doe.wr(DOE_READ, 0)
    assert doe.rd(DOE_STATUS) & STATUS_ERROR
    with pytest.raises(DoeIoError):
        doe.exchange(1, 0, [0x200])
    doe.abort()
    assert doe.rd(DOE_STATUS) == 0
    assert doe.exchange(1, 0, [0x200]).payload == [0x0100_0001]


def test_error_length_field_disagrees_with_dws_written(doe: LinuxDoe) -> None:
    doe.wr(DOE_WRITE, 0x0000_0001)
    doe.wr(DOE_WRITE, 4)  # says 4 DW, only 3 follow
    doe.wr(DOE_WRITE, 0x200)
    doe.wr(DOE_CTRL, CTRL_GO)
    assert_error_until_abort(doe)


def test_error_length_below_two(doe: LinuxDoe) -> None:
    doe.wr(DOE_WRITE, 0x0000_0001)
    doe.wr(DOE_WRITE, 1)
    doe.wr(DOE_CTRL, CTRL_GO)
    assert_error_until_abort(doe)


def test_error_go_with_nothing_written(doe: LinuxDoe) -> None:
    doe.wr(DOE_CTRL, CTRL_GO)
    assert_error_until_abort(doe)


def test_error_go_with_only_one_dw(doe: LinuxDoe) -> None:
    doe.wr(DOE_WRITE, 0x0000_0001)
    doe.wr(DOE_CTRL, CTRL_GO)
    assert_error_until_abort(doe)


def test_error_unsupported_protocol(doe: LinuxDoe) -> None:
    # §7.9.24.4: no response can be provided -> DOE Error
    doe.send(0x0001, 0x07, [0])
    assert_error_until_abort(doe)


def test_error_write_while_response_pending(doe: LinuxDoe) -> None:
    doe.send(1, 0, [0x200])
    doe.wr(DOE_WRITE, 0x0000_0001)
    assert_error_until_abort(doe)


def test_error_object_larger_than_mailbox() -> None:
    ep = TeeIoEndpoint()
    ep.doe.max_object_dw = 4
    cfg = Cfg(ep)
    doe = LinuxDoe(cfg, ep.doe_cap.offset)
    doe.send(1, 1, [0, 0])  # 4 DW: fits
    assert doe.rd(DOE_STATUS) & STATUS_DATA_OBJECT_READY
    doe.abort()
    for w in (0x0001_0001, 5, 0, 0):
        doe.wr(DOE_WRITE, w)
    assert not doe.rd(DOE_STATUS) & STATUS_ERROR
    doe.wr(DOE_WRITE, 0)  # the fifth DW overflows
    assert ep.doe.last_error == "request larger than the mailbox"
    assert_error_until_abort(doe)


def test_error_declared_length_too_large_detected_at_go() -> None:
    mb = DoeMailbox(max_object_dw=8)
    feed(mb, [0x0000_0001, 0])  # 0 encodes 2^18 DW
    mb.go()
    assert mb.state is MailboxState.ERROR
    assert mb.last_error is not None and "length field" in mb.last_error


def test_error_when_response_exceeds_mailbox() -> None:
    mb = DoeMailbox(max_object_dw=4)
    mb.register(1, 1, lambda req: bytes(12))
    feed(mb, dws(build_object(P(1, 1), b"")))
    mb.go()
    assert mb.state is MailboxState.ERROR
    assert mb.last_error is not None and "response" in mb.last_error


def test_error_when_handler_raises() -> None:
    mb = DoeMailbox()

    def broken(_req: bytes) -> bytes:
        raise RuntimeError("boom")

    mb.register(1, 1, broken)
    feed(mb, dws(build_object(P(1, 1), b"\x10\x84\x00\x00")))
    mb.go()
    assert mb.status & STATUS_ERROR
    assert mb.last_error is not None and "boom" in mb.last_error


def test_discovery_index_out_of_range_is_an_error() -> None:
    mb = DoeMailbox()
    feed(mb, dws(build_object(P(1, 0), bytes([5, 2, 0, 0]))))
    mb.go()
    assert mb.state is MailboxState.ERROR


def test_go_computes_response_immediately_busy_never_set() -> None:
    mb = DoeMailbox()
    feed(mb, dws(build_object(P(1, 0), bytes([0, 2, 0, 0]))))
    assert mb.status == 0
    mb.go()
    assert mb.status == STATUS_DATA_OBJECT_READY


def test_abort_and_go_in_one_write_aborts(doe: LinuxDoe) -> None:
    doe.wr(DOE_WRITE, 0x0000_0001)
    doe.wr(DOE_WRITE, 3)
    doe.wr(DOE_WRITE, 0x200)
    doe.wr(DOE_CTRL, CTRL_GO | CTRL_ABORT)
    assert doe.rd(DOE_STATUS) == 0


def test_interrupt_on_completion_when_enabled(
    endpoint: TeeIoEndpoint, doe: LinuxDoe, irq: FakeIrqSink
) -> None:
    doe.exchange(1, 0, [0x200])
    assert irq.triggered == []  # INT_EN clear: polling only, like Linux
    doe.wr(DOE_CTRL, CTRL_INT_EN)
    assert doe.rd(DOE_CTRL) == CTRL_INT_EN  # GO/ABORT read 0, INT_EN reads back
    doe.ctrl_bits = CTRL_INT_EN  # GO writes must keep INT_EN set: it is an RW bit
    doe.send(1, 0, [0x200])
    assert irq.triggered == [(IrqIndex.MSIX, 0)]
    assert doe.rd(DOE_STATUS) == STATUS_DATA_OBJECT_READY | STATUS_INT_STATUS
    doe.recv(1, 0)
    # INT_STATUS is RW1C and no second interrupt fires while it is pending
    doe.send(1, 0, [0x201])
    assert len(irq.triggered) == 1
    doe.recv(1, 0)
    doe.wr(DOE_STATUS, STATUS_INT_STATUS)
    assert doe.rd(DOE_STATUS) == 0
    doe.wr(DOE_CTRL, CTRL_GO | CTRL_INT_EN)  # empty GO -> ERROR, also interrupts
    assert irq.triggered == [(IrqIndex.MSIX, 0), (IrqIndex.MSIX, 0)]
    assert endpoint.regs.irq_count == 2


def test_interrupt_uses_profile_vector() -> None:
    from tests.helpers.fakes import FakeDma
    from vdev.profiles import DeviceProfile

    ep = TeeIoEndpoint(DeviceProfile(doe_interrupt_vector=3))
    sink = FakeIrqSink()
    ep.attach(sink, FakeDma())
    doe = LinuxDoe(Cfg(ep), ep.doe_cap.offset)
    assert doe.rd(0x04) == 0x1 | (3 << 1)
    doe.ctrl_bits = CTRL_INT_EN
    doe.wr(DOE_CTRL, CTRL_INT_EN)
    doe.send(1, 0, [0x200])
    assert sink.triggered == [(IrqIndex.MSIX, 3)]


def test_byte_write_to_control_keeps_int_en() -> None:
    ep = TeeIoEndpoint()
    cfg = Cfg(ep)
    base = ep.doe_cap.offset
    cfg.write(base + DOE_CTRL, CTRL_INT_EN)
    cfg.write(base + DOE_CTRL + 3, 0x80, 1)  # GO via a byte write to bits 31:24
    assert ep.doe.int_en
    assert ep.doe.state is MailboxState.ERROR  # GO with nothing written


# ---- the transition table -------------------------------------------------------


def test_transition_table_is_explicit_and_abort_always_idles() -> None:
    for state in MailboxState:
        assert TRANSITIONS[(state, MailboxEvent.ABORT)] is MailboxState.IDLE
        assert (state, MailboxEvent.WRITE_DW) in TRANSITIONS
        assert (state, MailboxEvent.GO_REJECTED) in TRANSITIONS
        assert (state, MailboxEvent.READ_ADVANCE) in TRANSITIONS
    # only ABORT leaves ERROR
    leaving_error = {
        e for (s, e), t in TRANSITIONS.items() if s is MailboxState.ERROR and t is not s
    }
    assert leaving_error == {MailboxEvent.ABORT}
    # only a successful GO (at once, or once a held response is completed) reaches
    # READY, only the last read ack leaves it normally
    assert {k for k, t in TRANSITIONS.items() if t is MailboxState.READY} == {
        (MailboxState.RECEIVING, MailboxEvent.GO_ACCEPTED),
        (MailboxState.BUSY, MailboxEvent.RESPONSE_READY),
        (MailboxState.READY, MailboxEvent.READ_ADVANCE),
    }
    # BUSY is entered only by a held-back GO
    assert {k for k, t in TRANSITIONS.items() if t is MailboxState.BUSY} == {
        (MailboxState.RECEIVING, MailboxEvent.GO_DEFERRED),
        (MailboxState.BUSY, MailboxEvent.READ_ADVANCE),
    }


ACTIONS = {
    "write": lambda mb: mb.write_mailbox(0x0000_0001),
    "write_len3": lambda mb: mb.write_mailbox(3),
    "write_idx": lambda mb: mb.write_mailbox(0x200),
    "go": lambda mb: mb.go(),
    "ack": lambda mb: mb.advance(),
    "abort": lambda mb: mb.abort(),
}


@pytest.mark.parametrize("sequence", list(itertools.product(ACTIONS, repeat=4)))
def test_every_action_sequence_stays_in_the_table(sequence: tuple[str, ...]) -> None:
    mb = DoeMailbox(max_object_dw=3)
    for name in sequence:
        before = mb.state
        ACTIONS[name](mb)
        assert any(k[0] is before and v is mb.state for k, v in TRANSITIONS.items())
        status = mb.status
        assert bool(status & STATUS_ERROR) == (mb.state is MailboxState.ERROR)
        assert bool(status & STATUS_DATA_OBJECT_READY) == (mb.state is MailboxState.READY)


def test_register_api_rejects_bad_registrations() -> None:
    mb = DoeMailbox()
    with pytest.raises(ValueError):
        mb.register(1, 0, lambda r: r)
    with pytest.raises(ValueError):
        mb.register(0x10000, 1, lambda r: r)
    with pytest.raises(ValueError):
        DoeMailbox(max_object_dw=2)
