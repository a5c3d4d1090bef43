"""Locate (and if needed build) the cached VM environment.

The environment is a Debian trixie root built by `guest/vm-env.sh`
(QEMU 11, the 7.3.4 kernel and headers, gcc-14, busybox).  Its binaries run
through the root's own dynamic loader, so no chroot is needed for QEMU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"  # the guest modules, /init and the VM environment script
GUEST_TESTS = REPO / "guest-tests"
KVER = "7.3.4+deb13-amd64"


def _warn(msg: str) -> None:
    print(f"[kernel] {msg}", file=sys.stderr, flush=True)


class VmEnvError(RuntimeError):
    """The VM environment is missing or unusable; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("VDEV_CACHE", Path.home() / ".cache" / "vdev"))


@dataclass(frozen=True)
class VmEnv:
    """Paths into one built VM environment."""

    dir: Path
    qemu_override: Path | None = None
    kernel_override: Path | None = None
    # The user's kernel build tree (KDIR=): guest modules are built there, on
    # the host; None: against Debian's headers inside the root.
    kdir_override: Path | None = None

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def default_kernel(self) -> Path:
        """Debian's 7.3.4, extracted from the root's vmlinuz."""
        return self.dir / "vmlinux"

    @property
    def kernel(self) -> Path:
        return self.kernel_override or self.default_kernel

    @property
    def busybox(self) -> Path:
        return self.root / "usr/bin/busybox"

    def with_kernel(self, kernel: str | None, kdir: str | None) -> VmEnv:
        """This environment booting `kernel` with modules built against `kdir`,
        refused with one line (vdev.vm.kernel.check_pair) if the two don't
        belong together or QEMU could not boot the image."""
        if not kernel and not kdir:
            return self
        from vdev.vm.kernel import check_pair

        guest = check_pair(kernel, kdir, self.default_kernel, say=_warn)
        return replace(self, kernel_override=guest.image.path if kernel else None,
                       kdir_override=guest.tree.build if guest.tree else None)

    def qemu_argv(self) -> list[str]:
        """argv prefix that runs QEMU: the user's binary, or the root's through its loader."""
        if self.qemu_override:
            return [str(self.qemu_override)]
        root = self.root
        return [
            str(root / "usr/lib64/ld-linux-x86-64.so.2"),
            "--library-path", str(root / "usr/lib/x86_64-linux-gnu"),
            str(root / "usr/bin/qemu-system-x86_64"),
            "-L", str(root / "usr/share/qemu"),
            "-L", str(root / "usr/share/seabios"),
        ]

    def qemu_version(self) -> str:
        out = subprocess.run(
            [*self.qemu_argv(), "--version"], capture_output=True, text=True, timeout=30
        )
        return out.stdout.splitlines()[0] if out.stdout else "unknown"


def find_env(*, build: bool = False, kernel: str | None = None,
             kdir: str | None = None) -> VmEnv:
    """The cached environment; with `build`, run vm-env.sh first (idempotent).
    `kernel`/`kdir` (default: $KERNEL/$KDIR) select the user's kernel and its
    build tree, checked as a pair before anything boots (with_kernel)."""
    if build:
        proc = subprocess.run(
            ["bash", str(GUEST / "vm-env.sh")], stdout=subprocess.PIPE, text=True
        )
        if proc.returncode != 0:
            raise VmEnvError("building the VM environment failed (messages above)")
    d = cache_dir() / "vm-env"
    if not (d / "stamp").is_file() or not (d / "vmlinux").is_file():
        raise VmEnvError(f"no VM environment at {d}: run `make vm-env`")
    qemu = os.environ.get("QEMU")
    env = VmEnv(d.resolve(), qemu_override=Path(qemu) if qemu else None)
    return env.with_kernel(kernel or os.environ.get("KERNEL") or None,
                           kdir or os.environ.get("KDIR") or None)


def build_module(src: Path, out: Path, kdir: Path | str | None = None) -> Path:
    """Build an out-of-tree guest module; returns the .ko path.  Against the
    user's tree `kdir` on the host with that tree's compiler, else against
    Debian's headers in the root with gcc-14."""
    if kdir:
        from vdev.vm.kernel import KernelTree, build_module_on_host

        return build_module_on_host(src, out, KernelTree.at(kdir))
    argv = ["bash", str(GUEST / "build-module.sh"), str(src), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise VmEnvError(f"module build of {src.name} failed:\n{proc.stdout}{proc.stderr}")
    kos = sorted(out.glob("*.ko"))
    if not kos:
        raise VmEnvError(f"module build of {src.name} produced no .ko")
    return kos[0]
