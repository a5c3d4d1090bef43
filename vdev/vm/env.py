"""Locate (and if needed build) the cached VM environment.

The environment is a Debian trixie root built by `guest/vm-env.sh`
(QEMU 11, the 7.3.4 kernel and headers, gcc-14, busybox).  Its binaries run
through the root's own dynamic loader, so no chroot is needed for QEMU.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"  # the guest modules, /init and the VM environment script
GUEST_TESTS = REPO / "guest-tests"
KVER = "7.3.4+deb13-amd64"


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

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def kernel(self) -> Path:
        return self.kernel_override or self.dir / "vmlinux"

    @property
    def busybox(self) -> Path:
        return self.root / "usr/bin/busybox"

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


def find_env(*, build: bool = False) -> VmEnv:
    """The cached environment; with `build`, run vm-env.sh first (idempotent)."""
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
    kernel = os.environ.get("KERNEL")
    return VmEnv(
        d.resolve(),
        qemu_override=Path(qemu) if qemu else None,
        kernel_override=Path(kernel) if kernel else None,
    )


def build_module(src: Path, out: Path, kdir: str | None = None) -> Path:
    """Build an out-of-tree guest module in the root; returns the .ko path."""
    kdir = kdir if kdir is not None else os.environ.get("KDIR") or None
    argv = ["bash", str(GUEST / "build-module.sh"), str(src), str(out)]
    if kdir:
        argv.append(kdir)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise VmEnvError(f"module build of {src.name} failed:\n{proc.stdout}{proc.stderr}")
    kos = sorted(out.glob("*.ko"))
    if not kos:
        raise VmEnvError(f"module build of {src.name} produced no .ko")
    return kos[0]
