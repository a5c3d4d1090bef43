"""PCI Power Management capability, ID 0x01 (PCI PM 1.2; PCIe r6.0 §7.5.2).

Version 3 (PM 1.2), D0 and D3hot only, no PME.  No_Soft_Reset is set so a
D3hot -> D0 transition keeps our state (§7.5.2.2), which is what a purely
emulated device does anyway.
"""

from __future__ import annotations

from vdev.pci.capability import Capability
from vdev.pci.register import Register

CAP_ID_PM = 0x01
PMC_VERSION_1_2 = 0x3
PMCSR_STATE_MASK = 0x3  # PowerState, RW (D0=0, D3hot=3)
PMCSR_NO_SOFT_RESET = 1 << 3
PMCSR_PME_STATUS = 1 << 15


class PowerManagementCap(Capability):
    cap_id = CAP_ID_PM
    name = "PM"

    def __init__(self) -> None:
        super().__init__()
        self.pmc: Register | None = None
        self.pmcsr: Register | None = None

    @property
    def size(self) -> int:
        return 8

    def body_registers(self, base: int) -> list[Register]:
        self.pmc = Register("PM_PMC", base + 2, 2, reset=PMC_VERSION_1_2)
        # PME_En is RO 0 (no PME support); PME_Status would be RW1C but is never set.
        self.pmcsr = Register(
            "PM_PMCSR",
            base + 4,
            2,
            reset=PMCSR_NO_SOFT_RESET,
            rw=PMCSR_STATE_MASK,
            w1c=PMCSR_PME_STATUS,
        )
        bse_data = Register("PM_BSE_DATA", base + 6, 2)
        return [self.pmc, self.pmcsr, bse_data]

    @property
    def power_state(self) -> int:
        assert self.pmcsr is not None
        return self.pmcsr.value & PMCSR_STATE_MASK
