"""qemu-configs/ runs the invocations the VM runner builds: each script, run with a QEMU
that only records its arguments, must give exactly `qemu_command`'s argv for the same
devices, so the documented command lines cannot drift from what `make run` and
`make vm` execute."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vdev.vm.demo import SHELL_APPEND
from vdev.vm.env import REPO, VmEnv
from vdev.vm.qemu import VfioUserAttach, VmSpec, qemu_command

CONFIGS = REPO / "qemu-configs"


def recorded_argv(tmp_path: Path, script: str, *args: str) -> tuple[Path, list[str]]:
    """Run a qemu-configs script with QEMU= a recorder; the stub's path and the argv."""
    out = tmp_path / "argv"
    stub = tmp_path / "qemu-stub"
    stub.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {out}\n")
    stub.chmod(0o755)
    env = {**os.environ, "QEMU": str(stub), "KERNEL": str(tmp_path / "vmlinux")}
    env.pop("ACCEL", None)
    subprocess.run([str(CONFIGS / script), *args], env=env, check=True, timeout=30)
    return stub, out.read_bytes().decode().split("\0")[:-1]


def runner_argv(tmp_path: Path, stub: Path, spec: VmSpec) -> list[str]:
    env = VmEnv(tmp_path, qemu_override=stub, kernel_override=tmp_path / "vmlinux")
    spec.env = env
    argv = qemu_command(spec, "tcg")
    assert argv[0] == str(stub)
    return argv[1:]


def test_endpoint_sh_is_the_one_device_run(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.cpio.gz"
    stub, got = recorded_argv(tmp_path, "endpoint.sh", "/tmp/vdev.sock", str(initrd))
    spec = VmSpec(env=VmEnv(tmp_path), initrd=initrd,
                  devices=[VfioUserAttach(Path("/tmp/vdev.sock"))])
    assert got == runner_argv(tmp_path, stub, spec)


def test_endpoint_sh_passes_extra_kernel_arguments(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.cpio.gz"
    stub, got = recorded_argv(tmp_path, "endpoint.sh", "/tmp/vdev.sock", str(initrd),
                              "loglevel=8", "foo=1")
    spec = VmSpec(env=VmEnv(tmp_path), initrd=initrd, append="loglevel=8 foo=1",
                  devices=[VfioUserAttach(Path("/tmp/vdev.sock"))])
    assert got == runner_argv(tmp_path, stub, spec)


def test_tee_io_sh_is_what_make_vm_runs(tmp_path: Path) -> None:
    """The endpoint and the TSM mailbox, the console on the terminal with its log, the
    kernel log's serial port, the shell: `vdev vm`'s spec (run_shell)."""
    initrd, logs = tmp_path / "initrd.cpio.gz", tmp_path / "logs"
    stub, got = recorded_argv(tmp_path, "tee-io.sh", "/tmp/vdev.sock", "/tmp/tsm.sock",
                              str(initrd), str(logs))
    spec = VmSpec(env=VmEnv(tmp_path), initrd=initrd, append=SHELL_APPEND,
                  devices=[VfioUserAttach(Path("/tmp/vdev.sock"), id="vu0"),
                           VfioUserAttach(Path("/tmp/tsm.sock"), id="vu1")],
                  terminal_logs=logs)
    assert got == runner_argv(tmp_path, stub, spec)
    assert logs.is_dir()  # QEMU opens its log files there
