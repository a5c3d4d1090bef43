"""The guest's IDE_KM and TDISP steps failing at a chosen point, as the guest sees it.

One boot of the real Linux 7.3 guest (vtsm + the TSM model behind its mailbox), one
`vdev serve --control`.  Like test_guest_faults.py (which breaks the SPDM steps of
`tsm/connect`), the guest script (scripts/guest-tdisp-faults.sh) prints `@@VDEV arm
<step>` and the host arms that step's message-layer fault on the device's control
socket; `@@VDEV tdi <label>` makes the host record the device's TDI (`vdev ctl tdi`).
Steps, each followed by a clean LOCK -> REPORT -> START to RUN and STOP:

  tdisp_version    TDISP VERSION response with another TDISPVersion: bind fails EPROTO
  key_prog         KP_ACK status UNSUPPORTED_PORT_INDEX: connect fails EIO, the TSM
                   unwinds (K_SET_STOP, END_SESSION), the next connect works
  lock_busy        TDISP_ERROR BUSY to LOCK: bind fails EBUSY, device TDI CONFIG_UNLOCKED
  report_mismatch  the report's first MMIO range one page above BAR0: vtsm's LOCK gave
                   the TSM the guest's BARs (mailbox protocol 1.1), so REPORT fails
                   EACCES naming the misplaced range, START after it fails EACCES (the
                   report stays rejected), the device's TDI stays CONFIG_LOCKED and
                   tdi_state says so; unbind
  start_report_mismatch  the same report read by START itself (LOCK then START): START
                   fails EACCES at the report check, no START_INTERFACE_REQUEST is sent
  wrong_nonce      LOCK_INTERFACE_RESPONSE nonce inverted: START fails EACCES (device
                   TDISP_ERROR INVALID_NONCE), the device's TDI stays CONFIG_LOCKED
  state_replay     the GET_DEVICE_INTERFACE_STATE after START answered with the stale
                   CONFIG_UNLOCKED from before LOCK: START fails EPROTO while the
                   device's TDI is RUN; unbind (STOP) brings it to CONFIG_UNLOCKED
  tdi_error        device TDI forced to ERROR before START: START fails EIO (TDISP_ERROR
                   INVALID_INTERFACE_STATE), device TDI ERROR; unbind (STOP from ERROR:
                   CONFIG_UNLOCKED), disconnect, reconnect, RUN again

Every LOCK carries the guest's BARs, so every clean path's REPORT is checked too.
tdi_state after each failure names the TDI's real state: CONFIG_UNLOCKED after the
refused LOCK, CONFIG_LOCKED after a refused START, ERROR only for the TDI the device
put into ERROR.  Afterwards every rule fired exactly once, there is one vtsm failure line per failed
operation with the errno and the TSM's reason, and the guest's dmesg has no WARN/BUG/oops.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdev.control.client import call
from vdev.vm.checks import BAD_DMESG
from vdev.vm.env import VmEnv
from vdev.vm.fault_boot import boot_with_fault_control
from vdev.vm.session import script, socket_path

EP = "0000:01:00.0"  # the endpoint, behind root port 1
MB = "0000:02:00.0"  # the TSM mailbox, behind root port 2
# The guest waits this long after "@@VDEV arm|tdi ..." for the host (which needs
# milliseconds: one console line, one control-socket request).
ARM_WAIT = 1
PAGE = 0x1000


@dataclass(frozen=True)
class Failure:
    op: str  # the vtsm operation that fails ("connect", "lock", "report", "start")
    errno: int
    reason: str  # in vtsm's dmesg line (the TSM model's reason); {bar0}, {moved}: hex


@dataclass(frozen=True)
class Step:
    name: str
    fault: dict[str, Any]  # a `vdev ctl faults arm --fault` JSON rule
    failures: tuple[Failure, ...]  # vtsm's failure lines for this step, in order


STEPS = [
    Step("tdisp_version", {"kind": "wrong_version", "match": "GET_TDISP_VERSION"}, (
        Failure("lock", errno.EPROTO, "lock failed at GET_TDISP_VERSION: bad IDE_KM/TDISP "
                "response: TDISP version 0x20"),)),
    Step("key_prog", {"kind": "error", "match": "KEY_PROG", "code": "UNSUPPORTED_PORT_INDEX"},
         (Failure("connect", errno.EIO,
                  "device refused the key: KP_ACK status UNSUPPORTED_PORT_INDEX (2)"),)),
    Step("lock_busy", {"kind": "error", "match": "LOCK_INTERFACE_REQUEST", "code": "Busy"}, (
        Failure("lock", errno.EBUSY, "lock failed at LOCK_INTERFACE_REQUEST: device "
                "answered TDISP_ERROR BUSY (0x3)"),)),
    Step("report_mismatch", {"kind": "report_mismatch"}, (
        Failure("report", errno.EACCES, "report failed at report check: interface report "
                "does not match the host's BARs: BAR0: range at {moved} where {bar0} was "
                "expected"),
        Failure("start", errno.EACCES, "start failed at START_INTERFACE_REQUEST: TDI "
                "01:00.0: its interface report was rejected (mismatch: BAR0: range at "
                "{moved} where {bar0} was expected"))),
    Step("start_report_mismatch", {"kind": "report_mismatch"}, (
        Failure("start", errno.EACCES, "start failed at report check: interface report "
                "does not match the host's BARs: BAR0: range at {moved} where {bar0} was "
                "expected"),)),
    Step("wrong_nonce", {"kind": "wrong_nonce"}, (
        Failure("start", errno.EACCES, "start failed at START_INTERFACE_REQUEST: device "
                "answered TDISP_ERROR INVALID_NONCE (0x102)"),)),
    Step("state_replay", {"kind": "replay", "match": "GET_DEVICE_INTERFACE_STATE", "nth": 2},
         (Failure("start", errno.EPROTO, "start failed at GET_DEVICE_INTERFACE_STATE: TDI "
                  "01:00.0 in CONFIG_UNLOCKED after START"),)),
    Step("tdi_error", {"kind": "tdi_error", "match": "START_INTERFACE_REQUEST"}, (
        Failure("start", errno.EIO, "start failed at START_INTERFACE_REQUEST: device "
                "answered TDISP_ERROR INVALID_INTERFACE_STATE (0x4)"),)),
]

_MARKERS = ("WARNING:", "BUG:", "Oops", "Call Trace", "general protection", "KASAN",
            "lockdep", "possible circular locking", "INFO: task")
_FAILED = re.compile(r"vtsm: (\w+) via tsm0 failed: (-\d+) \((.*)\)")


class Host:
    """The console callback: arms a step's fault, or records the device's TDI."""

    def __init__(self, control: Path) -> None:
        self.control = str(control)
        self.armed: list[str] = []
        self.tdi: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        for marker, act in (("@@VDEV arm ", self._arm), ("@@VDEV tdi ", self._tdi)):
            i = line.find(marker)
            if i < 0:
                continue
            name = line[i + len(marker):].strip()
            try:  # runs on the console reader thread: never raise there
                act(name)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                with self.lock:
                    self.errors.append(f"{name}: {exc!r}")

    def _arm(self, name: str) -> None:
        step = next(s for s in STEPS if s.name == name)
        reply = call(self.control, "faults", {"action": "arm", "fault": step.fault})
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        with self.lock:
            self.armed.append(name)

    def _tdi(self, label: str) -> None:
        reply = call(self.control, "tdi")
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        with self.lock:
            self.tdi[label] = reply["result"][0]


def first_mmio_page(report_hex: str) -> int:
    """FIRST_PAGE of the first MMIO range of a DEVICE_INTERFACE_REPORT body (§11.3.11:
    16 bytes of controls and MMIO_RANGE_COUNT, then 16-byte ranges; u64 first)."""
    raw = bytes.fromhex(report_hex)
    assert len(raw) >= 32 and int.from_bytes(raw[12:16], "little") >= 1, report_hex
    return int.from_bytes(raw[16:24], "little")


def test_tdisp_steps_fail_with_the_errno_of_each_fault(vm_env: VmEnv, workdir: Path) -> None:
    control = socket_path("device-ctl")
    host = Host(control)
    boot = boot_with_fault_control(vm_env, workdir, {"50-guest-tdisp-faults.sh": script(
            "guest-tdisp-faults.sh", EP=EP, MB=MB, ARM_WAIT=ARM_WAIT)}, control, host, timeout=240)
    res, listed = boot.result, boot.rules
    history = boot.tdi_history
    device = boot.servers["device"]
    assert res.completed, "guest did not finish; see console.log"
    boot.assert_servers_healthy()
    assert host.errors == [], host.errors
    assert host.armed == [s.name for s in STEPS]
    v = res.value
    assert v("insmod") == "ok" and v("rmmod") == "ok"
    bar0 = int((v("bar0") or "0").split()[0], 16)
    assert bar0, v("bar0")

    def to_run(label: str) -> None:
        """The clean path after a failure: bound, report matching BAR0, RUN, unbound."""
        assert v(f"{label}_lock") == "0 ok", (label, v(f"{label}_lock"))
        assert first_mmio_page(v(f"{label}_report") or "") == bar0, label
        assert v(f"{label}_start") == "0 ok", (label, v(f"{label}_start"))
        assert v(f"{label}_state") == f"{EP} RUN", label
        assert v(f"{label}_status") == '{"value":"RUN"}', (label, v(f"{label}_status"))
        assert v(f"{label}_stop") == "0 ok" and v(f"{label}_bound_after") == "", label

    def failed(key: str, e: int) -> None:
        seen = v(key) or ""
        assert seen.startswith("1 ") and os.strerror(e) in seen, (key, seen)

    # tdisp_version: the boot's first bind fails on the TDISP VERSION response.
    assert v("connect") == "0 ok"
    failed("fail_tdisp_version", errno.EPROTO)
    assert v("fail_tdisp_version_bound") == ""
    to_run("clean_tdisp_version")
    assert v("disconnect_tdisp_version") == "0 ok"

    # key_prog: connect refused with the KP_ACK status; reconnect works.
    failed("fail_key_prog", errno.EIO)
    assert v("fail_key_prog_authenticated") == ""
    assert v("reconnect_key_prog") == "0 ok"
    assert v("reconnect_key_prog_authenticated") == "tsm0"
    to_run("clean_key_prog")

    # lock_busy: bind refused, not bound, the device never locked the TDI.
    failed("fail_lock_busy", errno.EBUSY)
    assert v("fail_lock_busy_bound") == ""
    assert v("fail_lock_busy_state") == f"{EP} CONFIG_UNLOCKED"  # a refusal moves nothing
    assert host.tdi["lock_busy"]["state"] == "CONFIG_UNLOCKED", host.tdi["lock_busy"]
    to_run("clean_lock_busy")

    # report_mismatch: LOCK told the TSM where the guest's BAR0 is, so the report with
    # BAR0 one page higher is refused (reading tdi_report fails EACCES), START after
    # it too; the TDI stays bound and CONFIG_LOCKED.
    assert v("mismatch_lock") == "0 ok"
    failed("fail_report_mismatch", errno.EACCES)
    failed("fail_mismatch_start", errno.EACCES)
    assert v("fail_mismatch_state") == f"{EP} CONFIG_LOCKED"
    assert v("fail_mismatch_bound") == "tsm0"
    assert v("fail_mismatch_status") == '{"value":"CONFIG_LOCKED"}'
    assert host.tdi["report_mismatch"]["state"] == "CONFIG_LOCKED", host.tdi["report_mismatch"]
    assert v("mismatch_stop") == "0 ok"
    to_run("clean_report_mismatch")

    # start_report_mismatch: START read the report itself and refused it.
    assert v("start_mismatch_lock") == "0 ok"
    failed("fail_start_mismatch", errno.EACCES)
    assert v("fail_start_mismatch_state") == f"{EP} CONFIG_LOCKED"
    assert v("fail_start_mismatch_bound") == "tsm0"
    mismatch = host.tdi["start_report_mismatch"]
    assert mismatch["state"] == "CONFIG_LOCKED", mismatch
    assert mismatch["lock"]["start_nonce_pending"] is True, mismatch  # START never sent
    assert v("start_mismatch_stop") == "0 ok"
    to_run("clean_start_mismatch")

    # wrong_nonce: START refused; the TDI stays bound and CONFIG_LOCKED on the device.
    assert v("wrong_nonce_lock") == "0 ok"
    assert first_mmio_page(v("wrong_nonce_report") or "") == bar0
    failed("fail_wrong_nonce", errno.EACCES)
    assert v("fail_wrong_nonce_state") == f"{EP} CONFIG_LOCKED"
    assert v("fail_wrong_nonce_bound") == "tsm0"
    assert v("fail_wrong_nonce_status") == '{"value":"CONFIG_LOCKED"}'
    nonce = host.tdi["wrong_nonce"]
    assert nonce["state"] == "CONFIG_LOCKED", nonce
    assert nonce["lock"]["start_nonce_pending"] is True, nonce  # the device kept its own
    assert v("wrong_nonce_stop") == "0 ok"
    to_run("clean_wrong_nonce")

    # state_replay: the TSM refuses START's outcome, the device did start.
    assert v("state_replay_lock") == "0 ok"
    failed("fail_state_replay", errno.EPROTO)
    assert v("fail_state_replay_bound") == "tsm0"
    assert host.tdi["state_replay"]["state"] == "RUN", host.tdi["state_replay"]
    assert v("state_replay_stop") == "0 ok"
    assert host.tdi["state_replay_stopped"]["state"] == "CONFIG_UNLOCKED"
    to_run("clean_state_replay")

    # tdi_error: START refused, the device's TDI is ERROR; STOP, reconnect, RUN.
    assert v("tdi_error_lock") == "0 ok"
    failed("fail_tdi_error", errno.EIO)
    assert v("fail_tdi_error_state") == f"{EP} ERROR"  # the TSM read it back
    assert v("fail_tdi_error_status") == '{"value":"ERROR"}'
    assert host.tdi["tdi_error"]["state"] == "ERROR", host.tdi["tdi_error"]
    assert v("tdi_error_stop") == "0 ok"
    assert host.tdi["tdi_error_stopped"]["state"] == "CONFIG_UNLOCKED"
    assert v("tdi_error_disconnect") == "0 ok" and v("tdi_error_reconnect") == "0 ok"
    to_run("clean_tdi_error")
    assert v("disconnect") == "0 ok" and v("authenticated_after") == ""

    # The device's TDI history: RUN after every failure (one clean path per step),
    # plus the START state_replay made the TSM refuse.
    assert sum(1 for e in history if e["new"] == "RUN") == len(STEPS) + 1, history
    assert any(e["new"] == "ERROR" for e in history), history

    # One vtsm failure line per failed operation, in order: the op, the errno, the reason.
    lines = [m for line in res.dmesg if (m := _FAILED.search(line))]
    want = [(s.name, f) for s in STEPS for f in s.failures]
    assert len(lines) == len(want), [m[0] for m in lines]
    for (name, f), m in zip(want, lines, strict=True):
        assert (m[1], int(m[2])) == (f.op, -f.errno), (name, m[0])
        reason = f.reason.format(bar0=f"{bar0:#x}", moved=f"{bar0 + PAGE:#x}")
        assert reason in m[3], (name, reason, m[0])

    # No WARN/BUG/oops or DOE errors in the guest beyond those failure lines.
    problems = [line for line in res.dmesg
                if (any(x in line for x in _MARKERS) or BAD_DMESG.search(line))
                and not _FAILED.search(line)]
    assert problems == [], "\n".join(problems)

    # Every rule fired exactly once.
    assert listed is not None
    rules = [r for r in listed if r["kind"] != "doe_delay"]
    assert [r["kind"] for r in rules] == [s.fault["kind"] for s in STEPS], rules
    for step, armed in zip(STEPS, rules, strict=True):
        same = {k: x for k, x in step.fault.items() if k != "code"}  # code comes back normalised
        assert {k: armed.get(k) for k in same} == same, armed
        assert armed["fired"] == 1, armed
    dev = device.log_text()
    for step in STEPS:
        assert f"fault injected: {step.fault['kind']}" in dev, step.name
