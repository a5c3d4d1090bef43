"""The boundary between the platform TSM and the mailbox device that carries it.

The TSM mailbox device (vdev/tsm_mailbox/) is how a guest driver reaches the TSM model;
its register map lives with the device.  What crosses from the device into the TSM and
back is declared here, once, and both sides use these types:

* `Op`: the operations a guest starts (the values of the mailbox's OP register);
* `TargetFunction`: the PCI function an operation is about (the TARGET register);
* `LockBar` and `LockBarRecord`: the TDI's memory BARs a 1.1 guest hands over with LOCK,
  and their layout in the mailbox's IN window;
* `DoeRequest` and `Done`: the two things a step of a TSM operation can produce, "carry
  this DOE object to the device" or "the operation is over";
* `TsmBackend`: the sans-IO interface the device drives one step at a time
  (`tsm.mailbox_backend.OperationBackend` is the TSM model behind it).

    action = backend.start(Op.CONNECT, target)         # LOCK: also mmio=(LockBar, ...)
    while isinstance(action, DoeRequest):
        ... the guest runs the DOE exchange ...
        action = backend.doe_response(payload)        # or transport_error(-errno)
    action is Done(errno, reason, value, evidence, tdi_state)

`Done.errno` is 0 for success, else a negative Linux errno that the guest driver returns
from its PCI/TSM op (e.g. -EACCES for a rejected certificate chain, -EIO for a broken
exchange); `reason` is one human line that ends up in the guest's dmesg and never carries
key material.  `done_data()` is what the mailbox puts in its OUT window with DONE.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from construct import Bytes, GreedyRange, Int8ul, Int64ul, Struct

from tdisp.codes import TdiState
from tsm.errors import TsmError


class Op(enum.IntEnum):
    """The mailbox's OP values: the TSM operations, and the two that continue or end one."""

    CONNECT = 0x01  # SPDM + IDE setup with the DSM at TARGET
    DISCONNECT = 0x02  # tear the connection down
    LOCK = 0x03  # TDISP LOCK_INTERFACE for the TDI at TARGET
    START = 0x04  # TDISP START_INTERFACE
    STOP = 0x05  # TDISP STOP_INTERFACE
    REPORT = 0x06  # interface report; DONE data = the report bytes
    STATUS = 0x07  # TSM view of TARGET; DONE data = JSON text
    DOE_RESPONSE = 0x10  # continue: the guest posts a DOE response
    ABORT = 0x1F  # drop whatever is in flight, back to IDLE


#: Operations that start a TSM operation (the others continue or abort one).
TSM_OPS = frozenset({Op.CONNECT, Op.DISCONNECT, Op.LOCK, Op.START, Op.STOP, Op.REPORT, Op.STATUS})


