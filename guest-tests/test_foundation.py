"""The foundation path for real: QEMU 11's vfio-user-pci client, our server,
and the Linux 7.3 guest enumerating the endpoint and using DOE, MSI-X and FLR."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vdev.profiles import DeviceProfile
from vdev.vm.checks import foundation_checks
from vdev.vm.demo import expected_from_profile, foundation_script
from vdev.vm.env import VmEnv
from vdev.vm.qemu import VmResult
from vdev.vm.session import GuestRun, ServerProcess, device_server


@pytest.fixture
def server(workdir: Path) -> Iterator[ServerProcess]:
    srv = device_server(workdir).start()
    yield srv
    srv.stop()


def boot_foundation(env: VmEnv, workdir: Path, sock: Path, profile: DeviceProfile) -> VmResult:
    exp = expected_from_profile(profile)
    run = GuestRun(env=env, workdir=workdir, modules=["vdevtest"], devices=[sock],
                   scripts={"50-foundation.sh": foundation_script(exp)}, timeout=180)
    return run.boot()


def test_guest_enumerates_and_uses_the_device(
    vm_env: VmEnv, workdir: Path, server: ServerProcess
) -> None:
    profile = DeviceProfile()
    res = boot_foundation(vm_env, workdir, server.socket, profile)
    checks = foundation_checks(res, expected_from_profile(profile))
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed, "\n".join(failed)
    # The guest's own kernel log names the device the way lspci would.
    assert any("[1ded:7e10] type 00 class 0x120000 PCIe Endpoint" in line for line in res.dmesg)
    assert server.alive(), "server died:\n" + server.log_tail()
    log = server.log_text()
    assert "client connected" in log and "function level reset" in log
    assert "Traceback" not in log


def test_profile_ids_reach_the_guest(vm_env: VmEnv, workdir: Path) -> None:
    """A profile with other IDs and class is what the guest enumerates."""
    prof_file = workdir / "profile.toml"
    prof_file.write_text("vendor_id = 0x1ded\ndevice_id = 0x7e99\nclass_code = 0xff0000\n"
                         "msix_vectors = 4\n")
    profile = DeviceProfile.from_toml(prof_file)
    srv = device_server(workdir, extra=["--profile", str(prof_file)]).start()
    try:
        res = boot_foundation(vm_env, workdir, srv.socket, profile)
    finally:
        srv.stop()
    assert res.value("device") == "0x7e99"
    assert res.value("class") == "0xff0000"
    # Bound through new_id, since 7e99 is not in vdevtest's table.
    assert res.value("bound") == "vdevtest"
    assert res.value("irq_after_doorbell") == "1"


def _boot_and_kill(env: VmEnv, workdir: Path, sock: Path, when: str) -> VmResult:
    """Boot and SIGKILL QEMU as soon as the console shows `when`."""
    import os
    import signal

    from vdev.vm.qemu import run_vm

    spec = GuestRun(env=env, workdir=workdir, modules=["vdevtest"], devices=[sock],
                    scripts={"50-foundation.sh": foundation_script(
                        expected_from_profile(DeviceProfile()))}, timeout=120).prepare()
    seen = threading.Event()

    def watch(line: str) -> None:
        if when in line:
            seen.set()

    def killer() -> None:
        if seen.wait(timeout=100):
            # QEMU runs through the root's loader; its pid is the loader's.
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"qemu-system-x86_64" in cmd and str(sock).encode() in cmd:
                    os.kill(int(pid), signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = run_vm(spec, workdir / f"console-kill-{when.split()[-1]}.log", on_line=watch)
    t.join(timeout=10)
    return res


@pytest.mark.parametrize("when", ["@@VDEV boot", "@@VDEV doe_features", "@@VDEV insmod"])
def test_server_survives_qemu_killed(
    vm_env: VmEnv, workdir: Path, server: ServerProcess, when: str
) -> None:
    """QEMU SIGKILLed during boot, after DOE discovery or while the driver
    works: the server drops that client and serves the next QEMU fully."""
    killed = _boot_and_kill(vm_env, workdir, server.socket, when)
    assert not killed.completed and killed.returncode != 0
    time.sleep(0.5)
    assert server.alive(), server.log_tail()
    res = boot_foundation(vm_env, workdir, server.socket, DeviceProfile())
    failed = [f"{c.name}: {c.detail}" for c in
              foundation_checks(res, expected_from_profile(DeviceProfile())) if not c.ok]
    assert not failed, "\n".join(failed)
    log = server.log_text()
    assert log.count("client connected") == 2
    assert "Traceback" not in log
