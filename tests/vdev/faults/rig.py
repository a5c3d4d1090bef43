"""A TeeDevice with a fault plan installed, reached through its own DOE mailbox with the
Linux doe.c register sequence: what the fault tests drive, with either the SPDM
requester (SecureHost) or the TSM model on top."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers.secure_host import ConfigPort
from vdev.doe.requester import DoeRequester
from vdev.endpoint.tee_device import TeeDevice
from vdev.faults import FaultInjector, FaultPlan, install

DOE_CAP = 0x100


class FaultRig:
    def __init__(self, state_dir: Path, *specs: str) -> None:
        # Held responses (delay faults) are released by the test, not by a server loop.
        self.deferred: list[tuple[float, Callable[[], None]]] = []
        self.device = TeeDevice(state_dir=state_dir,
                                defer_later=lambda s, f: self.deferred.append((s, f)))
        self.injector: FaultInjector = install(self.device, FaultPlan.from_specs(list(specs)))
        self.events: list[str] = []  # every injected fault, as the trace gets it
        self.injector.observers.append(self.events.append)
        self.cfg = ConfigPort.of_device(self.device)
        self.doe = DoeRequester(lambda off: self.cfg.read(off, 4),
                                lambda off, v: self.cfg.write(off, 4, v), DOE_CAP, max_polls=20)
