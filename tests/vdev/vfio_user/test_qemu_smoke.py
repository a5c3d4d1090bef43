"""Realize a vfio-user-pci device in the real QEMU 11 against our server.

Skipped when the cached VM environment (`make vm-env`) is absent.  No guest
boots: `-S` stops the CPUs after realize and the startup reset, which already
exercise VERSION, DMA_MAP with a memfd and without fd, GET_INFO, region and
IRQ info, the config read, DEVICE_RESET and the post-reset BAR writes
(docs/vfio-user-qemu.md §5).
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
from collections.abc import Sequence

import pytest

from tests.vdev.vfio_user.conftest import FakeDevice, wait_for
from vdev.pci.device_api import RegionIndex, RegionInfo
from vdev.vfio_user.threaded import serve_in_thread

pytestmark = pytest.mark.timeout(30)


class PciFake(FakeDevice):
    """The fake device with enough of a PCIe endpoint header for QEMU's realize."""

    def __init__(self) -> None:
        super().__init__()
        c = self.config
        struct.pack_into("<HH", c, 0x00, 0x1B36, 0x0100)  # vendor, device
        struct.pack_into("<H", c, 0x06, 0x0010)  # status: capabilities list
        c[0x0B] = 0xFF  # class: unassigned
        c[0x34] = 0x40  # capabilities pointer
        c[0x40:0x44] = bytes([0x10, 0x00, 0x02, 0x00])  # PCIe cap v2, endpoint
        struct.pack_into("<I", c, 0x100, 0x0001000B)  # ext cap 0xB (VSEC), v1, end

    def regions(self) -> Sequence[RegionInfo]:
        sizes = {RegionIndex.BAR0: 4096, RegionIndex.CONFIG: 4096}
        return [RegionInfo(i, sizes.get(RegionIndex(i), 0)) for i in range(9)]


def qemu_argv() -> list[str]:
    try:
        from vdev.vm.env import VmEnvError, find_env
    except ImportError:  # pragma: no cover - the vm package is someone else's
        pytest.skip("vdev.vm not available")
    try:
        return find_env().qemu_argv()
    except VmEnvError as exc:
        pytest.skip(str(exc))


def test_qemu_realizes_device(caplog: pytest.LogCaptureFixture) -> None:
    argv = qemu_argv()
    with serve_in_thread(lambda loop: PciFake()) as served:
        proc, err = _run_qemu(argv, served.path, caplog)
        wait_for(lambda: served.server.connection is None, 5)
    assert proc.returncode == 0, err
    # The only complaint allowed: no ERR irq offered (docs/vfio-user-qemu.md §5 step 6).
    problems = [ln for ln in err.splitlines() if ln and "error recovery" not in ln]
    assert problems == []
    seen = " ".join(r.getMessage() for r in caplog.records)
    for name in ("VERSION", "DMA_MAP", "DEVICE_GET_INFO", "DEVICE_GET_REGION_INFO",
                 "REGION_READ", "DEVICE_RESET"):
        assert f"<- {name} " in seen, name
    assert "refused" not in seen and "malformed" not in seen
    device = served.device
    assert device.resets >= 1 and device.attaches == 1 and device.detaches == 1


def _run_qemu(
    argv: list[str], path: str, caplog: pytest.LogCaptureFixture
) -> tuple[subprocess.Popen[str], str]:
    """Realize the device in QEMU (-S: no guest runs), then quit over QMP."""
    dev = {"driver": "vfio-user-pci", "id": "vu0", "bus": "rp0", "addr": "0x0",
           "socket": {"type": "unix", "path": path}, "rombar": 0}
    cmd = [
        *argv, "-machine", "q35,memory-backend=mem", "-accel", "tcg", "-m", "128M",
        "-object", "memory-backend-memfd,id=mem,size=128M,share=on",
        "-S", "-nodefaults", "-display", "none", "-qmp", "stdio",
        "-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1",
        "-device", json.dumps(dev),
    ]
    with caplog.at_level(logging.DEBUG, logger="vdev.vfio_user"):
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            greeting = proc.stdout.readline()  # QMP is up once realize is done
            assert "QMP" in greeting, greeting
            proc.stdin.write('{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n')
            proc.stdin.flush()
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc, err
