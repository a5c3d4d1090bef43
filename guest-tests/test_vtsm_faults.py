"""The guest connect path under stress and faults, with the real TSM model
(`vdev tsm serve --trust-anchor`) behind vtsm: reconnecting in one boot, a
measurement policy the device breaks, a device whose DOE answers arrive after
Linux's 1 s timeout, and an FLR while the TDI is in RUN.  Every test asserts
on what the guest saw (sysfs, errno, dmesg) and on what the servers report
(their logs, the TSM evidence JSON)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.doe_path import DoePath
from vdev.endpoint.measurements import profile_image
from vdev.profiles import DeviceProfile
from vdev.vm.checks import BAD_DMESG
from vdev.vm.env import VmEnv
from vdev.vm.qemu import VfioUserAttach, VmResult
from vdev.vm.session import (
    GuestRun,
    ServerProcess,
    device_server,
    root_anchor,
    script,
    tsm_mailbox_server,
)

EP = "0000:01:00.0"  # the endpoint, behind root port 1
MBS = ("0000:02:00.0", "0000:03:00.0")  # TSM mailboxes, behind root ports 2 and 3
BUILD_TIMEOUT = 3600  # the doe_batch cases may build make qemu's QEMU first

# test_vtsm.bad_kernel_lines' markers, plus BAD_DMESG (DOE errors) from vdev.vm.checks.
_MARKERS = ("WARNING:", "BUG:", "Oops", "Call Trace", "general protection", "KASAN",
            "lockdep", "possible circular locking", "INFO: task")


def kernel_problems(res: VmResult, expected: Sequence[str] = ()) -> list[str]:
    """WARN/BUG/oops or DOE error lines in the guest's dmesg, except the `expected`
    failure lines a test provokes on purpose (matched by substring)."""
    return [line for line in res.dmesg
            if (any(m in line for m in _MARKERS) or BAD_DMESG.search(line))
            and not any(e in line for e in expected)]


@dataclass
class Session:
    res: VmResult
    device: ServerProcess
    tsms: list[ServerProcess]
    evidence: list[Path]
    alive: dict[str, bool]

    def device_log(self) -> str:
        return self.device.log_text()

    def tsm_log(self, i: int = 0) -> str:
        return self.tsms[i].log_text()

    def evidence_json(self, i: int = 0) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.evidence[i].read_text())
        return data


def run_session(
    env: VmEnv, workdir: Path, script_name: str, *,
    device_args: Sequence[str] = (), tsm_args: Sequence[Sequence[str]] = ((),),
    variables: dict[str, object] | None = None, timeout: float = 240,
    doe_batch: bool = False,
) -> Session:
    """`vdev serve` (+ `device_args`), one `vdev tsm serve` with the device's root CA
    as trust anchor and an evidence file per entry of `tsm_args`, and one boot
    running guest-tests/scripts/`script_name` with EP, MB (first mailbox), MB0...
    `doe_batch`: `env` is make qemu's QEMU, with x-doe-batch on the device."""
    identity = workdir / "identity"
    device = device_server(workdir, "device",
                           extra=["--state-dir", str(identity), *device_args]).start()
    tsms: list[ServerProcess] = []
    evidence = [workdir / f"tsm{i}-evidence.json" for i in range(len(tsm_args))]
    try:
        anchor = root_anchor(identity, workdir / "root.pem")
        for i, extra in enumerate(tsm_args):
            tsms.append(tsm_mailbox_server(
                workdir, ["--trust-anchor", str(anchor), "--evidence", str(evidence[i]),
                          *extra], name=f"tsm{i}").start())
        mbs = {f"MB{i}": MBS[i] for i in range(len(tsms))}
        run = GuestRun(env=env, workdir=workdir, modules=["vtsm"],
                       devices=[VfioUserAttach(device.socket, doe_batch=doe_batch),
                                *(t.socket for t in tsms)],
                       scripts={f"50-{script_name}": script(
                           script_name, EP=EP, MB=MBS[0], **mbs, **(variables or {}))},
                       timeout=timeout)
        res = run.boot()
        alive = {s.log.stem: s.alive() for s in (device, *tsms)}
    finally:
        for srv in (*tsms, device):
            srv.stop()
    assert res.completed, "guest did not finish; see console.log"
    for srv in (device, *tsms):
        assert alive[srv.log.stem], f"{srv.log.name} died:\n{srv.log_tail()}"
        assert "Traceback" not in srv.log_text(), srv.log_tail()
    return Session(res, device, tsms, evidence, alive)


