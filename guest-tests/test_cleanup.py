"""Ctrl-C and SIGTERM stop `vdev vm`, `vdev run` and `make run` cleanly: every
process they started (QEMU, the KVM probe, both servers) is gone, every temporary
file and directory removed, and the user sees one line, not a traceback.

Each test runs the real command with a private TMPDIR: the processes it starts
inherit it (so they can be found in /proc even re-parented to init) and whatever
temporary entry is left behind shows up there."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.process_tree import (
    OnTerminal,
    kill_marked,
    marked,
    private_env,
    started,
    wait_for,
    wait_gone,
)
from vdev.vm.env import VmEnv, cache_dir

VDEV = [sys.executable, "-m", "vdev.cli"]
QEMU = "qemu-system-x86_64"


@pytest.fixture
def tmpdir_mark() -> Iterator[Path]:
    # Short: the commands put UNIX sockets in it (107-byte path limit).
    tmp = Path(tempfile.mkdtemp(prefix="vdev-t-"))
    yield tmp
    kill_marked(tmp)  # only if the test failed: it must not leave its leak running
    shutil.rmtree(tmp, ignore_errors=True)


def assert_clean(tmp: Path) -> None:
    assert wait_gone(tmp) == []
    assert sorted(os.listdir(tmp)) == []


def test_sigterm_stops_vdev_vm_and_gives_the_terminal_back(
        vm_env: VmEnv, workdir: Path, tmpdir_mark: Path) -> None:
    vm = OnTerminal([*VDEV, "vm", "--workdir", str(workdir / "vm")],
                    private_env(tmpdir_mark)).start()
    vm.expect("shell ready")
    running = " | ".join(cmd for _, cmd in marked(tmpdir_mark))
    for what in ("vdev.cli serve", "vdev.cli tsm serve", QEMU):
        assert what in running, running
    os.kill(vm.pid, signal.SIGTERM)
    assert vm.wait() == 128 + signal.SIGTERM
    assert "vdev vm: terminated" in vm.text and "Traceback" not in vm.text
    assert_clean(tmpdir_mark)


def test_sigterm_stops_vdev_run_while_the_guest_boots(
        vm_env: VmEnv, workdir: Path, tmpdir_mark: Path) -> None:
    run = started([*VDEV, "run", "--workdir", str(workdir / "run")], private_env(tmpdir_mark))
    wait_for(tmpdir_mark, QEMU)
    run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, out
    assert out.rstrip().endswith("vdev run: terminated; servers and QEMU stopped"), out
    assert "Traceback" not in out
    assert_clean(tmpdir_mark)


@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM"])
def test_a_signal_stops_make_run_without_a_traceback(
        vm_env: VmEnv, workdir: Path, tmpdir_mark: Path, how: str) -> None:
    """Ctrl-C signals the terminal's whole foreground process group (make, vdev run,
    and whatever of ours is in that group); SIGTERM goes to make alone, which passes
    it on to the command it runs."""
    run = started(["make", "run", f"RUNDIR={workdir / 'run'}"], private_env(tmpdir_mark))
    wait_for(tmpdir_mark, QEMU)
    if how == "Ctrl-C":
        os.killpg(run.pid, signal.SIGINT)
    else:
        run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=60)
    assert run.returncode != 0, out
    what = "interrupted" if how == "Ctrl-C" else "terminated"
    assert f"vdev run: {what}; servers and QEMU stopped" in out, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert_clean(tmpdir_mark)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_signal_during_the_kvm_probe_stops_the_probe(
        vm_env: VmEnv, workdir: Path, tmpdir_mark: Path, how: str) -> None:
    """A private cache without a probe result makes `vdev run` probe KVM first; the
    signal arrives while the probe's QEMU runs.  Nothing is cached: the probe did not
    finish, so it says nothing about KVM."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm: vdev run does not probe KVM here")
    cache = workdir / "cache"
    cache.mkdir()
    (cache / "vm-env").symlink_to(cache_dir() / "vm-env")
    env = private_env(tmpdir_mark, VDEV_CACHE=str(cache))
    env.pop("VDEV_ACCEL", None)
    run = started([*VDEV, "run", "--workdir", str(workdir / "run")], env)
    wait_for(tmpdir_mark, "-accel kvm")
    if how == "SIGTERM":
        run.send_signal(signal.SIGTERM)
    else:
        os.killpg(run.pid, signal.SIGINT)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 128 + (signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    assert "Traceback" not in out, out
    assert_clean(tmpdir_mark)
    assert not (cache / "kvm-probe").exists()
