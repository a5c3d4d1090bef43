"""A kernel developer's own tree: configure and build it for the guest, check
a KERNEL=/KDIR= pair before booting it, build the guest modules against it.

`build_kernel` is `make kernel KSRC=... [O=...] [KCONFIG=...]`: it merges
guest/kernel.config (and the user's fragment) onto `make tinyconfig`, or
onto the tree's own .config, runs `make olddefconfig`, refuses a tree where
an option the device needs did not stick, and builds with the tree's own
toolchain (LLVM=1 honoured).  kbuild does the incremental part: an
unchanged tree is not rebuilt, and an unchanged .config is never rewritten.

`check_pair` is what `make run KERNEL=... KDIR=...` does before QEMU starts:
the image must be bootable (a bzImage, or a vmlinux with the PVH note), and
its release must be the build tree's, since the guest modules are built
there (kbuild's vermagic makes the guest refuse them otherwise).

Guest modules for the user's tree are built on the host with the compiler
that built the tree (read back from its CONFIG_CC_VERSION_TEXT); Debian's
cached headers keep gcc-14 inside the VM root (vdev.vm.env.build_module).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vdev.vm.env import KVER, REPO, VmEnvError, cache_dir
from vdev.vm.kconfig import KconfigError, Option, merged, parse_config, read_fragment, unmet
from vdev.vm.kernel_image import KernelImage, KernelImageError, inspect_image

FRAGMENT = REPO / "guest" / "kernel.config"
BZIMAGE = Path("arch/x86/boot/bzImage")

# What a kernel build needs on a Debian host, besides the compiler:
# Documentation/process/changes.rst lists the tools; the packages are Debian's.
BUILD_PACKAGES = (
    "make",  # kbuild
    "flex", "bison",  # the Kconfig parser and dtc are generated at build time
    "bc",  # kernel/time/timeconst.h
    "libelf-dev",  # objtool (x86-64 stack validation) and resolve_btfids
    "libssl-dev",  # certs/extract-cert and scripts/sign-file
    "dwarves",  # pahole, for BTF when the config asks for DEBUG_INFO_BTF
    "xz-utils", "zstd",  # bzImage payload compression (tinyconfig picks xz)
    "cpio",  # kernel/kheaders when the config has IKHEADERS
)

Say = Callable[[str], None]


class KernelError(VmEnvError):
    """A kernel tree or image we cannot use; the message is one line that says what to do."""


@dataclass(frozen=True)
class KernelTree:
    """A kernel build tree: `build` holds .config and the objects (KDIR, O=),
    `source` the sources (the same directory for an in-tree build)."""

    build: Path
    source: Path

    @classmethod
    def at(cls, kdir: Path | str, what: str = "KDIR") -> KernelTree:
        path = Path(kdir).expanduser()
        build = path.resolve()
        if not build.is_dir():
            raise KernelError(f"{what}={kdir}: no such directory")
        if not (build / "Makefile").is_file():
            raise KernelError(f"{what}={kdir} has no Makefile: not a kernel build tree")
        cache = cache_dir().resolve()
        if build.is_relative_to(cache) and build.relative_to(cache).parts[:1] \
                and build.relative_to(cache).parts[0].startswith("vm-env"):
            # kbuild takes the cached Debian headers, reached by another path,
            # for an external module's output directory and writes into them.
            raise KernelError(f"{what}={kdir} is inside the VM environment; leave {what} unset "
                              "for Debian's headers")
        # An O= build directory links its source tree as `source` (kbuild's
        # outputmakefile); an in-tree build is its own source.
        link = build / "source"
        source = link.resolve() if link.is_symlink() else build
        return cls(build, source)

    @property
    def out_of_tree(self) -> bool:
        return self.build != self.source

    @property
    def config_path(self) -> Path:
        return self.build / ".config"

    def config(self) -> dict[str, str]:
        return parse_config(self.config_path.read_text()) if self.config_path.is_file() else {}

    def release(self) -> str | None:
        f = self.build / "include" / "config" / "kernel.release"
        return f.read_text().strip() or None if f.is_file() else None

    @property
    def bzimage(self) -> Path:
        return self.build / BZIMAGE

    @property
    def vmlinux(self) -> Path:
        return self.build / "vmlinux"


# ---- toolchain ---------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """The make variables that select a compiler, and the packages providing it."""

    make_vars: tuple[str, ...]
    describe: str
    packages: tuple[str, ...]


def _version_line(cmd: str) -> str | None:
    if shutil.which(cmd) is None:
        return None
    try:
        out = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.stdout else None


def _on_path(pattern: str) -> list[str]:
    found: set[str] = set()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and Path(d).is_dir():
            found.update(p.name for p in Path(d).glob(pattern))
    return sorted(found)


def llvm_toolchain(llvm: str) -> Toolchain:
    """LLVM=1 (clang, ld.lld, llvm-ar ... unversioned) or LLVM=-NN (clang-NN ...)."""
    suffix = "" if llvm == "1" else llvm
    if suffix and not re.fullmatch(r"-\d+", suffix):
        raise KernelError(f"LLVM={llvm}: use LLVM=1 or a version suffix such as LLVM=-19")
    return Toolchain((f"LLVM={llvm}",), f"clang{suffix} (LLVM={llvm})",
                     (f"clang{suffix}", f"lld{suffix}", f"llvm{suffix}"))


def gcc_toolchain(cc: str = "gcc") -> Toolchain:
    m = re.search(r"gcc(-\d+)?$", cc)
    package = f"gcc{m[1] or ''}" if m else "gcc"
    return Toolchain(() if cc == "gcc" else (f"CC={cc}",), cc, (package, "libc6-dev"))


def tree_toolchain(config: dict[str, str], llvm: str | None = None) -> Toolchain:
    """The compiler that configured this tree (CONFIG_CC_VERSION_TEXT is the
    first line of its `--version`), found on PATH; LLVM= given wins for clang."""
    want = config.get("CONFIG_CC_VERSION_TEXT", "").strip('"')
    if config.get("CONFIG_CC_IS_CLANG") == "y":
        tries = [llvm] if llvm else ["1", *(n.removeprefix("clang") for n in _on_path("clang-*")
                                           if re.fullmatch(r"clang-\d+", n))]
        for v in tries:
            tc = llvm_toolchain(v)
            if _version_line(tc.describe.split()[0]) == want:
                return tc
        if llvm:
            raise KernelError(f"LLVM={llvm} given, but the tree was built with {want!r}: drop "
                              "LLVM= to use the clang that prints that version, or rebuild the "
                              f"tree with LLVM={llvm}")
        raise KernelError(f"the tree was built with {want!r}, and no clang on PATH prints that "
                          "version: install it (or pass LLVM=-NN for clang-NN)")
    if llvm:
        raise KernelError(f"LLVM={llvm} given, but the tree was configured with {want!r}: "
                          "drop LLVM= or reconfigure the tree with it (make kernel LLVM=1)")
    # gcc prints the name it was called by first: "x86_64-linux-gnu-gcc-14 (Debian ...) 14.2.0".
    named = want.split(" ", 1)[0] if want else "gcc"
    for cc in dict.fromkeys([named, "gcc", *(n for n in _on_path("gcc-*")
                                             if re.fullmatch(r"gcc-\d+", n))]):
        if _version_line(cc) == want:
            return gcc_toolchain(cc)
    raise KernelError(f"the tree was built with {want!r}, and no gcc on PATH prints that "
                      f"version: install it ({gcc_toolchain(named).packages[0]}) or rebuild "
                      "the tree with this host's gcc")


# ---- host packages -------------------------------------------------------------


def _missing_packages(packages: Sequence[str]) -> list[str]:
    if shutil.which("dpkg-query") is None:
        return []  # not a Debian host: the build's own errors will name what is missing
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
                          capture_output=True, text=True)
    installed = {line.split()[0] for line in proc.stdout.splitlines()
                 if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def ensure_packages(packages: Sequence[str], say: Say) -> None:
    """Install the missing ones with apt-get, saying so; refuse clearly when we can't."""
    missing = _missing_packages(packages)
    if not missing:
        return
    line = "apt-get install " + " ".join(missing)
    if os.geteuid() != 0:
        raise KernelError(f"the kernel build needs host packages that are missing: {line}")
    say(f"installing host packages the kernel build needs: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (1, 2):
        proc = subprocess.run(["apt-get", "install", "-y", "-qq", *missing],
                              capture_output=True, text=True, env=env)
        if proc.returncode == 0:
            return
        if attempt == 1:  # a stale package list is the usual cause
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
    err = [x for x in proc.stderr.splitlines() if x.startswith("E:")]
    raise KernelError(f"{line} failed: {err[0] if err else proc.stderr.strip()[-200:]}")


# ---- configuration ---------------------------------------------------------------


def project_fragment() -> list[Option]:
    return read_fragment(FRAGMENT)


def user_fragment(path: Path | str) -> list[Option]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise KernelError(f"KCONFIG={path}: no such file")
    try:
        return [Option(o.name, o.value, True, f"asked for by {path}") for o in read_fragment(p)]
    except KconfigError as exc:
        raise KernelError(f"KCONFIG={path}: {exc}") from None


def _first_sentence(text: str) -> str:
    m = re.match(r"(.+?[.;])(\s|$)", text)
    return m[1].rstrip(".;") if m else text


def missing_option_message(tree: KernelTree, option: Option, config: dict[str, str]) -> str:
    have = config.get(option.name)
    state = "is missing (this tree's Kconfig has no such option)" if have is None else \
        f"is {'not set' if have == 'n' else have!r} (a dependency is off; `make menuconfig`, " \
        f"then / {option.name.removeprefix('CONFIG_')} shows which)"
    why = f": {_first_sentence(option.why)}" if option.why else ""
    return f"{option.name} {state} in {tree.config_path}; the guest needs it{why}"


def check_config(tree: KernelTree, options: Sequence[Option], say: Say,
                 what: str = "KDIR") -> None:
    """Refuse a tree without a required option (one line naming it); warn about the rest."""
    config = tree.config()
    if not config:
        raise KernelError(f"{what}={tree.build} has no .config: not a configured kernel tree")
    missing = unmet(config, list(options))
    for o in missing:
        if not o.required:
            say(f"warning: {missing_option_message(tree, o, config)}")
    required = [o for o in missing if o.required]
    if required:
        more = f" (and {len(required) - 1} more: " + ", ".join(
            o.name for o in required[1:]) + ")" if len(required) > 1 else ""
        raise KernelError(missing_option_message(tree, required[0], config) + more)


# ---- building ----------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltKernel:
    tree: KernelTree
    release: str
    image: Path

    def run_args(self) -> str:
        return f"KERNEL={self.image} KDIR={self.tree.build}"


def _make(tree: KernelTree, toolchain: Toolchain, *targets: str) -> list[str]:
    argv = ["make", "-C", str(tree.source)]
    if tree.out_of_tree:
        argv.append(f"O={tree.build}")
    return [*argv, *toolchain.make_vars, *targets]


def kbuild_env() -> dict[str, str]:
    """The environment for a kbuild `make`: without the variables our own
    Makefile's `make` exports (MAKEFLAGS carries its command line, e.g.
    `O=`, `KSRC=`, into every make below it)."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_kbuild(argv: list[str], *, capture: bool) -> tuple[int, str]:
    """Run a kbuild `make`; on Ctrl-C or SIGTERM, make gets SIGINT (it stops
    its compilers and deletes half-written targets) before we give up."""
    proc = subprocess.Popen(argv, env=kbuild_env(), text=True, errors="replace",
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.STDOUT if capture else None)
    try:
        out, _ = proc.communicate()
    except BaseException:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return proc.returncode, out or ""


def _run_make(argv: list[str], what: str, quiet: bool) -> None:
    """Run kbuild; its own output goes to the terminal (errors are where a kernel
    developer expects them), or is kept and its first error reported when quiet."""
    rc, out = run_kbuild(argv, capture=quiet)
    if rc != 0 and quiet:
        raise KernelError(f"{what} failed: {first_error(out)}")
    if rc != 0:
        raise KernelError(f"{what} failed (`{' '.join(argv)}` exited {rc}; its errors are above)")


def first_error(output: str) -> str:
    """The first line of a make/compiler log that says what went wrong.

    kbuild's own refusals come as a banner of `***` lines (a compiler too old
    or unsupported, a missing tool): those are joined into one line.  make's
    `make[N]: *** [...] Error N` lines only say that a recipe failed, so they
    are the last resort."""
    lines = output.splitlines()
    for line in lines:
        if re.search(r"\berror:", line):
            return line.strip()
    banner: list[str] = []
    for line in lines:
        if line.startswith("***"):
            text = line.strip("* \t")
            if text:
                banner.append(re.sub(r"\s{2,}", " ", text))
        elif banner:
            break
    if banner:
        return " ".join(banner)
    recipe = re.compile(r"^make(\[\d+\])?: \*\*\*")
    for pattern in (r"ERROR:", r"[Ee]rror", r"\*\*\*"):
        for line in lines:
            if re.search(pattern, line) and not recipe.match(line):
                return line.strip()
    for line in lines:
        if recipe.match(line):
            return line.strip()
    return lines[-1].strip() if lines else "no output"


def source_tree(ksrc: Path | str) -> Path:
    src = Path(ksrc).expanduser().resolve()
    if not src.is_dir():
        raise KernelError(f"KSRC={ksrc}: no such directory")
    if (src / "source").is_symlink():
        raise KernelError(f"KSRC={ksrc} is an O= build directory: give its source tree as KSRC= "
                          f"and this directory as O=")
    if not ((src / "Makefile").is_file() and (src / "Kconfig").is_file()
            and (src / "arch" / "x86" / "Kconfig").is_file()):
        raise KernelError(f"KSRC={ksrc}: not a Linux source tree with x86 support "
                          "(no Makefile, Kconfig or arch/x86/Kconfig)")
    return src


def build_kernel(
    ksrc: Path | str, out: Path | str | None = None, *, kconfig: Path | str | None = None,
    llvm: str | None = None, jobs: int | None = None, say: Say = print, quiet: bool = False,
) -> BuiltKernel:
    """Configure and build `ksrc` (into `out` when given) for the guest."""
    src = source_tree(ksrc)
    own = project_fragment()
    theirs = user_fragment(kconfig) if kconfig else []
    needed = {o.name: o for o in own if o.required}
    for o in theirs:
        if o.name in needed and o.value != needed[o.name].value:
            raise KernelError(f"KCONFIG={kconfig} sets {o.line()!r}, but the guest needs "
                              f"{needed[o.name].line()}: {_first_sentence(needed[o.name].why)}")
    options = own + theirs
    build = Path(out).expanduser().resolve() if out else src
    tree = KernelTree(build, src)
    if tree.out_of_tree:
        if (src / ".config").exists() or (src / "include" / "config").is_dir():
            raise KernelError(f"KSRC={ksrc} has been configured in-tree, and kbuild refuses an "
                              f"O= build from it: run `make mrproper` there, or drop O=")
        if build.is_relative_to(src):
            raise KernelError(f"O={out} is inside KSRC={ksrc}: put the build directory elsewhere")
        build.mkdir(parents=True, exist_ok=True)
    config = tree.config()
    if llvm:
        toolchain = llvm_toolchain(llvm)
    elif config:
        toolchain = tree_toolchain(config)
    else:
        toolchain = gcc_toolchain()
    ensure_packages([*BUILD_PACKAGES, *toolchain.packages], say)
    say(f"kernel tree {src}" + (f", building into {build}" if tree.out_of_tree else "")
        + f", compiler {toolchain.describe}")
    if not config:
        say(f"no .config in {build}: starting from tinyconfig")
        _run_make(_make(tree, toolchain, "-s", "tinyconfig"), "make tinyconfig", True)
    new = merged(tree.config_path.read_text(), options)
    auto = build / "include" / "config" / "auto.conf"
    if new is not None:
        if config and not (build / ".config.before-vdev").exists():
            shutil.copy2(tree.config_path, build / ".config.before-vdev")
            say(f"merging {FRAGMENT.relative_to(REPO)} into {tree.config_path} "
                "(your previous one is kept as .config.before-vdev)")
        tree.config_path.write_text(new)
    if new is not None or not auto.is_file() \
            or auto.stat().st_mtime < tree.config_path.stat().st_mtime:
        _run_make(_make(tree, toolchain, "-s", "olddefconfig"), "make olddefconfig", True)
    check_config(tree, options, say, what="KSRC" if not tree.out_of_tree else "O")
    jobs = jobs or os.cpu_count() or 1
    say(f"building ({jobs} jobs): bzImage, vmlinux and modules")
    _run_make(_make(tree, toolchain, f"-j{jobs}", "all"), "the kernel build", quiet)
    release = tree.release()
    if release is None or not tree.bzimage.is_file():
        raise KernelError(f"the build left no {BZIMAGE} or kernel.release in {build}")
    built = BuiltKernel(tree, release, tree.bzimage)
    say(f"release  {release}")
    say(f"image    {built.image}")
    say(f"KDIR     {build}")
    return built


# ---- checking a pair before booting ------------------------------------------------------


@dataclass(frozen=True)
class GuestKernel:
    """What `make run` boots and builds the guest modules against (tree None:
    Debian's cached headers)."""

    image: KernelImage
    tree: KernelTree | None


def check_pair(kernel: str | None, kdir: str | None, default_image: Path,
               say: Say = print) -> GuestKernel:
    """Refuse, before QEMU starts, a pair whose modules would not load into the
    image or whose image QEMU cannot boot; one line says which and what to do."""
    path = Path(kernel).expanduser() if kernel else default_image
    try:
        image = inspect_image(path)
    except KernelImageError as exc:
        raise KernelError(f"KERNEL={kernel}: {str(exc).removeprefix(f'{path}: ')}" if kernel
                          else str(exc)) from None
    if image.kind == "vmlinux" and not image.pvh:
        raise KernelError(
            f"KERNEL={kernel} is a vmlinux without the PVH ELF note, so QEMU cannot boot it: "
            f"use {BZIMAGE} of the same build, or enable CONFIG_PVH (guest/kernel.config does)")
    tree = KernelTree.at(kdir) if kdir else None
    if kernel and not kdir and image.release != KVER:
        raise KernelError(
            f"KERNEL={kernel} (release {image.release}) given without KDIR=: the guest modules "
            f"would be built for Debian's {KVER}; add KDIR=<its build tree>")
    if tree is not None:
        release = tree.release()
        if release is None:
            raise KernelError(f"KDIR={kdir} has no include/config/kernel.release: not a built "
                              "tree (`make kernel KSRC=...` builds one)")
        if not kernel:
            raise KernelError(
                f"KDIR={kdir} (release {release}) given without KERNEL=: the guest would boot "
                f"Debian's {KVER}; add KERNEL={tree.bzimage}")
        if image.release != release:
            raise KernelError(
                f"KERNEL={kernel} is release {image.release} but KDIR={kdir} is {release}: "
                "modules built there would not load into that kernel; point both at one build")
        check_config(tree, project_fragment(), say)
        module_toolchain(tree)  # a compiler that can build its modules is on this host
    return GuestKernel(image, tree)


# ---- guest modules against the user's tree -----------------------------------------------


def module_toolchain(tree: KernelTree) -> Toolchain:
    """The compiler a module for `tree` is built with: the tree's own (LLVM= from
    the environment picks among clangs)."""
    return tree_toolchain(tree.config(), os.environ.get("LLVM") or None)


def build_module_on_host(src: Path, out: Path, tree: KernelTree) -> Path:
    """Build an out-of-tree module with the compiler that built `tree`; the .ko."""
    toolchain = module_toolchain(tree)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    argv = ["make", "-C", str(tree.build), f"M={out}", *toolchain.make_vars, "modules"]
    rc, output = run_kbuild(argv, capture=True)
    (out / "build.log").write_text("# " + " ".join(argv) + "\n" + output)
    if rc != 0:
        raise KernelError(f"module build of {src.name} against {tree.build} failed: "
                          f"{first_error(output)} (log {out / 'build.log'})")
    kos = sorted(out.glob("*.ko"))
    if not kos:
        raise KernelError(f"module build of {src.name} produced no .ko (log {out / 'build.log'})")
    return kos[0]
