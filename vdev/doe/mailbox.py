"""DOE mailbox: a register-level, sans-IO state machine (PCIe r6.0 §6.30, §7.9.24).

The mailbox knows only the five DOE registers (relative to the capability):

  +0x04 DOE Capabilities  Interrupt Support b0, Interrupt Message Number b11:1
  +0x08 DOE Control       ABORT b0 (W, reads 0), INT_EN b1 (RW), GO b31 (W, reads 0)
  +0x0C DOE Status        BUSY b0, INT_STATUS b1 (RW1C), ERROR b2, DATA_OBJECT_READY b31
  +0x10 Write Data Mailbox (DW writes accumulate the request object)
  +0x14 Read Data Mailbox  (reads return the current response DW; a write of any
                            value advances to the next one)

All protocol state is one `MailboxState`; every change goes through the
`TRANSITIONS` table, which tests enumerate.  Status bits are *derived* from the
state (DOR <=> READY, ERROR <=> ERROR), so they cannot disagree with it.

Behaviour choices and where they come from:
- GO computes the response synchronously.  By default it is offered at once,
  so the first status poll after GO already sees DATA_OBJECT_READY and BUSY
  reads 0.  A `response_gate` (set by the endpoint for fault injection, see
  `TeeIoEndpoint.delay_doe_responses`) may hold a response back instead: the
  mailbox is then BUSY (§7.9.24.5 DOE Busy: "temporarily unable to receive a
  new data object") with DATA_OBJECT_READY clear until someone calls
  `complete(ticket)`.  The mailbox stays sans-IO: it never waits, it is told
  that the response is ready.  ABORT while BUSY drops the held response and
  makes its ticket stale, so a late `complete` is ignored (§7.9.24.3: abort
  "terminates ... the processing of the current data object").  Writes or GO
  while BUSY break the §6.30.2 sequence (software waits for BUSY=0 first,
  as Linux does) and set ERROR.  The handler runs at GO either way, so an
  exchange aborted while BUSY has had its protocol effects (a device that did
  the work but was late to publish it); SPDM requesters recover by starting
  over with GET_VERSION, which resets the responder's connection state.
- DOR stays 1 until software advances past the last response DW; Linux
  checks DOR before acking the final DW (docs/linux-pci-tsm.md §7.3).
- ABORT from any state discards both buffers and clears DOR and ERROR
  (§7.9.24.3 DOE Abort); it does not clear INT_STATUS, which is RW1C.
- ERROR: §6.30.2 requires that a DOE instance "complete processing a received
  data object and, if a data object is required in response, ... Set the
  Data Object Ready bit ... within 1 second after the DOE Go bit was Set ...,
  otherwise the DOE instance must Set the DOE Error bit" (wording as quoted
  in public DOE implementations; the §7.9.24.4 DOE Error definition says the
  same: an object "for which the DOE instance is unable to provide a
  response").  ERROR stays until ABORT.  We therefore set it for: a protocol
  that is not registered, a handler that fails, GO with nothing written, a
  response that would exceed the mailbox size, and a request exceeding the
  mailbox size.  §6.30.1 says an object whose DW count disagrees with its
  Length field "must be silently discarded" (QEMU's hw/pci/pcie_doe.c quotes
  this): we discard it (no handler runs) and, because no response will ever
  follow, also set ERROR at once instead of making the requester wait out
  its 1 s timeout.  Length < 2 is treated the same way.
- Writes to the write mailbox while a response is pending (DOR=1) violate
  the §6.30.2 sequence (software must read the whole response first); we
  flag them with ERROR instead of silently mixing two exchanges.
- Mailbox registers are DW registers; partial-DW accesses to +0x10/+0x14 are
  ignored (QEMU's DOE model does the same).
- Interrupts (§6.30.3): when INT_EN is set and DOR or ERROR goes 0->1,
  INT_STATUS is set and the interrupt callback is called with the DOE
  Interrupt Message Number, if INT_STATUS was not already pending.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from vdev.doe import data_object as doe_object
from vdev.doe.data_object import DISCOVERY, HEADER_DW, MAX_OBJECT_DW, DoeError, DoeProtocolId

log = logging.getLogger(__name__)

# Register offsets within the DOE extended capability (§7.9.24, pci_regs.h PCI_DOE_*).
DOE_CAP = 0x04
DOE_CTRL = 0x08
DOE_STATUS = 0x0C
DOE_WRITE = 0x10
DOE_READ = 0x14
DOE_CAP_SIZEOF = 0x18

CAP_INT_SUPPORT = 1 << 0
CAP_INT_MSG_NUM_SHIFT = 1
CAP_INT_MSG_NUM_MASK = 0x7FF << 1
CTRL_ABORT = 1 << 0
CTRL_INT_EN = 1 << 1
CTRL_GO = 1 << 31
STATUS_BUSY = 1 << 0
STATUS_INT_STATUS = 1 << 1
STATUS_ERROR = 1 << 2
STATUS_DATA_OBJECT_READY = 1 << 31

_DW = 0xFFFF_FFFF

Handler = Callable[[bytes], bytes]
"""A protocol handler: request payload (header stripped) -> response payload."""

ResponseGate = Callable[[DoeProtocolId, int], bool]
"""Asked at GO with (protocol, ticket) once the response is computed: True holds it
back (BUSY) until the gate's owner calls `DoeMailbox.complete(ticket)`."""

