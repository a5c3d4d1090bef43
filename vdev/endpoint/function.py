"""The TEE-IO endpoint: config space + BAR0 + DOE + IDE, behind `VfioUserDevice`.

Composition (offsets for the default profile):

  config 0x000  Type 0 header: BAR0 64-bit MMIO (BAR1 = upper half), no ROM
         0x040  PCI Express capability v2, Endpoint, DEVCAP TEE-IO + FLR
         0x07C  Power Management
         0x084  MSI-X (table and PBA in BAR0, see vdev.endpoint.registers)
         0x100  DOE extended capability (0x2E, v2) -> `self.doe`
         0x118  IDE extended capability (0x30) -> `self.ide`
  BAR0          vdev.endpoint.registers register map
  region 9      the DOE batch region (vdev.pci.doe_batch): the DOE mailbox in bulk

The bare endpoint serves DOE types 0001:01 (CMA/SPDM) and 0001:02 (secured
CMA/SPDM) with `spdm_unsupported_placeholder`; `vdev.endpoint.tee_device.TeeDevice` (what
`vdev serve` runs) replaces it with the SPDM responder.  The placeholder
answers every request with an SPDM ERROR(UnsupportedRequest)
(DSP0274 §10.12: SPDMVersion, 0x7F, Param1 = ErrorCode 0x07, Param2 =
ErrorData = the request code).  `register_doe_protocol` replaces it.

Fault injection (DOE timing): `delay_doe_responses(seconds, count)` holds the next
`count` SPDM / secured-SPDM responses back for `seconds` after GO: the mailbox reads
BUSY, DATA_OBJECT_READY=0, until the delay has passed (PCIe r6.0 §6.30.2 allows a DOE
instance up to 1 s; Linux's pci_doe aborts after PCI_DOE_TIMEOUT = 1 s).  Discovery
is never delayed: Linux discovers at enumeration and drops a mailbox whose discovery
fails, which would hide the mailbox for the whole boot instead of failing one
exchange.  The waiting is done by `defer_later(seconds, callback)`, which the server
provides (`vdev serve`: the event loop's call_later); the mailbox itself stays
sans-IO and is told by `DoeMailbox.complete` that the response is ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from vdev.doe.data_object import (
    DISCOVERY,
    DOE_TYPE_CMA_SPDM,
    DOE_TYPE_SECURED_CMA_SPDM,
    PCI_SIG_VENDOR_ID,
    DoeProtocolId,
)
from vdev.doe.mailbox import DoeMailbox, Handler
from vdev.endpoint.registers import DeviceRegisters, msix_pba_offset
from vdev.pci.activity import ActivityCounters
from vdev.pci.bar import MemoryBar
from vdev.pci.config_space import CONFIG_SPACE_SIZE, ConfigSpace
from vdev.pci.device_api import (
    FIRST_DEVICE_REGION,
    DmaAccess,
    IrqIndex,
    IrqSink,
    RegionIndex,
    RegionInfo,
)
from vdev.pci.doe_batch import DoeBatchRegion
from vdev.pci.doe_cap import DoeCap
from vdev.pci.header import HeaderIdentity, Type0Header
from vdev.pci.ide_cap import IdeCap
from vdev.pci.msix_cap import MsixCap
from vdev.pci.pcie_cap import PcieCap
from vdev.pci.pm_cap import PowerManagementCap
from vdev.profiles import MSIX_TABLE_OFFSET, DeviceProfile

log = logging.getLogger(__name__)

SPDM_VERSION_1_0 = 0x10
SPDM_ERROR = 0x7F
SPDM_ERROR_UNSUPPORTED_REQUEST = 0x07

_CONFIG = int(RegionIndex.CONFIG)
_BAR0 = int(RegionIndex.BAR0)

ResetObserver = Callable[[], None]
DeferLater = Callable[[float, Callable[[], None]], object]
"""Runs a callable after some seconds (e.g. `loop.call_later`)."""


def spdm_unsupported_placeholder(request: bytes) -> bytes:
    """Placeholder SPDM responder: ERROR(UnsupportedRequest) for every request.

    Response = [request SPDMVersion (0x10 if the request is empty), 0x7F,
    0x07 UnsupportedRequest, request RequestResponseCode (0 if absent)].
    """
    version = request[0] if request else SPDM_VERSION_1_0
    code = request[1] if len(request) > 1 else 0
    return bytes([version, SPDM_ERROR, SPDM_ERROR_UNSUPPORTED_REQUEST, code])


class TeeIoEndpoint:
    """A PCIe endpoint advertising TEE-IO, with DOE and Selective IDE."""

    def __init__(
        self, profile: DeviceProfile | None = None, *, defer_later: DeferLater | None = None
    ) -> None:
        self.profile = profile = profile if profile is not None else DeviceProfile()
        self.defer_later = defer_later
        self._doe_delay = 0.0
        self._doe_delays_left = 0
        self._irq: IrqSink | None = None
        self._dma: DmaAccess | None = None
        self.reset_observers: list[ResetObserver] = []
        # True while FLR resets registers: observers of individual register changes
        # (TDISP enforcement) ignore what the reset itself changes.
        self.resetting = False

        self.doe = DoeMailbox(
            max_object_dw=profile.doe_max_object_dw,
            interrupt_message_number=profile.doe_interrupt_vector,
            interrupt=self.raise_msix,
        )
        self.msix = MsixCap(
            vectors=profile.msix_vectors,
            bir=0,
            table_offset=MSIX_TABLE_OFFSET,
            pba_offset=msix_pba_offset(profile.msix_vectors),
        )
        self.activity = ActivityCounters()
        self.doe.observers.append(self.activity.doe_exchange)
        self.regs = DeviceRegisters(profile.bar0_size, self.msix.state, self.raise_msix,
                                    on_marker=self.activity.log_marker)
        self.pcie = PcieCap(tee_io=profile.tee_io, on_flr=self.function_level_reset)
        self.pm = PowerManagementCap()
        self.ide = IdeCap(
            selective_streams=profile.ide_selective_streams,
            address_associations=profile.ide_address_associations,
            link_streams=profile.ide_link_streams,
        )
        self.header = Type0Header(
            HeaderIdentity(
                vendor_id=profile.vendor_id,
                device_id=profile.device_id,
                subsystem_vendor_id=profile.subsystem_vendor_id,
                subsystem_id=profile.subsystem_id,
                class_code=profile.class_code,
                revision=profile.revision,
                interrupt_pin=profile.interrupt_pin,
            ),
            [MemoryBar(0, profile.bar0_size, is_64bit=True, prefetchable=False)],
        )
        self.doe_cap = DoeCap(self.doe)
        self.config = ConfigSpace(
            self.header, [self.pcie, self.pm, self.msix], [self.doe_cap, self.ide]
        )
        self.doe_batch = DoeBatchRegion({self.doe_cap.offset: self.doe})
        self.register_doe_protocol(
            PCI_SIG_VENDOR_ID, DOE_TYPE_CMA_SPDM, spdm_unsupported_placeholder
        )
        self.register_doe_protocol(
            PCI_SIG_VENDOR_ID, DOE_TYPE_SECURED_CMA_SPDM, spdm_unsupported_placeholder
        )

    # ---- extension points --------------------------------------------------

    def register_doe_protocol(
        self, vendor_id: int, data_object_type: int, handler: Handler
    ) -> None:
        """Serve a DOE protocol; replacing an existing one keeps its discovery index."""
        self.doe.register(vendor_id, data_object_type, handler)

    def delay_doe_responses(self, seconds: float, count: int) -> None:
        """Hold the next `count` non-discovery DOE responses back `seconds` after GO."""
        if seconds < 0 or count < 0:
            raise ValueError("DOE delay and count must not be negative")
        if count and self.defer_later is None:
            raise ValueError("delayed DOE responses need a defer_later from the server")
        self._doe_delay, self._doe_delays_left = seconds, count
        self.doe.response_gate = self._doe_response_gate if count else None

    def _doe_response_gate(self, protocol: DoeProtocolId, ticket: int) -> bool:
        if protocol == DISCOVERY or self._doe_delays_left <= 0 or self.defer_later is None:
            return False
        self._doe_delays_left -= 1
        log.info("DOE response %d (%s) held back %d ms: BUSY until then "
                 "(fault injection, %d more to delay)", ticket, protocol,
                 round(self._doe_delay * 1000), self._doe_delays_left)
        doe = self.doe

        def ready() -> None:
            if doe.complete(ticket):
                log.info("DOE response %d ready after %d ms", ticket,
                         round(self._doe_delay * 1000))

        self.defer_later(self._doe_delay, ready)
        return True

    def add_reset_observer(self, observer: ResetObserver) -> None:
        """Called after every FLR / device reset, once all device state is reset."""
        self.reset_observers.append(observer)

    @property
    def irq_sink(self) -> IrqSink | None:
        return self._irq

    @property
    def dma(self) -> DmaAccess | None:
        return self._dma

    # ---- interrupts and reset -----------------------------------------------

    def raise_msix(self, vector: int) -> None:
        """Signal an MSI-X vector through the adapter (QEMU applies enable/mask)."""
        self.regs.note_interrupt()
        if self._irq is None:
            log.debug("MSI-X vector %d raised with no client attached", vector)
            return
        self._irq.trigger(IrqIndex.MSIX, vector)

    def function_level_reset(self) -> None:
        """FLR (PCIe r6.0 §6.6.2): config registers (non-sticky), BAR0 registers,
        DOE (aborted), IDE streams (keys dropped, INSECURE), MSI-X pending bits.
        Completes immediately, then tells the reset observers."""
        log.info("function level reset")
        self.resetting = True
        try:
            self.config.reset()
            self.regs.reset()
        finally:
            self.resetting = False
        for observer in list(self.reset_observers):
            observer()

    # ---- VfioUserDevice ------------------------------------------------------

    def regions(self) -> Sequence[RegionInfo]:
        sizes = {RegionIndex.BAR0: self.profile.bar0_size, RegionIndex.CONFIG: CONFIG_SPACE_SIZE}
        return [*(RegionInfo(int(index), sizes.get(index, 0)) for index in RegionIndex),
                RegionInfo(FIRST_DEVICE_REGION, self.doe_batch.size, type=self.doe_batch.type)]

    def irq_count(self, index: int) -> int:
        if index == IrqIndex.INTX:
            return 1 if self.profile.interrupt_pin else 0
        if index == IrqIndex.MSIX:
            return self.profile.msix_vectors
        return 0  # no MSI capability; ERR/REQ not supported (ERR would stop the VM)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        # Every guest config access lands here: plain ints and lists, no enum operators.
        reads = self.activity.reads
        if index == _CONFIG:
            reads[_CONFIG] += 1
            return self.config.file.read(offset, count)
        if index == _BAR0:
            reads[_BAR0] += 1
            return self.regs.read(offset, count)
        if index == FIRST_DEVICE_REGION:
            reads[index] += 1
            return self.doe_batch.read(offset, count)
        if 0 <= index < len(reads):
            reads[index] += 1
        raise ValueError(f"region {index} is not implemented")

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        writes = self.activity.writes
        if index == _CONFIG:
            writes[_CONFIG] += 1
            self.config.file.write(offset, data)
            return
        if index == _BAR0:
            writes[_BAR0] += 1
            self.regs.write(offset, data)
            return
        if index == FIRST_DEVICE_REGION:
            writes[index] += 1
            self.doe_batch.write(offset, data)
            return
        if 0 <= index < len(writes):
            writes[index] += 1
        raise ValueError(f"region {index} is not implemented")

    def reset(self) -> None:
        self.function_level_reset()

    def attach(self, irq: IrqSink, dma: DmaAccess) -> None:
        self._irq = irq
        self._dma = dma

    def detach(self) -> None:
        self._irq = None
        self._dma = None
