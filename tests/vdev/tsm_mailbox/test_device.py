"""The TSM mailbox device model in-process: identity, the operation flow with a
scripted backend answered by the endpoint's DOE handler, and every guest
mistake ending in STATUS=ERROR with the device still usable afterwards."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from tdisp.codes import TdiState
from tests.helpers.mailbox_driver import MailboxDriver
from tsm.mailbox_protocol import Action, DoeRequest, Done, Op, TargetFunction
from vdev.endpoint.function import spdm_unsupported_placeholder
from vdev.pci.device_api import DmaAccess, IrqIndex, RegionIndex
from vdev.pci.pcie_cap import DEVCAP_TEE
from vdev.tsm_mailbox.backend import (
    EchoBackend,
    FailingBackend,
    Script,
    ScriptedBackend,
    load_scripts,
)
from vdev.tsm_mailbox.device import TsmMailboxDevice
from vdev.tsm_mailbox.protocol import (
    BAR0_SIZE,
    DOORBELL_RING,
    ID_MAGIC,
    IN_WINDOW,
    IRQ_CTRL_COMPLETION,
    MAILBOX_CLASS_CODE,
    MAILBOX_DEVICE_ID,
    MAILBOX_VENDOR_ID,
    OUT_WINDOW,
    REASON_MAX,
    REG_COMPLETIONS,
    REG_DOORBELL,
    REG_ID,
    REG_IN_LEN,
    REG_IRQ_CTRL,
    REG_STATUS,
    REG_TDI_STATE,
    REG_WINDOW_SIZE,
    TDI_STATE_UNKNOWN,
    WINDOW_SIZE,
    ErrorCode,
    Status,
    pack_target,
    unpack_target,
)

GET_VERSION = bytes.fromhex("10840000")
GET_CAPABILITIES = bytes.fromhex("11e10000" "00000000" "00000000")
CONNECT_SCRIPT = Script(
    (DoeRequest(1, GET_VERSION), DoeRequest(1, GET_CAPABILITIES)),
    Done(0, "scripted connect ok", b""),
)
FAIL_SCRIPT = Script((DoeRequest(1, GET_VERSION),),
                     Done(-errno.EACCES, "certificate chain not trusted"))


class Irqs:
    def __init__(self) -> None:
        self.fired: list[tuple[int, int]] = []

    def trigger(self, index: int, vector: int) -> None:
        self.fired.append((index, vector))


class NoDma:
    def read(self, addr: int, length: int) -> bytes:
        raise AssertionError("the mailbox does no DMA")

    def write(self, addr: int, data: bytes) -> None:
        raise AssertionError("the mailbox does no DMA")


def endpoint_doe(doe_type: int, payload: bytes) -> bytes:
    """The endpoint's current SPDM handler stands in for the DOE exchange."""
    assert doe_type in (1, 2)
    return spdm_unsupported_placeholder(payload)


def make(backend: object | None = None,
         defer: Callable[[Callable[[], None]], None] | None = None,
         ) -> tuple[TsmMailboxDevice, MailboxDriver, Irqs]:
    be = backend if backend is not None else ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev = TsmMailboxDevice(be, defer=defer)  # type: ignore[arg-type]
    irqs = Irqs()
    nodma: DmaAccess = NoDma()
    dev.attach(irqs, nodma)
    drv = MailboxDriver(lambda o, n: dev.region_read(RegionIndex.BAR0, o, n),
                        lambda o, d: dev.region_write(RegionIndex.BAR0, o, d))
    return dev, drv, irqs


def assert_still_works(drv: MailboxDriver, dev: TsmMailboxDevice) -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev.backend = backend
    out = drv.run(Op.CONNECT, endpoint_doe)
    assert out.status == Status.DONE and out.result == 0, out
    assert len(backend.exchanges) == 2


# ---- identity ------------------------------------------------------------------


