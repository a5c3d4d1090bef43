"""The kernel's own PCI/IDE code runs the stream, on the patched QEMU (qemu/README.md).

The endpoint sits behind a pcie-root-port with an IDE capability, so Linux 7.3's
pci_ide_init() accepts the endpoint's capability and vtsm sets the stream up with
pci_ide_stream_alloc/register/setup/enable; the TSM model programs the root port's
keys over QMP.  Checked from the guest's own view (config bytes of both ends,
sysfs under the host bridge) and from both rule checkers (QEMU's trace and QMP
state in the TSM's evidence, the device's log).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from vdev.vm.checks import BAD_DMESG, QEMU_IDE_VIOLATION
from vdev.vm.config_dump import ConfigDump
from vdev.vm.demo import ROOT_PORT_IDE, RunOptions, connect_session
from vdev.vm.env import VmEnv
from vdev.vm.qemu import VfioUserAttach, VmResult
from vdev.vm.session import (
    GuestRun,
    device_server,
    root_anchor,
    script,
    socket_path,
    tsm_mailbox_server,
)

EP, MB = "0000:01:00.0", "0000:02:00.0"
RP = "0000:00:01.0"
STREAM_ID = 1
STREAM = "stream0.0.0"  # host bridge stream 0, root port block 0, endpoint block 0
BUILD_TIMEOUT = 3600  # a cold build of the patched QEMU happens in the first test


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_make_run_flow_on_the_kernels_pci_ide(patched_env: VmEnv, workdir: Path) -> None:
    """`make run QEMU_IDE=1`: every check of the summary holds, IDE ones included."""
    checks, result = connect_session(patched_env, workdir,
                                     options=RunOptions(qemu_ide=True))
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert result is not None, failed
    assert not failed, "\n".join(failed)
    by_name = {c.name: c.detail for c in checks}
    assert by_name["IDE path"].startswith(f"'{EP} pci_ide {STREAM}'")
    assert "endpoint SECURE (2), root port SECURE (2)" in by_name["IDE stream SECURE"]
    assert "256 -> 255 -> 256" in by_name["IDE stream registered"]
    assert {"IDE torn down", "IDE rules (root port checker)",
            "IDE rules (endpoint checker)", "TDISP LOCK", "START -> RUN"} <= by_name.keys()
    evidence = json.loads((workdir / "evidence.json").read_text())
    platform = evidence["ide"]["root_port"]["platform"]
    assert platform["port"] == "rp1" and platform["violations_total"] == 0


@dataclasses.dataclass
class Cycles:
    res: VmResult
    evidence: dict[str, Any]
    device_log: str
    tsm_log: str

    def state(self, end: str, when: str) -> int | None:
        """IDE state of the enabled stream with our Stream ID at `end` ("ep"/"rp")."""
        return ConfigDump(self.res.value(f"{end}_{when}") or "").ide_stream_state(STREAM_ID)


@pytest.fixture(scope="module")
def cycles(patched_env: VmEnv, tmp_path_factory: pytest.TempPathFactory) -> Cycles:
    workdir = tmp_path_factory.mktemp("qemu-ide-cycles")
    identity = workdir / "identity"
    qmp = socket_path("qmp")
    device = device_server(workdir, "device", extra=["--state-dir", str(identity)]).start()
    try:
        anchor = root_anchor(identity, workdir / "root.pem")
        tsm = tsm_mailbox_server(workdir, [
            "--trust-anchor", str(anchor), "--evidence", str(workdir / "evidence.json"),
            "--root-port-qmp", str(qmp), "--root-port", "rp1"]).start()
        try:
            res = GuestRun(
                env=patched_env, workdir=workdir, modules=["vtsm"],
                devices=[VfioUserAttach(device.socket, root_port=ROOT_PORT_IDE), tsm.socket],
                scripts={"50-ide.sh": script("qemu-ide-cycles.sh", EP=EP, MB=MB)},
                qemu_args=["-qmp", f"unix:{qmp},server=on,wait=off", "-trace", "pcie_ide_*"],
                timeout=420,
            ).boot()
            assert tsm.alive(), tsm.log_tail()
        finally:
            tsm.stop()
        assert device.alive(), device.log_tail()
    finally:
        device.stop()
        shutil.rmtree(qmp.parent, ignore_errors=True)  # QEMU's QMP socket (socket_path)
    assert res.completed, f"guest did not finish; see {workdir / 'console.log'}"
    return Cycles(res, json.loads((workdir / "evidence.json").read_text()),
                  device.log_text(), tsm.log_text())


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_three_rounds_each_allocate_enable_and_release_the_stream(cycles: Cycles) -> None:
    v = cycles.res.value
    assert v("insmod") == "ok" and v("avail_start") == "256" and v("links_start") == ""
    for i in ("1", "2", "3"):
        assert v(f"connect_{i}") == "0 ok", (i, v(f"connect_{i}"))
        # The kernel registered the stream: a streamH.R.E link, one stream fewer.
        assert v(f"ide_stream_{i}") == f"{EP} pci_ide {STREAM}"
        assert v(f"links_connected_{i}") == STREAM and v(f"avail_connected_{i}") == "255"
        # Both partners read Secure (pci_ide_stream_enable checked it too).
        assert cycles.state("ep", f"connected_{i}") == 2, i
        assert cycles.state("rp", f"connected_{i}") == 2, i
        assert v(f"tdi_lock_{i}") == "0 ok" and int(v(f"report_bytes_{i}") or "0") > 16
        assert v(f"tdi_start_{i}") == "0 ok" and v(f"tdi_state_{i}") == f"{EP} RUN"
        assert v(f"tdi_stop_{i}") == "0 ok" and v(f"disconnect_{i}") == "0 ok"
        # Disconnect returned both ends to no enabled stream and the pool to 256.
        assert v(f"authenticated_{i}") == ""
        assert v(f"avail_after_{i}") == "256" and v(f"links_after_{i}") == ""
        assert cycles.state("ep", f"after_{i}") is None
        assert cycles.state("rp", f"after_{i}") is None
    sessions = [line for line in cycles.device_log.splitlines()
                if "SPDM session" in line and "established" in line]
    assert len(sessions) >= 3  # every round its own session and keys
    assert v("rmmod") == "ok"


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_flr_in_run_loses_the_endpoints_keys_and_disconnect_still_cleans_up(
    cycles: Cycles
) -> None:
    v = cycles.res.value
    assert v("tdi_state_flr") == f"{EP} RUN"
    assert v("reset_method_set") == "0 ok" and v("flr") == "0 ok"
    assert json.loads(v("status_after_flr") or "{}") == {"value": "CONFIG_UNLOCKED"}
    # The FLR reset the endpoint's IDE registers; the root port's end is still up.
    assert cycles.state("ep", "flr") is None
    assert cycles.state("rp", "flr") == 2
    assert v("tdi_stop_flr") == "0 ok" and v("disconnect_flr") == "0 ok"
    assert v("avail_after_flr") == "256" and v("links_after_flr") == ""
    assert cycles.state("rp", "after_flr") is None


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_root_port_enabled_first_is_named_by_the_root_port_checker(cycles: Cycles) -> None:
    v = cycles.res.value
    # The wrong order still reaches Secure on both ends: only the checker can tell.
    assert v("connect_rp_first") == "0 ok" and v("disconnect_rp_first") == "0 ok"
    assert cycles.state("ep", "connected_rp_first") == 2
    assert cycles.state("rp", "connected_rp_first") == 2
    traced = [m.group(1) for line in cycles.res.stderr
              if (m := QEMU_IDE_VIOLATION.search(line))]
    assert len(traced) == 1, traced
    assert "partner-not-enabled" in traced[0]
    assert f"enabled Stream ID {STREAM_ID} before its partner 01:00.0 enabled it" in traced[0]
    platform = cycles.evidence["ide"]["root_port"]["platform"]
    assert [x["rule"] for x in platform["violations"]] == ["partner-not-enabled"]
    assert any("enabling IDE stream0.0.0 on the Root Port first" in line
               for line in cycles.res.dmesg)


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_whole_boot_is_clean(cycles: Cycles) -> None:
    bad = [line for line in cycles.res.dmesg if BAD_DMESG.search(line)]
    assert bad == [], "\n".join(bad)
    assert "IDE rule violation" not in cycles.device_log
    assert "Traceback" not in cycles.tsm_log and "Traceback" not in cycles.device_log
