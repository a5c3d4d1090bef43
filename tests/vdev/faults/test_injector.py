"""Each fault kind on an in-process TeeDevice, driven through DoeRequester + the SPDM
requester (the Linux doe.c register sequence)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from spdm.errors import ErrorResponse, PeerError
from spdm.requester import Outgoing
from tests.helpers.secure_host import ConfigPort, SecureHost
from tests.vdev.faults.rig import DOE_CAP, FaultRig
from vdev.doe.mailbox import MailboxState
from vdev.doe.requester import DoeIoError, DoeRequester
from vdev.endpoint.tee_device import TeeDevice
from vdev.faults import FaultPlan, install
from vdev.faults.plan import parse_spec


class Rig(FaultRig):
    def __init__(self, state_dir: Path, *specs: str) -> None:
        super().__init__(state_dir, *specs)

        def transport(out: Outgoing) -> bytes:
            return self.doe.exchange_bytes(out.doe_type, out.data)

        self.host = SecureHost(self.device, self.cfg, transport, self.device.identity.root)


def test_no_plan_is_a_transparent_wrapper(state_dir: Path) -> None:
    rig = Rig(state_dir)
    rig.host.authenticate()
    rig.host.open_session()
    assert rig.events == []


def test_corrupt_key_exchange_rsp_fails_signature(state_dir: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(state_dir, "corrupt:KEY_EXCHANGE:nth=1")
    rig.host.authenticate()
    with caplog.at_level(logging.WARNING), pytest.raises(PeerError) as exc:
        rig.host.open_session()
    text = str(exc.value).lower()
    assert "verif" in text or "signature" in text or "hmac" in text
    assert "fault injected: corrupt KEY_EXCHANGE_RSP #1 (last byte)" in caplog.text


def test_error_busy_on_measurements_is_retried(state_dir: Path) -> None:
    rig = Rig(state_dir, "error:GET_MEASUREMENTS:nth=1,code=Busy")
    rig.host.authenticate()  # includes signed GET_MEASUREMENTS; busy_retries absorbs one
    assert rig.events == ["error GET_MEASUREMENTS #1 (ERROR BUSY)"]


def test_error_every_exhausts_busy_retries(state_dir: Path) -> None:
    rig = Rig(state_dir, "error:GET_DIGESTS:every,code=Unspecified")
    rig.host.run(rig.host.requester.init_connection())
    with pytest.raises(ErrorResponse):
        rig.host.run(rig.host.requester.get_digests())


def test_truncate_is_malformed(state_dir: Path) -> None:
    rig = Rig(state_dir, "truncate:GET_CAPABILITIES:length=6")
    with pytest.raises(PeerError):
        rig.host.run(rig.host.requester.init_connection())
    assert rig.events and rig.events[0].startswith("truncate CAPABILITIES #1")


def test_drop_stays_busy_until_abort(state_dir: Path) -> None:
    rig = Rig(state_dir, "drop:GET_VERSION:nth=1")
    with pytest.raises(DoeIoError, match="no DATA_OBJECT_READY"):
        rig.host.run(rig.host.requester.get_version())
    # DoeRequester.wait_ready aborted after max_polls: the held response is gone.
    assert rig.device.doe.state is MailboxState.IDLE
    assert rig.device.doe.response_gate is None  # restored
    rig.host.requester = type(rig.host.requester)(rig.host.requester.config)
    rig.host.authenticate()  # the next exchanges after ABORT work


def test_drop_is_busy_while_held(state_dir: Path) -> None:
    rig = Rig(state_dir, "drop:doe")
    rig.doe.send(1, 1, [0x00008410])  # GET_VERSION
    assert rig.device.doe.state is MailboxState.BUSY
    rig.doe.abort()
    assert rig.device.doe.state is MailboxState.IDLE


def test_delay_holds_then_releases(state_dir: Path) -> None:
    rig = Rig(state_dir, "delay:GET_VERSION:delay_ms=300")
    rig.doe.send(1, 1, [0x00008410])
    assert rig.device.doe.state is MailboxState.BUSY
    (seconds, ready), = rig.deferred
    assert seconds == pytest.approx(0.3)
    ready()
    assert rig.device.doe.state is MailboxState.READY
    assert rig.doe.recv(1, 1).data[1] == 0x04  # VERSION
    assert rig.events == ["delay VERSION #1 (300 ms)"]


def test_doe_error_sets_error_bit(state_dir: Path) -> None:
    rig = Rig(state_dir, "doe_error:GET_VERSION")
    with pytest.raises(DoeIoError, match="ERROR"):
        rig.host.run(rig.host.requester.get_version())
    rig.host.authenticate()  # nth=1 only; the requester's abort cleared ERROR


def test_secured_corrupt_breaks_record(state_dir: Path) -> None:
    rig = Rig(state_dir, "corrupt:secured:nth=1")
    rig.host.authenticate()
    with pytest.raises(PeerError):
        rig.host.open_session()  # FINISH is the first secured record (HANDSHAKE_IN_THE_CLEAR off)


def test_nth_selects_occurrence(state_dir: Path) -> None:
    rig = Rig(state_dir, "error:GET_DIGESTS:nth=2,code=Unspecified")
    rig.host.run(rig.host.requester.init_connection())
    rig.host.run(rig.host.requester.get_digests())
    with pytest.raises(ErrorResponse):
        rig.host.run(rig.host.requester.get_digests())
    rig.host.run(rig.host.requester.get_digests())
    assert rig.injector.plan.rules[0].to_json()["fired"] == 1


def test_probability_is_seeded(state_dir: Path) -> None:
    outcomes = []
    for _ in range(2):
        rig = Rig(state_dir, "error:GET_DIGESTS:p=0.5,seed=5,code=Unspecified")
        rig.host.run(rig.host.requester.init_connection())
        seen = []
        for _ in range(12):
            try:
                rig.host.run(rig.host.requester.get_digests())
                seen.append(True)
            except ErrorResponse:
                seen.append(False)
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1] and True in outcomes[0] and False in outcomes[0]


def test_install_twice_extends_plan(state_dir: Path) -> None:
    rig = Rig(state_dir, "drop:FINISH")
    again = install(rig.device, FaultPlan([parse_spec("drop:END_SESSION")]))
    assert again is rig.injector and len(again.plan.rules) == 2


def test_control_arm_list_clear(state_dir: Path) -> None:
    from vdev.control.endpoint import device_control

    device = TeeDevice(state_dir=state_dir)
    core = device_control(device)

    def call(**args: object) -> dict[str, object]:
        r = core.handle({"cmd": "faults", "args": args})
        assert r["ok"] is True, r
        return r["result"]  # type: ignore[no-any-return]

    assert call()["armed"] == []
    assert getattr(device, "fault_injector", None) is None  # nothing installed by listing
    rule = {"kind": "error", "match": "GET_MEASUREMENTS", "nth": 1, "code": "Busy"}
    armed = call(action="arm", fault=rule)["armed"]
    assert armed == [{"kind": "error", "match": "GET_MEASUREMENTS", "nth": 1, "code": "BUSY",
                      "seen": 0, "fired": 0}]
    call(action="arm", fault={"kind": "drop", "match": "FINISH", "every": True})
    assert [r["kind"] for r in call(action="list")["armed"]] == ["error", "drop"]
    bad = core.handle({"cmd": "faults", "args": {"action": "arm",
                                                  "fault": {"kind": "drop", "match": "X"}}})
    assert bad["ok"] is False and "'match'" in str(bad["error"])
    assert [r["kind"] for r in call(action="clear", fault={"kind": "error"})["armed"]] == ["drop"]
    assert call(action="clear", fault={"kind": "drop", "match": "FINISH"})["armed"] == []


def test_fault_is_traced_with_the_corrupted_wire(state_dir: Path) -> None:
    import io

    from vdev.trace.attach import attach_device
    from vdev.trace.tracer import Tracer

    out = io.StringIO()
    tracer = Tracer("device", out=out)
    device = TeeDevice(state_dir=state_dir)
    attach_device(tracer, device)
    install(device, FaultPlan.from_specs(["truncate:GET_VERSION:length=2"]))
    cfg = ConfigPort.of_device(device)
    doe = DoeRequester(lambda off: cfg.read(off, 4), lambda off, v: cfg.write(off, 4, v),
                       DOE_CAP)
    reply = doe.exchange_bytes(1, bytes([0x10, 0x84, 0, 0]))
    assert reply[:2] == bytes([0x10, 0x04]) and not any(reply[2:])  # 2 bytes, padded
    lines = out.getvalue().splitlines()
    fault = [ln for ln in lines if "FAULT" in ln]
    assert len(fault) == 1 and "truncate VERSION #1 (" in fault[0]


def test_serve_options(state_dir: Path, tmp_path: Path) -> None:
    from vdev.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--socket", "s", "--fault", "drop:FINISH",
                                      "--fault", "error:doe:every", "--fault-plan", "p.toml"])
    assert args.fault == ["drop:FINISH", "error:doe:every"] and args.fault_plan == "p.toml"
    sock = str(tmp_path / "v.sock")
    with pytest.raises(SystemExit, match="'match'"):
        main(["serve", "--socket", sock, "--state-dir", str(state_dir), "--fault", "drop:NOPE"])
    plan = tmp_path / "plan.toml"
    plan.write_text('[[fault]]\nkind = "delay"\nmatch = "doe"\n')
    with pytest.raises(SystemExit, match="fault #1 .*'delay_ms'"):
        main(["serve", "--socket", sock, "--state-dir", str(state_dir),
              "--fault-plan", str(plan)])


def test_delay_without_event_loop_is_not_reported(state_dir: Path) -> None:
    device = TeeDevice(state_dir=state_dir)
    injector = install(device, FaultPlan.from_specs(["delay:GET_VERSION:delay_ms=5"]))
    events: list[str] = []
    injector.observers.append(events.append)
    cfg = ConfigPort.of_device(device)
    doe = DoeRequester(lambda off: cfg.read(off, 4), lambda off, v: cfg.write(off, 4, v),
                       DOE_CAP)
    assert doe.exchange_bytes(1, bytes([0x10, 0x84, 0, 0]))[1] == 0x04
    assert events == [] and device.doe.response_gate is None