def test_identity_plain_endpoint_without_tee_ide_or_doe() -> None:
    dev, drv, _ = make()
    cfg = dev.config
    assert cfg.read_int(0, 2) == MAILBOX_VENDOR_ID and cfg.read_int(2, 2) == MAILBOX_DEVICE_ID
    assert cfg.read_int(8, 4) >> 8 == MAILBOX_CLASS_CODE
    pcie = cfg.find_capability(0x10)
    assert pcie is not None
    assert cfg.read_int(pcie + 4, 4) & DEVCAP_TEE == 0  # never a PCI/TSM PF0
    assert (cfg.read_int(pcie + 2, 2) >> 4) & 0xF == 0  # Endpoint
    assert cfg.find_capability(0x11) is not None  # MSI-X
    assert cfg.find_ext_capability(0x30) is None  # no IDE
    assert cfg.find_ext_capability(0x2E) is None  # no DOE
    assert cfg.find_ext_capability(0x03) == 0x100  # DSN keeps the config space PCIe
    sizes = {r.index: r.size for r in dev.regions()}
    assert sizes[RegionIndex.BAR0] == BAR0_SIZE and sizes[RegionIndex.CONFIG] == 4096
    assert dev.irq_count(IrqIndex.MSIX) == 1 and dev.irq_count(IrqIndex.INTX) == 0
    assert drv.rd32(REG_ID) == ID_MAGIC and drv.rd32(REG_WINDOW_SIZE) == WINDOW_SIZE
    assert drv.rd32(REG_STATUS) == Status.IDLE


def test_target_encoding_round_trips() -> None:
    value = pack_target(0x1234, 0x56, 0x78)
    assert value == 0x1234_5678
    assert unpack_target(value) == (0x1234, 0x56, 0x78)


# ---- happy paths -----------------------------------------------------------------


def test_connect_relays_scripted_requests_and_records_responses() -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev, drv, irqs = make(backend)
    drv.wr32(REG_IRQ_CTRL, IRQ_CTRL_COMPLETION)
    assert drv.start(Op.CONNECT, segment=0, bus=1, devfn=0) == Status.DOE_REQUEST
    assert drv.request() == (1, GET_VERSION)
    assert drv.respond(endpoint_doe(1, GET_VERSION)) == Status.DOE_REQUEST
    assert drv.request() == (1, GET_CAPABILITIES)
    assert drv.respond(endpoint_doe(1, GET_CAPABILITIES)) == Status.DONE
    out = drv.outcome()
    assert (out.result, out.reason, out.data) == (0, "scripted connect ok", b"")
    assert [e.response for e in backend.exchanges] == [
        bytes.fromhex("107f0784"), bytes.fromhex("117f07e1")]
    assert all(e.target == TargetFunction(0, 1, 0) for e in backend.exchanges)
    assert irqs.fired == [(IrqIndex.MSIX, 0)] * 3  # one per completion
    assert drv.rd32(REG_COMPLETIONS) == 3


def test_no_interrupt_unless_enabled_polling_works() -> None:
    _, drv, irqs = make()
    assert drv.run(Op.CONNECT, endpoint_doe).result == 0
    assert irqs.fired == []


def test_done_failure_carries_errno_and_reason() -> None:
    backend = ScriptedBackend({Op.CONNECT: [FAIL_SCRIPT]})
    _, drv, _ = make(backend)
    out = drv.run(Op.CONNECT, endpoint_doe)
    assert out.status == Status.DONE
    assert out.result == -errno.EACCES and out.reason == "certificate chain not trusted"


def test_the_log_line_of_a_finished_operation(caplog: pytest.LogCaptureFixture) -> None:
    """"done: status 0" when the TSM gave no reason (never "status 0 ()"); a failure names
    its errno."""
    backend = ScriptedBackend({Op.CONNECT: [Script((), Done(0, "")), FAIL_SCRIPT]})
    _, drv, _ = make(backend)
    with caplog.at_level(logging.INFO, logger="vdev.tsm_mailbox.device"):
        drv.run(Op.CONNECT, endpoint_doe)
        drv.run(Op.CONNECT, endpoint_doe)
    done = [r.getMessage() for r in caplog.records if " done: " in r.getMessage()]
    assert done == ["TSM CONNECT 0000:01:00.0 done: status 0",
                    "TSM CONNECT 0000:01:00.0 done: status -13 EACCES (certificate chain "
                    "not trusted)"]


def test_scripts_are_consumed_in_order_and_the_last_repeats() -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT, FAIL_SCRIPT]})
    _, drv, _ = make(backend)
    results = [drv.run(Op.CONNECT, endpoint_doe).result for _ in range(3)]
    assert results == [0, -errno.EACCES, -errno.EACCES]


def test_unscripted_op_is_eopnotsupp() -> None:
    _, drv, _ = make()
    out = drv.run(Op.LOCK, endpoint_doe)
    assert out.status == Status.DONE and out.result == -errno.EOPNOTSUPP


