"""Build the project's patched QEMU into the cache: `make qemu`.

The series in qemu/patches adds an emulated IDE Extended Capability to
pcie-root-port (qemu/README.md).  This module:

1. installs the host packages the build needs, saying which and why;
2. fetches Debian's QEMU source package from the host's Debian mirror and
   verifies it (signed InRelease -> Sources -> file hashes, plus the hashes
   pinned below), once: the files stay in the cache;
3. unpacks it with dpkg-source (Debian's own patches applied) and applies
   the series so that only files whose content changes are rewritten;
4. configures a minimal x86_64 system emulator with meson and ninja from
   PyPI in a venv inside the cache, and builds it with progress output;
5. installs the binary with the firmware it loads (SeaBIOS and QEMU's option
   ROMs, taken from the VM environment's Debian root) into
   `<cache>/qemu-<version>-<series digest>/`, runs the series' qtests
   against it and prints the binary's path.

A second run with the same series only prints the path.  A changed series
rebuilds incrementally in the same build tree.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from vdev.vm.debian_archive import Archive, ArchiveError, file_sha256, host_mirror
from vdev.vm.env import REPO, VmEnvError, cache_dir, find_env
from vdev.vm.patch_series import Series, SeriesError, applied_digest, apply_series

PATCHES = REPO / "qemu" / "patches"

# Debian's QEMU 10.2.2 source package: the newest the Debian mirror serves that
# has vfio-user-pci (10.1 added the client; trixie has 10.0, and the 11.x
# packages trixie-backports and sid list are not on the mirror).  Pinned by
# hash: a re-upload under the same version is refused.
PACKAGE = "qemu"
VERSION = "1:10.2.2+ds-1"
UPSTREAM_VERSION = "10.2.2"
SUITES = ("sid", "forky", "trixie-backports", "trixie")
PINNED_SHA256 = {
    "qemu_10.2.2+ds-1.dsc":
        "f1684b3aa5ec500c3389d346c6501dee45041ea91656c6556d4da9023b7987dd",
    "qemu_10.2.2+ds.orig.tar.xz":
        "be05230fe47a6937cd29f28f562932c8125f9c93c2a82c625198f7a4aa601dfb",
    "qemu_10.2.2+ds-1.debian.tar.xz":
        "ddf75aceab4f8f77374f3cb34fc97b41514895aeb293ce8b2ddd5e072bb0f5c0",
}

# Everything the runner and the qtests need, nothing else: q35, pcie-root-port,
# vfio-user-pci (on by default on Linux hosts), TCG, KVM where it works.  The
# Debian source ships no firmware blobs (+ds), so none are installed and the
# EDK2 images are not unpacked; x86 needs no libfdt.
CONFIGURE_ARGS = (
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--enable-kvm",
    "--disable-install-blobs",
    "--disable-docs",
    "--disable-fdt",
    "-Dwrap_mode=nodownload",
)
NINJA_TARGETS = ("qemu-system-x86_64", "tests/qtest/pcie-ide-test")
QTESTS = ("tests/qtest/pcie-ide-test",)
BUILD_PYTHON_PACKAGES = ("meson>=1.5,<2", "ninja")

# Firmware the q35 machine loads, from the VM environment's trixie root.
FIRMWARE = (
    "usr/share/seabios/bios-256k.bin",
    "usr/share/qemu/kvmvapic.bin",
    "usr/share/qemu/linuxboot_dma.bin",
    "usr/share/qemu/multiboot_dma.bin",
    "usr/share/qemu/pvh.bin",
)

# Debian package -> why the build needs it.
HOST_PACKAGES = {
    "gcc": "the C compiler",
    "libc6-dev": "the C library headers",
    "pkgconf": "finds the libraries QEMU links against",
    "libglib2.0-dev": "GLib, which QEMU is written against",
    "zlib1g-dev": "zlib, which QEMU requires",
    "dpkg-dev": "dpkg-source unpacks the Debian source package",
    "patch": "applies the patch series",
    "python3-venv": "the private venv for meson and ninja",
    "gpgv": "verifies the Debian archive's signature",
    "debian-archive-keyring": "the archive keys the signature is checked with",
}

FORMAT = "1"  # bump when the layout of the cache entries changes


class QemuBuildError(RuntimeError):
    """One line saying what failed and what to do."""


Log = Callable[[str], None]


def say(msg: str) -> None:
    print(f"[qemu] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Layout:
    """Where each part of the build lives in the cache."""

    cache: Path
    digest: str

    @property
    def base(self) -> Path:
        return self.cache / "qemu"

    @property
    def downloads(self) -> Path:
        return self.base / "downloads"

    @property
    def venv(self) -> Path:
        return self.base / "venv"

    @property
    def tree(self) -> Path:
        return self.base / UPSTREAM_VERSION / "src"

    @property
    def originals(self) -> Path:
        return self.base / UPSTREAM_VERSION / "originals"

    @property
    def build(self) -> Path:
        return self.base / UPSTREAM_VERSION / "build"

    @property
    def install(self) -> Path:
        return self.cache / f"qemu-{UPSTREAM_VERSION}-{self.digest[:12]}"

    @property
    def binary(self) -> Path:
        return self.install / "bin" / "qemu-system-x86_64"

    @property
    def stamp(self) -> Path:
        return self.install / "built.json"


def series_digest(series: Series) -> str:
    return series.digest(f"format={FORMAT}", VERSION, *CONFIGURE_ARGS, *NINJA_TARGETS,
                         *FIRMWARE)


def layout(cache: Path | None = None) -> Layout:
    try:
        series = Series.from_dir(PATCHES)
    except SeriesError as exc:
        raise QemuBuildError(str(exc)) from None
    return Layout(cache or cache_dir(), series_digest(series))


def installed_binary(cache: Path | None = None) -> Path | None:
    """The patched QEMU for the current series, if it is built."""
    lay = layout(cache)
    return lay.binary if lay.stamp.is_file() and lay.binary.is_file() else None


# ---- processes --------------------------------------------------------------


class _Children:
    """Process groups we started, killed on Ctrl-C / SIGTERM."""

    def __init__(self) -> None:
        self.pgids: set[int] = set()

    def kill_all(self) -> None:
        for pgid in list(self.pgids):
            with suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)


_children = _Children()


def run(argv: Sequence[str | Path], *, log: Path | None = None, cwd: Path | None = None,
        env: dict[str, str] | None = None, on_line: Callable[[str], None] | None = None,
        what: str) -> None:
    """Run a command in its own process group; output to `log` (and `on_line`)."""
    out = log.open("a") if log else None
    try:
        proc = subprocess.Popen(
            [str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        if out:
            out.close()
        raise QemuBuildError(f"{what}: cannot run {argv[0]} ({exc.strerror})") from None
    _children.pgids.add(proc.pid)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if out:
                out.write(line)
            lines.append(line.rstrip("\n"))
            del lines[:-200]
            if on_line:
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    finally:
        _children.pgids.discard(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
        if out:
            out.close()
    if rc != 0:
        raise QemuBuildError(f"{what} failed: {first_error(lines)}"
                             + (f" (log: {log})" if log else ""))


def first_error(lines: Sequence[str]) -> str:
    """The most telling line of a failed command's output."""
    for pattern in (r"\berror\b", r"\bERROR\b", r"FAILED", r"fatal"):
        for line in lines:
            if re.search(pattern, line):
                return line.strip()[:300]
    tail = [line for line in lines if line.strip()]
    return tail[-1].strip()[:300] if tail else "no output"