ExchangeObserver = Callable[[DoeProtocolId, bytes, bytes], None]
"""Told (protocol, request payload, response payload) after each successful exchange."""


class MailboxState(enum.Enum):
    IDLE = "idle"  # nothing buffered, DOR=0, ERROR=0
    RECEIVING = "receiving"  # request DWs buffered, waiting for GO
    BUSY = "busy"  # response held back by the response gate: BUSY=1, DOR=0
    READY = "ready"  # response available: DATA_OBJECT_READY=1
    ERROR = "error"  # DOE Error=1 until ABORT

    # Members are singletons compared by identity; hash them by identity too, in C
    # (Enum's own __hash__ is a Python method, and the mailbox looks a transition
    # up on every register access).
    __hash__ = object.__hash__


class MailboxEvent(enum.Enum):
    WRITE_DW = "write_dw"  # a DW written to the write mailbox
    WRITE_OVERFLOW = "write_overflow"  # ... that does not fit in the mailbox
    GO_ACCEPTED = "go_accepted"  # GO, and a response was produced
    GO_REJECTED = "go_rejected"  # GO, and no response can be produced
    GO_DEFERRED = "go_deferred"  # GO, and the response is held back (BUSY)
    RESPONSE_READY = "response_ready"  # the held response is offered now
    READ_ADVANCE = "read_advance"  # write to the read mailbox, not past the last DW
    READ_LAST = "read_last"  # write to the read mailbox that consumes the last DW
    ABORT = "abort"

    __hash__ = object.__hash__  # as MailboxState


S = MailboxState
E = MailboxEvent

TRANSITIONS: dict[tuple[MailboxState, MailboxEvent], MailboxState] = {
    (S.IDLE, E.WRITE_DW): S.RECEIVING,
    (S.IDLE, E.WRITE_OVERFLOW): S.ERROR,
    (S.IDLE, E.GO_REJECTED): S.ERROR,  # GO with nothing written
    (S.IDLE, E.READ_ADVANCE): S.IDLE,  # nothing to advance: ignored
    (S.IDLE, E.ABORT): S.IDLE,
    (S.RECEIVING, E.WRITE_DW): S.RECEIVING,
    (S.RECEIVING, E.WRITE_OVERFLOW): S.ERROR,
    (S.RECEIVING, E.GO_ACCEPTED): S.READY,
    (S.RECEIVING, E.GO_REJECTED): S.ERROR,
    (S.RECEIVING, E.READ_ADVANCE): S.RECEIVING,  # nothing to advance: ignored
    (S.RECEIVING, E.ABORT): S.IDLE,
    (S.RECEIVING, E.GO_DEFERRED): S.BUSY,
    (S.BUSY, E.RESPONSE_READY): S.READY,
    (S.BUSY, E.WRITE_DW): S.ERROR,  # new request while BUSY (§6.30.2 sequence)
    (S.BUSY, E.GO_REJECTED): S.ERROR,  # GO while BUSY
    (S.BUSY, E.READ_ADVANCE): S.BUSY,  # nothing to read yet: ignored
    (S.BUSY, E.ABORT): S.IDLE,  # the held response is discarded
    (S.READY, E.WRITE_DW): S.ERROR,  # new request while a response is pending
    (S.READY, E.GO_REJECTED): S.ERROR,  # GO while a response is pending
    (S.READY, E.READ_ADVANCE): S.READY,
    (S.READY, E.READ_LAST): S.IDLE,  # DOR clears after the last DW is consumed
    (S.READY, E.ABORT): S.IDLE,
    (S.ERROR, E.WRITE_DW): S.ERROR,  # everything but ABORT is ignored in ERROR
    (S.ERROR, E.GO_REJECTED): S.ERROR,
    (S.ERROR, E.READ_ADVANCE): S.ERROR,
    (S.ERROR, E.ABORT): S.IDLE,
}

