"""KERNEL/KDIR pair checks, tree detection, toolchain and fragment refusals,
on hand-made trees and images (no kernel build)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from tests.helpers.kernel_images import bzimage, elf
from vdev.vm.env import KVER
from vdev.vm.kernel import (
    KernelError,
    KernelTree,
    build_kernel,
    check_pair,
    first_error,
    gcc_toolchain,
    llvm_toolchain,
    project_fragment,
    tree_toolchain,
)

PVH = [(b"Xen", 18, struct.pack("<I", 0x1000000))]


def host_gcc() -> str:
    """The first line of this host's `gcc --version`: what kbuild records as
    CONFIG_CC_VERSION_TEXT for a tree built here."""
    return subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[0]


def fake_tree(root: Path, release: str, *, drop: str | None = None, o_of: Path | None = None,
              cc: str | None = None, clang: bool = False) -> Path:
    """A built tree as far as the checks look: Makefile, .config with the
    fragment's options (minus `drop`) and the compiler that configured it
    (this host's gcc unless `cc`), include/config/kernel.release."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Makefile").write_text("# kbuild\n")
    if o_of is not None:
        (root / "source").symlink_to(o_of)
    lines = [o.line() for o in project_fragment() if o.name != drop]
    lines += [f'CONFIG_CC_VERSION_TEXT="{cc or host_gcc()}"',
              "CONFIG_CC_IS_CLANG=y" if clang else "CONFIG_CC_IS_GCC=y"]
    (root / ".config").write_text("\n".join(lines) + "\n")
    (root / "include" / "config").mkdir(parents=True)
    (root / "include" / "config" / "kernel.release").write_text(release + "\n")
    return root


def bz(path: Path, release: str) -> Path:
    path.write_bytes(bzimage(f"{release} (me@box) #1".encode()))
    return path


def test_matching_pair_and_o_tree(tmp_path: Path) -> None:
    src = tmp_path / "linux"
    src.mkdir()
    tree = fake_tree(tmp_path / "obj", "7.3.4-dev", o_of=src)
    image = bz(tmp_path / "bzImage", "7.3.4-dev")
    got = check_pair(str(image), str(tree), tmp_path / "default", say=print)
    assert got.image.release == "7.3.4-dev" and got.tree is not None
    assert got.tree.out_of_tree and got.tree.source == src.resolve()
    vml = tmp_path / "vmlinux"
    vml.write_bytes(elf(PVH, body=b"Linux version 7.3.4-dev (me@box) (gcc)\0"))
    assert check_pair(str(vml), str(tree), tmp_path / "default").image.kind == "vmlinux"


def test_refusals_say_what_to_do(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux", "7.3.4-dev")
    image = bz(tmp_path / "bzImage", "7.3.4-dev")
    debian = bz(tmp_path / "debian", KVER)
    with pytest.raises(KernelError, match=r"\(release 7\.3\.4-dev\) given without KDIR=: the "
                       r"guest modules would be built for Debian's 7\.3\.4\+deb13-amd64"):
        check_pair(str(image), None, debian)
    with pytest.raises(KernelError, match=r"given without KERNEL=: the guest would boot "
                       r"Debian's .*; add KERNEL=.*/linux/arch/x86/boot/bzImage"):
        check_pair(None, str(tree), debian)
    other = bz(tmp_path / "other", "7.3.5")
    with pytest.raises(KernelError, match=r"is release 7\.3\.5 but KDIR=.* is 7\.3\.4-dev"):
        check_pair(str(other), str(tree), debian)
    nopvh = tmp_path / "vmlinux"
    nopvh.write_bytes(elf([], body=b"Linux version 7.3.4-dev (x)\0"))
    with pytest.raises(KernelError, match="vmlinux without the PVH ELF note, so QEMU cannot "
                       "boot it: use arch/x86/boot/bzImage"):
        check_pair(str(nopvh), str(tree), debian)
    # KERNEL alone is fine when it is Debian's own release (the default headers fit)
    assert check_pair(str(debian), None, debian).tree is None


def test_tree_lacking_a_required_option_is_named(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux", "7.3.4-dev", drop="CONFIG_PCI_TSM")
    image = bz(tmp_path / "bzImage", "7.3.4-dev")
    with pytest.raises(KernelError) as exc:
        check_pair(str(image), str(tree), tmp_path / "d")
    msg = str(exc.value)
    assert msg.startswith("CONFIG_PCI_TSM is missing (this tree's Kconfig has no such option) in "
                          f"{tree}/.config; the guest needs it: The PCI/TSM core")
    assert "\n" not in msg
    warned: list[str] = []
    fake_tree(tmp_path / "t2", "7.3.4-dev", drop="CONFIG_PVH")
    check_pair(str(image), str(tmp_path / "t2"), tmp_path / "d", say=warned.append)
    assert warned and warned[0].startswith("warning: CONFIG_PVH is missing")


def test_kdir_checks(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="no such directory"):
        KernelTree.at(tmp_path / "nope")
    with pytest.raises(KernelError, match="has no Makefile: not a kernel build tree"):
        KernelTree.at(tmp_path)
    unbuilt = tmp_path / "unbuilt"
    unbuilt.mkdir()
    (unbuilt / "Makefile").write_text("")
    with pytest.raises(KernelError, match="no include/config/kernel.release: not a built tree"):
        check_pair(str(bz(tmp_path / "b", "1.0")), str(unbuilt), tmp_path / "d")


def test_a_pair_whose_modules_no_compiler_here_can_build_is_refused_before_booting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = bz(tmp_path / "bzImage", "7.3.4-dev")
    gcc_tree = fake_tree(tmp_path / "gcc", "7.3.4-dev")
    monkeypatch.setenv("LLVM", "-19")
    with pytest.raises(KernelError, match=r"LLVM=-19 given, but the tree was configured with "
                       r"'.*gcc.*': drop LLVM= or reconfigure"):
        check_pair(str(image), str(gcc_tree), tmp_path / "d")
    monkeypatch.delenv("LLVM")
    assert check_pair(str(image), str(gcc_tree), tmp_path / "d").tree is not None
    clang_tree = fake_tree(tmp_path / "clang", "7.3.4-dev", clang=True,
                           cc="Debian clang version 99.0.0 (1)")
    with pytest.raises(KernelError, match=r"built with 'Debian clang version 99\.0\.0 \(1\)', "
                       r"and no clang on PATH prints that version"):
        check_pair(str(image), str(clang_tree), tmp_path / "d")
    monkeypatch.setenv("LLVM", "-98")
    with pytest.raises(KernelError, match=r"LLVM=-98 given, but the tree was built with "
                       r"'Debian clang version 99\.0\.0 \(1\)': drop LLVM="):
        check_pair(str(image), str(clang_tree), tmp_path / "d")


def test_toolchain_from_the_trees_config() -> None:
    text = host_gcc()
    assert tree_toolchain({"CONFIG_CC_VERSION_TEXT": f'"{text}"'}) == gcc_toolchain("gcc")
    with pytest.raises(KernelError, match=r"built with 'gcc-99 \(Nowhere\) 99\.0'.*gcc-99"):
        tree_toolchain({"CONFIG_CC_VERSION_TEXT": '"gcc-99 (Nowhere) 99.0"'})
    with pytest.raises(KernelError, match="LLVM=1 given, but the tree was configured with"):
        tree_toolchain({"CONFIG_CC_VERSION_TEXT": f'"{text}"'}, llvm="1")
    assert llvm_toolchain("-19").make_vars == ("LLVM=-19",)
    assert llvm_toolchain("-19").packages == ("clang-19", "lld-19", "llvm-19")
    with pytest.raises(KernelError, match="use LLVM=1 or a version suffix"):
        llvm_toolchain("yes")


# kbuild's output for `make LLVM=-16 tinyconfig` on Linux 7.3 (minimum LLVM 17.0.1).
TOO_OLD = """\
  HOSTLD  scripts/kconfig/conf
***
*** C compiler is too old.
***   Your Clang version:    16.0.6
***   Minimum Clang version: 17.0.1
***
scripts/Kconfig.include:45: Sorry, this C compiler is not supported.
make[5]: *** [/src/scripts/kconfig/Makefile:85: allnoconfig] Error 1
make[1]: *** [/src/Makefile:260: __sub-make] Error 2
make: *** [Makefile:260: __sub-make] Error 2
"""


def test_first_error_says_what_went_wrong() -> None:
    assert first_error(TOO_OLD) == ("C compiler is too old. Your Clang version: 16.0.6 "
                                    "Minimum Clang version: 17.0.1")
    compiler = "  CC [M]  vtsm.o\nvtsm.c:12:3: error: 'x' undeclared\nmake[2]: *** [x] Error 1\n"
    assert first_error(compiler) == "vtsm.c:12:3: error: 'x' undeclared"
    modpost = ("  MODPOST Module.symvers\nERROR: modpost: \"pci_ide_x\" [vtsm.ko] undefined!\n"
               "make[2]: *** [scripts/Makefile.modpost:147: Module.symvers] Error 1\n")
    assert first_error(modpost) == 'ERROR: modpost: "pci_ide_x" [vtsm.ko] undefined!'
    # only make's own lines: the innermost recipe that failed
    assert first_error("make[1]: *** [a] Error 2\nmake: *** [b] Error 2\n") == \
        "make[1]: *** [a] Error 2"
    assert first_error("all\nfine\nlast words\n") == "last words"
    assert first_error("") == "no output"


def test_build_refusals_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="not a Linux source tree"):
        build_kernel(tmp_path)
    src = tmp_path / "linux"
    (src / "arch" / "x86").mkdir(parents=True)
    for f in ("Makefile", "Kconfig", "arch/x86/Kconfig"):
        (src / f).write_text("")
    frag = tmp_path / "mine.config"
    frag.write_text("# CONFIG_PCI_DOE is not set\n")
    with pytest.raises(KernelError, match=r"KCONFIG=.*mine.config sets '# CONFIG_PCI_DOE is not "
                       r"set', but the guest needs CONFIG_PCI_DOE=y: The kernel's DOE"):
        build_kernel(src, tmp_path / "obj", kconfig=frag)
    assert not (tmp_path / "obj").exists()
    frag.write_text("this is not kconfig\n")
    with pytest.raises(KernelError, match=r"mine.config:1: not a Kconfig line"):
        build_kernel(src, kconfig=frag)
    (src / ".config").write_text("CONFIG_64BIT=y\n")
    with pytest.raises(KernelError, match="configured in-tree, and kbuild refuses an O= build"):
        build_kernel(src, tmp_path / "obj")
    with pytest.raises(KernelError, match="is an O= build directory"):
        (tmp_path / "o2").mkdir()
        (tmp_path / "o2" / "source").symlink_to(src)
        build_kernel(tmp_path / "o2")