def _seconds(stamp: str) -> float:
    """HH:MM:SS.mmm of a server log line, in seconds."""
    h, m, sec = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def _lines(log: str, pattern: str) -> list[re.Match[str]]:
    return [m for m in (re.search(pattern, line) for line in log.splitlines()) if m]


# ---- 1. disconnect and reconnect, three times in one boot ----------------------


def test_reconnect_three_times_gets_a_fresh_session_each_time(
    vm_env: VmEnv, workdir: Path
) -> None:
    """connect, LOCK, REPORT, START, STOP, disconnect, three times in one boot: each
    connect sets up a new SPDM session and new IDE keys; each disconnect ends them."""
    s = run_session(vm_env, workdir, "vtsm-reconnect.sh")
    v = s.res.value
    assert kernel_problems(s.res) == [], "\n".join(kernel_problems(s.res))
    assert v("insmod") == "ok"
    for i in (1, 2, 3):
        assert v(f"connect{i}") == "0 ok" and v(f"authenticated{i}") == "tsm0", i
        assert v(f"tdi_lock{i}") == "0 ok" and v(f"bound{i}") == "tsm0", i
        assert int(v(f"report_bytes{i}") or "0") > 16, i
        assert v(f"tdi_start{i}") == "0 ok" and v(f"tdi_state_run{i}") == f"{EP} RUN", i
        assert json.loads(v(f"status_run{i}") or "{}") == {"value": "RUN"}, i
        assert v(f"tdi_stop{i}") == "0 ok" and v(f"bound_after_stop{i}") == "", i
        assert v(f"disconnect{i}") == "0 ok" and v(f"authenticated_after{i}") == "", i
    assert v("rmmod") == "ok"

    # The IDE stream reached SECURE on every connect, in the guest and in the device.
    secure = [line for line in s.res.dmesg
              if "vtsm: IDE stream 1 enabled: Secure (state 2)" in line]
    assert len(secure) == 3, s.res.dmesg[-30:]
    dev = s.device_log()
    assert len(_lines(dev, r"IDE selective stream 0 \(id 1\): \w+ -> SECURE")) == 3, dev

    # Three different SPDM sessions, established and ended in order on the device;
    # the TSM reported each one it established, with the same ids.
    established = [m[1] for m in _lines(dev, r"SPDM session (0x[0-9a-f]{8}) established")]
    ended = [m[1] for m in _lines(dev, r"SPDM session (0x[0-9a-f]{8}) ended")]
    assert len(established) == 3 and len(set(established)) == 3, established
    assert ended == established, (established, ended)
    tsm = [m[1] for m in _lines(s.tsm_log(), r"SPDM session (0x[0-9a-f]{8}) established")]
    assert tsm == established, (tsm, established)
    # The TDI went round RUN -> CONFIG_UNLOCKED three times on the device.
    assert len(_lines(dev, r"CONFIG_LOCKED --START--> RUN")) == 3
    for op in ("CONNECT", "LOCK", "START", "STOP", "DISCONNECT"):
        assert s.tsm_log().count(f"TSM {op} {EP} done: status 0") == 3, op

    ev = s.evidence_json()
    assert ev["spdm"]["session_id"] == established[-1]
    assert ev["spdm"]["session_state"] == "ended" and ev["state"] == "idle"
    hist = [h["state"] for h in ev["tdis"]["01:00.0"]["history"]]
    assert hist.count("RUN") == 3 and hist[-1] == "CONFIG_UNLOCKED", hist


# ---- 2. measurements that break the TSM's policy --------------------------------


