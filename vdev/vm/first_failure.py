"""The first thing that went wrong in a guest run, in its own words.

When QEMU exits before the guest runs, when the guest kernel panics or when
a module does not load, every later check fails as a consequence; a kernel
developer needs the cause.  `first_failure` reads the run's QEMU stderr,
console and records and returns that cause with the message of whoever
reported it (QEMU's stderr line, the panic line, busybox insmod's line and
the kernel's reason from the log), or None when the run got through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# The kernel's own wording (kernel/panic.c, kernel/module/main.c).
_PANIC = re.compile(r"Kernel panic - not syncing:.*")
_OOPS = re.compile(r"(BUG: .*|Oops: .*|general protection fault.*)")
# busybox: "insmod: can't insert 'X': reason";
# kmod: "insmod: ERROR: could not insert module X: reason".
_INSMOD = re.compile(
    r"insmod: (?:can't insert '([^']+)'|ERROR: could not insert module (\S+)): (.*)")
_KTIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")
MARK = "@@VDEV "


@dataclass(frozen=True)
class FirstFailure:
    stage: str  # "QEMU", "kernel panic", "kernel oops", "insmod", "guest"
    message: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"


def _strip(line: str) -> str:
    return _KTIME.sub("", line.rstrip("\r\n")).strip()


def _module_reason(console: Sequence[str], module: str) -> str | None:
    """The kernel's own line about why `module` was refused (e.g. `vtsm: disagrees
    about version of symbol ...`, `.gnu.linkonce.this_module section size must match`)."""
    stem = module.rsplit("/", 1)[-1].removesuffix(".ko")
    for raw in console:
        line = raw.rstrip("\r\n")
        if line.startswith(MARK) or "insmod:" in line:
            continue
        text = _strip(line.removeprefix("@@DMESG "))
        if text.startswith(f"{stem}:") or (stem in text and "module" in text.lower()):
            return text
    return None


def first_failure(*, console: Sequence[str], stderr: Sequence[str], returncode: int | None,
                  timed_out: bool, booted: bool) -> FirstFailure | None:
    """The cause that explains the run's failed checks, if there is one such cause."""
    for raw in console:
        if m := _PANIC.search(raw):
            return FirstFailure("kernel panic", m[0].strip())
    if not booted:
        # QEMU's warnings (e.g. vfio-user's "Could not enable error recovery")
        # are not why it stopped.
        err = [line.strip() for line in stderr if line.strip() and "warning:" not in line]
        if err:
            return FirstFailure("QEMU", f"exited {returncode} before the guest ran: {err[0]}")
    if not booted:
        if timed_out:
            return FirstFailure("guest", "QEMU timed out before the guest reached /init "
                                "(see console.log)")
        return FirstFailure("QEMU", f"exited {returncode} before the guest reached /init "
                            "(see console.log)")
    for raw in console:
        if m := _INSMOD.search(raw):
            module = m[1] or m[2]
            reason = _module_reason(console, module)
            return FirstFailure("insmod", f"{module}: {m[3].strip()}"
                                + (f" (kernel: {reason})" if reason else ""))
    for raw in console:
        if m := _OOPS.search(_strip(raw.removeprefix("@@DMESG "))):
            return FirstFailure("kernel oops", m[0].strip())
    return None