def test_done_data_reaches_the_out_window_and_stale_bytes_are_cleared() -> None:
    backend = ScriptedBackend({
        Op.REPORT: [Script((), Done(0, "report", b"R" * 64))],
        Op.STATUS: [Script((), Done(0, "status", b'{"state":"RUN"}'))],
    })
    dev, drv, _ = make(backend)
    assert drv.run(Op.REPORT, endpoint_doe).data == b"R" * 64
    assert drv.run(Op.STATUS, endpoint_doe).data == b'{"state":"RUN"}'
    assert dev.region_read(RegionIndex.BAR0, OUT_WINDOW + 15, 64) == bytes(64)


def test_tdi_state_register_is_what_the_tsm_says_of_the_tdi() -> None:
    """TDI_STATE (1.2): the TDISP state the backend reports with DONE, failed or not;
    0xFF when it does not say (not a TDI operation, or unknown)."""
    backend = ScriptedBackend({
        Op.CONNECT: [CONNECT_SCRIPT],
        Op.LOCK: [Script((), Done(0, "locked", tdi_state=TdiState.CONFIG_LOCKED))],
        Op.START: [Script((), Done(-errno.EACCES, "refused", tdi_state=TdiState.ERROR))],
        Op.STOP: [Script((), Done(0, "stopped"))],
    })
    dev, drv, _ = make(backend)
    assert drv.rd32(REG_TDI_STATE) == TDI_STATE_UNKNOWN == 0xFF
    assert drv.run(Op.LOCK, endpoint_doe).tdi_state == 1
    out = drv.run(Op.START, endpoint_doe)
    assert (out.result, out.tdi_state) == (-errno.EACCES, 3)
    assert drv.run(Op.STOP, endpoint_doe).tdi_state == 0xFF
    assert drv.run(Op.CONNECT, endpoint_doe).tdi_state == 0xFF
    drv.wr32(REG_TDI_STATE, 2)  # read-only
    assert drv.rd32(REG_TDI_STATE) == 0xFF


def test_transport_error_ends_the_operation_with_that_errno() -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    _, drv, _ = make(backend)
    assert drv.start(Op.CONNECT) == Status.DOE_REQUEST
    assert drv.respond(b"", rc=-errno.ETIMEDOUT) == Status.DONE
    assert drv.outcome().result == -errno.ETIMEDOUT
    assert backend.exchanges[0].rc == -errno.ETIMEDOUT


def test_echo_backend_returns_the_response_as_data() -> None:
    _, drv, _ = make(EchoBackend(DoeRequest(1, GET_VERSION)))
    assert drv.run(Op.STATUS, endpoint_doe).data == bytes.fromhex("107f0784")


