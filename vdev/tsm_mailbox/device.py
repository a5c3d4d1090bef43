"""The TSM mailbox PCI function, behind `VfioUserDevice`.

A plain PCIe endpoint: no DEVCAP TEE bit, no IDE and no DOE capability, so
the guest's PCI/TSM core never treats it as a PF0 (docs/linux-pci-tsm.md §2,
"the parent hazard": vtsm parents its tsm0 class device here).

  config 0x000  Type 0 header, BAR0 64-bit MMIO 4 MiB (protocol.py register map)
         0x040  PCI Express capability v2, Endpoint, FLR, DEVCAP TEE clear
         0x07C  Power Management
         0x084  MSI-X, one vector (completion), table/PBA in BAR0
         0x100  Device Serial Number extended capability (a config space
                needs one extended capability for QEMU to see it as PCIe)

The operation state machine is the `_ACCEPTS` table below: which doorbell
event each status accepts.  Everything else is a guest mistake that ends the
operation in flight with STATUS=ERROR and a log line; the device never
raises into the vfio-user server because of what a guest wrote.
"""

from __future__ import annotations

import enum
import errno
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from tsm.mailbox_protocol import (
    TSM_OPS,
    Action,
    DoeRequest,
    Done,
    LockBar,
    LockDataError,
    Op,
    TargetFunction,
    TsmBackend,
    done_data,
    parse_lock_bars,
)
from vdev.pci.bar import MemoryBar
from vdev.pci.capability import ExtCapability
from vdev.pci.config_space import CONFIG_SPACE_SIZE, ConfigSpace
from vdev.pci.device_api import DmaAccess, IrqIndex, IrqSink, RegionIndex, RegionInfo
from vdev.pci.header import HeaderIdentity, Type0Header
from vdev.pci.msix_cap import MsixCap
from vdev.pci.pcie_cap import PcieCap
from vdev.pci.pm_cap import PowerManagementCap
from vdev.pci.register import Register, RegisterFile
from vdev.tsm_mailbox.protocol import (
    BAR0_SIZE,
    COMPLETION_VECTOR,
    DOORBELL_RING,
    ID_MAGIC,
    IN_WINDOW,
    IRQ_CTRL_COMPLETION,
    LOCK_DATA_ERRORS,
    MAILBOX_CLASS_CODE,
    MAILBOX_DEVICE_ID,
    MAILBOX_REVISION,
    MAILBOX_VENDOR_ID,
    MSIX_PBA_OFFSET,
    MSIX_TABLE_OFFSET,
    MSIX_VECTORS,
    OUT_WINDOW,
    PROTOCOL_VERSION,
    REASON_MAX,
    REASON_OFFSET,
    REG_COMPLETIONS,
    REG_DOORBELL,
    REG_ERROR,
    REG_ID,
    REG_IN_LEN,
    REG_IN_RC,
    REG_IRQ_CTRL,
    REG_OP,
    REG_OUT_LEN,
    REG_OUT_TYPE,
    REG_REASON_LEN,
    REG_REASON_MAX,
    REG_RESULT,
    REG_STATUS,
    REG_TARGET,
    REG_TDI_STATE,
    REG_VERSION,
    REG_WINDOW_SIZE,
    TDI_STATE_UNKNOWN,
    WINDOW_SIZE,
    ErrorCode,
    Status,
    to_s32,
    unpack_target,
)

log = logging.getLogger(__name__)

Defer = Callable[[Callable[[], None]], None]
"""Runs a backend step later (e.g. `loop.call_soon`); None runs it inline."""

DeferLater = Callable[[float, Callable[[], None]], None]
"""Runs a callable after some seconds (e.g. `loop.call_later`); None: no waiting."""

Offload = Callable[[Callable[[], Any], Callable[[Any], None]], None]
"""`offload(call, then)`: runs `call` away from the event loop, one call at a time in
submission order, then `then(result)` on the event loop.  Every backend call goes
through it when set, so a backend that blocks (e.g. on QEMU's QMP, which QEMU cannot
serve while a vCPU waits for this very server) never stalls the mailbox: the guest
keeps reading STATUS=BUSY meanwhile."""

MAX_DELAY_US = 5_000_000  # longer than any sane RDT; the guest's step timeout is 10 s

EXT_CAP_ID_DSN = 0x0003
REGISTERS_END = REASON_OFFSET  # RegisterFile covers 0x000..0x0FF
DOE_MAX_PAYLOAD = WINDOW_SIZE - 8  # 2^18 DW object minus the 2-DW header (§6.30.1)
MAX_ERRNO = 4095  # Linux IS_ERR_VALUE range: -4095..-1


