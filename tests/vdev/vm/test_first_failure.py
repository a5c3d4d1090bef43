"""The first failure of a guest run, from console and stderr lines as QEMU,
the kernel and busybox print them."""

from __future__ import annotations

from vdev.vm.first_failure import first_failure

BOOTED = ["@@VDEV boot 7.3.4\n", "@@VDEV cmdline console=ttyS0\n"]


def test_qemu_exits_before_the_guest() -> None:
    f = first_failure(
        console=["# qemu-system-x86_64 -kernel vmlinux ...\n"],
        stderr=["qemu-system-x86_64: Error loading uncompressed kernel without PVH ELF Note\n"],
        returncode=1, timed_out=False, booted=False)
    assert f is not None and f.stage == "QEMU"
    assert f.message == ("exited 1 before the guest ran: qemu-system-x86_64: Error loading "
                         "uncompressed kernel without PVH ELF Note")


def test_panic_line_wins_over_everything_later() -> None:
    console = ["[    0.51] Run /init as init process\n",
               "[    0.52] Kernel panic - not syncing: No working init found.  Try passing init=\n",
               "[    0.53] ---[ end Kernel panic - not syncing: No working init found. ]---\n"]
    f = first_failure(console=console, stderr=[], returncode=0, timed_out=False, booted=False)
    assert f is not None and f.stage == "kernel panic"
    assert f.message == "Kernel panic - not syncing: No working init found.  Try passing init="


def test_insmod_with_the_kernels_reason() -> None:
    console = [*BOOTED,
               "[    1.20] vtsm: .gnu.linkonce.this_module section size must match the kernel's "
               "built struct module size at run time\n",
               "insmod: can't insert '/modules/vtsm.ko': invalid module format\n",
               "@@VDEV tsm_class \n"]
    f = first_failure(console=console, stderr=[], returncode=0, timed_out=False, booted=True)
    assert f is not None and f.stage == "insmod"
    assert f.message.startswith("/modules/vtsm.ko: invalid module format (kernel: vtsm: "
                                ".gnu.linkonce.this_module section size must match")
    kmod = first_failure(console=[*BOOTED, "insmod: ERROR: could not insert module x.ko: "
                                  "Unknown symbol in module\n"],
                         stderr=[], returncode=0, timed_out=False, booted=True)
    assert kmod is not None and kmod.message == "x.ko: Unknown symbol in module"


def test_timeout_oops_and_clean_run() -> None:
    t = first_failure(console=["SeaBIOS\n"], stderr=[], returncode=-9, timed_out=True,
                      booted=False)
    assert t is not None and "timed out before the guest reached /init" in t.message
    oops = first_failure(console=[*BOOTED, "@@DMESG [    2.0] BUG: kernel NULL pointer "
                                  "dereference, address: 0000000000000008\n"],
                         stderr=[], returncode=0, timed_out=False, booted=True)
    assert oops is not None and oops.stage == "kernel oops"
    assert oops.message.startswith("BUG: kernel NULL pointer dereference")
    assert first_failure(console=[*BOOTED, "@@VDEV done 0\n"], stderr=["qemu: warning: x\n"],
                         returncode=0, timed_out=False, booted=True) is None


def test_qemu_warnings_are_not_the_cause() -> None:
    warn = "qemu-system-x86_64: -device {...}: warning: vfio ...: Could not enable error recovery\n"
    console = ["[    3.08] Kernel panic - not syncing: VFS: Unable to mount root fs on "
               "unknown-block(0,0)\n"]
    f = first_failure(console=console, stderr=[warn], returncode=0, timed_out=False,
                      booted=False)
    assert f is not None and f.stage == "kernel panic"
    f = first_failure(console=[], stderr=[warn], returncode=0, timed_out=False, booted=False)
    assert f is not None and f.message == "exited 0 before the guest reached /init " \
        "(see console.log)"