# ---- steps --------------------------------------------------------------------


def missing_host_packages(packages: Sequence[str]) -> list[str]:
    missing = []
    for pkg in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.endswith(" installed"):
            missing.append(pkg)
    return missing


def ensure_host_packages(log: Log) -> None:
    if not shutil.which("dpkg-query"):
        raise QemuBuildError("this build needs a Debian host (dpkg-query not found)")
    missing = missing_host_packages(list(HOST_PACKAGES))
    if not missing:
        return
    if os.geteuid() != 0:
        raise QemuBuildError("missing host packages; as root run: apt-get install "
                             + " ".join(missing))
    for pkg in missing:
        log(f"installing host package {pkg} with apt-get: {HOST_PACKAGES[pkg]}")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=apt_env, what="apt-get update")
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env=apt_env, what="apt-get install " + " ".join(missing))


def fetch_source(lay: Layout, log: Log) -> Path:
    """The verified .dsc in the cache (downloading the package if needed)."""
    dsc_name = next(n for n in PINNED_SHA256 if n.endswith(".dsc"))
    cached = {n: lay.downloads / n for n in PINNED_SHA256}
    if all(p.is_file() and file_sha256(p) == PINNED_SHA256[n] for n, p in cached.items()):
        return cached[dsc_name]
    mirror = host_mirror()
    log(f"fetching QEMU source {VERSION} from the host's Debian mirror "
        f"(signed indices of {', '.join(SUITES)}; about 40 MB)")
    archive = Archive(mirror)
    src = archive.locate(PACKAGE, VERSION, SUITES)
    archive.download(src, lay.downloads, PINNED_SHA256)
    log(f"verified {len(src.files)} files of {PACKAGE} {VERSION} ({src.suite})")
    return cached[dsc_name]


