"""Two QEMUs, one `vdev serve` process: `--socket A --socket B` serves two independent
endpoints; each guest has its own TSM (`vdev tsm serve`) behind its own mailbox.

Both guests boot at the same time and connect their endpoint to RUN through Linux's
PCI/TSM core (vtsm), with MMIO and MSI-X in RUN, each writing its own value into the
scratch register.  The host then checks over the ONE control socket that each device
shows exactly its own SPDM session, IDE stream and TDI history, SIGKILLs guest B's
QEMU while its TDI is in RUN, and tells guest A (on its serial console) to go on:
A's device keeps its state and registers, and A stops, disconnects and reconnects to
RUN cleanly, while device B's state stays exactly as B's QEMU left it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vdev.control.client import ControlClient
from vdev.endpoint.registers import ID_MAGIC, REG_DOORBELL, REG_ID, REG_SCRATCH0
from vdev.profiles import DeviceProfile
from vdev.vfio_user.client import VfioUserClient
from vdev.vm.checks import BAD_DMESG
from vdev.vm.env import VmEnv
from vdev.vm.qemu import VfioUserAttach, VmResult, VmSpec, choose_accel, qemu_command
from vdev.vm.session import (
    GuestRun,
    ServerProcess,
    root_anchor,
    script,
    socket_path,
    tsm_mailbox_server,
)

EP, MB = "0000:01:00.0", "0000:02:00.0"  # in each guest: endpoint, then its TSM mailbox
SCRATCH = {"a": 0xA1A1A1A1, "b": 0xB2B2B2B2}

pytestmark = pytest.mark.timeout(300)


class LiveVm:
    """A QEMU whose console we follow as it runs and can write to (serial input)."""

    def __init__(self, name: str, spec: VmSpec, accel: str, log: Path) -> None:
        self.name = name
        self.argv = qemu_command(spec, accel)
        self.accel = accel
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.started = time.monotonic()
        self._log = log.open("w")
        self._log.write("# " + " ".join(self.argv) + "\n")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def result(self) -> VmResult:
        with self.cond:
            lines = list(self.lines)
        return VmResult(accel=self.accel, returncode=self.proc.poll(), timed_out=False,
                        seconds=time.monotonic() - self.started, console=lines,
                        argv=self.argv)

    def wait_for(self, key: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = VmResult("", None, False, 0, self.lines, []).value(key)
                if value is not None:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._pump.is_alive()):
                    raise AssertionError(f"guest {self.name}: no {key!r} after "
                                         f"{time.monotonic() - self.started:.0f} s; see its "
                                         f"console log")
                self.cond.wait(min(left, 0.5))

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float) -> VmResult:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._pump.join(5)
        return self.result()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._pump.join(5)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()


def _hex(v: str | None) -> int | None:
    try:
        return int(v or "", 16)
    except ValueError:
        return None


def _ctl(control: Path, cmd: str, device: int | None = None) -> Any:
    request: dict[str, Any] = {"cmd": cmd}
    if device is not None:
        request["device"] = device
    with ControlClient(str(control)) as c:
        r = c.raw(json.dumps(request).encode() + b"\n")
    assert r["ok"], r
    if device is not None:
        assert r["device"] == device
    return r["result"]


def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _in_run(v: Any, round_: str, scratch: int) -> list[str]:
    """What a guest reported for one round to RUN; the failures, as text."""
    bad = []
    for key in (f"connect{round_}", f"tdi_lock{round_}", f"tdi_start{round_}"):
        if not (v(key) or "").startswith("0 "):
            bad.append(f"{key}: {v(key)}")
    if v(f"authenticated{round_}") != "tsm0":
        bad.append(f"authenticated{round_}: {v(f'authenticated{round_}')}")
    if int(v(f"report_bytes{round_}") or "0") <= 16:
        bad.append(f"report_bytes{round_}: {v(f'report_bytes{round_}')}")
    if v(f"tdi_state_run{round_}") != f"{EP} RUN":
        bad.append(f"tdi_state_run{round_}: {v(f'tdi_state_run{round_}')}")
    bad += _exercised(v, round_, scratch)
    return bad


def _exercised(v: Any, suffix: str, scratch: int) -> list[str]:
    bad = []
    if _hex(v(f"id{suffix}")) != ID_MAGIC:
        bad.append(f"id{suffix}: {v(f'id{suffix}')}")
    if _hex(v(f"scratch{suffix}")) != scratch:
        bad.append(f"scratch{suffix}: {v(f'scratch{suffix}')}")
    irqs = (v(f"irqs{suffix}") or "").split()
    if not (len(irqs) == 2 and int(irqs[1]) == int(irqs[0]) + 1):
        bad.append(f"irqs{suffix}: {v(f'irqs{suffix}')}")
    return bad


def _own_state(st: dict[str, Any], evidence_file: Path, socket: Path) -> None:
    """One device's control status at RUN: exactly its own client, session, stream and
    TDI, the session being the one its own TSM negotiated."""
    assert st["transport"]["client_connected"] and st["transport"]["socket"] == str(socket)
    [session] = st["spdm"]["sessions"]
    assert session["state"] == "established", session
    evidence = json.loads(evidence_file.read_text())
    assert int(evidence["spdm"]["session_id"], 0) == int(session["session_id"], 16)
    [tdi] = st["tdi"]
    assert tdi["state"] == "RUN" and tdi["lock"]["session_id"] == session["session_id"]
    assert [h["event"] for h in tdi["history"] if h["event"] != "FUNCTION_RESET"] == [
        "LOCK", "START"], tdi["history"]
    assert [s["state"] for s in st["ide"]] == ["SECURE"]
    assert st["doe"]["counters"]["doe_0001:02"] > 0


@pytest.mark.parametrize("kill_b", ["after-run", "mid-connect"])
def test_two_qemus_one_device_process(vm_env: VmEnv, workdir: Path, kill_b: str) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    identity = workdir / "identity"
    sockets = {"a": socket_path("epA"), "b": socket_path("epB")}
    control = socket_path("ctl")
    device = ServerProcess(
        ["serve", "--socket", str(sockets["a"]), "--socket", str(sockets["b"]),
         "--state-dir", str(identity), "--control", str(control)],
        socket=sockets["b"], log=workdir / "device-server.log")
    servers: list[ServerProcess] = []
    vms: dict[str, LiveVm] = {}
    try:
        servers.append(device.start())
        anchor = root_anchor(identity, workdir / "root.pem")  # shared: one --state-dir
        tsms = {g: tsm_mailbox_server(workdir, [
            "--trust-anchor", str(anchor), "--evidence", str(workdir / f"evidence-{g}.json")],
            name=f"tsm-{g}") for g in ("a", "b")}
        for tsm in tsms.values():
            servers.append(tsm.start())

        profile = DeviceProfile()
        body = script("multi-qemu.sh", EP=EP, MB=MB, VID=f"{profile.vendor_id:04x}",
                      DID=f"{profile.device_id:04x}", ID_OFF=f"{REG_ID:#x}",
                      SCRATCH_OFF=f"{REG_SCRATCH0:#x}", DOORBELL_OFF=f"{REG_DOORBELL:#x}")
        # One initramfs for both guests; they differ in devices and command line.
        base = GuestRun(env=vm_env, workdir=workdir, modules=["vdevtest", "vtsm"],
                        scripts={"50-multi-qemu.sh": body}).prepare()
        accel = choose_accel(vm_env)
        timings["servers_and_build"] = time.monotonic() - t0
        for g in ("a", "b"):
            spec = dataclasses.replace(
                base, append=f"vdev.scratch={SCRATCH[g]:#x}",
                devices=[VfioUserAttach(sockets[g], id="vu0"),
                         VfioUserAttach(tsms[g].socket, id="vu1")])
            vms[g] = LiveVm(g, spec, accel, workdir / f"console-{g}.log")

        def kill_guest_b() -> dict[str, Any]:
            """SIGKILL B's QEMU; device 1's status once the server saw it go."""
            vms["b"].proc.kill()
            vms["b"].proc.wait(10)
            _until(lambda: not _ctl(control, "devices")[1]["client_connected"], 10,
                   "device 1 never saw its client go")
            timings["b_killed"] = time.monotonic() - t0
            left: dict[str, Any] = _ctl(control, "status", 1)
            return left

        if kill_b == "mid-connect":
            # While both guests connect: once device 1 has answered a few SPDM
            # objects, and before its TDI is locked.
            def b_connecting() -> bool:
                counters = _ctl(control, "doe", 1)["counters"]
                return int(counters.get("doe_0001:01", 0)) >= 3

            _until(b_connecting, 150, "guest b never started its connect")
            b_left = kill_guest_b()
            # Its connect had not finished: no IDE keys in use, TDI not locked.
            assert b_left["ide"][0]["state"] == "INSECURE", b_left["ide"]
            assert b_left["tdi"][0]["state"] == "CONFIG_UNLOCKED", b_left["tdi"]

        # Round 1 to RUN: both guests at the same time (A only, when B died connecting).
        alive = ("a", "b") if kill_b == "after-run" else ("a",)
        for g in alive:
            vms[g].wait_for("at_run", 150)
        timings["at_run"] = time.monotonic() - t0
        for g in alive:
            bad = _in_run(vms[g].result().value, "1", SCRATCH[g])
            assert not bad, f"guest {g}: {bad}"

        # Each device shows exactly its own session, stream and TDI.
        devices = _ctl(control, "devices")
        assert [(d["device"], d["socket"]) for d in devices] == [
            (0, str(sockets["a"])), (1, str(sockets["b"]))]
        status = {g: _ctl(control, "status", i) for i, g in enumerate(alive)}
        for g in alive:
            _own_state(status[g], workdir / f"evidence-{g}.json", sockets[g])
        if kill_b == "after-run":
            # Both devices did the same work, each its own (the counters are per device).
            ca, cb = (status[g]["doe"]["counters"] for g in ("a", "b"))
            assert ca["doe_0001:01"] == cb["doe_0001:01"], (ca, cb)
            b_left = kill_guest_b()  # ... while its TDI is in RUN
            assert b_left["tdi"] == status["b"]["tdi"]
            a_now = _ctl(control, "status", 0)
            assert a_now["tdi"] == status["a"]["tdi"] and a_now["spdm"] == status["a"]["spdm"]
        assert device.alive()
        # Device B's socket accepts the next client (a QEMU restarting would).
        with VfioUserClient(str(sockets["b"]), timeout=10.0) as client:
            client.negotiate()
        _until(lambda: not _ctl(control, "devices")[1]["client_connected"], 10,
               "the probe client of device 1 never left")

        # Guest A goes on: MMIO after the kill, STOP, disconnect, round 2, back.
        vms["a"].say("go")
        res = vms["a"].finish(120)
        timings["a_done"] = time.monotonic() - t0
        v = res.value
        assert res.completed, "guest a did not finish; see console-a.log"
        assert v("host_said") == "go"
        assert _hex(v("scratch_kept")) == SCRATCH["a"], v("scratch_kept")
        bad = _exercised(v, "_after_kill", SCRATCH["a"]) + _in_run(v, "2", SCRATCH["a"])
        for r in ("1", "2"):
            if not ((v(f"tdi_stop{r}") or "").startswith("0 ")
                    and "UNLOCKED" in (v(f"tdi_state_stopped{r}") or "")
                    and (v(f"disconnect{r}") or "").startswith("0 ")
                    and v(f"authenticated_after{r}") == ""):
                bad.append(f"round {r} back: {v(f'tdi_stop{r}')} {v(f'tdi_state_stopped{r}')} "
                           f"{v(f'disconnect{r}')} {v(f'authenticated_after{r}')!r}")
        assert not bad, bad
        assert v("vtsm_rmmod") == "ok" and v("vdevtest_rmmod") == "ok"
        problems = [line for line in res.dmesg if BAD_DMESG.search(line)]
        assert not problems, problems

        # Device A: two rounds, both ended; device B: exactly as its QEMU left it.
        a_end = _ctl(control, "status", 0)
        assert a_end["spdm"]["sessions"] == [] and a_end["tdi"][0]["state"] == "CONFIG_UNLOCKED"
        assert [h["event"] for h in a_end["tdi"][0]["history"]].count("START") == 2
        b_end = _ctl(control, "status", 1)
        for part in ("spdm", "tdi", "ide"):
            assert b_end[part] == b_left[part], part
        assert device.alive()
    finally:
        for vm in vms.values():
            vm.close()
        for srv in servers:
            srv.stop()
    log = device.log_text()
    assert "Traceback" not in log
    dropped = [line for line in log.splitlines() if "client dropped" in line]
    assert any("[device1] " in line for line in dropped), dropped
    for g in ("a", "b"):
        assert "Traceback" not in tsms[g].log_text()
    starts = [line.split("] ")[0].rsplit("[", 1)[1] for line in log.splitlines()
              if "--START--> RUN" in line]
    assert sorted(starts) == ["device0", "device0"] + (["device1"] if kill_b == "after-run"
                                                       else []), starts
    timings["total"] = time.monotonic() - t0
    (workdir / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"\ntimings (s since start): {json.dumps({k: round(x, 1) for k, x in timings.items()})}")
