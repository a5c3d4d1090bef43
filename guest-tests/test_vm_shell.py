"""`vdev vm` (make vm) as a user drives it: on a terminal, the guest's shell, a fault
armed from the command line and another through the control socket, `poweroff` or
`exit` to leave; the logs stay in the workdir and the previous run's are kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.process_tree import OnTerminal, kill_marked, private_env, wait_gone
from vdev.vm.env import VmEnv

VDEV = [sys.executable, "-m", "vdev.cli"]
EP = "/sys/bus/pci/devices/0000:01:00.0"
PROMPT = "~ # "


@pytest.fixture
def tmp_mark() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="vdev-t-"))  # short: sockets go there
    yield tmp
    kill_marked(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("leave", ["poweroff", "exit"])
def test_leaving_the_shell_powers_off_and_keeps_the_logs(
        vm_env: VmEnv, workdir: Path, tmp_mark: Path, leave: str) -> None:
    logs = workdir / "vm"
    logs.mkdir()
    (logs / "console.log").write_text("the run before\n")
    vm = OnTerminal([*VDEV, "vm", "--workdir", str(logs)], private_env(tmp_mark)).start()
    vm.expect(PROMPT)
    vm.send("echo hello from the $((1 + 1)) guests\r")
    vm.expect("hello from the 2 guests\n")
    vm.send(f"{leave}\r")
    assert vm.wait() == 0, vm.text
    assert f"the previous run's logs are now in {logs}.prev" in vm.text
    assert (logs.with_name("vm.prev") / "console.log").read_text() == "the run before\n"
    # How to leave is said before the guest starts and in the guest's banner.
    assert "`poweroff` (or `exit`) in the guest ends the VM" in vm.text
    assert "@@VDEV leave poweroff (or exit) ends the VM" in vm.text
    # The kernel log went to its file, not onto the terminal.
    assert "@@DMESG" not in vm.text
    assert "reboot: Power down" in vm.text
    assert vm.text.rstrip().endswith(f"vdev vm: QEMU exited (0); logs in {logs}")
    console = (logs / "console.log").read_text(errors="replace")
    assert "@@VDEV shell ready" in console and "hello from the 2 guests" in console
    assert "Linux version 7.3" in (logs / "dmesg.log").read_text(errors="replace")
    for name in ("device-server.log", "tsm0-server.log", "qemu.cmdline", "trust-anchor.pem"):
        assert (logs / name).is_file(), name
    assert wait_gone(tmp_mark) == []
    assert list(tmp_mark.iterdir()) == []


def test_make_vm_fails_the_connect_at_a_chosen_step(
        vm_env: VmEnv, workdir: Path, tmp_mark: Path) -> None:
    """docs/faults.md §4 from make vm: a --fault given at start fails the first connect,
    a rule armed through the control socket the second; the third connects."""
    logs = workdir / "vm"
    vm = OnTerminal([*VDEV, "vm", "--workdir", str(logs), "--fault", "corrupt:GET_MEASUREMENTS"],
                    private_env(tmp_mark)).start()
    vm.expect(PROMPT)
    control = vm.expect_match(r"device control socket (\S+)").group(1)

    def connect() -> str:
        """The exit status of the guest's write to tsm/connect."""
        vm.send(f"echo tsm0 > {EP}/tsm/connect; echo connect-rc=$?\r")
        return vm.expect_match(r"^connect-rc=(\d+)$").group(1)

    def cleared() -> None:  # the next expect_match sees only what comes after
        vm.output.clear()

    assert connect() == "1"
    assert "sh: write error: Permission denied" in vm.text  # EACCES
    cleared()
    arm = subprocess.run(
        [*VDEV, "ctl", "--socket", control, "faults", "arm", "--fault",
         '{"kind": "error", "match": "KEY_EXCHANGE", "code": "Unspecified"}'],
        capture_output=True, text=True, timeout=30)
    assert arm.returncode == 0, arm.stderr
    assert connect() == "1"
    assert "sh: write error: Input/output error" in vm.text  # EIO
    cleared()
    assert connect() == "0"
    vm.send("poweroff\r")
    assert vm.wait() == 0, vm.text
    trace = (logs / "device.trace").read_text()
    assert "FAULT corrupt MEASUREMENTS" in trace and "FAULT error KEY_EXCHANGE" in trace, trace
    assert wait_gone(tmp_mark) == []
    assert list(tmp_mark.iterdir()) == []
