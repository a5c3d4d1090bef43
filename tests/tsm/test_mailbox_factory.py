"""`tsm.mailbox_backend`, the factory `vdev tsm serve` builds its backend from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tdisp.interface_report import InterfaceReport
from tests.helpers.tsm_rig import EXPECTED, drive, identity, make_device
from tsm import mailbox_backend


@dataclass(frozen=True)
class Target:
    segment: int
    bus: int
    devfn: int


def test_mailbox_ops_drive_the_model(tmp_path: Path) -> None:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(identity().root.public_bytes(serialization.Encoding.PEM))
    start = mailbox_backend(anchor, None)
    dev = make_device()
    target = Target(0, 1, 0)
    status = drive(start(7, target), dev)
    assert status.ok and status.value == "idle"
    assert drive(start(1, target), dev).ok
    assert drive(start(3, target), dev).ok
    rep = drive(start(6, target), dev)
    assert isinstance(rep.value, bytes)
    assert InterfaceReport.decode(rep.value).mmio_ranges[0].first_page == EXPECTED[0].base
    assert drive(start(4, target), dev).ok
    assert dev.tdi_state == "RUN"
    assert drive(start(7, target), dev).value == "RUN"
    assert drive(start(5, target), dev).ok
    assert drive(start(2, target), dev).ok
    assert dev.responder.sessions == {}


def test_mailbox_backend_through_the_device_adapter(tmp_path: Path) -> None:
    """The vdev mailbox's OperationBackend over the real model (structural contract)."""
    from vdev.tsm_mailbox.backend import DoeRequest, Done
    from vdev.tsm_mailbox.model_adapter import OperationBackend
    from vdev.tsm_mailbox.protocol import Op

    anchor = tmp_path / "root.der"
    anchor.write_bytes(identity("other").root.public_bytes(serialization.Encoding.DER))
    backend = OperationBackend(mailbox_backend(anchor, None))  # type: ignore[arg-type]
    dev = make_device()
    action = backend.start(Op.CONNECT, Target(0, 1, 0))  # type: ignore[arg-type]
    while isinstance(action, DoeRequest):
        action = backend.doe_response(dev.doe_exchange(action.doe_type, action.payload))
    assert isinstance(action, Done)
    assert action.status == -13  # -EACCES: untrusted chain
    assert "certificate chain not trusted" in action.reason
    assert json.loads(action.data)["evidence"]["state"] == "idle"