def test_full_size_doe_object_fits_the_windows() -> None:
    big = bytes(range(256)) * ((WINDOW_SIZE - 8) // 256)
    backend = EchoBackend(DoeRequest(2, big))
    _, drv, _ = make(backend)
    out = drv.run(Op.STATUS, lambda t, p: p[::-1])
    assert out.data == big[::-1]


def test_reason_is_clipped_to_the_reason_area() -> None:
    backend = ScriptedBackend({Op.CONNECT: [Script((), Done(-errno.EIO, "é" * 300))]})
    _, drv, _ = make(backend)
    out = drv.run(Op.CONNECT, endpoint_doe)
    assert out.reason == "é" * (REASON_MAX // 2)


# ---- guest mistakes --------------------------------------------------------------


def test_bad_op() -> None:
    dev, drv, _ = make()
    assert drv.ring(0x55) == Status.ERROR
    assert drv.outcome().error == ErrorCode.BAD_OP and "0x55" in drv.outcome().reason
    assert_still_works(drv, dev)


def test_in_len_larger_than_the_window() -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev, drv, _ = make(backend)
    assert drv.start(Op.CONNECT) == Status.DOE_REQUEST
    drv.wr32(REG_IN_LEN, WINDOW_SIZE + 1)
    assert drv.ring(Op.DOE_RESPONSE) == Status.ERROR
    assert drv.outcome().error == ErrorCode.BAD_LENGTH
    assert backend.aborted == 1  # the operation in flight was dropped
    assert_still_works(drv, dev)


@pytest.mark.parametrize("before", ["idle", "done", "error"])
def test_response_when_none_was_requested(before: str) -> None:
    dev, drv, _ = make()
    if before == "done":
        drv.run(Op.CONNECT, endpoint_doe)
    elif before == "error":
        drv.ring(0x77)
    assert drv.respond(b"\x01\x02\x03\x04") == Status.ERROR
    assert drv.outcome().error == ErrorCode.OUT_OF_ORDER
    assert_still_works(drv, dev)


def test_new_operation_while_a_doe_response_is_awaited() -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev, drv, _ = make(backend)
    assert drv.start(Op.CONNECT) == Status.DOE_REQUEST
    assert drv.start(Op.DISCONNECT) == Status.ERROR
    assert drv.outcome().error == ErrorCode.OUT_OF_ORDER
    assert backend.aborted == 1
    assert_still_works(drv, dev)


def test_doorbell_while_busy() -> None:
    pending: list[Callable[[], None]] = []
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev, drv, irqs = make(backend, defer=pending.append)
    drv.wr32(REG_IRQ_CTRL, IRQ_CTRL_COMPLETION)
    assert drv.start(Op.CONNECT, wait=False) == Status.BUSY
    assert drv.start(Op.CONNECT, wait=False) == Status.ERROR
    assert drv.outcome().error == ErrorCode.BUSY
    for step in pending:  # the dropped step must not resurrect the operation
        step()
    pending.clear()
    assert drv.rd32(REG_STATUS) == Status.ERROR
    assert irqs.fired == [(IrqIndex.MSIX, 0)]  # only the ERROR completed
    assert drv.start(Op.CONNECT, wait=False) == Status.BUSY
    pending.pop()()
    assert drv.rd32(REG_STATUS) == Status.DOE_REQUEST
    assert len(irqs.fired) == 2


@pytest.mark.parametrize("data", [b"\x02\x00\x00\x00", b"\x01", b"\x01\x00"])
def test_bad_or_partial_doorbell(data: bytes) -> None:
    dev, drv, _ = make()
    drv.wr32(0x10, Op.CONNECT)
    dev.region_write(RegionIndex.BAR0, REG_DOORBELL, data)
    assert drv.rd32(REG_STATUS) == Status.ERROR
    assert drv.outcome().error == ErrorCode.BAD_DOORBELL
    assert_still_works(drv, dev)


def test_abort_returns_to_idle_from_anywhere() -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev, drv, _ = make(backend)
    assert drv.start(Op.CONNECT) == Status.DOE_REQUEST
    assert drv.ring(Op.ABORT) == Status.IDLE
    assert backend.aborted == 1
    assert drv.ring(Op.ABORT) == Status.IDLE
    assert_still_works(drv, dev)


def test_writes_to_read_only_areas_and_unmapped_space_are_ignored() -> None:
    dev, drv, _ = make()
    for off in (REG_STATUS, 0x100, OUT_WINDOW, 0x2000, 0x3000, BAR0_SIZE - 4):
        dev.region_write(RegionIndex.BAR0, off, b"\xff\xff\xff\xff")
    assert drv.rd32(REG_STATUS) == Status.IDLE
    assert dev.region_read(RegionIndex.BAR0, 0x3000, 8) == bytes(8)
    assert dev.region_read(RegionIndex.BAR0, OUT_WINDOW, 4) == bytes(4)
    dev.region_write(RegionIndex.BAR0, IN_WINDOW + WINDOW_SIZE - 2, b"abcd")  # clipped
    assert dev.region_read(RegionIndex.BAR0, IN_WINDOW + WINDOW_SIZE - 2, 4) == b"ab\0\0"
    assert_still_works(drv, dev)


# ---- backend failures, reset, client loss ------------------------------------------


def test_backend_exception_is_done_eio_not_a_crash() -> None:
    dev, drv, _ = make(FailingBackend())
    out = drv.run(Op.CONNECT, endpoint_doe)
    assert out.status == Status.DONE and out.result == -errno.EIO
    assert "RuntimeError" in out.reason
    assert_still_works(drv, dev)


class BadActions:
    def __init__(self, action: object) -> None:
        self.action = action

    def start(self, op: Op, target: TargetFunction) -> Action:
        return self.action  # type: ignore[return-value]

    def doe_response(self, payload: bytes) -> Action:
        raise AssertionError

    def transport_error(self, error: int) -> Action:
        raise AssertionError

    def abort(self) -> None:
        pass


@pytest.mark.parametrize("action", [
    DoeRequest(256, b"x"), DoeRequest(1, bytes(WINDOW_SIZE)), Done(5, "positive"),
    Done(-5000, "huge"), Done(0, "big", bytes(WINDOW_SIZE + 1)), "nonsense",
])
def test_invalid_backend_actions_become_errors(action: object) -> None:
    _, drv, _ = make(BadActions(action))
    out = drv.run(Op.CONNECT, endpoint_doe)
    assert out.status == Status.DONE and out.result in (-errno.EIO, -errno.E2BIG)


def test_flr_mid_operation_drops_it() -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev, drv, _ = make(backend)
    drv.wr32(REG_IRQ_CTRL, IRQ_CTRL_COMPLETION)
    assert drv.start(Op.CONNECT) == Status.DOE_REQUEST
    pcie = dev.config.find_capability(0x10)
    assert pcie is not None
    dev.config.write_int(pcie + 8, 2, 1 << 15)  # DEVCTL Initiate FLR
    assert drv.rd32(REG_STATUS) == Status.IDLE and drv.rd32(REG_IRQ_CTRL) == 0
    assert backend.aborted == 1
    assert_still_works(drv, dev)


def test_detach_mid_operation_drops_it() -> None:
    backend = ScriptedBackend({Op.CONNECT: [CONNECT_SCRIPT]})
    dev, drv, _ = make(backend)
    assert drv.start(Op.CONNECT) == Status.DOE_REQUEST
    dev.detach()
    assert backend.aborted == 1 and drv.rd32(REG_STATUS) == Status.IDLE
    assert_still_works(drv, dev)


# ---- script files ---------------------------------------------------------------------


def test_load_scripts(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps({
        "connect": [{"requests": [{"type": 1, "hex": "10840000"}],
                     "done": {"status": 0, "reason": "ok"}},
                    {"done": {"status": -13, "reason": "no"}}],
        "report": {"done": {"status": 0, "reason": "r", "data_text": "REPORT"}},
    }))
    scripts = load_scripts(f)
    assert scripts[Op.CONNECT][0].requests == (DoeRequest(1, GET_VERSION),)
    assert scripts[Op.CONNECT][1].done == Done(-13, "no")
    assert scripts[Op.REPORT][0].done.value == b"REPORT"
    f.write_text(json.dumps({"start": {"done": {"status": -5, "tdi_state": "ERROR"}}}))
    assert load_scripts(f)[Op.START][0].done.tdi_state == TdiState.ERROR
    f.write_text(json.dumps({"start": {"done": {"tdi_state": "LOCKED"}}}))
    with pytest.raises(ValueError, match="tdi_state 'LOCKED' is not one of CONFIG_UNLOCKED"):
        load_scripts(f)
    f.write_text(json.dumps({"frobnicate": []}))
    with pytest.raises(ValueError, match="unknown operation"):
        load_scripts(f)
    f.write_text(json.dumps({"doe_response": []}))
    with pytest.raises(ValueError, match="not a TSM operation"):
        load_scripts(f)


def test_doorbell_constant_is_one() -> None:
    assert DOORBELL_RING == 1


def test_responder_delay_keeps_the_mailbox_busy_until_it_passes() -> None:
    later: list[tuple[float, Callable[[], None]]] = []
    backend = ScriptedBackend({Op.CONNECT: [Script(
        (DoeRequest(1, GET_VERSION, delay_us=250_000),), Done(0, "ok"))]})
    dev = TsmMailboxDevice(backend, defer_later=lambda s, f: later.append((s, f)))
    drv = MailboxDriver(lambda o, n: dev.region_read(RegionIndex.BAR0, o, n),
                        lambda o, d: dev.region_write(RegionIndex.BAR0, o, d))
    assert drv.start(Op.CONNECT, wait=False) == Status.BUSY
    assert [s for s, _ in later] == [0.25]
    later.pop()[1]()
    assert drv.rd32(REG_STATUS) == Status.DOE_REQUEST and drv.request() == (1, GET_VERSION)
    # An abort during the delay drops the held request.
    assert drv.respond(endpoint_doe(1, GET_VERSION)) == Status.DONE
    assert drv.start(Op.CONNECT, wait=False) == Status.BUSY
    assert drv.ring(Op.ABORT) == Status.IDLE
    later.pop()[1]()
    assert drv.rd32(REG_STATUS) == Status.IDLE
