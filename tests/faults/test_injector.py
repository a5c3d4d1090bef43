"""Each fault kind on an in-process TeeDevice, driven through DoeRequester + the SPDM
requester (the Linux doe.c register sequence)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from spdm.errors import ErrorResponse, ProtocolError
from spdm.requester import Outgoing
from tests.device.secure_host import ConfigPort, SecureHost
from vdev.doe_mailbox import MailboxState
from vdev.doe_requester import DoeIoError, DoeRequester
from vdev.faults import FaultInjector, FaultPlan, install
from vdev.faults.plan import parse_spec
from vdev.tee_device import TeeDevice

DOE_CAP = 0x100


class Rig:
    def __init__(self, state_dir: Path, *specs: str) -> None:
        self.deferred: list[tuple[float, Callable[[], None]]] = []
        self.device = TeeDevice(state_dir=state_dir,
                                defer_later=lambda s, f: self.deferred.append((s, f)))
        self.injector: FaultInjector = install(self.device, FaultPlan.from_specs(list(specs)))
        self.events: list[str] = []
        self.injector.observers.append(self.events.append)
        cfg = ConfigPort.of_device(self.device)
        self.doe = DoeRequester(lambda off: cfg.read(off, 4),
                                lambda off, v: cfg.write(off, 4, v), DOE_CAP, max_polls=20)

        def transport(out: Outgoing) -> bytes:
            return self.doe.exchange_bytes(out.doe_type, out.data)

        self.host = SecureHost(self.device, cfg, transport, self.device.identity.root)


def test_no_plan_is_a_transparent_wrapper(state_dir: Path) -> None:
    rig = Rig(state_dir)
    rig.host.authenticate()
    rig.host.open_session()
    assert rig.events == []


def test_corrupt_key_exchange_rsp_fails_signature(state_dir: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(state_dir, "corrupt:KEY_EXCHANGE:nth=1")
    rig.host.authenticate()
    with caplog.at_level(logging.WARNING), pytest.raises(ProtocolError) as exc:
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
    with pytest.raises(ProtocolError):
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
    with pytest.raises(ProtocolError):
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
