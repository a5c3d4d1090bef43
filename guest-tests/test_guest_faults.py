"""The guest's `tsm/connect` failing at a chosen step, with the matching errno.

One boot of the real Linux 7.3 guest (vtsm + the TSM model behind its mailbox),
one `vdev serve --control`.  For each step the guest script
(scripts/guest-faults.sh) prints `@@VDEV arm <step>`; on that console line the
host arms the step's fault on the device's control socket, exactly as a user
would with `vdev ctl --socket S faults arm --fault '{...}'`.  The guest then
writes `tsm0` to `tsm/connect`, which must fail with the errno the TSM model
maps that failure to (tsm.errors.errno_of), relayed by vtsm to user space;
a second connect must work and is disconnected (the fault was consumed, device
and TSM are still usable).  Afterwards `vdev ctl faults list` must show every
rule fired exactly once, and the guest's dmesg has no WARN/BUG/oops.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.doe_path import DoePath
from vdev.control.client import call
from vdev.vm.checks import BAD_DMESG
from vdev.vm.env import REPO
from vdev.vm.fault_boot import boot_with_fault_control
from vdev.vm.session import script, socket_path

EP = "0000:01:00.0"  # the endpoint, behind root port 1 (the TSM mailbox is 02:00.0)
# The guest waits this long after "@@VDEV arm <step>" for the host to arm the fault
# (the host needs milliseconds: a console line, one control-socket request).
ARM_WAIT = 1
BUILD_TIMEOUT = 3600  # the doe_batch case may build make qemu's QEMU first
# KEY_EXCHANGE_RSP ends with ResponderVerifyData (SHA-384, 48 bytes, as negotiated by
# the default profile), preceded by the signature: byte -49 is the signature's last.
KX_SIGNATURE_LAST = -49


@dataclass(frozen=True)
class Step:
    name: str
    faults: list[dict[str, Any]]  # each a `vdev ctl faults arm --fault` JSON rule
    errno: int  # what the guest's write to tsm/connect fails with
    reason: str  # in vtsm's dmesg line and the TSM's log


def busy(n: int) -> list[dict[str, Any]]:
    """SPDM ERROR Busy to the first `n` GET_DIGESTS (one rule per occurrence)."""
    return [{"kind": "error", "match": "GET_DIGESTS", "code": "Busy", "nth": i}
            for i in range(1, n + 1)]


STEPS = [
    # Authentication: the device's signature over the measurements does not verify.
    Step("meas_signature", [{"kind": "corrupt", "match": "GET_MEASUREMENTS"}], errno.EACCES,
         "connect failed at GET_MEASUREMENTS: SPDM protocol error: signature verification "
         "failed"),
    # Authentication: a certificate chain that does not lead to the TSM's trust anchor.
    Step("wrong_chain", [{"kind": "wrong_chain"}], errno.EACCES,
         "connect failed at GET_CERTIFICATE: certificate chain not trusted"),
    # Session: the KEY_EXCHANGE_RSP signature does not verify.
    Step("kx_signature", [{"kind": "corrupt", "match": "KEY_EXCHANGE", "field": "signature"}],
         errno.EACCES, "connect failed at KEY_EXCHANGE/FINISH: SPDM protocol error: "
         "signature verification failed"),
    # The device refuses KEY_EXCHANGE with an SPDM ERROR.
    Step("kx_error", [{"kind": "error", "match": "KEY_EXCHANGE", "code": "Unspecified"}],
         errno.EIO, "connect failed at KEY_EXCHANGE/FINISH: device answered SPDM ERROR: "
         "responder returned ERROR UNSPECIFIED"),
    # The device stays Busy longer than the requester retries (3 retries: 4 answers).
    Step("busy", busy(4), errno.EBUSY, "connect failed at GET_DIGESTS: device answered SPDM "
         "ERROR: responder returned ERROR BUSY"),
    # Transport: the DOE mailbox sets its ERROR bit; Linux's pci_doe aborts and
    # returns -EIO to vtsm, which hands it to the TSM.
    Step("doe_error", [{"kind": "doe_error", "match": "NEGOTIATE_ALGORITHMS"}], errno.EIO,
         "connect failed at GET_VERSION/GET_CAPABILITIES/NEGOTIATE_ALGORITHMS: transport "
         "failure: errno -5 (-EIO)"),
    # Protocol violation: a DIGESTS response cut short.
    Step("truncate", [{"kind": "truncate", "match": "GET_DIGESTS", "length": 6}],
         errno.EPROTO, "connect failed at GET_DIGESTS: SPDM protocol error: malformed response"),
    # The first secured response (FINISH_RSP) with a broken AEAD tag.
    Step("record_mac", [{"kind": "corrupt", "match": "secured"}], errno.EBADMSG,
         "connect failed at KEY_EXCHANGE/FINISH: SPDM protocol error: cannot authenticate "
         "response record"),
]
RULES = [rule for s in STEPS for rule in s.faults]

_MARKERS = ("WARNING:", "BUG:", "Oops", "Call Trace", "general protection", "KASAN",
            "lockdep", "possible circular locking", "INFO: task")


def ctl(control: Path, *args: str) -> Any:
    """`vdev ctl --socket CONTROL --compact ARGS`: its JSON result."""
    out = subprocess.run([sys.executable, "-m", "vdev.cli", "ctl", "--socket", str(control),
                          "--compact", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class Arming:
    """The console callback: arms a step's fault when the guest asks for it."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.armed: list[str] = []
        self.errors: list[str] = []

    def __call__(self, line: str) -> None:
        i = line.find("@@VDEV arm ")
        if i < 0:
            return
        name = line[i + len("@@VDEV arm "):].strip()
        try:  # runs on the console reader thread: never raise there
            step = next(s for s in STEPS if s.name == name)
            for rule in step.faults:
                reply = call(str(self.control), "faults", {"action": "arm", "fault": rule})
                if not reply.get("ok"):
                    raise RuntimeError(reply.get("error"))
            self.armed.append(name)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{name}: {exc!r}")


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_connect_fails_with_the_errno_of_each_fault(doe_path: DoePath, workdir: Path) -> None:
    control = socket_path("device-ctl")
    arming = Arming(control)
    boot = boot_with_fault_control(doe_path.env, workdir, {"50-guest-faults.sh": script(
            "guest-faults.sh", EP=EP, ARM_WAIT=ARM_WAIT,
            STEPS=f'"{" ".join(s.name for s in STEPS)}"')}, control, arming, timeout=300,
            doe_batch=doe_path.doe_batch)
    res, listed = boot.result, boot.rules
    assert doe_path.applied_to(res)
    device, tsm = boot.servers["device"], boot.servers["tsm"]
    assert res.completed, "guest did not finish; see console.log"
    boot.assert_servers_healthy()
    assert arming.errors == [], arming.errors
    assert arming.armed == [s.name for s in STEPS]
    v = res.value
    assert v("insmod") == "ok" and v("rmmod") == "ok"

    # Per step: the errno user space saw, then a clean connect and disconnect.
    failed = [line for line in res.dmesg if "vtsm: connect via tsm0 failed:" in line]
    for step in STEPS:
        seen = v(f"fail_{step.name}") or ""
        assert seen.startswith("1 ") and os.strerror(step.errno) in seen, (step.name, seen)
        assert v(f"fail_{step.name}_authenticated") == "", step.name
        assert v(f"clean_{step.name}") == "0 ok", (step.name, v(f"clean_{step.name}"))
        assert v(f"clean_{step.name}_authenticated") == "tsm0", step.name
        assert v(f"disconnect_{step.name}") == "0 ok", step.name
    # Exactly one vtsm failure line per step, in order, with the errno and reason.
    assert len(failed) == len(STEPS), failed
    for step, line in zip(STEPS, failed, strict=True):
        assert f"failed: -{step.errno} " in line and step.reason in line, (step.name, line)

    # No WARN/BUG/oops or DOE errors in the guest, beyond the failure lines above.
    problems = [line for line in res.dmesg
                if (any(m in line for m in _MARKERS) or BAD_DMESG.search(line))
                and "vtsm: connect via tsm0 failed:" not in line]
    assert problems == [], "\n".join(problems)

    # Every rule fired exactly once (the clean connects saw it spent).
    assert listed is not None
    rules = [r for r in listed if r["kind"] != "doe_delay"]
    assert [r["kind"] for r in rules] == [f["kind"] for f in RULES], rules
    for rule, armed in zip(RULES, rules, strict=True):
        # (code and field come back normalised: "BUSY", the field's name)
        same = {k: x for k, x in rule.items() if k not in ("code", "field")}
        assert {k: armed.get(k) for k in same} == same, armed
        assert armed["fired"] == 1, armed

    # The TSM logged each failure with the same errno, and each clean connect.
    log = tsm.log_text()
    statuses = [m[1] for m in re.finditer(rf"TSM CONNECT {EP} done: status (-?\d+)", log)]
    assert statuses == [x for s in STEPS for x in (f"-{s.errno}", "0")], statuses
    dev = device.log_text()
    for rule in RULES:
        assert f"fault injected: {rule['kind']}" in dev, rule