class Event(enum.Enum):
    START = "start a TSM operation"
    RESPONSE = "post a DOE response"


# Which doorbell event each status accepts (an h11-style transition table).
# ABORT is accepted everywhere; BUSY accepts nothing.
_ACCEPTS: dict[Status, frozenset[Event]] = {
    Status.IDLE: frozenset({Event.START}),
    Status.BUSY: frozenset(),
    Status.DOE_REQUEST: frozenset({Event.RESPONSE}),
    Status.DONE: frozenset({Event.START}),
    Status.ERROR: frozenset({Event.START}),
}


class DsnCap(ExtCapability):
    """Device Serial Number, ID 0x0003 v1 (PCIe r6.0 §7.9.3): a fixed 64-bit serial."""

    cap_id = EXT_CAP_ID_DSN
    version = 1
    name = "DSN"

    def __init__(self, serial: int) -> None:
        super().__init__()
        self.serial = serial

    @property
    def size(self) -> int:
        return 12

    def body_registers(self, base: int) -> list[Register]:
        return [
            Register("DSN_LO", base + 4, 4, reset=self.serial & 0xFFFF_FFFF),
            Register("DSN_HI", base + 8, 4, reset=self.serial >> 32),
        ]


def _outcome(done: Done) -> str:
    """How an operation ended, for the log: "status 0", "status -13 EACCES (reason)"."""
    status = f"status {done.errno}"
    if not done.ok:
        status += f" {errno.errorcode.get(-done.errno, '?')}"
    return f"{status} ({done.reason})" if done.reason else status


def _clip_reason(text: str) -> bytes:
    """UTF-8 reason, cut to REASON_MAX bytes on a character boundary, one line."""
    raw = " ".join(text.split()).encode()
    return raw[:REASON_MAX].decode(errors="ignore").encode()