def _matching_policy(path: Path) -> Path:
    """Reference values of the default profile's static measurements (DSP0274 §10.11;
    vdev.endpoint.measurements): index 1 the firmware digest (raw), index 3 SHA-384
    of the profile image (the TSM negotiates SHA-384 MeasurementHashAlgo), and the
    VERSION string.  Index 2 is the live configuration: left unlisted (allowed)."""
    p = DeviceProfile()
    path.write_text(json.dumps({
        "version": p.firmware_version,
        "measurements": {"1": p.firmware_digest_bytes.hex(),
                         "3": hashlib.sha384(profile_image(p)).hexdigest()},
    }))
    return path


BAD_FIRMWARE = "00000000"  # short, so the whole reason fits vtsm's 256-byte REASON


def test_measurement_policy_violation_refuses_then_matching_policy_connects(
    vm_env: VmEnv, workdir: Path
) -> None:
    """Two TSMs in one boot: tsm0's reference value for index 1 is wrong, tsm1's
    policy matches the device.  tsm0 refuses with EACCES and one dmesg line naming
    the index; tsm1 connects and its evidence has a verdict of match for each value."""
    bad = workdir / "policy-bad.json"
    bad.write_text(json.dumps({"measurements": {"1": BAD_FIRMWARE}}))
    good = _matching_policy(workdir / "policy-good.json")
    s = run_session(vm_env, workdir, "vtsm-policy.sh",
                    tsm_args=(["--policy", str(bad)], ["--policy", str(good)]),
                    variables={"BAD": "tsm0", "GOOD": "tsm1"})
    v = s.res.value
    expected_failure = "vtsm: connect via tsm0 failed: -13"
    problems = kernel_problems(s.res, [expected_failure])
    assert problems == [], "\n".join(problems)
    assert v("tsm_class") == "tsm0 tsm1"
    assert (v("tsm0_parent") or "").endswith(f"/{MBS[0]}/tsm/tsm0"), v("tsm0_parent")
    assert (v("tsm1_parent") or "").endswith(f"/{MBS[1]}/tsm/tsm1"), v("tsm1_parent")

    # tsm0: EACCES to user space, the reason in exactly one vtsm dmesg line.
    assert (v("connect_bad") or "").startswith("1 ") and \
        "Permission denied" in (v("connect_bad") or ""), v("connect_bad")
    assert v("authenticated_bad") == "" and v("connect_read_bad") == ""
    failed = [line for line in s.res.dmesg if "vtsm: connect via" in line and "failed" in line]
    assert len(failed) == 1, failed
    assert expected_failure in failed[0]
    assert f"measurement policy violated: index 1: expected {BAD_FIRMWARE}, got " \
        in failed[0], failed[0]
    bad_ev = s.evidence_json(0)
    firmware = DeviceProfile().firmware_digest_bytes.hex()
    assert bad_ev["policy"]["file"] == str(bad)
    assert {"index": 1, "verdict": "mismatch",
            "reason": f"index 1: expected {BAD_FIRMWARE}, got {firmware}"} \
        in bad_ev["policy"]["verdicts"]
    assert bad_ev["state"] != "connected"
    # Refused before KEY_EXCHANGE: no session was ever set up with this TSM.
    assert bad_ev["spdm"]["session_id"] is None
    assert "measurement policy violated: index 1" in s.tsm_log(0)
    assert f"TSM CONNECT {EP} done: status -13" in s.tsm_log(0)

    # tsm1: the matching policy passes, every verdict says so.
    assert v("connect_good") == "0 ok" and v("authenticated_good") == "tsm1"
    assert v("disconnect_good") == "0 ok" and v("authenticated_after") == ""
    assert v("rmmod") == "ok"
    good_ev = s.evidence_json(1)
    verdicts = {(x["index"], x.get("check")): x["verdict"] for x in good_ev["policy"]["verdicts"]}
    assert verdicts == {(1, None): "match", (2, None): "no reference", (3, None): "match",
                        (4, None): "no reference", (None, "version"): "match"}, verdicts
    meas = {m["index"]: m["value"] for m in good_ev["measurements"]}
    assert meas[1] == firmware
    assert "measurements: 1=match, 2=no reference, 3=match, 4=no reference" \
        in s.tsm_log(1)
    assert f"TSM CONNECT {EP} done: status 0" in s.tsm_log(1)
    assert len(_lines(s.device_log(), r"SPDM session 0x[0-9a-f]{8} established")) == 1


