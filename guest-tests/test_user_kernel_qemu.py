"""KERNEL= and QEMU= select the user's own kernel and QEMU; KDIR= is checked.

Stand-ins for "your own": a copy of the cached vmlinux (the same release as
Debian's headers, so KERNEL= alone is a consistent pair) and a wrapper
script as QEMU that records that it ran.  A wrong KDIR is refused clearly
(and the cached headers can never be used as one: kbuild would write into
them).  Kernels built from source, in-tree and O=, with their KDIR:
test_own_kernel_build.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vdev.profiles import DeviceProfile
from vdev.vm.checks import foundation_checks
from vdev.vm.demo import expected_from_profile, foundation_script
from vdev.vm.env import GUEST, KVER, VmEnv, VmEnvError, build_module, find_env
from vdev.vm.session import GuestRun, device_server


def test_own_kernel_kdir_and_qemu(
    vm_env: VmEnv, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = workdir / "my-vmlinux"
    shutil.copy(vm_env.kernel, kernel)
    root = vm_env.root
    marker = workdir / "qemu-wrapper-ran"
    wrapper = workdir / "my-qemu"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" > {marker}\n"
        f"exec {root}/usr/lib64/ld-linux-x86-64.so.2 --library-path "
        f"{root}/usr/lib/x86_64-linux-gnu {root}/usr/bin/qemu-system-x86_64 "
        f"-L {root}/usr/share/qemu -L {root}/usr/share/seabios \"$@\"\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("KERNEL", str(kernel))
    monkeypatch.setenv("QEMU", str(wrapper))
    env = find_env()
    assert env.kernel == kernel and env.qemu_argv() == [str(wrapper)]

    srv = device_server(workdir).start()
    try:
        exp = expected_from_profile(DeviceProfile())
        res = GuestRun(env=env, workdir=workdir, modules=["vdevtest"], devices=[srv.socket],
                       scripts={"50-foundation.sh": foundation_script(exp)},
                       timeout=180).boot()
    finally:
        srv.stop()
    failed = [f"{c.name}: {c.detail}" for c in foundation_checks(res, exp) if not c.ok]
    assert not failed, "\n".join(failed)
    assert marker.exists() and str(kernel) in marker.read_text()
    assert res.argv[0] == str(wrapper)


def test_bad_kdir_is_refused(vm_env: VmEnv, workdir: Path) -> None:
    headers = vm_env.root / "usr" / "src" / f"linux-headers-{KVER}"
    with pytest.raises(VmEnvError, match="inside the VM environment"):
        build_module(GUEST / "vdevtest", workdir / "m1", kdir=str(headers))
    with pytest.raises(VmEnvError, match="not a kernel build tree"):
        build_module(GUEST / "vdevtest", workdir / "m2", kdir=str(workdir))
    # The default build still works: nothing was written into the cached headers.
    assert build_module(GUEST / "vdevtest", workdir / "m3").name == "vdevtest.ko"
    assert "KBUILD_EXTMOD" not in (headers / "Makefile").read_text()
