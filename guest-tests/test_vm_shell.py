"""`vdev vm` (make vm) as a user drives it: on a terminal, the guest's shell, the
connect/LOCK/START sequence typed as the README, the banner and docs/guest.md §2 show
it, a fault armed from the command line and another through the control socket,
`poweroff` or `exit` to leave; the logs stay in the workdir and the previous run's are
kept."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.process_tree import OnTerminal, kill_marked, private_env, wait_gone
from vdev.vm.demo import SHELL_FLOW
from vdev.vm.env import REPO, VmEnv

VDEV = [sys.executable, "-m", "vdev.cli"]
BDF = "0000:01:00.0"
EP = f"/sys/bus/pci/devices/{BDF}"
MB = "/sys/bus/pci/devices/0000:02:00.0"
PROMPT = "~ # "


def documented(path: Path, after: str) -> list[str]:
    """The lines of the first ```sh block after `after` in a Markdown file."""
    text = path.read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index(after):], re.DOTALL)
    assert block is not None, (path, after)
    return block.group(1).splitlines()


README_FLOW = documented(REPO / "README.md", "lock and start the TDI")
GUEST_MD_FLOW = documented(REPO / "docs/guest.md", "A complete session in the guest")


def type_line(vm: OnTerminal, line: str) -> str:
    """Type one documented line as it stands; the exit status, and checks what a
    "# prints X" comment promises."""
    vm.output.clear()
    vm.send(f"{line}\r")
    vm.send("echo rc=$?\r")
    rc = vm.expect_match(r"^rc=(\d+)$").group(1)
    if "# prints " in line:
        want = line.split("# prints ", 1)[1].strip()
        assert re.search(rf"^{re.escape(want)}$", vm.text, re.MULTILINE), (line, vm.text)
    return rc


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


def test_the_documented_shell_session_connects_locks_and_starts(
        vm_env: VmEnv, workdir: Path, tmp_mark: Path) -> None:
    """The flow as a new user types it: the README's lines (connect, tdi_lock, tdi_start,
    tdi_state), which the banner shows too, then docs/guest.md §2's whole session.
    START needs no report read first, and a refused request leaves tdi_state where the
    TDI is, never ERROR."""
    flow = [line.split("#")[0].strip() for line in README_FLOW]
    assert flow == list(SHELL_FLOW)  # the README shows what the banner offers
    assert all(any(line.startswith(cmd) for line in GUEST_MD_FLOW) for cmd in flow)
    logs = workdir / "vm"
    vm = OnTerminal([*VDEV, "vm", "--workdir", str(logs)], private_env(tmp_mark)).start()
    vm.expect(PROMPT)
    banner = re.findall(r"^@@VDEV try (.*)$", vm.text, re.MULTILINE)
    assert banner == list(SHELL_FLOW), banner

    for line in README_FLOW:
        assert type_line(vm, line) == "0", (line, vm.text)
    # A refused request: START again.  The TSM refuses it (no LOCK nonce left, EINVAL);
    # the TDI is still RUN and tdi_state says so.
    start = SHELL_FLOW[2]
    assert type_line(vm, start) == "1"
    assert "sh: write error: Invalid argument" in vm.text
    assert type_line(vm, f"{SHELL_FLOW[3]}  # prints {BDF} RUN") == "0"
    assert type_line(vm, f"echo {BDF} > {MB}/tdi_stop") == "0"
    assert type_line(vm, f"echo tsm0 > {EP}/tsm/disconnect") == "0"

    for line in GUEST_MD_FLOW:
        assert type_line(vm, line) == "0", (line, vm.text)

    vm.send("poweroff\r")
    assert vm.wait() == 0, vm.text
    dmesg = (logs / "dmesg.log").read_text(errors="replace")
    # START read the report itself, and the refused START is the only failure.
    failures = re.findall(r"vtsm: (\w+) via tsm0 failed: (-\d+) \((.*)\)", dmesg)
    assert failures == [("start", "-22", "start failed at START_INTERFACE_REQUEST: TDI "
                         "01:00.0 is not locked by this TSM")], failures
    # Nobody read tdi_report: both STARTs fetched and checked it (against BAR0).
    tsm_log = (logs / "tsm0-server.log").read_text()
    assert "TSM REPORT" not in tsm_log, tsm_log
    assert tsm_log.count(f"TSM START {BDF} done: status 0") == 2, tsm_log
    assert "TDI 01:00.0: RUN; interface report matches 1 expected BAR(s)" in tsm_log
    assert wait_gone(tmp_mark) == []
