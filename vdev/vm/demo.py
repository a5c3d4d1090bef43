"""`make run` and `make vm`: the device server plus a real Linux 7.3 guest.

`run_demo` starts `vdev serve`, builds the guest test module, boots the
guest, narrates what the guest reports as it happens, then prints a
one-screen summary.  Its exit status is 0 only if every check held.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vdev.device_regs import ID_MAGIC, REG_DOORBELL, REG_ID, REG_SCRATCH0
from vdev.profile import DeviceProfile
from vdev.vm.checks import Check, Expected, foundation_checks
from vdev.vm.env import REPO, VmEnvError, find_env
from vdev.vm.qemu import MARK, choose_accel, qemu_command
from vdev.vm.session import GuestRun, ServerError, device_server, script

BDF = "0000:01:00.0"

# What the narration prints for each guest record, as it arrives.
_NARRATE = {
    "boot": "guest kernel {v} is up",
    "vendor": "device enumerated at " + BDF + ", vendor {v}",
    "doe_features": "DOE protocols discovered: {v}",
    "insmod": "vdevtest module loaded",
    "bound": "driver bound: {v}",
    "irq_after_doorbell": "doorbell written, MSI-X interrupts counted: {v}",
    "flr": "function-level reset through sysfs: {v}",
    "scratch_after_flr": "scratch register after FLR: {v}",
    "rmmod": "vdevtest unloaded",
    "done": "guest powering off",
}


def expected_from_profile(profile: DeviceProfile) -> Expected:
    return Expected(
        bdf=BDF, vendor_id=profile.vendor_id, device_id=profile.device_id,
        class_code=profile.class_code, revision=profile.revision,
        id_off=REG_ID, id_value=ID_MAGIC, scratch_off=REG_SCRATCH0, scratch_reset=0,
        doorbell_off=REG_DOORBELL,
    )


def foundation_script(exp: Expected) -> bytes:
    return script(
        "foundation.sh", BDF=exp.bdf, VID=f"{exp.vendor_id:04x}", DID=f"{exp.device_id:04x}",
        ID_OFF=f"{exp.id_off:#x}", SCRATCH_OFF=f"{exp.scratch_off:#x}",
        DOORBELL_OFF=f"{exp.doorbell_off:#x}",
    )


def _print(msg: str) -> None:
    print(msg, flush=True)


def _narrate(line: str) -> None:
    i = line.find(MARK)
    if i < 0:
        return
    key, _, value = line[i + len(MARK):].partition(" ")
    fmt = _NARRATE.get(key)
    if fmt:
        _print(f"  [guest]  {fmt.format(v=value.strip())}")


def print_summary(checks: list[Check], accel: str, workdir: Path) -> bool:
    ok = all(c.ok for c in checks)
    width = max(len(c.name) for c in checks)
    _print("")
    _print("=" * 78)
    _print(f" vdev summary (QEMU accel={accel}; logs in {workdir})")
    _print("-" * 78)
    for c in checks:
        _print(f" {'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}")
    _print("-" * 78)
    passed = sum(c.ok for c in checks)
    _print(f" {passed} of {len(checks)} checks held: {'OK' if ok else 'FAILED'}")
    _print("=" * 78)
    return ok


def run_demo(profile_path: str | None = None, workdir: Path | None = None) -> int:
    profile = DeviceProfile.from_toml(profile_path) if profile_path else DeviceProfile()
    workdir = workdir or REPO / "out" / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        env = find_env()
    except VmEnvError as exc:
        _print(f"vdev run: {exc}")
        return 2
    accel = choose_accel(env)
    _print(f"vdev run: QEMU {env.qemu_version()}, guest kernel {env.kernel.name}, accel={accel}")
    extra = ["--profile", profile_path] if profile_path else []
    server = device_server(workdir, extra=extra)
    try:
        server.start()
    except ServerError as exc:
        _print(f"vdev run: {exc}")
        return 1
    _print(f"  [device] vdev serve listening on {server.socket} (log {server.log})")
    exp = expected_from_profile(profile)
    run = GuestRun(env=env, workdir=workdir, modules=["vdevtest"],
                   devices=[server.socket], scripts={"50-foundation.sh": foundation_script(exp)})
    try:
        _print("  [guest]  building vdevtest.ko in the VM root, booting")
        result = run.boot(on_line=_narrate)
    except VmEnvError as exc:
        server.stop()
        _print(f"vdev run: {exc}")
        return 1
    server_alive = server.alive()
    server.stop()
    checks = foundation_checks(result, exp)
    checks.append(Check("device server healthy", server_alive,
                        "still serving after QEMU exited" if server_alive else server.log_tail(5)))
    return 0 if print_summary(checks, result.accel, workdir) else 1


def run_shell(profile_path: str | None = None) -> int:
    """Boot with the device attached and vdevtest loaded, console on this terminal."""
    profile = DeviceProfile.from_toml(profile_path) if profile_path else DeviceProfile()
    env = find_env()
    with tempfile.TemporaryDirectory(prefix="vdev-vm-") as tmp:
        work = Path(tmp)
        extra = ["--profile", profile_path] if profile_path else []
        server = device_server(work, extra=extra).start()
        hello = (f"insmod /modules/vdevtest.ko\n"
                 f"echo '{profile.vendor_id:04x} {profile.device_id:04x}' "
                 f"> /sys/bus/pci/drivers/vdevtest/new_id\n"
                 f"r device {BDF}: see /sys/bus/pci/devices/{BDF}\n").encode()
        spec = GuestRun(env=env, workdir=work, modules=["vdevtest"], devices=[server.socket],
                        scripts={"50-shell.sh": hello}, append="vdev.shell=1").prepare()
        argv = qemu_command(spec, choose_accel(env))
        # mon:stdio keeps Ctrl-A X available to quit QEMU.
        argv[argv.index("-serial") + 1] = "mon:stdio"
        print(f"vdev vm: device log {server.log}; Ctrl-A X quits QEMU", file=sys.stderr)
        try:
            return subprocess.call(argv, env=os.environ)
        finally:
            server.stop()
