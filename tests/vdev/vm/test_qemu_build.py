"""vdev.vm.qemu_build: the parts of `make qemu` that run without building QEMU.

The build itself (fetch, unpack, configure, compile, qtests) runs in
guest-tests/test_qemu_ide_rootport.py through ensure_qemu().
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vdev.vm import qemu_build
from vdev.vm.env import REPO
from vdev.vm.patch_series import Series


def test_progress_reports_every_tenth_and_the_end() -> None:
    lines: list[str] = []
    now = [100.0]
    p = qemu_build.Progress(lines.append, clock=lambda: now[0])
    for done in range(1, 201):
        now[0] += 0.1
        p.line(f"[{done}/200] Compiling C object x{done}.o")
    p.line("In file included from foo.h:1:")
    assert lines[0] == "compiling:   0% (1/200, 0s)"
    assert [line.split()[1] for line in lines] == [f"{n}%" for n in range(0, 101, 10)]
    assert lines[-1] == "compiling: 100% (200/200, 20s)"


def test_progress_also_reports_after_a_quiet_half_minute() -> None:
    lines: list[str] = []
    now = [0.0]
    p = qemu_build.Progress(lines.append, clock=lambda: now[0])
    p.line("[1/1000] a")
    now[0] = 31.0
    p.line("[2/1000] b")
    assert lines == ["compiling:   0% (1/1000, 0s)", "compiling:   0% (2/1000, 31s)"]


def test_first_error_picks_the_compiler_error() -> None:
    out = ["[1/2] Compiling a.c", "../hw/pci/pcie_ide.c:10:5: error: 'x' undeclared",
           "ninja: build stopped: subcommand failed."]
    assert qemu_build.first_error(out) == "../hw/pci/pcie_ide.c:10:5: error: 'x' undeclared"
    assert qemu_build.first_error(["all", "fine", "last words"]) == "last words"
    assert qemu_build.first_error([]) == "no output"


def test_install_directory_follows_the_series(tmp_path: Path) -> None:
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "0001-a.patch").write_text("--- a/x\n+++ b/x\n")
    one = qemu_build.series_digest(Series.from_dir(patches))
    (patches / "0002-b.patch").write_text("--- a/y\n+++ b/y\n")
    two = qemu_build.series_digest(Series.from_dir(patches))
    assert one != two
    lay = qemu_build.Layout(tmp_path, two)
    assert lay.install == tmp_path / f"qemu-{qemu_build.UPSTREAM_VERSION}-{two[:12]}"
    assert lay.binary == lay.install / "bin" / "qemu-system-x86_64"
    # The repository's own series: what make qemu builds.
    assert qemu_build.layout(tmp_path).digest == qemu_build.series_digest(
        Series.from_dir(REPO / "qemu" / "patches"))
    assert qemu_build.installed_binary(tmp_path) is None


def test_pins_cover_exactly_the_source_package_files() -> None:
    upstream = qemu_build.UPSTREAM_VERSION
    debian = qemu_build.VERSION.split(":", 1)[1]
    assert set(qemu_build.PINNED_SHA256) == {
        f"qemu_{debian}.dsc", f"qemu_{upstream}+ds.orig.tar.xz", f"qemu_{debian}.debian.tar.xz"}


def test_missing_host_packages_are_named() -> None:
    assert qemu_build.missing_host_packages(["dpkg", "vdev-no-such-package"]) == [
        "vdev-no-such-package"]


def test_not_root_gets_the_apt_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_build, "HOST_PACKAGES", {"vdev-no-such-package": "testing"})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(qemu_build.QemuBuildError,
                       match="as root run: apt-get install vdev-no-such-package"):
        qemu_build.ensure_host_packages(lambda msg: None)


def test_failure_is_one_line_without_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run(  # what `make qemu` runs
        [sys.executable, "-m", "vdev.cli", "qemu", "build"], capture_output=True, text=True,
        cwd=REPO, env={**os.environ, "VDEV_CACHE": str(blocker / "cache")}, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("vdev qemu build: ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert "Not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_stops_the_running_step_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    code = (
        "from vdev.cli import stopped_by_signals\n"
        "from vdev.vm import qemu_build as q\n"
        "try:\n"
        "    with stopped_by_signals():  # as vdev qemu build runs it\n"
        f"        q.run(['sh', '-c', 'sleep 60 & echo $! > {pidfile}; wait'], what='step')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "interrupted"
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and "zombie" not in _state(child):
        assert time.monotonic() < deadline, "the step's child survived"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"
