"""`tsm.mailbox_backend`, the factory `vdev tsm serve` builds its backend from."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tdisp.interface_report import InterfaceReport
from tests.helpers.tsm_rig import EXPECTED, Device, identity, make_device
from tsm import mailbox_backend
from tsm.mailbox_protocol import DoeRequest, Done, Op, TsmBackend, done_data
from tsm.mailbox_protocol import TargetFunction as Target


def run(backend: TsmBackend, op: int, target: Target, dev: Device) -> Done:
    action = backend.start(Op(op), target)
    while isinstance(action, DoeRequest):
        action = backend.doe_response(dev.doe_exchange(action.doe_type, action.payload))
    return action


def test_mailbox_ops_drive_the_model(tmp_path: Path) -> None:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(identity().root.public_bytes(serialization.Encoding.PEM))
    backend = mailbox_backend(anchor, None)
    dev = make_device()
    target = Target(0, 1, 0)
    status = run(backend, 7, target, dev)
    assert status.ok and status.value == "idle"
    assert run(backend, 1, target, dev).ok
    assert run(backend, 3, target, dev).ok
    rep = run(backend, 6, target, dev)
    assert isinstance(rep.value, bytes)
    assert InterfaceReport.decode(rep.value).mmio_ranges[0].first_page == EXPECTED[0].base
    assert run(backend, 4, target, dev).ok
    assert dev.tdi_state == "RUN"
    assert run(backend, 7, target, dev).value == "RUN"
    assert run(backend, 5, target, dev).ok
    assert run(backend, 2, target, dev).ok
    assert dev.responder.sessions == {}


def test_mailbox_backend_through_the_device_adapter(tmp_path: Path) -> None:
    """The backend the mailbox device drives, over the real model."""
    anchor = tmp_path / "root.der"
    anchor.write_bytes(identity("other").root.public_bytes(serialization.Encoding.DER))
    backend = mailbox_backend(anchor, None)
    dev = make_device()
    action = backend.start(Op.CONNECT, Target(0, 1, 0))
    while isinstance(action, DoeRequest):
        action = backend.doe_response(dev.doe_exchange(action.doe_type, action.payload))
    assert isinstance(action, Done)
    assert action.errno == -13  # -EACCES: untrusted chain
    assert "certificate chain not trusted" in action.reason
    assert json.loads(done_data(action))["evidence"]["state"] == "idle"