@dataclass(frozen=True)
class TargetFunction:
    """A PCI function named by segment and routing ID (what TARGET carries)."""

    segment: int
    bus: int
    devfn: int

    def __str__(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


# ---- LOCK data (mailbox protocol 1.1) -------------------------------------------------

#: Number of standard BARs of a Type 0 function (PCI_STD_NUM_BARS).
LOCK_BARS_MAX = 6

#: One memory BAR of the TDI as the guest sees it.
LockBarRecord = Struct(
    "index" / Int8ul,
    "reserved" / Bytes(7),
    "base" / Int64ul,
    "size" / Int64ul,
)
LOCK_BAR_RECORD_SIZE = LockBarRecord.sizeof()  # 24

#: The LOCK data: IN_LEN / LOCK_BAR_RECORD_SIZE records, nothing else.
LockBars = GreedyRange(LockBarRecord)


@dataclass(frozen=True)
class LockBar:
    """A memory BAR of the TDI: BAR number (= MMIO Range ID), address, length."""

    index: int
    base: int
    size: int


class LockDataError(TsmError, ValueError):
    """Malformed LOCK data (the device reports the subclass's ERROR code)."""

    errno = errno_mod.EINVAL


class LockDataLengthError(LockDataError):
    """The LOCK data is not a whole number of records, or holds too many."""


class LockDataFieldError(LockDataError):
    """A record's fields are out of range, reserved bits set, or a BAR given twice."""


def build_lock_bars(bars: Sequence[LockBar]) -> bytes:
    """IN window bytes for LOCK (no validation: tests build bad lists too)."""
    data: bytes = LockBars.build(
        [{"index": b.index, "reserved": bytes(7), "base": b.base, "size": b.size}
         for b in bars])
    return data


def parse_lock_bars(data: bytes) -> tuple[LockBar, ...]:
    """The BAR records of a LOCK, validated; raises a LockDataError."""
    if len(data) % LOCK_BAR_RECORD_SIZE:
        raise LockDataLengthError(f"LOCK data of {len(data)} bytes is not a whole number of "
                                  f"{LOCK_BAR_RECORD_SIZE}-byte BAR records")
    count = len(data) // LOCK_BAR_RECORD_SIZE
    if count > LOCK_BARS_MAX:
        raise LockDataLengthError(
            f"LOCK data holds {count} BAR records, at most {LOCK_BARS_MAX}")
    bars: list[LockBar] = []
    for n, rec in enumerate(LockBars.parse(data)):
        index, base, size = int(rec.index), int(rec.base), int(rec.size)
        where = f"LOCK BAR record {n} (BAR{index})"
        if index >= LOCK_BARS_MAX:
            raise LockDataFieldError(f"LOCK BAR record {n}: BAR index {index} is not 0..5")
        if any(rec.reserved):
            raise LockDataFieldError(f"{where}: reserved bytes not zero")
        if size == 0:
            raise LockDataFieldError(f"{where}: size 0")
        if base + size > 1 << 64:
            raise LockDataFieldError(f"{where}: {base:#x} + {size:#x} wraps past 2^64")
        if any(b.index == index for b in bars):
            raise LockDataFieldError(f"{where}: BAR{index} given twice")
        bars.append(LockBar(index, base, size))
    return tuple(bars)


# ---- one step of an operation ---------------------------------------------------------


@dataclass(frozen=True)
class DoeRequest:
    """Carry `payload` to the device as a DOE object of `doe_type` (vendor 0001, PCI-SIG).

    `delay_us`: the responder asked to be left alone this long first (SPDM
    ResponseNotReady, DSP0274 RDTExponent); the carrier waits that long before sending
    (the mailbox stays BUSY).  The TSM keeps no time itself."""

    doe_type: int
    payload: bytes = field(repr=False)
    delay_us: int = 0

    def __repr__(self) -> str:  # payloads may be secured records: show sizes only
        return f"DoeRequest(doe_type={self.doe_type}, {len(self.payload)} bytes)"


@dataclass(frozen=True)
class Done:
    """The operation is over.

    `errno`: 0, or the negative errno a kernel relay hands to user space (the TSM
    model's choice: `tsm.errors.errno_of`).  `value` is operation-specific (the raw
    interface report for REPORT, the TDI state for STATUS), None when failed.
    `evidence` is the TSM model's evidence document at completion (JSON-serialisable,
    never key material), None from a backend without one.  `tdi_state`: for an operation
    on a TDI (LOCK, START, STOP, REPORT, STATUS), its TDISP state as the TSM last read it
    from the device, after the operation and whether or not it succeeded; None when the
    TSM does not know it (never read, or not a TDI operation)."""

    errno: int
    reason: str
    value: object = None
    evidence: Mapping[str, Any] | None = field(default=None, repr=False)
    tdi_state: TdiState | None = None

    @property
    def ok(self) -> bool:
        return self.errno == 0


Action = DoeRequest | Done


def _json(obj: object) -> bytes:
    return json.dumps(obj, default=str, sort_keys=True, separators=(",", ":")).encode()


def done_data(done: Done) -> bytes:
    """The DONE data in the mailbox's OUT window.

    Bytes values as they are (the raw interface report), other values as compact JSON
    {"value": ...} (e.g. {"value": "RUN"} for STATUS), nothing for None; the evidence
    document (certificates, measurements) is too large for the one-page sysfs reads that
    consume results, so only a failure carries it: JSON {"evidence": ...}, what the
    model knew when it refused."""
    if isinstance(done.value, bytes | bytearray):
        return bytes(done.value)
    if not done.ok and done.evidence is not None:
        return _json({"evidence": done.evidence})
    if done.value is None:
        return b""
    return _json({"value": done.value})


class TsmBackend(Protocol):
    """A platform TSM, driven one step at a time by the mailbox device."""

    def start(self, op: Op, target: TargetFunction, *, mmio: Sequence[LockBar] = ()) -> Action:
        """Begin `op` on `target`; any operation still in flight is abandoned.  `mmio`
        (LOCK only, never empty when given): the TDI's memory BARs as the guest sees
        them, validated by the device; the TSM checks the interface report against them.
        Without them (a 1.0 guest, or IN_LEN=0) the report is not checked."""

    def doe_response(self, payload: bytes) -> Action:
        """The response to the last DoeRequest."""

    def transport_error(self, error: int) -> Action:
        """The last DoeRequest failed in transport (`error` = -errno from the guest)."""

    def abort(self) -> None:
        """The guest (or a reset) abandoned the operation in flight."""
