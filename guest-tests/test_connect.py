"""`make run`'s flow as a test: the kernel's PCI/TSM ABI connects the device
with the Python TSM model as the platform, through LOCK, REPORT and START to
RUN, MMIO in RUN, then STOP, disconnect and power-off, with every check of the
summary holding (guest sysfs, TSM evidence, both servers healthy)."""

from __future__ import annotations

import json
from pathlib import Path

from vdev.vm.demo import connect_session
from vdev.vm.env import VmEnv


def test_connect_to_run_and_back(vm_env: VmEnv, workdir: Path) -> None:
    checks, result = connect_session(vm_env, workdir)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert result is not None, failed
    assert not failed, "\n".join(failed)
    names = {c.name for c in checks}
    # The summary really covers the whole flow, not a subset that happened to pass.
    assert {"tsm/connect", "IDE stream SECURE", "TDISP LOCK", "interface report matches BAR0",
            "START -> RUN", "MMIO in RUN", "STOP", "disconnect"} <= names
    evidence = json.loads((workdir / "evidence.json").read_text())
    assert evidence["spdm"]["session_state"] == "ended"
    hist = [h["state"] for h in evidence["tdis"]["01:00.0"]["history"]]
    assert "RUN" in hist and hist[-1] == "CONFIG_UNLOCKED"
    device_log = (workdir / "device-server.log").read_text()
    assert "CONFIG_LOCKED --START--> RUN" in device_log
    assert "SPDM session" in device_log and "established" in device_log
