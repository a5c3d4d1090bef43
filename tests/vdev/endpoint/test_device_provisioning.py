"""The `full` profile's provisioning on disk: several generated slots with their own keys,
key pairs under keys/, SET_CERTIFICATE persisting a slot (and keeping what it replaced),
the extended measurement record, the measurement extension log and endpoint info."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from spdm.codes import RspCap
from spdm.identity import generate_identity
from spdm.measurements import MeasurementType
from spdm.mel import SVH_PCISIG, extend, parse_device_class_identifier, parse_mel
from spdm.provisioning import issue_from_csr
from spdm.requester import Requester, RequesterConfig
from vdev.endpoint.identity_store import IdentityError, IdentityLocation
from vdev.endpoint.measurements import INDEX_LOG, INDEX_SVN
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import load_profile

FULL = load_profile("full")


def connect(device: TeeDevice, *, multi_key: bool = False) -> Requester:
    anchors = [ident.root for ident in device.responder.config.slots.slots.values()]
    req = Requester(RequesterConfig(trust_anchors=anchors, multi_key=multi_key))
    req.device = device  # type: ignore[attr-defined]
    run(req, req.init_connection())
    return req


def run(req: Requester, op: Any) -> Any:
    device: TeeDevice = req.device  # type: ignore[attr-defined]
    return req.run(op, lambda out: device.responder.handle_doe(out.doe_type, out.data)[1])


def der(cert: Any) -> bytes:
    return bytes(cert.public_bytes(serialization.Encoding.DER))


def test_generated_slots_have_their_own_keys_and_survive_a_restart(tmp_path: Path) -> None:
    first = TeeDevice(FULL, state_dir=tmp_path)
    slots = first.responder.config.slots.slots
    assert sorted(slots) == [0, 1, 2, 3]
    assert len({id(s.key) for s in slots.values()}) == 4
    assert {s.root for s in slots.values()} == {slots[0].root}  # one trust anchor
    ident_dir = IdentityLocation.of(FULL, tmp_path).identity_dir
    assert sorted(p.name for p in (ident_dir / "keys").iterdir()) == [
        "1.key", "2.key", "3.key", "4.key"]
    again = TeeDevice(FULL, state_dir=tmp_path)
    for n, ident in again.responder.config.slots.slots.items():
        assert ident.leaf == slots[n].leaf
    req = connect(again, multi_key=True)
    assert run(req, req.get_digests()).keys() == {0, 1, 2, 3}
    assert run(req, req.get_key_pair_info(4)).total_key_pairs == 4
    # A 1.2 connection (no multi-key) sees slot 0's key only.
    req12 = Requester(RequesterConfig(trust_anchors=[slots[0].root], versions=(0x12,)))
    req12.device = again  # type: ignore[attr-defined]
    run(req12, req12.init_connection())
    assert run(req12, req12.get_digests()).keys() == {0}


def test_a_slot_under_another_root_is_not_used(tmp_path: Path) -> None:
    TeeDevice(FULL, state_dir=tmp_path)
    ident_dir = IdentityLocation.of(FULL, tmp_path).identity_dir
    (ident_dir / "slot0").rename(ident_dir / "slot0.mine")
    with pytest.raises(IdentityError, match="another root"):
        TeeDevice(FULL, state_dir=tmp_path)


def test_set_certificate_persists_and_keeps_what_it_replaced(tmp_path: Path) -> None:
    ca = generate_identity()
    device = TeeDevice(FULL, state_dir=tmp_path)
    req = connect(device)
    assert req.conn.rsp_caps & RspCap.SET_CERT and req.conn.rsp_caps & RspCap.CSR
    run(req, req.get_digests())
    run(req, req.get_certificate(0))
    sid = run(req, req.key_exchange())
    leaf = issue_from_csr(run(req, req.get_csr(session_id=sid)), ca.certs[1], ca.ca_keys[1])
    chain = [der(ca.root), der(ca.certs[1]), der(leaf)]
    run(req, req.set_certificate(6, chain, session_id=sid))
    ident_dir = IdentityLocation.of(FULL, tmp_path).identity_dir
    assert (ident_dir / "slot6" / "chain.pem").exists()
    run(req, req.set_certificate(6, chain, session_id=sid))  # again: the first is kept
    assert len(list(ident_dir.glob("slot6.replaced-*"))) == 1
    # A new device process finds slot 6, for key pair 1 (slot 0's key).
    restarted = TeeDevice(FULL, state_dir=tmp_path)
    assert restarted.responder.config.slots.slots[6].leaf == leaf
    req2 = Requester(RequesterConfig(trust_anchors=[ca.root, device.identity.root]))
    req2.device = restarted  # type: ignore[attr-defined]
    run(req2, req2.init_connection())
    assert run(req2, req2.get_digests()).keys() == {0, 6}
    run(req2, req2.get_certificate(6))


def test_extended_record_log_and_endpoint_info(tmp_path: Path) -> None:
    device = TeeDevice(FULL, state_dir=tmp_path)
    req = connect(device)
    blocks = {b.index: b for b in run(req, req.get_measurements(signed=False))}
    assert sorted(blocks) == [1, 2, 3, 4, 5, 6, 7, 0xFD, 0xFE]
    assert blocks[INDEX_SVN].value == (3).to_bytes(8, "little")
    log = parse_mel(run(req, req.get_mel()))
    assert [e.value_type for e in log] == [MeasurementType.IMMUTABLE_ROM,
                                           MeasurementType.MUTABLE_FIRMWARE,
                                           MeasurementType.FIRMWARE_CONFIG]
    assert blocks[INDEX_LOG].value == extend(log, INDEX_LOG)
    (ident,) = parse_device_class_identifier(run(req, req.get_endpoint_info()))
    assert ident.svh_id == SVH_PCISIG
    assert ident.vendor_id == FULL.vendor_id.to_bytes(2, "little")
    assert ident.sub_ids[0] == FULL.device_id.to_bytes(2, "little")
