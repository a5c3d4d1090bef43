"""The TSM mailbox protocol: BAR0 register map, operations, statuses.

The mailbox device is how the guest's `vtsm` driver (guest/vtsm/)
reaches the platform TSM model, the way AMD's sev-dev-tsm.c reaches the PSP
(docs/linux-pci-tsm.md §9): the driver posts an operation, the TSM answers
"please carry this DOE object to the device" or "done", the driver performs
the DOE exchange with `pci_tsm_doe_transfer()` and posts the response back.

BAR0 (64-bit, non-prefetchable, 4 MiB).  Registers are 32-bit little-endian;
any access size works (bytes are assembled from the registers they cover).

  Offset    Name         Access  Meaning
  0x0000    ID           RO      0x4D535456, the bytes "VTSM" in memory order
  0x0004    VERSION      RO      protocol version, major << 16 | minor (1.2)
  0x0008    WINDOW_SIZE  RO      bytes in each data window (0x100000)
  0x000C    REASON_MAX   RO      bytes in the REASON area (256)
  0x0010    OP           RW      operation the next doorbell runs (tsm.mailbox_protocol.Op)
  0x0014    TARGET       RW      segment[31:16] | bus[15:8] | devfn[7:0]
  0x0018    IN_LEN       RW      DOE_RESPONSE, LOCK (1.1): bytes the guest placed in IN;
                                 every doorbell consumes it (reads 0 afterwards)
  0x001C    IN_RC        RW      DOE_RESPONSE: s32, 0 or the -errno of the transfer
  0x0020    DOORBELL     WO      write DOORBELL_RING (1) to run OP; reads 0
  0x0024    STATUS       RO      Status
  0x0028    OUT_TYPE     RO      DOE_REQUEST: DOE data object type (vendor 0001)
  0x002C    OUT_LEN      RO      bytes in OUT (DOE request payload, or DONE data)
  0x0030    RESULT       RO      DONE: s32, 0 or a -errno from the TSM
  0x0034    ERROR        RO      ERROR: ErrorCode of the guest's mistake
  0x0038    REASON_LEN   RO      bytes of UTF-8 text in REASON
  0x003C    IRQ_CTRL     RW      bit 0: raise MSI-X vector 0 on every completion
  0x0040    COMPLETIONS  RO      doorbells answered so far (wraps at 2^32)
  0x0044    TDI_STATE    RO      DONE (1.2): the TARGET TDI's TDISP state as the TSM last
                                 read it from the device (tdisp.codes.TdiState), or 0xFF
  0x0100    REASON       RO      256 bytes: DONE reason or ERROR message (not NUL terminated)
  0x1000    MSI-X table  --      one vector, emulated by QEMU
  0x2000    MSI-X PBA    RO
  0x100000  IN window    RW      1 MiB: the guest writes DOE responses here
  0x200000  OUT window   RO      1 MiB: DOE request payloads / DONE data

Why 1 MiB windows: a DOE object is at most 2^18 DW = 1 MiB including its
2-DW header (PCIe r6.0 §6.30.1), so any payload fits one window and no
operation needs chunking.  Separate IN and OUT windows let the guest keep
the request while writing the response.

OP values (`Op`), the TARGET function, LOCK's BAR records and what a TSM answers are
declared with the TSM side of the protocol, in tsm/mailbox_protocol.py; this module is
the device's register map.

A step: the guest writes OP (+ TARGET, or IN_LEN/IN_RC and the IN bytes for
DOE_RESPONSE) and rings DOORBELL.  STATUS goes BUSY and, when the TSM has
answered, to DOE_REQUEST, DONE or ERROR; COMPLETIONS increments and, if
IRQ_CTRL bit 0 is set, MSI-X vector 0 fires.  A driver may instead poll
STATUS until it is not BUSY (memory-BAR writes are posted by QEMU but
processed in order, so a STATUS read after the doorbell sees its effect).
A guest reading 0xFFFFFFFF has lost the device (QEMU reads all-ones once
the vfio-user server is gone).

Operation flow (one TSM operation):

  guest: OP=CONNECT TARGET=bdf, ring      -> STATUS=DOE_REQUEST(OUT_TYPE, OUT)
  guest: DOE exchange with the device
  guest: IN=response, IN_LEN, IN_RC=0, OP=DOE_RESPONSE, ring
                                          -> STATUS=DOE_REQUEST ... or DONE(RESULT, REASON, OUT)

TDI_STATE (version 1.2).  With DONE of LOCK, START, STOP, REPORT or STATUS the
TSM says where the TDI is, whether the operation succeeded or was refused:
0 CONFIG_UNLOCKED, 1 CONFIG_LOCKED, 2 RUN, 3 ERROR (the TDI_STATE encoding of
DEVICE_INTERFACE_STATE, PCIe 6.2 §11.3.13), 0xFF when the TSM does not know (it
never read the state, or the operation is not about a TDI).  A refused request
changes no TDISP state (§11.3.17), so a driver must not infer ERROR from a
failed operation; this register is the TSM's word, including the ERROR a
device really is in.

LOCK data (version 1.1).  With OP=LOCK the guest may describe the TDI's
memory BARs as it sees them, so the TSM can check the interface report
against them (PCIe 6.2 §11.3.11: each MMIO range's Range ID names a BAR,
its FIRST_PAGE is the BAR's address plus the lock's reporting offset).  IN
holds IN_LEN / 24 `LockBarRecord`s (tsm.mailbox_protocol):

  Offset  Size  Field
  0       1     index     BAR number, 0..5 (a 64-bit BAR: its lower number)
  1       7     reserved  must be 0
  8       8     base      the BAR's address (little-endian u64)
  16      8     size      the BAR's length in bytes, non-zero

at most one record per BAR, at most 6 records, base + size within 2^64.
The TSM then refuses (REPORT: RESULT -EACCES, REASON naming the range) a
report whose MMIO ranges do not tile exactly those BARs; START reads and
checks the report itself when nobody read it since LOCK, and fails -EACCES
too when the report was refused.  IN_LEN=0 is version 1.0's LOCK: no expectations, the
report is not checked.  A malformed list is a guest mistake (ERROR
BAD_LENGTH or BAD_DATA, no LOCK is sent).  Other TSM operations take no
data (IN_LEN must be 0).  Because every doorbell clears IN_LEN, a 1.0
driver, which writes IN_LEN only for DOE_RESPONSE, never leaves a stale
length behind for its next LOCK; a driver reads VERSION and sends LOCK data
only to a mailbox of version 1.1 or later.

Misbehaviour (unknown OP, IN_LEN > window, malformed LOCK data, data for
another operation, DOE_RESPONSE when none was
requested, a new operation while one waits for a DOE response, a doorbell
while BUSY, a partial doorbell write) ends any operation in flight and
sets STATUS=ERROR with ERROR and REASON saying why.  ABORT always returns
to IDLE.  The device then accepts a new operation.
"""

