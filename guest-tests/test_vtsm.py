"""The guest connect path for real: Linux 7.3's PCI/TSM core drives our vtsm
link TSM, which relays DOE exchanges between the TSM mailbox device (scripted
backend) and the TEE-IO endpoint, both served over vfio-user to QEMU 11."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vdev.vm.env import VmEnv
from vdev.vm.qemu import VmResult
from vdev.vm.session import GuestRun, ServerProcess, device_server, script, tsm_mailbox_server

EP = "0000:01:00.0"  # first vfio-user device: behind root port 1
MB = "0000:02:00.0"  # second: the mailbox, behind root port 2

GET_VERSION = "10840000"  # SPDM 1.0 GET_VERSION (DSP0274 §10.3)
GET_CAPABILITIES = "11e10000" "00000000" "00000000"  # SPDM 1.1 GET_CAPABILITIES
SECURED_PROBE = "01000000" "deadbeef"  # an opaque type-2 object: exercises the second DOE type
REPORT = "SCRIPTED-INTERFACE-REPORT"
STATUS_JSON = '{"state":"RUN","tdi":"0000:01:00.0"}'
REJECT_REASON = "scripted: certificate chain rejected by policy"


def _run(requests: list[tuple[int, str]], status: int = 0, reason: str = "ok",
         data_text: str = "") -> dict[str, Any]:
    return {"requests": [{"type": t, "hex": h} for t, h in requests],
            "done": {"status": status, "reason": reason, "data_text": data_text}}


SCRIPT = {
    "connect": [
        _run([(1, GET_VERSION), (1, GET_CAPABILITIES), (2, SECURED_PROBE)],
             reason="scripted: session established"),
        _run([(1, GET_VERSION)], -errno.EACCES, REJECT_REASON),
        _run([(1, GET_VERSION)], reason="scripted: session re-established"),
    ],
    "disconnect": [_run([(1, GET_VERSION)], reason="scripted: session ended")],
    "lock": [_run([(2, SECURED_PROBE)], reason="scripted: LOCK_INTERFACE ok")],
    "start": [_run([], reason="scripted: START_INTERFACE ok")],
    "stop": [_run([], reason="scripted: STOP_INTERFACE ok")],
    "report": [_run([], reason="scripted: report", data_text=REPORT)],
    "status": [_run([], reason="scripted: status", data_text=STATUS_JSON)],
}


@pytest.fixture
def endpoint(workdir: Path) -> Iterator[ServerProcess]:
    srv = device_server(workdir, "ep").start()
    yield srv
    srv.stop()


def boot(env: VmEnv, workdir: Path, endpoint: ServerProcess, mailbox: ServerProcess) -> VmResult:
    run = GuestRun(env=env, workdir=workdir, modules=["vtsm", "vdevtest"],
                   devices=[endpoint.socket, mailbox.socket],
                   scripts={"50-vtsm.sh": script("vtsm.sh", EP=EP, MB=MB)}, timeout=240)
    return run.boot()


def bad_kernel_lines(res: VmResult) -> list[str]:
    markers = ("WARNING:", "BUG:", "Oops", "Call Trace", "general protection", "KASAN",
               "lockdep", "possible circular locking", "INFO: task")
    return [line for line in res.dmesg if any(m in line for m in markers)]


def test_vtsm_connect_lock_report_disconnect(
    vm_env: VmEnv, workdir: Path, endpoint: ServerProcess
) -> None:
    script_file = workdir / "tsm-script.json"
    script_file.write_text(json.dumps(SCRIPT, indent=1))
    record = workdir / "tsm-exchanges.jsonl"
    mailbox = tsm_mailbox_server(
        workdir, ["--scripted", str(script_file), "--record", str(record)]).start()
    try:
        res = boot(vm_env, workdir, endpoint, mailbox)
    finally:
        mailbox.stop()
    v = res.value
    assert res.completed, "guest did not finish; see console.log"
    assert bad_kernel_lines(res) == [], "\n".join(bad_kernel_lines(res))

    # Enumeration: endpoint on bus 1, mailbox on bus 2 (one root port each).
    assert v("ep_id") == "0x1ded:0x7e10"
    assert v("mb_id") == "0x1ded:0x7e20" and v("mb_class") == "0x088000"
    assert "0001:01" in (v("ep_doe_features") or "") and "0001:02" in (v("ep_doe_features") or "")
    assert v("ep_tsm_before") == ""  # no link TSM registered yet: group hidden

    # tsm0 is parented to the mailbox function, in its class glue directory.
    assert v("insmod") == "ok"
    assert v("tsm_class") == "tsm0"
    tsm_path = v("tsm_path") or ""
    assert tsm_path.startswith("/sys/devices/pci0000:00/0000:00:")
    assert tsm_path.endswith(f"/{MB}/tsm/tsm0"), tsm_path
    assert v("mb_tsm_dir") == "tsm0"
    assert v("mb_attrs") == "tdi_lock tdi_report tdi_start tdi_state tdi_status tdi_stop"
    assert set((v("ep_tsm_files") or "").split()) == {"bound", "connect", "disconnect", "dsm"}

    # connect #1 relays three DOE exchanges and succeeds.
    assert v("authenticated_before") == ""
    assert v("connect1") == "0 ok"
    assert v("authenticated1") == "tsm0" and v("connect_read1") == "tsm0"
    assert v("dsm1") == EP
    assert v("bound_before_lock") == ""
    assert (v("connect_again") or "").startswith("1 ") and "busy" in (v("connect_again") or "")

    # TDISP steps through the mailbox attributes; tsm/bound follows bind/unbind.
    assert v("tdi_lock") == "0 ok"
    assert v("bound_after_lock") == "tsm0"
    assert v("tdi_state_locked") == f"{EP} LOCKED"
    assert v("tdi_report") == REPORT
    assert v("tdi_status") == STATUS_JSON
    assert v("tdi_start") == "0 ok" and v("tdi_state_run") == f"{EP} RUN"
    assert v("tdi_stop") == "0 ok" and v("bound_after_stop") == ""
    assert v("tdi_state_stopped") == f"{EP} UNLOCKED"
    assert "No such device or address" in (v("tdi_start_unbound") or "")  # not bound: ENXIO
    assert "No such device" in (v("tdi_lock_bad_bdf") or "")

    assert v("disconnect1") == "0 ok" and v("authenticated_after_disconnect") == ""

    # connect #2: the TSM says -EACCES; the errno reaches userspace, the reason dmesg.
    assert (v("connect2") or "").startswith("1 ") and "Permission denied" in (v("connect2") or "")
    assert v("authenticated2") == ""
    failed = [line for line in res.dmesg if "vtsm: connect via tsm0 failed" in line]
    assert len(failed) == 1 and f"-13 ({REJECT_REASON})" in failed[0], failed

    # connect #3 works again; rmmod while connected and bound is clean.
    assert v("connect3") == "0 ok" and v("authenticated3") == "tsm0"
    assert v("tdi_lock3") == "0 ok" and v("bound3") == "tsm0"
    assert v("rmmod") == "ok"
    assert v("tsm_class_after") == "" and v("ep_tsm_after") == ""
    assert any("vtsm: stop via tsm0 ok" in line for line in res.dmesg[-20:])
    assert any("vtsm: disconnect via tsm0 ok" in line for line in res.dmesg[-20:])

    # The scripted TSM received the device's real DOE responses, byte for byte.
    exchanges = [json.loads(line) for line in record.read_text().splitlines()]
    ops = [(e["op"], e["index"]) for e in exchanges]
    assert ops == [("connect", 0), ("connect", 1), ("connect", 2), ("lock", 0),
                   ("disconnect", 0), ("connect", 0), ("connect", 0), ("lock", 0),
                   ("disconnect", 0)], ops
    assert all(e["rc"] == 0 and e["target"] == EP for e in exchanges)
    # Every GET_VERSION answer equals the device's own answer through pci_doe()
    # (vdevtest): SPDM VERSION (0x04) or, before the responder was wired, ERROR.
    rc, _, direct = (v("ep_get_version") or "").partition(" ")
    assert int(rc) == len(direct) // 2 > 0, v("ep_get_version")
    versions = [e["response"] for e in exchanges if e["request"] == GET_VERSION]
    assert len(versions) == 5 and set(versions) == {direct}
    assert bytes.fromhex(direct)[1] in (0x04, 0x7F)
    # The other objects got SPDM answers (version byte 0x1X), not transport errors.
    assert all(bytes.fromhex(e["response"])[0] >> 4 == 1 for e in exchanges)
    log = mailbox.log_text()
    assert "Traceback" not in log and "mailbox error" not in log
    assert endpoint.alive(), endpoint.log_tail()


def test_vtsm_tsm_server_dies_mid_connect(
    vm_env: VmEnv, workdir: Path, endpoint: ServerProcess
) -> None:
    """SIGKILL the mailbox server after the first relayed DOE exchange: the guest's
    connect fails with -EIO/-ETIMEDOUT within the step timeout, and unloads cleanly."""
    script_file = workdir / "tsm-script.json"
    many = [(1, GET_VERSION)] * 200  # long enough that the kill lands mid-connect
    script_file.write_text(json.dumps({"connect": [_run(many)]}))
    record = workdir / "tsm-exchanges.jsonl"
    mailbox = tsm_mailbox_server(
        workdir, ["--scripted", str(script_file), "--record", str(record)]).start()
    stop = threading.Event()

    def kill_after_first_exchange() -> None:
        while not stop.wait(0.005):
            if record.exists() and record.stat().st_size > 0:
                assert mailbox.proc is not None
                mailbox.proc.kill()
                return

    killer = threading.Thread(target=kill_after_first_exchange, daemon=True)
    killer.start()
    try:
        run = GuestRun(env=vm_env, workdir=workdir, modules=["vtsm"],
                       devices=[endpoint.socket, mailbox.socket],
                       scripts={"50-vtsm-death.sh": script("vtsm-death.sh", EP=EP, MB=MB)},
                       timeout=180)
        res = run.boot()
    finally:
        stop.set()
        killer.join(5)
        mailbox.stop()
    v = res.value
    assert res.completed, "guest hung; see console.log"
    assert not mailbox.alive()
    done = len(record.read_text().splitlines())
    assert 1 <= done < 200, f"kill did not land mid-connect ({done} exchanges)"
    rc, _, msg = (v("connect_dead") or "").partition(" ")
    assert rc == "1" and ("Input/output error" in msg or "timed out" in msg), msg
    assert float(v("connect_seconds") or "99") < 10
    assert v("authenticated_dead") == ""
    failed = [line for line in res.dmesg if "vtsm: connect via tsm0 failed" in line]
    assert len(failed) == 1, res.dmesg[-20:]
    assert v("rmmod") == "ok"
    assert bad_kernel_lines(res) == [], "\n".join(bad_kernel_lines(res))
    assert endpoint.alive(), endpoint.log_tail()