def unpack(lay: Layout, dsc: Path, log: Log) -> None:
    marker = lay.tree / ".vdev-unpacked"
    if marker.is_file() and marker.read_text().strip() == VERSION:
        return
    log(f"unpacking {dsc.name} with dpkg-source (Debian's patches applied)")
    partial = lay.tree.with_name("src.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(lay.tree, ignore_errors=True)
    shutil.rmtree(lay.originals, ignore_errors=True)
    shutil.rmtree(lay.build, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        run(["dpkg-source", "--no-copy", "-x", dsc, partial], cwd=partial.parent,
            log=partial.parent / "unpack.log", what="dpkg-source -x")
        (partial / ".vdev-unpacked").write_text(VERSION + "\n")
        partial.rename(lay.tree)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def ensure_venv(lay: Layout, log: Log) -> Path:
    python = lay.venv / "bin" / "python3"
    stamp = lay.venv / ".vdev-packages"
    want = "\n".join(BUILD_PYTHON_PACKAGES)
    if python.is_file() and stamp.is_file() and stamp.read_text() == want:
        return python
    log(f"installing {', '.join(BUILD_PYTHON_PACKAGES)} from PyPI into {lay.venv}")
    shutil.rmtree(lay.venv, ignore_errors=True)
    lay.venv.parent.mkdir(parents=True, exist_ok=True)
    log_file = lay.base / "venv.log"
    log_file.unlink(missing_ok=True)
    try:
        run([sys.executable, "-m", "venv", lay.venv], log=log_file, what="python -m venv")
        run([python, "-m", "pip", "install", "-q", *BUILD_PYTHON_PACKAGES], log=log_file,
            what="pip install meson ninja")
    except BaseException:
        shutil.rmtree(lay.venv, ignore_errors=True)
        raise
    stamp.write_text(want)
    return python


def build_env(lay: Layout) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{lay.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["NINJA_STATUS"] = "[%f/%t] "
    return env


def configure(lay: Layout, python: Path, log: Log) -> None:
    args_stamp = lay.build / ".vdev-configure"
    want = "\n".join((str(lay.tree), *CONFIGURE_ARGS))
    if args_stamp.is_file() and args_stamp.read_text() == want:
        return
    shutil.rmtree(lay.build, ignore_errors=True)
    lay.build.mkdir(parents=True)
    log("configuring (minimal x86_64 system emulator; about a minute)")
    start = time.monotonic()
    try:
        run([lay.tree / "configure", f"--python={python}", *CONFIGURE_ARGS],
            cwd=lay.build, env=build_env(lay), log=lay.build / "configure.log",
            what="configure")
    except BaseException:
        shutil.rmtree(lay.build, ignore_errors=True)
        raise
    args_stamp.write_text(want)
    log(f"configured in {_duration(time.monotonic() - start)}")


@dataclass
class Progress:
    """Turns ninja's `[done/total]` lines into occasional progress messages."""

    log: Log
    every_percent: int = 10
    every_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    last_percent: int = -100
    last_time: float = 0.0
    done: int = 0
    total: int = 0

    def line(self, text: str) -> None:
        m = re.match(r"\[(\d+)/(\d+)\] ", text)
        if not m:
            return
        now = self.clock()
        if self.started < 0:
            self.started = self.last_time = now
        self.done, self.total = int(m.group(1)), int(m.group(2))
        percent = 100 * self.done // max(self.total, 1)
        if (percent >= self.last_percent + self.every_percent
                or now - self.last_time >= self.every_seconds
                or self.done == self.total):
            self.last_percent, self.last_time = percent, now
            self.log(f"compiling: {percent:3d}% ({self.done}/{self.total}, "
                     f"{_duration(now - self.started)})")


def compile_tree(lay: Layout, jobs: int, log: Log) -> None:
    progress = Progress(log)
    start = time.monotonic()
    run(["nice", "ninja", "-C", lay.build, f"-j{jobs}", *NINJA_TARGETS], env=build_env(lay),
        log=lay.build / "build.log", on_line=progress.line, what="the build")
    if progress.total:
        log(f"compiled {progress.total} steps in {_duration(time.monotonic() - start)}")


def install(lay: Layout, staging: Path) -> None:
    """The binary and the firmware it loads, laid out so that QEMU (built
    relocatable) finds the firmware next to itself in ../share/qemu."""
    try:
        root = find_env().root
    except VmEnvError as exc:
        raise QemuBuildError(f"{exc} (it provides the firmware)") from None
    (staging / "bin").mkdir(parents=True)
    (staging / "share" / "qemu").mkdir(parents=True)
    shutil.copy2(lay.build / "qemu-system-x86_64", staging / "bin" / "qemu-system-x86_64")
    for rel in FIRMWARE:
        src = root / rel
        if not src.exists():
            raise QemuBuildError(f"firmware {rel} missing from the VM environment root {root}")
        shutil.copyfile(src, staging / "share" / "qemu" / src.name)


def run_qtests(lay: Layout, binary: Path, log: Log) -> list[str]:
    """Run the series' qtests against `binary`; returns the passed test names."""
    env = build_env(lay)
    env["QTEST_QEMU_BINARY"] = str(binary)
    passed: list[str] = []
    for test in QTESTS:
        lines: list[str] = []
        try:
            run([lay.build / test, "--tap", "-k"], env=env, on_line=lines.append,
                log=lay.build / "qtest.log", what=f"qtest {Path(test).name}")
        except QemuBuildError:
            failed = [line for line in lines if line.startswith("not ok")]
            raise QemuBuildError(f"qtest {Path(test).name} failed: "
                                 + ("; ".join(failed) or first_error(lines))
                                 + f" (log: {lay.build / 'qtest.log'})") from None
        ok = [line.split(" ", 3)[-1] for line in lines if line.startswith("ok ")]
        if not ok:
            raise QemuBuildError(f"qtest {Path(test).name} ran no tests")
        passed += ok
    log(f"qtests passed: {len(passed)} ({', '.join(Path(t).name for t in QTESTS)})")
    return passed


def remove_stale_installs(lay: Layout, log: Log) -> None:
    for old in lay.cache.glob(f"qemu-{UPSTREAM_VERSION}-*"):
        if old != lay.install and old.is_dir() and (old / "built.json").is_file():
            log(f"removing the build of an older series: {old}")
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def build_lock(lay: Layout, log: Log) -> Iterator[None]:
    lay.base.mkdir(parents=True, exist_ok=True)
    with (lay.base / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another QEMU build holds the cache; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_qemu(*, jobs: int | None = None, check: bool = False,
                cache: Path | None = None, log: Log = say) -> Path:
    """The patched QEMU binary for the current series, built if needed."""
    lay = layout(cache)
    if not check and installed_binary(cache):
        return lay.binary
    with build_lock(lay, log):
        if lay.stamp.is_file() and lay.binary.is_file():
            if check:
                run_qtests(lay, lay.binary, log)
            return lay.binary
        start = time.monotonic()
        ensure_host_packages(log)
        try:
            dsc = fetch_source(lay, log)
        except ArchiveError as exc:
            raise QemuBuildError(str(exc)) from None
        unpack(lay, dsc, log)
        series = Series.from_dir(PATCHES)
        if applied_digest(lay.tree) != lay.digest:
            try:
                changed = apply_series(lay.tree, series, lay.originals, lay.digest)
            except SeriesError as exc:
                raise QemuBuildError(str(exc)) from None
            log(f"applied {len(series.patches)} patches ({len(changed)} files changed)")
        python = ensure_venv(lay, log)
        configure(lay, python, log)
        compile_tree(lay, jobs or os.cpu_count() or 1, log)
        staging = lay.install.with_name(lay.install.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            install(lay, staging)
            passed = run_qtests(lay, staging / "bin" / "qemu-system-x86_64", log)
            seconds = time.monotonic() - start
            (staging / "built.json").write_text(json.dumps({
                "version": VERSION, "digest": lay.digest, "seconds": round(seconds, 1),
                "qtests": passed,
            }, indent=1) + "\n")
            shutil.rmtree(lay.install, ignore_errors=True)
            staging.rename(lay.install)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"built QEMU {UPSTREAM_VERSION} + {len(series.patches)} patches "
            f"in {_duration(seconds)}")
        remove_stale_installs(lay, log)
        return lay.binary


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def stop_children() -> None:
    """Stop every build process still running (the build was interrupted or failed)."""
    _children.kill_all()
