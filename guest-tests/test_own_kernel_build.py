"""CI builds a kernel from source and boots it, as a kernel developer does.

Debian's linux-source-7.3 is fetched (host mirror, host archive keyring),
built once with `make kernel` into the cache, in-tree and with O=, and the
connect flow runs to RUN on it through `make run KERNEL= KDIR=` (bzImage of
the in-tree build, PVH vmlinux of the O= build) and through `make run
KSRC=`.  The refusals a developer meets before QEMU starts are asserted
with their messages.  Everything goes through `make`, verbatim as
docs/kernel-developers.md shows it.

The same source is also built with clang (`LLVM=-19`: Debian 12's newest
clang that Linux 7.3 accepts, which wants LLVM 17.0.1 or later) into a
third O= tree, and the connect flow runs on it with the guest modules built
by that clang, found from the tree's .config without LLVM= being repeated.

Cache: $VDEV_CACHE/linux-7.3/{src,obj,obj-clang,tree} plus a `version`
stamp; a warm run finds the builds done and kbuild compiles nothing
(asserted for obj).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from vdev.vm.debian_source import fetch
from vdev.vm.env import REPO, VmEnv, cache_dir
from vdev.vm.kernel_image import inspect_image


@dataclass(frozen=True)
class Trees:
    tree: Path  # in-tree build
    src: Path  # pristine source of the O= build
    obj: Path  # O= build directory
    release: str
    kernel_output: dict[str, str]  # `make kernel` output of this session's calls


def make(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """`make ARGS` in the repository, as a user types it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "KERNEL", "KDIR")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _make_kernel(*args: str) -> str:
    proc = make("kernel", *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="session")
