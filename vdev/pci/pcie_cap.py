"""PCI Express capability, ID 0x10, version 2, Endpoint (PCIe r6.0 §7.5.3).

What matters to the guest (docs/linux-pci-tsm.md §6, docs/vfio-user-qemu.md §6.2, §6.4):
- Flags: version 2, Device/Port Type 0000b (PCI Express Endpoint); QEMU
  rejects other types for vfio-user.
- DEVCAP bit 30 TEE-IO Supported (Linux PCI_EXP_DEVCAP_TEE) makes the device
  a PCI/TSM PF0 candidate; bit 28 Function Level Reset Capability.
- DEVCTL bit 15 Initiate FLR: a write of 1 performs the FLR; the bit always
  reads 0 (§7.5.3.4).  QEMU forwards the write untouched.
- Link registers: x1 at 2.5 GT/s.  QEMU emulates them anyway.
"""

from __future__ import annotations

from collections.abc import Callable

from vdev.pci.capability import Capability
from vdev.pci.register import Register

CAP_ID_EXP = 0x10
CAP_EXP_SIZE_V2 = 0x3C

FLAGS_VERSION_2 = 0x2
FLAGS_TYPE_ENDPOINT = 0x0 << 4

# Device Capabilities (§7.5.3.3)
DEVCAP_MPS_256 = 0x1  # Max_Payload_Size Supported (bits 2:0): 256 bytes
DEVCAP_EXT_TAG = 1 << 5
DEVCAP_RBER = 1 << 15  # Role-Based Error Reporting, must be 1 since PCIe 1.1
DEVCAP_FLR = 1 << 28
DEVCAP_TEE = 1 << 30  # TEE Device Interface Security Protocol (TDISP) supported

# Device Control (§7.5.3.4)
DEVCTL_ERR_REPORTING = 0xF  # CERE, NFERE, FERE, URRE
DEVCTL_RELAX_EN = 1 << 4
DEVCTL_PAYLOAD = 0x7 << 5
DEVCTL_EXT_TAG = 1 << 8
DEVCTL_AUX_PME = 1 << 10
DEVCTL_NOSNOOP_EN = 1 << 11
DEVCTL_READRQ = 0x7 << 12
DEVCTL_BCR_FLR = 1 << 15
DEVCTL_RW = (
    DEVCTL_ERR_REPORTING
    | DEVCTL_RELAX_EN
    | DEVCTL_PAYLOAD
    | DEVCTL_EXT_TAG
    | DEVCTL_AUX_PME
    | DEVCTL_NOSNOOP_EN
    | DEVCTL_READRQ
)
# Reset: relaxed ordering and no-snoop enabled, MRRS 512 bytes (010b) per §7.5.3.4.
DEVCTL_RESET = DEVCTL_RELAX_EN | DEVCTL_NOSNOOP_EN | (0x2 << 12)

# Device Status (§7.5.3.5): error detected bits are RW1C.
DEVSTA_W1C = 0xF

# Link (§7.5.3.6-8): 2.5 GT/s, x1.
LNKCAP_RESET = 0x1 | (0x1 << 4)
LNKCTL_RW = 0x0FFB  # ASPM, RCB, CCC, ES, ... (Link Disable/Retrain are for downstream ports)
LNKSTA_RESET = 0x1 | (0x1 << 4) | (1 << 12)  # speed, width, Slot Clock Configuration

# Device Capabilities 2 / Control 2 (§7.5.3.15-16)
DEVCAP2_COMP_TMOUT_DIS = 1 << 4
DEVCTL2_COMP_TIMEOUT = 0xF
DEVCTL2_COMP_TMOUT_DIS = 1 << 4
DEVCTL2_RW = DEVCTL2_COMP_TIMEOUT | DEVCTL2_COMP_TMOUT_DIS

# Register offsets inside the capability.
EXP_FLAGS = 0x02
EXP_DEVCAP = 0x04
EXP_DEVCTL = 0x08
EXP_DEVSTA = 0x0A
EXP_LNKCAP = 0x0C
EXP_LNKCTL = 0x10
EXP_LNKSTA = 0x12
EXP_DEVCAP2 = 0x24
EXP_DEVCTL2 = 0x28
EXP_DEVSTA2 = 0x2A
EXP_LNKCAP2 = 0x2C
EXP_LNKCTL2 = 0x30
EXP_LNKSTA2 = 0x32


class PcieCap(Capability):
    cap_id = CAP_ID_EXP
    name = "PCIe"

    def __init__(self, tee_io: bool = True, on_flr: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.tee_io = tee_io
        self.on_flr = on_flr
        self.devcap: Register | None = None
        self.devctl: Register | None = None
        self.devsta: Register | None = None

    @property
    def size(self) -> int:
        return CAP_EXP_SIZE_V2

    @property
    def devcap_value(self) -> int:
        return (
            DEVCAP_MPS_256
            | DEVCAP_EXT_TAG
            | DEVCAP_RBER
            | DEVCAP_FLR
            | (DEVCAP_TEE if self.tee_io else 0)
        )

    def _devctl_written(self, value: int, byte_enable: int) -> None:
        # Initiate FLR is write-only (reads 0); it is not in the RW mask, so only the hook sees it.
        if value & byte_enable & DEVCTL_BCR_FLR and self.on_flr is not None:
            self.on_flr()

    def body_registers(self, base: int) -> list[Register]:
        self.devcap = Register("EXP_DEVCAP", base + EXP_DEVCAP, 4, reset=self.devcap_value)
        self.devctl = Register(
            "EXP_DEVCTL",
            base + EXP_DEVCTL,
            2,
            reset=DEVCTL_RESET,
            rw=DEVCTL_RW,
            on_write=self._devctl_written,
        )
        self.devsta = Register("EXP_DEVSTA", base + EXP_DEVSTA, 2, w1c=DEVSTA_W1C)
        return [
            Register("EXP_FLAGS", base + EXP_FLAGS, 2, reset=FLAGS_VERSION_2 | FLAGS_TYPE_ENDPOINT),
            self.devcap,
            self.devctl,
            self.devsta,
            Register("EXP_LNKCAP", base + EXP_LNKCAP, 4, reset=LNKCAP_RESET),
            Register("EXP_LNKCTL", base + EXP_LNKCTL, 2, rw=LNKCTL_RW),
            Register("EXP_LNKSTA", base + EXP_LNKSTA, 2, reset=LNKSTA_RESET),
            # Slot and Root registers (0x14..0x23) do not exist for an endpoint: read 0.
            Register("EXP_DEVCAP2", base + EXP_DEVCAP2, 4, reset=DEVCAP2_COMP_TMOUT_DIS),
            Register("EXP_DEVCTL2", base + EXP_DEVCTL2, 2, rw=DEVCTL2_RW),
            Register("EXP_DEVSTA2", base + EXP_DEVSTA2, 2),
            # Link Capabilities 2: Supported Link Speeds Vector = 2.5 GT/s (bit 1).
            Register("EXP_LNKCAP2", base + EXP_LNKCAP2, 4, reset=1 << 1),
            Register("EXP_LNKCTL2", base + EXP_LNKCTL2, 2, reset=0x1, rw=0xF),
            Register("EXP_LNKSTA2", base + EXP_LNKSTA2, 2),
        ]
