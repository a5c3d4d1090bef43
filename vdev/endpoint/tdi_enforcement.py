"""TDISP enforcement in the device model (PCIe 6.2 §11.2.4, §11.4.5).

While a TDI is CONFIG_LOCKED or RUN, changes to the configuration that the LOCK
froze are errors: the TDI moves to ERROR (`Tdi.config_violation`) and a WARNING log
line names the change.  `TdiEnforcement` watches the endpoint through its hooks:

  BARs (header.bar_observers)      a write that changes a BAR's value: a new address,
                                   or the all-ones sizing write (that, too, replaces
                                   the programmed address).  QEMU emulates BARs for the
                                   guest but still forwards the writes, so we see them.
                                   A write of the value already there is no change.
  Command (header.command_observers)  Memory Space Enable toggled.
  MSI-X, only when locked with LOCK_MSIX (§11.3.8 LOCK_INTERFACE flags):
                                   Message Control writes that change Enable or
                                   Function Mask, and BAR0 writes into the MSI-X
                                   table.  QEMU emulates the capability and the table:
                                   it forwards Message Control writes (so we see them)
                                   but serves table and PBA accesses itself, so table
                                   writes reach us only from clients that do not
                                   emulate MSI-X (tests, other VMMs).  A guest
                                   reprogramming a vector under QEMU is invisible here.
                                   vfio-user carries no TLP T bit either, so a write
                                   cannot be told to come from the TVM (allowed on
                                   TEE-owned ranges) or from the host: every change is
                                   treated as the host's.
  IDE (ide.control_observers, ide.observers)
                                   a SEL_CTL write that changes the control register
                                   of the TDI's default stream (the stream whose
                                   Stream ID the LOCK named), and that stream leaving
                                   SECURE for any reason (disable, key stop, session
                                   end: §11.4.5).
  FLR (endpoint reset observers)   DEVCTL Initiate FLR or the vfio-user DEVICE_RESET:
                                   `Tdi.function_reset()` -> CONFIG_UNLOCKED (§11.2.4:
                                   FLR returns the TDI to CONFIG_UNLOCKED and discards
                                   the lock context).  Register changes made by the
                                   reset itself (Command, BARs, IDE keys) are not
                                   violations: the endpoint's `resetting` flag is set
                                   while they happen.

SPDM sessions and FLR: an FLR resets the *function* (the TDI), not the DSM.  The SPDM
session is the TSM's channel to the DSM (§11.1: the DSM is the device's security
manager, reached through the DOE mailbox of function 0), and TDISP needs it to lock
the TDI again after the reset; dropping it would force a full re-attestation for
every guest-initiated reset.  So by default sessions survive FLR (`flr_ends_spdm_sessions`
in the profile changes that; `vdev.endpoint.tee_device` implements it).  The DOE mailbox
itself is aborted by FLR like any function register (§6.30).
"""

from __future__ import annotations

import logging

from tdisp.codes import LockFlags, TdiState
from tdisp.responder import Tdi
from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.header import CMD_MEMORY
from vdev.pci.ide_cap import CTL_ID, IdeStreamState, SelectiveStream
from vdev.pci.msix_cap import MSIX_ENTRY_SIZE, MSIX_FLAGS_ENABLE, MSIX_FLAGS_MASKALL

log = logging.getLogger(__name__)

LOCKED_STATES = frozenset({TdiState.CONFIG_LOCKED, TdiState.RUN})


class TdiEnforcement:
    """Connects one TDI to the endpoint's register hooks."""

    def __init__(self, endpoint: TeeIoEndpoint, tdi: Tdi) -> None:
        self.endpoint = endpoint
        self.tdi = tdi
        endpoint.header.bar_observers.append(self._bar_written)
        endpoint.header.command_observers.append(self._command_written)
        endpoint.msix.control_observers.append(self._msix_control_written)
        endpoint.ide.control_observers.append(self._ide_control_written)
        endpoint.ide.observers.append(self._ide_state_changed)
        endpoint.add_reset_observer(self._function_reset)

    # ---- state ------------------------------------------------------------

    @property
    def locked(self) -> bool:
        return self.tdi.state in LOCKED_STATES and not self.endpoint.resetting

    @property
    def msix_locked(self) -> bool:
        lock = self.tdi.lock
        return self.locked and lock is not None and bool(lock.params.flags & LockFlags.LOCK_MSIX)

    @property
    def default_stream_id(self) -> int | None:
        lock = self.tdi.lock
        return None if lock is None else lock.params.default_stream_id

    def _violation(self, reason: str) -> None:
        before = self.tdi.state
        after = self.tdi.config_violation(reason)
        log.warning("TDI %s: %s while %s -> %s",
                    self.tdi.interface_id, reason, before.name, after.name)

    # ---- observers ----------------------------------------------------------

    def _bar_written(self, index: int, old: int, new: int) -> None:
        if self.locked and old != new:
            self._violation(f"BAR{index} changed from {old:#x} to {new:#x}")

    def _command_written(self, old: int, new: int) -> None:
        if self.locked and (old ^ new) & CMD_MEMORY:
            state = "set" if new & CMD_MEMORY else "cleared"
            self._violation(f"Command Memory Space Enable {state}")

    def _msix_control_written(self, old: int, new: int) -> None:
        changed = (old ^ new) & (MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL)
        if self.msix_locked and changed:
            self._violation(f"MSI-X Message Control changed from {old:#06x} to {new:#06x}")

    def bar0_written(self, offset: int, data: bytes, before: bytes) -> None:
        """Called by the device for BAR0 writes (the table lives in BAR0)."""
        msix = self.endpoint.msix
        table_end = msix.table_offset + msix.state.vectors * MSIX_ENTRY_SIZE
        if (
            self.msix_locked
            and offset < table_end
            and offset + len(data) > msix.table_offset
            and data != before
        ):
            self._violation(f"MSI-X table write at BAR0+{offset:#x}")

    def _ide_control_written(self, stream: SelectiveStream, old: int, new: int) -> None:
        sid = self.default_stream_id
        if not self.locked or sid is None or old == new:
            return
        if sid in ((old & CTL_ID) >> 24, (new & CTL_ID) >> 24):
            self._violation(
                f"IDE stream {sid} SEL_CTL changed from {old:#010x} to {new:#010x}"
            )

    def _ide_state_changed(
        self, stream: SelectiveStream, old: IdeStreamState, new: IdeStreamState
    ) -> None:
        sid = self.default_stream_id
        if (
            self.locked
            and sid is not None
            and stream.stream_id == sid
            and old is IdeStreamState.SECURE
            and new is not IdeStreamState.SECURE
        ):
            self._violation(f"IDE stream {sid} left SECURE")

    def _function_reset(self) -> None:
        before = self.tdi.state
        after = self.tdi.function_reset()
        if before is not after:
            log.info("TDI %s: function level reset, %s -> %s",
                     self.tdi.interface_id, before.name, after.name)