from __future__ import annotations

import enum

from construct import Int8ul, Int16ul, Struct

from tsm.mailbox_protocol import LockDataError, LockDataFieldError, LockDataLengthError

# ---- identity --------------------------------------------------------------

# Emulator placeholders, like the endpoint's 0x1DED:0x7E10 (see vdev.profiles):
# not registered with PCI-SIG, picked to be recognisably ours.
MAILBOX_VENDOR_ID = 0x1DED
MAILBOX_DEVICE_ID = 0x7E20
# Base class 0x08 (generic system peripheral), sub-class 0x80 (other),
# PCI Code and ID Assignment r1.11 §1.9: a platform service, not a TEE device.
MAILBOX_CLASS_CODE = 0x088000
MAILBOX_REVISION = 0x01

ID_MAGIC = int.from_bytes(b"VTSM", "little")
PROTOCOL_VERSION = 0x0001_0002
#: The first version whose LOCK takes BAR records in IN.
VERSION_LOCK_BARS = 0x0001_0001
#: The first version with the TDI_STATE register.
VERSION_TDI_STATE = 0x0001_0002
#: TDI_STATE when the TSM does not know the TDI's state.
TDI_STATE_UNKNOWN = 0xFF

# ---- BAR0 layout -----------------------------------------------------------

BAR0_SIZE = 4 << 20
REGISTER_PAGE = 0x1000

REG_ID = 0x000
REG_VERSION = 0x004
REG_WINDOW_SIZE = 0x008
REG_REASON_MAX = 0x00C
REG_OP = 0x010
REG_TARGET = 0x014
REG_IN_LEN = 0x018
REG_IN_RC = 0x01C
REG_DOORBELL = 0x020
REG_STATUS = 0x024
REG_OUT_TYPE = 0x028
REG_OUT_LEN = 0x02C
REG_RESULT = 0x030
REG_ERROR = 0x034
REG_REASON_LEN = 0x038
REG_IRQ_CTRL = 0x03C
REG_COMPLETIONS = 0x040
REG_TDI_STATE = 0x044
REASON_OFFSET = 0x100
REASON_MAX = 256

MSIX_VECTORS = 1
MSIX_TABLE_OFFSET = 0x1000
MSIX_PBA_OFFSET = 0x2000
COMPLETION_VECTOR = 0

WINDOW_SIZE = 1 << 20
IN_WINDOW = 0x100000
OUT_WINDOW = 0x200000

DOORBELL_RING = 1
IRQ_CTRL_COMPLETION = 1 << 0


class Status(enum.IntEnum):
    """Values of STATUS."""

    IDLE = 0
    BUSY = 1
    DOE_REQUEST = 2
    DONE = 3
    ERROR = 4


class ErrorCode(enum.IntEnum):
    """Values of ERROR when STATUS is ERROR: what the guest did wrong."""

    NONE = 0
    BAD_OP = 1  # OP holds no known operation
    BAD_LENGTH = 2  # IN_LEN larger than the IN window
    OUT_OF_ORDER = 3  # DOE_RESPONSE with none requested, or a new op mid-operation
    BUSY = 4  # doorbell while STATUS was BUSY
    BAD_DOORBELL = 5  # doorbell written with another value or a partial write
    BAD_DATA = 6  # LOCK's BAR records malformed (1.1)


#: The ERROR a malformed LOCK data list is reported with, by the class of its error.
LOCK_DATA_ERRORS: dict[type[LockDataError], ErrorCode] = {
    LockDataLengthError: ErrorCode.BAD_LENGTH,
    LockDataFieldError: ErrorCode.BAD_DATA,
}


# ---- structured fields ---------------------------------------------------

#: TARGET: the routing ID of a function plus its PCI segment (little-endian u32).
Target = Struct(
    "devfn" / Int8ul,
    "bus" / Int8ul,
    "segment" / Int16ul,
)


def pack_target(segment: int, bus: int, devfn: int) -> int:
    """TARGET register value for a function."""
    return int.from_bytes(Target.build({"segment": segment, "bus": bus, "devfn": devfn}), "little")


def unpack_target(value: int) -> tuple[int, int, int]:
    """(segment, bus, devfn) from a TARGET register value."""
    t = Target.parse((value & 0xFFFF_FFFF).to_bytes(4, "little"))
    return int(t.segment), int(t.bus), int(t.devfn)


def to_s32(value: int) -> int:
    """A 32-bit register value read as a signed int (IN_RC, RESULT)."""
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value & 0x8000_0000 else value
