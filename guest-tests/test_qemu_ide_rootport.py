"""The patched QEMU's root-port IDE capability (qemu/README.md), for real.

One boot of the stock Debian 7.3 guest with two of our endpoints: one behind
a root port with `x-ide-streams=4`, one behind a plain root port.  Linux's
pci_ide_init() writes the reserved Stream ID 255 into every idle stream of a
port whose IDE capability it accepts, and accepts an endpoint's capability
only if the root port above it has one; the config bytes the guest reads
back show both decisions.

The platform side (key operations over QMP, the rule checker) is exercised
against the same binary through the qtest protocol, without a guest.

The patched QEMU is built through the cache when missing (`make qemu`).
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vdev.vm.config_dump import ConfigDump
from vdev.vm.env import VmEnv
from vdev.vm.qemu import VfioUserAttach
from vdev.vm.qemu_build import ensure_qemu
from vdev.vm.qmp import QmpClient, QmpError
from vdev.vm.rootport_ide import KeyOp, RootPortIde, StreamState
from vdev.vm.session import GuestRun, device_server, script, socket_path

VID = "0x1ded"
IDE_CAP = 0x30
RESERVED_STREAM_ID = 255
# A cold build of the patched QEMU happens inside the first test using it.
BUILD_TIMEOUT = 3600


@pytest.fixture(scope="module")
def patched_qemu() -> Path:
    return ensure_qemu()


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_linux_accepts_the_root_port_ide_capability(
    vm_env: VmEnv, workdir: Path, patched_qemu: Path
) -> None:
    profile = workdir / "ide2.toml"
    profile.write_text("[ide]\nide_selective_streams = 2\n")
    with_ide = device_server(workdir, "dev0", ["--profile", str(profile)]).start()
    without = device_server(workdir, "dev1", ["--profile", str(profile)]).start()
    try:
        env = dataclasses.replace(vm_env, qemu_override=patched_qemu)
        res = GuestRun(
            env=env, workdir=workdir,
            devices=[VfioUserAttach(with_ide.socket, root_port="x-ide-streams=4"),
                     VfioUserAttach(without.socket)],
            scripts={"50-ide.sh": script("qemu-ide-rootport.sh", VID=VID)},
            timeout=240,
        ).boot()
    finally:
        with_ide.stop()
        without.stop()
    assert res.completed, f"guest did not finish (console: {workdir / 'console.log'})"
    assert res.argv[0] == str(patched_qemu)

    endpoints = dict(v.split() for v in res.values("endpoint"))
    assert sorted(endpoints.values()) == ["0000:00:01.0", "0000:00:02.0"], endpoints
    by_port = {rp: bdf for bdf, rp in endpoints.items()}
    ide_ep, plain_ep = by_port["0000:00:01.0"], by_port["0000:00:02.0"]

    # The root port with x-ide-streams=4: an IDE capability with 4 Selective
    # IDE Streams, and Linux wrote Stream ID 255 (not enabled) into each.
    rp = ConfigDump(res.value(f"rp_config_{ide_ep}") or "")
    assert rp.u32(rp.ext_capabilities()[IDE_CAP] + 4) == 0x00030082
    assert rp.ide_selective_controls() == [RESERVED_STREAM_ID << 24] * 4

    # Its endpoint's capability was accepted too (both streams got 255); the
    # endpoint behind the plain root port was ignored (Stream IDs left at 0).
    ep = ConfigDump(res.value(f"ep_config_{ide_ep}") or "")
    assert ep.ide_selective_controls() == [RESERVED_STREAM_ID << 24] * 2
    plain_rp = ConfigDump(res.value(f"rp_config_{plain_ep}") or "")
    assert plain_rp.ide_selective_controls() is None, "IDE capability must be off by default"
    plain = ConfigDump(res.value(f"ep_config_{plain_ep}") or "")
    assert plain.ide_selective_controls() == [0, 0]

    # No stream is set up: the host bridge's pool is whole, no streamH.R.E link.
    assert res.value("host_bridge") == "pci0000:00"
    assert res.value("available_secure_streams") == "256"
    assert res.value("ide_stream_links") == ""
    bad = [line for line in res.dmesg if "WARNING:" in line or "BUG:" in line]
    assert not bad, "\n".join(bad)


class QtestMachine:
    """The patched QEMU under the qtest accelerator: config space through the
    q35 memory-mapped configuration window, keys through QMP."""

    ECAM = 0xB000_0000

    def __init__(self, qemu: Path, workdir: Path, root_port: str) -> None:
        self.qtest_path = socket_path("qtest")
        self.qmp_path = self.qtest_path.with_name("qmp.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.qtest_path))
        listener.listen(1)
        self.log = (workdir / "qemu-qtest.log").open("w")
        self.proc = subprocess.Popen(
            [str(qemu), "-machine", "q35", "-accel", "qtest", "-nodefaults", "-display", "none",
             "-qtest", f"unix:{self.qtest_path}",
             "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
             "-device", f"pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=2.0,{root_port}",
             "-device", "e1000e,bus=rp1,addr=0.0,romfile="],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )
        listener.settimeout(30)
        self.conn, _ = listener.accept()
        listener.close()
        self.conn.settimeout(30)
        self.buf = b""
        deadline = time.monotonic() + 30
        while not self.qmp_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.qmp = QmpClient(self.qmp_path)
        self.qmp.connect()
        # PCIEXBAR: the memory-mapped configuration window at ECAM, enabled.
        self.command(f"outl 0xcf8 {0x8000_0060:#x}")
        self.command(f"outl 0xcfc {self.ECAM | 1:#x}")
        self.write(0x18, 0x0001_0100)  # primary 0, secondary 1, subordinate 1

    def command(self, line: str) -> str:
        self.conn.sendall(line.encode() + b"\n")
        while True:
            while b"\n" not in self.buf:
                chunk = self.conn.recv(4096)
                assert chunk, "QEMU closed the qtest socket"
                self.buf += chunk
            reply, _, self.buf = self.buf.partition(b"\n")
            text = reply.decode()
            if text.startswith("OK"):
                return text[2:].strip()
            assert not text.startswith("FAIL"), f"{line}: {text}"

    def read(self, off: int) -> int:
        return int(self.command(f"readl {self.ECAM + (2 << 15) + off:#x}"), 16)

    def write(self, off: int, value: int) -> None:
        self.command(f"writel {self.ECAM + (2 << 15) + off:#x} {value:#x}")

    def close(self) -> None:
        self.qmp.close()
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()
        # Both sockets and their private directory (socket_path).
        shutil.rmtree(self.qtest_path.parent, ignore_errors=True)


@pytest.fixture
def qtest_machine(patched_qemu: Path, workdir: Path) -> Iterator[QtestMachine]:
    machine = QtestMachine(patched_qemu, workdir, "x-ide-streams=2")
    yield machine
    machine.close()


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_platform_keys_over_qmp_make_the_stream_secure(qtest_machine: QtestMachine) -> None:
    m = qtest_machine
    ide = RootPortIde(m.qmp, "rp1")
    block = 0x150 + 0x0C + 44  # Selective IDE Stream 1: 20 bytes + 2 address blocks
    # What Linux's pci_ide_stream_setup() writes for a stream to 01:00.0.
    m.write(block + 0x0C, 0x0100 << 8)
    m.write(block + 0x10, 0x0100 << 8 | 1)
    m.write(block + 0x04, 7 << 24)
    assert ide.state().stream(1).key_stream_id is None

    ide.program(7)
    m.write(block + 0x04, 7 << 24 | 1)
    assert m.read(block + 0x08) & 0xF == 0x2  # Secure, as the guest would read it
    state = ide.state()
    assert state.stream(1).secure and state.stream(1).stream_id == 7
    assert {(k.direction, k.sub_stream, k.programmed, k.active)
            for k in state.stream(1).keys} == {
        (d, s, (0,), 0) for d in ("rx", "tx") for s in ("pr", "npr", "cpl")}
    # The e1000e at 01:00.0 has no IDE capability: the checker names it.
    assert [v.rule for v in state.violations] == ["partner-stream-mismatch"]

    # Key set 0 reprogrammed while in use: the stream fails, the rule is named.
    ide.key(KeyOp.KEY_PROG, 7, 0)
    assert m.read(block + 0x08) & 0xF == 0x8
    state = ide.state()
    assert state.stream(1).state is StreamState.FAIL_INSECURE
    assert state.violations[-1].rule == "key-prog-active-set"
    assert "key set 0 of enabled stream 1 while in use" in state.violations[-1].message

    # Stopping the keys (a teardown) is no violation; disabling clears the failure.
    ide.stop(7)
    m.write(block + 0x04, 7 << 24)
    assert m.read(block + 0x08) & 0xF == 0x0
    assert ide.state().violations_total == 2


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_key_errors_come_back_as_qmp_errors(qtest_machine: QtestMachine) -> None:
    ide = RootPortIde(qtest_machine.qmp, "rp1")
    with pytest.raises(QmpError, match="No Selective IDE Stream of 'rp1' has Stream ID 9"):
        ide.key(KeyOp.KEY_PROG, 9, 0)
    with pytest.raises(QmpError, match="Device 'nope' not found"):
        RootPortIde(qtest_machine.qmp, "nope").state()
    state = ide.state()
    assert [v.rule for v in state.violations] == ["key-for-unconfigured-stream"]
    assert state.violations[0].stream_index is None and state.violations_total == 1
