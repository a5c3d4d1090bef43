"""One guest boot against a device whose faults the host arms while the guest runs.

The fault guest tests (guest-tests/test_guest_faults.py, test_guest_tdisp_faults.py)
share this set-up: `vdev serve --control` with a fresh identity, `vdev tsm serve` trusting
it, one boot with a console callback that arms faults on the control socket, then the
device's rule counters and TDI history read back before both servers stop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdev.control.client import call
from vdev.vm.env import VmEnv
from vdev.vm.qemu import VfioUserAttach, VmResult
from vdev.vm.session import (
    GuestRun,
    ServerProcess,
    device_server,
    root_anchor,
    tsm_mailbox_server,
)

ConsoleHook = Callable[[str], None]


@dataclass
class FaultBoot:
    result: VmResult
    servers: dict[str, ServerProcess]
    alive: dict[str, bool]
    rules: list[dict[str, Any]] | None  # `faults list` after the boot (None: device gone)
    tdi_history: list[dict[str, Any]] = field(default_factory=list)

    def assert_servers_healthy(self) -> None:
        for name, srv in self.servers.items():
            assert self.alive[name], f"{name} died:\n{srv.log_tail()}"
            assert "Traceback" not in srv.log_text(), srv.log_tail()


def boot_with_fault_control(vm_env: VmEnv, workdir: Path, scripts: dict[str, bytes],
                            control: Path, on_line: ConsoleHook,
                            timeout: float, doe_batch: bool = False) -> FaultBoot:
    """Boot with vtsm; the device serves its control socket at `control` (from
    `socket_path`), which `on_line` (the console callback) arms faults on.
    `doe_batch`: `vm_env` is make qemu's QEMU, with x-doe-batch on the device."""
    identity = workdir / "identity"
    device = device_server(workdir, "device", extra=[
        "--state-dir", str(identity), "--control", str(control)]).start()
    servers = {"device": device}
    try:
        anchor = root_anchor(identity, workdir / "root.pem")
        tsm = servers["tsm"] = tsm_mailbox_server(
            workdir, ["--trust-anchor", str(anchor)]).start()
        run = GuestRun(env=vm_env, workdir=workdir, modules=["vtsm"],
                       devices=[VfioUserAttach(device.socket, doe_batch=doe_batch), tsm.socket],
                       scripts=scripts, timeout=timeout)
        result = run.boot(on_line=on_line)
        rules: list[dict[str, Any]] | None = None
        history: list[dict[str, Any]] = []
        if device.alive():
            rules = call(str(control), "faults", {"action": "list"})["result"]["armed"]
            history = call(str(control), "tdi")["result"][0]["history"]
        alive = {name: srv.alive() for name, srv in servers.items()}
    finally:
        for srv in reversed(servers.values()):  # the TSM first, as its client goes
            srv.stop()
        for p in (control, device.socket):
            if p.exists():
                os.unlink(p)
    return FaultBoot(result, servers, alive, rules, history)