# ---- 3. a device whose DOE answers come too late ----------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_doe_response_after_the_kernel_timeout_fails_one_connect_only(
    doe_path: DoePath, workdir: Path
) -> None:
    """`vdev serve --doe-delay-ms 1500 --doe-delay-count 1`: the first SPDM response
    is ready 1.5 s after GO.  pci_doe gives up after 1 s (PCI_DOE_TIMEOUT), aborts the
    mailbox and returns -EIO; vtsm hands that to the TSM, the connect fails with EIO.
    The device drops the held response on ABORT; the next connect works."""
    s = run_session(doe_path.env, workdir, "vtsm-doe-slow.sh",
                    device_args=["--doe-delay-ms", "1500", "--doe-delay-count", "1"],
                    doe_batch=doe_path.doe_batch)
    assert doe_path.applied_to(s.res)
    v = s.res.value
    expected_failure = "vtsm: connect via tsm0 failed: -5"
    problems = kernel_problems(s.res, [expected_failure])
    assert problems == [], "\n".join(problems)

    slow = v("connect_slow") or ""
    assert slow.startswith("1 ") and "Input/output error" in slow, slow
    # Bounded by the kernel's 1 s DOE timeout, not by vtsm's 10 s step timeout (the
    # device-side timing below shows the abort came before the 1.5 s were up).
    assert 0.9 < float(v("connect_slow_seconds") or "99") < 3, v("connect_slow_seconds")
    assert v("connect_slow_authenticated") == ""
    failed = [line for line in s.res.dmesg if "vtsm: connect via" in line and "failed" in line]
    assert len(failed) == 1 and expected_failure in failed[0], failed
    assert "(-EIO)" in failed[0], failed[0]  # the reason names the transport errno

    assert v("connect_again") == "0 ok" and v("connect_again_authenticated") == "tsm0"
    assert float(v("connect_again_seconds") or "99") < 10
    assert any("vtsm: IDE stream 1 enabled: Secure (state 2)" in line for line in s.res.dmesg)
    assert v("disconnect") == "0 ok" and v("authenticated_after") == ""
    assert v("rmmod") == "ok"

    # The device held exactly one response, saw Linux's ABORT while BUSY, and
    # dropped the late completion instead of offering a stale object.
    dev = s.device_log()
    assert "fault injection: the next 1 SPDM DOE responses become ready 1500 ms after GO" in dev
    # (Tickets count every exchange since the server started, discovery included.)
    held = [m[1] for m in _lines(dev, r"DOE response (\d+) \(0001:01\) held back 1500 ms")]
    assert len(held) == 1, dev
    assert f"DOE: abort while BUSY, held response {held[0]} discarded" in dev
    assert f"DOE: held response {held[0]} no longer pending (aborted), dropped" in dev
    assert "ready after" not in dev  # never offered
    # The abort came from Linux's 1 s timeout, not from anything faster or slower.
    stamps = {m[2]: m[1] for m in _lines(
        dev, r"^(\d\d:\d\d:\d\d\.\d+) .*(held back|abort while BUSY)")}
    waited = _seconds(stamps["abort while BUSY"]) - _seconds(stamps["held back"])
    assert 0.9 < waited < 1.45, waited  # PCI_DOE_TIMEOUT = HZ after GO
    assert len(_lines(dev, r"SPDM session 0x[0-9a-f]{8} established")) == 1
    tsm = s.tsm_log()
    assert "DOE transfer failed in the guest: -5" in tsm
    assert f"TSM CONNECT {EP} done: status -5" in tsm
    assert f"TSM CONNECT {EP} done: status 0" in tsm
    ev = s.evidence_json()
    assert ev["spdm"]["session_state"] == "ended" and ev["spdm"]["session_id"] is not None


