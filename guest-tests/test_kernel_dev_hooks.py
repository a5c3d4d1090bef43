"""The patch-workflow hooks of `make run`, on Debian's kernel, through `make`
as docs/kernel-developers.md shows them: APPEND=/QUIET=0, INITRAMFS_ADD=
(a module, a program printing KTAP, a data file), VTSM=0, and the first
failure named with its own message (QEMU's, the panic line, insmod's)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from vdev.vm.env import REPO, VmEnv

RUN_DIR = REPO / "out" / "run"


def make_run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "KERNEL", "KDIR")}
    # A wide "terminal" (the summary wraps long rows at COLUMNS), so that each row
    # the tests look for is on one line.
    proc = subprocess.run(["make", "--no-print-directory", "run", *args], cwd=REPO,
                          env={**clean, "COLUMNS": "300", **(env or {})},
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    return proc.returncode, out


def summary_line(out: str) -> str:
    m = re.search(r"^ (\d+ of \d+ checks held.*)$", out, re.M)
    assert m, out[-3000:]
    return m[1]


def test_added_program_data_append_and_no_quiet(vm_env: VmEnv, tmp_path: Path) -> None:
    prog = tmp_path / "90-mine.sh"
    prog.write_text('#!/bin/sh\necho "KTAP version 1"\necho "1..2"\n'
                    '[ -d /sys/bus/pci/devices/$EP ] && echo "ok 1 endpoint $EP" '
                    '|| echo "not ok 1 endpoint $EP"\n'
                    'grep -q needle /extra/data.txt && echo "ok 2 data" || echo "not ok 2 data"\n')
    prog.chmod(0o755)
    (tmp_path / "data.txt").write_text("a needle\n")
    rc, out = make_run(f"INITRAMFS_ADD={prog} {tmp_path / 'data.txt'}",
                       "APPEND=vdev.marker=42", "QUIET=0")
    assert rc == 0, out[-3000:]
    assert summary_line(out).endswith(": OK")
    cmdline = next(line for line in (RUN_DIR / "console.log").read_text().splitlines()
                   if line.startswith("@@VDEV cmdline "))
    assert "vdev.marker=42" in cmdline and " quiet" not in cmdline
    ktap = (RUN_DIR / "results.ktap").read_text()
    assert ("    KTAP version 1\n    1..2\n    ok 1 endpoint 0000:01:00.0\n    ok 2 data\n"
            "  ok 1 90-mine.sh\n") in ktap
    assert ktap.endswith("ok 4 added\n# Totals: pass:40 fail:0 skip:0 total:40\n"), ktap[-400:]


def test_first_failure_insmod(vm_env: VmEnv, tmp_path: Path) -> None:
    bad = tmp_path / "broken.ko"
    bad.write_bytes(b"\x7fELF not really a module")
    rc, out = make_run(f"INITRAMFS_ADD={bad}")
    assert rc != 0
    assert re.search(r"^ FIRST FAILURE +insmod: /modules/add/broken.ko: invalid module format",
                     out, re.M), out[-2000:]
    # the failure is named once; the project's own checks still held
    assert re.search(r"39 of 40 checks held; 1 not evaluated after the first failure: FAILED",
                     out)
    assert "not ok 1 first failure # ERROR insmod: /modules/add/broken.ko" in \
        (RUN_DIR / "results.ktap").read_text()


def test_first_failure_panic_and_qemu(vm_env: VmEnv) -> None:
    rc, out = make_run("APPEND=rdinit=/nonexistent")
    assert rc != 0
    assert re.search(r"^ FIRST FAILURE +kernel panic: Kernel panic - not syncing: VFS: Unable "
                     r"to mount root fs", out, re.M), out[-2000:]
    assert " FAIL " not in out
    rc, out = make_run(env={"VDEV_QEMU_ARGS": "-no-such-option"})
    assert rc != 0
    assert re.search(r"^ FIRST FAILURE +QEMU: exited 1 before the guest ran: "
                     r"\S*qemu-system-x86_64: -no-such-option: invalid option$", out, re.M), \
        out[-2000:]


def test_without_vtsm_the_kernels_own_tsm_is_reported(vm_env: VmEnv) -> None:
    rc, out = make_run("VTSM=0")
    assert rc == 0, out[-3000:]
    # Debian's 7.3 has no TSM driver of its own for this device: nothing registered,
    # no tsm/ group (visible only with a link TSM), nothing authenticated.
    assert re.search(r"^ INFO  /sys/class/tsm +none$", out, re.M), out[-3000:]
    assert re.search(r"^ INFO  endpoint tsm/ attributes +none$", out, re.M)
    assert "vtsm" not in (RUN_DIR / "console.log").read_text().split("@@VDEV boot", 1)[1]
    assert summary_line(out).endswith(": OK")


def test_wrong_inputs_one_line(vm_env: VmEnv) -> None:
    rc, out = make_run("INITRAMFS_ADD=/nonexistent/file")
    assert rc != 0 and "vdev run: --initramfs-add /nonexistent/file: no such file" in out
    rc, out = make_run("KERNEL=/etc/passwd")
    assert rc != 0
    assert "vdev run: KERNEL=/etc/passwd: neither a bzImage nor an ELF vmlinux" in out
