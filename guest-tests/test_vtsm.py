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
from vdev.vm.session import (
    GuestRun,
    ServerProcess,
    device_server,
    root_anchor,
    script,
    tsm_mailbox_server,
)

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
    assert v("tdi_state_locked") == f"{EP} CONFIG_LOCKED"
    assert v("tdi_report") == REPORT
    assert v("tdi_status") == STATUS_JSON
    assert v("tdi_start") == "0 ok" and v("tdi_state_run") == f"{EP} RUN"
    assert v("tdi_stop") == "0 ok" and v("bound_after_stop") == ""
    assert v("tdi_state_stopped") == f"{EP} CONFIG_UNLOCKED"
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


def test_vtsm_tsm_stalls_then_dies_mid_connect(
    vm_env: VmEnv, workdir: Path, endpoint: ServerProcess
) -> None:
    """A TSM step slower than vtsm's step timeout gives -ETIMEDOUT (and the
    mailbox is aborted, so the next connect starts cleanly); a mailbox server
    SIGKILLed while the guest waits for a step gives -EIO.  Neither hangs."""
    script_file = workdir / "tsm-script.json"
    slow = {"type": 1, "hex": GET_VERSION, "delay_us": 4_000_000}
    held = {"type": 1, "hex": GET_VERSION, "delay_us": 5_000_000}
    script_file.write_text(json.dumps({"connect": [
        {"requests": [slow], "done": {"status": 0, "reason": "too late"}},
        {"requests": [{"type": 1, "hex": GET_VERSION}, held], "done": {"status": 0}},
    ]}))
    record = workdir / "tsm-exchanges.jsonl"
    mailbox = tsm_mailbox_server(
        workdir, ["--scripted", str(script_file), "--record", str(record)]).start()
    stop = threading.Event()

    def kill_after_first_exchange() -> None:
        # The first exchange is recorded during the second connect; the guest then
        # polls STATUS while the next request is held back: kill the server there.
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
    assert res.completed, "guest did not finish; see console.log"
    assert bad_kernel_lines(res) == [], "\n".join(bad_kernel_lines(res))

    assert "Connection timed out" in (v("connect_slow") or ""), v("connect_slow")
    assert 1.5 < float(v("connect_slow_seconds") or "99") < 5
    assert v("authenticated_slow") == ""
    assert any("vtsm: connect via tsm0 failed: -110 (TSM mailbox step timed out)" in line
               for line in res.dmesg)

    assert not mailbox.alive()
    assert len(record.read_text().splitlines()) == 1
    assert "Input/output error" in (v("connect_dead") or ""), v("connect_dead")
    # QEMU sees EOF (or gives up after x-msg-timeout, 5 s); the read returns all-ones.
    assert float(v("connect_dead_seconds") or "99") < 12
    assert v("authenticated_dead") == ""
    assert any("vtsm: connect via tsm0 failed: -5" in line for line in res.dmesg)
    assert v("rmmod") == "ok"
    assert endpoint.alive(), endpoint.log_tail()


def _stranger_anchor(out: Path) -> Path:
    """A self-signed CA the device's chain does not lead to."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger root CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def _boot_with_model(env: VmEnv, workdir: Path, anchor_for: str) -> tuple[VmResult, str]:
    identity = workdir / "identity"
    ep = device_server(workdir, "ep", extra=["--state-dir", str(identity)]).start()
    try:
        anchor = (root_anchor(identity, workdir / "root.pem") if anchor_for == "device"
                  else _stranger_anchor(workdir / "stranger.pem"))
        mailbox = tsm_mailbox_server(workdir, ["--trust-anchor", str(anchor)]).start()
        try:
            run = GuestRun(env=env, workdir=workdir, modules=["vtsm"],
                           devices=[ep.socket, mailbox.socket],
                           scripts={"50-vtsm-model.sh": script("vtsm-model.sh", EP=EP, MB=MB)},
                           timeout=240)
            res = run.boot()
        finally:
            mailbox.stop()
        log = mailbox.log_text()
    finally:
        ep.stop()
    assert res.completed, "guest did not finish; see console.log"
    assert bad_kernel_lines(res) == [], "\n".join(bad_kernel_lines(res))
    assert "Traceback" not in log and "mailbox error" not in log, log
    return res, log


def test_vtsm_with_the_tsm_model_reaches_run(vm_env: VmEnv, workdir: Path) -> None:
    """The real TSM model (tsm) behind the mailbox: SPDM session, IDE keys,
    TDISP LOCK, interface report, START (RUN), STOP, disconnect, all relayed by the
    guest kernel's PCI/TSM core and DOE driver."""
    res, log = _boot_with_model(vm_env, workdir, "device")
    v = res.value
    assert v("connect") == "0 ok" and v("authenticated") == "tsm0"
    assert any("vtsm: IDE stream 1 enabled: Secure (state 2)" in line for line in res.dmesg), \
        "the endpoint's IDE stream did not reach SECURE"
    assert v("tdi_lock") == "0 ok" and v("bound") == "tsm0"
    assert int(v("report_bytes") or "0") > 16
    assert v("tdi_start") == "0 ok" and v("tdi_state_run") == f"{EP} RUN"
    assert json.loads(v("status_run") or "{}") == {"value": "RUN"}
    assert v("tdi_stop") == "0 ok" and v("bound_after_stop") == ""
    assert v("disconnect") == "0 ok" and v("authenticated_after") == ""
    assert v("rmmod") == "ok"
    for op in ("CONNECT", "LOCK", "REPORT", "START", "STOP", "DISCONNECT"):
        assert f"TSM {op} {EP} done: status 0" in log, op


def test_vtsm_model_refuses_an_untrusted_device(vm_env: VmEnv, workdir: Path) -> None:
    """A trust anchor the device's certificate chain does not lead to: the model
    refuses, the guest's connect fails with EACCES and one dmesg line says why."""
    res, _ = _boot_with_model(vm_env, workdir, "stranger")
    v = res.value
    assert (v("connect") or "").startswith("1 ") and "Permission denied" in (v("connect") or "")
    assert v("authenticated") == ""
    failed = [line for line in res.dmesg if "vtsm: connect via tsm0 failed: -13" in line]
    assert len(failed) == 1, res.dmesg[-15:]
    assert v("rmmod") == "ok"