# Plain module names for the states (attribute access on an Enum class is a
# Python-level lookup in 3.11).
_IDLE, _RECEIVING, _BUSY, _READY, _ERROR = S.IDLE, S.RECEIVING, S.BUSY, S.READY, S.ERROR
_READ_ADVANCE, _READ_LAST, _WRITE_DW = E.READ_ADVANCE, E.READ_LAST, E.WRITE_DW
del S, E


def _reads_zero() -> int:
    return 0


def _ignores_write(value: int, byte_enable: int) -> None:
    pass


class DoeRejected(DoeError):
    """Raised internally when GO cannot produce a response; the message is the reason."""


@dataclass(frozen=True)
class _Registered:
    protocol: DoeProtocolId
    handler: Handler


class DoeMailbox:
    """One DOE instance.  All methods are synchronous and never block."""

    def __init__(
        self,
        max_object_dw: int = MAX_OBJECT_DW,
        interrupt_message_number: int = 0,
        interrupt: Callable[[int], None] | None = None,
        interrupt_supported: bool = True,
    ) -> None:
        if not HEADER_DW + 1 <= max_object_dw <= MAX_OBJECT_DW:
            raise ValueError(f"DOE max object size {max_object_dw} DW not in 3..2^18")
        if not 0 <= interrupt_message_number <= 0x7FF:
            raise ValueError("DOE interrupt message number must fit 11 bits")
        self.max_object_dw = max_object_dw
        self.interrupt_message_number = interrupt_message_number
        self.interrupt_supported = interrupt_supported
        self.interrupt = interrupt
        self.observers: list[ExchangeObserver] = []
        self.response_gate: ResponseGate | None = None
        self._ticket = 0  # identifies the response currently held back (BUSY)
        self._protocols: dict[DoeProtocolId, _Registered] = {}
        self.state = MailboxState.IDLE
        self.int_en = False
        self.int_status = False
        self.last_error: str | None = None
        self._write_buf: list[int] = []
        self._read_buf: list[int] = []
        self._read_pos = 0

    # ---- protocol registry ------------------------------------------------

    def register(self, vendor_id: int, data_object_type: int, handler: Handler) -> None:
        """Add or replace a protocol handler.  Replacing keeps its discovery index."""
        protocol = DoeProtocolId(vendor_id, data_object_type)
        if protocol == DISCOVERY:
            raise ValueError("the discovery protocol is built in")
        if not (0 <= vendor_id <= 0xFFFF and 0 <= data_object_type <= 0xFF):
            raise ValueError(f"bad DOE protocol {vendor_id:#x}:{data_object_type:#x}")
        if protocol not in self._protocols and len(self._protocols) >= 255:
            raise ValueError("discovery indexes are 8 bits: at most 255 protocols")
        self._protocols[protocol] = _Registered(protocol, handler)

    def unregister(self, vendor_id: int, data_object_type: int) -> None:
        del self._protocols[DoeProtocolId(vendor_id, data_object_type)]

    @property
    def protocols(self) -> tuple[DoeProtocolId, ...]:
        """Discovery order: index 0 is discovery itself, then registration order."""
        return (DISCOVERY, *self._protocols)

    # ---- register view ----------------------------------------------------

    @property
    def capabilities(self) -> int:
        if not self.interrupt_supported:
            return 0
        return CAP_INT_SUPPORT | (self.interrupt_message_number << CAP_INT_MSG_NUM_SHIFT)

    @property
    def control(self) -> int:
        # ABORT and GO always read 0 (§7.9.24.3).
        return CTRL_INT_EN if self.int_en else 0

    @property
    def status(self) -> int:
        return self.read_status()

    def read_status(self) -> int:
        value = STATUS_INT_STATUS if self.int_status else 0
        state = self.state
        if state is _READY:
            value |= STATUS_DATA_OBJECT_READY
        elif state is _ERROR:
            value |= STATUS_ERROR
        elif state is _BUSY:
            value |= STATUS_BUSY
        return value

    def read_capabilities(self) -> int:
        return self.capabilities

    def read_control(self) -> int:
        return self.control

    def read_register(self, offset: int) -> int:
        """DW read at an offset within the capability (0 for the header and unknown)."""
        if offset == DOE_CAP:
            return self.capabilities
        if offset == DOE_CTRL:
            return self.control
        if offset == DOE_STATUS:
            return self.read_status()
        if offset == DOE_READ:
            return self.read_mailbox()
        return 0  # write mailbox reads 0

    def write_register(self, offset: int, value: int, byte_enable: int = _DW) -> None:
        if offset == DOE_CTRL:
            self.write_control(value, byte_enable)
        elif offset == DOE_STATUS:
            self.write_status(value, byte_enable)
        elif offset == DOE_WRITE:
            self.write_write_mailbox(value, byte_enable)
        elif offset == DOE_READ:
            self.write_read_mailbox(value, byte_enable)

    def write_control(self, value: int, byte_enable: int = _DW) -> None:
        value &= byte_enable
        if byte_enable & CTRL_INT_EN:
            self.int_en = bool(value & CTRL_INT_EN)
        if value & CTRL_ABORT:
            # Abort wins over a GO in the same write (§7.9.24.3).
            self.abort()
        elif value & CTRL_GO:
            self.go()

    def write_status(self, value: int, byte_enable: int = _DW) -> None:
        if value & byte_enable & STATUS_INT_STATUS:
            self.int_status = False

    def read_mailbox(self) -> int:
        if self.state is _READY:
            return self._read_buf[self._read_pos]
        return 0

    def write_write_mailbox(self, value: int, byte_enable: int = _DW) -> None:
        """A write to the Write Data Mailbox register (partial-DW writes are ignored)."""
        if byte_enable == _DW:
            self.write_mailbox(value)

    def write_read_mailbox(self, value: int, byte_enable: int = _DW) -> None:
        """A write to the Read Data Mailbox register: any whole-DW value advances."""
        if byte_enable == _DW:
            self.advance()

    def available(self) -> int:
        """Response DWs left to read, the current one included (0 unless DOR): what
        a batch of Read Data Mailbox reads may take (vdev.pci.doe_batch)."""
        if self.state is _READY:
            return len(self._read_buf) - self._read_pos
        return 0

    def peek(self, count: int) -> list[int]:
        """The next `count` response DWs from the current one, none acknowledged:
        what `count` reads of the Read Data Mailbox would return, each followed by
        a write.  Asking for more than `available()` is refused."""
        if not 0 < count <= self.available():
            raise DoeRejected(f"{count} response DWs asked for, "
                              f"{self.available()} available")
        return self._read_buf[self._read_pos : self._read_pos + count]

    def accessors(self, offset: int) -> tuple[Callable[[], int], Callable[[int, int], None]]:
        """(read, write(value, byte_enable)) of the register at `offset` in the
        capability: what `read_register`/`write_register` do there, without the
        dispatch on the offset (a DOE exchange is one register access per DW)."""
        readers: dict[int, Callable[[], int]] = {
            DOE_CAP: self.read_capabilities, DOE_CTRL: self.read_control,
            DOE_STATUS: self.read_status, DOE_READ: self.read_mailbox,
        }
        writers: dict[int, Callable[[int, int], None]] = {
            DOE_CTRL: self.write_control, DOE_STATUS: self.write_status,
            DOE_WRITE: self.write_write_mailbox, DOE_READ: self.write_read_mailbox,
        }
        return readers.get(offset, _reads_zero), writers.get(offset, _ignores_write)

    # ---- software actions -------------------------------------------------

    def write_mailbox(self, dw: int) -> None:
        if self.state is _READY or self.state is _ERROR or self.state is _BUSY:
            self._fire(MailboxEvent.WRITE_DW, "write to the write mailbox while "
                       + ("BUSY" if self.state is _BUSY else "DOR is set"))
            return
        if len(self._write_buf) >= self.max_object_dw:
            self._fire(MailboxEvent.WRITE_OVERFLOW, "request larger than the mailbox")
            return
        self._write_buf.append(dw & _DW)
        self._fire(_WRITE_DW)

    def go(self) -> None:
        if self.state is not _RECEIVING:
            reason = {
                MailboxState.IDLE: "GO with nothing written",
                MailboxState.READY: "GO while a response is pending",
                MailboxState.BUSY: "GO while BUSY",
                MailboxState.ERROR: "GO while in error",
            }[self.state]
            self._fire(MailboxEvent.GO_REJECTED, reason)
            return
        try:
            response = self._process(self._write_buf)
        except DoeRejected as exc:
            self._fire(MailboxEvent.GO_REJECTED, str(exc))
            return
        self._write_buf = []
        self._read_buf = response
        self._read_pos = 0
        self._ticket += 1
        protocol = DoeProtocolId(response[0] & 0xFFFF, (response[0] >> 16) & 0xFF)
        if self.response_gate is not None and self.response_gate(protocol, self._ticket):
            self._fire(MailboxEvent.GO_DEFERRED)
            return
        self._fire(MailboxEvent.GO_ACCEPTED)

    def complete(self, ticket: int) -> bool:
        """The response held back under `ticket` is ready now: BUSY -> READY.
        False (and no change) when that response was dropped meanwhile (ABORT, FLR,
        a protocol violation), so a late completion cannot surface a stale object."""
        if self.state is not _BUSY or ticket != self._ticket:
            log.info("DOE: held response %d no longer pending (aborted), dropped", ticket)
            return False
        self._fire(MailboxEvent.RESPONSE_READY)
        return True

    def advance(self) -> None:
        if self.state is _READY and self._read_pos + 1 >= len(self._read_buf):
            self._fire(_READ_LAST)
        elif self.state is _READY:
            self._read_pos += 1
            self._fire(_READ_ADVANCE)
        else:
            self._fire(_READ_ADVANCE)

    def abort(self) -> None:
        if self.state is _BUSY:
            log.info("DOE: abort while BUSY, held response %d discarded", self._ticket)
        self._fire(MailboxEvent.ABORT)

    def reset(self) -> None:
        """Function-level reset: abort, INT_EN and INT_STATUS back to 0 (§7.9.24)."""
        self.abort()
        self.int_en = False
        self.int_status = False
        self.last_error = None

    # ---- machinery --------------------------------------------------------

    def _fire(self, event: MailboxEvent, reason: str | None = None) -> None:
        old = self.state
        try:
            new = TRANSITIONS[(old, event)]
        except KeyError:  # pragma: no cover - the classifiers only emit table events
            raise AssertionError(f"DOE: no transition for {old} on {event}") from None
        self.state = new
        if new is _IDLE:
            self._write_buf = []
            self._read_buf = []
            self._read_pos = 0
            return
        if new is old:
            return
        if new is _ERROR:
            self.last_error = reason
            self._write_buf = []
            log.info("DOE error: %s", reason)
        if new is _READY or new is _ERROR:
            self._raise_interrupt()

    def _raise_interrupt(self) -> None:
        if not (self.interrupt_supported and self.int_en) or self.int_status:
            return
        self.int_status = True
        if self.interrupt is not None:
            self.interrupt(self.interrupt_message_number)

    def _process(self, request: list[int]) -> list[int]:
        if len(request) < HEADER_DW:
            raise DoeRejected(f"object of {len(request)} DW is shorter than its header")
        raw = b"".join(dw.to_bytes(4, "little") for dw in request)
        header = doe_object.parse_header(raw[: 4 * HEADER_DW])
        # §6.30.1: an object whose DW count disagrees with Length is discarded.
        if header.length_dw != len(request):
            raise DoeRejected(f"length field {header.length_dw} DW but {len(request)} DW written")
        if header.length_dw > self.max_object_dw:
            raise DoeRejected(f"object of {header.length_dw} DW exceeds the mailbox")
        payload = raw[4 * HEADER_DW :]
        protocol = header.protocol
        if protocol == DISCOVERY:
            handler: Handler = self._discovery
        elif protocol in self._protocols:
            handler = self._protocols[protocol].handler
        else:
            raise DoeRejected(f"protocol {protocol} not supported")
        try:
            reply = handler(payload)
        except DoeRejected:
            raise
        except Exception as exc:  # a handler bug must not kill the device
            log.exception("DOE handler for %s failed", protocol)
            raise DoeRejected(f"handler for {protocol} failed: {exc!r}") from exc
        obj = doe_object.build_object(protocol, reply)
        if len(obj) // 4 > self.max_object_dw:
            raise DoeRejected(f"response of {len(obj) // 4} DW exceeds the mailbox")
        for observer in self.observers:
            observer(protocol, payload, reply)
        return [int.from_bytes(obj[i : i + 4], "little") for i in range(0, len(obj), 4)]

    def _discovery(self, payload: bytes) -> bytes:
        """Built-in DOE Discovery (§6.30.1.1): entry `index`, and the next index or 0."""
        if len(payload) < 4:
            raise DoeRejected("discovery request without its payload DW")
        index, _version = doe_object.parse_discovery_request(payload[:4])
        protocols = self.protocols
        if index >= len(protocols):
            raise DoeRejected(f"discovery index {index} beyond {len(protocols) - 1}")
        next_index = index + 1 if index + 1 < len(protocols) else 0
        return doe_object.build_discovery_response(protocols[index], next_index)
