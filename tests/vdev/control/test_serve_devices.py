"""`vdev serve` with several --socket: one process, independent devices, one control
socket that routes by "device", labelled logs and trace lines, refused combinations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from spdm.requester import Outgoing
from tests.helpers.secure_host import ConfigPort, SecureHost
from tests.helpers.server_process import vdev_process
from tests.helpers.vfio_host import config_doe
from tests.vdev.control.test_serve_control import ctl, ctl_json
from vdev.cli import build_parser, main
from vdev.cli.ctl import build_request
from vdev.control.client import ControlClient
from vdev.control.device_set import DeviceSet, ServedDevice
from vdev.control.endpoint import DeviceControl
from vdev.doe.requester import DoeRequester
from vdev.endpoint.tee_device import TeeDevice
from vdev.vfio_user.client import VfioUserClient

GET_VERSION = bytes.fromhex("10840000")


# ---- the DeviceSet dispatcher, sans-IO -----------------------------------------------


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("identity")


@pytest.fixture(scope="module")
def two_devices(state_dir: Path) -> list[TeeDevice]:
    return [TeeDevice(state_dir=state_dir), TeeDevice(state_dir=state_dir)]


def _set(devices: list[TeeDevice], entered: list[str] | None = None) -> DeviceSet:
    @contextmanager
    def enter(d: ServedDevice) -> Iterator[None]:
        if entered is not None:
            entered.append(d.label)
        yield

    return DeviceSet([ServedDevice(DeviceControl(dev), socket=f"/s/{i}.sock",
                                   label=f"device{i}")
                      for i, dev in enumerate(devices)], enter=enter)


def test_requests_are_routed_by_device(two_devices: list[TeeDevice]) -> None:
    entered: list[str] = []
    core = _set(two_devices, entered)
    two_devices[1].function_level_reset()  # only device 1 has a history entry
    try:
        r0 = core.handle({"cmd": "tdi", "device": 0, "id": "a"})
        r1 = core.handle({"cmd": "tdi", "device": "/s/1.sock"})
        assert list(r0) == ["id", "ok", "device", "result"] and r0["id"] == "a"
        assert r0["device"] == 0 and r1["device"] == 1
        assert r0["result"][0]["history"] == []
        assert [h["event"] for h in r1["result"][0]["history"]] == ["FUNCTION_RESET"]
        assert entered == ["device0", "device1"]
        by_label = core.handle({"cmd": "sessions", "device": "device1"})
        assert by_label["ok"] and by_label["device"] == 1
    finally:
        two_devices[1].tdi.history.clear()


def test_device_commands_need_a_device_when_there_are_several(
    two_devices: list[TeeDevice],
) -> None:
    core = _set(two_devices)
    r = core.handle({"cmd": "status", "id": 3})
    assert r == {"id": 3, "ok": False, "error": r["error"]}
    assert "2 devices" in r["error"] and "\"device\"" in r["error"]
    for bad, why in ((2, "devices 0..1"), (-1, "devices 0..1"), (True, "index or a socket"),
                     ("/nope.sock", "no device has that socket"), (None, "index or a socket")):
        r = core.handle({"cmd": "tdi", "device": bad})
        assert not r["ok"] and why in r["error"], (bad, r)
    unknown = core.handle({"cmd": "frobnicate"})
    assert "unknown command" in unknown["error"] and "devices" in unknown["error"]
    assert "tdi" in unknown["error"]
    # Everything else is the device core's own validation.
    r = core.handle({"cmd": "tdi", "device": 0, "args": {"x": 1}})
    assert r["device"] == 0 and "unknown argument" in r["error"]
    r = core.handle({"cmd": "tdi", "device": 0, "extra": 1})
    assert not r["ok"] and "unknown request field" in r["error"]
    assert core.handle_line(b"{bad")[:12] == b'{"ok":false,'


def test_devices_and_help(two_devices: list[TeeDevice]) -> None:
    core = _set(two_devices)
    devs = core.handle({"cmd": "devices"})
    assert devs["ok"] and "device" not in devs
    assert [(d["device"], d["label"], d["socket"]) for d in devs["result"]] == [
        (0, "device0", "/s/0.sock"), (1, "device1", "/s/1.sock")]
    for d in devs["result"]:
        assert d["client_connected"] is False and d["spdm_sessions"] == []
        assert d["tdi"] == [{"interface_id": "01:00.0", "state": "CONFIG_UNLOCKED"}]
        assert d["ide"] == [{"stream_id": 0, "state": "INSECURE"}]
    one = core.handle({"cmd": "devices", "device": 1})
    assert one["device"] == 1 and [d["device"] for d in one["result"]] == [1]
    h = core.handle({"cmd": "help"})["result"]
    assert h["devices"] == 2 and "required" in h["device_field"]
    assert {"devices", "help", "status", "tdi", "reset", "faults"} <= set(h["commands"])


def test_one_device_needs_no_device_field(two_devices: list[TeeDevice]) -> None:
    core = _set(two_devices[:1])
    r = core.handle({"cmd": "sessions", "id": 1})
    assert r["ok"] and r["device"] == 0 and r["result"]["sessions"] == []
    assert core.handle({"cmd": "tdi", "device": 0})["ok"]
    assert "device 0" in core.handle({"cmd": "tdi", "device": 1})["error"]
    assert "optional" in core.handle({"cmd": "help"})["result"]["device_field"]


def test_ctl_device_option() -> None:
    p = build_parser()
    req = json.loads(build_request(p.parse_args(["ctl", "--socket", "c", "--device", "1",
                                                 "tdi"])))
    assert req == {"cmd": "tdi", "device": 1}
    req = json.loads(build_request(p.parse_args(["ctl", "--socket", "c", "--device", "/a.sock",
                                                 "faults", "list"])))
    assert req == {"cmd": "faults", "device": "/a.sock", "args": {"action": "list"}}
    assert json.loads(build_request(p.parse_args(["ctl", "--socket", "c", "devices"]))) == {
        "cmd": "devices"}
    with pytest.raises(SystemExit, match="raw"):
        build_request(p.parse_args(["ctl", "--socket", "c", "--device", "0", "raw", "{}"]))


# ---- command-line checks -----------------------------------------------------------------


def test_serve_parser_repeats_socket_and_state_dir() -> None:
    args = build_parser().parse_args(["serve", "--socket", "a", "--socket", "b",
                                      "--state-dir", "x"])
    assert args.socket == ["a", "b"] and args.state_dir == ["x"]
    args = build_parser().parse_args(["serve", "--socket", "a"])
    assert args.socket == ["a"] and args.state_dir is None


ONE_DEVICE = "--pcap, --pcap-decrypted and --log-secrets take one device"


@pytest.mark.parametrize(("extra", "why"), [
    (["--pcap", "x.pcap"], ONE_DEVICE),
    (["--log-secrets"], ONE_DEVICE),
    (["--pcap-decrypted", "x.pcapng"], ONE_DEVICE),
    (["--state-dir", "x", "--state-dir", "y", "--state-dir", "z"],
     "--state-dir given 3 times for 2 sockets"),
    (["--socket", "{a}"], "--socket given more than once"),
    (["--control", "{b}"], "is also a --socket"),
])
def test_serve_refuses(tmp_path: Path, extra: list[str], why: str) -> None:
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    argv = ["serve", "--socket", a, "--socket", b,
            *[x.format(a=a, b=b) for x in extra]]
    with pytest.raises(SystemExit, match=why):
        main(argv)
    assert not os.path.exists(a) and not os.path.exists(b)


# ---- the real process ------------------------------------------------------------------------


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], sockets: list[str], control: str) -> None:
        self.proc, self.sockets, self.control = proc, sockets, control

    def ctl(self, *argv: str) -> Any:
        return ctl_json(self.control, *argv)


@contextmanager
def serve(tmp_path: Path, n: int, *extra: str) -> Iterator[Served]:
    sockdir = tempfile.mkdtemp(prefix="vm-", dir="/tmp")
    sockets = [f"{sockdir}/d{i}.sock" for i in range(n)]
    control = f"{sockdir}/ctl.sock"
    argv = ["serve", "--control", control, *extra]
    for s in sockets:
        argv += ["--socket", s]
    try:
        with vdev_process(tmp_path, *argv, wait_for=[*sockets, control],
                          log_name="serve.log") as server:
            yield Served(server.proc, sockets, control)
            assert server.terminate() == 0
            assert not any(os.path.exists(p) for p in [*sockets, control])
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@contextmanager
def doe_port(sock: str) -> Iterator[tuple[DoeRequester, ConfigPort]]:
    with VfioUserClient(sock, timeout=10.0) as client:
        client.negotiate()
        yield config_doe(client)


def _session(doe: DoeRequester, port: ConfigPort, local: TeeDevice) -> tuple[SecureHost, int]:
    def transport(out: Outgoing) -> bytes:
        return doe.exchange_bytes(out.doe_type, out.data)

    host = SecureHost(local, port, transport, local.identity.root)
    host.authenticate()
    return host, host.open_session()


def _wait(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_two_devices_in_one_process(tmp_path: Path, state_dir: Path) -> None:
    """Device 0 gets an SPDM session while device 1 has a client that only asks
    GET_VERSION; each device's control view, log lines and trace lines are its own,
    and a fault rule counts per device."""
    trace = tmp_path / "both.trace"
    local = TeeDevice(state_dir=state_dir)  # same identity directory: shared identity
    with serve(tmp_path, 2, "--state-dir", str(state_dir), "--trace", str(trace),
               "--fault", "error:GET_VERSION:nth=1") as srv:
        assert ctl(srv.control, "status").returncode == 1  # which device?
        with doe_port(srv.sockets[1]) as (doe1, _):
            # The plan is each device's own: device 1's first GET_VERSION is faulted...
            assert doe1.exchange_bytes(1, GET_VERSION)[1] == 0x7F  # ERROR
            assert doe1.exchange_bytes(1, GET_VERSION)[1] == 0x04  # VERSION
            with doe_port(srv.sockets[0]) as (doe0, port0):
                # ... and so is device 0's, though device 1 consumed its own rule.
                assert doe0.exchange_bytes(1, GET_VERSION)[1] == 0x7F
                host, sid = _session(doe0, port0, local)
                devices = srv.ctl("devices")
                assert [d["client_connected"] for d in devices] == [True, True]
                assert devices[0]["spdm_sessions"] == [
                    {"session_id": f"{sid:#010x}", "state": "established"}]
                assert devices[1]["spdm_sessions"] == []
                s0 = srv.ctl("--device", "0", "status")
                s1 = srv.ctl("--device", srv.sockets[1], "status")
                assert s0["transport"] == {"kind": "vfio-user", "socket": srv.sockets[0],
                                           "client_connected": True}
                assert s1["transport"]["socket"] == srv.sockets[1]
                assert s0["spdm"]["version"] == "1.3" and s1["spdm"]["version"] is None
                assert len(s0["spdm"]["sessions"]) == 1 and s1["spdm"]["sessions"] == []
                assert s0["doe"]["counters"]["doe_0001:02"] >= 1
                assert s1["doe"]["counters"].get("doe_0001:02", 0) == 0
                armed0 = s0["faults"]["armed"]
                assert armed0[0]["fired"] == 1 and s1["faults"]["armed"][0]["fired"] == 1
                # A reset of device 1 leaves device 0's session and TDI alone.
                assert srv.ctl("--device", "1", "reset")["tdi"][0]["history"][-1][
                    "event"] == "FUNCTION_RESET"
                host.run(host.requester.heartbeat(sid))
                assert srv.ctl("--device", "0", "tdi")[0]["history"] == []
                host.end_session()
            _wait(lambda: [d["client_connected"] for d in srv.ctl("devices")] == [False, True])
        ident = [srv.ctl("--device", str(i), "identity") for i in (0, 1)]
        assert ident[0] == ident[1]  # one --state-dir: one identity, shared
        with ControlClient(srv.control) as c:
            r = c.request("help")
            assert r["ok"] and r["result"]["devices"] == 2
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log
    assert "device0 on " + srv.sockets[0] in log and "device1 on " + srv.sockets[1] in log
    established = [ln for ln in log.splitlines() if "established" in ln]
    assert established and all("[device0] " in ln for ln in established), established
    faults = [ln for ln in log.splitlines() if "fault injected" in ln]
    assert len(faults) == 2 and {ln.split("] ")[0][-7:] for ln in faults} == {
        "device0", "device1"}, faults
    resets = [ln for ln in log.splitlines() if "function level reset" in ln]
    assert len(resets) == 2 and all("[device1] " in ln for ln in resets), resets
    lines = trace.read_text().splitlines()
    sides = {ln.split()[1] for ln in lines}
    assert sides == {"device0", "device1"}, sides
    assert all(ln.split()[1] == "device0" for ln in lines
               if "ESTABLISHED" in ln or "KEY_EXCHANGE" in ln)
    assert any("ESTABLISHED" in ln for ln in lines)
    assert sum("FAULT" in ln for ln in lines) == 2


def test_own_identity_per_device(tmp_path: Path) -> None:
    with serve(tmp_path, 2, "--state-dir", str(tmp_path / "a"),
               "--state-dir", str(tmp_path / "b")) as srv:
        ident = [srv.ctl("--device", str(i), "identity") for i in (0, 1)]
    slot = Path("1ded-7e10-ecdsa-p384", "slot0", "root.pem")
    assert ident[0]["trust_anchor"] == str(tmp_path / "a" / slot)
    assert ident[1]["trust_anchor"] == str(tmp_path / "b" / slot)
    assert ident[0]["certificates"][0]["sha256"] != ident[1]["certificates"][0]["sha256"]


def test_a_socket_in_use_fails_the_start(tmp_path: Path, state_dir: Path) -> None:
    """The second socket is taken by a live server: exit 1, the first socket removed."""
    (tmp_path / "other").mkdir()
    with serve(tmp_path / "other", 1, "--state-dir", str(state_dir)) as other:
        sockdir = tempfile.mkdtemp(prefix="vm-", dir="/tmp")
        try:
            mine = f"{sockdir}/mine.sock"
            out = subprocess.run(
                [sys.executable, "-m", "vdev.cli", "serve", "--state-dir", str(state_dir),
                 "--socket", mine, "--socket", other.sockets[0]],
                capture_output=True, text=True, timeout=60)
            assert out.returncode == 1 and "another server is listening" in out.stderr
            assert not os.path.exists(mine)
        finally:
            shutil.rmtree(sockdir, ignore_errors=True)