class TsmMailboxDevice:
    """The platform TSM's mailbox function; `backend` makes every TSM decision."""

    def __init__(self, backend: TsmBackend, defer: Defer | None = None,
                 serial: int = 0x5654_534D_0000_0001,
                 defer_later: DeferLater | None = None,
                 offload: Offload | None = None) -> None:
        self.backend = backend
        self.defer = defer
        self.defer_later = defer_later
        self.offload = offload
        self._irq: IrqSink | None = None
        self._dma: DmaAccess | None = None
        self._in = bytearray(WINDOW_SIZE)
        self._out = bytearray(WINDOW_SIZE)
        self._reason = b""
        self._generation = 0  # bumps whenever a pending step must be dropped
        self._op: Op | None = None  # TSM operation in flight
        self._target: TargetFunction | None = None
        self.completions = 0
        self.errors = 0

        self.msix = MsixCap(MSIX_VECTORS, bir=0, table_offset=MSIX_TABLE_OFFSET,
                            pba_offset=MSIX_PBA_OFFSET)
        self.pcie = PcieCap(tee_io=False, on_flr=self.function_level_reset)
        self.header = Type0Header(
            HeaderIdentity(MAILBOX_VENDOR_ID, MAILBOX_DEVICE_ID, MAILBOX_VENDOR_ID,
                           MAILBOX_DEVICE_ID, MAILBOX_CLASS_CODE, MAILBOX_REVISION),
            [MemoryBar(0, BAR0_SIZE, is_64bit=True, prefetchable=False)],
        )
        self.config = ConfigSpace(self.header, [self.pcie, PowerManagementCap(), self.msix],
                                  [DsnCap(serial)])
        self.regs = RegisterFile(REGISTERS_END, "tsm-mailbox")
        self._status = self._ro("STATUS", REG_STATUS)
        self._out_type = self._ro("OUT_TYPE", REG_OUT_TYPE)
        self._out_len = self._ro("OUT_LEN", REG_OUT_LEN)
        self._result = self._ro("RESULT", REG_RESULT)
        self._error = self._ro("ERROR", REG_ERROR)
        self._reason_len = self._ro("REASON_LEN", REG_REASON_LEN)
        self._tdi_state = Register("TDI_STATE", REG_TDI_STATE, 4, reset=TDI_STATE_UNKNOWN)
        self._op_reg = Register("OP", REG_OP, 4, rw=0xFFFF_FFFF)
        self._target_reg = Register("TARGET", REG_TARGET, 4, rw=0xFFFF_FFFF)
        self._in_len = Register("IN_LEN", REG_IN_LEN, 4, rw=0xFFFF_FFFF)
        self._in_rc = Register("IN_RC", REG_IN_RC, 4, rw=0xFFFF_FFFF)
        self._irq_ctrl = Register("IRQ_CTRL", REG_IRQ_CTRL, 4, rw=IRQ_CTRL_COMPLETION)
        self.regs.add_all([
            Register("ID", REG_ID, 4, reset=ID_MAGIC),
            Register("VERSION", REG_VERSION, 4, reset=PROTOCOL_VERSION),
            Register("WINDOW_SIZE", REG_WINDOW_SIZE, 4, reset=WINDOW_SIZE),
            Register("REASON_MAX", REG_REASON_MAX, 4, reset=REASON_MAX),
            self._op_reg, self._target_reg, self._in_len, self._in_rc,
            Register("DOORBELL", REG_DOORBELL, 4, on_write=self._doorbell),
            self._status, self._out_type, self._out_len, self._result, self._error,
            self._reason_len, self._irq_ctrl, self._tdi_state,
            Register("COMPLETIONS", REG_COMPLETIONS, 4, on_read=lambda: self.completions),
        ])

    def _ro(self, name: str, offset: int) -> Register:
        """A register only the device sets (software writes are ignored)."""
        return Register(name, offset, 4)

    # ---- state ---------------------------------------------------------------

    @property
    def status(self) -> Status:
        return Status(self._status.value)

    @property
    def out_payload(self) -> bytes:
        return bytes(self._out[: self._out_len.value])

    @property
    def reason(self) -> str:
        return self._reason.decode(errors="replace")

    # ---- doorbell --------------------------------------------------------------

    def _doorbell(self, value: int, byte_enable: int) -> None:
        # Every doorbell consumes IN_LEN (protocol.py): a 1.0 driver never leaves
        # the length of its last DOE response behind for a LOCK.
        length, self._in_len.value = self._in_len.value, 0
        if byte_enable != 0xFFFF_FFFF or value != DOORBELL_RING:
            self._fail(ErrorCode.BAD_DOORBELL, f"doorbell written with {value:#x}/{byte_enable:#x}")
            return
        raw_op = self._op_reg.value
        if raw_op == Op.ABORT:
            self._abort_by_guest()
            return
        try:
            op = Op(raw_op)
        except ValueError:
            self._fail(ErrorCode.BAD_OP, f"unknown operation {raw_op:#x}")
            return
        event = Event.START if op in TSM_OPS else Event.RESPONSE
        if event not in _ACCEPTS[self.status]:
            code = ErrorCode.BUSY if self.status == Status.BUSY else ErrorCode.OUT_OF_ORDER
            self._fail(code, f"{op.name} while {self.status.name}")
            return
        if event is Event.START:
            self._start(op, length)
        else:
            self._respond(length)

    def _start(self, op: Op, length: int) -> None:
        bars = self._lock_data(op, length)
        if bars is None:
            return
        seg, bus, devfn = unpack_target(self._target_reg.value)
        target = TargetFunction(seg, bus, devfn)
        self._op, self._target = op, target
        if bars:
            log.info("TSM %s %s, guest BARs %s", op.name, target,
                     ", ".join(f"{b.index}:{b.base:#x}+{b.size:#x}" for b in bars))
            self._step(lambda: self.backend.start(op, target, mmio=bars))
        else:
            log.info("TSM %s %s", op.name, target)
            self._step(lambda: self.backend.start(op, target))

    def _lock_data(self, op: Op, length: int) -> tuple[LockBar, ...] | None:
        """The BAR records a LOCK carries in IN (none with IN_LEN=0), or None after
        failing the doorbell for malformed data or data given to another operation."""
        if not length:
            return ()
        if op is not Op.LOCK:
            self._fail(ErrorCode.BAD_LENGTH, f"{op.name} takes no IN data (IN_LEN {length})")
            return None
        if length > WINDOW_SIZE:
            self._fail(ErrorCode.BAD_LENGTH,
                       f"IN_LEN {length} exceeds the {WINDOW_SIZE}-byte window")
            return None
        try:
            return parse_lock_bars(bytes(self._in[:length]))
        except LockDataError as exc:
            self._fail(LOCK_DATA_ERRORS[type(exc)], str(exc))
            return None

    def _respond(self, length: int) -> None:
        rc = to_s32(self._in_rc.value)
        if length > WINDOW_SIZE:
            self._fail(ErrorCode.BAD_LENGTH,
                       f"IN_LEN {length} exceeds the {WINDOW_SIZE}-byte window")
            return
        if rc < 0:
            log.info("DOE transfer failed in the guest: %d", rc)
            self._step(lambda: self.backend.transport_error(rc))
            return
        payload = bytes(self._in[:length])
        log.debug("DOE response, %d bytes", length)
        self._step(lambda: self.backend.doe_response(payload))

    # ---- one backend step --------------------------------------------------------

    def _step(self, call: Callable[[], Action]) -> None:
        """STATUS=BUSY, then (now or deferred) ask the backend and publish its action."""
        self._status.value = Status.BUSY
        self._generation += 1
        generation = self._generation

        def finish(action: Action) -> None:
            if generation != self._generation:
                return  # dropped while the backend worked
            if isinstance(action, DoeRequest) and action.delay_us and self.defer_later:
                self._publish_later(generation, action)
            else:
                self._publish(action)

        def run() -> None:
            if generation != self._generation:
                return  # dropped by an error, abort or reset meanwhile
            if self.offload is None:
                finish(self._call_backend(call))
            else:
                self.offload(lambda: self._call_backend(call), finish)

        if self.defer is None:
            run()
        else:
            self.defer(run)

    def _publish_later(self, generation: int, request: DoeRequest) -> None:
        """Stay BUSY for the responder's requested delay, then offer the request."""
        assert self.defer_later is not None
        delay = min(request.delay_us, MAX_DELAY_US) / 1e6
        log.debug("DOE request held back %.3f s (responder not ready)", delay)

        def publish() -> None:
            if generation == self._generation:
                self._publish(request)

        self.defer_later(delay, publish)

    def _call_backend(self, call: Callable[[], Action]) -> Action:
        try:
            action = call()
        except Exception as exc:  # a backend bug must not take the device down
            log.error("TSM backend failed during %s: %s: %s",
                      self._op.name if self._op else "?", type(exc).__name__, exc)
            self._backend_abort()
            return Done(-errno.EIO, f"TSM backend failed: {type(exc).__name__}")
        if isinstance(action, DoeRequest):
            if not 0 <= action.doe_type <= 0xFF or len(action.payload) > DOE_MAX_PAYLOAD:
                log.error("TSM backend asked for an invalid DOE request (type %r, %d bytes)",
                          action.doe_type, len(action.payload))
                self._backend_abort()
                return Done(-errno.EIO, "TSM backend produced an invalid DOE request")
            return action
        if isinstance(action, Done):
            return self._checked_done(action)
        log.error("TSM backend returned %r, not an action", type(action).__name__)
        self._backend_abort()
        return Done(-errno.EIO, "TSM backend returned no action")

    def _checked_done(self, done: Done) -> Done:
        if not -MAX_ERRNO <= done.errno <= 0:
            log.error("TSM errno %r is not 0 or a -errno; reporting -EIO", done.errno)
            return replace(done, errno=-errno.EIO)
        if len(done_data(done)) > WINDOW_SIZE:
            return replace(done, errno=-errno.E2BIG, value=None, evidence=None,
                           reason=f"TSM result of {len(done_data(done))} bytes exceeds "
                                  "the window")
        return done

    def _publish(self, action: Action) -> None:
        if isinstance(action, DoeRequest):
            self._set_out(action.payload)
            self._out_type.value = action.doe_type
            self._status.value = Status.DOE_REQUEST
            log.debug("DOE request type %d, %d bytes", action.doe_type, len(action.payload))
        else:
            self._set_out(done_data(action))
            self._result.value = action.errno & 0xFFFF_FFFF
            self._set_reason(action.reason)
            self._tdi_state.value = (TDI_STATE_UNKNOWN if action.tdi_state is None
                                     else int(action.tdi_state))
            self._status.value = Status.DONE
            log.info("TSM %s %s done: %s", self._op.name if self._op else "?",
                     self._target, _outcome(action))
            self._op = None
        self._complete()

    # ---- errors, abort, completion ----------------------------------------------

    def _fail(self, code: ErrorCode, message: str) -> None:
        """A guest mistake: drop the operation in flight, STATUS=ERROR, say why."""
        log.warning("mailbox error %s: %s", code.name, message)
        self.errors += 1
        self._drop_operation()
        self._error.value = code
        self._set_reason(message)
        self._status.value = Status.ERROR
        self._complete()

    def _abort_by_guest(self) -> None:
        if self._op is not None:
            log.info("guest aborted %s %s", self._op.name, self._target)
        self._drop_operation()
        self._status.value = Status.IDLE
        self._complete()

    def _drop_operation(self) -> None:
        self._generation += 1
        if self._op is not None:
            self._op = None
            if self.offload is None:
                self._backend_abort()
            else:  # after the step the backend may still be working on
                self.offload(self._backend_abort, lambda _none: None)

    def _backend_abort(self) -> None:
        try:
            self.backend.abort()
        except Exception as exc:
            log.error("TSM backend failed to abort: %s: %s", type(exc).__name__, exc)

    def _complete(self) -> None:
        self.completions = (self.completions + 1) & 0xFFFF_FFFF
        if self._irq_ctrl.value & IRQ_CTRL_COMPLETION:
            self._raise_completion()

    def _raise_completion(self) -> None:
        if self._irq is None:
            log.debug("completion interrupt with no client attached")
            return
        # QEMU owns MSI-X enable and masking (docs/vfio-user-qemu.md §7).
        self._irq.trigger(IrqIndex.MSIX, COMPLETION_VECTOR)

    def _set_out(self, data: bytes) -> None:
        old = self._out_len.value
        if old > len(data):
            self._out[len(data):old] = bytes(old - len(data))  # no stale bytes after OUT_LEN
        self._out[: len(data)] = data
        self._out_len.value = len(data)

    def _set_reason(self, text: str) -> None:
        self._reason = _clip_reason(text)
        self._reason_len.value = len(self._reason)

    # ---- reset -------------------------------------------------------------------

    def function_level_reset(self) -> None:
        """FLR or device reset: the operation in flight is abandoned, registers reset."""
        log.info("function level reset")
        self._drop_operation()
        self.config.reset()
        self.msix.state.reset()
        self.regs.reset(keep_sticky=False)
        self._set_out(b"")
        self._in[:] = bytes(WINDOW_SIZE)
        self._reason = b""
        self._target = None

    # ---- VfioUserDevice ------------------------------------------------------------

    def regions(self) -> Sequence[RegionInfo]:
        sizes = {RegionIndex.BAR0: BAR0_SIZE, RegionIndex.CONFIG: CONFIG_SPACE_SIZE}
        return [RegionInfo(int(index), sizes.get(index, 0)) for index in RegionIndex]

    def irq_count(self, index: int) -> int:
        return MSIX_VECTORS if index == IrqIndex.MSIX else 0

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        if index == RegionIndex.CONFIG:
            return self.config.read(offset, count)
        if index != RegionIndex.BAR0:
            raise ValueError(f"region {index} is not implemented")
        out = bytearray()
        pos, end = offset, offset + count
        while pos < end:
            stop, chunk = self._read_piece(pos, end)
            out += chunk
            pos = stop
        return bytes(out)

    def _read_piece(self, pos: int, end: int) -> tuple[int, bytes]:
        """Bytes from `pos` up to the end of the area it lies in (or `end`)."""
        for base, size, reader in (
            (0, REGISTERS_END, lambda p, n: self.regs.read(p, n)),
            (REASON_OFFSET, REASON_MAX, lambda p, n: self._reason[p : p + n].ljust(n, b"\0")),
            (MSIX_PBA_OFFSET, self.msix.state.pba_size, self.msix.state.read_pba),
            (IN_WINDOW, WINDOW_SIZE, lambda p, n: bytes(self._in[p : p + n])),
            (OUT_WINDOW, WINDOW_SIZE, lambda p, n: bytes(self._out[p : p + n])),
        ):
            if base <= pos < base + size:
                stop = min(end, base + size)
                return stop, reader(pos - base, stop - pos)
        bounds = [b for b in (REASON_OFFSET, MSIX_PBA_OFFSET, IN_WINDOW, OUT_WINDOW) if b > pos]
        stop = min([end, *bounds])
        return stop, bytes(stop - pos)  # unmapped: reads 0

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == RegionIndex.CONFIG:
            self.config.write(offset, data)
            return
        if index != RegionIndex.BAR0:
            raise ValueError(f"region {index} is not implemented")
        end = offset + len(data)
        if offset < REGISTERS_END:
            self.regs.write(offset, data[: min(end, REGISTERS_END) - offset])
        elif IN_WINDOW <= offset < IN_WINDOW + WINDOW_SIZE:
            stop = min(end, IN_WINDOW + WINDOW_SIZE)
            self._in[offset - IN_WINDOW : stop - IN_WINDOW] = data[: stop - offset]
        # REASON, the PBA and the OUT window are read-only; the MSI-X table is QEMU's.

    def reset(self) -> None:
        self.function_level_reset()

    def attach(self, irq: IrqSink, dma: DmaAccess) -> None:
        self._irq, self._dma = irq, dma

    def detach(self) -> None:
        # The guest is gone: nobody will carry the DOE requests of its operation.
        self._irq = self._dma = None
        if self._op is not None:
            log.info("client went away during %s %s", self._op.name, self._target)
        self._drop_operation()
        self._status.value = Status.IDLE
