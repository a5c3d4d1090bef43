"""How a guest test's DOE accesses reach the device (guest-tests/conftest.py `doe_path`)."""

from __future__ import annotations

from dataclasses import dataclass

from vdev.vm.env import VmEnv
from vdev.vm.qemu import VmResult


@dataclass(frozen=True)
class DoePath:
    """How the guest's DOE accesses reach the device: each as a config access on
    stock QEMU, or grouped by make qemu's QEMU with x-doe-batch (its mailbox
    copy must follow the device through aborts and resets)."""

    env: VmEnv
    doe_batch: bool

    def applied_to(self, res: VmResult) -> bool:
        """QEMU ran with x-doe-batch exactly when asked (it refuses to start when
        the device cannot give it, so running with it means it was used)."""
        return any('"x-doe-batch":true' in a for a in res.argv) == self.doe_batch