def trees(vm_env: VmEnv) -> Trees:
    base = cache_dir() / "linux-7.3"
    src, obj, tree = base / "src", base / "obj", base / "tree"
    stamp = base / "version"
    if not stamp.is_file():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        started = time.monotonic()
        got = fetch(src)
        subprocess.run(["cp", "-a", str(src), str(tree)], check=True)
        stamp.write_text(got.version + "\n")
        print(f"fetched and unpacked {got.version} in {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    outputs = {}
    for name, args in (("tree", [f"KSRC={tree}"]), ("obj", [f"KSRC={src}", f"O={obj}"])):
        started = time.monotonic()
        outputs[name] = _make_kernel(*args)
        print(f"make kernel ({name}) took {time.monotonic() - started:.0f} s", file=sys.stderr)
    release = (tree / "include/config/kernel.release").read_text().strip()
    assert (obj / "include/config/kernel.release").read_text().strip() == release
    return Trees(tree, src, obj, release, outputs)


def test_make_kernel_prints_what_to_pass_on_and_a_second_run_compiles_nothing(
        trees: Trees) -> None:
    for name, build in (("tree", trees.tree), ("obj", trees.obj)):
        out = trees.kernel_output[name]
        assert re.search(rf"\[kernel\] release +{re.escape(trees.release)}\n", out), out[-2000:]
        assert f"[kernel] image    {build}/arch/x86/boot/bzImage" in out
        assert f"[kernel] KDIR     {build}" in out
    again = _make_kernel(f"KSRC={trees.src}", f"O={trees.obj}")
    compiled = [line for line in again.splitlines() if re.match(r"\s+(CC|LD|AS)\s", line)]
    assert not compiled, compiled[:5]
    # the fragment's options all stuck, and an O= tree links its source
    cfg = (trees.obj / ".config").read_text()
    for opt in ("CONFIG_PCI_TSM=y", "CONFIG_PCI_DOE=y", "CONFIG_PCI_IDE=y", "CONFIG_PVH=y"):
        assert opt in cfg
    assert (trees.obj / "source").resolve() == trees.src
    assert not (trees.src / ".config").exists()


def _run_ok(*args: str) -> str:
    proc = make("run", *args, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    m = re.search(r"(\d+) of (\d+) checks held: OK", out)
    assert m and m[1] == m[2], out[-3000:]
    assert "START -> RUN" in out
    return out


def _ktap_parses(tree: Path) -> None:
    """results.ktap read by the kernel's own KUnit tool: every test passed."""
    ktap = REPO / "out" / "run" / "results.ktap"
    proc = subprocess.run([sys.executable, str(tree / "tools/testing/kunit/kunit.py"), "parse",
                           str(ktap)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"Testing complete\. Ran \d+ tests: passed: \d+\s*$", proc.stdout.strip()
                     .splitlines()[-1]), proc.stdout[-500:]


def test_run_on_the_in_tree_bzimage(trees: Trees) -> None:
    out = _run_ok(f"KERNEL={trees.tree}/arch/x86/boot/bzImage", f"KDIR={trees.tree}")
    assert f"guest kernel {trees.release}" in out or trees.release in out
    _ktap_parses(trees.tree)


def test_run_on_the_out_of_tree_vmlinux(trees: Trees) -> None:
    assert inspect_image(trees.obj / "vmlinux").pvh
    _run_ok(f"KERNEL={trees.obj}/vmlinux", f"KDIR={trees.obj}")


def test_run_ksrc_builds_then_runs(trees: Trees) -> None:
    out = _run_ok(f"KSRC={trees.src}", f"O={trees.obj}")
    assert f"[kernel] release  {trees.release}" in out


def _refused(*args: str) -> str:
    proc = make("run", *args, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "Traceback" not in out
    assert "[guest]" not in out, "refused after booting: " + out[-2000:]
    return out


def test_refusals_before_boot(trees: Trees, vm_env: VmEnv, tmp_path: Path) -> None:
    bz = f"{trees.tree}/arch/x86/boot/bzImage"
    out = _refused(f"KERNEL={bz}")
    assert f"KERNEL={bz} (release {trees.release}) given without KDIR=" in out
    out = _refused(f"KDIR={trees.tree}")
    assert f"KDIR={trees.tree} (release {trees.release}) given without KERNEL=: the guest " \
        f"would boot Debian's" in out
    out = _refused(f"KERNEL={vm_env.default_kernel}", f"KDIR={trees.tree}")
    assert f"is release 7.3.4+deb13-amd64 but KDIR={trees.tree} is {trees.release}" in out
    # A vmlinux without the PVH note: the real one with its note's type changed.
    data = bytearray((trees.obj / "vmlinux").read_bytes())
    note = data.find(b"Xen\0", 0)
    while note >= 0:
        namesz, _, ntype = struct.unpack_from("<III", data, note - 12)
        if (namesz, ntype) == (4, 18):  # Elf64_Nhdr of XEN_ELFNOTE_PHYS32_ENTRY
            struct.pack_into("<I", data, note - 4, 0x7FFF)
        note = data.find(b"Xen\0", note + 4)
    nopvh = tmp_path / "vmlinux"
    nopvh.write_bytes(data)
    assert not inspect_image(nopvh).pvh
    out = _refused(f"KERNEL={nopvh}", f"KDIR={trees.obj}")
    assert f"KERNEL={nopvh} is a vmlinux without the PVH ELF note" in out


def test_make_kernel_names_a_required_option_it_cannot_set(trees: Trees, tmp_path: Path) -> None:
    frag = tmp_path / "no-tsm.config"
    frag.write_text("# CONFIG_PCI_TSM is not set\n")
    proc = make("kernel", f"KSRC={trees.src}", f"O={tmp_path / 'obj'}", f"KCONFIG={frag}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("vdev kernel:")]
    assert len(errors) == 1, out[-2000:]
    assert errors[0] == (f"vdev kernel: KCONFIG={frag} sets '# CONFIG_PCI_TSM is not set', but "
                         "the guest needs CONFIG_PCI_TSM=y: The PCI/TSM core (drivers/pci/tsm.c): "
                         "the tsm/connect, tsm/disconnect, tsm/dsm, tsm/bound and authenticated "
                         "attributes, pci_tsm_doe_transfer() and the link-TSM ops vtsm "
                         "registers")
    assert not (tmp_path / "obj").exists()


CLANG = "-19"


@pytest.fixture(scope="session")
def clang_obj(trees: Trees) -> Path:
    """The source built with clang into its own O= tree (clang, lld and llvm
    installed by `make kernel` when missing)."""
    obj = trees.src.parent / "obj-clang"
    started = time.monotonic()
    out = _make_kernel(f"KSRC={trees.src}", f"O={obj}", f"LLVM={CLANG}")
    print(f"make kernel (clang) took {time.monotonic() - started:.0f} s", file=sys.stderr)
    assert f"compiler clang{CLANG} (LLVM={CLANG})" in out, out[-2000:]
    assert f"[kernel] KDIR     {obj}" in out
    return obj


@pytest.mark.timeout(1800)  # a cold cache installs clang and builds the tree first
def test_run_on_a_clang_build(clang_obj: Path) -> None:
    cfg = (clang_obj / ".config").read_text()
    assert "CONFIG_CC_IS_CLANG=y" in cfg and "CONFIG_LD_IS_LLD=y" in cfg
    # LLVM= is not repeated: the tree's .config says which clang built it
    out = _run_ok(f"KERNEL={clang_obj}/arch/x86/boot/bzImage", f"KDIR={clang_obj}")
    assert f"against {clang_obj} with clang{CLANG} (LLVM={CLANG}), booting" in out
    for module in ("vtsm", "vdevtest"):
        build = REPO / "out" / "run" / "modules" / module
        assert f"M={build} LLVM={CLANG} modules" in (build / "build.log").read_text()
        # the compiler's own stamp in the module's .comment section
        assert b"clang version 19." in (build / f"{module}.ko").read_bytes()


@pytest.mark.timeout(1800)
def test_a_toolchain_that_did_not_build_the_tree_is_refused_before_boot(
        trees: Trees, clang_obj: Path) -> None:
    out = _refused(f"KERNEL={trees.tree}/arch/x86/boot/bzImage", f"KDIR={trees.tree}",
                   f"LLVM={CLANG}")
    assert f"vdev run: LLVM={CLANG} given, but the tree was configured with 'gcc" in out
    out = _refused(f"KERNEL={clang_obj}/arch/x86/boot/bzImage", f"KDIR={clang_obj}", "LLVM=-16")
    assert "vdev run: LLVM=-16 given, but the tree was built with 'Debian clang version 19." in out