# ---- 4. FLR while the TDI is in RUN ------------------------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_flr_in_run_unlocks_the_tdi_and_the_tsm_sees_it(doe_path: DoePath,
                                                        workdir: Path) -> None:
    """`echo 1 > reset` (reset_method flr) while the TDI is in RUN: the device drops it
    to CONFIG_UNLOCKED, the TSM's GET_DEVICE_INTERFACE_STATE over the surviving SPDM
    session says so, STOP works, the guest's disconnect and rmmod are clean."""
    s = run_session(doe_path.env, workdir, "vtsm-flr.sh", doe_batch=doe_path.doe_batch)
    assert doe_path.applied_to(s.res)
    v = s.res.value
    problems = kernel_problems(s.res)
    assert problems == [], "\n".join(problems)
    assert v("connect") == "0 ok" and v("authenticated") == "tsm0"
    assert v("tdi_lock") == "0 ok" and int(v("report_bytes") or "0") > 16
    assert v("tdi_start") == "0 ok"
    assert v("tdi_state_run") == f"{EP} RUN"
    assert json.loads(v("status_run") or "{}") == {"value": "RUN"}
    assert "flr" in (v("reset_method") or "").split(), v("reset_method")
    assert v("reset_method_set") == "0 ok" and v("flr") == "0 ok", (v("reset_method_set"), v("flr"))

    # The device: the TDI leaves RUN and ends in CONFIG_UNLOCKED.  Linux's reset
    # path first disables the function (pci_dev_save_and_disable writes Command =
    # INTX_DISABLE), which in RUN is a TDISP violation -> ERROR; the FLR then returns
    # the TDI to CONFIG_UNLOCKED (TDISP §11.2.4) and drops the IDE keys (§6.33).
    dev = s.device_log()
    after_start = dev[dev.index("CONFIG_LOCKED --START--> RUN"):]
    moves = [(m[1], m[2], m[3]) for m in _lines(after_start, r"(\w+) --(\w+)--> (\w+)")]
    assert moves[:3] == [("CONFIG_LOCKED", "START", "RUN"), ("RUN", "VIOLATION", "ERROR"),
                         ("ERROR", "FUNCTION_RESET", "CONFIG_UNLOCKED")], moves
    assert "Command Memory Space Enable cleared while RUN -> ERROR" in after_start
    flr = after_start[after_start.index("function level reset"):]
    assert _lines(flr, r"IDE selective stream 0 \(id \d+\): SECURE -> INSECURE"), flr
    # The TSM asks the device over the (surviving) SPDM session: no longer RUN.
    assert json.loads(v("status_after_flr") or "{}") == {"value": "CONFIG_UNLOCKED"}, \
        v("status_after_flr")
    # vtsm's tdi_state is its record of the last TDI operation, not a live query.
    assert v("tdi_state_after_flr") == f"{EP} RUN"
    assert v("authenticated_after_flr") == "tsm0"

    # STOP still works (the device accepts it in CONFIG_UNLOCKED); the guest's
    # disconnect succeeds (PCI/TSM's ops->disconnect cannot fail) and rmmod is clean.
    assert v("tdi_stop") == "0 ok" and v("bound_after_stop") == "", v("tdi_stop")
    assert "CONFIG_UNLOCKED --STOP--> CONFIG_UNLOCKED" in after_start
    assert v("disconnect") == "0 ok" and v("authenticated_after") == "", v("disconnect")
    assert v("rmmod") == "ok"
    ev = s.evidence_json()
    hist = [h["state"] for h in ev["tdis"]["01:00.0"]["history"]]
    assert "RUN" in hist and hist[-1] == "CONFIG_UNLOCKED", hist
    tsm = s.tsm_log()
    for op in ("CONNECT", "LOCK", "REPORT", "START", "STATUS", "STOP"):
        assert f"TSM {op} {EP} done: status 0" in tsm, op

    # The TSM's half of disconnect: IDE key stop, then END_SESSION.
    # The keys went with the FLR, so the device refuses K_SET_STOP; the TSM must
    # still end the SPDM session rather than leave it open on the device.
    disconnect = [line for line in s.res.dmesg if "vtsm: disconnect via tsm0" in line]
    assert not any("failed" in line for line in disconnect), disconnect
    assert any("refused K_SET_STOP" in x["event"] for x in ev["log"]), "no refusal logged"
    assert ev["spdm"]["session_state"] == "ended"
    assert f"TSM DISCONNECT {EP} done: status 0" in tsm
    assert _lines(dev, r"SPDM session 0x[0-9a-f]{8} ended")
